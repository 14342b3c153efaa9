"""Many processes (one per GPU, or CPU processes with gloo): the whole run is SPMD from its first line.

`launch(cfg)` starts the processes a run with `trainer.devices=k` (× `trainer.num_nodes`) needs, or joins the
ones a cluster started (SLURM tasks, torchrun), and initialises the process group through Lightning Fabric; every
later `Trainer(strategy=ddp)` finds the group and the processes ready. Each process then runs the same loop:

- generation, scoring and class images split their shards: process r makes shard k when k mod W = r, writes it
  atomically and waits for the others; per-sample seeds make 1 and W processes write the same shards;
- personalization and DPO train under DDP with the global batch of the 1-process run (`method.batch_size`
  images, `dpo.batch_size` pairs), split across processes so that each process trains on its slice of the same
  batches with the same noise (see `RankBatches`, `rank_rows`);
- what is written once (pool, pairs, checkpoints, metrics, logs) is written by process 0.

Lightning's own relaunch of a Hydra script re-runs the command line, which under `-m` would start the whole sweep
again in every child; ours starts the children with the job's own overrides and run directory instead, so a
multirun runs its jobs one after another, each over all devices.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from typing import Iterator

import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

DDP_STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() \
        else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_available() and \
        torch.distributed.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if world_size() > 1 else 0


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def mine(k: int) -> bool:
    """Whether this process makes item k of a sharded job (k mod W = r)."""
    return k % world_size() == rank()


@contextlib.contextmanager
def main_writes() -> Iterator[bool]:
    """`with main_writes() as main: if main: write(...)` — the others wait until process 0 has written."""
    try:
        yield is_main()
    finally:
        barrier()


def devices_of(cfg) -> int:
    """How many processes the run's Trainer asks for: `trainer.devices` × `trainer.num_nodes`."""
    t = cfg.get("trainer") or {}
    d = t.get("devices", 1)
    n = int(t.get("num_nodes", 1) or 1)
    if isinstance(d, (list, tuple)) or (hasattr(d, "__len__") and not isinstance(d, str)):
        return len(d) * n
    if isinstance(d, str):
        d = d.strip()
        if d in ("auto", "-1"):
            return _visible(str(t.get("accelerator", "auto"))) * n
        d = len([x for x in d.split(",") if x.strip()]) if "," in d else int(d)
    d = int(d)
    return (_visible(str(t.get("accelerator", "auto"))) if d == -1 else d) * n


def _visible(accelerator: str) -> int:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count()
    return 1


