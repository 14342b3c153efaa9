"""Novel world concepts: a look never rendered in pretraining, its class word, and its narrow "photos".

A concept config (e.g. `conf/concept/world/zigzag_star.yaml`) holds everything needed to draw it:

    name: zigzag_star
    class_name: star            # = world.shape
    world:
      shape: star
      pattern: zigzag           # a reserved pattern, or a colour pair reserved for this shape
      colours: [red, yellow]    # names or [r, g, b]
      params: {period: 6}       # optional
      photos: {n: 5, background: grass, position: center, size: large, style: flat, seed: 0}
    path: ${paths.output_dir}/concept_photos

`render_concept_photos(cfg, out_dir)` writes the photos (PNG, atomically; skipped when already there).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dbdpo.concept import Concept
from dbdpo.errors import ConfigError
from dbdpo.io import atomic_write, write_json

from .attributes import (ACCESSORIES, BACKGROUND_RGB, BACKGROUNDS, COLOUR_RGB, MIN_CONTRAST, POSITIONS,
                         RESERVED_LOOKS, RESERVED_PATTERNS, SIZES, STYLES, TINTS, SceneBatch)
from .render import ObjectSpec, parse_object_spec, render

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "concept" / "world"
WORLD_KEYS = ("shape", "pattern", "colours", "params", "photos")
PHOTO_CHOICES = {"background": BACKGROUNDS, "position": POSITIONS, "size": SIZES, "style": STYLES,
                 "accessory": ACCESSORIES, "tint": TINTS}
PHOTO_KEYS = ("n", "background", "position", "size", "style", "seed", "accessory", "tint", "jitter")
PHOTO_JITTER = (0.025, 0.07)  # max |dx|, |dy| (image fractions) and max |scale - 1| between photos
STAMP = "world_spec.json"


class NotNovelWarning(UserWarning):
    """A concept's look can appear in pretraining scenes."""


@dataclass(frozen=True)
class PhotoSpec:
    n: int = 5
    background: str = "grass"
    position: str = "center"
    size: str = "large"
    style: str = "flat"
    seed: int = 0
    accessory: str = "none"
    tint: str = "none"
    jitter: bool = True


@dataclass(frozen=True)
class WorldConcept:
    name: str
    class_name: str
    look: ObjectSpec
    photos: PhotoSpec
    token: str = "sks"
    live: bool = False

    @property
    def holder(self) -> str:
        return f"{self.token} {self.class_name}"

    def object_spec(self) -> ObjectSpec:
        return self.look


def _plain(cfg, resolve: bool = False):
    """DictConfig / ListConfig -> plain containers (without importing omegaconf when not needed)."""
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        return OmegaConf.to_container(cfg, resolve=resolve)
    return cfg


def is_novel(look: ObjectSpec) -> bool:
    """True when pretraining never renders this look (reserved pattern, reserved colour pair, or new colours)."""
    if look.pattern in RESERVED_PATTERNS:
        return True
    names = {rgb: name for name, rgb in COLOUR_RGB.items()}
    c1, c2 = names.get(tuple(look.rgb)), names.get(tuple(look.rgb2)) if look.rgb2 else None
    if c1 is None or (look.rgb2 is not None and c2 is None):
        return True  # a colour outside the world palette
    if look.rgb2 is None:
        return False
    return any({c1, c2} == set(pair) for pair in RESERVED_LOOKS[look.shape])


