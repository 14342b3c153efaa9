"""Backbones: a diffusers text-to-image pipeline plus the pieces training needs.

`tiny` is built in code (random init, diffusers-test sized) with the real CLIP BPE tokenizer built offline
from open_clip's shipped vocabulary; `sd2`, `sdxl` and any saved pipeline load with diffusers'
`from_pretrained` from a hub id or a local folder (`backbone.pretrained=...`).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import ConfigError, DbdpoError

log = logging.getLogger(__name__)
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


def build_tiny_sdxl_pipeline(resolution: int = 32, seed: int = 0):
    """A diffusers `StableDiffusionXLPipeline` with tiny random components shaped like SDXL's: two CLIP text
    encoders (the second with a projection, 32 + 32 = 64 cross-attention features), a UNet with
    `addition_embed_type="text_time"` (pooled embedding + 6 time ids), EulerDiscrete."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=resolution // 2, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=32 + 6 * 8, cross_attention_dim=64, norm_num_groups=16,
        )
        vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            norm_num_groups=16, sample_size=resolution, scaling_factor=0.13025)
        cfg = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
                   num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg, projection_dim=32))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
                                     scheduler=scheduler)


TINY_BUILDERS = {"sd": build_tiny_pipeline, "sdxl": build_tiny_sdxl_pipeline}


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
class Conditioning:
    """What the UNet takes besides the noisy latents and t: the text encoders' hidden states and, for SDXL, the
    added conditions (`text_embeds`: the second encoder's pooled embedding; `time_ids`: micro-conditioning).

    `unet(x, t, **cond.unet_kwargs())` is the one call every training module makes."""

    hidden: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def unet_kwargs(self) -> dict[str, Any]:
        return {"encoder_hidden_states": self.hidden, **({"added_cond_kwargs": self.added} if self.added else {})}

    def to(self, device=None, dtype=None) -> "Conditioning":
        return Conditioning(self.hidden.to(device=device, dtype=dtype),
                            {k: v.to(device=device, dtype=dtype) for k, v in self.added.items()})

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def rows(self) -> list["Conditioning"]:
        return [Conditioning(self.hidden[i], {k: v[i] for k, v in self.added.items()}) for i in range(len(self))]

    @staticmethod
    def stack(rows: list["Conditioning"]) -> "Conditioning":
        """Rows (from `rows()`) back into a batch."""
        return Conditioning(torch.stack([r.hidden for r in rows]),
                            {k: torch.stack([r.added[k] for r in rows]) for k in rows[0].added})

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        return Conditioning(torch.cat([c.hidden for c in parts]),
                            {k: torch.cat([c.added[k] for c in parts]) for k in parts[0].added})


