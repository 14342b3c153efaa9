"""Shared fixtures: one thread, no network, a tiny backbone factory and a folder of concept photos."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub / wandb (they read these at import time).
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]

TINY = {"name": "tiny", "resolution": 32, "sampler": "DDIMScheduler", "num_inference_steps": 3,
        "guidance_scale": 3.0}


def compose_config(overrides=(), out: Path | None = None, *, hydra_config: bool = False, config_name: str = "train",
                   config_dir: Path | None = None):
    """`config_name` (conf/train.yaml by default) composed with `overrides` as its command line would compose it,
    then `paths.output_dir=out` when given; `hydra_config` keeps the `hydra` node (launcher, sweeper)."""
    from hydra import compose, initialize_config_dir

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    over = [*overrides, *([f"paths.output_dir={out}"] if out is not None else [])]
    with initialize_config_dir(config_dir=str(config_dir or ROOT / "conf"), version_base="1.3"):
        return compose(config_name, overrides=over, return_hydra_config=hydra_config)


@pytest.fixture(scope="session")
def tiny_backbone():
    """Factory: `tiny_backbone(**overrides)` builds a fresh tiny backbone (~0.1 s after the first import)."""
    from dbdpo.backbones import build_backbone

    def make(**overrides):
        return build_backbone({**TINY, **overrides})

    return make


def shape_image(size: tuple[int, int], colour=(220, 30, 30), background=(245, 245, 245), ellipse: bool = True):
    """A coloured shape (ellipse or rectangle) centred on a plain background."""
    w, h = size
    im = Image.new("RGB", size, background)
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    draw = ImageDraw.Draw(im)
    (draw.ellipse if ellipse else draw.rectangle)(box, fill=colour)
    return im


@pytest.fixture
def concept_dir(tmp_path):
    """Four small photos of a red shape: two PNG, two JPEG, of different (non-square) sizes."""
    d = tmp_path / "concept"
    d.mkdir()
    specs = [("a.png", (40, 32), True), ("b.png", (32, 48), False), ("c.jpg", (48, 36), True),
             ("d.jpeg", (36, 36), False)]
    for name, size, ellipse in specs:
        im = shape_image(size, ellipse=ellipse)
        im.save(d / name, **({"quality": 95} if name.endswith(("jpg", "jpeg")) else {}))
    return d


# Two xdist workers take whole modules (`--dist loadscope`); xdist's default hands out the modules with the most
# tests first, which leaves the few-but-long multi-process modules for the end and one worker idle meanwhile. Here
# (xdist's `--no-loadscope-reorder`, set below) modules go out in collection order: longest first (seconds on two
# workers, measured with `--durations=0`; re-measure when a module changes much), the rest in file order.
MODULE_SECONDS = {  # 2026-12-03, 2 cores, `-n 2 --dist loadscope`
    "tests/test_long_runs.py": 245, "tests/test_fsdp.py": 153, "tests/test_export.py": 115,
    "tests/test_world_verify.py": 100, "tests/test_train.py": 88, "tests/test_adapters.py": 67,
    "tests/test_sdxl.py": 61, "tests/test_experiments.py": 53, "tests/test_world_pretrain.py": 41,
    "tests/test_schema.py": 36, "tests/test_study.py": 33, "tests/test_speed.py": 30,
    "tests/test_concept_kinds.py": 29, "tests/test_wandb.py": 26, "tests/test_world_t2i_parts.py": 16,
    "tests/test_frontier.py": 14,
}


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist ≥ 3.7 (absent with -p no:xdist)
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    def weight(item) -> float:
        return -MODULE_SECONDS.get(item.nodeid.split("::")[0], 0.0)

    items.sort(key=weight)  # stable: file order within and among the unlisted modules
