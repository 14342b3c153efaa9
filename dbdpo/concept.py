"""Concept images: a folder of 4–6 photos of one subject and its class word, as a LightningDataModule.

Images are EXIF-transposed, converted to RGB, centre-cropped to a square and resized to the backbone's
resolution, then scaled to [−1, 1]. Every format PIL reads is accepted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from .checkpointing import ResumableLoader, shuffled_loader
from .errors import ConfigError, DataError, DbdpoError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class Concept:
    """A personalization subject, and what the loop asks of its kind: where its photos are, how prompts name
    it, its training prompt pool, its evaluation prompts and (optionally) a judge of evaluation samples.

    This base class is a folder of photos (a DreamBench subject or the user's own): the pool mixes
    concept-agnostic and COCO-mined prompts, evaluation uses DreamBench's live or object set, no extra judge.
    Other kinds subclass it and are chosen by the concept config's `_target_` (e.g. the miniature world's
    `dbdpo.world.concepts.RenderedConcept`, whose photos are rendered from a spec).
    """

    name: str
    class_name: str
    path: str
    token: str = "sks"
    live: bool = False

    @property
    def holder(self) -> str:
        """What `[V*]` becomes in prompts, e.g. `sks dog`."""
        return f"{self.token} {self.class_name}"

    def prepare(self, resolution: int) -> None:
        """Make the photos available in `path` (a folder concept: they already are)."""

    def prompt_pool(self, n: int, seed: int, coco_fraction: float = 0.0,
                    coco_prompts: list[str] | None = None) -> list:
        """The training prompt pool P (`n` prompts, each with one `[V*]`): agnostic + COCO-mined (method.md)."""
        from .prompts import build_pool

        return build_pool(self.class_name, self.live, n, coco_fraction, seed, coco_prompts=coco_prompts)

    def eval_prompts(self, which: str = "full") -> list[str]:
        """DreamBench's live or object evaluation set (`eval.prompt_set`: full | val | long)."""
        from .prompts import eval_prompts

        return eval_prompts(live=self.live, which=which)

    def judge(self, images: list, device: str):
        """An extra judge of evaluation samples, `judge(eval_dir) -> {metric: {mean, std}}`, or None."""
        return None

    @classmethod
    def from_cfg(cls, cfg) -> "Concept":
        return build_concept(cfg)


def build_concept(cfg) -> Concept:
    """The concept of a `concept` config group: Hydra-instantiated from its `_target_` (default: a photo folder).

    Keys the chosen kind does not take are reported by name."""
    import inspect

    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, Concept):
        return cfg
    plain = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    target = str(plain.get("_target_") or f"{Concept.__module__}.{Concept.__qualname__}")
    try:
        cls = get_class(target)
    except Exception as e:  # hydra wraps import errors in several types
        raise ConfigError(f"concept._target_={target!r} cannot be imported ({' '.join(str(e).split())[:200]}); "
                          "name a subclass of dbdpo.concept.Concept") from e
    if not (isinstance(cls, type) and issubclass(cls, Concept)):
        raise ConfigError(f"concept._target_={target!r} is not a subclass of dbdpo.concept.Concept")
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(str(k) for k in plain if k != "_target_" and k not in params)
        if unknown:
            raise ConfigError(f"concept: unknown key(s) {['concept.' + k for k in unknown]} for {target}; it takes "
                              f"{['concept.' + k for k in params]} (a miniature-world concept needs "
                              "`_target_: dbdpo.world.concepts.RenderedConcept`)")
        missing = [k for k, p in params.items() if p.default is p.empty and k not in plain]
        if missing:
            raise ConfigError(f"concept: {['concept.' + k for k in missing]} missing for {target}")
    try:
        return instantiate(plain, _target_=target, _convert_="all")
    except InstantiationException as e:
        if isinstance(e.__cause__, DbdpoError):
            raise e.__cause__ from None
        raise


def list_concept_images(path: str | os.PathLike) -> list[Path]:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"concept folder '{path}' does not exist; set concept.path to a folder of 4-6 photos.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"concept folder '{path}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "put the concept's photos there or set concept.path.")
    return files


