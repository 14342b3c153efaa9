"""One typed schema for the whole `train.py` config, checked in one pass before any model is built.

Every config group has a structured config (a dataclass registered in Hydra's ConfigStore as `<group>/schema`,
the whole tree as `train_schema`). `check_config(cfg)` puts each value the user composed into its typed node —
OmegaConf converts and type-checks it — then applies each field's range check (`metadata["check"]`) and the
checks that span fields. Every problem becomes one line naming the key, the value and what is allowed; all of
them are reported together in one `ConfigError`.

Groups whose keys are open by design are checked by what they build: `concept` by its kind's signature
(`concept.build_concept`), `trainer` by `lightning.Trainer`'s arguments, `logger` entries by their `_target_`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from .errors import ConfigError

# ---- range checks: each returns None when the value is allowed, else what is allowed -------------------------


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def positive(x) -> str | None:
    return None if _finite(x) and x > 0 else "a finite number > 0"


def non_negative(x) -> str | None:
    return None if _finite(x) and x >= 0 else "a finite number ≥ 0"


def finite(x) -> str | None:
    return None if _finite(x) else "a finite number"


def fraction(x) -> str | None:
    return None if _finite(x) and 0 <= x <= 1 else "a number in [0, 1]"


def at_least(n: int) -> Callable[[Any], str | None]:
    def check(x) -> str | None:
        return None if isinstance(x, int) and x >= n else f"an integer ≥ {n}"
    return check


def one_of(*values) -> Callable[[Any], str | None]:
    def check(x) -> str | None:
        return None if x in values else "one of " + ", ".join(map(str, values))
    return check


def subset_of(*values) -> Callable[[Any], str | None]:
    """A non-empty list of distinct members of `values`."""
    def check(x) -> str | None:
        items = list(x)
        ok = items and all(v in values for v in items) and len(set(items)) == len(items)
        return None if ok else "a non-empty list of distinct values from " + ", ".join(map(str, values))
    return check


def existing_file(x) -> str | None:
    return None if os.path.isfile(str(x)) else "an existing file"


def _looks_like_path(value: str) -> bool:
    """A local path rather than a hub id (`org/name`) or an open_clip tag (`openai`)."""
    return value.startswith(("/", ".", "~")) or value.count("/") >= 2 or (os.sep != "/" and os.sep in value) \
        or value.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))


def local_or_hub(x) -> str | None:
    """A hub id (`org/name`) or an existing local path; a path-looking value must exist."""
    s = str(x)
    if _looks_like_path(s) and not os.path.exists(os.path.expanduser(s)):
        return "an existing local path or a hub id (org/name)"
    return None


def _opt(check):
    return lambda x: None if x is None else check(x)


def setting(default: Any = MISSING, check: Callable[[Any], str | None] | None = None, *, factory=None):
    """A dataclass field with a range check in its metadata."""
    meta = {"check": check} if check else {}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---- the schema ----------------------------------------------------------------------------------------------

REFERENCES = ("previous", "initial")
PROMPT_SETS = ("full", "val", "long")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", "16", "bf16")


def _backbone_enums():
    from .backbones import _DTYPES, KINDS, SAMPLERS, SDPA_BACKENDS

    return KINDS, SAMPLERS, tuple(_DTYPES), tuple(SDPA_BACKENDS)


def _compile_backend(x) -> str | None:
    import torch._dynamo as dynamo

    backends = dynamo.list_backends(exclude_tags=())
    return None if x in backends else "one of " + ", ".join(backends)


def _inductor_options(x) -> str | None:
    from .backbones import inductor_options

    return inductor_options(x)


@dataclass
class BackboneSchema:
    name: str = MISSING
    kind: str = setting("sd", lambda x: one_of(*_backbone_enums()[0])(x))
    pretrained: Optional[str] = setting(None, _opt(local_or_hub))
    local_files_only: bool = False
    vae: Optional[str] = setting(None, _opt(local_or_hub))
    resolution: int = setting(512, lambda x: at_least(8)(x) or (None if x % 8 == 0 else "a multiple of 8"))
    sampler: str = setting("DDIMScheduler", lambda x: one_of(*_backbone_enums()[1])(x))
    num_inference_steps: int = setting(50, at_least(1))
    guidance_scale: float = setting(7.5, non_negative)
    dtype: str = setting("float32", lambda x: one_of(*_backbone_enums()[2])(x))
    seed: int = 0
    build: Optional[str] = None
    fast_steps: int = setting(20, at_least(1))  # generate=fast's step count for this backbone's DPO samples
    compile: bool = False  # sample and decode through torch.compile (SD2/SDXL configs: on; benchmarks.md)
    compile_training: bool = False  # train (personalization, DPO) through torch.compile(unet) too
    channels_last: bool = False  # the UNet's convolutions in NHWC (with compile: 1.41× SD2 generation on an H200)
    compile_mode: Optional[str] = setting(None, _opt(one_of("default", "reduce-overhead", "max-autotune",
                                                            "max-autotune-no-cudagraphs")))
    compile_backend: str = setting("inductor", lambda x: _compile_backend(x))
    # inductor's options over the mode's, e.g. {coordinate_descent_tuning: true, conv_1x1_as_mm: true}
    compile_options: Optional[dict[str, Any]] = setting(None, _opt(lambda x: _inductor_options(x)))
    # scaled_dot_product_attention's kernel tried first (null: torch's own order)
    sdpa_backend: Optional[str] = setting(None, _opt(lambda x: one_of(*_backbone_enums()[3])(x)))


@dataclass
class AdapterSchema:
    kind: str = setting("full", one_of("full", "svdiff", "lora"))
    rank: Optional[int] = setting(None, _opt(at_least(1)))
    alpha: Optional[float] = setting(None, _opt(positive))
    targets: Optional[list[str]] = setting(None, _opt(lambda x: None if len(x) else "a non-empty list of module names"))
    dpo_lr: Optional[float] = setting(None, _opt(positive))
    lr_1d: Optional[float] = setting(None, _opt(non_negative))


@dataclass
class MethodSchema:
    name: str = MISSING
    prompt: str = setting("a photo of [V*]", lambda x: None if "[V*]" in x else "a prompt containing [V*]")
    lr: float = setting(MISSING, positive)
    batch_size: int = setting(1, at_least(1))
    max_steps: int = setting(500, at_least(1))
    weight_decay: float = setting(0.0, non_negative)
    random_flip: bool = False
    gradient_checkpointing: bool = False
    optimizer: str = setting("adamw", one_of("adamw", "adamw8bit"))
    train_text_encoder: bool = False
    prior_preservation: bool = False
    num_class_images: int = setting(200, at_least(1))
    prior_loss_weight: float = setting(1.0, non_negative)
    class_cache_dir: Optional[str] = None
    # the baseline curve: checkpoints saved and evaluated at these steps; DPO starts from `start_from` (null: the last)
    eval_at: Optional[list[int]] = setting(None, _opt(lambda x: None if all(int(v) >= 1 for v in x)
                                                      else "a list of steps ≥ 1"))
    start_from: Optional[int] = setting(None, _opt(at_least(1)))
    adapter: AdapterSchema = field(default_factory=AdapterSchema)


@dataclass
class PromptsSchema:
    n: int = setting(1000, at_least(1))
    coco_fraction: float = setting(0.75, fraction)
    coco_prompts: Optional[str] = setting(None, _opt(existing_file))
    seed: int = 0


@dataclass
class GenerateSchema:
    images_per_prompt: int = setting(10, at_least(2))  # pairs are built among a prompt's images
    batch_size: int = setting(8, at_least(1))
    prompts_per_shard: int = setting(16, at_least(1))
    cache_dir: Optional[str] = None
    guidance_scale: Optional[float] = setting(None, _opt(non_negative))
    # the DPO samples' own sampler and steps (generate=fast); null: the backbone's, which evaluation uses
    sampler: Optional[str] = setting(None, _opt(lambda x: one_of(*_backbone_enums()[1])(x)))
    num_inference_steps: Optional[int] = setting(None, _opt(at_least(1)))
    eta: Optional[float] = setting(None, _opt(non_negative))  # DDIM η of the DPO samples (1: as stochastic as DDPM)


@dataclass
class ScorerSchema:
    model_name: str = MISSING
    pretrained: Optional[str] = setting(None, _opt(local_or_hub))
    preprocess: str = setting("standard", one_of("standard", "paper"))
    batch_size: int = setting(64, at_least(1))
    seed: int = 0
    text_variant: str = setting("remove", one_of("remove", "class"))


@dataclass
class FilterSchema:
    name: str = MISSING
    kind: str = setting(MISSING, one_of("threshold", "angle"))
    c1: Optional[float] = setting(None, _opt(finite))
    c2: Optional[float] = setting(None, _opt(finite))
    tau: Optional[float] = setting(None, _opt(non_negative))
    score_type: Optional[str] = None
    weight: Optional[float] = setting(None, _opt(fraction))


@dataclass
class DpoSchema:
    beta: float = setting(5000.0, positive)  # β = 0 makes the loss the constant ln 2: nothing would train
    lr: float = setting(2.5e-6, positive)
    batch_size: int = setting(256, at_least(1))
    micro_batch_size: int = setting(8, at_least(1))
    epochs: int = setting(5, at_least(1))
    max_steps: Optional[int] = setting(None, _opt(at_least(1)))
    weight_decay: float = setting(0.0, non_negative)
    warmup_steps: int = setting(0, at_least(0))
    reference: str = setting("previous", one_of(*REFERENCES))


@dataclass
class EvalSchema:
    prompt_set: str = setting("full", one_of(*PROMPT_SETS))
    images_per_prompt: int = setting(10, at_least(1))
    max_prompts: Optional[int] = setting(None, _opt(at_least(1)))
    seed: int = 0
    every_step: bool = True
    judge: bool = True


@dataclass
class PathsSchema:
    root_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING
    dreambench_root: str = MISSING
    assets_dir: str = MISSING


@dataclass
class TrainSchema:
    seed: int = 0
    steps: int = setting(2, at_least(1))
    progress: bool = True
    device: str = "auto"
    run_name: str = "run"
    paths: PathsSchema = field(default_factory=PathsSchema)
    backbone: BackboneSchema = field(default_factory=BackboneSchema)
    method: MethodSchema = field(default_factory=MethodSchema)
    prompts: PromptsSchema = field(default_factory=PromptsSchema)
    generate: GenerateSchema = field(default_factory=GenerateSchema)
    scorer: ScorerSchema = field(default_factory=ScorerSchema)
    filter: FilterSchema = field(default_factory=FilterSchema)
    dpo: DpoSchema = field(default_factory=DpoSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)


OPEN_GROUPS = ("concept", "trainer", "logger", "experiment", "hydra")

EVAL_NOISE = ("shared", "per_unit")


@dataclass
class VerifySchema:
    """`python -m dbdpo.world verify`'s own settings (conf/verify.yaml); each run's train config is checked by
    `TrainSchema` when it is composed."""
    root_dir: str = MISSING
    results_dir: str = MISSING
    concepts: Optional[list[str]] = None
    seeds: list[int] = setting(factory=lambda: [0, 1, 2])
    db_checkpoints: list[int] = setting(factory=lambda: [0, 50, 100, 200, 400])
    variants: list[str] = setting(check=subset_of("ts", "is", "mix"), factory=lambda: ["ts", "is", "mix"])
    steps: int = setting(2, at_least(1))
    equal_compute_s1: bool = True
    eval_noise: str = setting("shared", one_of(*EVAL_NOISE))
    train_overrides: list[str] = setting(factory=list)
    notes: Optional[str] = None
    workers: Optional[int] = setting(2, _opt(at_least(1)))
    threads: Optional[int] = setting(None, _opt(at_least(1)))
    progress: bool = True


def register_schemas() -> None:
    """Register every group's schema in Hydra's ConfigStore (`<group>/schema`) and the tree as `train_schema`."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    for f in dataclasses.fields(TrainSchema):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            cs.store(group=f.name, name="schema", node=f.default_factory)


