"""`python -m dbdpo.bench`: our implementation beside the naive baseline, in one run, as ratios.

- pairs: vectorised `build_pairs` vs a Python double loop over each prompt's images (same pairs asserted).
- dpo step: one policy forward over [x_w; x_l] vs two separate forwards (same loss asserted).
- generation: batched per-sample-seeded generation vs one image at a time (same latents asserted).
- SVDiff DPO optimizer step (4 accumulated micro-batches, a UNet with 256/512 channels): W(δ) built once per
  step with the projected gradient vs rebuilt in every forward (same δ gradients asserted).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch


def _time(fn, repeat: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_pairs(n_prompts: int, m: int, repeat: int) -> tuple[float, float]:
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
    return _time(lambda: build_pairs(ts, is_, group, filt), repeat), _time(naive, repeat)


def bench_dpo(batch: int, repeat: int) -> tuple[float, float]:
    from .backbones import Conditioning, build_backbone
    from .dpo import DiffusionDPOModule

    bb = build_backbone({"name": "tiny", "resolution": 32})
    module = DiffusionDPOModule(bb, beta=5000.0)
    sched = module.noise_scheduler
    g = torch.Generator().manual_seed(0)
    lw, ll = torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 4, 16, 16, generator=g)
    noise = torch.randn(lw.shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = module.embed(["a photo of sks toy"] * batch, module.device)

    def fused():
        x = torch.cat([lw, ll])
        n2, t2 = torch.cat([noise, noise]), torch.cat([t, t])
        mw, ml = module.mse_pairs(module.unet, sched.add_noise(x, n2, t2), t2, Conditioning.cat([cond, cond]), n2)
        (mw - ml).mean().backward()
        return (mw - ml).detach()

    def naive():
        outs = []
        for x in (lw, ll):
            pred = module.unet(sched.add_noise(x, noise, t), t, **cond.unet_kwargs()).sample
            outs.append((pred - noise).pow(2).mean(dim=(1, 2, 3)))
        (outs[0] - outs[1]).mean().backward()
        return (outs[0] - outs[1]).detach()

    torch.testing.assert_close(fused(), naive(), atol=1e-5, rtol=1e-4)
    return _time(fused, repeat), _time(naive, repeat)


def bench_generate(n: int, repeat: int) -> tuple[float, float]:
    import tempfile

    from .backbones import build_backbone
    from .generate import generate

    bb = build_backbone({"name": "tiny", "resolution": 32, "num_inference_steps": 5})
    prompts = [f"a [V*] number {i}" for i in range(n)]

    def run(batch_size):
        with tempfile.TemporaryDirectory() as d:
            return generate(bb, prompts, "sks toy", d, images_per_prompt=1, seed=0, batch_size=batch_size,
                            progress=False).latents

    torch.testing.assert_close(run(n), run(1), atol=1e-4, rtol=1e-4)
    return _time(lambda: run(n), repeat), _time(lambda: run(1), repeat)


def bench_svdiff(accumulate: int, repeat: int) -> tuple[float, float]:
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
    return _time(lambda: step(True), repeat), _time(lambda: step(False), repeat)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dbdpo.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        ("pairs: 1000 prompts × M=10 (MIX)", "vectorised build_pairs", "python double loop", *bench_pairs(1000, 10, args.repeat)),
        ("DPO forward+backward, 16 pairs", "one forward over [x_w; x_l]", "two forwards", *bench_dpo(16, args.repeat)),
        ("generation, 16 images (tiny)", "batched, per-sample seeds", "one at a time", *bench_generate(16, args.repeat)),
        ("SVDiff DPO step, 4 micro-batches", "W(δ) once per step", "W(δ) every forward", *bench_svdiff(4, args.repeat)),
    ]
    print(f"torch threads: {args.threads}; best of {args.repeat} runs\n")
    print("| benchmark | ours | baseline | ours (s) | baseline (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, ours, base, t_ours, t_base in rows:
        print(f"| {name} | {ours} | {base} | {t_ours:.4f} | {t_base:.4f} | {t_base / t_ours:.1f}× |")


if __name__ == "__main__":
    main()
