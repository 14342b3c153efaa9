"""`python -m dbdpo.world pretrain`: train the miniature world's models and write the shipped weights.

Stages (each skipped when its output exists; each resumes from its Lightning `last.ckpt`):
oracle → scorer → evaluator → vae → t2i → quality → manifest. The manifest records the sha256 of every
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

from ..io import read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGES = ("oracle", "scorer", "evaluator", "vae", "t2i", "quality", "manifest")


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


@torch.no_grad()
def measure_quality(pipe, oracle, n: int, seed: int, size: int, steps: int, guidance: float,
                    batch_size: int = 64) -> dict:
    """Oracle accuracy, per prompted attribute, on samples for held-out attribute combinations."""
    from .attributes import sample_scenes
    from .captions import caption_with_mentions
    from .oracle import predict

    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng, split="heldout")
    rows = [scenes[i] for i in range(n)]
    caps = [caption_with_mentions(r, rng) for r in rows]
    hits: dict[str, list[bool]] = {}
    for b in range(0, n, batch_size):
        chunk = caps[b : b + batch_size]
        gens = [torch.Generator().manual_seed(seed * 100_003 + b + i) for i in range(len(chunk))]
        out = pipe(prompt=[c for c, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, height=size, width=size, output_type="np")
        images = (out.images * 255).round().astype(np.uint8)
        pred = predict(oracle, images)
        for i, (_, mentions) in enumerate(chunk):
            for attr, value in mentions.items():
                if attr in pred:
                    hits.setdefault(attr, []).append(pred[attr][i] == value)
    return {a: float(np.mean(v)) for a, v in sorted(hits.items())}


def pretrain(cfg: DictConfig) -> dict:
    from .clips import train_clip
    from .oracle import load_oracle, train_oracle
    from .t2i import save_pipeline, train_t2i, train_vae

    out_dir, work = Path(cfg.out_dir), Path(cfg.work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    progress = bool(cfg.progress)
    state_file = work / "state.json"
    state: dict[str, Any] = read_json(state_file) if state_file.exists() else {"quality": {}, "timings_s": {}}
    trainer_kw = dict(OmegaConf.to_container(cfg.trainer, resolve=True)) if cfg.get("trainer") else {}

    def timed(stage: str, fn):
        t0 = time.time()
        result = fn()
        state["timings_s"][stage] = round(time.time() - t0, 1)
        write_json(state_file, state)
        return result

    stages = list(cfg.stages)
    if "oracle" in stages and not (out_dir / "oracle.safetensors").exists():
        o = cfg.oracle
        acc = timed("oracle", lambda: train_oracle(steps=o.steps, batch_size=o.batch_size, lr=o.lr, seed=cfg.seed,
                                                   size=cfg.size, ckpt_dir=work / "oracle",
                                                   out_path=out_dir / "oracle.safetensors", trainer_kwargs=trainer_kw))
        state["quality"]["oracle_accuracy"] = acc
        write_json(state_file, state)
    for which in ("scorer", "evaluator"):
        if which in stages and not (out_dir / f"{which}.safetensors").exists():
            c = cfg[which]
            res = timed(which, lambda: train_clip(which, steps=c.steps, batch_size=c.batch_size, lr=c.lr,
                                                  seed=c.seed, ckpt_dir=work / which,
                                                  out_path=out_dir / f"{which}.safetensors",
                                                  trainer_kwargs=trainer_kw))
            state["quality"][f"{which}_retrieval"] = res
            write_json(state_file, state)
    pipe_dir = out_dir / "pipeline"
    if ("vae" in stages or "t2i" in stages) and not pipe_dir.exists():
        from diffusers import AutoencoderKL

        v, t = cfg.vae, cfg.t2i
        vae_dir = work / "vae_final"
        if vae_dir.exists():
            vae = AutoencoderKL.from_pretrained(str(vae_dir))
        else:
            vae = timed("vae", lambda: train_vae(steps=v.steps, batch_size=v.batch_size, lr=v.lr,
                                                 kl_weight=v.kl_weight, seed=cfg.seed, size=cfg.size,
                                                 ckpt_dir=work / "vae", progress=progress,
                                                 every=int(cfg.checkpoint_every), **trainer_kw))
            vae.save_pretrained(str(vae_dir), safe_serialization=True)
        if "t2i" in stages:
            pipe = timed("t2i", lambda: train_t2i(
                vae, steps=t.steps, batch_size=t.batch_size, lr=t.lr, seed=cfg.seed, size=cfg.size,
                ckpt_dir=work / "t2i", cfg_dropout=t.cfg_dropout, ema_decay=t.ema_decay,
                channels=tuple(t.channels), attention=tuple(t.attention), text_width=t.text_width,
                text_layers=t.text_layers, layers_per_block=t.layers_per_block, progress=progress,
                every=int(cfg.checkpoint_every), **trainer_kw))
            save_pipeline(pipe, pipe_dir, half=bool(cfg.half_precision_weights))
    if "quality" in stages and pipe_dir.exists() and (out_dir / "oracle.safetensors").exists() \
            and "t2i_oracle_accuracy" not in state["quality"]:
        from ..backbones import load_pipeline

        q = cfg.quality
        pipe = load_pipeline("sd", str(pipe_dir))
        pipe.set_progress_bar_config(disable=True)
        oracle = load_oracle(out_dir / "oracle.safetensors")
        state["quality"]["t2i_oracle_accuracy"] = timed("quality", lambda: measure_quality(
            pipe, oracle, n=q.n, seed=q.seed, size=cfg.size, steps=q.num_inference_steps, guidance=q.guidance_scale))
        write_json(state_file, state)
    manifest = None
    if "manifest" in stages:
        manifest = write_manifest(out_dir, OmegaConf.to_container(cfg, resolve=True), state["quality"],
                                  state["timings_s"], Path(cfg.root_dir))
    print(json.dumps({"quality": state["quality"], "timings_s": state["timings_s"]}, indent=2))
    return manifest or state
