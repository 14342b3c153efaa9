"""Diffusion-DPO on stored better/worse pairs.

For a pair (x_w, x_l) sharing prompt c, one timestep t and one noise ε:

    mse(θ, x)  = mean_{C,H,W} (ε_θ(x_t, c, t) − target)²
    model_diff = mse(θ, x_w) − mse(θ, x_l);   ref_diff = mse(ref, x_w) − mse(ref, x_l)
    loss       = −log σ(−(β/2)·(model_diff − ref_diff))          ("−β/2" convention, β = 5000)
    implicit_acc = mean[model_diff − ref_diff < 0]

At step 0 policy = reference and the loss is exactly ln 2. The reference is a frozen copy of the UNet
(θ_{s−1} with `reference: previous`, θ0 with `reference: initial`).
"""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .adapters import Adapter
from .backbones import Conditioning
from .checkpointing import ResumableLoader, shuffled_loader
from .distributed import rank, world_size
from .personalize import (PromptEmbeddings, UNetTraining, check_finite, diffusion_target, make_optimizer,
                          step_generator)


def dpo_loss(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float, half: bool = True) -> dict[str, torch.Tensor]:
    """Diffusion-DPO loss and its statistics from per-pair MSEs.

    `half=True` is the −β/2 convention of method.md; `half=False` is the "β without ½" form
    −log σ(−β·(model_diff − ref_diff)), which equals the first with β halved.
    """
    scale = beta / 2 if half else beta
    model_diff = model_w - model_l
    ref_diff = ref_w - ref_l
    inside = model_diff - ref_diff
    losses = -F.logsigmoid(-scale * inside)
    reward_w = -scale * (model_w - ref_w)
    reward_l = -scale * (model_l - ref_l)
    return {
        "loss": losses.mean(),
        "implicit_acc": (inside < 0).float().mean(),
        "rewards/chosen": reward_w.mean(),
        "rewards/rejected": reward_l.mean(),
        "rewards/margins": (reward_w - reward_l).mean(),
    }


class PairDataset(Dataset):
    """Better/worse pairs over stored latents: (x_w, x_l, prompt the model saw)."""

    def __init__(self, latents: torch.Tensor, texts: list[str], winner, loser):
        self.latents = latents
        self.texts = texts
        self.winner = [int(i) for i in winner]
        self.loser = [int(i) for i in loser]

    def __len__(self) -> int:
        return len(self.winner)

    def __getitem__(self, i: int) -> dict:
        pad = i < 0  # a padding item (`distributed.RankBatches`): pair −1 − i, ignored by the loss
        i = -1 - i if pad else i
        w, l = self.winner[i], self.loser[i]
        return {"latents_w": self.latents[w], "latents_l": self.latents[l], "prompt": self.texts[w], "pad": pad}


