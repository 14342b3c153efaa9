"""`python -m dbdpo.world pretrain`: train the miniature world's models and write the shipped weights.

Stages (each skipped when its output exists; each resumes from its Lightning `last.ckpt`):
oracle → scorer → evaluator → text (the T2I's frozen CLIP text encoder) → vae → t2i → quality → manifest. The manifest records the sha256 of every
shipped file, the resolved config, the commit and the measured quality figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..io import read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGES = ("oracle", "scorer", "evaluator", "text", "vae", "t2i", "quality", "manifest")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_files(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_manifest(out_dir: Path, cfg: dict, quality: dict, timings: dict, root: Path) -> dict:
    files = {str(p.relative_to(out_dir)): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in shipped_files(out_dir)}
    manifest = {"files": files, "total_bytes": sum(f["bytes"] for f in files.values()),
                "config": cfg, "commit": git_commit(root), "quality": quality, "timings_s": timings,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def check_manifest(out_dir: str | Path) -> list[str]:
    """Problems found comparing the shipped files with the manifest (empty list = all good)."""
    out_dir = Path(out_dir)
    manifest = read_json(out_dir / MANIFEST)
    problems = []
    present = {str(p.relative_to(out_dir)) for p in shipped_files(out_dir)}
    for name, meta in manifest["files"].items():
        p = out_dir / name
        if not p.exists():
            problems.append(f"missing: {name}")
        elif sha256(p) != meta["sha256"]:
            problems.append(f"sha256 mismatch: {name}")
    problems += [f"not in manifest: {n}" for n in sorted(present - set(manifest["files"]))]
    return problems


def _read_state(state_file: Path) -> dict:
    disk = read_json(state_file) if state_file.exists() else {}
    return {k: disk.get(k, {}) for k in ("quality", "timings_s")}


def _merge_state(state_file: Path, mine: dict) -> dict:
    """Read-merge-write of state.json, so that stages run by concurrent `pretrain` processes (one stage each,
    same work_dir) keep each other's figures."""
    disk = _read_state(state_file)
    merged = {k: {**disk[k], **mine.get(k, {})} for k in ("quality", "timings_s")}
    write_json(state_file, merged)
    return merged


