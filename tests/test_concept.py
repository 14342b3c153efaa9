"""Concept images (dbdpo/concept.py) and DreamBooth (dbdpo/personalize.py)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from dbdpo.concept import Concept, ConceptDataModule, list_concept_images, load_concept_images, load_image
from dbdpo.errors import DataError
from dbdpo.personalize import DreamBoothModule

RED, GREEN, BLUE = (230, 20, 20), (20, 200, 20), (20, 20, 230)
ORIENTATION = 0x0112


def bands(width: int, height: int, left: int, colour, side=BLUE) -> Image.Image:
    """`colour` everywhere except `left` columns of `side` on the left and on the right."""
    im = Image.new("RGB", (width, height), colour)
    im.paste(side, (0, 0, left, height))
    im.paste(side, (width - left, 0, width, height))
    return im


@pytest.fixture
def mixed_dir(tmp_path):
    """PNG, JPEG, WEBP and a JPEG stored sideways with EXIF orientation 6 (display = rotate 90° clockwise)."""
    d = tmp_path / "mixed"
    d.mkdir()
    # 60×40 landscape: a centred 40×40 red square between blue side bands (the crop must drop them)
    bands(60, 40, 10, RED).save(d / "1.png")
    bands(40, 64, 0, RED).save(d / "2.jpg", quality=95)
    bands(50, 50, 0, RED).save(d / "3.webp", quality=95)
    # stored 48 wide × 32 high: left 16 columns green, rest red. Displayed upright it is 32 × 48 with
    # the green band on top.
    sideways = Image.new("RGB", (48, 32), RED)
    sideways.paste(GREEN, (0, 0, 16, 32))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    sideways.save(d / "4_rotated.jpg", quality=95, exif=exif)
    (d / "notes.txt").write_text("not an image")
    return d


def dominant(pixel) -> int:
    return int(np.argmax(np.asarray(pixel)))


def test_exif_orientation_applied_before_crop(mixed_dir):
    path = mixed_dir / "4_rotated.jpg"
    with Image.open(path) as raw:
        assert raw.size == (48, 32) and raw.getexif()[ORIENTATION] == 6
    upright = load_image(path)
    assert upright.size == (32, 48)  # width and height transposed
    assert upright.mode == "RGB"
    assert dominant(upright.getpixel((16, 3))) == 1  # green on top
    assert dominant(upright.getpixel((16, 44))) == 0  # red at the bottom
    # centre crop of 32×48 keeps rows 8..40: the top quarter of the 16×16 result is green
    small = load_image(path, 16)
    assert small.size == (16, 16)
    assert dominant(small.getpixel((8, 1))) == 1 and dominant(small.getpixel((8, 12))) == 0


def test_centre_crop_resize_and_range(mixed_dir):
    files = list_concept_images(mixed_dir)
    assert [p.name for p in files] == ["1.png", "2.jpg", "3.webp", "4_rotated.jpg"]  # not notes.txt
    ims = load_concept_images(mixed_dir, 16)
    assert [im.size for im in ims] == [(16, 16)] * 4
    # the landscape PNG lost its blue side bands: the crop is centred and square
    # (bicubic support reaches a pixel past the crop box: a faint tint on the outermost columns only)
    arr = np.asarray(ims[0], dtype=np.int16)
    assert np.abs(arr[:, 2:-2] - np.array(RED)).max() <= 3
    assert np.abs(arr - np.array(RED)).max() <= 20  # a kept blue band would be ~210 off


def test_datamodule_tensors_and_prompt(mixed_dir):
    concept = Concept(name="mydog", class_name="dog", path=str(mixed_dir))
    assert concept.holder == "sks dog"
    dm = ConceptDataModule(concept, resolution=16, batch_size=4, repeats=2)
    dm.setup("fit")
    assert dm.prompt == "a photo of sks dog"
    assert len(dm.dataset) == 8
    item = dm.dataset[0]
    assert item["prompt"] == "a photo of sks dog"
    x = item["pixels"]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    # pure red → (≈+0.8, ≈−0.84, ≈−0.84): the [0,255] → [−1,1] mapping
    assert torch.allclose(x[:, 8, 8], torch.tensor([230 / 127.5 - 1, 20 / 127.5 - 1, 20 / 127.5 - 1]), atol=0.03)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixels"].shape == (4, 3, 16, 16)
    assert list(batch["prompt"]) == ["a photo of sks dog"] * 4
    for i in range(len(dm.dataset)):
        px = dm.dataset[i]["pixels"]
        assert px.min() >= -1.0 and px.max() <= 1.0
    assert dm.dataset[0]["pixels"].min() < -0.5 and dm.dataset[0]["pixels"].max() > 0.5  # real range used


def test_concept_from_cfg_and_template(concept_dir):
    concept = Concept.from_cfg({"name": "toy", "class_name": "stuffed animal", "path": str(concept_dir),
                                "token": "zwx"})
    dm = ConceptDataModule(concept, resolution=32, prompt_template="a [V*] photo")
    assert dm.prompt == "a zwx stuffed animal photo"
    dm.setup()
    assert len(dm.dataset.pixels) == 4 and dm.dataset.pixels[0].shape == (3, 32, 32)


# ------------------------------------------------------------------ errors


def test_missing_folder_raises(tmp_path):
    concept = Concept(name="x", class_name="dog", path=str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"concept\.path") as e:
        ConceptDataModule(concept, resolution=16).setup()
    assert "nope" in str(e.value)


def test_empty_folder_raises(tmp_path):
    (tmp_path / "readme.md").write_text("photos go here")
    with pytest.raises(DataError, match=r"concept\.path"):
        ConceptDataModule(Concept(name="x", class_name="dog", path=str(tmp_path)), resolution=16).setup()


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_image_raises_naming_file(concept_dir, how):
    bad = concept_dir / "e_bad.jpg"
    if how == "garbage":
        bad.write_bytes(b"\x00\x01 definitely not a jpeg" * 10)
    else:
        good = concept_dir / "c.jpg"
        bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    concept = Concept(name="x", class_name="dog", path=str(concept_dir))
    with pytest.raises(DataError, match="e_bad.jpg"):
        ConceptDataModule(concept, resolution=16).setup()


# ------------------------------------------------------------------ DreamBooth


def test_dreambooth_one_step_moves_unet_only(tiny_backbone, concept_dir):
    backbone = tiny_backbone()
    module = DreamBoothModule(backbone, lr=1e-4, seed=0)
    dm = ConceptDataModule(Concept(name="x", class_name="dog", path=str(concept_dir)), resolution=32,
                           batch_size=1, repeats=1)
    unet0 = {n: p.detach().clone() for n, p in module.unet.named_parameters()}
    vae0 = {n: p.detach().clone() for n, p in module.vae.named_parameters()}
    text0 = {n: p.detach().clone() for n, p in module.backbone.text_encoder.named_parameters()}
    assert all(p.requires_grad for p in module.unet.parameters())
    assert not any(p.requires_grad for p in module.vae.parameters())
    assert not any(p.requires_grad for p in module.backbone.text_encoder.parameters())

    tr = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", devices=1)
    tr.fit(module, datamodule=dm)
    assert tr.global_step == 1

    unchanged = [n for n, p in module.unet.named_parameters() if torch.equal(p, unet0[n])]
    assert unchanged == []
    assert all(torch.equal(p, vae0[n]) for n, p in module.vae.named_parameters())
    assert all(torch.equal(p, text0[n]) for n, p in module.backbone.text_encoder.named_parameters())
    assert module.unet is backbone.unet  # the backbone generation uses is the trained one
    assert set(module.embed.cache) == {"a photo of sks dog"}
    loss = tr.callback_metrics["personalize/loss"].item()
    assert np.isfinite(loss) and loss > 0
