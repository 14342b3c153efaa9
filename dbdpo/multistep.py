"""The DreamBoothDPO outer loop: personalize, then S × (generate → score → pair → Diffusion-DPO), evaluating
after personalization and after every step.

    θ0 = personalize(concept);  for s in 1..S:  θ_s = DPO(θ_{s−1}; pairs from θ_{s−1}'s samples on P_s,
                                                      reference θ_{s−1} or θ0)

Every stage writes its outputs atomically into the run directory and is skipped when they are already
there, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .adapters import ADAPTER_FILE, Adapter, load_adapter_file, make_adapter, save_adapter
from .backbones import Backbone, build_backbone
from .checkpointing import (AtomicCheckpointIO, checkpoint_settings, discard, partial_dir, resume_point,
                            stage_callbacks)
from .concept import Concept, ConceptDataModule, build_concept, load_concept_images
from .dpo import DiffusionDPOModule, PairDataModule
from .distributed import (FSDP_STRATEGIES, finish, fsdp_strategy, is_main, launch, local_rank, main_writes, unshard,
                          whole_modules, world_size)
from .errors import ConfigError
from .preflight import check_disk, check_writable, estimate_bytes
from .evaluate import comparison_grid, evaluate, mean_std, save_grid
from .frontier import curve_summary, plot_pareto, point
from .generate import check_sampler, generate
from .io import read_json, write_json
from .pairs import (build_pairs, make_filter, pair_stats, pair_table, plot_alpha_hist, plot_pairs_scatter,
                    require_pairs)
from .personalize import DreamBoothModule

log = logging.getLogger(__name__)



# ---- checkpoints ------------------------------------------------------------------------------------------

def _unet_done(path: Path) -> bool:
    return (path / "diffusion_pytorch_model.safetensors").exists()


def save_unet(unet: torch.nn.Module, path: Path, extras: dict[str, torch.nn.Module] | None = None) -> None:
    """Write the UNet (and `extras`, e.g. trained text encoders, into subfolders) as safetensors into a temporary
    folder, then rename it into place."""
    tmp = path.with_name(f".tmp_{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(str(tmp), safe_serialization=True)
    for name, module in (extras or {}).items():
        module.save_pretrained(str(tmp / name), safe_serialization=True)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_unet_into(unet: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path / "diffusion_pytorch_model.safetensors"))
    unet.load_state_dict(state)


def load_text_encoders_into(backbone: Backbone, path: Path) -> bool:
    """Load the text encoders a checkpoint holds (`path/text_encoder*/model.safetensors`); False if none."""
    from safetensors.torch import load_file

    found = False
    for name, module in zip(backbone.TEXT_ENCODERS, backbone.text_encoders):
        f = path / name / "model.safetensors"
        if f.exists():
            module.load_state_dict(load_file(str(f)), strict=False)  # tied / buffer keys may be absent
            found = True
    return found


# ---- helpers ----------------------------------------------------------------------------------------------

def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as one level of dotted keys (`method.lr`): what loggers record, filterable."""
    out: dict[str, Any] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def wandb_identity(cfg: DictConfig, lg: DictConfig) -> dict[str, str]:
    """One W&B run per Hydra job, named from its overrides, grouped by experiment (and by sweep in a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = job_overrides()
    shown = [o for o in overrides if not o.startswith(("hydra.", "paths.", "logger", "progress", "experiment="))]
    out = {"name": f"{cfg.run_name} {','.join(shown)}".strip()}
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "")
    group = str(lg.get("group") or experiment)
    if HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN":
        group = f"{group or 'sweep'}-{Path(str(HydraConfig.get().sweep.dir)).name}"
    if group:
        out["group"] = group
    return out


def instantiate_loggers(cfg: DictConfig) -> list:
    from hydra.utils import instantiate

    loggers = []
    for _, lg in (cfg.get("logger") or {}).items():
        if isinstance(lg, DictConfig) and "_target_" in lg:
            extra = wandb_identity(cfg, lg) if str(lg._target_).endswith("WandbLogger") else {}
            loggers.append(instantiate(lg, **extra))
    for lg in loggers:
        lg.log_hyperparams(flat_config(cfg))
    return loggers


def log_table(loggers: list, key: str, rows: list[dict]) -> None:
    """A W&B table of sampled pairs (winner and loser images, prompt, ΔTS, ΔIS, α)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            lg.log_table(key=key, columns=["winner", "loser", "prompt", "d_ts", "d_is", "alpha"],
                         data=[[wandb.Image(r["winner"]), wandb.Image(r["loser"]), r["prompt"], r["d_ts"],
                                r["d_is"], r["alpha"]] for r in rows])


