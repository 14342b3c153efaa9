import math
import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from dbdpo.errors import ConfigError, DataError, DbdpoError
from dbdpo.scores import (
    TINY_CLIP,
    ClipScorer,
    build_scorer,
    image_similarity,
    load_concept_embeddings,
    register_tiny_clip,
    remove_subject,
    score_images,
    text_similarity,
)

torch.set_num_threads(1)


def _images(n, size=(80, 96), seed=0):
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (size[0], size[1], 3), dtype=np.uint8)) for _ in range(n)]


def _unit(deg):
    r = math.radians(deg)
    return torch.tensor([math.cos(r), math.sin(r), 0.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny():
    return ClipScorer(TINY_CLIP, pretrained=None, seed=0)


# ---- similarities on hand-made unit vectors -------------------------------------------------------------


def test_image_similarity_known_cosines():
    img = torch.stack([_unit(0), _unit(90)])
    concepts = torch.stack([_unit(0), _unit(60), _unit(90)])
    got = image_similarity(img, concepts)
    # row 0: (1 + 0.5 + 0) / 3; row 1: (0 + sin60 + 1) / 3
    want = torch.tensor([0.5, (math.sqrt(3) / 2 + 1) / 3], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_image_similarity_orthogonal_is_zero_and_self_is_one():
    e = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(image_similarity(e, e[:1]), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    with pytest.raises(DataError):
        image_similarity(e, e[:0])


def test_text_similarity_rowwise():
    img = torch.stack([_unit(0), _unit(0), _unit(30)])
    txt = torch.stack([_unit(60), _unit(90), _unit(-30)])
    torch.testing.assert_close(
        text_similarity(img, txt), torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64), rtol=0, atol=1e-12
    )
    with pytest.raises(ValueError):
        text_similarity(img, txt[:2])


# ---- subject removal ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, want",
    [
        ("a sks dog in the jungle", "a in the jungle"),
        ("a [V*] in the jungle", "a in the jungle"),
        ("[V*] sitting on a windowsill", "sitting on a windowsill"),
        ("sks dog sitting on a windowsill", "sitting on a windowsill"),
        ("a photo of [V*].", "a photo of."),
        ("a photo of [V*]", "a photo of"),
        ("[V*], wearing a hat, in a cave", "wearing a hat, in a cave"),
        ("a [V*] , in  the snow !", "a, in the snow!"),
        ("a sks dogs", "a sks dogs"),  # the holder must match whole words
    ],
)
def test_remove_subject(prompt, want):
    assert remove_subject(prompt, "sks dog") == want


@pytest.mark.parametrize(
    "prompt, want",
    [
        ("a sks dog in the jungle", "a dog in the jungle"),
        ("[V*] sitting on a windowsill", "dog sitting on a windowsill"),
        ("a photo of [V*].", "a photo of dog."),
    ],
)
def test_remove_subject_class_mode(prompt, want):
    assert remove_subject(prompt, "sks dog", mode="class") == want
    assert remove_subject(prompt, "sks dog", mode="class", class_name="dog") == want


def test_remove_subject_class_mode_multiword_and_errors():
    assert remove_subject("a [V*] on a bed", "sks stuffed animal", "class") == "a stuffed animal on a bed"
    assert remove_subject("a [V*] on a bed", "sks", "class", class_name="toy") == "a toy on a bed"
    with pytest.raises(ConfigError, match="scorer.text_variant"):
        remove_subject("a [V*]", "sks", "class")
    with pytest.raises(ConfigError, match="scorer.text_variant"):
        remove_subject("a [V*]", "sks dog", "delete")


# ---- the tiny scorer ------------------------------------------------------------------------------------


def test_register_tiny_clip_idempotent():
    import open_clip

    register_tiny_clip()
    register_tiny_clip()
    assert open_clip.list_models().count(TINY_CLIP) == 1
    assert open_clip.get_tokenizer(TINY_CLIP)(["a dog"]).shape == (1, 77)


def test_tiny_embeddings_unit_norm_and_frozen(tiny):
    img = tiny.embed_images(_images(5))
    txt = tiny.embed_texts(["a dog", "a cat in a hat"])
    assert img.shape == (5, 64) and txt.shape == (2, 64)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(2))
    assert not tiny.training and not tiny.model.training
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.model.training


def test_tiny_batching_matches_single_batch(tiny):
    imgs = _images(5, seed=3)
    small = ClipScorer(TINY_CLIP, pretrained=None, seed=0, batch_size=2)
    torch.testing.assert_close(small.embed_images(imgs), tiny.embed_images(imgs), rtol=0, atol=1e-6)
    texts = ["a", "b c", "d e f"]
    torch.testing.assert_close(small.embed_texts(texts), tiny.embed_texts(texts), rtol=0, atol=1e-6)


def test_tiny_deterministic_per_seed(tiny):
    imgs = _images(3, seed=1)
    again = ClipScorer(TINY_CLIP, pretrained=None, seed=0)
    other = ClipScorer(TINY_CLIP, pretrained=None, seed=1)
    a, b, c = (s.embed_images(imgs) for s in (tiny, again, other))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(tiny.embed_texts(["a dog"]), again.embed_texts(["a dog"]))


def test_construction_does_not_touch_global_rng():
    torch.manual_seed(7)
    ClipScorer(TINY_CLIP, pretrained=None, seed=0)
    x = torch.rand(3)
    torch.manual_seed(7)
    torch.testing.assert_close(x, torch.rand(3))


def test_long_text_warns_once_and_truncates(tiny):
    long = "a very long prompt about a dog " * 40
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        emb = tiny.embed_texts([long, "short", long + " more"])
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 3 texts")
    assert emb.shape == (3, 64)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.embed_texts(["short prompt"])  # no warning for texts that fit


def test_safetensors_round_trip(tiny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    loaded = ClipScorer(TINY_CLIP, pretrained=str(path), seed=99)
    imgs = _images(2, seed=5)
    assert torch.equal(loaded.embed_images(imgs), tiny.embed_images(imgs))
    assert torch.equal(loaded.embed_texts(["a sks dog"]), tiny.embed_texts(["a sks dog"]))


def test_missing_checkpoint_raises_dbdpo_error(tmp_path):
    with pytest.raises(DbdpoError, match="scorer.pretrained") as ei:
        ClipScorer(TINY_CLIP, pretrained=str(tmp_path / "nope.safetensors"))
    assert "local checkpoint path" in str(ei.value)


def test_unknown_tag_raises_dbdpo_error_chained():
    with pytest.raises(DbdpoError, match="scorer.pretrained") as ei:
        ClipScorer(TINY_CLIP, pretrained="openai")
    assert "local checkpoint path" in str(ei.value)
    assert ei.value.__cause__ is not None


def test_config_errors():
    with pytest.raises(ConfigError, match="scorer.model_name"):
        ClipScorer("ViT-Q-99", pretrained=None)
    with pytest.raises(ConfigError, match="scorer.preprocess"):
        ClipScorer(TINY_CLIP, pretrained=None, preprocess="fancy")
    with pytest.raises(ConfigError, match="scorer.batch_size"):
        ClipScorer(TINY_CLIP, pretrained=None, batch_size=0)
    with pytest.raises(ConfigError, match="scorer.pretrianed"):
        build_scorer({"model_name": TINY_CLIP, "pretrianed": None})


def test_build_scorer_from_yaml_config():
    from omegaconf import OmegaConf

    conf_dir = os.path.join(os.path.dirname(__file__), "..", "conf", "scorer")
    cfg = OmegaConf.load(os.path.join(conf_dir, "tiny.yaml"))
    assert cfg.text_variant == "remove"
    s = build_scorer(cfg)
    assert s.model_name == TINY_CLIP and s.pretrained is None and s.batch_size == 64
    vit = OmegaConf.load(os.path.join(conf_dir, "vit_b32.yaml"))
    assert vit.model_name == "ViT-B-32" and vit.pretrained == "openai"


# ---- preprocessing and inputs ---------------------------------------------------------------------------


def test_paper_preprocess_same_shape_different_values():
    std = ClipScorer(TINY_CLIP, pretrained=None, preprocess="standard")
    paper = ClipScorer(TINY_CLIP, pretrained=None, preprocess="paper")
    imgs = _images(2, size=(150, 200), seed=2)
    a, b = std.preprocess(imgs), paper.preprocess(imgs)
    assert a.shape == b.shape == (2, 3, 64, 64)
    assert not torch.allclose(a, b, atol=1e-3)
    ref = paper.preprocess(imgs, reference=True)
    assert ref.shape == (2, 3, 64, 64) and not torch.allclose(ref, b, atol=1e-3)
    torch.testing.assert_close(std.embed_images(imgs).norm(dim=1), torch.ones(2))
    torch.testing.assert_close(paper.embed_images(imgs).norm(dim=1), torch.ones(2))


def test_paper_preprocess_is_plain_crop_at_model_resolution():
    paper = ClipScorer(TINY_CLIP, pretrained=None, preprocess="paper")
    x = torch.rand(1, 3, 64, 80)
    mean, std = paper.mean, paper.std
    torch.testing.assert_close(paper.preprocess(x), (x[..., 8:72] - mean) / std)


def test_tensor_input_matches_pil(tiny):
    imgs = _images(3, seed=4)
    u8 = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in imgs])
    want = tiny.embed_images(imgs)
    torch.testing.assert_close(tiny.embed_images(u8), want)
    torch.testing.assert_close(tiny.embed_images(u8.float() / 255), want)
    paper = ClipScorer(TINY_CLIP, pretrained=None, preprocess="paper")
    torch.testing.assert_close(paper.embed_images(u8.float() / 255), paper.embed_images(imgs), atol=1e-5, rtol=0)
    with pytest.raises(DataError):
        tiny.embed_images(torch.zeros(2, 1, 8, 8))


