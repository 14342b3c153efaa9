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
    assert m["model"] == "tiny" and m == result["models"][0] and "partial" not in m
    for key in ("generation_img_s", "generation_first_call_s", "unet_tflop_per_image", "generation_roofline_fraction",
                "unet_alone_img_s", "unet_alone_roofline_fraction", "dpo_pairs_s", "dpo_tflop_per_pair", "dpo_roofline_fraction", "adamw_step_s", "main_setup_min"):
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
    # each attention kernel timed alone where it runs (the CPU's flash and math), the reason where it does not
    att = m["attention"]
    assert att["shape"] == [8, 2, 256, 16] and att["math"]["tflop_s"] > 0 and att["flash"]["roofline_fraction"] > 0
    assert "No viable backend" in att["cudnn"]["unavailable"]
    # fp32 on the CPU: the policy and its reference copy run the same kernels, so the step-0 loss is ln 2
    assert all(abs(d["step0_loss_minus_ln2"]) < 1e-6 and d["first_call_s"] > 0 for d in m["dpo"])


def test_gpu_script_generation_only_at_another_batch(tmp_path):
    from dbdpo.bench_gpu import run

    result = run(tiny=True, out_dir=str(tmp_path), batch=3, generation_only=True)
    (m,) = json.loads(next(tmp_path.glob("gpu_*_tiny_cpu_batch3_generation.json")).read_text())["models"]
    assert m == result["models"][0] and m["batch"] == 3 and m["generation_img_s"] > 0
    assert m["unet_alone_img_s"] > 0 and m["unet_alone_roofline_fraction"] > 0  # the UNet alone, as generation calls it
    assert m["generation_syncs_per_batch"] is None and "generation_syncs_error" not in m  # counted on CUDA only
    assert not {"generation_fast_img_s", "generation_parts_s_per_image", "dpo"} & set(m)


def test_gpu_script_passes_inductor_options_and_refuses_unknown_ones(tmp_path, capsys):
    from dbdpo.bench_gpu import main, run

    options = {"coordinate_descent_tuning": True, "conv_1x1_as_mm": True}
    result = run(tiny=True, out_dir=str(tmp_path), compile_unet=True, compile_backend="eager",
                 compile_options=options, generation_only=True)
    assert result["compile_options"] == options and result["models"][0]["generation_img_s"] > 0
    assert next(tmp_path.glob("gpu_*_tiny_cpu_compile_coordinate_descent_tuning-True_conv_1x1_as_mm-True_generation.json"))
    for bad, why in (["coordinate_descent=true"], "'coordinate_descent' is not one"), (["conv_1x1_as_mm=3"], "takes a bool"), \
            (["conv_1x1_as_mm"], "is not NAME=VALUE"):
        with pytest.raises(SystemExit) as e:
            main(["--tiny", "--compile", "--compile-options", *bad, "--out", str(tmp_path / "no")])
        assert e.value.code == 2 and why in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_gpu_script_keeps_what_it_measured_when_cut_short(tmp_path, monkeypatch):
    # the device tool's time limit kills the script mid-model: generation's numbers, written as soon as measured,
    # must survive an interruption of the DPO step
    import dbdpo.dpo
    from dbdpo.bench_gpu import run

    class Killed(Exception):
        pass

    def killed(*a, **k):
        raise Killed
    monkeypatch.setattr(dbdpo.dpo.DiffusionDPOModule, "training_step", killed)
    with pytest.raises(Killed):
        run(tiny=True, out_dir=str(tmp_path))
    (m,) = json.loads(next(tmp_path.glob("gpu_*_tiny_cpu.json")).read_text())["models"]
    assert m["partial"] and m["generation_img_s"] > 0 and m["generation_fast_img_s"] > 0
    assert "generation_parts_s_per_image" in m and "dpo" not in m


def test_gpu_script_measures_the_compiled_unets_as_training_runs_them(tmp_path):
    # --compile goes through backbone.compile (generation) and backbone.compile_training (the DPO step); dynamo's
    # "eager" backend keeps it fast here (inductor's CPU code takes minutes to compile)
    from torch._dynamo.utils import counters

    from dbdpo.bench_gpu import run

    graphs = counters["stats"]["unique_graphs"]
    result = run(tiny=True, compile_unet=True, compile_backend="eager", micros=[3], out_dir=str(tmp_path),
                 sdpa_backend="math")
    assert counters["stats"]["unique_graphs"] - graphs >= 3  # sampling, the policy's training step, the reference
    (m,) = result["models"]
    assert result["compile"] and result["compile_backend"] == "eager" and result["sdpa_backend"] == "math"
    assert next(tmp_path.glob("gpu_*_tiny_cpu_compile_sdpa-math.json"))
    assert [d["micro"] for d in m["dpo"]] == [3] and m["dpo_pairs_s"] > 0 and m["generation_img_s"] > 0
    assert abs(m["dpo"][0]["step0_loss_minus_ln2"]) < 1e-6


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