# ---- the validation pass -------------------------------------------------------------------------------------


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "list[str]": "a list of strings", "list[int]": "a list of integers",
               "dict[str, Any]": "a mapping {name: value, ...}"}


def _type_name(tp) -> str:
    """'Optional[int]' -> 'null or an integer' (annotations are strings under `from __future__ import annotations`)."""
    s = str(tp).replace("typing.", "")
    if s.startswith("Optional[") and s.endswith("]"):
        return "null or " + _type_name(s[len("Optional["):-1])
    return _TYPE_NAMES.get(s, s)


def _show(value) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_node(cfg: DictConfig, cls, prefix: str, problems: list[str], open_keys: tuple = ()) -> None:
    """Type-check `cfg` against the dataclass `cls` field by field, then apply each field's range check
    (`open_keys`: keys checked elsewhere)."""
    from omegaconf.errors import OmegaConfBaseException

    typed = OmegaConf.structured(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in cfg:
        key = str(key)
        if key in open_keys:
            continue
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown setting; {prefix.rstrip('.') or 'the config'} takes "
                            f"{', '.join([*fields, *open_keys])}")
            continue
        try:
            value = cfg[key]
        except OmegaConfBaseException as e:
            problems.append(f"{prefix}{key}: cannot be resolved ({' '.join(str(e).split()[:20])})")
            continue
        f = fields[key]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            if not isinstance(value, DictConfig):
                problems.append(f"{prefix}{key}={_show(value)}: must be a mapping of {', '.join(map(str, (x.name for x in dataclasses.fields(f.default_factory))))}")
            else:
                _check_node(value, f.default_factory, f"{prefix}{key}.", problems)
            continue
        try:
            typed[key] = value
            converted = typed[key]
        except OmegaConfBaseException:
            problems.append(f"{prefix}{key}={_show(value)}: must be {_type_name(f.type)}")
            continue
        check = f.metadata.get("check")
        if converted is not None and check is not None:
            why = check(converted)
            if why:
                problems.append(f"{prefix}{key}={_show(value)}: must be {why}")
    for key, f in fields.items():
        if key not in cfg and f.default is MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{prefix}{key}: missing; it has no default")