class PairDataModule(L.LightningDataModule):
    """Pairs of one outer step, read from the generation's stored latents (no VAE re-encode)."""

    def __init__(self, samples, pairs, micro_batch_size: int = 8, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.dataset = PairDataset(samples.latents, samples.texts, pairs.winner, pairs.loser)
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.num_workers = num_workers

    def train_dataloader(self) -> ResumableLoader:
        # with several processes process r trains the 1-process run's micro-batches r, r+W, …
        return shuffled_loader(self.dataset, self.micro_batch_size, self.seed, "round", self.num_workers)


class DiffusionDPOModule(UNetTraining):
    """Diffusion-DPO fine-tune of the UNet against a frozen reference UNet."""

    def __init__(self, backbone, ref_unet: torch.nn.Module | None = None, beta: float = 5000.0,
                 lr: float = 2.5e-6, weight_decay: float = 0.0, warmup_steps: int = 0, seed: int = 0,
                 outer_step: int = 1, adapter=None, optimizer: str = "adamw", gradient_checkpointing: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "ref_unet", "adapter"])
        self.backbone = backbone
        # With an adapter attached (SVDiff, LoRA) only it trains, and without `ref_unet` the reference is the same
        # network with the adapter disabled; otherwise the whole UNet trains against a frozen copy.
        if adapter is None:  # a full fine-tune; an adapter passed in is already attached
            adapter = Adapter()
            adapter.attach(backbone.unet)
        self.adapter = adapter
        self.unet = backbone.unet
        if ref_unet is None and adapter.kind == "full":
            ref_unet = copy.deepcopy(self.unet)
            ref_unet = ref_unet.to(backbone.frozen_dtype) if ref_unet.dtype != backbone.frozen_dtype else ref_unet
        if gradient_checkpointing:  # the policy only: the reference runs without gradients
            self.unet.enable_gradient_checkpointing()
        self.ref_unet = ref_unet.requires_grad_(False).eval() if ref_unet is not None else None
        for te in backbone.text_encoders:  # DPO trains the UNet (or its adapter) only
            te.requires_grad_(False)
        self.noise_scheduler = backbone.noise_scheduler()
        self.embed = PromptEmbeddings(backbone)

    def mse_pairs(self, unet, noisy, t, cond, target) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.unet_call(unet)(noisy, t, **cond.unet_kwargs(), return_dict=False)[0]
        mse = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))
        return mse.chunk(2)

    def training_step(self, batch, batch_idx):
        lw, ll = batch["latents_w"], batch["latents_l"]
        bsz = lw.shape[0]
        # with W processes this is the 1-process run's micro-batch batch_idx·W + r: its noise, its timesteps
        world = world_size()
        g = step_generator(self.hparams.seed, self.hparams.outer_step, self.global_step,
                           batch_idx * world + rank() if world > 1 else batch_idx)
        noise = torch.randn(lw.shape, generator=g).to(lw)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), generator=g).to(self.device)
        x0 = torch.cat([lw, ll])
        noise2, t2 = torch.cat([noise, noise]), torch.cat([t, t])
        noisy = self.noise_scheduler.add_noise(x0, noise2, t2)
        target = diffusion_target(self.noise_scheduler, x0, noise2, t2)
        cond = self.embed(list(batch["prompt"]), self.device).to(dtype=lw.dtype)  # generated at the training size
        cond = Conditioning.cat([cond, cond])
        model_w, model_l = self.mse_pairs(self.unet, noisy, t2, cond, target)
        with torch.no_grad():
            if self.ref_unet is not None:
                ref_w, ref_l = self.mse_pairs(self.ref_unet, noisy, t2, cond, target)
            else:
                with self.adapter.disabled(self.unet):
                    ref_w, ref_l = self.mse_pairs(self.unet, noisy, t2, cond, target)
        out = dpo_loss(model_w, model_l, ref_w, ref_l, self.hparams.beta)
        check_finite(out["loss"], "DPO", self.global_step)
        pad = batch.get("pad")
        if pad is not None and bool(torch.as_tensor(pad).all()):  # no micro-batch left for this process: zero gradient
            return out["loss"] * 0.0
        logs = {f"dpo/{k}": v for k, v in out.items()}
        logs.update({"dpo/mse/model_w": model_w.mean(), "dpo/mse/model_l": model_l.mean(),
                     "dpo/mse/ref_w": ref_w.mean(), "dpo/mse/ref_l": ref_l.mean()})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=bsz)
        self.log("dpo/outer_step", float(self.hparams.outer_step), on_step=True, batch_size=bsz)
        self.log("loss", out["loss"], prog_bar=True, logger=False, batch_size=bsz)
        return out["loss"]

    def on_train_epoch_start(self) -> None:
        self.unet.train()
        if self.ref_unet is not None:
            self.ref_unet.eval()

    def param_groups(self) -> list[dict]:
        return self.adapter.param_groups(self.unet, self.hparams.lr, personalize=False)

    def configure_optimizers(self):
        opt = make_optimizer(self.trained_groups(), self.hparams.lr, self.hparams.weight_decay, self.hparams.optimizer)
        warm = max(0, int(self.hparams.warmup_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
