"""The world's text-to-image model: a tiny latent diffusion model as a real diffusers `StableDiffusionPipeline`.

VAE: x (3×32×32) → z (4×16×16) by default, trained with ‖D(E(x)) − x‖² + w_KL·KL(q(z|x) ‖ N(0, I)); the pipeline's
`scaling_factor` is 1/std(z) measured after training.
UNet + CLIP text encoder (real CLIP BPE tokenizer), trained jointly on rendered (image, caption) pairs with
v-prediction ‖v_θ(z_t, c, t) − (√ᾱ_t ε − √(1−ᾱ_t) z)‖², 10 % empty captions for classifier-free guidance,
EMA weights and a cosine learning-rate schedule. Saved with `save_pretrained`, it loads through exactly the
code path `backbone=sd2` uses.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ..backbones import clip_tokenizer, encode_text, token_ids
from ..personalize import diffusion_target, step_generator


def build_world_vae(seed: int = 0, size: int = 32, channels: tuple[int, ...] = (32, 64),
                    latent_channels: int = 4):
    """AutoencoderKL that downsamples by 2^(levels−1): the default (32, 64) maps 3×32×32 to 4×16×16."""
    from diffusers import AutoencoderKL

    channels = tuple(int(c) for c in channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=size,
            down_block_types=("DownEncoderBlock2D",) * len(channels),
            up_block_types=("UpDecoderBlock2D",) * len(channels),
            block_out_channels=channels, layers_per_block=1, norm_num_groups=min(16, min(channels)),
        )


def latent_size(vae, size: int) -> int:
    return size // 2 ** (len(vae.config.block_out_channels) - 1)


def build_world_text_encoder(seed: int = 0, width: int = 64, layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return CLIPTextModel(CLIPTextConfig(
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408,
            hidden_size=width, intermediate_size=width * 2, num_attention_heads=4, num_hidden_layers=layers,
            max_position_embeddings=77,
        ))


def build_world_text_clip(seed: int = 0, width: int = 64, layers: int = 2, size: int = 32):
    """A tiny transformers `CLIPModel` (ViT 4×4 patches) whose text tower becomes the world pipeline's frozen
    text encoder, as Stable Diffusion conditions on a frozen, contrastively trained CLIP text encoder."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408, hidden_size=width,
                intermediate_size=width * 2, num_attention_heads=4, num_hidden_layers=layers,
                max_position_embeddings=77)
    vision = dict(image_size=size, patch_size=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_hidden_layers=2, num_channels=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


class TextCLIPModule(L.LightningModule):
    """L = symmetric InfoNCE over (render, caption) pairs + w_attr · mean_{a, e} CE(h_a(e), m_a).

    m_a is what the caption says about attribute a (its value, or "not mentioned"), h_a a linear head and e the
    text tower's EOS state or the mean state of the padding after it: with causal attention, the only tokens
    that have read the whole caption (and most of the 77 tokens the UNet cross-attends to). The
    contrastive term alone leaves position and pattern words barely visible in the token states (measured: a
    top/bottom swap moved the frozen tower's states by 1/6 of a colour swap) and the UNet conditioned on it
    ignored them; the heads make every mentioned attribute linearly readable, for cross-attention to use.
    The heads are not part of the shipped text encoder.
    """

    def __init__(self, clip, lr: float = 2e-3, steps: int = 1000, attribute_weight: float = 1.0):
        super().__init__()
        from .attributes import ATTRIBUTES

        self.save_hyperparameters(ignore=["clip"])
        self.clip = clip
        self.tokenizer = clip_tokenizer()
        width = clip.config.text_config.hidden_size
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(width, len(v) + 1) for k, v in ATTRIBUTES.items()})

    def ids(self, captions: list[str]) -> torch.Tensor:
        return token_ids(self.tokenizer, captions).to(self.device)

    def attribute_logits(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: h(state) for k, h in self.heads.items()}

    def summary_states(self, ids: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(EOS state, mean state of the padding after it) of the text tower's last hidden states: the tokens
        that have read the whole caption (the padding token is EOS, so it is the first EOS that ends it)."""
        eos = (ids == self.tokenizer.eos_token_id).int().argmax(-1)
        after = torch.arange(ids.shape[1], device=ids.device)[None] >= eos[:, None]
        pad_mean = (hidden * after[..., None]).sum(1) / after.sum(1, keepdim=True)
        return hidden[torch.arange(len(ids), device=ids.device), eos], pad_mean

    def training_step(self, batch, batch_idx):
        ids = self.ids(list(batch["captions"]))
        out = self.clip(input_ids=ids, pixel_values=batch["pixels"], return_loss=True)
        loss, logs = out.loss, {"world/text/contrastive": out.loss}
        if self.hparams.attribute_weight > 0:  # (`text_model_output.pooler_output` is projected in transformers 5)
            targets = {k: v.to(self.device) for k, v in batch["mentions"].items()}
            attr = torch.stack([F.cross_entropy(lg, targets[k])
                                for state in self.summary_states(ids, out.text_model_output.last_hidden_state)
                                for k, lg in self.attribute_logits(state).items()]).mean()
            loss = loss + self.hparams.attribute_weight * attr
            logs["world/text/attributes"] = attr
        logs["world/text/loss"] = loss
        self.log_dict(logs, prog_bar=True, batch_size=len(batch["pixels"]))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine(opt, self.hparams.steps), "interval": "step"}}


def _features(out) -> torch.Tensor:  # transformers 5 returns the projected features as `pooler_output`
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def text_clip_retrieval(module: TextCLIPModule, n: int = 1000, seed: int = 13, size: int = 32,
                        data: dict | None = None) -> float:
    """Top-1 caption retrieval among 100 on fresh held-out renders (how well the text tower separates scenes)."""
    from .clips import retrieval_top1
    from .data import fixed_eval_set

    data = data if data is not None else fixed_eval_set(n, seed, "heldout", size)
    n = len(data["captions"])
    module.eval()
    img = torch.cat([_features(module.clip.get_image_features(pixel_values=x.to(module.device)))
                     for x in data["pixels"].split(256)])
    txt = torch.cat([_features(module.clip.get_text_features(input_ids=module.ids(data["captions"][i:i + 256])))
                     for i in range(0, n, 256)])
    return float(retrieval_top1(F.normalize(img, dim=-1).cpu(), F.normalize(txt, dim=-1).cpu()))


@torch.no_grad()
def text_attribute_accuracy(module: TextCLIPModule, n: int = 1000, seed: int = 13, size: int = 32,
                            data: dict | None = None) -> dict:
    """Per attribute, how often the heads read a mentioned value back from held-out captions' EOS states."""
    from .data import fixed_eval_set

    data = data if data is not None else fixed_eval_set(n, seed, "heldout", size)
    n = len(data["captions"])
    module.eval()
    states = []
    for i in range(0, n, 256):
        ids = module.ids(data["captions"][i:i + 256])
        states.append(module.summary_states(ids, module.clip.text_model(input_ids=ids).last_hidden_state)[0])
    logits = module.attribute_logits(torch.cat(states))
    acc = {}
    for k, target in data["mentions"].items():
        said = target < logits[k].shape[1] - 1
        if said.any():
            acc[k] = float((logits[k].argmax(1).cpu()[said] == target[said]).float().mean())
    return acc


def build_world_unet(seed: int = 0, sample_size: int = 16, channels: tuple[int, ...] = (32, 64, 128),
                     attention: tuple[bool, ...] = (False, True, True), cross_attention_dim: int = 64,
                     layers_per_block: int = 1, latent_channels: int = 4, text_time: bool = False):
    """Latent UNet; by default convolution only at 16×16 and (cross-)attention at 8×8 and 4×4 (1.0 s per
    training step on 2 CPU cores at batch 64, ~3× faster than attention at every level for the same width).

    `text_time`: diffusers' `addition_embed_type="text"`: an attention-pooled summary of the prompt's token
    states is added to the timestep embedding, so every ResNet block — the 16×16 ones that draw fine patterns
    included — sees the prompt, not only the attention levels. Its output norm starts at zero, so the UNet
    computes the same function as without it until it trains."""
    from diffusers import UNet2DConditionModel

    if len(attention) != len(channels):
        raise ValueError("attention needs one flag per UNet level (channels)")
    extra = dict(addition_embed_type="text", addition_embed_type_num_heads=4) if text_time else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=tuple(channels), layers_per_block=layers_per_block,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16, **extra,
        )
    if text_time:
        torch.nn.init.zeros_(unet.add_embedding.norm2.weight)
        torch.nn.init.zeros_(unet.add_embedding.norm2.bias)
    return unet


