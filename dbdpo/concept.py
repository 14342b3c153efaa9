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
from torch.utils.data import DataLoader, Dataset

from .errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class Concept:
    """A personalization subject: where its photos are and how prompts name it."""

    name: str
    class_name: str
    path: str
    token: str = "sks"
    live: bool = False

    @property
    def holder(self) -> str:
        """What `[V*]` becomes in prompts, e.g. `sks dog`."""
        return f"{self.token} {self.class_name}"

    @classmethod
    def from_cfg(cls, cfg) -> "Concept":
        return cls(name=str(cfg["name"]), class_name=str(cfg["class_name"]), path=str(cfg["path"]),
                   token=str(cfg.get("token", "sks")), live=bool(cfg.get("live", False)))


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


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB → float tensor (3,H,W) in [−1, 1]."""
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ConceptDataset(Dataset):
    def __init__(self, images: list[Image.Image], prompt: str, repeats: int = 1, random_flip: bool = False):
        self.pixels = [to_tensor(im) for im in images]
        self.prompt = prompt
        self.repeats = repeats
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.pixels) * self.repeats

    def __getitem__(self, i: int) -> dict:
        x = self.pixels[i % len(self.pixels)]
        if self.random_flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return {"pixels": x, "prompt": self.prompt}


class ConceptDataModule(L.LightningDataModule):
    """Concept photos paired with the instance prompt `a photo of sks <class>`."""

    def __init__(self, concept: Concept, resolution: int, prompt_template: str = "a photo of [V*]",
                 batch_size: int = 1, repeats: int = 100, random_flip: bool = False, num_workers: int = 0,
                 seed: int = 0):
        super().__init__()
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
            images = load_concept_images(self.concept.path, self.resolution)
            self.dataset = ConceptDataset(images, self.prompt, self.repeats, self.random_flip)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(self.seed), drop_last=False)
