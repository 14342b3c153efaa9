"""`python -m dbdpo.export RUN_DIR [--step S] --format pipeline|diffusers|kohya|svdiff --out DIR`: a run's model
in the formats other tools load.

- `pipeline`: a complete diffusers pipeline folder, the base with θ_S applied (text encoders included; trained ones
  when personalization trained them); `StableDiffusionPipeline` / `StableDiffusionXLPipeline.from_pretrained` load it.
- `diffusers` (LoRA runs): personalization and every DPO step up to S each trained a LoRA on the previous stage's
  fused weights, so θ_S = θ_base + Σ_k B_k·A_k·(α_k / r_k). They are exported as ONE exact LoRA by concatenating
  along the rank:  A = [A_0; …; A_S],  B = [B_0·s_0, …, B_S·s_S],  rank Σ r_k, α = rank (scale 1) — no merge,
  no approximation: `pipe.load_lora_weights(DIR)` on the base reproduces θ_S (`pytorch_lora_weights.safetensors`).
- `kohya`: the same LoRA in the kohya / A1111 / ComfyUI key layout (`lora_unet_…`, `.alpha` stored), written by
  diffusers' own `convert_state_dict_to_kohya`.
- `svdiff` (SVDiff runs): one δ per weight relative to the base's SVD (the stages telescope: each stage's basis is
  the previous one's with σ' = ReLU(σ + δ), so θ_S's weight is W + U·diag(σ_S − σ_0)·Vᵀ) and the final 1-D weights,
  with `apply_svdiff.py`, a loader that needs only torch, safetensors and diffusers.

`--step 0` is the personalization baseline; the default is the last finished step. Every safetensors file carries
`__metadata__`: base model, method, filter, steps, concept token, dbdpo version and the run config's sha256. The
export is written to a temporary folder and renamed into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .errors import ConfigError, DbdpoError

FORMATS = ("pipeline", "diffusers", "kohya", "svdiff")
LORA_FILE = "pytorch_lora_weights.safetensors"
SVDIFF_FILE = "svdiff.safetensors"


# ---- the run ------------------------------------------------------------------------------------------------

def read_run(run_dir: Path):
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise DbdpoError(f"{run_dir} is not a dbdpo run directory (no config.yaml); pass the folder train.py wrote.")
    return OmegaConf.load(cfg_file), hashlib.sha256(cfg_file.read_bytes()).hexdigest()


def stages(run_dir: Path) -> list[Path]:
    """Finished stage checkpoints in order: personalize, step_1, step_2, … (stopping at the first gap)."""
    ck = run_dir / "checkpoints"
    done = lambda p: (p / "diffusion_pytorch_model.safetensors").exists() or (p / "adapter.safetensors").exists()
    out = [ck / "personalize"] if done(ck / "personalize") else []
    s = 1
    while out and done(ck / f"step_{s}"):
        out.append(ck / f"step_{s}")
        s += 1
    return out


def metadata(cfg, config_sha: str, step: int) -> dict[str, str]:
    from . import __version__

    b = cfg.backbone
    return {"base_model": str(b.get("pretrained") or b.name), "backbone": str(b.name),
            "method": str(cfg.method.name), "adapter": str(cfg.method.adapter.get("kind", "full")),
            "filter": str(cfg.filter.name), "steps": str(step), "concept_token": f"{cfg.concept.token}",
            "concept": f"{cfg.concept.token} {cfg.concept.class_name}", "dbdpo_version": __version__,
            "config_sha256": config_sha}


def stamp(folder: Path, meta: dict[str, str]) -> None:
    """Add `meta` to the `__metadata__` of every safetensors file under `folder` (rewritten in place)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for f in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            old = h.metadata() or {}
            tensors = {k: h.get_tensor(k) for k in h.keys()}
        save_file(tensors, str(f), metadata={**old, **meta})


# ---- θ_S ----------------------------------------------------------------------------------------------------

