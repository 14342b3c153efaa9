"""Streams of rendered world scenes for training the world's models, reproducible batch by batch.

Batch `k` of a stream is a pure function of `(seed, k)`: its scenes, captions and pixels come from
`np.random.default_rng([seed, k])` (plus a salt for the data half and split, see below). A run resumed at
step `k` therefore sees exactly the batches it would have seen without the interruption (`start=k`).

Splits: the renderer's "pretrain", "heldout" and "all", plus "oracle": every look the renderer can
draw, including the reserved patterns (zigzag, rings) and the per-shape colour pairs reserved for novel
concepts, so that the attribute oracle can recognise concepts.

Data halves: `half=0` / `half=1` keep only scenes whose full attribute combination hashes to that half
(`scene_half`), so two models (the scorer and the evaluator CLIP) can be trained on disjoint scenes.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch

from .attributes import (ATTRIBUTES, COLOURS, LOW_CONTRAST_PAIRS, PATTERNS, RESERVED_PATTERNS, SceneBatch,
                         sample_scenes)
from .captions import caption_with_mentions
from .render import render

DATA_SPLITS = ("pretrain", "heldout", "all", "oracle")
ORACLE_RESERVED_FRACTION = 0.4  # patterned scenes of the "oracle" split redrawn with a reserved pattern
ORACLE_FREE_PAIR_FRACTION = 0.25  # patterned scenes whose pattern colour is redrawn without the reserved-pair rule
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


def _check_split(split: str) -> None:
    if split not in DATA_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(DATA_SPLITS)}")


def scene_half(batch: SceneBatch) -> np.ndarray:
    """0 or 1 per scene: a fixed hash of its whole attribute combination (jitter ignored)."""
    code = np.zeros(len(batch), np.uint64)
    for name, vals in ATTRIBUTES.items():
        code = code * np.uint64(len(vals) + 1) + (getattr(batch, name) + 1).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = code * _HASH_MULT
        h ^= h >> np.uint64(29)
        h = h * _HASH_MULT
    return ((h >> np.uint64(40)) & np.uint64(1)).astype(np.int64)


def _oracle_looks(batch: SceneBatch, rng: np.random.Generator) -> SceneBatch:
    """Give some patterned scenes a reserved pattern, and some a pattern colour from a reserved pair."""
    pattern, colour2 = batch.pattern.copy(), batch.colour2.copy()
    patterned = colour2 >= 0
    n = len(batch)
    reserved = np.array([PATTERNS.index(p) for p in RESERVED_PATTERNS])
    swap = patterned & (rng.random(n) < ORACLE_RESERVED_FRACTION)
    pattern = np.where(swap, rng.choice(reserved, size=n), pattern)
    redraw = patterned & (rng.random(n) < ORACLE_FREE_PAIR_FRACTION)
    new = rng.integers(0, len(COLOURS), size=n)
    ok = np.array([[a != b and (COLOURS[a], COLOURS[b]) not in LOW_CONTRAST_PAIRS for b in range(len(COLOURS))]
                   for a in range(len(COLOURS))])
    colour2 = np.where(redraw & ok[batch.colour, new], new, colour2)
    kw = {k: getattr(batch, k) for k in ("shape", "colour", "background", "position", "size", "style", "accessory",
                                          "tint", "dx", "dy", "scale")}
    return SceneBatch(pattern=pattern, colour2=colour2, **kw)


def sample_split(n: int, rng: np.random.Generator, split: str = "pretrain", half: int | None = None) -> SceneBatch:
    """`n` scenes of `split` (including "oracle"), optionally only those of data half `half`."""
    _check_split(split)
    base = "all" if split == "oracle" else split
    if half is None:
        out = sample_scenes(n, rng, split=base)
    else:
        if half not in (0, 1):
            raise ValueError(f"half must be 0, 1 or None (got {half!r})")
        parts, have = [], 0
        for _ in range(100):
            b = sample_scenes(max(32, int((n - have) * 2.3) + 8), rng, split=base)
            b = b[np.flatnonzero(scene_half(b) == half)[: n - have]]
            parts.append(b)
            have += len(b)
            if have >= n:
                break
        out = SceneBatch.concat(parts)
    if split == "oracle":
        out = _oracle_looks(out, rng)
    return out


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def mention_targets(mentions: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """What each caption says, per attribute: the value's index, or len(values) where it is not mentioned."""
    return {k: torch.tensor([vals.index(m[k]) if k in m else len(vals) for m in mentions], dtype=torch.long)
            for k, vals in ATTRIBUTES.items()}