def finish_loggers(loggers: list) -> None:
    """Close the loggers; a W&B run is finished, so that the next job of a multirun starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        lg.finalize("success")
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()


def make_trainer(cfg: DictConfig, loggers: list, callbacks: list | None = None, **overrides: Any) -> L.Trainer:
    """The configured Lightning Trainer; with a ModelCheckpoint among `callbacks`, checkpoints are written
    atomically (`AtomicCheckpointIO`)."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .schema import TRAINER_EXTRAS

    t = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in TRAINER_EXTRAS}
    if world_size() > 1:  # the processes are running (`distributed.launch`); batches are split by RankBatches
        if t.get("strategy") in (None, "auto"):
            t["strategy"] = "ddp"
        t["use_distributed_sampler"] = False
    if t.get("strategy") in FSDP_STRATEGIES:
        t["strategy"] = fsdp_strategy(t["strategy"])
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks or ())
    if checkpointing:
        overrides.update(enable_checkpointing=True, plugins=[AtomicCheckpointIO()])
    return instantiate(t, logger=loggers or False, callbacks=callbacks or None, **overrides)


def fit_stage(trainer: L.Trainer, module: L.LightningModule, dm: L.LightningDataModule, folder: Path) -> None:
    """`trainer.fit`, continuing from the newest mid-stage checkpoint in `folder` when there is one."""
    trainer.fit(module, datamodule=dm, ckpt_path=resume_point(folder), weights_only=True)
    unshard(trainer)


def log_metrics(loggers: list, metrics: dict[str, float], step: int) -> None:
    for lg in loggers:
        lg.log_metrics(metrics, step=step)


def log_images(loggers: list, key: str, paths: list[Path]) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.log_image(key=key, images=[str(p) for p in paths])