def pretrain(cfg: DictConfig) -> dict:
    from ..multistep import resolve_device
    from .clips import train_clip
    from .oracle import load_oracle, train_oracle
    from .t2i import (QualityCurve, measure_quality, reconstruction_accuracy, save_pipeline, train_t2i,
                      train_text_clip, train_vae)

    out_dir, work = Path(cfg.out_dir), Path(cfg.work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on the GPU
    progress = bool(cfg.progress)
    device = resolve_device("auto")
    state_file = work / "state.json"
    state: dict[str, Any] = {"quality": {}, "timings_s": {}}
    workers = int(cfg.get("loader_workers") or 0)
    trainer_kw = dict(OmegaConf.to_container(cfg.trainer, resolve=True)) if cfg.get("trainer") else {}

    def timed(stage: str, fn):
        t0 = time.time()
        result = fn()
        state["timings_s"][stage] = round(time.time() - t0, 1)
        _merge_state(state_file, state)
        return result

    stages = list(cfg.stages)
    if "oracle" in stages and not (out_dir / "oracle.safetensors").exists():
        o = cfg.oracle
        acc = timed("oracle", lambda: train_oracle(steps=o.steps, batch_size=o.batch_size, lr=o.lr, seed=cfg.seed,
                                                   size=cfg.size, ckpt_dir=work / "oracle",
                                                   out_path=out_dir / "oracle.safetensors", trainer_kwargs=trainer_kw,
                                                   workers=workers))
        state["quality"]["oracle_accuracy"] = acc
        _merge_state(state_file, state)
    for which in ("scorer", "evaluator"):
        if which in stages and not (out_dir / f"{which}.safetensors").exists():
            c = cfg[which]
            res = timed(which, lambda: train_clip(which, steps=c.steps, batch_size=c.batch_size, lr=c.lr,
                                                  seed=c.seed, ckpt_dir=work / which,
                                                  out_path=out_dir / f"{which}.safetensors",
                                                  trainer_kwargs=trainer_kw, workers=workers))
            state["quality"][f"{which}_retrieval"] = res
            _merge_state(state_file, state)
    pipe_dir = out_dir / "pipeline"
    text_dir = work / "text_final"
    pretrained_text = cfg.t2i.get("text_encoder", "joint") == "pretrained"
    init_from = cfg.t2i.get("init_from")
    if init_from and not pipe_dir.exists():  # continue from a saved pipeline: its text encoder and VAE, frozen
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        init_from = Path(init_from)
        if not (init_from / "unet").is_dir():
            raise ConfigError(f"t2i.init_from={init_from} is not a saved world pipeline (no unet/ folder); "
                              "point it at e.g. dbdpo/assets/world/pipeline.")
        if pretrained_text and not text_dir.exists():
            CLIPTextModel.from_pretrained(str(init_from / "text_encoder"), torch_dtype=torch.float32).save_pretrained(
                str(text_dir), safe_serialization=True)
        if not (work / "vae_final").exists():
            AutoencoderKL.from_pretrained(str(init_from / "vae"), torch_dtype=torch.float32).save_pretrained(
                str(work / "vae_final"), safe_serialization=True)
    if pretrained_text and ("text" in stages or "t2i" in stages) and not pipe_dir.exists() and not text_dir.exists():
        c = cfg.text
        te, figures = timed("text", lambda: train_text_clip(
            steps=c.steps, batch_size=c.batch_size, lr=c.lr, seed=cfg.seed, size=cfg.size, ckpt_dir=work / "text",
            width=cfg.t2i.text_width, layers=cfg.t2i.text_layers, progress=progress,
            every=int(cfg.checkpoint_every), workers=workers, attribute_weight=float(c.get("attribute_weight", 0)),
            **trainer_kw))
        te.save_pretrained(str(text_dir), safe_serialization=True)
        state["quality"]["text_encoder_retrieval"] = figures["retrieval"]
        state["quality"]["text_encoder_attributes"] = figures["attributes"]
        _merge_state(state_file, state)
    if ("vae" in stages or "t2i" in stages) and not pipe_dir.exists():
        from diffusers import AutoencoderKL

        v, t = cfg.vae, cfg.t2i
        vae_dir = work / "vae_final"
        if vae_dir.exists():
            vae = AutoencoderKL.from_pretrained(str(vae_dir))
        else:
            vae = timed("vae", lambda: train_vae(steps=v.steps, batch_size=v.batch_size, lr=v.lr,
                                                 kl_weight=v.kl_weight, seed=cfg.seed, size=cfg.size,
                                                 ckpt_dir=work / "vae", channels=tuple(v.channels),
                                                 latent_channels=int(v.latent_channels), progress=progress,
                                                 object_weight=float(v.get("object_weight", 0)),
                                                 every=int(cfg.checkpoint_every), workers=workers, **trainer_kw))
            vae.save_pretrained(str(vae_dir), safe_serialization=True)
            ref = Path(cfg.reference_oracle)
            if ref.exists():
                state["quality"]["vae_reconstruction_oracle"] = reconstruction_accuracy(
                    vae.to(device), load_oracle(ref, device), size=cfg.size)
                vae.cpu()
                _merge_state(state_file, state)
        if "t2i" in stages:
            text_encoder = None
            if pretrained_text:
                from transformers import CLIPTextModel

                text_encoder = CLIPTextModel.from_pretrained(str(text_dir))
            q = cfg.quality
            curve = None
            if int(t.get("curve_every") or 0) > 0:
                curve = QualityCurve(int(t.curve_every), cfg.reference_oracle, work / "t2i_curve.jsonl",
                                     n=int(t.curve_n), size=cfg.size, num_inference_steps=q.num_inference_steps,
                                     guidance_scale=q.guidance_scale, seed=q.seed)
            pipe = timed("t2i", lambda: train_t2i(
                vae, steps=t.steps, batch_size=t.batch_size, lr=t.lr, seed=cfg.seed, size=cfg.size,
                ckpt_dir=work / "t2i", cfg_dropout=t.cfg_dropout, ema_decay=t.ema_decay,
                channels=tuple(t.channels), attention=tuple(t.attention), text_width=t.text_width,
                text_layers=t.text_layers, layers_per_block=t.layers_per_block, progress=progress,
                every=int(cfg.checkpoint_every), workers=workers, curve=curve, text_encoder=text_encoder,
                init_unet=(Path(init_from) / "unet") if init_from else None,
                object_weight=float(t.get("object_weight") or 0), text_time=bool(t.get("text_time", False)),
                **trainer_kw))
            save_pipeline(pipe, pipe_dir, half=bool(cfg.half_precision_weights))
    if "quality" in stages and pipe_dir.exists() and (out_dir / "oracle.safetensors").exists() \
            and "t2i_oracle_accuracy" not in {**_read_state(state_file)["quality"], **state["quality"]}:
        from ..backbones import load_pipeline

        q = cfg.quality
        pipe = load_pipeline("sd", str(pipe_dir)).to(device)
        pipe.set_progress_bar_config(disable=True)
        oracle = load_oracle(out_dir / "oracle.safetensors", device)
        state["quality"]["t2i_oracle_accuracy"] = timed("quality", lambda: measure_quality(
            pipe, oracle, n=q.n, seed=q.seed, size=cfg.size, steps=q.num_inference_steps, guidance=q.guidance_scale))
        _merge_state(state_file, state)
    state = _merge_state(state_file, state)
    manifest = None
    if "manifest" in stages:
        recorded = OmegaConf.to_container(cfg, resolve=True)
        for key in ("stages", "root_dir", "out_dir", "work_dir", "progress", "loader_workers", "threads"):
            recorded.pop(key, None)  # how and where it ran, not what was trained
        manifest = write_manifest(out_dir, recorded, state["quality"], state["timings_s"], Path(cfg.root_dir))
    print(json.dumps({"quality": state["quality"], "timings_s": state["timings_s"]}, indent=2))
    return manifest or state
