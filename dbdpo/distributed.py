"""Many processes (one per GPU, or CPU processes with gloo): the whole run is SPMD from its first line.

`launch(cfg)` starts the processes a run with `trainer.devices=k` (× `trainer.num_nodes`) needs, or joins the
ones a cluster started (SLURM tasks, torchrun), and initialises the process group through Lightning Fabric; every
later `Trainer(strategy=ddp)` finds the group and the processes ready. Each process then runs the same loop:

- generation, scoring and class images split their shards: process r makes shard k when k mod W = r, writes it
  atomically and waits for the others; per-sample seeds make 1 and W processes write the same shards;
- personalization and DPO train under DDP (or FSDP for a full fine-tune, see `fsdp_strategy`) with the global batch of the 1-process run (`method.batch_size`
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



# ---- FSDP: a full fine-tune's UNet sharded across processes ------------------------------------------------------

FSDP_STRATEGIES = ("fsdp", "fsdp_cpu_offload")


def unwrapped_name(name: str) -> str:
    """A parameter's or module's name with FSDP's wrapper level taken out (its name in the plain module)."""
    return name.replace("_fsdp_wrapped_module.", "").replace("._fsdp_wrapped_module", "")


def _fsdp_strategy_class():
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy

    class DeviceAutocast(FSDPPrecision):
        """FSDP's precision plugin autocasting on the processes' own device type (Lightning's autocasts CUDA only)."""

        device_type = "cuda"

        def forward_context(self):
            if "mixed" in self.precision:
                return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.precision == "bf16-mixed"
                                      else torch.float16)
            return super().forward_context()

    class ShardedUNet(FSDPStrategy):
        """Lightning's FSDP strategy as dbdpo runs a full fine-tune with it: what trains (the UNet, the text encoders
        when they train) is sharded block by block (`ResnetBlock2D`, `BasicTransformerBlock`, CLIP encoder layers);
        the frozen children of the module (VAE, frozen text encoders, DPO's reference UNet) are left out of FSDP and
        stay whole on every process. A subclass also runs on CPU processes (gloo): torch's FSDP supports them,
        Lightning refuses them for the strategy's name only."""

        def __init__(self, **kwargs):
            kwargs.setdefault("auto_wrap_policy", _wrap_classes())
            kwargs.setdefault("state_dict_type", "full")
            super().__init__(**kwargs)
            self.ignored: list[torch.nn.Module] = []

        @property
        def precision_plugin(self):
            return FSDPStrategy.precision_plugin.fget(self)

        @precision_plugin.setter
        def precision_plugin(self, plugin) -> None:
            if type(plugin) is FSDPPrecision:
                plugin = DeviceAutocast(plugin.precision, plugin.scaler)
            FSDPStrategy.precision_plugin.fset(self, plugin)

        def _setup_model(self, model):
            self.ignored = [m for _, m in model.named_children()
                            if not any(p.requires_grad for p in m.parameters())]
            self.kwargs["ignored_modules"] = self.ignored
            if isinstance(self.precision_plugin, DeviceAutocast):
                self.precision_plugin.device_type = self.root_device.type
            n = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log.info("FSDP: %.1fM trained parameters sharded over %d processes; kept whole on each: %s", n / 1e6,
                     self.world_size, ", ".join(name for name, m in model.named_children() if m in self.ignored)
                     or "nothing")
            if self.root_device.type != "cpu":
                return super()._setup_model(model)
            from torch.distributed.fsdp import FullyShardedDataParallel

            # torch's FSDP takes CPU processes when told the device (Lightning passes the device's index: none)
            return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                            mixed_precision=self.mixed_precision_config,
                                            sharding_strategy=self.sharding_strategy,
                                            device_id=torch.device("cpu"), **self.kwargs)

        def optimizer_state(self, optimizer):
            if self.root_device.type != "cpu":
                return super().optimizer_state(optimizer)
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp import OptimStateKeyType

            # torch gathers each optimizer state of a flat parameter into one reused buffer and, with
            # offload_to_cpu, keeps views of it when the buffer is already on the CPU (every state would read as
            # the last one gathered, exp_avg as exp_avg_sq): on CPU processes gather without offload (cloned)
            with _full_context(self.model, offload=False, rank0_only=True):
                state = FSDP.optim_state_dict(self.model, getattr(optimizer, "_optimizer", optimizer))
                if self.global_rank == 0:
                    state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state

        def load_checkpoint(self, checkpoint_path, weights_only=None):
            """A mid-stage checkpoint (one file, full state) read through the CheckpointIO (torch.load with
            weights_only=True; Lightning's FSDP reads it with an unrestricted unpickler)."""
            from lightning.fabric.strategies.model_parallel import _load_raw_module_state
            from lightning.pytorch.trainer.states import TrainerFn
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp import OptimStateKeyType

            checkpoint = self.checkpoint_io.load_checkpoint(self.broadcast(checkpoint_path))
            _load_raw_module_state(checkpoint.pop("state_dict"), module=self.model, world_size=self.world_size,
                                   strict=self.lightning_module.strict_loading)
            states = checkpoint.get("optimizer_states")
            if states and self.lightning_module.trainer.state.fn == TrainerFn.FITTING:
                with _full_context(self.model, offload=self.root_device.type != "cpu", rank0_only=False):
                    for optimizer, state in zip(self.optimizers, states):
                        state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_NAME, self.model)
                        optimizer.load_state_dict(FSDP.optim_state_dict_to_load(optim_state_dict=state,
                                                                                model=self.model, optim=optimizer))
            return checkpoint

    return ShardedUNet


