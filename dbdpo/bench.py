"""`python -m dbdpo.bench`: every stage of the loop, ours beside the naive loop a user would write, in one run.

| stage | ours | naive baseline |
|---|---|---|
| generation | `generate`: batches across prompts, per-sample seeds, latents kept for DPO | the pipeline called once per prompt (M images), PNGs written |
| scoring | `score_generation`: batched CLIP, each distinct text encoded once | one CLIP call per image and its text |
| DPO optimizer step | stored latents, prompts encoded once, one policy and one reference forward over [x_w; x_l] | PNGs re-encoded through the VAE, prompts encoded per micro-batch, two policy and two reference forwards per micro-batch |
| pair building | vectorised `build_pairs` | a Python double loop over each prompt's images |
| SVDiff DPO step | W(δ) built once per optimizer step | W(δ) rebuilt in every forward |
| generate=fast | DPM-Solver++, 20 steps | the backbone's sampler (SD2: PNDM, 50 steps) |

Every row but the last asserts that ours and the baseline give the same outputs (images, scores, DPO gradients,
pairs), so a ratio never hides a shortcut; the fast preset makes other samples by design (its effect on the
claims is checked with `verify`). A per-stage breakdown says where our time goes (text encoding, UNet, VAE decode, PNG
writing, scoring, DPO policy forward/backward, reference forward, data loading). Results go to a table and to
`results/bench/<date>_<device>.json` (device, versions, date; keys `<stage>_ratio`, `<stage>_ours_per_s`, …).
`--compile`: ours samples and trains through torch.compile, as `backbone.compile` and `backbone.compile_training`
run it (the naive loops stay eager, the equality checks stay on); results in `<date>_<device>_compile.json`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HOLDER = "sks toy"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable, repeat: int, device: torch.device = torch.device("cpu")) -> float:
    """Best of `repeat` runs after one warm-up run."""
    fn()
    best = math.inf
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _peak(device: torch.device, fn: Callable) -> float | None:
    """Peak CUDA memory (GB) of `fn`; None on the CPU (see `process_peak_gb`)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    return torch.cuda.max_memory_allocated(device) / 1024 ** 3


def count_flops(fn: Callable, bb=None) -> int:
    """FLOPs of `fn` by torch's flop counter (matmuls and convolutions); with the backbone `bb`, its UNet runs
    uncompiled meanwhile (the counter sees eager operators only)."""
    from torch.utils.flop_counter import FlopCounterMode

    saved = (bb.compile, bb.compile_training) if bb is not None else None
    if bb is not None:
        bb.compile = bb.compile_training = False
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        if bb is not None:
            bb.compile, bb.compile_training = saved
    return counter.get_total_flops()


