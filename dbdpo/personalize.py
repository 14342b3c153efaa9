"""Personalize: DreamBooth on the concept photos — a full fine-tune of the UNet, or of an adapter in it
(SVDiff spectral shifts, LoRA; see `adapters.py`).

L(θ) = E_{x0, ε, t} ‖ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, c, t) − target‖²  with c = "a photo of sks <class>" and
target = ε (epsilon prediction) or v = √ᾱ_t ε − √(1−ᾱ_t) x0 (v-prediction), as the backbone's scheduler says.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from .adapters import Adapter
from .backbones import Conditioning
from .distributed import rank_rows, world_size
from .errors import DbdpoError


def diffusion_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, t)
    raise DbdpoError(f"prediction_type '{kind}' of the backbone's scheduler is not supported (epsilon, v_prediction).")


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from (seed, keys…): training noise depends on the step, not on history."""
    s = seed
    for k in keys:
        s = (s * 1_000_003 + int(k) + 1) % (1 << 62)
    return torch.Generator().manual_seed(s)


def check_finite(loss: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise DbdpoError(f"{what} loss became {loss.item()} at step {step}; lower the learning rate "
                         f"({'dpo.lr' if what == 'DPO' else 'method.lr'}) or use backbone.dtype=float32.")


OPTIMIZERS = ("adamw", "adamw8bit")


def make_optimizer(groups: list[dict], lr: float, weight_decay: float, kind: str = "adamw"):
    """AdamW over `groups`; `adamw8bit`: bitsandbytes' 8-bit AdamW (CUDA only), optimizer state in 8 bits."""
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


class PromptEmbeddings:
    """Frozen text-encoder outputs (`backbone.encode_prompts`), computed once per distinct prompt and kept on the
    CPU; the backbone adds its size conditions per call."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.cache: dict[str, Conditioning] = {}

    def __call__(self, prompts: list[str], device: torch.device, sizes: torch.Tensor | None = None) -> Conditioning:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            with torch.no_grad():
                for p, row in zip(missing, self.backbone.encode_prompts(missing).rows()):
                    self.cache[p] = row.to("cpu")
        cond = Conditioning.stack([self.cache[p] for p in prompts]).to(device)
        return self.backbone.with_sizes(cond, sizes)


class UNetTraining(L.LightningModule):
    """What personalization and DPO share around the UNet they train (`self.unet`, `self.adapter`): the adapter's
    per-step hooks (SVDiff builds W(δ) once per optimizer step) and gradient checkpointing switched off after the
    fit."""

    strict_loading = False  # mid-stage checkpoints hold only what trains (`checkpointing.trainable_state`)

    def trained_modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet,)

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        from diffusers.training_utils import cast_training_params

        self._groups = self.param_groups()  # marks what trains (requires_grad)
        # trainable parameters in fp32 beside half-precision frozen parts, before a mid-stage checkpoint loads
        for module in self.trained_modules():
            cast_training_params(module, dtype=torch.float32)

    def trained_groups(self) -> list[dict]:
        if not hasattr(self, "_groups"):  # used outside a Trainer
            self.setup("fit")
        return self._groups

    def unet_call(self, unet: torch.nn.Module):
        """How training runs `unet`: as is, or with `backbone.compile_training` through `torch.compile(unet)` (the
        backbone's mode and backend), built once per module and sharing its weights; with `backbone.sdpa_backend`,
        inside its attention context. The wrapper is kept out of the module tree, so state dicts, checkpoints and
        the reference copy are the eager UNet's."""
        call = self._unet_module(unet)
        if not self.backbone.sdpa_backend:
            return call

        def in_attention(*args, **kwargs):
            with self.backbone.attention():
                return call(*args, **kwargs)
        return in_attention

    def backward(self, loss, *args, **kwargs) -> None:
        # gradient checkpointing recomputes the UNet's forward here: with the kernels the forward ran
        with self.backbone.attention():  # a no-op without backbone.sdpa_backend
            super().backward(loss, *args, **kwargs)

    def _unet_module(self, unet: torch.nn.Module) -> torch.nn.Module:
        if not getattr(self.backbone, "compile_training", False):
            return unet
        calls = self.__dict__.setdefault("_unet_calls", {})
        if id(unet) not in calls:  # the wrapper holds `unet`, so its id stays its own
            compiled = self.backbone.compile_module(unet, "backbone.compile_training", "training with the eager UNet",
                                                    eager_rounding=True)
            if compiled is None:  # warned once; later modules and stages train eagerly without another warning
                self.backbone.compile_training = False
                return unet
            calls[id(unet)] = compiled
        self.adapter.before_forward(unet)
        return calls[id(unet)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from .checkpointing import trainable_state

        checkpoint["state_dict"] = trainable_state(self, checkpoint["state_dict"])

    def on_train_start(self) -> None:
        # SVDiff's per-step weight building hands δ its gradient outside autograd, where DDP cannot see it: with
        # several processes W(δ) is rebuilt per forward instead
        self.adapter.amortize(self.unet, world_size() == 1)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        from .distributed import sharded_root

        root = sharded_root(self.trainer)
        if root is None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_val:  # ‖g‖ over every process's shard (torch.nn.utils' would see one shard)
            root.clip_grad_norm_(gradient_clip_val)

    def on_after_backward(self) -> None:
        self.adapter.after_backward(self.unet)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.adapter.before_optimizer_step(self.unet)

    def on_train_end(self) -> None:
        self.adapter.amortize(self.unet, False)
        if self.hparams.gradient_checkpointing:
            self.unet.disable_gradient_checkpointing()


class DreamBoothModule(UNetTraining):
    """DreamBooth fine-tune of the UNet (or of the adapter attached to it); the VAE stays frozen, the text
    encoder(s) train with the UNet when `train_text_encoder` (diffusers' `--train_text_encoder`).

    With prior preservation each instance batch is joined by as many class samples (stored latents of the base
    model's "a photo of <class>" images, generated once):  L = L_instance + prior_loss_weight · L_class."""

    def __init__(self, backbone, lr: float = 2e-6, weight_decay: float = 0.0, seed: int = 0, adapter=None,
                 optimizer: str = "adamw", gradient_checkpointing: bool = False, train_text_encoder: bool = False,
                 prior_loss_weight: float = 1.0):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "adapter"])
        self.backbone = backbone
        self.unet = backbone.unet
        if gradient_checkpointing:  # activations recomputed in the backward pass: memory for compute
            self.unet.enable_gradient_checkpointing()
        self.vae = backbone.vae.requires_grad_(False)
        self.text_encoders = torch.nn.ModuleList(backbone.text_encoders)
        for te in self.text_encoders:
            te.requires_grad_(train_text_encoder)
        if adapter is None:  # a full fine-tune; an adapter passed in is already attached
            adapter = Adapter()
            adapter.attach(self.unet)
        self.adapter = adapter
        self.noise_scheduler = backbone.noise_scheduler()
        self.embed = PromptEmbeddings(backbone)

    def condition(self, prompts: list[str], sizes) -> Conditioning:
        if self.hparams.train_text_encoder:  # the encoders change every step: no cache, gradients flow
            return self.backbone.with_sizes(self.backbone.encode_prompts(prompts), sizes)
        return self.embed(prompts, self.device, sizes)

    def training_step(self, batch, batch_idx):
        g = step_generator(self.hparams.seed, self.global_step, batch_idx)
        world = world_size()
        bsz = batch["pixels"].shape[0]
        # With W processes each trains on its slice of the 1-process batch (B = W·bsz images): every random draw is
        # made for the whole batch and this process keeps its rows, so W processes train like one.
        n_global = bsz * world
        with torch.no_grad():
            latents = self.backbone.encode_images(batch["pixels"], generator=g,
                                                  noise_rows=rank_rows(bsz, n_global) if world > 1 else None,
                                                  noise_total=n_global).to(self.device, torch.float32)
        prompts, sizes = list(batch["prompt"]), batch.get("size")
        groups = 1
        if "class_latents" in batch:  # prior preservation: the class samples join the batch
            latents = torch.cat([latents, batch["class_latents"].to(latents)])
            prompts += list(batch["class_prompt"])
            r = self.backbone.resolution
            sizes = torch.cat([sizes, torch.tensor([[r, r, 0, 0]] * bsz)]) if sizes is not None else None
            groups = 2
        if world > 1:
            rows = rank_rows(bsz, n_global, groups)
            noise = torch.randn((n_global * groups, *latents.shape[1:]), generator=g)[rows].to(latents)
            t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n_global * groups,),
                              generator=g)[rows].to(self.device)
        else:
            noise = torch.randn(latents.shape, generator=g).to(latents)
            t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=g).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        cond = self.condition(prompts, sizes).to(dtype=latents.dtype)
        pred = self.unet_call(self.unet)(noisy, t, **cond.unet_kwargs(), return_dict=False)[0]
        target = diffusion_target(self.noise_scheduler, latents, noise, t)
        loss = F.mse_loss(pred[:bsz].float(), target[:bsz].float())
        if "class_latents" in batch:
            prior = F.mse_loss(pred[bsz:].float(), target[bsz:].float())
            self.log("personalize/prior_loss", prior, on_step=True, batch_size=bsz)
            loss = loss + self.hparams.prior_loss_weight * prior
        check_finite(loss, "DreamBooth", self.global_step)
        self.log("personalize/loss", loss, prog_bar=True, on_step=True, batch_size=bsz)
        return loss

    def on_train_epoch_start(self) -> None:
        self.unet.train()
        for te in self.text_encoders:
            te.train(self.hparams.train_text_encoder)

    def trained_modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet, *self.text_encoders)

    def param_groups(self) -> list[dict]:
        groups = self.adapter.param_groups(self.unet, self.hparams.lr, personalize=True)
        if self.hparams.train_text_encoder:
            groups.append({"params": [p for te in self.text_encoders for p in te.parameters()],
                           "lr": self.hparams.lr})
        return groups

    def configure_optimizers(self):
        return make_optimizer(self.trained_groups(), self.hparams.lr, self.hparams.weight_decay, self.hparams.optimizer)

    def on_train_end(self) -> None:
        super().on_train_end()
        for te in self.text_encoders:
            te.requires_grad_(False).eval()


def n_steps(n_items: int, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(n_items * epochs / batch_size))