@pytest.mark.parametrize("kind, channels_last", [("sd", False), ("sdxl", True)])  # SDXL: its defaults' setting
def test_backbone_compile_samples_through_the_compiled_unet_sharing_its_weights(tiny_backbone, tmp_path, kind,
                                                                                channels_last):
    # backbone.compile=true: generation samples through torch.compile(unet) (here a counting backend that runs the
    # traced graph as is), the images equal the eager UNet's, the UNet is put back afterwards (state dict keys
    # unchanged), and a weight update between generations reaches the compiled UNet without recompiling
    from dbdpo.generate import generate

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager = tiny_backbone(kind=kind, channels_last=channels_last)
    compiled = tiny_backbone(kind=kind, channels_last=channels_last, compile=True)
    assert compiled.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    compiled.compile_backend = backend
    keys = list(compiled.unet.state_dict())

    vae_keys = list(compiled.vae.state_dict())

    def gen(bb, name):
        return generate(bb, ["a photo of [V*]", "a [V*] on a beach"], "sks toy", tmp_path / name, 2, seed=0,
                        batch_size=4, progress=False).latents

    assert torch.equal(gen(compiled, "c1"), gen(eager, "e1"))
    assert graphs, "the compiled UNet was not used"
    assert compiled.pipe.unet is compiled._compiled._orig_mod and list(compiled.unet.state_dict()) == keys
    # the VAE's decoder is compiled too (the PNGs are its output), and put back
    assert compiled._compiled_decoder is not None and compiled.vae.decoder is compiled._compiled_decoder._orig_mod
    assert list(compiled.vae.state_dict()) == vae_keys
    assert [p.read_bytes() for p in sorted((tmp_path / "c1").rglob("*.png"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "e1").rglob("*.png"))]
    n_graphs = len(graphs)
    # the benchmarks time the UNet alone as the pipeline calls it: generation's graph, no new one
    from dbdpo.bench import unet_alone

    assert unet_alone(compiled, ["a photo of sks toy"] * 4, 1, torch.device("cpu")) > 0
    assert len(graphs) == n_graphs
    with torch.no_grad():  # what a DPO step does to the weights, on both
        for bb in (eager, compiled):
            bb.unet.conv_in.weight.mul_(1.5)
    after = gen(compiled, "c2")
    assert torch.equal(after, gen(eager, "e2")) and not torch.equal(after, gen(eager, "e1"))
    assert len(graphs) == n_graphs  # same weights object, no recompilation


