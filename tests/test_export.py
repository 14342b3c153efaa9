"""Exports loaded with the plain diffusers API (no dbdpo import in the loading code) reproduce θ_S."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = ["concept=default", "method.max_steps=3", "prompts.n=4", "generate.images_per_prompt=3", "eval.max_prompts=1",
       "eval.images_per_prompt=2", "logger=none", "progress=false", "steps=2", "filter=weighted"]
PROMPT = "a photo of sks toy on the beach"
TOL = dict(atol=1e-4, rtol=1e-4)  # fused vs unfused LoRA and SVD round-off


def train(tmp_path_factory, backbone: str, method: str, *extra: str) -> Path:
    run_dir = tmp_path_factory.mktemp(f"run_{backbone}_{method}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(ROOT / "train.py"), f"backbone={backbone}", f"method={method}", *RUN, *extra,
            "method.lr=1e-2", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(args, cwd=run_dir, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return train(tmp_path_factory, "tiny", "lora")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from dbdpo.backbones import build_tiny_pipeline, build_tiny_sdxl_pipeline

    d = tmp_path_factory.mktemp("bases")
    build_tiny_pipeline(32, seed=0).save_pretrained(str(d / "tiny"), safe_serialization=True)
    build_tiny_sdxl_pipeline(32, seed=0).save_pretrained(str(d / "tiny_sdxl"), safe_serialization=True)
    return d


def latents(pipe, seed: int = 7) -> torch.Tensor:
    """The pipeline's own sampling for fixed seeds (plain diffusers call)."""
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    return pipe(prompt=[PROMPT, "a sks toy in the snow"], latents=x, num_inference_steps=3, guidance_scale=3.0,
                output_type="latent").images


def theta_s(run_dir: Path, step: int | None = None):
    """dbdpo's own θ_S (the run's restore path) as a pipeline."""
    from omegaconf import OmegaConf

    from dbdpo.export import rebuild, stages

    cfg = OmegaConf.load(run_dir / "config.yaml")
    done = stages(run_dir)
    return rebuild(cfg, done[: (len(done) if step is None else step + 1)]).pipe