def _external_environment(world: int) -> bool:
    """A cluster started the processes (torchrun, or one SLURM task per device as Lightning expects them): join
    them instead of spawning."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return TorchElasticEnvironment.detect() or (SLURMEnvironment.detect() and
                                                 int(os.environ.get("SLURM_NTASKS", "1")) == world)


def _child_command(local: int) -> tuple[list[str], str]:
    """This job again, as one more process: its own overrides and run directory (not the sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    script = [sys.executable, "-m", __main__.__spec__.name] if getattr(__main__, "__spec__", None) else \
        [sys.executable, to_absolute_path(sys.argv[0])]
    overrides = [o for o in hc.overrides.task]
    return [*script, *overrides, f"hydra.run.dir={hc.runtime.output_dir}", "hydra.output_subdir=null",
            f"hydra.job.name={hc.job.name}_rank{local}"], get_original_cwd()


_PROCS: list[subprocess.Popen] = []


def launch(cfg) -> None:
    """Start (or join) the run's processes and initialise the process group; nothing with one device."""
    if world_size() > 1 or devices_of(cfg) <= 1:
        return
    import lightning as L
    from lightning.fabric.plugins.environments import LightningEnvironment

    t = cfg.trainer
    devices, nodes = t.get("devices", 1), int(t.get("num_nodes", 1) or 1)
    if not _external_environment(devices_of(cfg)) and "LOCAL_RANK" not in os.environ:
        env = LightningEnvironment()
        values = dict(MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port), NODE_RANK=str(env.node_rank()),
                      LOCAL_RANK="0", WORLD_SIZE=str(devices_of(cfg)))
        _ENV_SET.extend(k for k in values if k not in os.environ)
        os.environ.update(values)
        for local in range(1, devices_of(cfg) // nodes):
            cmd, cwd = _child_command(local)
            _PROCS.append(subprocess.Popen(cmd, env={**os.environ, "LOCAL_RANK": str(local)}, cwd=cwd))
        try:  # Lightning's watchdog: when one process dies, the others are stopped rather than left in a collective
            from lightning.fabric.strategies.launchers.subprocess_script import _launch_process_observer

            _launch_process_observer(_PROCS)
        except ImportError:
            pass
        log.info("started %d more processes for trainer.devices=%s", len(_PROCS), devices)
    fabric = L.Fabric(accelerator=str(t.get("accelerator", "auto")), devices=devices, num_nodes=nodes,
                      strategy="ddp")
    fabric.launch()


_ENV_SET: list[str] = []


def finish() -> None:
    """End of a run: wait for the processes this one started (a failed one's exit status becomes ours) and take the
    process group down, so that the next job of a multirun starts its own."""
    bad = [p.wait() for p in _PROCS]
    _PROCS.clear()
    if world_size() > 1:
        torch.distributed.destroy_process_group()
    for key in _ENV_SET:
        os.environ.pop(key, None)
    _ENV_SET.clear()
    if any(bad):
        raise SystemExit(max(bad))


# ---- the 1-process batches, split across processes --------------------------------------------------------------

class RankBatches(Sampler[list[int]]):
    """Batches of `sampler`'s order as one process would cut them (`batch` items, the last one shorter), process r
    taking its part: with `per_rank="slice"` items [r·b, (r+1)·b) of every batch (b = batch / W: personalization's
    global batch split across processes); with `per_rank="round"` the batches r, r+W, r+2W, … (DPO's micro-batches
    of one gradient-accumulation window). So that every process yields the same number of batches, a process with
    none left yields a copy of the first batch with its indices negated (−1 − i): padding the loss ignores.

    The order is read from `sampler` as lazily as a plain BatchSampler reads it, and every process reads the whole
    epoch before its last batch, so a shuffling generator advances exactly as in the 1-process run."""

    def __init__(self, sampler: Sampler[int], batch: int, per_rank: str, rank: int, world: int):
        self.sampler, self.batch, self.per_rank, self.rank, self.world = sampler, batch, per_rank, rank, world

    def _n_global(self) -> int:
        return -(-len(self.sampler) // self.batch)

    def __len__(self) -> int:
        n = self._n_global()
        return n if self.per_rank == "slice" else -(-n // self.world)

    def __iter__(self):
        import itertools

        order = iter(self.sampler)
        n_global, n_local = self._n_global(), len(self)
        batches: list[list[int]] = []

        def upto(j: int) -> None:  # read the global batches 0..j
            while len(batches) <= min(j, n_global - 1):
                batches.append(list(itertools.islice(order, self.batch)))

        for i in range(n_local):
            if i == n_local - 1:  # (a short last batch runs the sampler dry, as BatchSampler does; a full one not)
                upto(n_global - 1)
            if self.per_rank == "slice":
                upto(i)
                b = self.batch // self.world
                part = batches[i][self.rank * b: (self.rank + 1) * b]
                yield part if part else [-1 - k for k in batches[0][:1]]
            else:
                j = i * self.world + self.rank
                upto(j)
                yield batches[j] if j < n_global else [-1 - k for k in batches[0]]


def rank_rows(n_local: int, n_global: int, groups: int = 1) -> torch.Tensor:
    """Rows of this process's items in tensors drawn for the whole global batch: with `groups` = 2 (instance
    images followed by their class images) the rows of both halves."""
    r = rank()
    rows = [g * n_global + r * n_local + i for g in range(groups) for i in range(n_local)]
    return torch.tensor(rows)

