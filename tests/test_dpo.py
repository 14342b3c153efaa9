"""Diffusion-DPO (dbdpo/dpo.py): the loss against hand formulas, step-0 = ln 2, one real optimizer step."""

from __future__ import annotations

import math
import types

import lightning as L
import numpy as np
import pytest
import torch

from dbdpo.dpo import DiffusionDPOModule, PairDataModule, dpo_loss
from dbdpo.errors import DbdpoError
from dbdpo.generate import generate

LN2 = math.log(2.0)
NO_TRAINER_LOG = "ignore:You are trying to `self.log\\(\\)`"


def random_mses(n: int = 64, seed: int = 0, spread: float = 1e-4):
    """Per-pair MSEs around 0.1 whose differences are ~1e-4 (β/2·1e-4 ≈ 0.25: not saturated)."""
    g = torch.Generator().manual_seed(seed)
    base = 0.1 + 0.01 * torch.rand(n, generator=g, dtype=torch.float64)
    return [base + spread * torch.randn(n, generator=g, dtype=torch.float64) for _ in range(4)]


def trainer(**kw) -> L.Trainer:
    return L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", devices=1, **kw)


def fake_pairs(latents: torch.Tensor):
    """A SampleSet-like object (latents, texts) and a Pairs-like object (winner, loser)."""
    k = latents.shape[0]
    texts = [f"a photo of sks dog number {i // 2}" for i in range(k)]
    samples = types.SimpleNamespace(latents=latents, texts=texts)
    pairs = types.SimpleNamespace(winner=np.arange(0, k, 2), loser=np.arange(1, k, 2))
    return samples, pairs


# ------------------------------------------------------------------ dpo_loss


def test_loss_is_ln2_when_policy_equals_reference():
    mw, ml, _, _ = random_mses(seed=1, spread=0.05)
    for dtype in (torch.float32, torch.float64):
        w, l = mw.to(dtype), ml.to(dtype)
        out = dpo_loss(w, l, w.clone(), l.clone(), beta=5000.0)
        assert out["loss"].item() == pytest.approx(LN2, abs=1e-7)
        assert out["loss"].dtype == dtype
        assert out["implicit_acc"].item() == 0.0  # model_diff − ref_diff == 0 is not "< 0"
        for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert out[k].item() == 0.0


def test_loss_matches_float64_hand_formula():
    beta = 5000.0
    mw, ml, rw, rl = random_mses(seed=2)
    out = dpo_loss(mw, ml, rw, rl, beta=beta)

    inside = [(a - b) - (c - d) for a, b, c, d in zip(mw.tolist(), ml.tolist(), rw.tolist(), rl.tolist())]
    z = [-(beta / 2) * x for x in inside]
    assert max(abs(v) for v in z) < 10 and 0.05 < sum(abs(v) for v in z) / len(z)  # not saturated, not ~0
    want_loss = sum(-math.log(1.0 / (1.0 + math.exp(-v))) for v in z) / len(z)
    want_acc = sum(x < 0 for x in inside) / len(inside)
    chosen = [-(beta / 2) * (a - c) for a, c in zip(mw.tolist(), rw.tolist())]
    rejected = [-(beta / 2) * (b - d) for b, d in zip(ml.tolist(), rl.tolist())]
    margin = [-(beta / 2) * ((a - c) - (b - d)) for a, b, c, d in zip(mw.tolist(), ml.tolist(), rw.tolist(),
                                                                       rl.tolist())]

    assert 0.0 < want_acc < 1.0  # the random pairs mix both signs
    assert abs(want_loss - LN2) > 1e-3
    assert out["loss"].item() == pytest.approx(want_loss, rel=1e-12, abs=1e-12)
    assert out["implicit_acc"].item() == pytest.approx(want_acc, abs=1e-7)
    assert out["rewards/chosen"].item() == pytest.approx(sum(chosen) / len(chosen), rel=1e-9, abs=1e-12)
    assert out["rewards/rejected"].item() == pytest.approx(sum(rejected) / len(rejected), rel=1e-9, abs=1e-12)
    assert out["rewards/margins"].item() == pytest.approx(sum(margin) / len(margin), rel=1e-9, abs=1e-12)


def test_loss_sign_convention():
    """A policy that fits winners better than the reference (same losers) is rewarded: loss < ln 2."""
    ref_w = torch.full((8,), 0.2, dtype=torch.float64)
    ref_l = torch.full((8,), 0.2, dtype=torch.float64)
    better = dpo_loss(ref_w - 1e-4, ref_l, ref_w, ref_l, beta=5000.0)
    worse = dpo_loss(ref_w + 1e-4, ref_l, ref_w, ref_l, beta=5000.0)
    assert better["loss"].item() == pytest.approx(math.log1p(math.exp(-0.25)), rel=1e-9)
    assert worse["loss"].item() == pytest.approx(math.log1p(math.exp(0.25)), rel=1e-9)
    assert better["implicit_acc"].item() == 1.0 and worse["implicit_acc"].item() == 0.0
    assert better["rewards/margins"].item() == pytest.approx(0.25, rel=1e-9)
    assert worse["rewards/margins"].item() == pytest.approx(-0.25, rel=1e-9)


