"""The world's two CLIP-style models, as open_clip architectures registered from `dbdpo/clip_configs/`.

- `dbdpo-world-scorer`: the IS/TS scorer used by the method (as ViT-B/32 is for real runs). A ViT (32 px,
  patch 4, width 128, 3 layers) and a 2-layer, 64-wide text transformer. Trained on the "pretrain" split
  (the t2i model's data), data half 0.
- `dbdpo-world-evaluator`: an independent judge that training never sees. Another architecture (open_clip's
  ModifiedResNet: conv stem, bottleneck stages, attention pooling; a 3-layer text transformer), another seed,
  and other data: split "all" (it also knows the held-out attribute combinations), data half 1, so no scene
  combination the scorer trains on is in its training data.

Both see images exactly as `ClipScorer` feeds them (pixels / 255, CLIP mean / std) and texts through the
config's open_clip tokenizer (the real CLIP BPE vocabulary, context 77). Weights ship as fp16 safetensors;
`ClipScorer(model_name, pretrained=path)` loads them (open_clip upcasts into its fp32 parameters) once
`register_world_clips()` has run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..io import write_json
from .oracle import fit_resumable, save_weights, warmup_cosine

CONFIG_DIR = Path(__file__).resolve().parents[1] / "clip_configs"
SCORER = "dbdpo-world-scorer"
EVALUATOR = "dbdpo-world-evaluator"
MODELS = {"scorer": SCORER, "evaluator": EVALUATOR}
# Training data of each model: split and data half (see data.py).
DATA = {"scorer": {"split": "pretrain", "half": 0}, "evaluator": {"split": "all", "half": 1}}
RETRIEVAL_GROUP = 100
# Defaults (batch 128, lr 2e-3). Measured on 2 shared CPU cores: 300 steps gave 58 % (scorer) and 43 %
# (evaluator) top-1 retrieval among 100; 1500 steps is an extrapolation, not yet a measured >= 90 %.
DEFAULT_STEPS = {"scorer": 1500, "evaluator": 1500}
DEFAULT_SEEDS = {"scorer": 1, "evaluator": 2}


def register_world_clips() -> tuple[str, str]:
    """Register the scorer and evaluator architectures with open_clip (idempotent; every config in
    `dbdpo/clip_configs/` is registered the same way by `scores.register_clip_configs`); returns their names."""
    from ..scores import register_clip_configs

    register_clip_configs()
    return SCORER, EVALUATOR


def model_name(which: str) -> str:
    if which not in MODELS:
        raise ValueError(f"unknown world CLIP {which!r}; choose one of {', '.join(MODELS)}")
    return MODELS[which]


def create_clip(name: str, seed: int = 0):
    """A freshly initialised open_clip model of a registered world architecture (fp32, CPU)."""
    import open_clip

    from ..scores import _quiet_random_init

    register_world_clips()
    with torch.random.fork_rng(devices=[]), _quiet_random_init(True):
        torch.manual_seed(seed)
        return open_clip.create_model(name, pretrained=None, device="cpu")


def normalise_pixels(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """[-1, 1] float (N, 3, H, W) -> CLIP input, the way `ClipScorer` prepares uint8 images."""
    x = (pixels + 1.0) * 0.5
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class ClipModule(L.LightningModule):
    """Contrastive training of an open_clip model (`open_clip.loss.ClipLoss`), AdamW, warm-up + cosine LR."""

    def __init__(self, model_name: str, steps: int, lr: float = 2e-3, weight_decay: float = 0.05, warmup: int = 50,
                 seed: int = 0):
        super().__init__()
        import open_clip
        from open_clip.loss import ClipLoss

        self.save_hyperparameters()
        self.model = create_clip(model_name, seed)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self.loss_fn = ClipLoss()

    def encode(self, pixels: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image and text features for [-1, 1] pixels and captions."""
        img = self.model.encode_image(normalise_pixels(pixels, self.mean, self.std), normalize=True)
        txt = self.model.encode_text(self.tokenizer(captions).to(pixels.device), normalize=True)
        return img, txt

    def training_step(self, batch, batch_idx):
        img, txt = self.encode(batch["pixels"], batch["captions"])
        loss = self.loss_fn(img, txt, self.model.logit_scale.exp())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(img))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():  # as open_clip's training loop does
            self.model.logit_scale.clamp_(0, math.log(100))

    def configure_optimizers(self):
        hp = self.hparams
        no_decay = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        params = list(self.model.named_parameters())
        opt = torch.optim.AdamW([
            {"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": hp.weight_decay},
            {"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0}],
            lr=hp.lr, betas=(0.9, 0.98), eps=1e-6)
        steps, warmup = int(hp.steps), int(min(hp.warmup, max(1, hp.steps // 10)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def retrieval_top1(img_emb: torch.Tensor, txt_emb: torch.Tensor, group: int = RETRIEVAL_GROUP) -> float:
    """Top-1 caption retrieval: pairs (img_emb[i], txt_emb[i]) are cut into consecutive groups of `group`;
    an image counts as right when its own caption is the most similar of its group's captions (strictly:
    a tie with another caption counts as wrong). Returns the fraction right over all complete groups."""
    img_emb, txt_emb = torch.as_tensor(img_emb).float(), torch.as_tensor(txt_emb).float()
    if img_emb.shape != txt_emb.shape or img_emb.ndim != 2:
        raise ValueError(f"embeddings must both be (N, D); got {tuple(img_emb.shape)} and {tuple(txt_emb.shape)}")
    n = (len(img_emb) // group) * group
    if n == 0:
        raise ValueError(f"need at least {group} pairs for retrieval among {group} (got {len(img_emb)})")
    sims = torch.einsum("gid,gjd->gij", img_emb[:n].view(-1, group, img_emb.shape[1]),
                        txt_emb[:n].view(-1, group, txt_emb.shape[1]))
    own = sims.diagonal(dim1=1, dim2=2)
    others = sims.masked_fill(torch.eye(group, dtype=torch.bool), -torch.inf).amax(dim=2)
    return float((own > others).float().mean())


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (N, 3, H, W) -> uint8 (the rendered images)."""
    return ((pixels + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def measure_retrieval(scorer, data: dict, group: int = RETRIEVAL_GROUP) -> float:
    """Top-1 retrieval among `group` of a `ClipScorer` on a `fixed_eval_set` dict."""
    img = scorer.embed_images(to_uint8(data["pixels"]))
    txt = scorer.embed_texts(data["captions"])
    return retrieval_top1(img, txt, group)


def load_world_clip(which_or_name: str, path: str | os.PathLike, **kwargs):
    """A `ClipScorer` for a world CLIP saved by `train_clip`."""
    from ..scores import ClipScorer

    register_world_clips()
    name = MODELS.get(which_or_name, which_or_name)
    return ClipScorer(name, pretrained=os.fspath(path), **kwargs)


def train_clip(which: str, steps: int | None = None, batch_size: int = 128, lr: float = 2e-3,
               seed: int | None = None, ckpt_dir: str | os.PathLike | None = None,
               out_path: str | os.PathLike | None = None, trainer_kwargs: dict | None = None,
               eval_n: int = 2000, checkpoint_every: int = 200, half: bool = True,
               workers: int = 0) -> dict[str, Any]:
    """Train the scorer or the evaluator contrastively on fresh renders (batch k = f(seed, k)), resuming from
    `ckpt_dir/last.ckpt`; save fp16 safetensors at `out_path` (+ a JSON note); reload them through
    `ClipScorer` and return top-1 caption retrieval among 100 on `eval_n` fresh renders of the held-out split.

    `steps` / `seed` default to `DEFAULT_STEPS[which]` / `DEFAULT_SEEDS[which]` (scorer 1500 / 1, evaluator
    1500 / 2)."""
    from .data import WorldData, fixed_eval_set

    name = model_name(which)
    steps = DEFAULT_STEPS[which] if steps is None else int(steps)
    seed = DEFAULT_SEEDS[which] if seed is None else int(seed)
    ckpt_dir = Path(ckpt_dir or f"logs/world_pretrain/{which}")
    out_path = Path(out_path or f"dbdpo/assets/world/{which}.safetensors")
    module = ClipModule(name, steps=steps, lr=lr, seed=seed)
    d = DATA[which]
    data = WorldData(batch_size, seed, d["split"], 32, steps, with_captions=True, half=d["half"],
                     workers=workers)
    fit_resumable(module, data, steps, ckpt_dir, checkpoint_every, trainer_kwargs)
    model = module.model.cpu().eval()
    n_params = sum(p.numel() for p in model.parameters())
    note = {"model_name": name, "which": which, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "data": d, "params": n_params}
    save_weights(model, out_path, note, half=half)
    scorer = load_world_clip(name, out_path)
    result = {"model_name": name, "params": n_params, "steps": steps,
              "top1_among_100_heldout": measure_retrieval(scorer, fixed_eval_set(eval_n, seed + 5000, "heldout")),
              "eval_n": eval_n}
    write_json(Path(out_path).with_suffix(".json"), {**note, "retrieval": result})
    return result