def load_image(path: str | os.PathLike, resolution: int | None = None) -> Image.Image:
    """Open, EXIF-transpose, convert to RGB; centre-crop and resize when `resolution` is given."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"concept image '{path}' cannot be read ({e}); replace or remove it.") from e
    if resolution is not None:
        im = ImageOps.fit(im, (resolution, resolution), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    return im


def load_concept_images(path: str | os.PathLike, resolution: int | None = None) -> list[Image.Image]:
    return [load_image(p, resolution) for p in list_concept_images(path)]


def crop_geometry(size: tuple[int, int], resolution: int) -> tuple[int, int, int, int]:
    """(original height, original width, crop top, crop left) of a centre crop to `resolution` (the shorter
    side resized to `resolution`, then the centre square cut; top/left in resized pixels) — SDXL's
    micro-conditioning of a training image, as diffusers' SDXL DreamBooth script computes it."""
    w, h = size
    scale = resolution / min(w, h)
    top = max(0, int(round((round(h * scale) - resolution) / 2.0)))
    left = max(0, int(round((round(w * scale) - resolution) / 2.0)))
    return h, w, top, left


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB → float tensor (3,H,W) in [−1, 1]."""
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ConceptDataset(Dataset):
    """Photos (already cropped to the resolution) with their prompt and, per photo, `size` = (original height,
    width, crop top, left) for backbones conditioned on it (SDXL)."""

    def __init__(self, images: list[Image.Image], prompt: str, repeats: int = 1, random_flip: bool = False,
                 sizes: list[tuple[int, int, int, int]] | None = None, class_latents: torch.Tensor | None = None,
                 class_prompt: str | None = None, seed: int = 0):
        self.seed = seed
        self.pixels = [to_tensor(im) for im in images]
        self.class_latents, self.class_prompt = class_latents, class_prompt
        self.sizes = [torch.tensor(s) for s in sizes] if sizes else \
            [torch.tensor([x.shape[1], x.shape[2], 0, 0]) for x in self.pixels]
        self.prompt = prompt
        self.repeats = repeats
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.pixels) * self.repeats

    def __getitem__(self, i: int) -> dict:
        x = self.pixels[i % len(self.pixels)]
        # the flip of item i is drawn from its own generator: independent of what ran before (mid-stage resume)
        if self.random_flip and torch.rand((), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + i)) < 0.5:
            x = x.flip(-1)  # a centre crop stays centred: the size conditions do not change
        item = {"pixels": x, "prompt": self.prompt, "size": self.sizes[i % len(self.pixels)]}
        if self.class_latents is not None:  # prior preservation: the i-th class sample (stored latents)
            item.update(class_latents=self.class_latents[i % len(self.class_latents)], class_prompt=self.class_prompt)
        return item


class ConceptDataModule(L.LightningDataModule):
    """Concept photos paired with the instance prompt `a photo of sks <class>`."""

    def __init__(self, concept: Concept, resolution: int, prompt_template: str = "a photo of [V*]",
                 batch_size: int = 1, repeats: int = 100, random_flip: bool = False, num_workers: int = 0,
                 seed: int = 0, class_samples=None):
        super().__init__()
        self.class_samples = class_samples  # a generate.SampleSet of class images (prior preservation) or None
        self.concept = concept
        self.resolution = resolution
        self.prompt = prompt_template.replace("[V*]", concept.holder)
        self.batch_size = batch_size
        self.repeats = repeats
        self.random_flip = random_flip
        self.num_workers = num_workers
        self.seed = seed
        self.dataset: ConceptDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            originals = load_concept_images(self.concept.path)
            images = [ImageOps.fit(im, (self.resolution,) * 2, method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
                      for im in originals]
            sizes = [crop_geometry(im.size, self.resolution) for im in originals]
            cs = self.class_samples
            self.dataset = ConceptDataset(images, self.prompt, self.repeats, self.random_flip, sizes,
                                          class_latents=cs.latents if cs is not None else None,
                                          class_prompt=cs.texts[0] if cs is not None else None, seed=self.seed)

    def train_dataloader(self) -> ResumableLoader:
        self.setup()  # with several processes each trains on its slice of a batch (`batch_size` is the global batch)
        return shuffled_loader(self.dataset, self.batch_size, self.seed, "slice", self.num_workers)