def resolve_device(name: str) -> torch.device:
    """`device` (auto | cpu | cuda[:k]); with several processes, CUDA means this process's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world_size() > 1:
        return torch.device("cuda", local_rank())
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device={name!r} is not a torch device; use auto, cpu or cuda[:k].") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or device=cpu.")
    return dev


def preflight_disk(cfg: DictConfig, backbone: Backbone, run_dir: Path, n_eval_prompts: int) -> None:
    """Stop before any training when the run's disk cannot hold what it will write (`preflight.estimate_bytes`).
    What trains: the UNet (and text encoders) of a full fine-tune; an adapter counts as 1 % of the UNet, above
    what LoRA rank 4 or SVDiff's spectral shifts hold."""
    unet = sum(p.numel() for p in backbone.unet.parameters())
    if make_adapter(cfg.method).kind == "full":
        trained = unet + (sum(p.numel() for te in backbone.text_encoders for p in te.parameters())
                          if cfg.method.get("train_text_encoder") else 0)
    else:
        trained = max(1, unet // 100)
    check_disk(run_dir, estimate_bytes(cfg, backbone, n_eval_prompts, trained, trained))


def job_overrides() -> list[str]:
    """The command line's overrides of this Hydra job (a multirun job's own values); [] outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def validate(cfg: DictConfig) -> None:
    """Every setting checked (types, ranges, names, paths) before any work: one error listing every problem."""
    from .schema import check_config

    check_config(cfg)


# ---- stages -----------------------------------------------------------------------------------------------

def _restore(adapter: Adapter, backbone: Backbone, ckpt: Path, device: torch.device) -> bool:
    """Load a finished stage's checkpoint into the UNet (an adapter is attached, loaded and fused)."""
    if adapter.kind == "full":
        if not _unet_done(ckpt):
            return False
        load_unet_into(backbone.unet, ckpt)
        load_text_encoders_into(backbone, ckpt)
    else:
        if not (ckpt / ADAPTER_FILE).exists():
            return False
        adapter.attach(backbone.unet)
        backbone.unet.to(device)
        adapter.load_state_dict(backbone.unet, load_adapter_file(ckpt))
        adapter.fuse(backbone.unet)
    log.info("found %s, skipping training", ckpt)
    return True


def _release(backbone: Backbone) -> None:
    """Free what a finished stage left behind before the next stage allocates its own: the last step's gradients
    (4 B per trained parameter; a deep-copied DPO reference would copy them too) and what the Trainer and module keep
    alive in reference cycles (optimizer states, 8 B per trained parameter)."""
    import gc

    for module in (backbone.unet, *backbone.text_encoders):
        module.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _save_trained(adapter: Adapter, backbone: Backbone, path: Path, text_encoders: bool = False) -> None:
    """Save what trains (the UNet with the text encoders when they train, or the adapter alone); process 0 writes,
    every process holds the same weights."""
    with main_writes() as main:
        if main and adapter.kind == "full":
            save_unet(backbone.unet, path,
                      dict(zip(backbone.TEXT_ENCODERS, backbone.text_encoders)) if text_encoders else None)
        elif main:
            save_adapter(adapter, backbone.unet, path)


def _finish(adapter: Adapter, backbone: Backbone, ckpt: Path, device: torch.device,
            text_encoders: bool = False) -> None:
    """Save what a stage trained, remove its mid-stage checkpoints, fuse an adapter, and move back to `device`."""
    _save_trained(adapter, backbone, ckpt, text_encoders)
    with main_writes() as main:
        if main:
            discard(partial_dir(ckpt))
    if adapter.kind != "full":
        adapter.fuse(backbone.unet)
    backbone.to(device)


def frozen_copy(backbone: Backbone) -> torch.nn.Module:
    """A frozen copy of the UNet (a full fine-tune's DPO reference), held in the frozen parts' dtype."""
    ref = copy.deepcopy(backbone.unet).requires_grad_(False)
    return ref.to(backbone.frozen_dtype) if ref.dtype != backbone.frozen_dtype else ref


def memory_options(method: DictConfig) -> dict:
    """The method's optimizer and gradient checkpointing, shared by personalization and DPO."""
    return {"optimizer": str(method.get("optimizer") or "adamw"),
            "gradient_checkpointing": bool(method.get("gradient_checkpointing", False))}


def class_images(cfg: DictConfig, backbone: Backbone, concept: Concept, out_dir: Path):
    """Prior preservation's class samples: `method.num_class_images` images of the instance prompt with the class
    word for `[V*]` ("a photo of dog"), generated by the base model before personalization. Shards are also kept in
    `method.class_cache_dir` (keyed by the base weights' fingerprint and the settings), so later runs on the same
    base model and class copy them instead of generating again."""
    m = cfg.method
    return generate(backbone, [str(m.prompt)], concept.class_name, out_dir, int(m.num_class_images),
                    seed=int(cfg.seed), batch_size=int(cfg.generate.batch_size), prompts_per_shard=1,
                    desc="class images", progress=bool(cfg.progress), cache_dir=m.get("class_cache_dir"))


class SaveAndEvaluate(L.Callback):
    """The baseline curve on the way: when personalization reaches each of `steps` optimizer steps, θ_k is saved
    (`save(k)`) and evaluated (`evaluate(k)`) with the weights training holds at that moment."""

    def __init__(self, steps: list[int], save, evaluate):
        self.steps, self.save, self.evaluate, self.done = set(steps), save, evaluate, set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        k = trainer.global_step
        if k in self.steps and k not in self.done:
            self.done.add(k)
            with whole_modules(trainer, pl_module.backbone.pipe):  # a sharded (FSDP) fit: whole copies of θ_k
                self.save(k)
                pl_module.unet.eval()
                with torch.no_grad():
                    self.evaluate(k)
                pl_module.unet.train()


def curve_steps(m: DictConfig) -> tuple[list[int], int]:
    """(`method.eval_at` with the start, the step DPO starts from: `method.start_from`, else the last)."""
    start = int(m.get("start_from") or m.max_steps)
    return sorted({*(int(k) for k in (m.get("eval_at") or [])), start}), start


def curve_eval_dir(run_dir: Path, k: int, start: int) -> Path:
    return run_dir / "personalize" / ("eval" if k == start else f"step_{k}/eval")


def personalize(cfg: DictConfig, backbone: Backbone, concept: Concept, loggers: list, ckpt: Path,
                device: torch.device, callbacks: list | None = None, curve: dict | None = None) -> None:
    """Personalize to `method.max_steps`, saving the result as θ0 in `ckpt`. With `method.eval_at` / `start_from`
    (and `curve` = {scorer, concept_emb, prompts, judge} for the evaluations), θ_k is saved to
    `<ckpt>_step<k>` and evaluated at each of those steps, and θ0 is the checkpoint of `start_from`."""
    m = cfg.method
    adapter = make_adapter(m)
    if _restore(adapter, backbone, ckpt, device):
        return
    steps, start = curve_steps(m)
    top = int(m.max_steps)
    run_dir = Path(cfg.paths.output_dir)
    train_te = bool(m.get("train_text_encoder", False))

    def step_ckpt(k: int) -> Path:
        return ckpt.with_name(f"{ckpt.name}_step{k}")

    def save(k: int) -> None:
        if k != start or start != top:  # θ0 itself is saved by the stage's end
            _save_trained(adapter, backbone, step_ckpt(k), train_te)

    def evaluate(k: int) -> None:
        run_eval(cfg, backbone, curve["scorer"], concept, curve["concept_emb"], curve["prompts"],
                 curve_eval_dir(run_dir, k, start), f"personalize step {k}", curve.get("judge"))

    extra = [SaveAndEvaluate(steps, save, evaluate)] if curve is not None and (len(steps) > 1 or start != top) \
        else []
    prior = class_images(cfg, backbone, concept, Path(cfg.paths.output_dir) / "class_images") \
        if m.get("prior_preservation") else None
    dm = ConceptDataModule(concept, backbone.resolution, prompt_template=m.prompt, batch_size=int(m.batch_size),
                           repeats=max(1, int(m.max_steps)), random_flip=bool(m.random_flip), seed=int(cfg.seed),
                           class_samples=prior)
    adapter.attach(backbone.unet)
    module = DreamBoothModule(backbone, lr=float(m.lr), weight_decay=float(m.weight_decay), seed=int(cfg.seed),
                              adapter=adapter, train_text_encoder=train_te,
                              prior_loss_weight=float(m.get("prior_loss_weight", 1.0)), **memory_options(m))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    partial = partial_dir(ckpt)
    trainer = make_trainer(cfg, loggers, max_steps=int(m.max_steps), max_epochs=-1,
                           callbacks=[*(callbacks or []), *extra,
                                      *stage_callbacks(partial, *checkpoint_settings(cfg.trainer))])
    fit_stage(trainer, module, dm, partial)
    del trainer, module, dm  # the datamodule holds the trainer (and so its optimizer) too
    _release(backbone)
    if extra and start != top:  # θ0 is an earlier checkpoint than the last
        if adapter.kind == "full":
            load_unet_into(backbone.unet, step_ckpt(start))
            load_text_encoders_into(backbone, step_ckpt(start))
        else:
            adapter.load_state_dict(backbone.unet, load_adapter_file(step_ckpt(start)))
    _finish(adapter, backbone, ckpt, device, text_encoders=train_te)


def score_step(cfg, scorer, samples, concept, concept_emb, out_dir: Path) -> dict[str, np.ndarray]:
    from .scores import score_generation

    return score_generation(scorer, samples, concept_emb, concept.holder, text_variant=cfg.scorer.text_variant,
                            class_name=concept.class_name, out_dir=out_dir)


def dpo_step(cfg: DictConfig, backbone: Backbone, ref_unet, samples, pairs, loggers: list, ckpt: Path,
             step: int, device: torch.device, callbacks: list | None = None) -> None:
    adapter = make_adapter(cfg.method)  # DPO trains what personalization trained: a fresh adapter on θ_{s−1}
    if _restore(adapter, backbone, ckpt, device):
        return
    d = cfg.dpo
    # dpo.batch_size pairs per optimizer step whatever the number of processes (each accumulates its share)
    accumulate = int(d.batch_size) // (int(d.micro_batch_size) * world_size())
    dm = PairDataModule(samples, pairs, micro_batch_size=int(d.micro_batch_size), seed=int(cfg.seed) + step)
    adapter.attach(backbone.unet)
    lr = float(d.lr) if adapter.kind == "full" else float(cfg.method.adapter.get("dpo_lr") or d.lr)
    module = DiffusionDPOModule(backbone, ref_unet=ref_unet, beta=float(d.beta), lr=lr,
                                weight_decay=float(d.weight_decay), warmup_steps=int(d.warmup_steps),
                                seed=int(cfg.seed), outer_step=step, adapter=adapter, **memory_options(cfg.method))
    L.seed_everything(int(cfg.seed) + step, workers=True, verbose=False)
    max_steps = int(d.max_steps) if d.get("max_steps") else -1
    partial = partial_dir(ckpt)
    trainer = make_trainer(cfg, loggers, max_epochs=int(d.epochs), max_steps=max_steps,
                           accumulate_grad_batches=accumulate,
                           callbacks=[*(callbacks or []), *stage_callbacks(partial, *checkpoint_settings(cfg.trainer))])
    fit_stage(trainer, module, dm, partial)
    del trainer, module, dm  # the datamodule holds the trainer (and so its optimizer) too
    _release(backbone)
    _finish(adapter, backbone, ckpt, device)


def eval_prompts(cfg: DictConfig, concept: Concept) -> list[str]:
    """The concept's evaluation prompts (`eval.prompt_set`), the first `eval.max_prompts` of them."""
    prompts = concept.eval_prompts(str(cfg.eval.prompt_set))
    n = cfg.eval.get("max_prompts")
    return prompts[: int(n)] if n else prompts


@dataclass
class RunContext:
    """What every stage of a run needs: the concept with its photos, models on the device, the concept's
    reference embedding and its judge (None when it has none or `eval.judge` is off)."""

    concept: Concept
    concept_images: list
    device: torch.device
    backbone: Backbone
    scorer: Any
    concept_emb: torch.Tensor
    judge: Any


def prepare(cfg: DictConfig) -> RunContext:
    from .scores import build_scorer

    concept = build_concept(cfg.concept)
    with main_writes() as main:  # the photos are written once
        if main:
            concept.prepare(int(cfg.backbone.resolution))
    concept_images = load_concept_images(concept.path)  # fails early with a clear message
    device = resolve_device(str(cfg.device))
    backbone = build_backbone(cfg.backbone).to(device)
    scorer = build_scorer(cfg.scorer, device=str(device))
    return RunContext(concept, concept_images, device, backbone, scorer,
                      scorer.embed_images(concept_images, reference=True),
                      concept.judge(concept_images, str(device)) if cfg.eval.get("judge") else None)


def run_eval(cfg, backbone, scorer, concept, concept_emb, prompts, out_dir: Path, stage: str,
             judge=None) -> dict:
    """CLIP-I / CLIP-T with the scorer; with the concept's judge, also its figures on the same samples."""
    result = evaluate(backbone, scorer, concept, concept_emb, prompts, out_dir,
                      images_per_prompt=int(cfg.eval.images_per_prompt), seed=int(cfg.eval.seed),
                      batch_size=int(cfg.generate.batch_size), text_variant=cfg.scorer.text_variant,
                      progress=bool(cfg.progress), desc=f"eval {stage}")
    if judge is not None:
        result = {**result, **judge(out_dir)}
    return result


# ---- the loop ---------------------------------------------------------------------------------------------

def run(cfg: DictConfig) -> dict:
    """Run the whole method; returns (and writes) `metrics.json`."""
    from .prompts import read_pool, split_pool, write_pool

    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    check_writable(run_dir)  # creates it
    launch(cfg)  # with trainer.devices > 1 the other processes start here and every process runs what follows
    with main_writes() as main:
        if main:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(int(cfg.seed))

    ctx = prepare(cfg)
    concept, device, backbone, scorer = ctx.concept, ctx.device, ctx.backbone, ctx.scorer
    if cfg.generate.get("sampler"):
        check_sampler(backbone, str(cfg.generate.sampler))  # before any work
    concept_emb, judge = ctx.concept_emb, ctx.judge
    filt = make_filter(cfg.filter)
    S = int(cfg.steps)
    main = is_main()
    loggers = instantiate_loggers(cfg) if main else []  # process 0 logs

    # The prompt pool, split into S disjoint parts (written once, reread on resume).
    pool_file = run_dir / "prompts" / "pool.jsonl"
    with main_writes() as writer:
        if writer and not pool_file.exists():
            coco = None
            if cfg.prompts.get("coco_prompts"):
                coco = [ln.strip() for ln in Path(cfg.prompts.coco_prompts).read_text().splitlines() if ln.strip()]
            write_pool(pool_file, concept.prompt_pool(int(cfg.prompts.n), int(cfg.prompts.seed),
                                                      float(cfg.prompts.coco_fraction), coco_prompts=coco))
    pool = read_pool(pool_file)
    parts = split_pool(pool, S)
    prompts_eval = eval_prompts(cfg, concept)
    preflight_disk(cfg, backbone, run_dir, len(prompts_eval))

    metrics_file = run_dir / "metrics.json"
    metrics: dict[str, Any] = read_json(metrics_file) if metrics_file.exists() else {}
    metrics.setdefault("stages", {})
    metrics.update({"concept": concept.name, "backbone": backbone.name, "filter": cfg.filter.name, "steps": S,
                    "overrides": job_overrides()})  # what `python -m dbdpo.report` groups runs by

    def record(stage: str, values: dict, idx: int) -> None:
        if not main:
            return
        metrics["stages"][stage] = values
        write_json(metrics_file, metrics)
        flat = {k: v["mean"] if isinstance(v, dict) else v for k, v in values.items()
                if isinstance(v, (int, float)) or (isinstance(v, dict) and "mean" in v)}
        log_metrics(loggers, {**flat, "stage": idx}, step=idx)

    # Personalize → θ0 (with method.eval_at: the baseline curve on the way)
    ckpt_dir = run_dir / "checkpoints"
    personalize(cfg, backbone, concept, loggers, ckpt_dir / "personalize", device,
                curve={"scorer": scorer, "concept_emb": concept_emb, "prompts": prompts_eval, "judge": judge})
    ev = run_eval(cfg, backbone, scorer, concept, concept_emb, prompts_eval, run_dir / "personalize" / "eval",
                  "personalize", judge)
    record("personalize", ev, 0)
    steps_curve, start = curve_steps(cfg.method)
    baseline = {k: ev if k == start else read_json(curve_eval_dir(run_dir, k, start) / "eval.json")
                for k in steps_curve if k == start or (curve_eval_dir(run_dir, k, start) / "eval.json").exists()}
    log_images(loggers, "eval/grid/personalize", [run_dir / "personalize" / "eval" / "grid.png"])
    # a frozen reference is held in the frozen parts' dtype (`backbone.dtype`)
    initial = frozen_copy(backbone) if cfg.dpo.reference == "initial" else None
    full_finetune = make_adapter(cfg.method).kind == "full"

    for s in range(1, S + 1):
        step_dir = run_dir / f"step_{s}"
        part = [p.prompt for p in parts[s - 1]]
        if main:
            write_pool(step_dir / "prompts.jsonl", parts[s - 1])
        samples = generate(backbone, part, concept.holder, step_dir / "samples", int(cfg.generate.images_per_prompt),
                           seed=int(cfg.seed) * 1000 + s, batch_size=int(cfg.generate.batch_size),
                           prompts_per_shard=int(cfg.generate.prompts_per_shard), desc=f"generate step {s}",
                           progress=bool(cfg.progress), cache_dir=cfg.generate.get("cache_dir"),
                           guidance_scale=cfg.generate.get("guidance_scale"),
                           sampler=cfg.generate.get("sampler"), eta=cfg.generate.get("eta"),
                           num_inference_steps=cfg.generate.get("num_inference_steps"))
        scores = score_step(cfg, scorer, samples, concept, concept_emb, step_dir / "scores")
        pairs = build_pairs(scores["ts"], scores["is"], np.asarray(samples.prompt_index), filt)
        stats = pair_stats(pairs)
        if main:  # every process built the same pairs from the same scores
            write_json(step_dir / "pairs.json", {"winner": pairs.winner.tolist(), "loser": pairs.loser.tolist(),
                                                 "d_ts": pairs.d_ts.tolist(), "d_is": pairs.d_is.tolist(),
                                                 "alpha": pairs.alpha.tolist(), "filter": filt.to_dict()})
            write_json(step_dir / "pair_stats.json", stats)
            plot_alpha_hist(pairs, filt, step_dir / "alpha_hist.png")
            save_grid(samples, step_dir / "samples_grid.png",
                      per_prompt=min(4, int(cfg.generate.images_per_prompt)), max_prompts=8, labels=True)
            log_images(loggers, f"pairs/alpha_hist/step_{s}", [step_dir / "alpha_hist.png"])
            if len(pairs):
                plot_pairs_scatter(pairs, filt, step_dir / "pairs_scatter.png")
                table = pair_table(pairs, samples, n=16, seed=int(cfg.seed) + s)
                write_json(step_dir / "pairs_table.json", table)
                log_images(loggers, f"pairs/scatter/step_{s}", [step_dir / "pairs_scatter.png"])
                log_table(loggers, f"pairs/table/step_{s}", table)
        require_pairs(pairs, filt, step=s)

        # the reference θ_{s−1}: a frozen copy for a full fine-tune; an adapter's own disabled state otherwise
        ref = initial if initial is not None else (
            frozen_copy(backbone) if full_finetune else None)
        dpo_step(cfg, backbone, ref, samples, pairs, loggers, ckpt_dir / f"step_{s}", s, device)
        del ref
        ev = {}
        if s == S or cfg.eval.get("every_step", True):
            ev = run_eval(cfg, backbone, scorer, concept, concept_emb, prompts_eval, step_dir / "eval", f"step {s}",
                          judge)
            log_images(loggers, f"eval/grid/step_{s}", [step_dir / "eval" / "grid.png"])
        ev.update({"pairs/candidates": stats["candidates"], "pairs/kept": stats["kept"],
                   "score/is": mean_std(scores["is"]), "score/ts": mean_std(scores["ts"])})
        record(f"step_{s}", ev, s)

    if main and len(baseline) > 1:  # the baseline frontier and where the DPO steps land against it
        summary = curve_summary(baseline, metrics["stages"])
        metrics["baseline_curve"] = summary
        write_json(metrics_file, metrics)
        write_json(run_dir / "personalize" / "curve.json", summary)
        trajectory = [(name, point(v)) for name, v in metrics["stages"].items() if "eval/clip_i" in v]
        plot_pareto(summary, trajectory, run_dir / "pareto.png",
                    title=f"{concept.name}: {cfg.method.name} checkpoints and DPO ({cfg.filter.name})")
        log_images(loggers, "eval/pareto", [run_dir / "pareto.png"])
    if main:  # the evaluation prompts down, baseline and every step across (same prompts and seeds)
        stage_dirs = {"personalize": run_dir / "personalize" / "eval",
                      **{f"step_{k}": run_dir / f"step_{k}" / "eval" for k in range(1, S + 1)}}
        if comparison_grid(stage_dirs, run_dir / "eval_comparison.png") is not None:
            log_images(loggers, "eval/comparison", [run_dir / "eval_comparison.png"])
    finish_loggers(loggers)
    if main:
        print_summary(metrics, getattr(judge, "labels", None))
    finish()  # the processes this one started
    return metrics


EVAL_COLUMNS = ("eval/clip_i", "eval/clip_t")


def summary_table(metrics: dict, labels: dict[str, str] | None = None) -> str:
    """Markdown table of every stage: pairs, the scorer's IS / TS on the training samples, CLIP-I / CLIP-T, then
    any further `eval/` figures (a judge's), headed by `labels` where given."""
    labels = labels or {}
    extra = list(dict.fromkeys(k for v in metrics["stages"].values() for k in v
                               if k.startswith("eval/") and k not in EVAL_COLUMNS and isinstance(v[k], dict)))
    head = ["stage", "pairs kept / candidates", "IS (train samples)", "TS (train samples)", *EVAL_COLUMNS,
            *(labels.get(k, k) for k in extra)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(v):
        return f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else "–"

    for stage, v in metrics["stages"].items():
        kept = f"{v['pairs/kept']} / {v['pairs/candidates']}" if "pairs/kept" in v else "–"
        cells = [stage, kept, ms(v.get("score/is")), ms(v.get("score/ts")),
                 *(ms(v.get(k)) for k in (*EVAL_COLUMNS, *extra))]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def print_summary(metrics: dict, labels: dict[str, str] | None = None) -> None:
    print("\nDreamBoothDPO summary "
          f"(concept {metrics['concept']}, backbone {metrics['backbone']}, filter {metrics['filter']})")
    print(summary_table(metrics, labels))
