"""Full-size architectures from their published component configs, with random weights (no download).

`dbdpo/full_size/<model>/` holds the published JSON configs of SD2-base and SDXL-base (UNet, VAE, text encoders,
scheduler, tokenizer settings; no weights, no vocabulary). `build_pipeline(model, out)` instantiates every
component with random weights, adds CLIP's BPE tokenizers (built offline) and `save_pretrained`s a pipeline
folder, so `backbone=sd2|sdxl backbone.pretrained=<out>` loads through exactly the user's path:

    python -m dbdpo.full_size sd2-base /tmp/sd2-random
    python train.py backbone=sd2 backbone.pretrained=/tmp/sd2-random backbone.resolution=128 ...
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
MODELS = ("sd2-base", "sdxl-base")
# Published parameter counts (the tests check the configs reproduce them).
PUBLISHED = {"sd2-base": {"unet": 865_910_724, "vae": 83_653_863},
             "sdxl-base": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                           "text_encoder_2": 694_659_840}}


def config(model: str, component: str) -> dict:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((ROOT / model / component / name).read_text())


def components(model: str) -> list[str]:
    index = json.loads((ROOT / model / "model_index.json").read_text())
    return [k for k, v in index.items() if isinstance(v, list) and v[0] in ("diffusers", "transformers")
            and (ROOT / model / k).is_dir()]


def build_component(model: str, component: str, device: str | torch.device = "cpu"):
    """One model component with random weights (`device="meta"`: shapes only, no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = config(model, component)
    with torch.device(device):
        if component == "unet":
            return UNet2DConditionModel.from_config(cfg)
        if component == "vae":
            return AutoencoderKL.from_config(cfg)
        cls = CLIPTextModelWithProjection if "WithProjection" in cfg["architectures"][0] else CLIPTextModel
        return cls(CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")}))


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tokenizer(model: str, name: str):
    from ..backbones import clip_tokenizer

    tok = clip_tokenizer(int(json.loads((ROOT / model / name / "tokenizer_config.json").read_text())
                             .get("model_max_length", 77)))
    pad = json.loads((ROOT / model / name / "special_tokens_map.json").read_text()).get("pad_token")
    pad = pad["content"] if isinstance(pad, dict) else pad
    if pad:
        tok.pad_token = pad
    return tok


def make_pipeline(model: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu"):
    """A full-size diffusers pipeline with random weights, built on `device` (speed does not depend on weight
    values: what `dbdpo.bench_gpu` measures)."""
    from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    parts = {c: build_component(model, c, device=device).to(dtype) for c in components(model)
             if c not in ("tokenizer", "tokenizer_2", "scheduler")}
    sched_cls = EulerDiscreteScheduler if model == "sdxl-base" else PNDMScheduler
    parts["scheduler"] = sched_cls.from_config(config(model, "scheduler"))
    parts["tokenizer"] = _tokenizer(model, "tokenizer")
    if model == "sdxl-base":
        parts["tokenizer_2"] = _tokenizer(model, "tokenizer_2")
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    return pipe


def build_pipeline(model: str, out: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Save a full-size pipeline with random weights to `out` (diffusers `save_pretrained`, safetensors)."""
    make_pipeline(model, seed, dtype).save_pretrained(str(out), safe_serialization=True)
    return Path(out)