def test_backbone_compile_options_reach_torch_compile_over_the_modes_options(tiny_backbone, tmp_path):
    # backbone.compile_options: torch.compile takes a mode or options, not both, so the backend gets the mode's
    # options with ours over them (a backend callable receives them as its `options` argument)
    from torch._inductor import list_mode_options

    from dbdpo.generate import generate

    got = []

    def backend(gm, example_inputs, options=None):
        got.append(options)
        return gm.forward

    mode, ours = "max-autotune-no-cudagraphs", {"coordinate_descent_tuning": False, "conv_1x1_as_mm": True}
    bb = tiny_backbone(compile=True, compile_mode=mode, compile_options=ours)
    assert bb.compile_options == ours
    bb.compile_backend = backend
    generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "g", 1, seed=0, progress=False)
    assert got and all(o == {**list_mode_options(mode), **ours} for o in got)
    assert got[0]["max_autotune"] is True and got[0]["coordinate_descent_tuning"] is False


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_sdpa_backend_is_first_in_every_attention_call_sampling_decoding_and_training(tiny_backbone, tmp_path):
    # backbone.sdpa_backend: every attention module runs with that kernel first in torch's order — in sampling, in
    # the VAE's decoder, in the DPO step's policy and reference forwards, and in the forwards gradient
    # checkpointing recomputes during backward (a recomputation with another kernel would save other tensors);
    # outside the backbone's work torch's own order is back
    from torch.nn.attention import SDPBackend

    from dbdpo.dpo import DiffusionDPOModule
    from dbdpo.generate import generate

    default = torch._C._get_sdp_priority_order()
    seen = []

    def record(module, args):
        seen.append((phase, torch._C._get_sdp_priority_order()[0]))

    bb = tiny_backbone(sdpa_backend="math")
    hooks = [m.register_forward_pre_hook(record) for m in [*bb.unet.modules(), *bb.vae.modules()]
             if type(m).__name__ == "Attention"]
    assert hooks
    phase = "sampling"
    generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "g", 2, seed=0, progress=False)
    bb.unet.enable_gradient_checkpointing()
    bb.unet.train()
    module = DiffusionDPOModule(bb, beta=5000.0)
    batch = {"latents_w": torch.randn(2, *bb.latent_shape), "latents_l": torch.randn(2, *bb.latent_shape),
             "prompt": ["a photo of sks toy", "a sks toy on a beach"]}
    phase = "forward"
    loss = module.training_step(batch, 0)
    phase = "backward"
    module.backward(loss)
    assert {p for p, _ in seen} == {"sampling", "forward", "backward"}
    assert all(first == int(SDPBackend.MATH.value) for _, first in seen), seen
    assert torch._C._get_sdp_priority_order() == default
    assert all(p.grad is not None for p in bb.unet.parameters() if p.requires_grad)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_sdpa_backend_this_device_cannot_run_warns_once_and_torchs_order_runs(tiny_backbone, tmp_path):
    # cuDNN's attention on a CPU: one warning naming the setting and the fallback, then torch's other kernels —
    # the same images as without the setting
    from dbdpo.backbones import sdpa_unavailable
    from dbdpo.dpo import DiffusionDPOModule
    from dbdpo.generate import generate

    assert "no such kernel" in sdpa_unavailable("cudnn", torch.device("cpu"), torch.float32)
    assert sdpa_unavailable("math", torch.device("cpu"), torch.float32) is None
    bb = tiny_backbone(sdpa_backend="cudnn")
    with pytest.warns(UserWarning, match=r"backbone.sdpa_backend=cudnn: that attention kernel cannot run here "
                                         r"\(torch has no such kernel.*torch's other kernels run instead") as rec:
        a = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "a", 2, seed=0, progress=False)
        module = DiffusionDPOModule(bb, beta=5000.0)
        batch = {"latents_w": torch.randn(2, *bb.latent_shape), "latents_l": torch.randn(2, *bb.latent_shape),
                 "prompt": ["a photo of sks toy", "a sks toy on a beach"]}
        module.backward(module.training_step(batch, 0))
    assert sum("backbone.sdpa_backend" in str(w.message) for w in rec) == 1
    b = generate(tiny_backbone(), ["a photo of [V*]"], "sks toy", tmp_path / "b", 2, seed=0, progress=False)
    assert torch.equal(a.latents, b.latents)


def test_backbone_compile_where_it_cannot_run_warns_and_samples_eagerly(tiny_backbone, tmp_path, monkeypatch):
    from dbdpo.backbones import compile_unavailable
    from dbdpo.generate import generate

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no C++ compiler for inductor's CPU code
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in compile_unavailable(torch.device("cpu"))
    bb = tiny_backbone(compile=True)
    with pytest.warns(UserWarning, match=r"backbone.compile=true.*C\+\+ compiler.*eager UNet.*backbone.compile=false") \
            as rec:
        a = generate(bb, ["a photo of [V*]"], "sks toy", tmp_path / "a", 2, seed=0, progress=False)
    assert sum("backbone.compile=true" in str(w.message) for w in rec) == 1  # one warning, for the UNet and VAE
    b = generate(tiny_backbone(), ["a photo of [V*]"], "sks toy", tmp_path / "b", 2, seed=0, progress=False)
    assert torch.equal(a.latents, b.latents) and bb.compile is False
    assert compile_unavailable(torch.device("cpu"), "no-such-backend") == "no backend 'no-such-backend'"


NO_TRAINER_LOG = "ignore:You are trying to `self.log\\(\\)`"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo's compiled code is process-wide and shared by every module whose guards pass: each test starts
    without another test's graphs (or backend)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def counting_backend(graphs: list, inputs: list | None = None):
    """A torch.compile backend that records each traced graph (and its example inputs) and runs it as traced
    (numerically eager)."""
    def backend(gm, example_inputs):
        graphs.append(gm)
        if inputs is not None:
            inputs.append(example_inputs)
        return gm.forward
    return backend