def world_noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=False)


def assemble_pipeline(vae, text_encoder, unet):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sampler = DDIMScheduler.from_config(world_noise_scheduler().config, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=sampler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# ---- VAE --------------------------------------------------------------------------------------------------

class VAEModule(L.LightningModule):
    """L = Σ w ⊙ (D(z) − x)² / Σ w + w_KL · KL(q(z|x) ‖ N(0, I)),  z ~ q(z|x),  w = 1 + w_obj · `object_mask`(x).

    The object covers a fifth to a third of the scene but carries pattern and colours; with plain MSE the VAE
    spent its capacity on background texture (measured: the oracle read colour2 in 72 % of reconstructions)."""

    def __init__(self, vae, lr: float = 1e-3, kl_weight: float = 1e-4, steps: int = 1000, seed: int = 0,
                 object_weight: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["vae"])
        self.vae = vae

    def pixel_weights(self, x: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return 1.0 + self.hparams.object_weight * object_mask(x, labels)

    def training_step(self, batch, batch_idx):
        x = batch["pixels"]
        g = step_generator(self.hparams.seed, self.global_step)
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(x)
        rec = self.vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        if self.hparams.object_weight > 0:
            w = self.pixel_weights(x, batch["labels"])
            rec_loss = ((rec - x) ** 2 * w).sum() / (w.sum() * x.shape[1])
        else:
            rec_loss = mse
        kl = post.kl().mean() / post.mean[0].numel()
        loss = rec_loss + self.hparams.kl_weight * kl
        self.log_dict({"world/vae/mse": mse, "world/vae/kl": kl}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.vae.parameters(), lr=self.hparams.lr, weight_decay=0.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine(opt, self.hparams.steps), "interval": "step"}}


def object_mask(x: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, 1, H, W) 1.0 where the render `x` differs from its background as drawn in its style with no object
    (`render.bare_scenes`: the object, its accessory and overlay), else 0.0."""
    from .attributes import STYLES
    from .data import to_pixels
    from .render import bare_scenes

    bare = to_pixels(bare_scenes(x.shape[-1]).reshape(-1, *x.shape[-2:], 3)).to(x.device)
    ref = bare[(labels["background"] * len(STYLES) + labels["style"]).to(x.device)]
    return ((x - ref).abs().amax(1, keepdim=True) > 0.15).to(x.dtype)


def object_weighted_mean(err: torch.Tensor, mask: torch.Tensor, object_weight: float) -> torch.Tensor:
    """mean_n Σ_{c,p} w_np e_ncp / (C Σ_p w_np) with w = 1 + object_weight · mask: per image, an error on the
    object counts (1 + object_weight)× one on the background, and every image weighs the same."""
    w = 1.0 + object_weight * mask.to(err.dtype)
    return ((err * w).sum((1, 2, 3)) / (w.sum((1, 2, 3)) * err.shape[1])).mean()


def cosine(opt, steps: int, warmup: int = 100):
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup)))) * 0.95 + 0.05

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


@torch.no_grad()
def latent_scale(vae, batches) -> float:
    """1/std of VAE latents over some batches: the pipeline's `scaling_factor`."""
    zs = [vae.encode(b["pixels"]).latent_dist.mean for b in batches]
    return float(1.0 / torch.cat(zs).std())


# ---- UNet + text encoder ----------------------------------------------------------------------------------

class T2IModule(L.LightningModule):
    """Latent v-prediction diffusion with CFG caption dropout and EMA (text encoder frozen or trained jointly):

    L = E_n [ Σ_p w_np ‖v_θ(z_t, c, t) − v‖²_p / (C Σ_p w_np) ],  w_np = 1 + w_obj · [latent pixel p of image n
    covers the object],

    the object mask (`object_mask`) max-pooled to the latent grid. Normalised per image, so images with large and
    small objects weigh the same. With w_obj = 0 this is the plain MSE, in which a wrong hue or pattern on the
    object (a fifth to a third of the scene) costs little beside the background's texture; measured by
    continuation from the shipped weights, w_obj = 9 lifted the oracle's pattern accuracy ~.10 over w_obj = 0."""

    def __init__(self, vae, text_encoder, unet, lr: float = 5e-4, steps: int = 1000, cfg_dropout: float = 0.1,
                 ema_decay: float = 0.999, seed: int = 0, train_text_encoder: bool = True,
                 object_weight: float = 0.0):
        super().__init__()
        from diffusers.training_utils import EMAModel

        self.save_hyperparameters(ignore=["vae", "text_encoder", "unet"])
        self.vae = vae.requires_grad_(False).eval()
        self.text_encoder = text_encoder if train_text_encoder else text_encoder.requires_grad_(False).eval()
        self.unet = unet
        self.tokenizer = clip_tokenizer()
        self.noise_scheduler = world_noise_scheduler()
        self.scale = float(vae.config.scaling_factor)
        self.trainable = torch.nn.ModuleList([self.unet, self.text_encoder] if train_text_encoder else [self.unet])
        self.ema = EMAModel(list(self.trainable.parameters()), decay=ema_decay)

    def training_step(self, batch, batch_idx):
        g = step_generator(self.hparams.seed, self.global_step)
        x = batch["pixels"]
        with torch.no_grad():
            post = self.vae.encode(x).latent_dist
            z = (post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(x)) * self.scale
        captions = list(batch["captions"])
        drop = torch.rand(len(captions), generator=g) < self.hparams.cfg_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.set_grad_enabled(self.hparams.train_text_encoder):
            cond = encode_text(self.tokenizer, self.text_encoder, captions)
        noise = torch.randn(z.shape, generator=g).to(z)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (z.shape[0],), generator=g).to(z.device)
        noisy = self.noise_scheduler.add_noise(z, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
        err = (pred.float() - diffusion_target(self.noise_scheduler, z, noise, t).float()) ** 2
        if self.hparams.object_weight > 0:
            mask = F.adaptive_max_pool2d(object_mask(x, batch["labels"]), z.shape[-2:])
            loss = object_weighted_mean(err, mask, self.hparams.object_weight)
            self.log("world/t2i/mse", err.mean())
        else:
            loss = err.mean()
        self.log("world/t2i/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema.shadow_params[0].device != self.device:  # EMAModel is not a Module: move it with ours
            self.ema.to(self.device)
        self.ema.step(list(self.trainable.parameters()))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.trainable.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine(opt, self.hparams.steps), "interval": "step"}}

    def ema_weights(self) -> None:
        """Copy the EMA weights into the UNet and text encoder (for saving and sampling)."""
        self.ema.copy_to(list(self.trainable.parameters()))