def parse_world_concept(cfg) -> WorldConcept:
    """Validate a concept config with a `world` block (or the block alone); errors name `concept.world.<key>`."""
    if type(cfg).__module__.startswith("omegaconf") and "world" in cfg:
        # Resolve only the world block: `path` may point at Hydra's run directory, unknown outside a run.
        cfg = {**{k: v for k, v in _plain(cfg).items() if k != "world"}, "world": _plain(cfg["world"], True)}
    cfg = _plain(cfg)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"concept must be a mapping with a `world` block (got {type(cfg).__name__})")
    full = "world" in cfg
    world = _plain(cfg["world"]) if full else cfg
    if not isinstance(world, Mapping):
        raise ConfigError(f"concept.world must be a mapping with keys {', '.join(WORLD_KEYS)} (got {world!r})")
    unknown = sorted(map(str, set(world) - set(WORLD_KEYS)))
    if unknown:
        raise ConfigError(f"concept.world: unknown key(s) {unknown}; valid keys: {', '.join(WORLD_KEYS)}")
    for key in ("shape", "pattern", "colours"):
        if key not in world:
            raise ConfigError(f"concept.world.{key} is missing; a world concept needs shape, pattern and colours")
    look = parse_object_spec(world, key="concept.world")

    photos = _plain(world.get("photos")) or {}
    if not isinstance(photos, Mapping):
        raise ConfigError(f"concept.world.photos must be a mapping with keys {', '.join(PHOTO_KEYS)}")
    unknown = sorted(map(str, set(photos) - set(PHOTO_KEYS)))
    if unknown:
        raise ConfigError(f"concept.world.photos: unknown key(s) {unknown}; valid keys: {', '.join(PHOTO_KEYS)}")
    kw = {}
    for key, values in PHOTO_CHOICES.items():
        if key in photos:
            if photos[key] not in values:
                raise ConfigError(f"concept.world.photos.{key}: unknown value {photos[key]!r}; "
                                  f"valid values: {', '.join(values)}")
            kw[key] = photos[key]
    for key, lo, hi in (("n", 1, 32), ("seed", 0, 2 ** 32 - 1)):
        if key in photos:
            v = photos[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ConfigError(f"concept.world.photos.{key} must be an integer in [{lo}, {hi}] (got {v!r})")
            kw[key] = int(v)
    if "jitter" in photos:
        if not isinstance(photos["jitter"], bool):
            raise ConfigError(f"concept.world.photos.jitter must be true or false (got {photos['jitter']!r})")
        kw["jitter"] = photos["jitter"]
    photo = PhotoSpec(**kw)

    name = str(cfg.get("name", "world_concept")) if full else "world_concept"
    class_name = str(cfg.get("class_name", look.shape)) if full else look.shape
    if class_name != look.shape:
        raise ConfigError(f"concept.class_name is {class_name!r} but concept.world.shape is {look.shape!r}; "
                          f"a world concept's class word is its shape")
    if not is_novel(look):
        warnings.warn(f"world concept {name!r}: pretraining can render this look ({look.shape}, {look.pattern}); "
                      f"use a pattern in {RESERVED_PATTERNS}, new colours, or a pair from RESERVED_LOOKS "
                      f"{RESERVED_LOOKS[look.shape]}", NotNovelWarning, stacklevel=2)
    bg = BACKGROUND_RGB[photo.background]
    if np.linalg.norm(np.subtract(look.rgb, bg, dtype=float)) < MIN_CONTRAST:
        warnings.warn(f"world concept {name!r}: its colour {look.rgb} hardly shows on the "
                      f"{photo.background} background (concept.world.photos.background)", stacklevel=2)
    token = str(cfg.get("token", "sks")) if full else "sks"
    return WorldConcept(name, class_name, look, photo, token, bool(cfg.get("live", False)) if full else False)


def photo_scenes(concept: WorldConcept) -> SceneBatch:
    """The scenes of the concept's photos: one context, small seeded jitter between photos."""
    p = concept.photos
    n = p.n
    rng = np.random.default_rng(p.seed)
    if p.jitter:
        dxy, ds = PHOTO_JITTER
        dx, dy, scale = rng.uniform(-dxy, dxy, n), rng.uniform(-dxy, dxy, n), 1 + rng.uniform(-ds, ds, n)
    else:
        dx, dy, scale = np.zeros(n), np.zeros(n), np.ones(n)
    idx = {k: v.index(getattr(p, k)) for k, v in PHOTO_CHOICES.items()}
    # Look fields are placeholders: the renderer takes the look from the object spec.
    return SceneBatch(shape=np.zeros(n), pattern=np.zeros(n), colour=np.zeros(n), colour2=np.full(n, -1),
                      **{k: np.full(n, v) for k, v in idx.items()}, dx=dx, dy=dy, scale=scale)


def render_concept(concept: WorldConcept, batch: SceneBatch, size: int = 32) -> np.ndarray:
    """Render the concept in the contexts of `batch` (uint8 (N, H, W, 3))."""
    return render(batch, size, object_spec=concept.look)


def _stamp(concept: WorldConcept, size: int) -> dict:
    return {"look": asdict(concept.look), "photos": asdict(concept.photos), "size": size}


def render_concept_photos(spec, out_dir, size: int = 32) -> list[Path]:
    """Render the concept's photos as `out_dir/photo_NN.png` (atomically); skip if the same ones are there.

    `spec`: the concept config (mapping or DictConfig with a `world` block) or a parsed `WorldConcept`.
    Photo files of an earlier, different spec are replaced; other files in `out_dir` are left alone.
    """
    concept = spec if isinstance(spec, WorldConcept) else parse_world_concept(spec)
    out = Path(out_dir)
    paths = [out / f"photo_{i:02d}.png" for i in range(concept.photos.n)]
    stamp = _stamp(concept, size)
    stamp_path = out / STAMP
    try:
        same = json.loads(stamp_path.read_text(encoding="utf-8")) == json.loads(json.dumps(stamp))
    except (OSError, ValueError):
        same = False
    if same and all(p.is_file() for p in paths):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("photo_*.png"):
        if old not in paths:
            old.unlink()
    images = render_concept(concept, photo_scenes(concept), size)
    for path, im in zip(paths, images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        data = buf.getvalue()
        atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data))
    write_json(stamp_path, stamp)
    return paths