def test_score_images_and_concepts(tiny):
    concepts = load_concept_embeddings(tiny, _images(3, seed=10))
    imgs = _images(4, seed=11)
    prompts = ["a [V*] in the jungle", "a sks dog in the jungle", "a [V*] on the beach", "[V*]"]
    calls = []
    orig = tiny.embed_texts
    tiny.embed_texts = lambda texts: calls.append(list(texts)) or orig(texts)
    try:
        out = score_images(tiny, imgs, prompts, "sks dog", concepts)
    finally:
        del tiny.embed_texts
    assert calls == [["a in the jungle", "a on the beach", ""]]  # each unique text once
    assert set(out) == {"is", "ts"} and out["is"].shape == out["ts"].shape == (4,)
    img_emb = tiny.embed_images(imgs)
    np.testing.assert_allclose(out["is"], image_similarity(img_emb, concepts).numpy(), atol=1e-6)
    txt = tiny.embed_texts(["a in the jungle", "a dog on the beach"])
    np.testing.assert_allclose(out["ts"][0], float(img_emb[0] @ txt[0]), atol=1e-6)
    cls = score_images(tiny, imgs, prompts, "sks dog", concepts, text_variant="class")
    np.testing.assert_allclose(cls["ts"][2], float(img_emb[2] @ txt[1]), atol=1e-6)
    np.testing.assert_allclose(cls["is"], out["is"])
    with pytest.raises(DataError):
        score_images(tiny, imgs, prompts[:2], "sks dog", concepts)
    with pytest.raises(DataError):
        load_concept_embeddings(tiny, [])


# ---- full-size architecture -----------------------------------------------------------------------------


def test_vit_b32_random_weights_embeds_224_image():
    s = ClipScorer("ViT-B-32", pretrained=None, seed=0)
    assert s.image_size == (224, 224)
    emb = s.embed_images(_images(1, size=(224, 224)))
    assert emb.shape == (1, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(1))