class QualityCurve(L.Callback):
    """Every `every` steps, the oracle's accuracy per prompted attribute on samples of the EMA weights for
    held-out combinations (`measure_quality`), appended as one JSON line to `path` with the training minutes
    so far (evaluation time excluded): the accuracy-vs-minutes curve. Steps already in `path` are skipped."""

    def __init__(self, every: int, oracle_path: str | os.PathLike, path: str | os.PathLike, n: int = 200,
                 size: int = 32, num_inference_steps: int = 25, guidance_scale: float = 3.0, seed: int = 7):
        self.every, self.oracle_path, self.path = int(every), Path(oracle_path), Path(path)
        self.kw = dict(n=n, seed=seed, size=size, steps=num_inference_steps, guidance=guidance_scale)
        self._t0 = 0.0
        self._eval_s = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        import time

        self._t0, self._eval_s = time.time(), 0.0

    def _done(self) -> set[int]:
        import json

        if not self.path.exists():
            return set()
        return {json.loads(line)["step"] for line in self.path.read_text().splitlines() if line.strip()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import json
        import time

        from .oracle import load_oracle

        step = trainer.global_step
        if self.every <= 0 or step % self.every or step in self._done() or not self.oracle_path.exists():
            return
        t = time.time()
        params = list(pl_module.trainable.parameters())
        pl_module.ema.store(params)
        pl_module.ema.copy_to(params)
        pl_module.eval()
        try:
            pipe = assemble_pipeline(pl_module.vae, pl_module.text_encoder, pl_module.unet)
            pipe.set_progress_bar_config(disable=True)
            acc = measure_quality(pipe, load_oracle(self.oracle_path, pl_module.device), **self.kw)
        finally:
            pl_module.train()
            pl_module.vae.eval()
            if not pl_module.hparams.train_text_encoder:
                pl_module.text_encoder.eval()
            pl_module.ema.restore(params)
        minutes = (t - self._t0 - self._eval_s) / 60
        self._eval_s += time.time() - t
        row = {"step": step, "train_minutes": round(minutes, 2), "mean": float(sum(acc.values()) / len(acc)),
               "min": min(acc.values()), "accuracy": acc}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


@torch.no_grad()
def measure_quality(pipe, oracle, n: int, seed: int, size: int, steps: int, guidance: float,
                    batch_size: int = 64) -> dict:
    """Oracle accuracy, per prompted attribute, on samples for held-out attribute combinations."""
    import numpy as np

    from .attributes import sample_scenes
    from .captions import caption_with_mentions
    from .oracle import predict

    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng, split="heldout")
    rows = [scenes[i] for i in range(n)]
    caps = [caption_with_mentions(r, rng) for r in rows]
    hits: dict[str, list[bool]] = {}
    for b in range(0, n, batch_size):
        chunk = caps[b : b + batch_size]
        gens = [torch.Generator().manual_seed(seed * 100_003 + b + i) for i in range(len(chunk))]
        out = pipe(prompt=[c for c, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, height=size, width=size, output_type="np")
        images = (out.images * 255).round().astype(np.uint8)
        pred = predict(oracle, images)
        for i, (_, mentions) in enumerate(chunk):
            for attr, value in mentions.items():
                if attr in pred:
                    hits.setdefault(attr, []).append(pred[attr][i] == value)
    return {a: float(np.mean(v)) for a, v in sorted(hits.items())}


@torch.no_grad()
def reconstruction_accuracy(vae, oracle, n: int = 1000, seed: int = 11, size: int = 32) -> dict[str, float]:
    """The oracle's per-attribute accuracy on VAE reconstructions D(E(x)) of fresh renders: what the latent
    space can carry at best."""
    from .data import fixed_eval_set
    from .oracle import accuracy

    data = fixed_eval_set(n, seed, "all", size, with_captions=False)
    dev = next(vae.parameters()).device
    rec = [vae.decode(vae.encode(x.to(dev)).latent_dist.mean).sample.clamp(-1, 1).cpu()
           for x in data["pixels"].split(256)]
    return accuracy(oracle, {"pixels": torch.cat(rec), "labels": data["labels"]})


def train_vae(steps: int, batch_size: int, lr: float, kl_weight: float, seed: int, size: int, ckpt_dir: Path,
              channels: tuple[int, ...] = (32, 64), latent_channels: int = 4, progress: bool = True,
              every: int = 250, workers: int = 0, object_weight: float = 0.0, **trainer_kw: Any):
    from .data import RenderedBatches, WorldData
    from .oracle import fit_resumable

    vae = build_world_vae(seed, size, tuple(channels), latent_channels)
    module = VAEModule(vae, lr=lr, kl_weight=kl_weight, steps=steps, seed=seed, object_weight=object_weight)
    data = WorldData(batch_size, seed=seed + 100, split="pretrain", size=size, steps=steps, with_captions=False,
                     workers=workers)
    fit_resumable(module, data, steps, ckpt_dir, every, {"enable_progress_bar": progress, **trainer_kw})
    vae = module.vae.cpu().eval()
    probe = RenderedBatches(256, seed=seed + 999, split="pretrain", size=size, with_captions=False, steps=4)
    vae.register_to_config(scaling_factor=latent_scale(vae, probe))
    return vae


def train_text_clip(steps: int, batch_size: int, lr: float, seed: int, size: int, ckpt_dir: Path,
                    width: int = 64, layers: int = 2, progress: bool = True, every: int = 250, workers: int = 0,
                    attribute_weight: float = 1.0, **trainer_kw: Any):
    """Pretraining of the text encoder (`TextCLIPModule`); returns (its `CLIPTextModel`, {"retrieval": top-1
    among 100, "attributes": per-attribute accuracy of the heads})."""
    from transformers import CLIPTextModel

    from .data import WorldData, fixed_eval_set
    from .oracle import fit_resumable

    module = TextCLIPModule(build_world_text_clip(seed, width, layers, size), lr=lr, steps=steps,
                            attribute_weight=attribute_weight)
    data = WorldData(batch_size, seed=seed + 300, split="pretrain", size=size, steps=steps, with_captions=True,
                     workers=workers)
    fit_resumable(module, data, steps, ckpt_dir, every, {"enable_progress_bar": progress, **trainer_kw})
    held_out = fixed_eval_set(1000, 13, "heldout", size)  # one render for both figures
    figures = {"retrieval": text_clip_retrieval(module, data=held_out),
               "attributes": text_attribute_accuracy(module, data=held_out)}
    text_encoder = CLIPTextModel(module.clip.config.text_config)
    text_encoder.load_state_dict(module.clip.text_model.state_dict())  # same keys as CLIPModel.text_model
    return text_encoder.cpu().eval(), figures


def train_t2i(vae, steps: int, batch_size: int, lr: float, seed: int, size: int, ckpt_dir: Path,
              cfg_dropout: float = 0.1, ema_decay: float = 0.999, channels: tuple[int, ...] = (32, 64, 128),
              attention: tuple[bool, ...] = (False, True, True), text_width: int = 64, text_layers: int = 2,
              layers_per_block: int = 1, progress: bool = True, every: int = 250, workers: int = 0,
              curve: QualityCurve | None = None, text_encoder=None, init_unet: str | os.PathLike | None = None,
              object_weight: float = 0.0, text_time: bool = False, **trainer_kw: Any):
    """UNet (and, without a pretrained `text_encoder`, a text encoder from scratch trained jointly with it);
    `init_unet`: a saved UNet folder to start from instead of random weights (same architecture; a UNet
    without the `text_time` embedding may start one with it, which then starts at zero)."""
    from .data import WorldData
    from .oracle import fit_resumable

    joint = text_encoder is None
    if joint:
        text_encoder = build_world_text_encoder(seed, text_width, text_layers)
    unet = build_world_unet(seed, latent_size(vae, size), tuple(channels), tuple(bool(a) for a in attention),
                            cross_attention_dim=text_width, layers_per_block=layers_per_block,
                            latent_channels=int(vae.config.latent_channels), text_time=text_time)
    if init_unet is not None:
        from diffusers import UNet2DConditionModel

        from ..errors import ConfigError

        start = UNet2DConditionModel.from_pretrained(str(init_unet), torch_dtype=torch.float32)
        try:
            missing, unexpected = unet.load_state_dict(start.state_dict(), strict=False)
        except RuntimeError as e:
            missing, unexpected = [e.args[0].splitlines()[0]], []
        missing = [k for k in missing if not k.startswith("add_embedding.")]  # a new text_time embedding
        if missing or unexpected:
            raise ConfigError(f"t2i.init_from: the UNet in {init_unet} does not match t2i.channels / attention / "
                              f"layers_per_block / text_time; set them as in its config.json "
                              f"({(missing + unexpected)[0]})")
    module = T2IModule(vae, text_encoder, unet, lr=lr, steps=steps, cfg_dropout=cfg_dropout,
                       ema_decay=ema_decay, seed=seed, train_text_encoder=joint, object_weight=object_weight)
    data = WorldData(batch_size, seed=seed + 200, split="pretrain", size=size, steps=steps, with_captions=True,
                     workers=workers)
    kw = {"enable_progress_bar": progress, **trainer_kw}
    if curve is not None:
        kw["callbacks"] = list(kw.get("callbacks") or []) + [curve]
    fit_resumable(module, data, steps, ckpt_dir, every, kw)
    module.ema_weights()
    return assemble_pipeline(vae, module.text_encoder.cpu().eval(), module.unet.cpu().eval())


def save_pipeline(pipe, path: str | os.PathLike, half: bool = True) -> Path:
    """Save as safetensors (fp16 to keep the shipped weights small; loading upcasts to the requested dtype)."""
    import copy
    import shutil

    path = Path(path)
    tmp = path.with_name(f".tmp_{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    out = copy.deepcopy(pipe)
    if half:
        out.to(torch.float16)
    out.save_pretrained(str(tmp), safe_serialization=True)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
