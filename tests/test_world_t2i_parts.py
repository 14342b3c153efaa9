"""The world pipeline's training objectives: caption mentions in the data stream, the text encoder's attribute
heads, the VAE's object-weighted loss, and the shipped model's prompt following."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dbdpo.world.attributes import ATTRIBUTES
from dbdpo.world.captions import parse_prompt
from dbdpo.world.data import RenderedBatches, fixed_eval_set

SHIPPED = Path(__file__).resolve().parents[1] / "dbdpo" / "assets" / "world"


def test_mentions_are_what_the_caption_says():
    b = RenderedBatches(32, seed=5).batch(0)
    assert set(b["mentions"]) == set(ATTRIBUTES)
    for i, caption in enumerate(b["captions"]):
        said = {k: vals[int(b["mentions"][k][i])] for k, vals in ATTRIBUTES.items()
                if int(b["mentions"][k][i]) < len(vals)}
        assert said == parse_prompt(caption), caption
    # unmentioned is its own class, and some attributes go unmentioned in a batch of 32
    assert any(bool((b["mentions"][k] == len(v)).any()) for k, v in ATTRIBUTES.items())
    assert "mentions" not in RenderedBatches(4, seed=5, with_captions=False).batch(0)
    ev = fixed_eval_set(6, seed=1)
    assert all(v.shape == (6,) for v in ev["mentions"].values())


def _text_module(weight=1.0):
    from dbdpo.world.t2i import TextCLIPModule, build_world_text_clip

    torch.manual_seed(0)
    return TextCLIPModule(build_world_text_clip(seed=0, width=32, layers=1), lr=3e-3, steps=30,
                          attribute_weight=weight)


def test_summary_states_read_the_eos_and_the_padding_after_it():
    m = _text_module()
    eos = m.tokenizer.eos_token_id
    ids = torch.tensor([[49406, 320, 321, eos, eos, eos], [49406, 320, eos, eos, eos, eos]])
    hidden = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    first, pads = m.summary_states(ids, hidden)
    assert torch.equal(first, torch.stack([hidden[0, 3], hidden[1, 2]]))
    assert torch.allclose(pads, torch.stack([hidden[0, 3:].mean(0), hidden[1, 2:].mean(0)]))


def test_attribute_heads_learn_what_captions_mention():
    torch.set_num_threads(1)
    m = _text_module()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    batch = RenderedBatches(32, seed=2).batch(0)

    def attr_loss():
        ids = m.ids(batch["captions"])
        hidden = m.clip.text_model(input_ids=ids).last_hidden_state
        eos_state = m.summary_states(ids, hidden)[0]
        return float(np.mean([torch.nn.functional.cross_entropy(lg, batch["mentions"][k]).item()
                              for k, lg in m.attribute_logits(eos_state).items()]))

    before = attr_loss()
    heads0 = {k: v.detach().clone() for k, v in m.heads.state_dict().items()}
    for _ in range(60):
        opt.zero_grad()
        m.training_step(batch, 0).backward()
        opt.step()
    assert attr_loss() < 0.7 * before
    assert all(not torch.equal(v, m.heads.state_dict()[k]) for k, v in heads0.items())
    # the contrastive-only module has the heads but trains without them
    m0 = _text_module(weight=0.0)
    m0.training_step(batch, 0).backward()
    assert all(p.grad is None for p in m0.heads.parameters())


def test_vae_weights_object_pixels():
    from dbdpo.world.attributes import sample_scenes
    from dbdpo.world.data import make_batch
    from dbdpo.world.t2i import VAEModule, build_world_vae

    rng = np.random.default_rng(0)
    scenes = sample_scenes(64, rng)
    keep = np.flatnonzero(scenes.style == 0)  # flat style: everything off the object is the bare background
    b = make_batch(scenes[keep], rng)
    module = VAEModule(build_world_vae(channels=(8, 16)), object_weight=9.0)
    w = module.pixel_weights(b["pixels"], b["labels"])
    assert w.shape == (len(keep), 1, 32, 32) and set(torch.unique(w).tolist()) <= {1.0, 10.0}
    share = (w == 10.0).float().mean(dim=(1, 2, 3))
    assert bool((share > 0.01).all()) and bool((share < 0.7).all())  # every object found, never the whole frame
    loss = module.training_step(b, 0)
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_shipped_world_model_places_and_shapes_objects_by_the_prompt():
    """Re-measures, on fresh samples at fewer sampler steps, two attributes the manifest records at ≥ .9."""
    from dbdpo.backbones import load_pipeline
    from dbdpo.world.oracle import load_oracle
    from dbdpo.world.t2i import measure_quality

    if not (SHIPPED / "pipeline" / "model_index.json").exists():
        pytest.skip("no world pipeline shipped yet")
    torch.set_num_threads(1)
    recorded = json.loads((SHIPPED / "manifest.json").read_text())["quality"]["t2i_oracle_accuracy"]
    pipe = load_pipeline("sd", str(SHIPPED / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    acc = measure_quality(pipe, load_oracle(SHIPPED / "oracle.safetensors"), n=64, seed=99, size=32, steps=10,
                          guidance=3.0)
    for attr in ("position", "background", "shape"):
        assert recorded[attr] >= 0.9 and acc[attr] >= 0.8, (attr, acc[attr])


def test_object_mask_finds_the_object_in_every_style():
    """Sketch and grainy restyle the whole frame; the mask compares with the bare background in that style."""
    from dbdpo.world.attributes import STYLES, sample_scenes
    from dbdpo.world.data import make_batch
    from dbdpo.world.t2i import object_mask

    b = make_batch(sample_scenes(256, np.random.default_rng(3)), np.random.default_rng(3))
    share = object_mask(b["pixels"], b["labels"]).mean(dim=(1, 2, 3))
    for k, style in enumerate(STYLES):
        s = share[b["labels"]["style"] == k]
        assert len(s) and bool((s > 0.01).all()) and bool((s < 0.7).all()), (style, s.min(), s.max())


def test_object_weighted_mean():
    from dbdpo.world.t2i import object_weighted_mean

    err = torch.ones(2, 4, 2, 2)
    mask = torch.zeros(2, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    # uniform error: the weighting changes nothing (per-image normalisation)
    assert torch.isclose(object_weighted_mean(err, mask, 9.0), torch.tensor(1.0))
    err2 = torch.zeros(2, 4, 2, 2)
    err2[0, :, 0, 0] = 1.0  # error only on image 0's object pixel
    assert torch.isclose(object_weighted_mean(err2, mask, 9.0), torch.tensor(0.5 * 10 / 13))
    assert torch.isclose(object_weighted_mean(err2, mask, 0.0), err2.mean())
    err3 = torch.zeros(2, 4, 2, 2)
    err3[0, :, 1, 1] = 1.0  # the same error on the background counts 10× less
    assert torch.isclose(object_weighted_mean(err3, mask, 9.0) * 10, object_weighted_mean(err2, mask, 9.0))


def test_t2i_object_weight_changes_the_loss_not_the_rest():
    from diffusers import AutoencoderKL

    from dbdpo.world.t2i import T2IModule, build_world_text_encoder, build_world_unet, build_world_vae

    torch.set_num_threads(1)
    b = RenderedBatches(4, seed=2).batch(0)
    vae = build_world_vae(channels=(8, 16))
    vae.register_to_config(scaling_factor=1.0)

    def loss(weight):
        m = T2IModule(AutoencoderKL.from_config(vae.config), build_world_text_encoder(width=32, layers=1),
                      build_world_unet(channels=(16, 32), attention=(False, True), cross_attention_dim=32),
                      object_weight=weight, seed=0)
        m.vae.load_state_dict(vae.state_dict())
        return m.training_step(b, 0)

    plain, weighted, again = loss(0.0), loss(9.0), loss(9.0)
    assert torch.isfinite(weighted) and not torch.isclose(plain, weighted)
    assert torch.equal(weighted, again)


def test_text_time_embedding_starts_as_the_plain_unet_and_round_trips(tmp_path):
    from diffusers import UNet2DConditionModel

    from dbdpo.world.t2i import build_world_unet

    torch.set_num_threads(1)
    kw = dict(sample_size=8, channels=(16, 32), attention=(False, True), cross_attention_dim=32)
    plain, tt = build_world_unet(**kw), build_world_unet(**kw, text_time=True)
    missing, unexpected = tt.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("add_embedding.") for k in missing)
    z, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 77, 32)
    with torch.no_grad():
        assert torch.allclose(plain(z, t, cond).sample, tt(z, t, cond).sample, atol=1e-6)
    loss = tt(z, t, cond).sample.square().mean()
    loss.backward()
    assert tt.add_embedding.norm2.weight.grad.abs().sum() > 0  # it can learn away from zero
    with torch.no_grad():
        tt.add_embedding.norm2.weight.fill_(1.0)
        out = tt(z, t, cond).sample
        assert not torch.allclose(out, plain(z, t, cond).sample, atol=1e-4)  # the prompt summary now matters
        tt.save_pretrained(tmp_path / "unet", safe_serialization=True)
        back = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
        assert back.config.addition_embed_type == "text"
        assert torch.allclose(back(z, t, cond).sample, out, atol=1e-6)
