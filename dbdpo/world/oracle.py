"""The world's attribute oracle: a small CNN that reads every attribute of a rendered scene.

It gives the ground truth that CLIP scores only approximate: "does the image follow the prompt" (the
prompted background, position, style, ... are there) and "is it the concept" (shape, pattern and colours
match the concept's look). It is trained on the "oracle" split (`data.py`): every look the renderer can
draw, including the reserved patterns and colour pairs of the novel concepts.

Weights ship as fp16 safetensors with a JSON config next to them (`oracle.safetensors`, `oracle.json`);
`load_oracle` reads only those (no pickle).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..io import atomic_write, read_json, write_json
from .attributes import ATTRIBUTES

NONE = "none"  # colour2 of a solid object
# Output classes per head: attribute values, plus "none" for colour2 (solid objects).
HEADS: dict[str, tuple[str, ...]] = {k: (v + (NONE,) if k == "colour2" else v) for k, v in ATTRIBUTES.items()}
DEFAULT_CHANNELS = (32, 64, 128)
DEFAULT_REDUCE = 32
DEFAULT_HIDDEN = 256


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class OracleNet(nn.Module):
    """CNN: conv (full resolution) -> stride-2 conv -> conv + max-pool -> conv at 1/4 resolution, read out two
    ways: global max- and mean-pooling (what is there, wherever it is: colours, tint, style) and a 1x1 conv to
    `reduce` channels, flattened (where things are: position, and which colour is at the object's centre,
    i.e. the primary colour of a striped or checked object) -> hidden layer -> one linear head per attribute
    (`HEADS`).

    Input: uint8 images (N, H, W, 3) or (N, 3, H, W), or float (N, 3, H, W) in [-1, 1]; other sizes than
    `size` are resized. Output: {attribute: logits (N, n_classes)}.
    """

    def __init__(self, size: int = 32, channels: tuple[int, ...] = DEFAULT_CHANNELS, hidden: int = DEFAULT_HIDDEN,
                 reduce: int = DEFAULT_REDUCE):
        super().__init__()
        if size % 4 or size < 16:
            raise ValueError(f"oracle size must be a multiple of 4, >= 16 (got {size})")
        c0, c1, c2 = (int(c) for c in channels)
        self.config = {"size": int(size), "channels": [c0, c1, c2], "hidden": int(hidden), "reduce": int(reduce)}
        self.features = nn.Sequential(*_conv(3, c0), *_conv(c0, c1, stride=2), *_conv(c1, c1), nn.MaxPool2d(2),
                                      *_conv(c1, c2))
        self.reduce = nn.Conv2d(c2, reduce, 1)
        res = size // 4
        self.trunk = nn.Sequential(nn.Linear(2 * c2 + reduce * res * res, hidden), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, len(v)) for k, v in HEADS.items()})

    @staticmethod
    def prepare(images) -> torch.Tensor:
        """Any accepted image batch -> float (N, 3, H, W) in [-1, 1]."""
        x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if x.ndim != 4:
            raise DataError(f"oracle input must be a batch of images (N, H, W, 3) or (N, 3, H, W); "
                            f"got shape {tuple(x.shape)}")
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        if x.dtype == torch.uint8:
            return x.float().div(127.5).sub(1.0)
        return x.float()

    def forward(self, images) -> dict[str, torch.Tensor]:
        x = self.prepare(images).to(next(self.parameters()).device)
        size = self.config["size"]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        f = self.features(x)
        h = self.trunk(torch.cat([f.amax((2, 3)), f.mean((2, 3)), self.reduce(f).flatten(1)], 1))
        return {k: head(h) for k, head in self.heads.items()}


def head_targets(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scene labels (colour2 = -1 for solid) -> class indices of the heads (colour2 "none" is the last class)."""
    out = {k: labels[k].long() for k in HEADS}
    c2 = out["colour2"]
    out["colour2"] = torch.where(c2 < 0, torch.full_like(c2, len(HEADS["colour2"]) - 1), c2)
    return out


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * t))