# dbdpo's own settings in the trainer group: mid-stage checkpoints every N optimizer steps (0: off), keep the newest K
TRAINER_EXTRAS = {"checkpoint_every": 0, "checkpoint_keep": 1}


def _check_trainer(cfg: DictConfig, problems: list[str]) -> None:
    import lightning as L

    t = cfg.get("trainer")
    if not isinstance(t, DictConfig):
        problems.append("trainer: must be a mapping of lightning.Trainer arguments with a _target_")
        return
    params = inspect.signature(L.Trainer.__init__).parameters
    for key in t:
        if key != "_target_" and key not in params and key not in TRAINER_EXTRAS:
            problems.append(f"trainer.{key}: not an argument of lightning.Trainer")
    for key, low in TRAINER_EXTRAS.items():
        v = t.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            problems.append(f"trainer.{key}={_show(v)}: must be an integer ≥ {low}")
    prec = t.get("precision")
    if prec is not None and str(prec) not in PRECISIONS:
        problems.append(f"trainer.precision={prec!r}: must be one of {', '.join(PRECISIONS)}")
    acc = str(t.get("accelerator", "auto"))
    if acc in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(f"trainer.accelerator={acc}: no CUDA device is visible; use auto or cpu")
    clip = t.get("gradient_clip_val")
    if clip is not None and non_negative(clip):
        problems.append(f"trainer.gradient_clip_val={clip!r}: must be null or a finite number ≥ 0")