def export(run_dir, fmt, out, *extra, cli: bool = False) -> subprocess.CompletedProcess:
    """`python -m dbdpo.export RUN --format FMT --out OUT`: in this process (its `main`, exit code and stderr as the
    command's), or with `cli=True` as the command itself."""
    argv = [str(run_dir), "--format", fmt, "--out", str(out), *extra]
    if cli:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        return subprocess.run([sys.executable, "-m", "dbdpo.export", *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
    from dbdpo.export import main

    out_s, err_s, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out_s), contextlib.redirect_stderr(err_s):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(argv, code, out_s.getvalue(), err_s.getvalue())


def safetensors_metadata(folder: Path) -> list[dict]:
    from safetensors import safe_open

    out = []
    for f in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.append(h.metadata())
    return out


@pytest.mark.slow
def test_lora_run_exports_pipeline_diffusers_and_kohya(lora_run, base_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    for fmt in ("pipeline", "diffusers", "kohya"):
        proc = export(lora_run, fmt, tmp_path / fmt)
        assert proc.returncode == 0, proc.stderr[-3000:]
    want = latents(theta_s(lora_run))
    # the full pipeline: from_pretrained alone
    full = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipeline"))
    torch.testing.assert_close(latents(full), want, **TOL)
    # base + the exported LoRA (one rank-concatenated LoRA: personalization + 2 DPO steps, rank 3 × 4)
    pipe = StableDiffusionPipeline.from_pretrained(str(base_dir / "tiny"))
    pipe.load_lora_weights(str(tmp_path / "diffusers"))
    torch.testing.assert_close(latents(pipe), want, **TOL)
    from safetensors.torch import load_file

    lora = load_file(str(tmp_path / "diffusers" / "pytorch_lora_weights.safetensors"))
    assert all(k.startswith("unet.") for k in lora)  # diffusers' LoRA layout (`lora.down` / `lora.up`)
    assert {v.shape[0] for k, v in lora.items() if k.endswith("lora.down.weight")} == {12}
    # kohya: the layout A1111 / ComfyUI read, alphas stored; diffusers' converter reads it back to the same model
    (kfile,) = (tmp_path / "kohya").glob("*.safetensors")
    kohya = load_file(str(kfile))
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert {k.rsplit(".", 1)[-1] for k in kohya} == {"weight", "alpha"}
    assert all(kohya[k].item() == 12 for k in kohya if k.endswith(".alpha"))
    assert sum(k.endswith("lora_down.weight") for k in kohya) == sum(k.endswith("lora.down.weight") for k in lora)
    # diffusers' own converter reads the kohya file back to the same tensors (in its attention-processor naming)
    back, alphas = StableDiffusionPipeline.lora_state_dict(str(kfile), return_alphas=True)

    def norm(k: str) -> str:
        return k.replace(".processor.to_out_lora.", ".to_out.0.lora.").replace(".processor.", ".").replace(
            "_lora.", ".lora.")

    assert {norm(k) for k in back} == set(lora)
    for k, v in back.items():
        assert torch.equal(v, lora[norm(k)]), k
    assert set(alphas.values()) == {12.0}
    pipe = StableDiffusionPipeline.from_pretrained(str(base_dir / "tiny"))
    pipe.load_lora_weights(str(kfile))
    torch.testing.assert_close(latents(pipe), want, **TOL)
    # every safetensors file says what it is
    for fmt in ("pipeline", "diffusers", "kohya"):
        for meta in safetensors_metadata(tmp_path / fmt):
            assert meta["method"] == "lora" and meta["steps"] == "2" and meta["concept_token"] == "sks"
            assert len(meta["config_sha256"]) == 64 and meta["dbdpo_version"] and meta["filter"] == "weighted"


@pytest.mark.slow
def test_step0_is_the_personalization_baseline(lora_run, base_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    assert export(lora_run, "diffusers", tmp_path / "s0", "--step", "0").returncode == 0
    pipe = StableDiffusionPipeline.from_pretrained(str(base_dir / "tiny"))
    pipe.load_lora_weights(str(tmp_path / "s0"))
    want = latents(theta_s(lora_run, step=0))
    torch.testing.assert_close(latents(pipe), want, **TOL)
    assert not torch.allclose(want, latents(theta_s(lora_run)), atol=1e-3)  # DPO moved the model


@pytest.mark.slow
def test_sdxl_lora_exports_load_in_the_sdxl_pipeline(tmp_path_factory, base_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    run = train(tmp_path_factory, "tiny_sdxl", "lora")
    assert export(run, "pipeline", tmp_path / "p").returncode == 0
    assert export(run, "diffusers", tmp_path / "d").returncode == 0
    want = latents(theta_s(run))
    torch.testing.assert_close(latents(StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "p"))), want, **TOL)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(base_dir / "tiny_sdxl"))
    pipe.load_lora_weights(str(tmp_path / "d"))
    torch.testing.assert_close(latents(pipe), want, **TOL)


@pytest.mark.slow
def test_svdiff_export_applied_to_a_fresh_base_reproduces_theta_s(tmp_path_factory, base_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    run = train(tmp_path_factory, "tiny", "svdiff")
    proc = export(run, "svdiff", tmp_path / "sv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("apply_svdiff", tmp_path / "sv" / "apply_svdiff.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)  # the shipped loader: torch + safetensors only
    pipe = StableDiffusionPipeline.from_pretrained(str(base_dir / "tiny"))
    loader.apply_svdiff(pipe.unet, tmp_path / "sv" / "svdiff.safetensors")
    ours = theta_s(run)
    mine = ours.unet.state_dict()
    for n, a in pipe.unet.state_dict().items():
        torch.testing.assert_close(a, mine[n], atol=1e-5, rtol=1e-5, msg=n)
    torch.testing.assert_close(latents(pipe), latents(ours), **TOL)
    size = (tmp_path / "sv" / "svdiff.safetensors").stat().st_size
    assert size < 0.05 * sum(p.numel() * 4 for p in ours.unet.parameters())  # δ and 1-D weights only


@pytest.mark.slow
def test_full_dreambooth_pipeline_export_carries_the_trained_text_encoder(tmp_path_factory, tmp_path):
    from diffusers import StableDiffusionPipeline

    run = train(tmp_path_factory, "tiny", "dreambooth", "method.train_text_encoder=true")
    assert export(run, "pipeline", tmp_path / "p").returncode == 0
    loaded = StableDiffusionPipeline.from_pretrained(str(tmp_path / "p"))
    ours = theta_s(run)
    for a, b in zip(loaded.text_encoder.parameters(), ours.text_encoder.parameters()):
        assert torch.equal(a, b)
    torch.testing.assert_close(latents(loaded), latents(ours), **TOL)
    # the LoRA formats are for LoRA runs: one clear error, nothing written
    for fmt in ("diffusers", "kohya", "svdiff"):
        proc = export(run, fmt, tmp_path / fmt)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--format pipeline" in proc.stderr
        assert not (tmp_path / fmt).exists() and not list(tmp_path.glob(".tmp_*"))


@pytest.mark.slow
def test_bad_export_requests_are_one_clear_error(lora_run, tmp_path):
    proc = export(lora_run, "diffusers", tmp_path / "x", "--step", "7", cli=True)
    assert proc.returncode == 2 and "--step 7" in proc.stderr and "0 (personalization) to 2" in proc.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    proc = export(lora_run, "pipeline", tmp_path / "full")
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    proc = export(tmp_path, "pipeline", tmp_path / "y")
    assert proc.returncode == 2 and "config.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
