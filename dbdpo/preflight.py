"""Preflight: before any work, the run directory is writable and its disk holds what the run will write.

    bytes ≈ samples · (latents + PNG) + evaluations · (latents + PNG) + class images
            + (S + 1) stage results + K mid-stage checkpoints (what trains + AdamW's two moments, fp32)

PNG sizes are taken at their uncompressed bound (H·W·3), so the estimate errs on the safe side.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConfigError

GB = 1024 ** 3


def check_writable(run_dir: Path) -> None:
    """Create `run_dir` and write a file in it, or one clear error naming the setting."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write_probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"the run directory {run_dir} is not writable ({e.strerror or e}); choose another with "
                          "hydra.run.dir=... (or paths.log_dir=...)") from e


def estimate_bytes(cfg, backbone, n_eval_prompts: int, trained: int, saved: int) -> dict[str, int]:
    """What a run writes, by kind (see the module docstring); `trained` / `saved`: parameters that train / that a
    stage's result holds."""
    c, h, w = backbone.latent_shape
    res = int(backbone.resolution)
    per_image = c * h * w * 4 + res * res * 3
    S = int(cfg.steps)
    per_step = math.ceil(int(cfg.prompts.n) / S) * int(cfg.generate.images_per_prompt)
    evals = (S + 1) * n_eval_prompts * int(cfg.eval.images_per_prompt)
    m = cfg.method
    class_imgs = int(m.num_class_images) if m.get("prior_preservation") else 0
    keep = int(cfg.trainer.get("checkpoint_keep") or 1) if int(cfg.trainer.get("checkpoint_every") or 0) else 0
    return {"samples": S * per_step * per_image, "evaluation": evals * per_image, "class images": class_imgs * per_image,
            "stage results": (S + 1) * saved * 4, "mid-stage checkpoints": keep * trained * 12}


def check_disk(run_dir: Path, need: dict[str, int]) -> None:
    total = sum(need.values())
    free = shutil.disk_usage(run_dir).free
    if total > free:
        parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in need.items() if v)
        raise ConfigError(f"the run needs about {total / GB:.2f} GB in {run_dir} ({parts} GB) but its disk has "
                          f"{free / GB:.2f} GB free; free space, write elsewhere (hydra.run.dir=...), or write less "
                          "(trainer.checkpoint_keep, prompts.n, generate.images_per_prompt)")