def _check_loggers(cfg: DictConfig, problems: list[str]) -> None:
    from hydra.utils import get_class

    for name, lg in (cfg.get("logger") or {}).items():
        if not isinstance(lg, DictConfig) or "_target_" not in lg:
            problems.append(f"logger.{name}: must be a mapping with a _target_ (a Lightning logger class)")
            continue
        try:
            get_class(lg._target_)
        except Exception:
            problems.append(f"logger.{name}._target_={lg._target_!r}: cannot be imported")


def _check_device(cfg: DictConfig, problems: list[str]) -> None:
    import torch

    name = str(cfg.get("device", "auto"))
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except RuntimeError:
        problems.append(f"device={name!r}: must be auto, cpu or cuda[:k]")
        return
    if dev.type == "cuda" and not torch.cuda.is_available():
        problems.append(f"device={name}: no CUDA device is visible; use device=auto or device=cpu")


def _cuda_will_be_used(cfg: DictConfig) -> bool:
    import torch

    acc = str(cfg.trainer.get("accelerator", "auto")) if isinstance(cfg.get("trainer"), DictConfig) else "auto"
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def _check_hardware(cfg: DictConfig, problems: list[str]) -> None:
    """Options that need hardware or packages this machine may lack."""
    import importlib.util

    import torch

    m = cfg.get("method")
    if isinstance(m, DictConfig) and m.get("optimizer") == "adamw8bit":
        if not _cuda_will_be_used(cfg):
            problems.append("method.optimizer=adamw8bit: 8-bit AdamW (bitsandbytes) needs a CUDA device; none will "
                            "be used here (use method.optimizer=adamw)")
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append("method.optimizer=adamw8bit: bitsandbytes is not installed (pip install bitsandbytes) "
                            "— or use method.optimizer=adamw")
    t = cfg.get("trainer")
    prec = str(t.get("precision")) if isinstance(t, DictConfig) and t.get("precision") is not None else ""
    if prec.startswith("bf16") and _cuda_will_be_used(cfg) and not torch.cuda.is_bf16_supported():
        problems.append(f"trainer.precision={prec}: this GPU has no bfloat16; use trainer.precision=16-mixed")