class OracleModule(L.LightningModule):
    """Trains `OracleNet`: cross-entropy summed over the heads, AdamW, warm-up + cosine LR."""

    def __init__(self, steps: int, lr: float = 3e-3, weight_decay: float = 1e-4, warmup: int = 50, size: int = 32,
                 channels: tuple[int, ...] = DEFAULT_CHANNELS, hidden: int = DEFAULT_HIDDEN,
                 reduce: int = DEFAULT_REDUCE, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = OracleNet(size, tuple(channels), hidden, reduce)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        logits = self.net(batch["pixels"])
        targets = head_targets(batch["labels"])
        losses = {k: F.cross_entropy(v, targets[k]) for k, v in logits.items()}
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["pixels"]))
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for n, p in self.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.named_parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr)
        steps, warmup = int(hp.steps), int(min(hp.warmup, max(1, hp.steps // 10)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---- saving / loading ---------------------------------------------------------------------------------------

def config_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(model: nn.Module, path: str | os.PathLike, config: dict, half: bool = True) -> Path:
    """`model.state_dict()` as safetensors (fp16 floats when `half`) + `config` as JSON next to it."""
    from safetensors.torch import save_file

    sd = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous().cpu()
          for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    write_json(config_path(path), config)
    return Path(path)


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors state dict with floats upcast to fp32."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise DataError(f"{path}: world model weights must be a .safetensors file")
    if not path.is_file():
        raise DataError(f"{path}: weights file not found (train them with `python -m dbdpo.world pretrain`)")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}


def load_oracle(path: str | os.PathLike, device: str | torch.device = "cpu") -> OracleNet:
    """The oracle saved by `train_oracle` (safetensors + JSON config), in eval mode, fp32."""
    cfgp = config_path(path)
    if not cfgp.is_file():
        raise DataError(f"{cfgp}: oracle config not found next to the weights {path}")
    cfg = read_json(cfgp)
    net = OracleNet(cfg["size"], tuple(cfg["channels"]), cfg["hidden"], cfg["reduce"])
    net.load_state_dict(load_state(path))
    return net.to(device).eval().requires_grad_(False)


@torch.no_grad()
def predict_indices(oracle: OracleNet, images, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Predicted class index per head (colour2: len(COLOURS) = "none")."""
    was = oracle.training
    oracle.eval()
    out: dict[str, list[np.ndarray]] = {k: [] for k in HEADS}
    try:
        for i in range(0, len(images), batch_size):
            logits = oracle(images[i:i + batch_size])
            for k, v in logits.items():
                out[k].append(v.argmax(1).cpu().numpy())
    finally:
        oracle.train(was)
    return {k: (np.concatenate(v) if v else np.zeros(0, np.int64)) for k, v in out.items()}


def predict(oracle: OracleNet, images, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Predicted attribute names per image: {attribute: str array (N,)} (colour2 is "none" for solid objects).

    `images`: uint8 (N, H, W, 3) as from `render`, uint8 / [-1, 1]-float torch batches (N, 3, H, W).
    """
    idx = predict_indices(oracle, images, batch_size)
    return {k: np.asarray(HEADS[k], dtype=object)[v].astype(str) for k, v in idx.items()}


def accuracy(oracle: OracleNet, data: dict) -> dict[str, float]:
    """Per-attribute accuracy on a `fixed_eval_set`-style dict."""
    idx = predict_indices(oracle, data["pixels"])
    targets = head_targets(data["labels"])
    return {k: float((idx[k] == targets[k].numpy()).mean()) for k in HEADS}


# ---- training ---------------------------------------------------------------------------------------------

def _trainer(steps: int, ckpt_dir: Path, every: int, trainer_kwargs: dict | None) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    kw: dict[str, Any] = dict(max_steps=steps, max_epochs=-1, logger=False, enable_model_summary=False,
                              enable_progress_bar=False, num_sanity_val_steps=0, accelerator="cpu",
                              deterministic=False)
    kw.update(trainer_kwargs or {})
    ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0, every_n_train_steps=every)
    kw["callbacks"] = list(kw.get("callbacks") or []) + [ckpt]
    return L.Trainer(**kw)


def fit_resumable(module: L.LightningModule, data: L.LightningDataModule, steps: int, ckpt_dir: str | os.PathLike,
                  every: int, trainer_kwargs: dict | None) -> L.Trainer:
    """`trainer.fit`, resuming from `ckpt_dir/last.ckpt` when it exists (weights-only unpickling)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = ckpt_dir / "last.ckpt"
    trainer = _trainer(steps, ckpt_dir, max(1, every), trainer_kwargs)
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None, weights_only=True)
    if trainer.global_step >= steps:  # a final checkpoint, so a rerun with the same steps is a no-op
        trainer.save_checkpoint(str(last), weights_only=False)
    return trainer


def train_oracle(steps: int = 3000, batch_size: int = 128, lr: float = 3e-3, seed: int = 0, size: int = 32,
                 ckpt_dir: str | os.PathLike = "logs/world_pretrain/oracle",
                 out_path: str | os.PathLike = "dbdpo/assets/world/oracle.safetensors",
                 trainer_kwargs: dict | None = None, eval_n: int = 2000, checkpoint_every: int = 200,
                 half: bool = True, workers: int = 0) -> dict[str, float]:
    """Train the oracle on fresh renders of the "oracle" split (batch k = f(seed, k)), resuming from
    `ckpt_dir/last.ckpt`; save fp16 safetensors + JSON config at `out_path`; return per-attribute accuracy
    of the saved weights on `eval_n` fresh renders of split "all" (plus "min" and the reserved-look split
    "oracle" as `oracle_split/<attr>`)."""
    from .data import WorldData, fixed_eval_set

    module = OracleModule(steps=steps, lr=lr, size=size, seed=seed)
    data = WorldData(batch_size, seed, "oracle", size, steps, with_captions=False, workers=workers)
    fit_resumable(module, data, steps, ckpt_dir, checkpoint_every, trainer_kwargs)
    net = module.net.cpu().eval()
    cfg = dict(net.config, heads={k: list(v) for k, v in HEADS.items()}, steps=steps, batch_size=batch_size,
               lr=lr, seed=seed, params=sum(p.numel() for p in net.parameters()))
    save_weights(net, out_path, cfg, half=half)
    loaded = load_oracle(out_path)
    acc = accuracy(loaded, fixed_eval_set(eval_n, seed + 1000, "all", size, with_captions=False))
    acc["min"] = min(acc.values())
    novel = accuracy(loaded, fixed_eval_set(eval_n // 2, seed + 2000, "oracle", size, with_captions=False))
    acc.update({f"oracle_split/{k}": v for k, v in novel.items()})
    return acc
