"""End to end: `train.py` on the tiny backbone, two outer steps; resume; bad input gives one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["backbone=tiny", "concept=default", "method.max_steps=4", "prompts.n=8", "generate.images_per_prompt=3", "eval.max_prompts=3",
        "eval.images_per_prompt=2", "logger=csv", "progress=false", "steps=2"]


def run_train(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def compose(overrides: list[str], out: Path):
    return compose_config([*TINY, *overrides], out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("run")
    proc = run_train([*TINY, f"hydra.run.dir={run_dir}"], cwd=run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


@pytest.mark.slow
def test_run_directory_contents(finished_run):
    run_dir, proc = finished_run
    assert "DreamBoothDPO summary" in proc.stdout
    assert (run_dir / "config.yaml").exists() and (run_dir / "prompts" / "pool.jsonl").exists()
    for ckpt in ("personalize", "step_1", "step_2"):
        assert (run_dir / "checkpoints" / ckpt / "diffusion_pytorch_model.safetensors").exists()
    parts = []
    for s in (1, 2):
        step = run_dir / f"step_{s}"
        for name in ("prompts.jsonl", "pairs.json", "pair_stats.json", "alpha_hist.png", "samples_grid.png",
                     "eval/eval.json", "eval/grid.png"):
            assert (step / name).exists(), name
        shards = sorted((step / "samples").glob("shard_*"))
        assert shards and all((sh / "latents.safetensors").exists() for sh in shards)
        meta = json.loads((shards[0] / "meta.json").read_text())
        assert {"prompt", "text", "seed", "sample_index", "image"} <= set(meta[0])
        assert "sks toy" in meta[0]["text"] and "[V*]" in meta[0]["prompt"]
        parts.append({json.loads(line)["prompt"] for line in (step / "prompts.jsonl").read_text().splitlines()})
        stats = json.loads((step / "pair_stats.json").read_text())
        assert stats["candidates"] == 4 * 3  # 4 prompts × C(3, 2)
        pairs = json.loads((step / "pairs.json").read_text())
        assert len(pairs["winner"]) == stats["kept"] > 0
    assert parts[0] and parts[1] and not parts[0] & parts[1]  # disjoint prompt parts

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["personalize", "step_1", "step_2"]
    for stage in metrics["stages"].values():
        for key in ("eval/clip_i", "eval/clip_t"):
            assert set(stage[key]) >= {"mean", "std"} and -1 <= stage[key]["mean"] <= 1
            assert stage[key]["n"] == 3
    assert metrics["stages"]["step_1"]["pairs/candidates"] == 12
    assert (run_dir / "csv" / "metrics.csv").exists()
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "dpo/loss" in header and "dpo/implicit_acc" in header and "dpo/rewards/margins" in header


@pytest.mark.slow
def test_resume_equals_uninterrupted(finished_run):
    run_dir, _ = finished_run
    before = json.loads((run_dir / "metrics.json").read_text())
    shard = next((run_dir / "step_1" / "samples").glob("shard_*")) / "latents.safetensors"
    mtime = shard.stat().st_mtime_ns
    # Lose step 2's DPO training and evaluation, as a killed run would, then rerun the same command.
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "step_2")
    shutil.rmtree(run_dir / "step_2" / "eval")
    proc = run_train([*TINY, f"hydra.run.dir={run_dir}"], cwd=run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((run_dir / "metrics.json").read_text())
    assert shard.stat().st_mtime_ns == mtime  # finished work is skipped, not redone
    for stage in before["stages"]:
        for key in ("eval/clip_i", "eval/clip_t"):
            assert after["stages"][stage][key]["mean"] == pytest.approx(before["stages"][stage][key]["mean"], abs=1e-6)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["concept.path=/nonexistent/concept"], "concept.path"),
        (["filter.c1=80", "filter.c2=10"], "filter.c1"),
        (["filter.c1=-200"], "filter.c1"),
        (["filter=weighted", "filter.weight=1.5"], "filter.weight"),
        (["dpo.reference=nope"], "dpo.reference"),
        (["dpo.batch_size=12", "dpo.micro_batch_size=8"], "dpo.batch_size"),
    ],
)
def test_bad_config_is_one_clear_error(overrides, needle, tmp_path, capsys):
    from dbdpo.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(compose(overrides, tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_corrupt_concept_image(tmp_path, capsys):
    from PIL import Image

    from dbdpo.cli import run_main

    concept = tmp_path / "concept"
    concept.mkdir()
    Image.new("RGB", (40, 40), "red").save(concept / "a.png")
    (concept / "b.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(SystemExit):
        run_main(compose([f"concept.path={concept}"], tmp_path / "run"))
    err = capsys.readouterr().err
    assert "b.jpg" in err and "Traceback" not in err


@pytest.mark.slow
def test_filter_keeping_no_pair_stops_cleanly(tmp_path, capsys):
    from dbdpo.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(compose(["filter=threshold", "filter.tau=5", "steps=1"], tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "filter.tau" in err and "Traceback" not in err
    # what was finished before the error is kept, complete
    assert (tmp_path / "checkpoints" / "personalize" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "step_1" / "pair_stats.json").exists()


@pytest.mark.slow
def test_nan_loss_stops_cleanly(tmp_path, capsys):
    from dbdpo.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(compose(["method.lr=1e30"], tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "method.lr" in err and "Traceback" not in err
    assert not (tmp_path / "checkpoints" / "personalize").exists()


def test_unknown_backbone_names_the_choices():
    proc = run_train(["backbone=nonexistent", "logger=none"])
    assert proc.returncode != 0
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "backbone=nonexistent" in proc.stderr and "sd2, sdxl, tiny, tiny_sdxl, world" in proc.stderr


def test_dreambench_concept_config_resolves_to_photos(tmp_path):
    from dbdpo.concept import Concept, load_concept_images
    from dbdpo.multistep import eval_prompts

    cfg = compose(["concept=dreambench/dog6", "eval.max_prompts=null"], tmp_path)
    concept = Concept.from_cfg(cfg.concept)
    if not Path(concept.path).is_dir():
        pytest.skip(f"DreamBench copy not found at {concept.path}")
    images = load_concept_images(concept.path, resolution=64)
    assert 4 <= len(images) <= 6 and images[0].size == (64, 64)
    assert concept.holder == "sks dog" and concept.live
    prompts = eval_prompts(cfg, concept)
    assert len(prompts) == 25 and "a [V*] wearing a santa hat" in prompts


@pytest.mark.slow
def test_world_concept_runs_through_train(tmp_path):
    """A miniature-world concept: photos rendered from its config, world prompt pool and eval set."""
    from dbdpo.multistep import run

    metrics = run(compose(["concept=world/zigzag_star", "steps=1", "logger=none"], tmp_path))
    photos = sorted((tmp_path / "concept_photos").glob("photo_*.png"))
    assert 4 <= len(photos) <= 6
    assert metrics["concept"] == "zigzag_star" and set(metrics["stages"]) == {"personalize", "step_1"}
    # judged by the evaluator CLIP and the oracle as well as the scorer
    for stage in metrics["stages"].values():
        for key in ("eval/oracle_prompt", "eval/oracle_identity"):
            assert 0.0 <= stage[key]["mean"] <= 1.0, key
        for key in ("eval/clip_i", "eval/evaluator_is", "eval/evaluator_ts"):
            assert -1.0 <= stage[key]["mean"] <= 1.0, key
    assert (tmp_path / "step_1" / "eval" / "judge.json").exists()
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "step_1" / "prompts.jsonl").read_text().splitlines()]
    from dbdpo.world.prompts import world_pool

    assert set(prompts) <= {p.prompt for p in world_pool(8, 0)}


@pytest.mark.slow
def test_default_run_is_the_world_and_prints_every_figure(tmp_path):
    """`python train.py` with only size overrides: the shipped world model and concept, judged per step."""
    if not (ROOT / "dbdpo" / "assets" / "world" / "pipeline" / "model_index.json").exists():
        pytest.skip("no world pipeline shipped")
    small = ["method.max_steps=4", "prompts.n=8", "generate.images_per_prompt=3", "eval.max_prompts=3",
             "eval.images_per_prompt=2", "backbone.num_inference_steps=3", "logger=none", "progress=false"]
    proc = run_train([*small, f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["backbone"] == "world" and metrics["concept"] == "zigzag_star"
    assert set(metrics["stages"]) == {"personalize", "step_1", "step_2"}
    for name, stage in metrics["stages"].items():
        for key in ("eval/clip_i", "eval/clip_t", "eval/evaluator_is", "eval/evaluator_ts", "eval/oracle_prompt",
                    "eval/oracle_identity"):
            assert key in stage, (name, key)
        if name != "personalize":
            assert stage["pairs/kept"] <= stage["pairs/candidates"] and "score/is" in stage and "score/ts" in stage
    for column in ("pairs kept", "IS (evaluator)", "TS (evaluator)", "oracle prompt-following", "oracle identity"):
        assert column in proc.stdout
