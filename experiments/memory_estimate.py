"""Activation memory of one training forward of the full-size UNets, measured on the CPU, and the peak memory of a
personalization / DPO optimizer step computed from it (`experiments/memory.md`).

For each UNet (random weights from the published config, `dbdpo.full_size`), one forward with gradients at small
latent sizes counts the bytes of every tensor autograd saves for the backward pass (`saved_tensors_hooks`,
deduplicated by storage). Activations grow with the latent area (SDPA attention stores no attention matrix), so the
per-sample figure at 64×64 (SD2, 512 px) and 128×128 (SDXL, 1024 px) is extrapolated linearly in area from the
measured sizes 8² and 24²; its relative error at 16² is reported.

    OMP_NUM_THREADS=2 python experiments/memory_estimate.py sd2-base sdxl-base > experiments/memory_estimate.json
"""

from __future__ import annotations

import json
import sys
import time

import torch

from dbdpo.full_size import build_component, config, n_params


def saved_bytes(unet, side: int, gradient_checkpointing: bool) -> int:
    cfg = unet.config
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    kwargs = {}
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.zeros(1, 6)}
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    x = torch.randn(1, cfg.in_channels, side, side)
    cond = torch.randn(1, 77, cfg.cross_attention_dim)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = unet(x, torch.tensor([500]), encoder_hidden_states=cond, **kwargs).sample
    del out
    # parameters are saved too (weights of every layer): not activations
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    return sum(v for k, v in seen.items() if k not in params)


def main(models: list[str]) -> None:
    out = {}
    for model in models:
        t0 = time.time()
        unet = build_component(model, "unet")
        sides = (8, 16, 24)
        row = {"unet_params": n_params(unet), "vae_params": n_params(build_component(model, "vae", "meta")),
               "text_encoder_params": sum(n_params(build_component(model, c, "meta")) for c in
                                          ("text_encoder", "text_encoder_2") if (c in config_names(model)))}
        for ckpt in (False, True):
            meas = {s: saved_bytes(unet, s, ckpt) for s in sides}
            a, mid, b = sides
            slope = (meas[b] - meas[a]) / (b * b - a * a)  # bytes per latent pixel (fp32 activations)
            base = meas[a] - slope * a * a
            target = 64 if model == "sd2-base" else 128
            row["checkpointing" if ckpt else "plain"] = {
                "measured_fp32_bytes": {f"{s}x{s}": v for s, v in meas.items()},
                "fit_error_at_middle": (base + slope * mid * mid - meas[mid]) / meas[mid],
                "per_sample_fp32_bytes_at_target": base + slope * target * target, "target_latent": target}
        row["seconds"] = round(time.time() - t0, 1)
        out[model] = row
        del unet
    json.dump(out, sys.stdout, indent=2)


def config_names(model: str) -> list[str]:
    from dbdpo.full_size import components

    return components(model)


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main(sys.argv[1:] or ["sd2-base", "sdxl-base"])
