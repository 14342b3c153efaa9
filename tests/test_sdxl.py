"""SDXL is generation-only for now: a tiny SDXL pipeline saved with `save_pretrained` loads through
`backbone=sdxl`'s code path and generates through the same sharded, per-sample-seeded generation code."""

from __future__ import annotations

import pytest
import torch

from dbdpo.backbones import build_backbone, clip_tokenizer
from dbdpo.errors import ConfigError
from dbdpo.generate import generate


def tiny_sdxl(path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=16,
    )
    vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=16, sample_size=32)
    cfg = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
                         intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                         projection_dim=32)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(cfg), text_encoder_2=CLIPTextModelWithProjection(cfg),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"),
    )
    pipe.save_pretrained(str(path), safe_serialization=True)


def test_sdxl_loads_and_generates(tmp_path):
    tiny_sdxl(tmp_path / "sdxl")
    bb = build_backbone({"name": "sdxl", "kind": "sdxl", "pretrained": str(tmp_path / "sdxl"), "resolution": 32,
                         "sampler": "EulerDiscreteScheduler", "num_inference_steps": 3, "guidance_scale": 5.0})
    assert type(bb.pipe).__name__ == "StableDiffusionXLPipeline"
    prompts = ["a [V*] in the snow", "a red [V*]"]
    a = generate(bb, prompts, "sks dog", tmp_path / "a", images_per_prompt=2, seed=3, batch_size=4, progress=False)
    b = generate(bb, prompts, "sks dog", tmp_path / "b", images_per_prompt=2, seed=3, batch_size=1, progress=False)
    assert a.latents.shape == (4, 4, 16, 16)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=1e-4)
    assert a.load_images([0])[0].size == (32, 32)
    with pytest.raises(ConfigError, match="not supported yet"):
        bb.encode_prompts(["a photo of sks dog"])
