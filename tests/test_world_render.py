"""The miniature world's renderer, vocabulary, captions, concepts and prompt sets (issue 4)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from PIL import Image

from dbdpo.errors import ConfigError
from dbdpo.prompts.dreambench import PLACEHOLDER
from dbdpo.prompts.pool import CATEGORIES, split_pool
from dbdpo.world.attributes import (ATTRIBUTES, BACKGROUNDS, CATEGORY_ATTRIBUTES, COLOUR_RGB, COLOURS,
                                    HELDOUT_FRACTION, PATTERNS, RESERVED_LOOKS, RESERVED_PATTERNS, SHAPES, STYLES,
                                    Scene, SceneBatch, heldout_combos, readable_mask, sample_scenes, split_mask)
from dbdpo.world.captions import caption_with_mentions, captions, full_caption, parse_prompt
from dbdpo.world.concepts import (NotNovelWarning, is_novel, load_concept_config, parse_world_concept,
                                  photo_scenes, render_concept_photos, shipped_concepts)
from dbdpo.world.prompts import (EVAL_PHRASES, world_eval_categories, world_eval_prompts, world_pool,
                                 world_pool_mods, world_pool_size)
from dbdpo.world.render import backgrounds, parse_object_spec, render


def _combos(b: SceneBatch) -> set[tuple[str, str, str]]:
    return {(SHAPES[s], BACKGROUNDS[g], STYLES[t]) for s, g, t in zip(b.shape, b.background, b.style)}


# ---- scenes and rendering ----

def test_render_is_deterministic_and_batch_independent():
    a, b = sample_scenes(48, 3), sample_scenes(48, np.random.default_rng(3))
    for k in ATTRIBUTES:
        assert np.array_equal(getattr(a, k), getattr(b, k))
    x, y = render(a), render(b)
    assert x.shape == (48, 32, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(x, y)
    assert np.array_equal(render(a[10:20]), x[10:20])  # a scene's pixels do not depend on its batch
    assert not np.array_equal(x, render(sample_scenes(48, 4)))
    big = render(a[:4], size=64)
    assert big.shape == (4, 64, 64, 3)


def test_render_speed_smoke():
    b = sample_scenes(1024, 0)
    render(b[:64])
    t = time.perf_counter()
    for i in range(0, 1024, 256):
        render(b[i:i + 256])
    dt = time.perf_counter() - t
    print(f"\nworld renderer: {1024 / dt:.0f} images/s at 32x32 (batches of 256)")


def test_scene_roundtrip_and_labels():
    b = sample_scenes(20, 1)
    again = SceneBatch.from_scenes(b.scenes())
    for k in ATTRIBUTES:
        assert np.array_equal(getattr(again, k), getattr(b, k))
    assert np.array_equal(render(again), render(b))
    sc = b[0]
    assert isinstance(sc, Scene) and (sc.colour2 is None) == (sc.pattern == "solid")
    with pytest.raises(ValueError, match="valid values"):
        SceneBatch.from_scenes([Scene("blob", "solid", "red", None, "sky")])


def test_every_attribute_value_changes_the_pixels():
    base = Scene("circle", "stripes", "blue", "yellow", "sky", "center", "large", "flat", "none", "none")
    ref = render(SceneBatch.from_scenes([base]))[0].astype(int)
    for attr, values in ATTRIBUTES.items():
        for v in values:
            if v == getattr(base, attr) or (attr == "pattern" and v == "solid"):
                continue
            sc = Scene(**{**base.__dict__, attr: v})
            img = render(SceneBatch.from_scenes([sc]))[0].astype(int)
            assert np.abs(img - ref).mean() > 1.0, (attr, v)


def test_sampling_respects_allow_and_readability():
    b = sample_scenes(500, 0, allow={"background": ["grass", "snow"], "style": "sketch"})
    assert set(b.background) <= {BACKGROUNDS.index("grass"), BACKGROUNDS.index("snow")}
    assert set(b.style) == {STYLES.index("sketch")}
    assert readable_mask(b).all() and (b.colour != b.colour2).all()
    with pytest.raises(ValueError, match="valid values"):
        sample_scenes(4, 0, allow={"background": ["moon"]})


def test_reserved_patterns_and_looks_never_in_pretraining():
    for split in ("pretrain", "heldout", "all"):
        b = sample_scenes(5000, 11, split=split)
        pats = {PATTERNS[p] for p in b.pattern}
        assert not pats & set(RESERVED_PATTERNS)
        assert pats == set(PATTERNS) - set(RESERVED_PATTERNS)
        for s, c1, c2 in zip(b.shape, b.colour, b.colour2):
            if c2 >= 0:
                assert {COLOURS[c1], COLOURS[c2]} not in [set(p) for p in RESERVED_LOOKS[SHAPES[s]]]


def test_heldout_combinations_never_in_pretraining():
    held = heldout_combos()
    n_all = len(SHAPES) * len(BACKGROUNDS) * len(STYLES)
    assert abs(len(held) / n_all - HELDOUT_FRACTION) < 0.01
    assert {h[0] for h in held} == set(SHAPES) and {h[1] for h in held} == set(BACKGROUNDS)
    pre = sample_scenes(5000, 5, split="pretrain")
    assert not _combos(pre) & held
    assert len(_combos(pre)) == n_all - len(held)  # every other combination is seen
    ho = sample_scenes(2000, 5, split="heldout")
    assert _combos(ho) == held
    assert split_mask(ho, "heldout").all() and not split_mask(ho, "train").any()


# ---- captions ----

def test_captions_agree_with_parse_prompt():
    rng = np.random.default_rng(0)
    b = sample_scenes(1000, 2)
    for i in range(len(b)):
        sc = b.scene(i)
        text, mentions = caption_with_mentions(sc, rng)
        assert parse_prompt(text) == mentions, text
        for k, v in mentions.items():
            assert getattr(sc, k) == v
        text, mentions = caption_with_mentions(sc, rng, holder="sks star")
        assert "sks star" in text
        assert parse_prompt(text, holder="sks star") == mentions, text
        assert not set(mentions) & {"shape", "pattern", "colour", "colour2"}
    full = [full_caption(b.scene(i)) for i in range(50)]
    for i, t in enumerate(full):
        want = {k: v for k, v in b.scene(i).attributes().items() if v not in (None, "none")}
        assert parse_prompt(t) == want, t


def test_captions_vary_and_are_seeded():
    b = sample_scenes(200, 0)
    one = captions(b, np.random.default_rng(1))
    assert one == captions(b, np.random.default_rng(1))
    same = SceneBatch.from_scenes([b.scene(0)] * 30)
    assert len(set(captions(same, np.random.default_rng(2)))) > 20


def test_parse_prompt_examples():
    assert parse_prompt("a large red striped star on the left, on a sandy beach, drawn as a sketch") == {
        "shape": "star", "pattern": "stripes", "colour": "red", "size": "large", "background": "sand",
        "position": "left", "style": "sketch"}
    assert parse_prompt("a sketch of a small blue circle with white dots at the top of the picture against a "
                        "night sky, wearing a hat") == {
        "shape": "circle", "pattern": "dots", "colour": "blue", "colour2": "white", "size": "small",
        "background": "night", "position": "top", "style": "sketch", "accessory": "hat"}
    assert parse_prompt("a [V*] on top of pink fabric") == {"background": "fabric"}
    assert parse_prompt("a photo of sks star", holder="sks star") == {}


# ---- concepts ----

def test_shipped_concepts_render_photos(tmp_path):
    names = shipped_concepts()
    assert len(names) >= 8
    for name in names:
        cfg = load_concept_config(name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            concept = parse_world_concept(cfg)
        assert concept.class_name == cfg["world"]["shape"] and is_novel(concept.look)
        assert str(cfg["path"]).startswith("${")
        paths = render_concept_photos(cfg, tmp_path / name)
        assert 4 <= len(paths) <= 6
        imgs = np.stack([np.asarray(Image.open(p)) for p in paths])
        assert imgs.shape[1:] == (32, 32, 3)
        assert len({im.tobytes() for im in imgs}) == len(imgs)  # jittered, not identical
        # one background: the corners (never covered by a large centred object) are the same in every photo
        corners = imgs[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners == corners[:1]).all()
        assert len(set(photo_scenes(concept).background.tolist())) == 1


def test_concept_look_is_never_a_pretraining_scene():
    for name in shipped_concepts():
        look = parse_world_concept(load_concept_config(name)).look
        b = sample_scenes(3000, 0, split="all")
        same = (b.shape == SHAPES.index(look.shape)) & (b.pattern == PATTERNS.index(look.pattern))
        rgb = np.array([COLOUR_RGB[c] for c in COLOURS])
        c1 = (rgb[b.colour] == look.rgb).all(1)
        c2 = (rgb[np.maximum(b.colour2, 0)] == look.rgb2).all(1) & (b.colour2 >= 0)
        assert not (same & c1 & c2).any(), name


def test_concept_photos_skip_and_rerender(tmp_path):
    cfg = load_concept_config("zigzag_star")
    paths = render_concept_photos(cfg, tmp_path)
    first = np.asarray(Image.open(paths[0]))
    stamp = [p.stat().st_mtime_ns for p in paths]
    assert render_concept_photos(cfg, tmp_path) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamp  # skipped
    cfg["world"]["photos"] = {**cfg["world"]["photos"], "n": 4, "background": "snow"}
    new = render_concept_photos(cfg, tmp_path)
    assert len(new) == 4 and sorted(tmp_path.glob("*.png")) == new  # stale photo removed, others re-rendered
    assert not np.array_equal(np.asarray(Image.open(new[0])), first)


def test_concept_from_another_folder_via_omegaconf(tmp_path):
    from omegaconf import OmegaConf

    yaml = tmp_path / "mine.yaml"
    yaml.write_text("name: mine\nclass_name: heart\nlive: false\ntoken: sks\nphoto_seed: 3\n"
                    "world:\n  shape: heart\n  pattern: rings\n  colours: [[20, 200, 200], purple]\n"
                    "  params: {period: 7}\n"
                    "  photos: {n: 4, background: night, position: left, size: small, style: sketch,"
                    " seed: '${photo_seed}',"
                    " accessory: scarf}\n"
                    "path: ${paths.output_dir}/concept_photos\n")
    cfg = OmegaConf.load(yaml)
    paths = render_concept_photos(cfg, tmp_path / "photos")
    assert len(paths) == 4 and all(p.suffix == ".png" for p in paths)


@pytest.mark.parametrize("edit, key", [
    ({"pattern": "plaid"}, "concept.world.pattern"),
    ({"shape": "blob"}, "concept.world.shape"),
    ({"colours": ["red"]}, "concept.world.colours"),
    ({"colours": ["red", "teal"]}, "concept.world.colours[1]"),
    ({"colours": ["red", [300, 0, 0]]}, "concept.world.colours[1]"),
    ({"params": {"period": 1}}, "concept.world.params.period"),
    ({"photos": {"background": "moon"}}, "concept.world.photos.background"),
    ({"photos": {"n": 0}}, "concept.world.photos.n"),
    ({"photos": {"pose": "sitting"}}, "concept.world.photos"),
    ({"colour": ["red"]}, "concept.world"),
])
def test_invalid_concept_spec_names_the_key(edit, key):
    cfg = load_concept_config("zigzag_star")
    cfg["world"] = {**cfg["world"], **edit}
    with pytest.raises(ConfigError) as e:
        parse_world_concept(cfg)
    assert key in str(e.value)


def test_class_word_must_be_the_shape_and_novelty_is_checked():
    cfg = load_concept_config("zigzag_star")
    with pytest.raises(ConfigError, match="concept.class_name"):
        parse_world_concept({**cfg, "class_name": "toy"})
    with pytest.raises(ConfigError, match="photos.background.*valid values: sky, grass"):
        parse_world_concept({**cfg, "world": {**cfg["world"], "photos": {"background": "x"}}})
    seen = {**cfg, "world": {**cfg["world"], "pattern": "stripes", "colours": ["red", "blue"]}}
    with pytest.warns(NotNovelWarning):
        parse_world_concept(seen)


def test_object_spec_overrides_the_look():
    b = sample_scenes(8, 0, allow={"style": "flat", "accessory": "none", "tint": "none"})
    spec = {"shape": "star", "pattern": "zigzag", "colours": ["red", "yellow"]}
    x = render(b, object_spec=spec)
    b2 = SceneBatch(**{**b.__dict__, "shape": np.zeros(8), "pattern": np.zeros(8), "colour2": np.full(8, -1)})
    assert np.array_equal(x, render(b2, object_spec=parse_object_spec(spec)))
    assert not np.array_equal(x, render(b))
    # the object covers the background where it is drawn
    bg = backgrounds(32)[b.background].round()
    assert (np.abs(x.astype(float) - bg).sum(-1) > 30).mean() > 0.05


# ---- prompt sets ----

def test_world_pool():
    pool = world_pool(500, seed=0)
    assert pool == world_pool(500, seed=0) and pool != world_pool(500, seed=1)
    assert len({p.prompt for p in pool}) == 500
    assert {p.category for p in pool} == set(CATEGORIES)
    counts = {c: sum(p.category == c for p in pool) for c in CATEGORIES}
    assert max(counts.values()) - min(counts.values()) <= 1
    for p in pool:
        assert p.prompt.count(PLACEHOLDER) == 1 and p.source == "agnostic"
    parts = split_pool(pool, 2)
    assert sum(map(len, parts)) == 500
    for p, mods in world_pool_mods(world_pool_size(), seed=0):  # every prompt asks for its category
        got = parse_prompt(p.prompt)
        assert got == {m.attr: m.value for m in mods}, p.prompt
        assert set(got) & set(CATEGORY_ATTRIBUTES[p.category]), p.prompt
    with pytest.raises(ConfigError, match="prompts.n"):
        world_pool(world_pool_size() + 1)


def test_eval_prompts_disjoint_from_pool():
    full, val = world_eval_prompts("full"), world_eval_prompts("val")
    assert len(full) == 25 and len(val) == 5 and set(val) <= set(full)
    assert set(world_eval_categories("full")) == set(CATEGORIES) == set(world_eval_categories("val"))
    for p, cat in zip(full, world_eval_categories()):
        assert p.count(PLACEHOLDER) == 1
        assert set(parse_prompt(p)) & set(CATEGORY_ATTRIBUTES[cat]), p
    everything = world_pool_mods(world_pool_size(), seed=0)
    assert not set(full) & {p.prompt for p, _ in everything}
    assert not EVAL_PHRASES & {m for _, mods in everything for m in mods}  # no shared phrasing either
    with pytest.raises(ConfigError, match="prompt_set"):
        world_eval_prompts("long")