def _check_precision(cfg: DictConfig, problems: list[str]) -> None:
    """Half-precision frozen parts (`backbone.dtype`) run under autocast while training: a mixed precision."""
    b, t = cfg.get("backbone"), cfg.get("trainer")
    if not isinstance(b, DictConfig) or not isinstance(t, DictConfig):
        return
    dtype, prec = str(b.get("dtype", "float32")), str(t.get("precision", "32-true"))
    if dtype in ("float16", "bfloat16") and prec not in ("16-mixed", "bf16-mixed"):
        want = "bf16-mixed" if dtype == "bfloat16" else "16-mixed"
        problems.append(f"backbone.dtype={dtype} holds the frozen parts in half precision; training then needs "
                        f"trainer.precision={want} (now {prec}), or backbone.dtype=float32")


def _check_backbone_folder(cfg: DictConfig, problems: list[str]) -> None:
    """A local `backbone.pretrained` folder is a diffusers pipeline with what its kind needs."""
    import json

    b = cfg.get("backbone")
    if not isinstance(b, DictConfig) or not b.get("pretrained"):
        return
    folder = Path(os.path.expanduser(str(b.pretrained)))
    if not folder.is_dir():
        return
    index = folder / "model_index.json"
    if not index.is_file():
        problems.append(f"backbone.pretrained={str(b.pretrained)!r}: no model_index.json; point it at a folder "
                        "written by a diffusers pipeline's save_pretrained")
        return
    components = set(json.loads(index.read_text()))
    need = {"sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
            "sdxl": ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")}
    missing = [c for c in need.get(str(b.get("kind")), ()) if c not in components or not (folder / c).is_dir()]
    if missing:
        problems.append(f"backbone.pretrained={str(b.pretrained)!r}: the pipeline folder lacks {', '.join(missing)} "
                        f"(backbone.kind={b.get('kind')} needs them)")


def _check_processes(cfg: DictConfig, problems: list[str]) -> None:
    """`trainer.devices` / `strategy` / `num_nodes`: processes this machine can run, a strategy Lightning knows and
    dbdpo splits its work for, batches that divide among the processes."""
    import os

    import torch
    from lightning.pytorch.strategies import StrategyRegistry

    from .distributed import DDP_STRATEGIES, FSDP_STRATEGIES, devices_of

    t = cfg.get("trainer")
    if not isinstance(t, DictConfig):
        return
    strategy = t.get("strategy", "auto")
    if isinstance(strategy, str) and strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        problems.append(f"trainer.strategy={strategy}: Lightning knows no such strategy; with several devices use "
                        "trainer.strategy=ddp")
        return
    nodes = t.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        problems.append(f"trainer.num_nodes={_show(nodes)}: must be an integer ≥ 1")
        return
    try:
        world = devices_of(cfg)
        per_node = world // nodes
    except (TypeError, ValueError):
        problems.append(f"trainer.devices={t.get('devices')!r}: must be a number of devices, a list of indices or auto")
        return
    if world <= 1:
        return
    acc = str(t.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        if per_node > torch.cuda.device_count():
            problems.append(f"trainer.devices={t.get('devices')}: only {torch.cuda.device_count()} CUDA device(s) "
                            "are visible on this machine")
    elif per_node > (os.cpu_count() or 1):
        problems.append(f"trainer.devices={t.get('devices')}: {per_node} CPU processes on a machine with "
                        f"{os.cpu_count()} cores; use at most {os.cpu_count()}")
    if strategy in FSDP_STRATEGIES:
        kind = (cfg.get("method") or {}).get("adapter", {}).get("kind", "full")
        if kind != "full":
            problems.append(f"trainer.strategy={strategy} shards a full fine-tune's UNet; method.adapter.kind={kind} "
                            "trains a small adapter beside a frozen UNet: use trainer.strategy=ddp")
    elif strategy not in DDP_STRATEGIES:
        problems.append(f"trainer.strategy={strategy}: with several devices dbdpo runs every stage over DDP (or, for "
                        f"a full fine-tune, FSDP) processes it starts itself; use trainer.strategy=ddp or fsdp")
    try:
        m, d = cfg.method, cfg.dpo
        if int(m.batch_size) % world:
            problems.append(f"method.batch_size={m.batch_size}: the personalization batch is split across the "
                            f"{world} processes; use a multiple of {world}")
        if int(d.batch_size) % (int(d.micro_batch_size) * world):
            problems.append(f"dpo.batch_size={d.batch_size}: each of the {world} processes accumulates micro-batches "
                            f"of dpo.micro_batch_size={d.micro_batch_size} pairs; use a multiple of "
                            f"{int(d.micro_batch_size) * world}")
    except (TypeError, ValueError, ZeroDivisionError, AttributeError):
        pass


def _check_across(cfg: DictConfig, problems: list[str]) -> None:
    """Checks that span settings (each run only when the settings it reads passed their own checks)."""
    from .errors import DbdpoError

    b = cfg.backbone
    if b.get("compile_options") and str(b.get("compile_backend", "inductor")) != "inductor":
        problems.append(f"backbone.compile_options: inductor's options; backbone.compile_backend is "
                        f"{b.compile_backend} (set backbone.compile_backend=inductor or drop the options)")
    d = cfg.dpo
    try:
        if int(d.batch_size) % int(d.micro_batch_size):
            problems.append(f"dpo.batch_size={d.batch_size}: must be a multiple of dpo.micro_batch_size "
                            f"({d.micro_batch_size})")
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    try:
        from .pairs import make_filter

        make_filter(cfg.filter)
    except DbdpoError as e:
        problems.append(str(e))
    except (TypeError, ValueError):
        pass
    try:
        from .concept import build_concept

        build_concept(cfg.concept)
    except DbdpoError as e:
        problems.append(str(e))
    m = cfg.method
    try:
        if m.get("train_text_encoder") and str(m.adapter.get("kind", "full")) != "full":
            problems.append(f"method.train_text_encoder=true: trains the text encoder with the full UNet "
                            f"(method=dreambooth); method={m.get('name')} trains an adapter")
    except (TypeError, ValueError, AttributeError):
        pass
    try:
        top = int(m.max_steps)
        for k in list(m.get("eval_at") or []):
            if int(k) > top:
                problems.append(f"method.eval_at: step {k} is after the last personalization step "
                                f"(method.max_steps={top})")
        if m.get("start_from") is not None and int(m.start_from) > top:
            problems.append(f"method.start_from={m.start_from}: after the last personalization step "
                            f"(method.max_steps={top})")
    except (TypeError, ValueError, AttributeError):
        pass
    try:
        if int(cfg.steps) > int(cfg.prompts.n):
            problems.append(f"steps={cfg.steps}: must be ≤ prompts.n ({cfg.prompts.n}): each DPO step needs its own "
                            "prompts")
    except (TypeError, ValueError):
        pass


def check_config(cfg: DictConfig) -> None:
    """Validate a composed `train.py` config; raise one `ConfigError` listing every problem (one line each)."""
    problems: list[str] = []
    _check_node(cfg, TrainSchema, "", problems, open_keys=OPEN_GROUPS)
    _check_trainer(cfg, problems)
    _check_processes(cfg, problems)
    _check_loggers(cfg, problems)
    _check_device(cfg, problems)
    _check_hardware(cfg, problems)
    _check_backbone_folder(cfg, problems)
    _check_precision(cfg, problems)
    _check_across(cfg, problems)
    _raise_if_any(problems)


def _raise_if_any(problems: list[str]) -> None:
    if problems:
        problems = list(dict.fromkeys(problems))
        head = "invalid setting:" if len(problems) == 1 else f"{len(problems)} invalid settings:"
        raise ConfigError(head + "".join(f"\n  {p}" for p in problems))


def check_verify_config(vcfg: DictConfig) -> None:
    """Validate `verify`'s config against `VerifySchema`; one `ConfigError` listing every problem."""
    problems: list[str] = []
    _check_node(vcfg, VerifySchema, "", problems, open_keys=("hydra",))
    _raise_if_any(problems)


# ---- config-group choices on the command line ---------------------------------------------------------------


def group_options(group: str, conf_dirs: list[Path]) -> list[str]:
    """Every option of a config group, subfolders included (`dreambench/dog6`, `world/zigzag_star`)."""
    found = set()
    for d in conf_dirs:
        root = Path(d) / group
        if root.is_dir():
            found.update(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
    return sorted(found)


SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def check_group_choices(argv: list[str], conf_dir: Path) -> None:
    """Before Hydra composes: every `group=choice` on the command line names an existing config (searched in
    `conf_dir` and the `file://` folders of `hydra.searchpath=[...]`); otherwise one error listing the options."""
    dirs = [Path(conf_dir)]
    for arg in argv:
        if arg.startswith("hydra.searchpath="):
            for item in arg.split("=", 1)[1].strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://"):
                    dirs.append(Path(item[len("file://"):]))
    groups = {p.name for d in dirs if d.is_dir() for p in d.iterdir() if p.is_dir() and p.name != "hydra"}
    for arg in argv:  # Hydra creates these folders before dbdpo runs: an unwritable one is caught here
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            parent = Path(os.path.expanduser(value.strip("'\""))).absolute()
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{key}={value}: cannot be created ({parent} is not a writable folder); choose "
                                  "another folder")
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and value in SUBMITIT_LAUNCHERS and \
                not _has_module("hydra_plugins.hydra_submitit_launcher"):
            raise ConfigError(f"hydra/launcher={value} needs the hydra-submitit-launcher package, which is not "
                              "installed: pip install hydra-submitit-launcher (pip install -e . installs it)")
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or "(" in value or not value:
            continue
        options = group_options(key, dirs)
        for choice in value.split(","):
            if choice and choice != "null" and choice not in options:
                raise ConfigError(f"{key}={choice}: no such config in conf/{key}/; available: {', '.join(options)} "
                                  "(a folder of your own: hydra.searchpath=[file:///my/conf])")
