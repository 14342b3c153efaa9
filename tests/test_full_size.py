"""Full-size SD2-base / SDXL-base architectures from their published configs (random weights, no download)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbdpo.full_size import PUBLISHED, build_component, build_pipeline, n_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model,component", [(m, c) for m in PUBLISHED for c in PUBLISHED[m]])
def test_published_configs_give_the_published_parameter_counts(model, component):
    assert n_params(build_component(model, component, device="meta")) == PUBLISHED[model][component]


def svdiff_delta_count(unet) -> int:
    """One δ per singular value of every Conv2d / Linear weight (flattened to out × in·k·k)."""
    return sum(min(m.weight.shape[0], m.weight[0].numel()) for m in unet.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def test_svdiff_and_lora_sizes_on_the_full_size_unets(tiny_backbone):
    from dbdpo.adapters import LoRA, SVDiff

    # the δ count formula is what SVDiff attaches (checked on the tiny UNet, where the SVDs are cheap)
    bb = tiny_backbone()
    want = svdiff_delta_count(bb.unet)
    SVDiff().attach(bb.unet)
    assert sum(p.delta.numel() for m in bb.unet.modules() if hasattr(m, "parametrizations")
               for p in m.parametrizations.weight) == want
    sizes = {}
    for model in PUBLISHED:
        unet = build_component(model, "unet", device="meta")
        sizes[model, "svdiff"] = svdiff_delta_count(unet)
        LoRA(rank=4).attach(unet)
        lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
        # rank 4 on to_q, to_k, to_v, to_out.0: r · (in + out) per projection
        assert lora == sum(4 * (m.base_layer.in_features + m.base_layer.out_features) for m in unet.modules()
                           if hasattr(m, "base_layer") and isinstance(m.base_layer, torch.nn.Linear))
        sizes[model, "lora"] = lora
    assert sizes == {("sd2-base", "svdiff"): 225_768, ("sd2-base", "lora"): 829_952,
                     ("sdxl-base", "svdiff"): 909_800, ("sdxl-base", "lora"): 5_806_080}


@pytest.mark.fullsize
def test_full_size_sd2_saves_and_loads_through_the_users_path(tmp_path):
    """~5 GB of fp32 weights written and read back: run with `pytest -m fullsize`."""
    from dbdpo.backbones import build_backbone

    build_pipeline("sd2-base", tmp_path / "sd2")
    bb = build_backbone({"name": "sd2", "kind": "sd", "pretrained": str(tmp_path / "sd2"), "resolution": 64,
                         "sampler": "PNDMScheduler", "num_inference_steps": 2, "guidance_scale": 7.5})
    assert n_params(bb.unet) == PUBLISHED["sd2-base"]["unet"]
    cond = bb.encode_prompts(["a photo of sks dog"])
    assert cond.hidden.shape == (1, 77, 1024)


@pytest.mark.fullsize
def test_full_size_sdxl_saves_and_loads_through_the_users_path(tmp_path):
    from dbdpo.backbones import build_backbone

    build_pipeline("sdxl-base", tmp_path / "sdxl", dtype=torch.bfloat16)
    bb = build_backbone({"name": "sdxl", "kind": "sdxl", "pretrained": str(tmp_path / "sdxl"), "resolution": 64,
                         "dtype": "bfloat16", "sampler": "EulerDiscreteScheduler", "num_inference_steps": 2,
                         "guidance_scale": 5.0})
    assert n_params(bb.unet) == PUBLISHED["sdxl-base"]["unet"]
    cond = bb.with_sizes(bb.encode_prompts(["a photo of sks dog"]))
    assert cond.hidden.shape == (1, 77, 2048) and cond.added["text_embeds"].shape == (1, 1280)


@pytest.mark.fullsize
@pytest.mark.parametrize("model,backbone", [("sd2-base", "sd2"), ("sdxl-base", "sdxl")])
def test_train_py_on_the_full_size_architecture(model, backbone, tmp_path):
    """One whole train.py (LoRA) at 128 px with tiny N, M and steps; measured figures in experiments/memory.md."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    # built in its own process: this one keeps its memory small for train.py's (SDXL: ~20 GB)
    subprocess.run([sys.executable, "-m", "dbdpo.full_size", model, str(tmp_path / "pipe"), "--dtype", "bfloat16"],
                   check=True, env=env, capture_output=True, timeout=1800)
    args = [f"backbone={backbone}", f"backbone.pretrained={tmp_path / 'pipe'}", "backbone.resolution=128",
            "backbone.num_inference_steps=2", "backbone.dtype=float32", "trainer.precision=32-true", "scorer=tiny",
            "concept=default", "method=lora", "method.max_steps=2", "prompts.n=2", "steps=1",
            "generate.images_per_prompt=2", "generate.batch_size=2", "eval.max_prompts=1", "eval.images_per_prompt=2",
            "dpo.batch_size=2", "dpo.micro_batch_size=1", "dpo.epochs=1", "logger=none", "progress=false",
            "filter=weighted", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"personalize", "step_1"}


@pytest.mark.fullsize
def test_gpu_script_code_path_on_the_full_size_models(tmp_path):
    """`python -m dbdpo.bench_gpu --check`: SD2-base (generation + DPO step) and SDXL-base (generation) at 64 px on
    the CPU — the path the GPU run takes (2.5 min, 20 GB)."""
    from dbdpo.bench_gpu import run

    result = run(check=True, out_dir=str(tmp_path))
    sd2, sdxl = result["models"]
    assert sd2["model"] == "sd2-base" and sd2["dpo_pairs_s"] > 0 and sd2["unet_tflop_per_image"] > 0
    assert sdxl["model"] == "sdxl-base" and sdxl["generation_img_s"] > 0 and "dpo_pairs_s" not in sdxl