def rebuild(cfg, upto: list[Path]):
    """The backbone with θ_S applied the way the run applied it (its own restore path): a full fine-tune loads
    personalization's checkpoint (UNet and any trained text encoders), then step S's UNet; an adapter run attaches,
    loads and fuses every stage's adapter in order."""
    from .adapters import make_adapter
    from .backbones import build_backbone
    from .multistep import _restore, load_unet_into

    backbone = build_backbone(cfg.backbone)
    full = make_adapter(cfg.method).kind == "full"
    for ckpt in upto[:1] if full else upto:
        _restore(make_adapter(cfg.method), backbone, ckpt, torch.device("cpu"))
    if full and len(upto) > 1:
        load_unet_into(backbone.unet, upto[-1])
    return backbone


# ---- LoRA ---------------------------------------------------------------------------------------------------

def combined_lora(cfg, upto: list[Path]) -> tuple[dict[str, torch.Tensor], int]:
    """One exact LoRA (PEFT keys, scale 1) from the LoRAs of every stage: rank-concatenated."""
    from safetensors.torch import load_file

    a = cfg.method.adapter
    r = int(a.get("rank") or 4)
    scale = float(a.get("alpha") or r) / r
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for ckpt in upto:
        state = load_file(str(ckpt / "adapter.safetensors"))
        for key in state:
            if key.endswith(".lora_A.weight"):
                base = key[: -len(".lora_A.weight")]
                parts.setdefault(base, []).append((state[key].float(), state[f"{base}.lora_B.weight"].float() * scale))
    out = {}
    for base, pairs in parts.items():
        out[f"{base}.lora_A.weight"] = torch.cat([A for A, _ in pairs], dim=0).contiguous()
        out[f"{base}.lora_B.weight"] = torch.cat([B for _, B in pairs], dim=1).contiguous()
    rank = {v.shape[0] for k, v in out.items() if k.endswith("lora_A.weight")}
    if len(rank) != 1:
        raise DbdpoError(f"the stages' LoRAs do not cover the same modules (ranks {sorted(rank)}); cannot combine")
    return out, rank.pop()


def write_diffusers_lora(cfg, upto: list[Path], out: Path) -> None:
    from diffusers.utils import convert_state_dict_to_diffusers

    from .adapters import LORA_TARGETS

    state, rank = combined_lora(cfg, upto)
    meta = {"r": rank, "lora_alpha": rank, "target_modules": list(cfg.method.adapter.get("targets") or LORA_TARGETS)}
    pipe_cls = _pipeline_class(cfg)
    pipe_cls.save_lora_weights(str(out), unet_lora_layers=convert_state_dict_to_diffusers(state),
                               unet_lora_adapter_metadata=meta, safe_serialization=True)


def write_kohya_lora(cfg, upto: list[Path], out: Path) -> None:
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    state, _ = combined_lora(cfg, upto)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(out / f"{cfg.concept.name}_dbdpo.safetensors"))


def _pipeline_class(cfg):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if str(cfg.backbone.kind) == "sdxl" else StableDiffusionPipeline


# ---- SVDiff -------------------------------------------------------------------------------------------------

LOADER = '''"""Apply a dbdpo SVDiff export to a fresh base UNet: W = W0 + U·diag(ReLU(σ + δ) − σ)·Vᵀ with U, σ, Vᵀ the SVD of
the base weight W0 (flattened to out × in·k·k), and the 1-D weights (norm gains, biases) replaced.

    from diffusers import StableDiffusionPipeline
    from apply_svdiff import apply_svdiff
    pipe = StableDiffusionPipeline.from_pretrained(BASE)
    apply_svdiff(pipe.unet, "svdiff.safetensors")
"""

import torch
from safetensors.torch import load_file


@torch.no_grad()
def apply_svdiff(unet, path):
    state = load_file(str(path))
    modules = dict(unet.named_modules())
    params = dict(unet.named_parameters())
    for key, delta in state.items():
        if key.startswith("one_d."):
            p = params[key[len("one_d."):]]
            p.copy_(delta.to(p))
            continue
        w = modules[key[: -len(".delta")]].weight
        u, s, vh = torch.linalg.svd(w.detach().float().reshape(w.shape[0], -1), full_matrices=False)
        shift = torch.relu(s + delta.float()) - s
        w.add_(((u * shift) @ vh).reshape(w.shape).to(w.dtype))
    return unet
'''