@dataclass
class Backbone:
    """A loaded text-to-image pipeline and its sampler defaults."""

    name: str
    kind: str
    pipe: Any
    resolution: int
    num_inference_steps: int
    guidance_scale: float
    compile: bool = False  # sample through torch.compile(unet), decode through torch.compile(vae.decoder)
    compile_training: bool = False  # train (personalization, DPO) through torch.compile of the UNets
    compile_mode: str | None = None  # torch.compile's mode (None: its default; "max-autotune", ...)
    compile_backend: Any = "inductor"  # a name, or a callable backend
    compile_options: dict | None = None  # inductor's options, on top of the mode's (`inductor_options`)
    sdpa_backend: str | None = None  # attention's kernel tried first (SDPA_BACKENDS); None: torch's own order
    _compiled: Any = field(default=None, repr=False, compare=False)
    _compiled_decoder: Any = field(default=None, repr=False, compare=False)
    _sdpa_checked: bool = field(default=False, repr=False, compare=False)

    @property
    def unet(self):
        return self.pipe.unet

    def compile_module(self, module: torch.nn.Module, setting: str, instead: str, eager_rounding: bool = False):
        """`torch.compile(module)` with this backbone's mode and backend: a wrapper sharing the module's weights (a
        weight update reaches it without a recompile; its state dict is the module's, prefixed). None where
        torch.compile cannot run here, after one warning that names `setting` and what runs `instead`.

        `eager_rounding`: inductor rounds to bf16/fp16 after every operator as eager does, instead of once per fused
        kernel (`emulate_precision_casts`). Diffusion-DPO needs it: its policy (a training graph) and reference (an
        inference graph) fuse differently, and at β = 5000 their different roundings moved the step-0 loss up to
        0.26 from ln 2 in bf16 (tiny UNet, CPU); with it they agree to the bit, as eager ones do."""
        import torch._inductor.config as inductor_config

        device = next(module.parameters()).device
        reason = compile_unavailable(device, self.compile_backend)
        if reason:
            warnings.warn(f"{setting}=true: torch.compile is unavailable here ({reason}); {instead} instead "
                          f"(set {setting}=false to silence this)", stacklevel=3)
            return None
        log.info("%s: %s compiles at its first call (backend %s; inductor takes minutes there)", setting,
                 type(module).__name__, self.compile_backend)
        # static shapes: a smaller last batch compiles its own graph rather than turning every later batch's into
        # a dynamic-shape one
        inductor = self.compile_backend == "inductor"
        extra = dict(self.compile_options or {})
        if eager_rounding and inductor and hasattr(inductor_config, "emulate_precision_casts"):
            extra["emulate_precision_casts"] = True
        if not extra:
            return torch.compile(module, mode=self.compile_mode, backend=self.compile_backend, dynamic=False)
        # torch.compile takes a mode or options, not both: the mode's options, then ours over them
        from torch._inductor import list_mode_options

        options = {**list_mode_options(self.compile_mode or "default"), **extra}
        return torch.compile(module, backend=self.compile_backend, options=options, dynamic=False)

    @contextlib.contextmanager
    def _compiled_in(self, owner, name: str, cache: str, instead: str):
        """With `compile`: `owner.<name>` replaced by its `torch.compile` wrapper (kept in `self.<cache>`, built once
        per module, sharing its weights) for the block, the eager module put back afterwards; where torch.compile
        cannot run, one warning naming what runs `instead`, and `compile` off."""
        module = getattr(owner, name)
        compiled = getattr(self, cache)
        if self.compile and (compiled is None or compiled._orig_mod is not module):
            compiled = self.compile_module(module, "backbone.compile", instead)
            setattr(self, cache, compiled)
            self.compile = compiled is not None
        if not self.compile:
            yield
            return
        setattr(owner, name, compiled)
        try:
            yield
        finally:
            setattr(owner, name, module)

    @contextlib.contextmanager
    def sampling(self):
        """The pipeline as sampling should run it: with `compile`, its UNet is `torch.compile(unet)` (built once,
        sharing the UNet's weights, so training in between needs no rebuild) and the eager UNet is put back
        afterwards, for training, checkpoints and copies; where torch.compile cannot run, one warning and the
        eager UNet."""
        with self._compiled_in(self.pipe, "unet", "_compiled", "sampling with the eager UNet"), self.attention():
            yield self.pipe

    def attention(self):
        """With `sdpa_backend`: `scaled_dot_product_attention` tries that kernel first and torch's others after it
        (for the shapes it cannot run), in sampling, decoding and training alike (under torch.compile the choice is
        made when the graph is traced, inside this context too); without it, torch's own order."""
        if not self.sdpa_backend:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if not self._sdpa_checked:  # once: a kernel this device cannot run is a warning, not a silent fallback
            self._sdpa_checked = True
            # attention computes in the frozen parts' dtype: the one all share, or autocast's half one
            why = sdpa_unavailable(self.sdpa_backend, self.device, self.frozen_dtype)
            if why:
                warnings.warn(f"backbone.sdpa_backend={self.sdpa_backend}: that attention kernel cannot run here "
                              f"({why}); torch's other kernels run instead (set backbone.sdpa_backend=null to "
                              "silence this)", stacklevel=3)
        order = [self.sdpa_backend, *(k for k in SDPA_BACKENDS if k != self.sdpa_backend)]
        return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[k]) for k in order], set_priority=True)

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    TEXT_ENCODERS = ("text_encoder",)

    @property
    def text_encoders(self) -> list:
        """Every text encoder of the pipeline (what `method.train_text_encoder` trains and checkpoints save)."""
        return [getattr(self.pipe, n) for n in self.TEXT_ENCODERS]

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

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Per prompt what the UNet is conditioned on, as the pipeline computes it (`encode_prompt`)."""
        return Conditioning(encode_text(self.tokenizer, self.text_encoder, prompts))

    def with_sizes(self, cond: Conditioning, sizes: torch.Tensor | None = None) -> Conditioning:
        """Add the image-size conditions (SD has none). `sizes`: (N, 4) rows (original height, original width,
        crop top, crop left) of each training image; None: images generated at the training resolution."""
        return cond

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The dtype the frozen parts (VAE, text encoders, a full fine-tune's DPO reference) are held in:
        `backbone.dtype`."""
        return self.pipe.vae.dtype

    def autocast(self):
        """Autocast to the frozen parts' half dtype when the pipeline mixes dtypes (an fp32-trained UNet beside a
        bf16 VAE and text encoders); a no-op when everything shares one dtype."""
        dtypes = {m.dtype for m in (self.pipe.unet, self.pipe.vae, *self.text_encoders)}
        if len(dtypes) == 1:
            return contextlib.nullcontext()
        half = torch.bfloat16 if torch.bfloat16 in dtypes else torch.float16
        return torch.autocast(self.device.type, dtype=half)

    @contextlib.contextmanager
    def decoding(self):
        """The VAE as decoding should run it: with `compile`, its decoder is `torch.compile(vae.decoder)` (built
        once, sharing the decoder's weights), put back afterwards; where torch.compile cannot run, one warning (as
        `sampling` gives) and the eager decoder."""
        vae = self.pipe.vae
        with self._compiled_in(vae, "decoder", "_compiled_decoder", "sampling and decoding eagerly"), \
                self.attention():
            yield vae

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list:
        """Diffusion-space latents → PIL images: the pipeline's own post-processing (denormalize, ×255, round to
        uint8), the rounding done where the images are, so a quarter of the bytes cross to the CPU (the same
        bytes: IEEE float32 products, ties to even, as numpy does)."""
        from PIL import Image

        with self.decoding() as vae, self.autocast():
            images = vae.decode(latents.to(vae.device, vae.dtype) / self.scaling_factor, return_dict=False)[0]
        images = self.pipe.image_processor.postprocess(images.float(), output_type="pt")  # in [0, 1]
        arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]  # 1 channel: mode "L"

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None,
                      noise_rows: torch.Tensor | None = None, noise_total: int | None = None) -> torch.Tensor:
        """Pixels in [−1, 1] (B,3,H,W) → diffusion-space latents (sampled from the VAE posterior, scaled).

        With `noise_rows`, the posterior's noise is drawn for a batch of `noise_total` images (as diffusers draws
        it) and these rows are kept: one process's slice of a batch split across processes."""
        vae = self.pipe.vae
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        if noise_rows is None:
            return dist.sample(generator=generator) * self.scaling_factor
        eps = torch.randn((noise_total, *dist.mean.shape[1:]), generator=generator, dtype=dist.parameters.dtype)
        return (dist.mean + dist.std * eps[noise_rows].to(dist.mean.device)) * self.scaling_factor

    def save(self, path: str | os.PathLike) -> Path:
        self.pipe.save_pretrained(str(path), safe_serialization=True)
        return Path(path)

    def to(self, device) -> "Backbone":
        self.pipe.to(device)
        return self


