"""Backbones: a diffusers text-to-image pipeline plus the pieces training needs.

`tiny` is built in code (random init, diffusers-test sized) with the real CLIP BPE tokenizer built offline
from open_clip's shipped vocabulary; `sd2`, `sdxl` and any saved pipeline load with diffusers'
`from_pretrained` from a hub id or a local folder (`backbone.pretrained=...`).
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import ConfigError, DbdpoError

KINDS = ("sd", "sdxl")
SAMPLERS = ("PNDMScheduler", "EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
            "EulerAncestralDiscreteScheduler", "DDPMScheduler", "UniPCMultistepScheduler")


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49,408-token BPE vocabulary and merges, exactly as open_clip's SimpleTokenizer builds them."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def clip_tokenizer(model_max_length: int = 77):
    """A transformers `CLIPTokenizer` identical to OpenAI CLIP's, built with no download."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def build_tiny_pipeline(resolution: int = 32, seed: int = 0, cross_attention_dim: int = 32):
    """A diffusers `StableDiffusionPipeline` with tiny random components (diffusers' test sizes).

    VAE: 2 levels (2× down-sampling, 4 latent channels); UNet: channels (32, 64), cross-attention on the
    low-resolution level; text encoder: a 2-layer CLIP text transformer over the full CLIP vocabulary.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=16,
        )
        vae = AutoencoderKL(
            block_out_channels=(16, 32),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=16,
            sample_size=resolution,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
                hidden_size=cross_attention_dim,
                intermediate_size=64,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=49408,
                max_position_embeddings=77,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _looks_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").split("/", 1)[-1] or Path(ref).exists()


def load_pipeline(kind: str, pretrained: str, torch_dtype: torch.dtype = torch.float32,
                  local_files_only: bool = False, vae: str | None = None):
    """Load a saved pipeline with diffusers; any failure becomes one `DbdpoError` naming `backbone.pretrained`."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    path = Path(os.path.expanduser(pretrained))
    if _looks_local(pretrained) and not path.exists():
        raise DbdpoError(
            f"backbone weights not found: '{pretrained}' does not exist. Set backbone.pretrained to a folder "
            "written by `save_pretrained` (or a diffusers hub id available in the local cache)."
        )
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": local_files_only}
    if kind == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        if vae:
            kwargs["vae"] = AutoencoderKL.from_pretrained(vae, dtype=torch_dtype, local_files_only=local_files_only)
        pipe = cls.from_pretrained(str(path) if path.exists() else pretrained, **kwargs)
    except Exception as e:  # hub client / filesystem / config errors: all mean "weights not usable here"
        cause = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        if path.exists():
            hint = (f"'{pretrained}' is not a complete diffusers pipeline folder (written by `save_pretrained`, "
                    "with model_index.json and one subfolder per component); fix it or point backbone.pretrained "
                    "at another copy.")
        else:
            hint = ("No model can be downloaded here: download it where there is network "
                    f"(e.g. `hf download {pretrained} --local-dir /data/models/x`) and pass "
                    "backbone.pretrained=/data/models/x.")
        raise DbdpoError(f"could not load backbone weights from '{pretrained}' ({cause}). {hint}") from e
    return pipe


def token_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(N, context) token ids padded to the tokenizer's full context, as the pipelines tokenize prompts.

    Prompts longer than the context are truncated (one warning per call)."""
    max_len = tokenizer.model_max_length
    ids = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
    long = [p for p in prompts if len(tokenizer(p).input_ids) > max_len]
    if long:
        warnings.warn(f"{len(long)} prompt(s) longer than the text encoder's {max_len} tokens were truncated, "
                      f"e.g. {long[0][:60]!r}...", stacklevel=3)
    return ids


def encode_text(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Last hidden state of the text encoder, as `StableDiffusionPipeline.encode_prompt` computes it."""
    device = next(text_encoder.parameters()).device
    return text_encoder(token_ids(tokenizer, prompts).to(device))[0]


@dataclass
class Backbone:
    """A loaded text-to-image pipeline and its sampler defaults."""

    name: str
    kind: str
    pipe: Any
    resolution: int
    num_inference_steps: int
    guidance_scale: float

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def scaling_factor(self) -> float:
        return float(self.pipe.vae.config.scaling_factor)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        return (self.pipe.unet.config.in_channels, self.resolution // f, self.resolution // f)

    def noise_scheduler(self):
        """The training (DDPM) noise scheduler matching the pipeline's sampler configuration."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        if self.kind != "sd":
            raise ConfigError(f"training on backbone '{self.name}' ({self.kind}) is not supported yet; "
                              "use backbone=sd2 or backbone=tiny for DreamBooth/DPO training.")
        return encode_text(self.tokenizer, self.text_encoder, prompts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list:
        """Diffusion-space latents → PIL images (the pipeline's own post-processing)."""
        vae = self.pipe.vae
        images = vae.decode(latents.to(vae.device, vae.dtype) / self.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images.float(), output_type="pil")

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [−1, 1] (B,3,H,W) → diffusion-space latents (sampled from the VAE posterior, scaled)."""
        vae = self.pipe.vae
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return dist.sample(generator=generator) * self.scaling_factor

    def save(self, path: str | os.PathLike) -> Path:
        self.pipe.save_pretrained(str(path), safe_serialization=True)
        return Path(path)

    def to(self, device) -> "Backbone":
        self.pipe.to(device)
        return self


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_backbone(cfg: Mapping[str, Any]) -> Backbone:
    """Build or load the backbone described by a `backbone` config (see conf/backbone/*.yaml)."""
    import diffusers

    name = cfg.get("name", "?")
    kind = cfg.get("kind", "sd")
    if kind not in KINDS:
        raise ConfigError(f"unknown backbone.kind '{kind}' for backbone '{name}'; expected one of {KINDS}.")
    dtype = cfg.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown backbone.dtype '{dtype}'; expected one of {list(_DTYPES)}.")
    pretrained = cfg.get("pretrained")
    if pretrained:
        pipe = load_pipeline(kind, str(pretrained), _DTYPES[dtype], bool(cfg.get("local_files_only", False)),
                             cfg.get("vae"))
    elif name == "tiny" or cfg.get("build") == "tiny":
        pipe = build_tiny_pipeline(resolution=int(cfg.get("resolution", 32)), seed=int(cfg.get("seed", 0)))
    else:
        raise ConfigError(f"backbone '{name}' needs backbone.pretrained (a hub id or a local folder).")
    sampler = cfg.get("sampler")
    if sampler:
        if sampler not in SAMPLERS or not hasattr(diffusers, sampler):
            raise ConfigError(f"unknown backbone.sampler '{sampler}'; expected one of {SAMPLERS}.")
        pipe.scheduler = getattr(diffusers, sampler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return Backbone(
        name=name, kind=kind, pipe=pipe, resolution=int(cfg.get("resolution", 512)),
        num_inference_steps=int(cfg.get("num_inference_steps", 50)),
        guidance_scale=float(cfg.get("guidance_scale", 7.5)),
    )
