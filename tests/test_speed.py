"""The benchmark (ours beside the naive loop, same outputs asserted inside), the GPU script at tiny size, and the
fast preset's sampler swap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_runs_every_stage_against_its_baseline_and_writes_ratios(tmp_path):
    from dbdpo.bench import run

    result = run(repeat=1, out_dir=str(tmp_path), quick=True)
    saved = json.loads(next(tmp_path.glob("*_cpu.json")).read_text())
    for stage in ("generation", "scoring", "dpo", "pairs", "generation_fast"):
        assert saved[f"{stage}_ratio"] == pytest.approx(result[f"{stage}_ratio"]) and saved[f"{stage}_ratio"] > 0
        assert saved[f"{stage}_ours_per_s"] > 0
    assert {"date", "device", "torch", "diffusers"} <= set(saved["environment"])
    parts = saved["breakdown_s_per_item"]
    for key in ("text encoding", "UNet (all sampler steps, CFG)", "VAE decode", "PNG writing",
                "scoring (CLIP image + text)", "DPO policy forward+backward", "DPO reference forward",
                "DPO data loading (stored latents)"):
        assert parts[key] > 0, key


def test_gpu_script_runs_at_tiny_size_on_the_cpu(tmp_path):
    from dbdpo.bench_gpu import run

    result = run(tiny=True, out_dir=str(tmp_path))
    saved = json.loads(next(tmp_path.glob("gpu_*_tiny_cpu.json")).read_text())
    assert saved["matmul_tflop_s"] > 0
    (m,) = saved["models"]
    assert m["model"] == "tiny" and m == result["models"][0]
    for key in ("generation_img_s", "unet_tflop_per_image", "generation_roofline_fraction", "dpo_pairs_s",
                "dpo_tflop_per_pair", "dpo_roofline_fraction", "adamw_step_s", "main_setup_min"):
        assert m[key] > 0, key
    # the tiny UNet's flops: 5 steps of a 2-row CFG batch
    assert m["unet_tflop_per_image"] < 1e-2 and m["unet_calls_per_image"] == 5
    # generate=fast: 2 DPM-Solver++ steps against 5 DDIM steps
    assert m["generation_fast_steps"] == 2 and m["generation_fast_img_s"] > 0
    assert m["main_setup_fast_min"] < m["main_setup_min"] * (1 + 1e-9) or m["generation_fast_speedup"] < 1
    # every DPO micro-batch timed, the fastest one sets the rate used for the main setup
    assert [d["micro"] for d in m["dpo"]] == [2, 4]
    assert m["dpo_pairs_s"] == max(d["pairs_s"] for d in m["dpo"])
    assert all(d["tflop_per_pair"] == pytest.approx(m["dpo"][0]["tflop_per_pair"], rel=1e-2) for d in m["dpo"])
    parts = m["generation_parts_s_per_image"]
    assert {"text encoding", "UNet (all sampler steps, CFG)", "VAE decode",
            "generation, one batch end to end (without decode/PNG)", "PNG writing"} <= set(parts)
    assert any(k.startswith("PNG writing, ") and "threads" in k for k in parts)
    assert all(v > 0 for v in parts.values())


def test_fast_preset_swaps_the_sampler_for_the_dpo_samples_only(tiny_backbone, tmp_path):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from dbdpo.generate import generate

    bb = tiny_backbone()
    before = bb.pipe.scheduler
    a = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "fast", 2, seed=0, num_inference_steps=2,
                 sampler="DPMSolverMultistepScheduler", progress=False)
    assert bb.pipe.scheduler is before and isinstance(before, DDIMScheduler)  # restored
    manifest = json.loads((tmp_path / "fast" / "generation.json").read_text())
    assert manifest["sampler"] == "DPMSolverMultistepScheduler" and manifest["num_inference_steps"] == 2
    b = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "default", 2, seed=0, num_inference_steps=2,
                 progress=False)
    assert not torch.equal(a.latents, b.latents)  # another solver, other samples
    bb.pipe.scheduler = DPMSolverMultistepScheduler.from_config(before.config)
    c = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "again", 2, seed=0, num_inference_steps=2,
                 progress=False)
    torch.testing.assert_close(a.latents, c.latents)  # exactly what the swapped-in solver gives


def test_fast_preset_on_a_backbone_whose_scheduler_cannot_be_swapped(tiny_backbone):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dbdpo.errors import DbdpoError
    from dbdpo.generate import check_sampler

    bb = tiny_backbone()
    check_sampler(bb, "DPMSolverMultistepScheduler")
    bb.pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(DbdpoError, match="generate.sampler=DPMSolverMultistepScheduler.*cannot be swapped"):
        check_sampler(bb, "DPMSolverMultistepScheduler")


@pytest.mark.parametrize("backbone, steps", [("sd2", 20), ("world", 5), ("tiny", 2)])
def test_generate_fast_composes_with_the_backbones_fast_steps(backbone, steps):
    cfg = compose_config(["generate=fast", f"backbone={backbone}"])
    assert cfg.generate.sampler == "DPMSolverMultistepScheduler" and cfg.generate.num_inference_steps == steps
    assert cfg.generate.images_per_prompt == compose_default_m(backbone)


def compose_default_m(backbone: str) -> int:
    return compose_config([f"backbone={backbone}"]).generate.images_per_prompt


def test_ddim_eta_gives_other_samples_and_is_recorded(tiny_backbone, tmp_path):
    from dbdpo.generate import generate

    bb = tiny_backbone()
    a = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "eta0", 2, seed=0, progress=False)
    b = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "eta1", 2, seed=0, eta=1.0, progress=False)
    c = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "eta1b", 2, seed=0, eta=1.0, progress=False)
    assert not torch.equal(a.latents, b.latents) and torch.equal(b.latents, c.latents)  # stochastic, still seeded
    assert json.loads((tmp_path / "eta1" / "generation.json").read_text())["eta"] == 1.0
    assert "eta" not in json.loads((tmp_path / "eta0" / "generation.json").read_text())  # old caches stay valid


def test_backbone_compile_samples_through_the_compiled_unet_sharing_its_weights(tiny_backbone, tmp_path):
    # backbone.compile=true: generation samples through torch.compile(unet) (here a counting backend that runs the
    # traced graph as is), the images equal the eager UNet's, the UNet is put back afterwards (state dict keys
    # unchanged), and a weight update between generations reaches the compiled UNet without recompiling
    from dbdpo.generate import generate

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager, compiled = tiny_backbone(), tiny_backbone(compile=True)
    compiled.compile_backend = backend
    keys = list(compiled.unet.state_dict())

    def gen(bb, name):
        return generate(bb, ["a photo of [V*]", "a [V*] on a beach"], "sks toy", tmp_path / name, 2, seed=0,
                        batch_size=4, progress=False).latents

    assert torch.equal(gen(compiled, "c1"), gen(eager, "e1"))
    assert graphs, "the compiled UNet was not used"
    assert compiled.pipe.unet is compiled._compiled._orig_mod and list(compiled.unet.state_dict()) == keys
    n_graphs = len(graphs)
    with torch.no_grad():  # what a DPO step does to the weights, on both
        for bb in (eager, compiled):
            bb.unet.conv_in.weight.mul_(1.5)
    after = gen(compiled, "c2")
    assert torch.equal(after, gen(eager, "e2")) and not torch.equal(after, gen(eager, "e1"))
    assert len(graphs) == n_graphs  # same weights object, no recompilation


def test_backbone_compile_where_it_cannot_run_warns_and_samples_eagerly(tiny_backbone, tmp_path, monkeypatch):
    from dbdpo.backbones import compile_unavailable
    from dbdpo.generate import generate

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no C++ compiler for inductor's CPU code
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in compile_unavailable(torch.device("cpu"))
    bb = tiny_backbone(compile=True)
    with pytest.warns(UserWarning, match=r"backbone.compile=true.*C\+\+ compiler.*eager UNet.*backbone.compile=false"):
        a = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "a", 2, seed=0, progress=False)
    b = generate(tiny_backbone(), ["a photo of [V*]"], "sks toy", tmp_path / "b", 2, seed=0, progress=False)
    assert torch.equal(a.latents, b.latents) and bb.compile is False
    assert compile_unavailable(torch.device("cpu"), "no-such-backend") == "no backend 'no-such-backend'"
