"""Backbones (dbdpo/backbones.py): the offline CLIP tokenizer, save/load, load errors, full-size architectures."""

from __future__ import annotations

import pytest
import torch

from dbdpo.backbones import build_backbone, clip_tokenizer, encode_text
from dbdpo.errors import ConfigError, DbdpoError
from dbdpo.generate import generate

PROMPTS = [
    "a photo of sks dog",
    "sks",
    "A Photo of SKS Backpack, on the beach!",
    "the dog's 1024px   photo in anime-style",
    "an über café — naïve",
    "a sks dog" + " in the jungle" * 40,  # longer than the 77-token context
]


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone()


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_matches_open_clip_vit_b32(backbone):
    import open_clip

    ref = open_clip.get_tokenizer("ViT-B-32")
    for tok in (clip_tokenizer(), backbone.tokenizer):
        for p in PROMPTS:
            want = ref([p])[0].tolist()  # (77,) padded with 0 after <|endoftext|>
            n = want.index(49407) + 1 if 49407 in want else 77
            got = tok(p, truncation=True, max_length=77).input_ids
            assert got == want[:n], p
    ids = clip_tokenizer()("sks").input_ids
    assert ids == [49406, 48136, 49407]  # "sks" is one rare token, as DreamBooth relies on
    assert len(clip_tokenizer()) == 49408


def test_long_prompt_is_truncated_with_a_warning(backbone):
    with pytest.warns(UserWarning, match="truncated"):
        emb = encode_text(backbone.tokenizer, backbone.text_encoder, [PROMPTS[-1], "a photo of sks dog"])
    assert emb.shape == (2, 77, 32)
    assert torch.isfinite(emb).all()


# ------------------------------------------------------------------ save / load


def test_save_load_round_trip(backbone, tiny_backbone, tmp_path):
    saved = backbone.save(tmp_path / "pipe")
    assert (saved / "model_index.json").exists()
    weights = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*")
                     if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"})
    assert weights == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]

    loaded = tiny_backbone(pretrained=str(saved))
    assert loaded.unet is not backbone.unet
    assert type(loaded.pipe.scheduler).__name__ == "DDIMScheduler"
    assert loaded.tokenizer("a photo of sks dog").input_ids == backbone.tokenizer("a photo of sks dog").input_ids
    for a, b in zip(backbone.unet.state_dict().values(), loaded.unet.state_dict().values()):
        assert torch.equal(a, b)

    prompts = ["a photo of [V*]", "a [V*] in the snow"]
    kw = dict(images_per_prompt=2, seed=3, batch_size=4, progress=False)
    a = generate(backbone, prompts, "sks dog", tmp_path / "a", **kw)
    b = generate(loaded, prompts, "sks dog", tmp_path / "b", **kw)
    assert a.seeds == b.seeds
    assert torch.allclose(a.latents, b.latents, atol=1e-6)
    # ... and a differently initialised tiny model does not (the comparison can fail)
    other = generate(tiny_backbone(seed=1), prompts, "sks dog", tmp_path / "c", **kw)
    assert not torch.allclose(a.latents, other.latents, atol=1e-3)


def test_missing_weights_folder_raises_clean_error():
    with pytest.raises(DbdpoError, match=r"backbone\.pretrained") as e:
        build_backbone({"name": "sd2", "kind": "sd", "pretrained": "/nonexistent/sd2"})
    assert "/nonexistent/sd2" in str(e.value)
    assert e.value.__cause__ is None and e.value.__context__ is None  # no chained hub traceback


def test_empty_weights_folder_raises(tmp_path):
    garbage = tmp_path / "sd2"
    garbage.mkdir()
    with pytest.raises(DbdpoError, match=r"backbone\.pretrained"):
        build_backbone({"name": "sd2", "kind": "sd", "pretrained": str(garbage)})
    (garbage / "model_index.json").write_text("{not json")
    with pytest.raises(DbdpoError, match=r"backbone\.pretrained"):
        build_backbone({"name": "sd2", "kind": "sd", "pretrained": str(garbage)})


def test_uncached_hub_id_raises_offline():
    with pytest.raises(DbdpoError, match=r"backbone\.pretrained"):
        build_backbone({"name": "sd2", "kind": "sd", "pretrained": "dbdpo-tests/no-such-model",
                        "local_files_only": True})


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize("key, value", [("sampler", "FancyScheduler"), ("dtype", "float8"), ("kind", "sd3")])
def test_unknown_values_raise_config_error_naming_key(key, value):
    cfg = {"name": "tiny", "resolution": 32, key: value}
    with pytest.raises(ConfigError, match=rf"backbone\.{key}") as e:
        build_backbone(cfg)
    assert value in str(e.value)


def test_named_backbone_without_weights_raises():
    with pytest.raises(ConfigError, match=r"backbone\.pretrained"):
        build_backbone({"name": "sd2", "kind": "sd"})


def test_sampler_and_defaults_applied(tiny_backbone):
    b = tiny_backbone(sampler="EulerDiscreteScheduler", num_inference_steps=5, guidance_scale=2.0)
    assert type(b.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert (b.num_inference_steps, b.guidance_scale, b.resolution) == (5, 2.0, 32)
    assert b.latent_shape == (4, 16, 16)
    assert type(b.noise_scheduler()).__name__ == "DDPMScheduler"
    assert b.noise_scheduler().config.num_train_timesteps == 1000


# ------------------------------------------------------------------ full-size architectures


def meta_unet(**config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    assert all(p.device.type == "meta" for p in unet.parameters())  # no memory was allocated
    return unet, sum(p.numel() for p in unet.parameters())


def test_sd2_base_unet_parameter_count():
    unet, n = meta_unet(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    assert n == pytest.approx(865.9e6, rel=0.01)  # 865,910,724 with diffusers 0.42
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.in_features == 1024


def test_sdxl_unet_parameter_count():
    unet, n = meta_unet(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )
    assert n == pytest.approx(2567.5e6, rel=0.01)  # 2,567,463,684 with diffusers 0.42
    assert len(unet.down_blocks[2].attentions[0].transformer_blocks) == 10