class SDXLBackbone(Backbone):
    """Stable Diffusion XL: two text encoders (penultimate hidden states concatenated, the second's pooled
    embedding) and micro-conditioning time ids (original size, crop top-left, target size)."""

    TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        for tok in (self.pipe.tokenizer, self.pipe.tokenizer_2):
            token_ids(tok, prompts)  # warns once about prompts the encoders truncate
        hidden, _, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), device=self.device,
                                                       num_images_per_prompt=1, do_classifier_free_guidance=False)
        return Conditioning(hidden, {"text_embeds": pooled})

    def with_sizes(self, cond: Conditioning, sizes: torch.Tensor | None = None) -> Conditioning:
        """time_ids = (original h, w, crop top, left, target h, w), target = the training resolution
        (`sizes` None: generated samples, original = target and crop (0, 0), as the pipeline generates them)."""
        n, r = len(cond), self.resolution
        if sizes is None:
            sizes = torch.tensor([[r, r, 0, 0]] * n)
        sizes = torch.as_tensor(sizes).reshape(n, 4)
        ids = torch.cat([sizes, torch.tensor([[r, r]] * n)], dim=1)
        return Conditioning(cond.hidden, {**cond.added, "time_ids": ids.to(cond.hidden.device, cond.hidden.dtype)})


