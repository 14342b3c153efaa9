"""Mid-stage resume: Lightning checkpoints inside personalization and DPO, and a data loader that resumes mid-epoch.

A stage (personalization, or the DPO of one outer step) writes a Lightning checkpoint every
`trainer.checkpoint_every` optimizer steps into `checkpoints/<stage>.partial/` (written to a temporary file and
renamed, the newest `trainer.checkpoint_keep` kept). A rerun of the same command finds the newest and continues
from it: weights and optimizer state, learning-rate schedule, step counters and the data loader's position, so the
stage ends byte-identical to an uninterrupted one without redoing the steps before the checkpoint. Only what
trains is stored (the frozen rest is rebuilt the same way by the rerun); the folder is removed once the stage's
result is saved.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

CKPT_NAME = re.compile(r"^step(\d+)\.ckpt$")


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in its checkpoints (it has `state_dict` / `load_state_dict`).

    The state is the shuffling generator's state when the current epoch's iterator was created, the number of
    batches handed out since (Lightning does not prefetch from a loader with a length, so that is the number
    trained on), and the generator's state now. Loaded mid-epoch, the next epoch replays that epoch's order and
    skips the batches already trained on; loaded at an epoch's end, the next epoch starts where the uninterrupted
    run's would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.generator is None:
            raise ValueError("ResumableLoader needs an explicit `generator`")
        self._start: torch.Tensor | None = None
        self._yielded = 0
        self._resume: dict | None = None

    def __iter__(self):
        skip = 0
        if self._resume is not None:
            state, self._resume = self._resume, None
            if state["yielded"] < state["length"]:
                self.generator.set_state(state["start"])
                skip = state["yielded"]
            else:
                self.generator.set_state(state["now"])
        self._start = self.generator.get_state()
        self._yielded = 0
        for batch in super().__iter__():
            self._yielded += 1
            if self._yielded <= skip:
                continue
            yield batch

    def state_dict(self) -> dict:
        return {"start": self._start if self._start is not None else self.generator.get_state(),
                "now": self.generator.get_state(), "yielded": self._yielded, "length": len(self)}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)


def shuffled_loader(dataset, batch_size: int, seed: int, per_rank: str, num_workers: int = 0) -> ResumableLoader:
    """The stage's shuffled batches (seeded), resumable mid-epoch; with several processes each gets its part of the
    1-process batches (`distributed.RankBatches`, `per_rank` = "slice" or "round")."""
    from torch.utils.data import RandomSampler

    from .distributed import RankBatches, rank, world_size

    g = torch.Generator().manual_seed(seed)
    if world_size() > 1:
        batches = RankBatches(RandomSampler(dataset, generator=g), batch_size, per_rank, rank(), world_size())
        return ResumableLoader(dataset, batch_sampler=batches, num_workers=num_workers, generator=g)
    return ResumableLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, generator=g)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning `CheckpointIO` that writes a checkpoint to a temporary file beside it and renames it into place
    (a kill never leaves half a checkpoint) and reads with `torch.load(weights_only=True)`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def partial_dir(ckpt: Path) -> Path:
    """Where the mid-stage checkpoints of the stage whose result goes to `ckpt` are kept."""
    return ckpt.with_name(f"{ckpt.name}.partial")


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in `folder` (temporary files ignored), or None."""
    found = [(int(m.group(1)), p) for p in folder.glob("step*.ckpt") if (m := CKPT_NAME.match(p.name))]
    return max(found)[1] if found else None


def checkpoint_settings(trainer_cfg) -> tuple[int, int]:
    """(`trainer.checkpoint_every`, `trainer.checkpoint_keep`); every = 0 switches mid-stage checkpoints off."""
    return int(trainer_cfg.get("checkpoint_every") or 0), int(trainer_cfg.get("checkpoint_keep") or 1)


def stage_callbacks(folder: Path, every: int, keep: int) -> list:
    """A ModelCheckpoint every `every` optimizer steps into `folder`, keeping the newest `keep`."""
    if every <= 0:
        return []
    from lightning.pytorch.callbacks import ModelCheckpoint

    return [ModelCheckpoint(dirpath=str(folder), filename="step{step:07d}", auto_insert_metric_name=False,
                            every_n_train_steps=every, monitor="step", mode="max", save_top_k=keep,
                            save_last=False, enable_version_counter=False, save_on_train_epoch_end=False)]


def resume_point(folder: Path) -> Path | None:
    ckpt = newest_checkpoint(folder) if folder.is_dir() else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    return ckpt


def discard(folder: Path) -> None:
    """Remove a finished stage's mid-stage checkpoints."""
    shutil.rmtree(folder, ignore_errors=True)


def trainable_state(module: torch.nn.Module, state: dict) -> dict:
    """The entries of a module's state dict that train (requires_grad); the rest is rebuilt by a rerun."""
    from .distributed import unwrapped_name

    names = {unwrapped_name(n) for n, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}