def dpo_run(bb, kind: str, n_steps: int = 2, on_step=lambda: None):
    """`n_steps` DPO optimizer steps of one micro-batch each on `bb` (`on_step()` after each): the losses, the last
    step's gradients and the module."""
    from dbdpo.adapters import make_adapter
    from dbdpo.dpo import DiffusionDPOModule

    torch.manual_seed(0)  # LoRA's initialisation
    adapter = make_adapter({"adapter": {"kind": kind}})
    if kind != "full":
        adapter.attach(bb.unet)
    module = DiffusionDPOModule(bb, adapter=None if kind == "full" else adapter, gradient_checkpointing=True,
                                lr=1e-3)
    opt = module.configure_optimizers()["optimizer"]
    module.adapter.amortize(module.unet, True)
    g = torch.Generator().manual_seed(1)
    batch = {"latents_w": torch.randn(2, *bb.latent_shape, generator=g),
             "latents_l": torch.randn(2, *bb.latent_shape, generator=g), "prompt": ["a photo of [V*]", "a [V*]"]}
    losses = []
    for step in range(n_steps):
        loss = module.training_step(batch, step)
        loss.backward()
        module.on_after_backward()
        module.on_before_optimizer_step(opt)
        grads = [p.grad.clone() for group in module.trained_groups() for p in group["params"]]
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        on_step()
    module.on_train_end()
    return losses, grads, module


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
@pytest.mark.parametrize("kind, backbone", [("full", "sd"), ("lora", "sd"), ("svdiff", "sd"), ("full", "sdxl")])
def test_compile_training_runs_the_dpo_step_through_compiled_unets(tiny_backbone, kind, backbone):
    # backbone.compile_training=true: the policy (and a full fine-tune's frozen reference) run through
    # torch.compile(unet), here a counting backend that runs the traced graph as is, so losses and gradients equal
    # the eager step's exactly; gradient checkpointing traces too; the optimizer's update (SVDiff: the next step's
    # W(δ) leaves) reaches the compiled UNet without a recompile or a graph break; the wrappers stay out of the
    # module tree (same state dict keys)
    from torch._dynamo.utils import counters

    eager_losses, eager_grads, eager = dpo_run(tiny_backbone(kind=backbone), kind)
    breaks = sum(counters["graph_break"].values())  # process-wide
    graphs, counts = [], []
    bb = tiny_backbone(kind=backbone, compile_training=True)
    bb.compile_backend = counting_backend(graphs)
    losses, grads, module = dpo_run(bb, kind, on_step=lambda: counts.append(len(graphs)))
    assert counts[0] >= 2, "the policy and the reference did not go through torch.compile"
    assert counts[1] == counts[0]  # the second step, after the update: no recompilation
    assert counts[0] <= 3 and sum(counters["graph_break"].values()) == breaks  # whole graphs, no breaks
    assert losses == eager_losses and losses[0] == pytest.approx(0.693147, abs=1e-6) and losses[1] != losses[0]
    assert len(grads) == len(eager_grads) and all(torch.equal(a, b) for a, b in zip(grads, eager_grads))
    assert list(module.state_dict()) == list(eager.state_dict())


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_compile_training_where_it_cannot_run_warns_once_and_trains_eagerly(tiny_backbone):
    bb = tiny_backbone(compile_training=True, compile_backend="no-such-backend")
    with pytest.warns(UserWarning, match=r"backbone.compile_training=true: torch.compile is unavailable here "
                                         r"\(no backend 'no-such-backend'\); training with the eager UNet instead "
                                         r"\(set backbone.compile_training=false") as caught:
        losses, _, _ = dpo_run(bb, "full")  # the policy and its reference: one warning
    assert losses == dpo_run(tiny_backbone(), "full")[0]
    assert sum("compile_training" in str(w.message) for w in caught) == 1 and bb.compile_training is False


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_compile_training_runs_dreambooth_through_the_compiled_unet(tiny_backbone, concept_dir):
    from dbdpo.concept import Concept, ConceptDataModule
    from dbdpo.personalize import DreamBoothModule

    dm = ConceptDataModule(Concept("c", "toy", str(concept_dir)), 32, batch_size=2, repeats=2)
    batch = next(iter(dm.train_dataloader()))
    graphs, out = [], {}
    for name, bb in (("eager", tiny_backbone()), ("compiled", tiny_backbone(compile_training=True))):
        bb.compile_backend = counting_backend(graphs)
        module = DreamBoothModule(bb)
        module.setup("fit")
        loss = module.training_step(batch, 0)
        loss.backward()
        out[name] = (loss.item(), [p.grad.clone() for p in bb.unet.parameters()])
    assert graphs and out["compiled"][0] == out["eager"][0]
    assert all(torch.equal(a, b) for a, b in zip(out["compiled"][1], out["eager"][1]))


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_compile_training_keeps_static_shapes_when_the_last_micro_batch_is_smaller(tiny_backbone):
    # an epoch's last micro-batch is short: it gets a graph of its own, and the full-size graph stays static
    # (automatic dynamic shapes would make every later step run a symbolic-shape graph)
    from dbdpo.dpo import DiffusionDPOModule

    graphs, inputs = [], []
    bb = tiny_backbone(compile_training=True)
    bb.compile_backend = counting_backend(graphs, inputs)
    module = DiffusionDPOModule(bb)
    for m in (2, 1, 2):
        batch = {"latents_w": torch.randn(m, *bb.latent_shape), "latents_l": torch.randn(m, *bb.latent_shape),
                 "prompt": ["a [V*]"] * m}
        module.training_step(batch, 0).backward()
    n = len(graphs)
    assert n >= 4  # policy and reference, at 2 and at 1 pair
    assert not any(isinstance(x, torch.SymInt) or (isinstance(x, torch.Tensor) and any(
        isinstance(d, torch.SymInt) for d in x.shape)) for ex in inputs for x in ex)
    module.training_step(batch, 0).backward()
    assert len(graphs) == n


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_compile_training_frees_each_stages_reference(tiny_backbone):
    # a full fine-tune's frozen reference is a new copy every DPO stage (SDXL: 5 GB in bf16): once a stage's module
    # is gone, its compiled reference must be too (here through AOT autograd, as inductor compiles)
    import gc
    import weakref

    from dbdpo.dpo import DiffusionDPOModule

    bb = tiny_backbone(compile_training=True, compile_backend="aot_eager")
    refs = []
    for _ in range(2):
        module = DiffusionDPOModule(bb)
        refs.append(weakref.ref(module.ref_unet))
        batch = {"latents_w": torch.randn(2, *bb.latent_shape), "latents_l": torch.randn(2, *bb.latent_shape),
                 "prompt": ["a [V*]", "a photo of [V*]"]}
        module.training_step(batch, 0).backward()
        assert module._unet_calls, "the step did not run through torch.compile"
        del module, batch
        gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.inductor
