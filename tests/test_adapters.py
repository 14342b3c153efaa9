"""SVDiff spectral shifts and LoRA adapters (dbdpo/adapters.py), on the tiny UNet, and through the whole loop."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

from dbdpo.adapters import LoRA, SVDiff, SpectralShift, load_adapter_file, make_adapter, save_adapter

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]


def unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    cond = torch.randn(2, 4, cfg.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=cond).sample


def test_spectral_shift_reconstructs_and_relus():
    w = torch.randn(6, 3, 3, 3)
    p = SpectralShift(w)
    assert p.delta.shape == (6,) and torch.all(p.delta == 0)  # rank of the (6, 27) flattened kernel
    assert torch.equal(p(w), w)  # δ = 0: exactly the stored weight
    with torch.no_grad():
        p.delta.fill_(-1e9)  # ReLU(σ + δ) = 0: the weight vanishes
    assert torch.allclose(p(w), torch.zeros_like(w), atol=1e-5)
    with torch.no_grad():
        p.delta.copy_(torch.linspace(-0.5, 0.5, 6))  # the same function as U·diag(ReLU(σ + δ))·Vᵀ
    want = ((p.u * torch.relu(p.s + p.delta)) @ p.vh).reshape(w.shape)
    torch.testing.assert_close(p(w), want, atol=1e-5, rtol=1e-5)
    p.enabled = False
    assert p(w) is w  # disabled (the DPO reference): the stored weight itself, nothing rebuilt


@pytest.mark.parametrize("kind", ["svdiff", "lora"])
def test_adapter_starts_at_identity_trains_only_itself_and_round_trips(tiny_backbone, kind, tmp_path):
    bb = tiny_backbone()
    unet = bb.unet
    base = unet_out(unet)
    plain = {n: p.detach().clone() for n, p in unet.named_parameters()}
    adapter = SVDiff() if kind == "svdiff" else LoRA(rank=2)
    adapter.attach(unet)
    assert torch.allclose(unet_out(unet), base, atol=1e-4)  # δ = 0 / B = 0: the same network
    groups = adapter.param_groups(unet, 1e-3, personalize=False)
    trainable = [p for g in groups for p in g["params"]]
    assert trainable and all(p.requires_grad for p in trainable)
    assert sum(p.requires_grad for p in unet.parameters()) == len(trainable)
    if kind == "svdiff":
        n_layers = sum(1 for m in unet.modules() if parametrize.is_parametrized(m, "weight"))
        assert len(trainable) == n_layers > 10  # one δ per Conv2d / Linear
        assert len(adapter.param_groups(unet, 1e-3, personalize=True)) == 2  # + the 1-D weights at lr_1d

    # a few optimizer steps move the output; the disabled adapter is exactly the network it was attached to
    opt = torch.optim.Adam(trainable, lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, unet.config.in_channels, 8, 8, generator=g)
        cond = torch.randn(2, 4, unet.config.cross_attention_dim, generator=g)
        unet(x, torch.tensor([10, 500]), encoder_hidden_states=cond).sample.pow(2).mean().backward()
        opt.step()
    adapted = unet_out(unet)
    assert not torch.allclose(adapted, base, atol=1e-4)
    with adapter.disabled(unet):
        assert torch.allclose(unet_out(unet), base, atol=1e-4)
    for n, p in unet.named_parameters():  # the weights it was attached to are untouched
        if n in plain:
            assert torch.equal(p, plain[n]), n

    # save → a fresh UNet with the adapter loaded gives the same outputs; fusing keeps them on plain weights
    save_adapter(adapter, unet, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "adapter.safetensors").stat().st_size < 0.5 * sum(
        p.numel() * 4 for p in plain.values())
    fresh = tiny_backbone().unet
    adapter2 = make_adapter({"adapter": {"kind": kind, "rank": 2}})
    adapter2.attach(fresh)
    adapter2.load_state_dict(fresh, load_adapter_file(tmp_path / "ckpt"))
    assert torch.allclose(unet_out(fresh), adapted, atol=1e-5)
    adapter2.fuse(fresh)
    assert not any(parametrize.is_parametrized(m) for m in fresh.modules())
    assert not any("lora_" in n or "parametrizations" in n for n, _ in fresh.named_parameters())
    assert set(dict(fresh.named_parameters())) == set(plain)
    assert torch.allclose(unet_out(fresh), adapted, atol=1e-4)


def test_unknown_adapter_kind_is_a_config_error():
    from dbdpo.errors import ConfigError

    with pytest.raises(ConfigError, match="svdiff"):
        make_adapter({"adapter": {"kind": "dora"}})


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("kind", ["svdiff", "lora"])
def test_dpo_with_an_adapter_starts_at_ln2_against_its_disabled_self(tiny_backbone, kind):
    from dbdpo.dpo import DiffusionDPOModule

    bb = tiny_backbone()
    adapter = SVDiff() if kind == "svdiff" else LoRA(rank=2)
    adapter.attach(bb.unet)
    module = DiffusionDPOModule(bb, beta=5000.0, lr=1e-3, adapter=adapter)
    assert module.ref_unet is None  # no frozen copy: the reference is the adapter switched off
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, *bb.latent_shape, generator=g)
    batch = {"latents_w": lat[:1].repeat(2, 1, 1, 1), "latents_l": lat[1:].repeat(2, 1, 1, 1),
             "prompt": ["a photo of sks dog", "a dog"]}
    loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    opt = module.configure_optimizers()["optimizer"]
    assert {id(p) for grp in opt.param_groups for p in grp["params"]} == {
        id(p) for grp in adapter.param_groups(bb.unet, 1e-3, personalize=False) for p in grp["params"]}


TINY = ["backbone=tiny", "concept=default", "method.max_steps=4", "prompts.n=8", "generate.images_per_prompt=3",
        "eval.max_prompts=3", "eval.images_per_prompt=2", "logger=csv", "progress=false", "steps=2"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["svdiff", "lora"])
def test_train_with_an_adapter_saves_only_it_and_resumes_identically(method, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(ROOT / "train.py"), *TINY, f"method={method}", f"hydra.run.dir={tmp_path}",
            "generate.guidance_scale=4.5"]
    # the first run in-process (the composed config of the same command line), the rerun as a fresh process
    from dbdpo.cli import run_main

    run_main(compose_config([*TINY, f"method={method}", "generate.guidance_scale=4.5"], tmp_path))
    # the DPO samples use generate.guidance_scale, the evaluation the backbone's
    assert json.loads((tmp_path / "step_1" / "samples" / "generation.json").read_text())["guidance_scale"] == 4.5
    assert json.loads((tmp_path / "step_1" / "eval" / "samples" / "generation.json").read_text())[
        "guidance_scale"] == 3.0
    for stage in ("personalize", "step_1", "step_2"):
        files = sorted(p.name for p in (tmp_path / "checkpoints" / stage).iterdir())
        assert files == ["adapter.safetensors"], (stage, files)
    before = json.loads((tmp_path / "metrics.json").read_text())
    # lose step 2 (its adapter and evaluation) and rerun: θ_1 is rebuilt from the saved adapters
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step_2")
    shutil.rmtree(tmp_path / "step_2" / "eval")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("eval/clip_i", "eval/clip_t"):
        assert after["stages"]["step_2"][key]["mean"] == pytest.approx(before["stages"]["step_2"][key]["mean"],
                                                                       abs=1e-5)


def _dpo_batch(bb, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(2 * n, *bb.latent_shape, generator=g)
    return {"latents_w": lat[:n], "latents_l": lat[n:], "prompt": ["a photo of sks dog"] * n}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_svdiff_amortized_gradients_equal_autograd_through_the_rebuild(tiny_backbone):
    """Per-step weight building with the projected gradient gives δ the gradient of autograd through
    U·diag(ReLU(σ+δ))·Vᵀ, over two accumulated micro-batches; the reference pass builds nothing."""
    from dbdpo.adapters import _shifted
    from dbdpo.dpo import DiffusionDPOModule

    grads = []
    for amortized in (False, True):
        bb = tiny_backbone()
        adapter = SVDiff()
        adapter.attach(bb.unet)
        with torch.no_grad():  # move δ off 0 so that the policy differs from the reference
            for i, (_, p) in enumerate(_shifted(bb.unet)):
                p.delta.copy_(0.01 * torch.randn(p.delta.shape, generator=torch.Generator().manual_seed(i)))
        module = DiffusionDPOModule(bb, beta=50.0, adapter=adapter)
        adapter.amortize(bb.unet, amortized)
        for k in range(2):  # two micro-batches of one optimizer step
            module.training_step(_dpo_batch(bb, seed=k), k).backward()
            module.on_after_backward()  # δ gets its gradient after each backward (before a GradScaler checks it)
        shifts = [p for _, p in _shifted(bb.unet)]
        if amortized:
            assert all(p.rebuilds == 1 for p in shifts)  # once for the step, not per micro-batch or reference pass
            adapter.before_optimizer_step(bb.unet)
            assert all(p.leaf is None for p in shifts)
        else:
            assert all(p.rebuilds == 2 for p in shifts)  # per forward (policy only: the reference rebuilds nothing)
        grads.append([p.delta.grad.clone() for p in shifts])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_svdiff_reuses_the_fused_weights_svd_and_redoes_it_after_a_change(tiny_backbone):
    from dbdpo.adapters import _shifted

    bb = tiny_backbone()
    adapter = SVDiff()
    adapter.attach(bb.unet)
    with torch.no_grad():
        for i, (_, p) in enumerate(_shifted(bb.unet)):
            p.delta.copy_(0.05 * torch.randn(p.delta.shape, generator=torch.Generator().manual_seed(i)))
    first = {n: p for n, p in _shifted(bb.unet)}
    adapter.fuse(bb.unet)
    fused = {n: m.weight.detach().clone() for n, m in bb.unet.named_modules() if n in first}
    adapter.attach(bb.unet)  # the next stage: no new SVD
    for n, p in _shifted(bb.unet):
        assert p.u is first[n].u and p.vh is first[n].vh
        torch.testing.assert_close(p.s, torch.relu(first[n].s + first[n].delta.detach()))
        # the reused basis still factors the fused weight, and δ = 0 is that weight exactly
        w = fused[n].reshape(fused[n].shape[0], -1)
        torch.testing.assert_close((p.u * p.s) @ p.vh, w, atol=1e-4, rtol=1e-4)
        assert torch.equal(p(fused[n]), fused[n])
    adapter.fuse(bb.unet)
    name, module = next((n, m) for n, m in bb.unet.named_modules() if n in first)
    with torch.no_grad():
        module.weight.mul_(2.0)  # changed outside SVDiff: its basis no longer holds
    adapter.attach(bb.unet)
    shifts = dict(_shifted(bb.unet))
    assert shifts[name].u is not first[name].u
    want = torch.sort(2 * torch.relu(first[name].s + first[name].delta.detach()), descending=True).values
    torch.testing.assert_close(shifts[name].s, want, atol=1e-4, rtol=1e-4)  # a fresh SVD: sorted singular values
