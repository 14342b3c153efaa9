"""Pair building and filtering (dbdpo/pairs.py), hand-computed on both sides of every boundary."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from dbdpo.errors import ConfigError, DbdpoError
from dbdpo.pairs import (
    ANGLE_PRESETS,
    AngleFilter,
    NoPairsError,
    Pairs,
    ThresholdFilter,
    angle_deg,
    build_pairs,
    make_filter,
    pair_stats,
    plot_alpha_hist,
    require_pairs,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "filter"


def two(ts, is_):
    """Two images of one prompt."""
    return np.array(ts, float), np.array(is_, float), np.zeros(2, int)


def kept(pairs: Pairs) -> set[tuple[int, int]]:
    return set(zip(pairs.winner.tolist(), pairs.loser.tolist()))


def at_angle(deg: float, r: float = 0.1):
    """Image 0 beats image 1 with α = deg (approximately)."""
    a = math.radians(deg)
    return two([r * math.cos(a), 0.0], [r * math.sin(a), 0.0])


# ---------------------------------------------------------------- threshold


def test_threshold_tau_strict():
    ts, is_, g = two([0.5, 0.25], [0.0, 0.0])  # ΔTS = 0.25 exactly
    assert kept(build_pairs(ts, is_, g, ThresholdFilter(tau=0.25))) == set()
    p = build_pairs(ts, is_, g, ThresholdFilter(tau=0.25 - 1e-9))
    assert kept(p) == {(0, 1)}
    assert p.d_ts.tolist() == [0.25] and p.d_is.tolist() == [0.0] and p.alpha.tolist() == [0.0]


def test_threshold_score_types():
    ts, is_, g = two([0.5, 0.25], [0.25, 0.75])
    assert kept(build_pairs(ts, is_, g, ThresholdFilter(score_type="text"))) == {(0, 1)}
    assert kept(build_pairs(ts, is_, g, ThresholdFilter(score_type="image"))) == {(1, 0)}
    # λ = 0.5: S0 = 0.375, S1 = 0.5 -> 1 wins by 0.125
    half = dict(score_type="weighted", weight=0.5)
    assert kept(build_pairs(ts, is_, g, ThresholdFilter(tau=0.12, **half))) == {(1, 0)}
    assert kept(build_pairs(ts, is_, g, ThresholdFilter(tau=0.125, **half))) == set()
    # λ = 0.75: S0 = 0.4375, S1 = 0.375 -> 0 wins by 0.0625
    q = dict(score_type="weighted", weight=0.75)
    assert kept(build_pairs(ts, is_, g, ThresholdFilter(tau=0.06, **q))) == {(0, 1)}
    assert kept(build_pairs(ts, is_, g, ThresholdFilter(tau=0.0625, **q))) == set()
    # weight is ignored unless score_type is weighted
    assert kept(build_pairs(ts, is_, g, ThresholdFilter(score_type="text", weight=0.0))) == {(0, 1)}


def test_weighted_extremes_equal_text_and_image():
    rng = np.random.default_rng(0)
    ts, is_ = rng.random(60), rng.random(60)
    g = np.repeat(np.arange(6), 10)
    for tau in (0.0, 0.1, 0.3):
        for lam, st in ((0.0, "image"), (1.0, "text")):
            a = build_pairs(ts, is_, g, ThresholdFilter(tau=tau, score_type="weighted", weight=lam))
            b = build_pairs(ts, is_, g, ThresholdFilter(tau=tau, score_type=st))
            assert np.array_equal(a.winner, b.winner) and np.array_equal(a.loser, b.loser)
            assert len(a) > 0


# ---------------------------------------------------------------- angle


def test_angle_exact_boundaries_not_kept_inside_kept():
    f = AngleFilter.preset("is")  # (0, 90)
    assert kept(build_pairs(*two([1.0, 0.0], [0.0, 0.0]), f)) == set()  # α = 0 = C1 (reverse 180)
    assert kept(build_pairs(*two([0.0, 0.0], [1.0, 0.0]), f)) == set()  # α = 90 = C2 (reverse -90)
    assert kept(build_pairs(*two([1.0, 0.0], [1e-6, 0.0]), f)) == {(0, 1)}
    assert kept(build_pairs(*two([1e-6, 0.0], [1.0, 0.0]), f)) == {(0, 1)}
    # α = ±45 and 135 are exact in floating point
    assert angle_deg(1.0, 1.0) == 45.0 and angle_deg(1.0, -1.0) == -45.0 and angle_deg(-1.0, 1.0) == 135.0
    f2 = AngleFilter(-45, 135)
    assert kept(build_pairs(*two([1.0, 0.0], [-1.0, 0.0]), f2)) == set()  # α = -45 = C1
    assert kept(build_pairs(*two([0.0, 1.0], [1.0, 0.0]), f2)) == set()  # α = 135 = C2, reverse -45
    assert kept(build_pairs(*two([1.0, 0.0], [-0.999, 0.0]), f2)) == {(0, 1)}
    assert kept(build_pairs(*two([0.0, 0.999], [1.0, 0.0]), f2)) == {(0, 1)}


def test_angle_filter_preset_boundaries_on_alpha():
    ts_ = AngleFilter.preset("ts")
    assert ts_.passes(np.array([-20.0, 70.0])).tolist() == [False, False]
    assert ts_.passes(np.array([-19.999, 69.999])).tolist() == [True, True]


def test_angle_reverse_orientation():
    # i < j: ΔTS = -1, ΔIS = -0.5 (α ≈ -153°); reversed (1, 0.5), α ≈ 26.6° is in the TS window
    ts, is_, g = two([0.0, 1.0], [0.0, 0.5])
    p = build_pairs(ts, is_, g, AngleFilter.preset("ts"))
    assert kept(p) == {(1, 0)}
    assert p.d_ts.tolist() == [1.0] and p.d_is.tolist() == [0.5]
    assert p.alpha[0] == pytest.approx(math.degrees(math.atan2(0.5, 1.0)))
    assert p.candidate_alpha[0] == pytest.approx(math.degrees(math.atan2(-0.5, -1.0)))


@pytest.mark.parametrize(
    "deg, expected",
    [
        (-25, set()),
        (-15, {"ts"}),  # MIX starts at -10
        (-5, {"ts", "mix"}),
        (30, {"ts", "is", "mix"}),
        (75, {"is", "mix"}),
        (85, {"is"}),
        (95, set()),
    ],
)
def test_presets(deg, expected):
    for name in ANGLE_PRESETS:
        f = AngleFilter.preset(name)
        assert kept(build_pairs(*at_angle(deg), f)) == ({(0, 1)} if name in expected else set()), name
        # same pair, images listed the other way round
        ts, is_, g = at_angle(deg)
        assert kept(build_pairs(ts[::-1], is_[::-1], g, f)) == ({(1, 0)} if name in expected else set())


def test_wide_window_keeps_orientation_closer_to_centre():
    ts, is_, g = at_angle(100)  # forward α = 100, reverse α = -80
    assert kept(build_pairs(ts, is_, g, AngleFilter(-120, 120))) == {(1, 0)}  # centre 0: -80 closer
    assert kept(build_pairs(ts, is_, g, AngleFilter(-100, 170))) == {(0, 1)}  # centre 35: 100 closer
    f = AngleFilter(-179, 180)
    o = f.orient(np.array([1.0, -1.0, 0.3]), np.array([0.2, -0.2, -2.0]))
    assert o.tolist() == [1, -1, 1]


def test_ties_dropped():
    ts, is_, g = two([0.3, 0.3], [0.7, 0.7])
    filters = [AngleFilter.preset("ts"), AngleFilter(-179, 180), ThresholdFilter(),
               ThresholdFilter(score_type="weighted", weight=0.5)]
    for f in filters:
        p = build_pairs(ts, is_, g, f)
        assert len(p) == 0 and p.n_candidates == 1
    assert np.isnan(p.candidate_alpha[0])
    assert pair_stats(p)["ties"] == 1


def test_nan_scores_never_pass():
    ts, is_, g = two([np.nan, 0.0], [1.0, 0.0])
    for f in (AngleFilter(-179, 180), ThresholdFilter(), ThresholdFilter(score_type="image")):
        assert len(build_pairs(ts, is_, g, f)) == 0


# ---------------------------------------------------------------- groups


def brute(ts, is_, group, f):
    out = set()
    for i, j in itertools.combinations(range(len(ts)), 2):
        if group[i] != group[j]:
            continue
        o = int(f.orient(np.array([ts[i] - ts[j]]), np.array([is_[i] - is_[j]]))[0])
        if o == 1:
            out.add((i, j))
        elif o == -1:
            out.add((j, i))
    return out


@pytest.mark.parametrize(
    "f",
    [AngleFilter.preset("ts"), AngleFilter.preset("is"), AngleFilter(-150, 170), ThresholdFilter(tau=0.05),
     ThresholdFilter(score_type="weighted", weight=0.3)],
)
def test_groups_match_brute_force(f):
    rng = np.random.default_rng(1)
    k = 70
    group = rng.integers(0, 9, size=k)  # interleaved, uneven sizes
    group[0] = 99  # a group of one image
    ts, is_ = rng.random(k).round(2), rng.random(k).round(2)  # rounding makes some ties
    p = build_pairs(ts, is_, group, f)
    sizes = np.bincount(np.unique(group, return_inverse=True)[1])
    assert p.n_candidates == int((sizes * (sizes - 1) // 2).sum()) == p.candidate_alpha.shape[0]
    assert (group[p.winner] == group[p.loser]).all()
    unordered = {frozenset(x) for x in kept(p)}
    assert len(unordered) == len(p)
    assert kept(p) == brute(ts, is_, group, f)
    assert np.allclose(p.d_ts, ts[p.winner] - ts[p.loser])
    assert np.allclose(p.d_is, is_[p.winner] - is_[p.loser])
    assert np.allclose(p.alpha, np.degrees(np.arctan2(p.d_is, p.d_ts)))
    # the result does not depend on the order of the images
    perm = rng.permutation(k)
    q = build_pairs(ts[perm], is_[perm], group[perm], f)
    assert {(perm[w], perm[l]) for w, l in kept(q)} == kept(p)


def test_string_groups_and_empty():
    p = build_pairs([0.1, 0.2, 0.3], [0.0, 0.0, 0.0], np.array(["a", "b", "a"]), ThresholdFilter())
    assert kept(p) == {(2, 0)} and p.n_candidates == 1
    e = build_pairs(np.zeros(0), np.zeros(0), np.zeros(0, int), ThresholdFilter())
    assert len(e) == 0 and e.n_candidates == 0
    with pytest.raises(ValueError):
        build_pairs([0.1, 0.2], [0.1], [0, 0], ThresholdFilter())


def test_large_random():
    rng = np.random.default_rng(2)
    k, m = 100_000, 10
    ts, is_ = rng.normal(0.3, 0.02, k), rng.normal(0.8, 0.03, k)
    group = rng.permutation(np.arange(k) // m)
    for f in (AngleFilter.preset("mix"), ThresholdFilter(tau=0.01)):
        p = build_pairs(ts, is_, group, f)
        assert p.n_candidates == (k // m) * m * (m - 1) // 2
        assert 0 < len(p) < p.n_candidates
        assert (group[p.winner] == group[p.loser]).all()
    s = pair_stats(p)
    assert sum(s["candidate_alpha_hist"]["counts"]) == 2 * p.n_candidates


# ---------------------------------------------------------------- validation / config


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(c1=10, c2=10), "filter.c1"),
        (dict(c1=20, c2=10), "filter.c1"),
        (dict(c1=-180, c2=10), "filter.c1"),
        (dict(c1=-200, c2=10), "filter.c1"),
        (dict(c1=0, c2=180.5), "filter.c2"),
        (dict(c1=0, c2=float("nan")), "filter.c2"),
        (dict(c1="x", c2=10), "filter.c1"),
    ],
)
def test_angle_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key) as e:
        AngleFilter(**kwargs)
    assert "presets" in str(e.value)


def test_angle_accepts_edges():
    f = AngleFilter(-179.9, 180)
    assert (f.c1, f.c2) == (-179.9, 180.0)
    assert AngleFilter.preset("MIX") == AngleFilter(-10, 80)
    with pytest.raises(ConfigError, match="ts, is, mix"):
        AngleFilter.preset("clip")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(weight=1.5), "filter.weight"),
        (dict(weight=-0.1, score_type="weighted"), "filter.weight"),
        (dict(score_type="clip"), "filter.score_type"),
        (dict(tau=-0.01), "filter.tau"),
        (dict(tau=float("inf")), "filter.tau"),
    ],
)
def test_threshold_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        ThresholdFilter(**kwargs)


def test_make_filter_and_conf_files():
    expected = {
        "ts": AngleFilter(-20, 70),
        "is": AngleFilter(0, 90),
        "mix": AngleFilter(-10, 80),
        "threshold": ThresholdFilter(0.0, "text", 1.0),
        "weighted": ThresholdFilter(0.0, "weighted", 0.5),
    }
    for name, f in expected.items():
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert cfg.name == name
        assert make_filter(cfg) == f
        if name in ANGLE_PRESETS:
            assert make_filter(cfg) == AngleFilter.preset(name)
    assert make_filter({"kind": "threshold", "tau": 0.1}) == ThresholdFilter(tau=0.1)
    with pytest.raises(ConfigError, match="threshold, angle"):
        make_filter({"kind": "cone"})
    with pytest.raises(ConfigError, match="filter.c2"):
        make_filter({"kind": "angle", "c1": 0})
    with pytest.raises(ConfigError, match="filter.c1"):
        make_filter({"kind": "threshold", "c1": 0})


# ---------------------------------------------------------------- reporting


def test_require_pairs():
    ts, is_, g = two([0.5, 0.25], [0.0, 0.0])
    p = build_pairs(ts, is_, g, ThresholdFilter())
    assert require_pairs(p, ThresholdFilter(), step=1) is p
    f = ThresholdFilter(tau=1.0)
    with pytest.raises(NoPairsError) as e:
        require_pairs(build_pairs(ts, is_, g, f), f, step=2)
    msg = str(e.value)
    assert isinstance(e.value, DbdpoError)
    assert "step 2" in msg and "1 candidate" in msg and "filter.tau" in msg and "generate.images_per_prompt" in msg
    f = AngleFilter.preset("is")
    with pytest.raises(NoPairsError, match="filter.c1.*filter.c2"):
        require_pairs(build_pairs(ts, is_, g, f), f, step=1)
    empty = build_pairs([0.1], [0.1], [0], f)
    with pytest.raises(NoPairsError, match="generate.images_per_prompt"):
        require_pairs(empty, f, step=1)


def test_pair_stats():
    # one prompt, 3 images: (0,1) ΔTS=1, ΔIS=0 (α=0); (0,2) tie; (1,2) ΔTS=-1, ΔIS=0 -> 2 beats 1 (α=0)
    ts, is_, g = np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.5]), np.zeros(3, int)
    p = build_pairs(ts, is_, g, ThresholdFilter())
    assert kept(p) == {(0, 1), (2, 1)}
    s = pair_stats(p, bins=4)
    assert s["candidates"] == 3 and s["kept"] == 2 and s["ties"] == 1
    assert s["kept_fraction"] == pytest.approx(2 / 3)
    assert s["mean_d_ts"] == 1.0 and s["mean_d_is"] == 0.0
    assert s["alpha_hist"]["edges"] == [-180.0, -90.0, 0.0, 90.0, 180.0]
    assert s["alpha_hist"]["counts"] == [0, 2, 0, 0]  # bins are (e_k, e_k+1]: 0 is in (-90, 0]
    assert s["candidate_alpha_hist"]["counts"] == [0, 2, 0, 2]  # α = 0 and 180, twice
    json.dumps(s)
    # image score picks nothing: ΔIS = 0 everywhere
    s0 = pair_stats(build_pairs(ts, is_, g, ThresholdFilter(score_type="image")))
    assert s0["kept"] == 0 and s0["mean_d_ts"] is None and s0["mean_d_is"] is None
    assert sum(s0["alpha_hist"]["counts"]) == 0 and len(s0["alpha_hist"]["counts"]) == 36


def test_plot_alpha_hist(tmp_path):
    rng = np.random.default_rng(3)
    ts, is_, g = rng.random(40), rng.random(40), np.arange(40) // 10
    for f in (AngleFilter.preset("ts"), ThresholdFilter(tau=0.1)):
        out = plot_alpha_hist(build_pairs(ts, is_, g, f), f, tmp_path / "sub" / f"{f.kind}.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in (tmp_path / "sub").iterdir()) == ["angle.png", "threshold.png"]