def test_loss_gradient_at_equality():
    """d loss / d model_w = (β/2)·σ(0)/N per pair at policy = reference; opposite sign for model_l."""
    n, beta = 4, 5000.0
    mw = torch.full((n,), 0.1, dtype=torch.float64, requires_grad=True)
    ml = torch.full((n,), 0.1, dtype=torch.float64, requires_grad=True)
    dpo_loss(mw, ml, mw.detach().clone(), ml.detach().clone(), beta=beta)["loss"].backward()
    assert torch.allclose(mw.grad, torch.full((n,), beta / 4 / n, dtype=torch.float64))
    assert torch.allclose(ml.grad, torch.full((n,), -beta / 4 / n, dtype=torch.float64))


def test_half_false_with_half_beta_equals_half_true():
    mw, ml, rw, rl = random_mses(seed=3)
    a = dpo_loss(mw, ml, rw, rl, beta=5000.0, half=True)
    b = dpo_loss(mw, ml, rw, rl, beta=2500.0, half=False)
    c = dpo_loss(mw, ml, rw, rl, beta=5000.0, half=False)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-12, atol=0), k
    assert not torch.allclose(a["loss"], c["loss"])  # the ½ does matter at equal β


# ------------------------------------------------------------------ DiffusionDPOModule


@pytest.fixture(scope="module")
def real_samples(tiny_backbone, tmp_path_factory):
    """Latents generated by the tiny backbone (a real SampleSet), 2 prompts × 2 images."""
    out = tmp_path_factory.mktemp("dpo_samples")
    return generate(tiny_backbone(), ["a photo of [V*]", "a [V*] in the snow"], "sks dog", out,
                    images_per_prompt=2, seed=0, batch_size=4, progress=False)


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_step0_loss_is_ln2_on_real_latents(tiny_backbone, real_samples):
    assert real_samples.latents.shape == (4, 4, 16, 16)
    pairs = types.SimpleNamespace(winner=np.array([0, 2]), loser=np.array([1, 3]))
    dm = PairDataModule(real_samples, pairs, micro_batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents_w"].shape == (2, 4, 16, 16)
    # the prompt of a pair is the text the model saw for its winner
    assert sorted(batch["prompt"]) == ["a photo of sks dog", "a sks dog in the snow"]

    module = DiffusionDPOModule(tiny_backbone(), beta=5000.0)
    with torch.no_grad():
        loss = module.training_step(batch, 0)
    assert abs(loss.item() - LN2) < 1e-6
    # the two nets really saw different latents for winner and loser (MSEs differ) yet cancel exactly
    assert not torch.equal(batch["latents_w"], batch["latents_l"])


def test_one_optimizer_step_moves_policy_not_reference(tiny_backbone):
    backbone = tiny_backbone()
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    samples, pairs = fake_pairs(latents)
    dm = PairDataModule(samples, pairs, micro_batch_size=4)
    module = DiffusionDPOModule(backbone, beta=5000.0, lr=1e-4)

    policy0 = {n: p.detach().clone() for n, p in module.unet.named_parameters() if p.requires_grad}
    ref0 = {n: p.detach().clone() for n, p in module.ref_unet.named_parameters()}
    text0 = {n: p.detach().clone() for n, p in module.backbone.text_encoder.named_parameters()}
    assert len(policy0) == len(ref0) > 100
    assert not any(p.requires_grad for p in module.ref_unet.parameters())
    assert module.ref_unet is not module.unet

    tr = trainer()
    tr.fit(module, datamodule=dm)
    assert tr.global_step == 1

    unchanged = [n for n, p in module.unet.named_parameters() if n in policy0 and torch.equal(p, policy0[n])]
    assert unchanged == []
    ref_moved = [n for n, p in module.ref_unet.named_parameters() if not torch.equal(p, ref0[n])]
    assert ref_moved == []
    assert all(torch.equal(p, text0[n]) for n, p in module.backbone.text_encoder.named_parameters())
    # the module trained the backbone's own UNet (what generation uses next)
    assert module.unet is backbone.unet
    m = tr.callback_metrics
    assert m["dpo/loss"].item() == pytest.approx(LN2, abs=1e-6)  # logged at step 0: policy == reference
    assert m["dpo/mse/model_w"].item() == pytest.approx(m["dpo/mse/ref_w"].item(), abs=1e-7)


def test_nan_loss_raises_naming_dpo_lr(tiny_backbone):
    latents = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    latents[0, 0, 0, 0] = float("nan")
    samples, pairs = fake_pairs(latents)
    module = DiffusionDPOModule(tiny_backbone(), lr=1e-4)
    with pytest.raises(DbdpoError, match=r"dpo\.lr"):
        trainer().fit(module, datamodule=PairDataModule(samples, pairs, micro_batch_size=2))