def shipped_concepts() -> list[str]:
    """Names of the world concepts shipped in conf/concept/world/."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def load_concept_config(name_or_path) -> dict:
    """A shipped concept config by name (or a yaml path), unresolved (`path` keeps its interpolation)."""
    import yaml

    p = Path(name_or_path)
    if not p.suffix:
        p = CONF_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ConfigError(f"unknown world concept {name_or_path!r}; shipped: {', '.join(shipped_concepts())}")
    with open(p, encoding="utf-8") as f:
        return yaml.safe_load(f)


ASSETS = Path(__file__).resolve().parents[1] / "assets" / "world"
JUDGE_FILES = {"evaluator": ASSETS / "evaluator.safetensors", "oracle": ASSETS / "oracle.safetensors"}


class RenderedConcept(Concept):
    """A miniature-world concept for the loop (`_target_: dbdpo.world.concepts.RenderedConcept`): its photos are
    rendered from the `world` spec into `path`, its prompts are the world's pool and evaluation set, and its
    evaluation samples are also judged by the evaluator CLIP and the attribute oracle (`judge`: their weight
    files, default the shipped ones)."""

    def __init__(self, name: str, class_name: str, path: str, world: dict, token: str = "sks", live: bool = False,
                 judge: dict | None = None):
        super().__init__(name=name, class_name=class_name, path=path, token=token, live=live)
        self.spec = parse_world_concept({"name": name, "class_name": class_name, "token": token, "live": live,
                                         "world": world})
        unknown = sorted(set(judge or {}) - set(JUDGE_FILES))
        if unknown:
            raise ConfigError(f"concept.judge: unknown key(s) {unknown}; valid keys: {', '.join(JUDGE_FILES)}")
        self.judge_files = {k: Path((judge or {}).get(k) or v) for k, v in JUDGE_FILES.items()}

    def prepare(self, resolution: int) -> None:
        render_concept_photos(self.spec, self.path, size=int(resolution))

    def prompt_pool(self, n: int, seed: int, coco_fraction: float = 0.0,
                    coco_prompts: list[str] | None = None) -> list:
        """The world's prompt pool (COCO captions do not describe this world: `coco_*` are not used)."""
        from .prompts import world_pool

        return world_pool(int(n), int(seed))

    def eval_prompts(self, which: str = "full") -> list[str]:
        """The world's evaluation set: `val` (5 prompts), otherwise the full 25 (it has no long set)."""
        from .prompts import world_eval_prompts

        return world_eval_prompts("val" if which == "val" else "full")

    def judge(self, images: list, device: str):
        from .judge import WorldJudge

        for key, path in self.judge_files.items():
            if not path.exists():
                raise ConfigError(f"concept.judge.{key}: {path} not found; train the world with "
                                  "`python -m dbdpo.world pretrain` or set eval.judge=false.")
        return WorldJudge(self.judge_files["evaluator"], self.judge_files["oracle"], images, self.holder,
                          self.spec.look, device=str(device))