def matmul_rate(device: torch.device, n: int | None = None) -> float:
    """The roofline: FLOP/s of a large GEMM (2n³ FLOPs) in the dtype training and generation compute in here
    (fp32 on the CPU, bf16 on a GPU). On a GPU, 100 GEMMs per timing (≈ 0.15 s on an H200) and the best of 5: 20
    GEMMs per timing, best of 3, moved between 720 and 796 TFLOP/s across runs on the same H200 (clocks ramping)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (8192 if device.type == "cuda" else 1024)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    reps, best_of = (100, 5) if device.type == "cuda" else (3, 3)
    return 2 * n ** 3 * reps / _time(lambda: [a @ b for _ in range(reps)], best_of, device)


def process_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _row(stage: str, unit: str, n: int, t_ours: float, t_base: float, ours: str, base: str, **extra) -> dict:
    return {"stage": stage, "unit": unit, "n": n, "ours_s": t_ours, "baseline_s": t_base, "ours": ours,
            "baseline": base, "ours_per_s": n / t_ours, "baseline_per_s": n / t_base, "ratio": t_base / t_ours,
            **extra}


# ---- setups -----------------------------------------------------------------------------------------------

def tiny_setup(device: torch.device, resolution: int = 32, steps: int = 5):
    """The tiny backbone and CLIP (random, built in code): what the CPU benchmark runs on."""
    from .backbones import build_backbone
    from .scores import build_scorer

    bb = build_backbone({"name": "tiny", "resolution": resolution, "num_inference_steps": steps,
                         "guidance_scale": 3.0}).to(device)
    scorer = build_scorer({"model_name": "dbdpo-tiny-clip", "pretrained": None, "seed": 0, "batch_size": 64},
                          device=str(device))
    return bb, scorer


def prompts_for(n: int) -> list[str]:
    return [f"a photo of [V*] with item {i}" for i in range(n)]


# ---- generation -------------------------------------------------------------------------------------------

def naive_generate(bb, prompts: list[str], m: int, seed: int, out: Path) -> list[Path]:
    """The pipeline once per prompt (its M images in one call, decoded to PIL inside), PNGs written."""
    from .generate import format_prompt, sample_seed

    paths = []
    for p, prompt in enumerate(prompts):
        seeds = [sample_seed(prompt, j, seed) for j in range(m)]
        latents = torch.stack([torch.randn(bb.latent_shape, generator=torch.Generator().manual_seed(s))
                               for s in seeds]).to(bb.device, bb.unet.dtype)
        with torch.no_grad(), bb.autocast():
            images = bb.pipe(prompt=format_prompt(prompt, HOLDER), num_images_per_prompt=m, latents=latents,
                             height=bb.resolution, width=bb.resolution, num_inference_steps=bb.num_inference_steps,
                             guidance_scale=bb.guidance_scale, output_type="pil",
                             generator=[torch.Generator().manual_seed(s + 1) for s in seeds]).images
        for j, im in enumerate(images):
            paths.append(out / f"p{p:05d}_{j:03d}.png")
            im.save(paths[-1])
    return paths


def bench_generation(bb, n_prompts: int, m: int, batch: int, repeat: int, device) -> dict:
    from PIL import Image

    from .generate import generate

    prompts = prompts_for(n_prompts)

    def ours(d: str):
        return generate(bb, prompts, HOLDER, d, m, seed=0, batch_size=batch, prompts_per_shard=max(1, batch // m),
                        progress=False)

    def base(d: str):
        return naive_generate(bb, prompts, m, 0, Path(d))

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        s, paths = ours(a), base(b)
        x = np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in s.images])
        y = np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in paths])
        diff = np.abs(x - y)
        assert diff.max() <= 2 and diff.mean() < 0.05, f"generation differs: max {diff.max()}, mean {diff.mean()}"

    def timed(fn):
        def run():
            with tempfile.TemporaryDirectory() as d:
                fn(d)
        return run

    t_ours, t_base = _time(timed(ours), repeat, device), _time(timed(base), repeat, device)
    peak = _peak(device, timed(ours))
    flops = count_flops(timed(ours), bb)
    return _row("generation", "img", n_prompts * m, t_ours, t_base, f"generate, batch {batch}",
                f"pipeline per prompt (M={m})", peak_gb=peak, max_pixel_diff=int(diff.max()), flops=flops)


def bench_fast_preset(bb, n_prompts: int, m: int, batch: int, repeat: int, device, steps: int = 50,
                      fast_steps: int = 20) -> dict:
    """generate=fast (DPM-Solver++ in `fast_steps`) beside SD2's own sampler settings (PNDM, `steps`): a speed-up
    with other samples (another solver), so no equality is asserted; its effect on the claims is checked with
    `verify` (experiments/fast_preset.md)."""
    import diffusers

    from .generate import generate

    prompts = prompts_for(n_prompts)
    old_sched, old_steps = bb.pipe.scheduler, bb.num_inference_steps
    bb.pipe.scheduler, bb.num_inference_steps = diffusers.PNDMScheduler.from_config(old_sched.config), steps

    def run(**kw):
        def go():
            with tempfile.TemporaryDirectory() as d:
                generate(bb, prompts, HOLDER, d, m, seed=0, batch_size=batch, progress=False, **kw)
        return go

    try:
        t_fast = _time(run(sampler="DPMSolverMultistepScheduler", num_inference_steps=fast_steps), repeat, device)
        t_default = _time(run(), repeat, device)
    finally:
        bb.pipe.scheduler, bb.num_inference_steps = old_sched, old_steps
    return _row("generation_fast", "img", n_prompts * m, t_fast, t_default,
                f"generate=fast: DPM-Solver++ {fast_steps} steps", f"PNDM {steps} steps (SD2's sampler)",
                same_outputs=False)


# ---- scoring ----------------------------------------------------------------------------------------------

def bench_scoring(bb, scorer, n_prompts: int, m: int, repeat: int, device) -> dict:
    from .generate import generate
    from .scores import image_similarity, remove_subject, score_generation, text_similarity

    with tempfile.TemporaryDirectory() as d:
        samples = generate(bb, prompts_for(n_prompts), HOLDER, d, m, seed=1, batch_size=64, progress=False)
        images = samples.load_images()
        ref = scorer.embed_images(images[:3], reference=True)

        def ours():
            return score_generation(scorer, samples, ref, HOLDER, progress=False)

        def base():
            out = {"is": [], "ts": []}
            for im, prompt in zip(images, samples.prompts):
                e = scorer.embed_images([im])
                t = scorer.embed_texts([remove_subject(prompt, HOLDER)])
                out["is"].append(float(image_similarity(e, ref)[0]))
                out["ts"].append(float(text_similarity(e, t)[0]))
            return out

        a, b = ours(), base()
        np.testing.assert_allclose(a["is"], b["is"], atol=1e-5)
        np.testing.assert_allclose(a["ts"], b["ts"], atol=1e-5)
        t_ours, t_base = _time(ours, repeat, device), _time(base, repeat, device)
    return _row("scoring", "img", len(images), t_ours, t_base, "batched, texts once", "one CLIP call per image")


# ---- DPO --------------------------------------------------------------------------------------------------

class _NaiveDPO:
    """Diffusion-DPO as a first implementation writes it: winners and losers read back from their PNGs and
    encoded by the VAE, the prompts encoded per micro-batch, the policy and the reference each called on x_w and
    x_l separately. `step(latents=...)` runs the same computation on given latents (for the equality check)."""

    def __init__(self, module, images, texts):
        self.m, self.images, self.texts = module, images, texts

    def latents_of(self, idx: list[int]) -> torch.Tensor:
        from .concept import to_tensor

        pixels = torch.stack([to_tensor(self.images[i]) for i in idx])
        with torch.no_grad():
            return self.m.backbone.pipe.vae.encode(pixels.to(self.m.device)).latent_dist.mean \
                * self.m.backbone.scaling_factor

    def loss(self, lw, ll, texts, noise, t):
        from .dpo import dpo_loss
        from .personalize import diffusion_target

        m = self.m
        cond = m.backbone.encode_prompts(list(texts)).to(m.device)  # every micro-batch

        def mse(unet, x):
            pred = unet(m.noise_scheduler.add_noise(x, noise, t), t, **cond.unet_kwargs(), return_dict=False)[0]
            return (pred.float() - diffusion_target(m.noise_scheduler, x, noise, t).float()).pow(2).mean(
                dim=(1, 2, 3))

        mw, ml = mse(m.unet, lw), mse(m.unet, ll)
        with torch.no_grad():
            rw, rl = mse(m.ref_unet, lw), mse(m.ref_unet, ll)
        return dpo_loss(mw, ml, rw, rl, m.hparams.beta)["loss"]


def bench_dpo(bb, pairs: int, micro: int, repeat: int, device) -> dict:
    from .dpo import DiffusionDPOModule
    from .generate import generate

    prompts = prompts_for(pairs)
    with tempfile.TemporaryDirectory() as d:
        samples = generate(bb, prompts, HOLDER, d, 2, seed=2, batch_size=64, progress=False)
        images = samples.load_images()
    module = DiffusionDPOModule(bb, beta=5000.0)
    module.to(device)
    winner = list(range(0, 2 * len(prompts), 2))[:pairs]
    loser = [w + 1 for w in winner]

    class P:  # the pairs of one step
        pass

    order = [list(range(i, min(i + micro, pairs))) for i in range(0, pairs, micro)]
    naive = _NaiveDPO(module, images, samples.texts)
    params = [p for p in module.unet.parameters() if p.requires_grad]

    def grads():
        g = [p.grad.clone() for p in params]
        module.unet.zero_grad(set_to_none=True)
        return g

    def ours():  # the micro-batches from the stored latents, as PairDataset hands them out
        for k, idx in enumerate(order):
            batch = {"latents_w": samples.latents[[winner[i] for i in idx]].to(device),
                     "latents_l": samples.latents[[loser[i] for i in idx]].to(device),
                     "prompt": [samples.texts[winner[i]] for i in idx]}
            (module.training_step(batch, k) / len(order)).backward()

    def noise_of(k, shape, bsz):
        from .personalize import step_generator

        g = step_generator(module.hparams.seed, module.hparams.outer_step, module.global_step, k)
        noise = torch.randn(shape, generator=g)
        t = torch.randint(0, module.noise_scheduler.config.num_train_timesteps, (bsz,), generator=g)
        return noise.to(device), t.to(device)

    def base(latents: bool = False):
        for k, idx in enumerate(order):
            ws, ls = [winner[i] for i in idx], [loser[i] for i in idx]
            if latents:  # the same latents as ours: the computation checked, not the PNG round trip
                lw, ll = samples.latents[ws].to(device), samples.latents[ls].to(device)
            else:
                lw, ll = naive.latents_of(ws), naive.latents_of(ls)
            noise, t = noise_of(k, lw.shape, len(idx))
            (naive.loss(lw, ll, [samples.texts[w] for w in ws], noise, t) / len(order)).backward()

    module.embed.cache.clear()
    ours()
    g_ours = grads()
    base(latents=True)
    g_base = grads()
    err = (torch.cat([a.flatten() for a in g_ours]) - torch.cat([b.flatten() for b in g_base])).norm()
    rel = float(err / torch.cat([b.flatten() for b in g_base]).norm())
    assert rel < 1e-4, f"DPO gradients differ (relative {rel:.2e})"  # same maths; float summation order only

    def ours_step():
        module.embed.cache.clear()  # prompts encoded once per step, as in training
        ours()
        module.unet.zero_grad(set_to_none=True)

    def base_step():
        base()
        module.unet.zero_grad(set_to_none=True)

    t_ours, t_base = _time(ours_step, repeat, device), _time(base_step, repeat, device)
    peak = _peak(device, ours_step)
    flops = count_flops(ours_step, bb)
    return _row("dpo", "pair", pairs, t_ours, t_base, f"fused [x_w; x_l], micro-batch {micro}",
                "PNG re-encode, 4 UNet calls per pair", peak_gb=peak, gradient_relative_difference=rel, flops=flops)


# ---- pairs, SVDiff ----------------------------------------------------------------------------------------

def bench_pairs(n_prompts: int, m: int, repeat: int) -> dict:
    from .pairs import AngleFilter, build_pairs

    rng = np.random.default_rng(0)
    ts, is_ = rng.normal(size=n_prompts * m), rng.normal(size=n_prompts * m)
    group = np.repeat(np.arange(n_prompts), m)
    filt = AngleFilter.preset("mix")

    def naive():
        out = []
        for p in range(n_prompts):
            idx = range(p * m, (p + 1) * m)
            for i in idx:
                for j in idx:
                    if i < j:
                        for w, l in ((i, j), (j, i)):
                            a = math.degrees(math.atan2(is_[w] - is_[l], ts[w] - ts[l]))
                            if filt.c1 < a < filt.c2:
                                out.append((w, l))
                                break
        return out

    fast = build_pairs(ts, is_, group, filt)
    assert sorted(naive()) == sorted(zip(fast.winner.tolist(), fast.loser.tolist()))
    t_ours, t_base = _time(lambda: build_pairs(ts, is_, group, filt), repeat), _time(naive, repeat)
    return _row("pairs", "candidate", n_prompts * m * (m - 1) // 2, t_ours, t_base, "vectorised build_pairs",
                "python double loop")


def bench_svdiff(accumulate: int, repeat: int) -> dict:
    from diffusers import UNet2DConditionModel

    from .adapters import SVDiff, _shifted
    from .backbones import build_backbone
    from .dpo import DiffusionDPOModule

    bb = build_backbone({"name": "tiny", "resolution": 16})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb.pipe.unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(256, 512), layers_per_block=1, cross_attention_dim=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=32)
    adapter = SVDiff()
    adapter.attach(bb.unet)
    with torch.no_grad():
        for i, (_, p) in enumerate(_shifted(bb.unet)):
            p.delta.copy_(0.01 * torch.randn(p.delta.shape, generator=torch.Generator().manual_seed(i)))
    module = DiffusionDPOModule(bb, beta=50.0, adapter=adapter)
    g = torch.Generator().manual_seed(0)
    batches = [{"latents_w": torch.randn(2, 4, 8, 8, generator=g), "latents_l": torch.randn(2, 4, 8, 8, generator=g),
                "prompt": ["a photo of sks toy"] * 2} for _ in range(accumulate)]
    shifts = [p for _, p in _shifted(bb.unet)]

    def step(amortized: bool):
        adapter.amortize(bb.unet, amortized)
        for p in shifts:
            p.delta.grad = None
        for k, b in enumerate(batches):
            module.training_step(b, k).backward()
        adapter.before_optimizer_step(bb.unet)
        return [p.delta.grad for p in shifts]

    for a, b in zip(step(True), step(False)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    t_ours, t_base = _time(lambda: step(True), repeat), _time(lambda: step(False), repeat)
    return _row("svdiff", "step", 1, t_ours, t_base, "W(δ) once per step", "W(δ) every forward",
                micro_batches=accumulate)


# ---- where the time goes ----------------------------------------------------------------------------------

def unet_alone(bb, texts: list[str], repeat: int, device, unet_calls: int | None = None) -> float:
    """Seconds per image of the sampler's UNet calls alone (CFG batch, `unet_calls` per image, default its step
    count), called as the pipeline calls it in `generate` — the sampling UNet (compiled with `backbone.compile`),
    a timestep of the scheduler's own (device, dtype), under the backbone's autocast, no grad — so a compiled UNet
    reuses generation's graph rather than compiling another."""
    steps = bb.num_inference_steps
    sched = bb.pipe.scheduler
    sched.set_timesteps(steps, device=device)
    t = sched.timesteps[len(sched.timesteps) // 2]
    lat = torch.randn(len(texts), *bb.latent_shape).to(device, bb.unet.dtype)
    with torch.no_grad():
        cond = bb.with_sizes(bb.encode_prompts(texts)).to(device).to(dtype=bb.unet.dtype)
    x, c = (torch.cat([lat, lat]), type(cond).cat([cond, cond])) if bb.guidance_scale > 1 else (lat, cond)
    # the keyword arguments diffusers' SD and SDXL pipelines pass (dynamo guards on their number)
    kw = {"encoder_hidden_states": None, "timestep_cond": None, "cross_attention_kwargs": None,
          "added_cond_kwargs": None, **c.unet_kwargs(), "return_dict": False}
    with torch.no_grad(), bb.sampling() as pipe, bb.autocast():
        return _time(lambda: pipe.unet(x, t, **kw), repeat, device) * (unet_calls or steps) / len(texts)


def generation_breakdown(bb, texts: list[str], repeat: int, device,
                         unet_calls: int | None = None) -> tuple[dict[str, float], list]:
    """Seconds per image of each part of generation, timed alone on the shapes `generate` uses (the UNet and the
    VAE's decoder as sampling runs them: compiled with `backbone.compile`), and the decoded images. `unet_calls`:
    the sampler's UNet calls per image (default: its step count)."""
    from .generate import _generate_batch

    batch = len(texts)
    steps, guidance = bb.num_inference_steps, bb.guidance_scale
    lat = torch.randn(batch, *bb.latent_shape).to(device, bb.unet.dtype)
    out: dict[str, float] = {}
    with torch.no_grad():
        out["text encoding"] = _time(lambda: bb.encode_prompts(texts), repeat, device) / batch
        out["UNet (all sampler steps, CFG)"] = unet_alone(bb, texts, repeat, device, unet_calls)
        with bb.decoding() as vae, bb.autocast():  # as `decode` runs it: compiled with `backbone.compile`
            out["VAE decode"] = _time(lambda: vae.decode(lat / bb.scaling_factor), repeat, device) / batch
        out["VAE decode + post-processing to PIL images"] = _time(lambda: bb.decode(lat), repeat, device) / batch
        images = bb.decode(lat)
        with tempfile.TemporaryDirectory() as d:
            out["PNG writing"] = _time(lambda: [im.save(Path(d) / f"{i}.png") for i, im in enumerate(images)],
                                       repeat) / batch
        gen_total = _time(lambda: _generate_batch(bb, texts, list(range(batch)), guidance, steps), repeat,
                          device) / batch
        out["generation, one batch end to end (without decode/PNG)"] = gen_total
    return out, images


def breakdown(bb, scorer, batch: int, micro: int, repeat: int, device) -> dict[str, float]:
    """Seconds per image (generation, scoring) or per pair (DPO) of each component of our stages, timed alone on
    the shapes the stages use."""
    from .dpo import DiffusionDPOModule

    texts = [p.replace("[V*]", HOLDER) for p in prompts_for(batch)]
    out, images = generation_breakdown(bb, texts, repeat, device)
    with torch.no_grad():
        out["scoring (CLIP image + text)"] = _time(
            lambda: (scorer.embed_images(images), scorer.embed_texts(texts)), repeat, device) / batch
    module = DiffusionDPOModule(bb, beta=5000.0).to(device)
    lw, ll = torch.randn(micro, *bb.latent_shape).to(device), torch.randn(micro, *bb.latent_shape).to(device)
    noise = torch.randn(lw.shape).to(device)
    tt = torch.randint(0, 1000, (micro,)).to(device)
    x, n2, t2 = torch.cat([lw, ll]), torch.cat([noise, noise]), torch.cat([tt, tt])
    noisy = module.noise_scheduler.add_noise(x, n2, t2)
    c = module.embed(texts[:micro], device)
    c2 = type(c).cat([c, c])

    def policy():
        mw, ml = module.mse_pairs(module.unet, noisy, t2, c2, n2)
        (mw - ml).mean().backward()
        module.unet.zero_grad(set_to_none=True)

    def reference():
        with torch.no_grad():
            module.mse_pairs(module.ref_unet, noisy, t2, c2, n2)

    out["DPO policy forward+backward"] = _time(policy, repeat, device) / micro
    out["DPO reference forward"] = _time(reference, repeat, device) / micro
    with tempfile.TemporaryDirectory() as d:
        from .dpo import PairDataModule
        from .generate import generate

        s = generate(bb, prompts_for(micro), HOLDER, d, 2, seed=3, batch_size=64, progress=False)

        class P:
            winner, loser = np.arange(0, 2 * micro, 2), np.arange(1, 2 * micro, 2)

        loader = PairDataModule(s, P(), micro_batch_size=micro).train_dataloader()
        out["DPO data loading (stored latents)"] = _time(lambda: list(loader), repeat) / micro
    return out


# ---- report -----------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    import diffusers
    import lightning

    info = {"date": _dt.date.today().isoformat(), "device": str(device), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table(rows: list[dict]) -> str:
    lines = ["| stage | ours | naive baseline | ours (s) | baseline (s) | ours /s | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} ({r['n']} {r['unit']}) | {r['ours']} | {r['baseline']} | {r['ours_s']:.4f} | "
                     f"{r['baseline_s']:.4f} | {r['ours_per_s']:.1f} {r['unit']}/s | {r['ratio']:.1f}× |")
    return "\n".join(lines)


def run(repeat: int = 3, device: str = "cpu", out_dir: str | None = "results/bench", quick: bool = False,
        compile_unet: bool = False, compile_backend: str = "inductor") -> dict:
    """`compile_unet`: ours samples and trains through torch.compile (`backbone.compile`,
    `backbone.compile_training`); the naive loops stay eager."""
    dev = torch.device(device)
    bb, scorer = tiny_setup(dev)
    bb.compile = bb.compile_training = compile_unet
    bb.compile_backend = compile_backend
    n, m = (2, 4) if quick else (8, 8)
    micro = 4 if quick else 8
    rows = [
        bench_generation(bb, n, m, batch=n * m, repeat=repeat, device=dev),
        bench_scoring(bb, scorer, n, m, repeat=repeat, device=dev),
        bench_dpo(bb, pairs=2 * micro, micro=micro, repeat=repeat, device=dev),
        bench_pairs(50 if quick else 1000, 10, repeat),
        bench_fast_preset(bb, n, m, batch=n * m, repeat=repeat, device=dev, steps=10 if quick else 50,
                          fast_steps=4 if quick else 20),
    ]
    if not quick:  # a 256/512-channel UNet: seconds per step on a CPU
        rows.append(bench_svdiff(4, repeat))
    parts = breakdown(bb, scorer, batch=n * m, micro=micro, repeat=repeat, device=dev)
    rate = matmul_rate(dev)
    if compile_unet:
        for r in rows:
            if r["stage"] in ("generation", "dpo", "generation_fast"):
                r["ours"] += f", torch.compile ({compile_backend})"
    for r in rows:  # the fraction of the hardware's limit each side reaches on the same FLOPs
        if "flops" in r:
            r["ours_roofline_fraction"] = r["flops"] / r["ours_s"] / rate
            r["baseline_roofline_fraction"] = r["flops"] / r["baseline_s"] / rate
    result = {"environment": environment(dev), "repeat": repeat, "matmul_tflop_s": rate / 1e12,
              "compile": compile_unet, "compile_backend": compile_backend if compile_unet else None, "rows": rows,
              "breakdown_s_per_item": parts, "process_peak_gb": process_peak_gb()}
    for r in rows:
        result[f"{r['stage']}_ratio"] = r["ratio"]
        result[f"{r['stage']}_ours_per_s"] = r["ours_per_s"]
    print(f"{result['environment']}; best of {repeat} runs\n")
    print(table(rows))
    print(f"\nroofline: {rate / 1e9:.0f} GFLOP/s (GEMM)")
    for r in rows:
        if "flops" in r:
            print(f"  {r['stage']}: {r['flops'] / r['n'] / 1e9:.3f} GFLOP per {r['unit']}; ours at "
                  f"{100 * r['ours_roofline_fraction']:.0f} % of the roofline, the baseline at "
                  f"{100 * r['baseline_roofline_fraction']:.0f} % (ours' FLOPs counted as the useful work)")
    print("\nwhere our time goes (s per image / pair):")
    for k, v in parts.items():
        print(f"  {k:55s} {v * 1e3:9.3f} ms")
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from .io import write_json

        path = write_json(out / f"{result['environment']['date']}_{dev.type}{'_compile' * compile_unet}.json",
                          result)
        print(f"\nwritten: {path}")
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dbdpo.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/bench", help="folder for the JSON results ('' to skip)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, no SVDiff row (a smoke run)")
    ap.add_argument("--compile", action="store_true",
                    help="ours samples and trains through torch.compile (backbone.compile, backbone.compile_training)")
    ap.add_argument("--compile-backend", default="inductor")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compile:
        from .backbones import compile_unavailable

        reason = compile_unavailable(torch.device(args.device), args.compile_backend)
        if reason:
            raise SystemExit(f"error: --compile: torch.compile is unavailable here ({reason})")
    run(args.repeat, args.device, args.out or None, args.quick, args.compile, args.compile_backend)


if __name__ == "__main__":
    main()
