"""DreamBooth as the paper ran it: text-encoder training (saved and restored with the UNet) and prior
preservation (class images generated once by the base model, cached, reused by later runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
NO_TRAINER_LOG = "ignore:You are trying to `self.log\\(\\)`"


def compose(overrides: list[str], out: Path):
    return compose_config(["concept=default", "logger=none", "progress=false", "method.max_steps=2",
                           "generate.batch_size=4", *overrides, f"paths.log_dir={out.parent / 'logs'}"], out)


def snapshot(modules) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


@pytest.mark.parametrize("backbone", ["tiny", "tiny_sdxl"])
def test_text_encoders_train_save_and_restore_with_the_unet(backbone, tmp_path):
    from dbdpo.multistep import personalize, prepare

    cfg = compose([f"backbone={backbone}", "method.train_text_encoder=true", "method.lr=1e-3"], tmp_path / "run")
    ctx = prepare(cfg)
    before = snapshot(ctx.backbone.text_encoders)
    ckpt = tmp_path / "run" / "checkpoints" / "personalize"
    personalize(cfg, ctx.backbone, ctx.concept, [], ckpt, ctx.device)
    trained = snapshot(ctx.backbone.text_encoders)
    assert any(not torch.equal(a, b) for a, b in zip(before, trained))
    assert not any(p.requires_grad for te in ctx.backbone.text_encoders for p in te.parameters())  # frozen for DPO
    names = {"tiny": ["text_encoder"], "tiny_sdxl": ["text_encoder", "text_encoder_2"]}[backbone]
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == names
    # a new process (here: a fresh backbone) restores the UNet and the text encoders from the checkpoint
    again = prepare(cfg)
    assert any(not torch.equal(a, b) for a, b in zip(snapshot(again.backbone.text_encoders), trained))
    personalize(cfg, again.backbone, again.concept, [], ckpt, again.device)
    for a, b in zip(snapshot(again.backbone.text_encoders), trained):
        assert torch.equal(a, b)
    for a, b in zip(again.backbone.unet.parameters(), ctx.backbone.unet.parameters()):
        assert torch.equal(a, b)


def test_text_encoder_training_is_for_the_full_fine_tune(tmp_path):
    from dbdpo.errors import ConfigError
    from dbdpo.schema import check_config

    with pytest.raises(ConfigError, match=r"method\.train_text_encoder=true: .*method=lora"):
        check_config(compose(["backbone=tiny", "method=lora", "method.train_text_encoder=true"], tmp_path / "r"))


def test_class_images_are_generated_once_and_reused_by_later_runs(tmp_path, monkeypatch):
    import dbdpo.generate as gen
    from dbdpo.multistep import class_images, prepare

    over = ["backbone=tiny", "method.prior_preservation=true", "method.num_class_images=3"]
    cfg = compose(over, tmp_path / "a")
    ctx = prepare(cfg)
    first = class_images(cfg, ctx.backbone, ctx.concept, tmp_path / "a" / "class_images")
    assert len(first) == 3 and set(first.texts) == {"a photo of toy"}
    cache = tmp_path / "logs" / "class_images"
    assert len(list(cache.iterdir())) == 1

    def no_generation(*args, **kwargs):
        raise AssertionError("class images were generated again")

    monkeypatch.setattr(gen, "_generate_batch", no_generation)
    cfg2 = compose(over, tmp_path / "b")
    ctx2 = prepare(cfg2)  # another run, same base model and class: copied from the cache
    second = class_images(cfg2, ctx2.backbone, ctx2.concept, tmp_path / "b" / "class_images")
    assert torch.equal(first.latents, second.latents) and len(list(cache.iterdir())) == 1


@pytest.mark.filterwarnings(NO_TRAINER_LOG)
def test_prior_loss_adds_the_weighted_class_term(tiny_backbone, concept_dir):
    from dbdpo.concept import Concept, ConceptDataModule
    from dbdpo.generate import SampleSet
    from dbdpo.personalize import DreamBoothModule

    bb = tiny_backbone()
    lat = torch.randn(3, *bb.latent_shape, generator=torch.Generator().manual_seed(0))
    cls = SampleSet(Path("."), lat, ["a photo of [V*]"] * 3, ["a photo of dog"] * 3, [0] * 3, [0, 1, 2], [1, 2, 3],
                    [Path("x")] * 3)
    dm = ConceptDataModule(Concept("c", "dog", str(concept_dir)), 32, batch_size=2, repeats=2, class_samples=cls)
    batch = next(iter(dm.train_dataloader()))
    assert batch["class_latents"].shape == (2, *bb.latent_shape) and batch["class_prompt"] == ["a photo of dog"] * 2
    losses = {}
    for w in (0.0, 1.0, 2.5):
        module = DreamBoothModule(bb, prior_loss_weight=w)
        with torch.no_grad():
            losses[w] = module.training_step(batch, 0).item()
    prior = losses[1.0] - losses[0.0]
    assert prior > 0 and losses[2.5] - losses[0.0] == pytest.approx(2.5 * prior, rel=1e-5)


def test_a_finished_stage_leaves_no_optimizer_or_gradients_behind(tmp_path):
    """Optimizer states (8 B per trained parameter) and the last gradients (4 B) must not live on into the next
    stage: at full size they are what runs out of memory (SD2 DreamBooth + text encoder was OOM-killed in DPO)."""
    import gc

    from dbdpo.multistep import personalize, prepare

    cfg = compose(["backbone=tiny", "method.train_text_encoder=true"], tmp_path / "run")
    ctx = prepare(cfg)
    personalize(cfg, ctx.backbone, ctx.concept, [], tmp_path / "run" / "ckpt", ctx.device)
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)] == []
    assert all(p.grad is None for m in (ctx.backbone.unet, *ctx.backbone.text_encoders) for p in m.parameters())