def _wrap_classes() -> set:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    return {ResnetBlock2D, BasicTransformerBlock, CLIPEncoderLayer}


def fsdp_strategy(name: str = "fsdp"):
    """The strategy object `trainer.strategy=fsdp` (or `fsdp_cpu_offload`: parameters and gradients kept on the CPU
    between uses) stands for."""
    return _fsdp_strategy_class()(cpu_offload=name == "fsdp_cpu_offload")


def sharded_root(trainer) -> "torch.nn.Module | None":
    """The root FSDP module of a Trainer's fit, or None when the fit was not sharded."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    root = getattr(trainer.strategy, "model", None)
    return root if isinstance(root, FullyShardedDataParallel) else None


def _full_context(root, offload: bool, rank0_only: bool):
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
                                FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only))


def full_state(root) -> dict[str, torch.Tensor]:
    """Every process gets the whole (unsharded) state dict of an FSDP module, on the CPU (a collective call)."""
    with _full_context(root, offload=next(root.parameters()).device.type != "cpu", rank0_only=False):
        return root.state_dict()


def _plain_copy(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A new, unsharded module of `module`'s class and config holding `state`."""
    cls = type(module)
    copy = cls.from_config(module.config) if hasattr(cls, "from_config") else cls(module.config)
    copy.load_state_dict(state)
    return copy.to(next(iter(state.values())).dtype).requires_grad_(False).eval()


@contextlib.contextmanager
def whole_modules(trainer, pipe) -> Iterator[None]:
    """Inside a sharded fit (e.g. to save and evaluate θ_k on the way): the pipeline's sharded models replaced by
    whole copies holding the weights training has now; nothing to do in an unsharded fit."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = sharded_root(trainer)
    if root is None:
        yield
        return
    full = full_state(root)
    names = {id(m): unwrapped_name(n) for n, m in trainer.lightning_module.named_modules()}
    device = trainer.strategy.root_device
    saved = {}
    for attr, m in list(pipe.components.items()):
        if isinstance(m, torch.nn.Module) and any(isinstance(c, FSDP) for c in m.modules()):
            prefix = names[id(m)] + "."
            saved[attr] = m
            setattr(pipe, attr, _plain_copy(m, {k[len(prefix):]: v for k, v in full.items()
                                                if k.startswith(prefix)}).to(device))
    del full
    try:
        yield
    finally:
        for attr, m in saved.items():
            setattr(pipe, attr, m)


def unshard(trainer) -> None:
    """After a sharded fit: the trained weights gathered whole into every process and the FSDP wrappers taken out of
    the module tree, so the next stage (generation, a save, another fit) sees the plain modules it had before."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = sharded_root(trainer)
    if root is None:
        return
    full = full_state(root)
    trainer.strategy.optimizers = []  # the fit is over: its sharded states go before the whole weights arrive
    root.zero_grad(set_to_none=True)
    import gc

    gc.collect()
    module = trainer.lightning_module
    ignored = {id(p) for m in getattr(trainer.strategy, "ignored", []) for p in m.parameters()}
    device = trainer.strategy.root_device

    def unwrap(parent: torch.nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, FSDP):
                child = child.module
                setattr(parent, name, child)
            unwrap(child)

    unwrap(module)
    for prefix, mod in module.named_modules():
        for name, p in list(mod._parameters.items()):
            if p is None or id(p) in ignored:
                continue
            # a fresh Parameter: the old one is a view of this process's shard and carries FSDP's marks
            mod._parameters[name] = torch.nn.Parameter(full[f"{prefix}.{name}" if prefix else name].to(device),
                                                       requires_grad=p.requires_grad)
    trainer.strategy.model = module
    barrier()