def make_batch(scenes: SceneBatch, rng: np.random.Generator | None, size: int = 32,
               with_captions: bool = True) -> dict:
    """{"pixels", "captions", "labels", "mentions"} for `scenes` (captions drawn from `rng`; without captions,
    "captions" is [] and there are no "mentions")."""
    out = {"pixels": to_pixels(render(scenes, size=size)), "captions": [],
           "labels": {k: torch.from_numpy(v.astype(np.int64)) for k, v in scenes.labels().items()}}
    if with_captions:
        pairs = [caption_with_mentions(scenes.scene(i), rng) for i in range(len(scenes))]
        out["captions"] = [c for c, _ in pairs]
        out["mentions"] = mention_targets([m for _, m in pairs])
    return out


class RenderedBatches(torch.utils.data.IterableDataset):
    """Batches of freshly rendered scenes: {"pixels": (B,3,H,W) float in [-1,1], "captions": [str] * B,
    "labels": {attribute: LongTensor (B,)}, "mentions": {attribute: LongTensor (B,)}} (colour2 is -1 for solid
    objects; a mention is the value index, or the number of values where the caption does not mention it).

    Batch k (k = start, start + 1, ...) depends only on (seed, k, split, half, size); `steps=None` streams
    forever, else `steps` batches. Use with `DataLoader(ds, batch_size=None)`.
    """

    def __init__(self, batch_size: int, seed: int, split: str = "pretrain", size: int = 32, start: int = 0,
                 steps: int | None = None, with_captions: bool = True, half: int | None = None):
        super().__init__()
        _check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        if start < 0 or (steps is not None and steps < 0):
            raise ValueError(f"start and steps must be >= 0 (got start={start}, steps={steps})")
        self.batch_size, self.seed, self.split, self.size = batch_size, int(seed), split, size
        self.start, self.steps, self.with_captions, self.half = int(start), steps, with_captions, half
        self._salt = DATA_SPLITS.index(split) * 3 + (0 if half is None else half + 1)

    def batch(self, k: int) -> dict:
        """Batch number k of this stream."""
        rng = np.random.default_rng([self.seed, int(k), self._salt])
        scenes = sample_split(self.batch_size, rng, self.split, self.half)
        return make_batch(scenes, rng, self.size, self.with_captions)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        k = self.start + wid
        end = None if self.steps is None else self.start + self.steps
        while end is None or k < end:
            yield self.batch(k)
            k += nw


def fixed_eval_set(n: int, seed: int, split: str = "heldout", size: int = 32, half: int | None = None,
                   with_captions: bool = True) -> dict:
    """`n` scenes of `split`, rendered and captioned: the same dict as a batch, fixed by (n, seed, split)."""
    rng = np.random.default_rng([int(seed), 7_777_777, DATA_SPLITS.index(split)])
    scenes = sample_split(n, rng, split, half)
    out = {"pixels": [], "captions": [], "labels": {k: [] for k in ATTRIBUTES}, "mentions": {k: [] for k in ATTRIBUTES}}
    for i in range(0, n, 512):
        b = make_batch(scenes[i:i + 512], rng, size, with_captions)
        out["pixels"].append(b["pixels"])
        out["captions"] += b["captions"]
        for key in ("labels", "mentions"):
            for k, v in b.get(key, {}).items():
                out[key][k].append(v)
    res = {"pixels": torch.cat(out["pixels"]), "captions": out["captions"],
           "labels": {k: torch.cat(v) for k, v in out["labels"].items()}}
    if with_captions:
        res["mentions"] = {k: torch.cat(v) for k, v in out["mentions"].items()}
    return res


class WorldData(L.LightningDataModule):
    """A minimal Lightning data module for the world: the stream starts at the trainer's restored global step,
    so `trainer.fit(..., ckpt_path=last.ckpt)` continues with the batches an uninterrupted run would see."""

    def __init__(self, batch_size: int, seed: int, split: str, size: int, steps: int, with_captions: bool,
                 half: int | None = None, workers: int = 0):
        super().__init__()
        self.workers = int(workers)
        self.kw = dict(batch_size=batch_size, seed=seed, split=split, size=size, with_captions=with_captions,
                       half=half)
        self.steps = steps

    def train_dataloader(self):
        start = int(self.trainer.global_step) if self.trainer is not None else 0
        ds = RenderedBatches(**self.kw, start=start, steps=max(self.steps - start, 0))
        # Workers render batches start+w, start+w+n, ...; the loader interleaves them back into order k.
        extra = {"prefetch_factor": 4} if self.workers > 0 else {}
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.workers, **extra)
