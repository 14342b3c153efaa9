"""`python -m dbdpo.world pretrain` at a tiny size: every stage runs, the pipeline loads like sd2, the
manifest matches the files, and a rerun skips finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides):
    return compose_config(overrides, config_name="pretrain", config_dir=ROOT / "conf" / "world")


TINY = ["oracle.steps=2", "oracle.batch_size=8", "scorer.steps=2", "scorer.batch_size=8", "evaluator.steps=2",
        "evaluator.batch_size=8", "text.steps=2", "text.batch_size=8", "vae.steps=2", "vae.batch_size=4", "t2i.steps=2", "t2i.batch_size=4",
        "t2i.channels=[32,32]", "t2i.attention=[false,true]", "t2i.curve_every=1", "t2i.curve_n=2", "quality.n=4", "quality.num_inference_steps=2",
        "progress=false", "checkpoint_every=1", "trainer.accelerator=cpu"]


@pytest.mark.slow
def test_tiny_pretrain_end_to_end(tmp_path):
    from dbdpo.backbones import build_backbone
    from dbdpo.world.pretrain import check_manifest, pretrain

    out, work = tmp_path / "world", tmp_path / "work"
    manifest = pretrain(compose([*TINY, f"out_dir={out}", f"work_dir={work}"]))
    for name in ("oracle.safetensors", "scorer.safetensors", "evaluator.safetensors",
                 "pipeline/model_index.json", "pipeline/unet/diffusion_pytorch_model.safetensors"):
        assert (out / name).exists(), name
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.ckpt"))  # only safe formats are shipped
    assert check_manifest(out) == []
    q = manifest["quality"]
    assert set(q) >= {"oracle_accuracy", "scorer_retrieval", "evaluator_retrieval", "t2i_oracle_accuracy",
                      "vae_reconstruction_oracle", "text_encoder_retrieval", "text_encoder_attributes"}
    assert set(q["vae_reconstruction_oracle"]) >= {"shape", "background", "pattern"}
    # the accuracy-vs-minutes curve: one row per step (curve_every=1), each with every prompted attribute
    rows = [json.loads(line) for line in (work / "t2i_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 <= r["min"] <= r["mean"] <= 1 and r["train_minutes"] >= 0 for r in rows)
    assert "stages" not in manifest["config"] and manifest["config"]["t2i"]["steps"] == 2
    assert manifest["total_bytes"] == sum(f["bytes"] for f in manifest["files"].values())

    # the world pipeline loads through the same code path as backbone=sd2
    bb = build_backbone({"name": "world", "kind": "sd", "pretrained": str(out / "pipeline"), "resolution": 32,
                         "num_inference_steps": 2, "guidance_scale": 3.0})
    assert bb.noise_scheduler().config.prediction_type == "v_prediction"

    # the text encoder is the frozen text tower of the `text` stage's CLIP: the T2I stage did not change it
    import torch
    from transformers import CLIPTextModel

    shipped = CLIPTextModel.from_pretrained(str(out / "pipeline" / "text_encoder"))
    pretrained = CLIPTextModel.from_pretrained(str(work / "text_final"))
    for (name, a), b in zip(shipped.state_dict().items(), pretrained.state_dict().values()):
        assert torch.equal(a.half(), b.half()), name

    # a rerun skips every finished stage (the shipped files are not rewritten)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    pretrain(compose([*TINY, f"out_dir={out}", f"work_dir={work}"]))
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())

    # t2i.init_from continues from a saved pipeline: its text encoder and VAE, its UNet as the start (lr 0: kept)
    from safetensors.torch import load_file

    out2, work2 = tmp_path / "world2", tmp_path / "work2"
    pretrain(compose([*TINY, f"out_dir={out2}", f"work_dir={work2}", "stages=[t2i]", f"t2i.init_from={out}/pipeline",
                      "t2i.lr=0", "t2i.curve_every=0", "seed=5"]))
    for part in ("unet", "vae", "text_encoder"):
        a = (out / "pipeline" / part).glob("*.safetensors")
        b = (out2 / "pipeline" / part).glob("*.safetensors")
        sa, sb = load_file(str(next(a))), load_file(str(next(b)))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), part
    assert not (work2 / "text").exists() and not (work2 / "vae").exists()  # nothing retrained but the UNet
    from dbdpo.errors import ConfigError

    with pytest.raises(ConfigError, match="init_from"):
        pretrain(compose([*TINY, f"out_dir={tmp_path / 'w3'}", f"work_dir={tmp_path / 'k3'}", "stages=[t2i]",
                          f"t2i.init_from={tmp_path}"]))

    # tampering is detected
    (out / "oracle.safetensors").write_bytes(b"x" + (out / "oracle.safetensors").read_bytes()[1:])
    assert any("oracle.safetensors" in p for p in check_manifest(out))
    assert json.loads((out / "manifest.json").read_text())["commit"]


SHIPPED = ROOT / "dbdpo" / "assets" / "world"


def test_shipped_world_weights_match_manifest():
    from dbdpo.world.pretrain import check_manifest

    if not (SHIPPED / "manifest.json").exists():
        pytest.skip("no world weights shipped yet")
    assert check_manifest(SHIPPED) == []
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest["total_bytes"] <= 40 * 2**20
    assert all(name.endswith((".safetensors", ".json", ".txt")) for name in manifest["files"])


def test_shipped_oracle_reaches_its_recorded_accuracy():
    from dbdpo.world.data import fixed_eval_set
    from dbdpo.world.oracle import accuracy, load_oracle

    if not (SHIPPED / "oracle.safetensors").exists():
        pytest.skip("no oracle shipped yet")
    recorded = json.loads((SHIPPED / "manifest.json").read_text())["quality"]["oracle_accuracy"]
    measured = accuracy(load_oracle(SHIPPED / "oracle.safetensors"), fixed_eval_set(500, seed=4242, split="all"))
    for attr, value in measured.items():
        if attr in recorded and isinstance(recorded[attr], float):
            assert value >= recorded[attr] - 0.03, (attr, value, recorded[attr])
