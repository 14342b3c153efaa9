"""SDXL through the whole loop: conditioning as diffusers computes it, DPO at ln 2 for every method, one optimizer
step moves exactly what trains, and `train.py` end to end on tiny SD and tiny SDXL for every method."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbdpo.backbones import build_backbone, build_tiny_sdxl_pipeline
from dbdpo.generate import generate

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
NO_TRAINER_LOG = "ignore:You are trying to `self.log\\(\\)`"
TINY_SDXL = {"name": "tiny_sdxl", "kind": "sdxl", "build": "tiny", "resolution": 32,
             "sampler": "EulerDiscreteScheduler", "num_inference_steps": 3, "guidance_scale": 5.0}


def tiny_sdxl(path):
    build_tiny_sdxl_pipeline(32, seed=0).save_pretrained(str(path), safe_serialization=True)


def test_sdxl_loads_from_a_saved_folder_and_generates(tmp_path):
    tiny_sdxl(tmp_path / "sdxl")
    bb = build_backbone({**TINY_SDXL, "name": "sdxl", "build": None, "pretrained": str(tmp_path / "sdxl")})
    assert type(bb.pipe).__name__ == "StableDiffusionXLPipeline" and type(bb).__name__ == "SDXLBackbone"
    prompts = ["a [V*] in the snow", "a red [V*]"]
    a = generate(bb, prompts, "sks dog", tmp_path / "a", images_per_prompt=2, seed=3, batch_size=4, progress=False)
    b = generate(bb, prompts, "sks dog", tmp_path / "b", images_per_prompt=2, seed=3, batch_size=1, progress=False)
    assert a.latents.shape == (4, 4, 16, 16)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=1e-4)
    assert a.load_images([0])[0].size == (32, 32)


def test_sdxl_conditioning_is_what_the_diffusers_pipeline_computes():
    bb = build_backbone(TINY_SDXL)
    pipe = bb.pipe
    prompts = ["a photo of sks dog", "a sks dog in the snow, watercolor"]
    cond = bb.with_sizes(bb.encode_prompts(prompts), torch.tensor([[480, 640, 0, 5], [32, 32, 0, 0]]))
    # hidden states: the penultimate layer of each encoder, concatenated (32 + 32); pooled: the second's projection
    hidden = []
    with torch.no_grad():
        for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            out = enc(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        pooled = out.text_embeds
    torch.testing.assert_close(cond.hidden, torch.cat(hidden, dim=-1))
    assert cond.hidden.shape == (2, 77, 64)
    torch.testing.assert_close(cond.added["text_embeds"], pooled)
    # time ids: the pipeline's own helper for each image's original size, crop and target size
    for i, (orig, crop) in enumerate((((480, 640), (0, 5)), ((32, 32), (0, 0)))):
        want = pipe._get_add_time_ids(orig, crop, (32, 32), dtype=torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        torch.testing.assert_close(cond.added["time_ids"][i], want[0])
    # generated samples: original = target = the generation size, crop (0, 0), as the pipeline samples them
    gen = bb.with_sizes(bb.encode_prompts(prompts[:1]))
    torch.testing.assert_close(gen.added["time_ids"], torch.tensor([[32.0, 32, 0, 0, 32, 32]]))
    # the UNet accepts exactly these: one denoising prediction equals the pipeline's conditioning path
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = bb.unet(x, torch.tensor([10, 500]), **cond.unet_kwargs()).sample
        theirs = bb.unet(x, torch.tensor([10, 500]), encoder_hidden_states=torch.cat(hidden, -1),
                         added_cond_kwargs={"text_embeds": pooled,
                                            "time_ids": cond.added["time_ids"]}).sample
    torch.testing.assert_close(ours, theirs)


def test_concept_photos_carry_their_original_size_and_crop(tmp_path):
    from PIL import Image

    from dbdpo.concept import Concept, ConceptDataModule, crop_geometry

    d = tmp_path / "photos"
    d.mkdir()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(d / "wide.png")
    Image.new("RGB", (300, 500), (30, 200, 30)).save(d / "tall.png")
    dm = ConceptDataModule(Concept("c", "dog", str(d)), 32, repeats=1)
    dm.setup()
    sizes = sorted(tuple(dm.dataset[i]["size"].tolist()) for i in range(2))
    # wide: shorter side 480 -> 32, width 640 -> 43, centre crop left = round((43 - 32) / 2) = 6 (5.5 rounds to 6)
    assert sizes == [(480, 640, 0, 6), (500, 300, round((round(500 * 32 / 300) - 32) / 2), 0)]
    assert crop_geometry((32, 32), 32) == (32, 32, 0, 0)


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
@pytest.mark.parametrize("kind", ["full", "svdiff", "lora"])
def test_sdxl_dpo_starts_at_ln2_and_training_moves_exactly_what_trains(kind):
    import lightning as L

    from dbdpo.adapters import make_adapter
    from dbdpo.dpo import DiffusionDPOModule, PairDataModule

    bb = build_backbone(TINY_SDXL)
    adapter = make_adapter({"adapter": {"kind": kind, "rank": 2}})
    adapter.attach(bb.unet)
    module = DiffusionDPOModule(bb, beta=5000.0, lr=1e-3, adapter=adapter)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(4, *bb.latent_shape, generator=g)
    batch = {"latents_w": lat[:2], "latents_l": lat[2:], "prompt": ["a photo of sks dog", "a sks dog in snow"]}
    with torch.no_grad():
        assert module.training_step(batch, 0).item() == pytest.approx(math.log(2), abs=1e-6)

    import types

    samples = types.SimpleNamespace(latents=lat, texts=["a photo of sks dog"] * 4)
    pairs = types.SimpleNamespace(winner=[0, 1], loser=[2, 3])
    trainable = {n: p.detach().clone() for n, p in bb.unet.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in bb.unet.named_parameters() if not p.requires_grad}
    others = {f"{c}.{n}": p.detach().clone() for c in ("text_encoder", "text_encoder_2", "vae")
              for n, p in getattr(bb.pipe, c).named_parameters()}
    assert trainable
    # two optimizer steps: LoRA's A matrices get their first gradient once B has left zero
    tr = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    tr.fit(module, datamodule=PairDataModule(samples, pairs, micro_batch_size=1))
    params = dict(bb.unet.named_parameters())
    assert [n for n, p in trainable.items() if torch.equal(params[n], p)] == []
    assert [n for n, p in frozen.items() if not torch.equal(params[n], p)] == []
    assert all(torch.equal(p, others[f"{c}.{n}"]) for c in ("text_encoder", "text_encoder_2", "vae")
               for n, p in getattr(bb.pipe, c).named_parameters())


RUN = ["concept=default", "method.max_steps=3", "prompts.n=4", "generate.images_per_prompt=3", "eval.max_prompts=2",
       "eval.images_per_prompt=2", "logger=none", "progress=false", "steps=2", "filter=weighted"]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny", "tiny_sdxl"])
@pytest.mark.parametrize("method", ["dreambooth", "svdiff", "lora"])
def test_train_py_end_to_end_for_every_backbone_and_method(backbone, method, tmp_path):
    # one combination through the command line (`python train.py backbone=… method=…`), the others in-process
    # through the same composed config (a subprocess costs ~10 CPU-s of imports)
    if (backbone, method) == ("tiny_sdxl", "lora"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        args = [sys.executable, str(ROOT / "train.py"), f"backbone={backbone}", f"method={method}", *RUN,
                f"hydra.run.dir={tmp_path}"]
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        from dbdpo.cli import run_main

        run_main(compose([f"backbone={backbone}", f"method={method}", *RUN], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["backbone"] == backbone and set(metrics["stages"]) == {"personalize", "step_1", "step_2"}
    for stage in metrics["stages"].values():
        assert math.isfinite(stage["eval/clip_i"]["mean"]) and math.isfinite(stage["eval/clip_t"]["mean"])
    ckpt = tmp_path / "checkpoints" / "step_2"
    assert (ckpt / ("diffusion_pytorch_model.safetensors" if method == "dreambooth" else "adapter.safetensors")).exists()


def compose(overrides: list[str], out: Path):
    return compose_config(overrides, out)


def test_sdxl_bad_input_is_one_clear_error_before_any_work(tmp_path):
    import shutil

    from dbdpo.errors import ConfigError
    from dbdpo.schema import check_config

    folder = tmp_path / "sdxl"
    tiny_sdxl(folder)
    check_config(compose(["backbone=sdxl", f"backbone.pretrained={folder}", "concept=default"], tmp_path))
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ConfigError, match=r"backbone\.pretrained=.*lacks text_encoder_2"):
        check_config(compose(["backbone=sdxl", f"backbone.pretrained={folder}", "concept=default"], tmp_path))
    with pytest.raises(ConfigError, match=r"backbone\.vae='/no/such/vae'"):
        check_config(compose(["backbone=tiny_sdxl", "+backbone.vae=/no/such/vae", "concept=default"], tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"method\.optimizer=adamw8bit: .*CUDA"):
            check_config(compose(["backbone=tiny_sdxl", "method.optimizer=adamw8bit", "concept=default"], tmp_path))


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    from dbdpo.dpo import DiffusionDPOModule

    lat = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    batch = {"latents_w": lat[:2], "latents_l": lat[2:], "prompt": ["a photo of sks dog", "a sks dog in snow"]}
    grads = []
    for ckpt in (False, True):
        bb = build_backbone(TINY_SDXL)
        module = DiffusionDPOModule(bb, beta=5000.0, gradient_checkpointing=ckpt)
        # move the policy off the reference so the loss has a gradient
        with torch.no_grad():
            for p in bb.unet.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        module.unet.train()
        assert bb.unet.is_gradient_checkpointing == ckpt
        loss = module.training_step(batch, 0)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in bb.unet.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert len(grads[0][1]) == len(grads[1][1]) > 0
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
@pytest.mark.parametrize("kind", ["full", "svdiff", "lora"])
def test_bf16_frozen_parts_fp32_trainables_and_mixed_precision_training(kind, tmp_path):
    import types

    import lightning as L

    from dbdpo.adapters import make_adapter
    from dbdpo.dpo import DiffusionDPOModule, PairDataModule

    bb = build_backbone({**TINY_SDXL, "dtype": "bfloat16"})
    adapter = make_adapter({"adapter": {"kind": kind, "rank": 2}})
    adapter.attach(bb.unet)
    module = DiffusionDPOModule(bb, beta=5000.0, lr=1e-3, adapter=adapter)
    module.configure_optimizers()
    trainable = [p for p in bb.unet.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for c in ("vae", "text_encoder", "text_encoder_2")
               for p in getattr(bb.pipe, c).parameters())
    if kind == "full":
        assert next(module.ref_unet.parameters()).dtype == torch.bfloat16  # the frozen reference in bf16
    else:
        assert any(p.dtype == torch.bfloat16 for p in bb.unet.parameters() if not p.requires_grad)
    lat = torch.randn(4, *bb.latent_shape, generator=torch.Generator().manual_seed(0))
    samples = types.SimpleNamespace(latents=lat, texts=["a photo of sks dog"] * 4)
    pairs = types.SimpleNamespace(winner=[0, 1], loser=[2, 3])
    tr = L.Trainer(max_steps=1, accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    tr.fit(module, datamodule=PairDataModule(samples, pairs, micro_batch_size=2))
    assert math.isfinite(tr.callback_metrics["dpo/loss"].item())
    assert all(p.dtype == torch.float32 for p in trainable)
    adapter.fuse(bb.unet)
    # generation with a pipeline of mixed dtypes runs under autocast
    out = generate(bb, ["a [V*]"], "sks dog", tmp_path / "g", images_per_prompt=1, seed=0, progress=False)
    assert torch.isfinite(out.latents).all()