BACKBONES = {"sd": Backbone, "sdxl": SDXLBackbone}


def inductor_options(options) -> str | None:
    """Why `options` are not inductor options torch.compile would accept (names and value types of
    `torch._inductor.config`, as `torch.compile(options=...)` checks them at the first call), or None."""
    import typing

    import torch._inductor.config as inductor_config

    known = inductor_config.get_config_copy()
    for key, value in dict(options).items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = [k for k in known if name in k or k in name][:5]
            return f"inductor options (torch._inductor.config); '{key}' is not one" + (
                f" (close: {', '.join(close)})" if close else "")
        tp = inductor_config.get_type(name)
        if typing.get_origin(tp) is None and isinstance(tp, type) and not isinstance(value, tp):
            return f"inductor options; {key} takes a {type(known[name]).__name__}, not {value!r}"
    return None


def compile_unavailable(device: torch.device, backend: Any = "inductor") -> str | None:
    """Why torch.compile with `backend` cannot run on `device` here, or None."""
    import shutil

    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    import torch._dynamo as dynamo

    if not dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python"
    if callable(backend):
        return None
    if backend != "inductor":
        return None if backend in dynamo.list_backends(exclude_tags=()) else f"no backend '{backend}'"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton, inductor's GPU code generator, is not installed"
    if device.type == "cpu":
        compilers = (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")
        return None if any(shutil.which(c) for c in compilers) else "no C++ compiler on PATH for inductor's CPU code"
    return None


# backbone.sdpa_backend: scaled_dot_product_attention's kernels by name (torch.nn.attention.SDPBackend), in torch's
# own order of priority
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH",
                 "cudnn": "CUDNN_ATTENTION"}


def sdpa_unavailable(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why scaled_dot_product_attention's `backend` (a name of SDPA_BACKENDS) cannot run a small self-attention
    of `dtype` on `device` here (torch's own reasons where it gives them), or None."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 1, 128, 64, device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as said, torch.no_grad():
        warnings.simplefilter("always")
        try:
            with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend])):
                F.scaled_dot_product_attention(q, q, q)
            return None
        except RuntimeError as e:
            reasons = [" ".join(str(w.message).split()) for w in said if "not used because" in str(w.message)]
            return (reasons[0] if reasons else f"torch has no such kernel for {dtype} on {device.type}: "
                    + " ".join(str(e).split())[:120])[:300]


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
        pipe = TINY_BUILDERS[kind](resolution=int(cfg.get("resolution", 32)), seed=int(cfg.get("seed", 0)))
        if dtype != "float32":
            pipe.to(dtype=_DTYPES[dtype])
    else:
        raise ConfigError(f"backbone '{name}' needs backbone.pretrained (a hub id or a local folder).")
    sampler = cfg.get("sampler")
    if sampler:
        if sampler not in SAMPLERS or not hasattr(diffusers, sampler):
            raise ConfigError(f"unknown backbone.sampler '{sampler}'; expected one of {SAMPLERS}.")
        pipe.scheduler = getattr(diffusers, sampler).from_config(pipe.scheduler.config)
    if cfg.get("channels_last", False):  # NHWC convolutions: training, sampling, the reference copy inherit it
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return BACKBONES[kind](
        name=name, kind=kind, pipe=pipe, resolution=int(cfg.get("resolution", 512)),
        num_inference_steps=int(cfg.get("num_inference_steps", 50)),
        guidance_scale=float(cfg.get("guidance_scale", 7.5)), compile=bool(cfg.get("compile", False)),
        compile_training=bool(cfg.get("compile_training", False)),
        compile_mode=cfg.get("compile_mode"), compile_backend=str(cfg.get("compile_backend", "inductor")),
        compile_options=dict(cfg.get("compile_options") or {}) or None, sdpa_backend=cfg.get("sdpa_backend"),
    )