@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_compiled_dpo_in_bf16_keeps_policy_and_reference_bitwise_equal_at_step_0(tiny_backbone):
    # inductor fuses the policy's training graph and the reference's inference graph differently; rounding to bf16
    # once per fused kernel then moved the step-0 loss up to 0.26 from ln 2 at β = 5000. With eager rounding
    # (emulate_precision_casts, which compile_training sets) both agree to the bit, as eager forwards do.
    import copy
    import math

    from dbdpo.dpo import DiffusionDPOModule

    bb = tiny_backbone(compile_training=True)
    module = DiffusionDPOModule(bb, ref_unet=copy.deepcopy(bb.unet).to(torch.bfloat16))
    g = torch.Generator().manual_seed(1)
    for step in range(2):
        batch = {"latents_w": torch.randn(8, *bb.latent_shape, generator=g),
                 "latents_l": torch.randn(8, *bb.latent_shape, generator=g), "prompt": ["a photo of [V*]"] * 8}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.training_step(batch, step)
        loss.backward()
        bb.unet.zero_grad(set_to_none=True)
        assert abs(loss.item() - math.log(2)) < 1e-6
    assert module._unet_calls


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
@pytest.mark.parametrize("kind", ["full", "svdiff"])
def test_channels_last_trains_and_saves_like_the_default_layout(tiny_backbone, tmp_path, kind):
    # backbone.channels_last=true: the UNet's 4-D weights in NHWC order (the reference copy too); the DPO step's
    # losses and gradients match the default layout's to float rounding, and save_pretrained round-trips the weights
    from diffusers import UNet2DConditionModel

    bb = tiny_backbone(channels_last=True)
    assert bb.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not bb.unet.conv_in.weight.is_contiguous()
    losses, grads, module = dpo_run(bb, kind)
    ref_losses, ref_grads, _ = dpo_run(tiny_backbone(), kind)
    # step 0 is ln 2 in both; after one update β = 5000 magnifies the layouts' float rounding
    assert losses[0] == pytest.approx(0.693147, abs=1e-6) and losses == pytest.approx(ref_losses, rel=1e-3)
    assert all((a - b).abs().max() <= 1e-3 * b.abs().max() for a, b in zip(grads, ref_grads))
    if kind == "full":
        assert module.ref_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        bb.unet.save_pretrained(tmp_path / "unet")
        back = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), bb.unet.state_dict().values()))