def svdiff_state(cfg, upto: list[Path]) -> dict[str, torch.Tensor]:
    """δ relative to the base SVD (σ_S − σ_0, through the stages' shared basis) and the final 1-D weights."""
    from safetensors.torch import load_file

    from .adapters import _one_d, make_adapter
    from .backbones import build_backbone
    from .multistep import _restore

    backbone = build_backbone(cfg.backbone)
    unet = backbone.unet
    base: dict[str, tuple] = {}
    for i, ckpt in enumerate(upto):
        adapter = make_adapter(cfg.method)
        if i == 0:
            adapter.attach(unet)
            from .adapters import _shifted

            base = {name: (p.u, p.s.clone()) for name, p in _shifted(unet)}
            adapter.load_state_dict(unet, load_file(str(ckpt / "adapter.safetensors")))
            adapter.fuse(unet)
        else:
            _restore(adapter, backbone, ckpt, torch.device("cpu"))
    out = {}
    for name, module in unet.named_modules():
        if name in base:
            u0, s0 = base[name]
            basis = getattr(module, "_svdiff_basis", None)
            if basis is None or basis[2] is not u0:
                raise DbdpoError(f"SVDiff stages of {name} do not share the base's SVD; cannot export one δ")
            out[f"{name}.delta"] = (basis[3] - s0).contiguous()
    out.update({f"one_d.{n}": p.detach().cpu().contiguous() for n, p in _one_d(unet)})
    return out


def write_svdiff(cfg, upto: list[Path], out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(svdiff_state(cfg, upto), str(out / SVDIFF_FILE))
    (out / "apply_svdiff.py").write_text(LOADER)


# ---- the command --------------------------------------------------------------------------------------------

def export(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, step: int | None = None) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder (nothing was written)")
    cfg, sha = read_run(run_dir)
    done = stages(run_dir)
    if not done:
        raise DbdpoError(f"{run_dir} has no finished checkpoint yet (checkpoints/personalize); nothing to export")
    last = len(done) - 1
    step = last if step is None else int(step)
    if not 0 <= step <= last:
        raise ConfigError(f"--step {step}: {run_dir} has steps 0 (personalization) to {last}; choose one of them")
    kind = str(cfg.method.adapter.get("kind", "full"))
    need = {"diffusers": "lora", "kohya": "lora", "svdiff": "svdiff"}.get(fmt)
    if need and kind != need:
        raise ConfigError(f"--format {fmt} exports a {need} run's adapters; this run trained "
                          f"{'the full UNet' if kind == 'full' else kind} (method={cfg.method.name}): "
                          "use --format pipeline")
    upto = done[: step + 1]
    tmp = out.with_name(f".tmp_{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if fmt == "pipeline":
            backbone = rebuild(cfg, upto)
            backbone.pipe.save_pretrained(str(tmp), safe_serialization=True)
        elif fmt == "diffusers":
            write_diffusers_lora(cfg, upto, tmp)
        elif fmt == "kohya":
            write_kohya_lora(cfg, upto, tmp)
        else:
            write_svdiff(cfg, upto, tmp)
        stamp(tmp, metadata(cfg, sha, step))
        (tmp / "dbdpo_export.json").write_text(json.dumps({"format": fmt, **metadata(cfg, sha, step)}, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    from .cli import report_errors

    ap = argparse.ArgumentParser(prog="python -m dbdpo.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--step", type=int, default=None, help="0 = personalization; default: the last finished step")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    print(report_errors(export, a.run_dir, a.format, a.out, a.step))


if __name__ == "__main__":
    main()
