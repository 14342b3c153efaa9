"""Better/worse pairs from per-image scores (method.md, "Pairs").

Candidates are the unordered pairs {i, j} of images of the same prompt (same `group`); for the
orientation (w, l) let ΔTS = TS(w) − TS(l), ΔIS = IS(w) − IS(l).

- threshold: keep (w, l) if S(w) − S(l) > τ (strict), with S = TS (`score_type: text`), S = IS
  (`image`) or S = λ·TS + (1−λ)·IS (`weighted`, λ = `weight`).
- angle: α = atan2(ΔIS, ΔTS) in degrees, in (−180, 180]; keep (w, l) if C1 < α < C2 (strict).
  Presets: TS (−20, 70), IS (0, 90), MIX (−10, 80).

Each unordered pair is kept at most once, winner first. With τ ≥ 0 at most one orientation can pass
the threshold. An angle window wider than 180° can contain both α and α ± 180°; then the orientation
whose α is closer to the window centre (C1 + C2)/2 is kept (on an exact tie, i wins, i < j).
Exact ties (ΔTS = ΔIS = 0) never pass, and neither do pairs with a non-finite score.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from dbdpo.errors import ConfigError, DbdpoError
from dbdpo.io import atomic_write

__all__ = [
    "ANGLE_PRESETS",
    "PRESET_TS",
    "PRESET_IS",
    "PRESET_MIX",
    "SCORE_TYPES",
    "FILTER_KINDS",
    "PairFilter",
    "ThresholdFilter",
    "AngleFilter",
    "Pairs",
    "NoPairsError",
    "angle_deg",
    "build_pairs",
    "pair_stats",
    "plot_alpha_hist",
    "require_pairs",
    "make_filter",
]

PRESET_TS: tuple[float, float] = (-20.0, 70.0)
PRESET_IS: tuple[float, float] = (0.0, 90.0)
PRESET_MIX: tuple[float, float] = (-10.0, 80.0)
ANGLE_PRESETS: dict[str, tuple[float, float]] = {"ts": PRESET_TS, "is": PRESET_IS, "mix": PRESET_MIX}
SCORE_TYPES: tuple[str, ...] = ("text", "image", "weighted")


class NoPairsError(DbdpoError):
    """No candidate pair passed the filter."""


def angle_deg(d_ts: Any, d_is: Any) -> np.ndarray:
    """α = atan2(ΔIS, ΔTS) in degrees, in (−180, 180] (−0.0 is treated as +0.0)."""
    d_ts = np.asarray(d_ts, dtype=np.float64) + 0.0  # + 0.0 turns -0.0 into +0.0: no α = -180
    d_is = np.asarray(d_is, dtype=np.float64) + 0.0
    return np.degrees(np.arctan2(d_is, d_ts))


def _as_float(value: Any, key: str, hint: str = "") -> float:
    out = float("nan")
    if not isinstance(value, bool):
        try:
            out = float(value)
        except (TypeError, ValueError):
            pass
    if not math.isfinite(out):
        raise ConfigError(f"{key} must be a finite number, got {value!r}{hint}")
    return out


@dataclass
class PairFilter:
    """Base class: decides which orientation of a candidate pair (if any) is kept."""

    kind: ClassVar[str] = ""

    def orient(self, d_ts: np.ndarray, d_is: np.ndarray) -> np.ndarray:
        """+1 if (i wins, j loses) passes, −1 if (j, i) passes, 0 if neither; ΔTS = TS_i − TS_j."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass
class ThresholdFilter(PairFilter):
    """Keep (w, l) if S(w) − S(l) > τ, S = TS | IS | λ·TS + (1−λ)·IS."""

    tau: float = 0.0
    score_type: str = "text"
    weight: float = 1.0

    kind: ClassVar[str] = "threshold"

    def __post_init__(self) -> None:
        self.tau = _as_float(self.tau, "filter.tau")
        if self.tau < 0:
            raise ConfigError(f"filter.tau must be >= 0 (the margin S(w) - S(l) > tau), got {self.tau}")
        if self.score_type not in SCORE_TYPES:
            raise ConfigError(
                f"filter.score_type must be one of {', '.join(SCORE_TYPES)}, got {self.score_type!r}"
            )
        self.weight = _as_float(self.weight, "filter.weight")
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(
                f"filter.weight (lambda in S = lambda*TS + (1-lambda)*IS) must be in [0, 1], got {self.weight}"
            )

    def score_delta(self, d_ts: np.ndarray, d_is: np.ndarray) -> np.ndarray:
        """S(i) − S(j) from ΔTS and ΔIS (S is linear in TS and IS)."""
        d_ts = np.asarray(d_ts, dtype=np.float64)
        d_is = np.asarray(d_is, dtype=np.float64)
        if self.score_type == "text":
            return d_ts
        if self.score_type == "image":
            return d_is
        return self.weight * d_ts + (1.0 - self.weight) * d_is

    def orient(self, d_ts: np.ndarray, d_is: np.ndarray) -> np.ndarray:
        d = self.score_delta(d_ts, d_is)
        out = np.zeros(d.shape, dtype=np.int8)
        out[d > self.tau] = 1
        out[-d > self.tau] = -1
        return out

    def describe(self) -> str:
        s = {"text": "TS", "image": "IS"}.get(self.score_type, f"{self.weight:g}*TS + {1 - self.weight:g}*IS")
        return f"threshold: S(w) - S(l) > {self.tau:g}, S = {s}"


@dataclass
class AngleFilter(PairFilter):
    """Keep (w, l) if C1 < α < C2, α = atan2(ΔIS, ΔTS) in degrees."""

    c1: float
    c2: float

    kind: ClassVar[str] = "angle"

    def __post_init__(self) -> None:
        presets = ", ".join(f"{k} {v}" for k, v in ANGLE_PRESETS.items())
        self.c1 = _as_float(self.c1, "filter.c1", f" (presets: {presets})")
        self.c2 = _as_float(self.c2, "filter.c2", f" (presets: {presets})")
        for key, v in (("filter.c1", self.c1), ("filter.c2", self.c2)):
            if not -180.0 < v <= 180.0:
                raise ConfigError(
                    f"{key} must be an angle in degrees in (-180, 180], got {v:g} (presets: {presets})"
                )
        if not self.c1 < self.c2:
            raise ConfigError(
                f"filter.c1 must be < filter.c2 (keep c1 < alpha < c2), got c1={self.c1:g}, "
                f"c2={self.c2:g} (presets: {presets})"
            )

    @classmethod
    def preset(cls, name: str) -> "AngleFilter":
        """The named window: "ts" (−20, 70), "is" (0, 90), "mix" (−10, 80)."""
        key = str(name).lower()
        if key not in ANGLE_PRESETS:
            raise ConfigError(f"filter: unknown angle preset {name!r}; presets: {', '.join(ANGLE_PRESETS)}")
        return cls(*ANGLE_PRESETS[key])

    @property
    def centre(self) -> float:
        return 0.5 * (self.c1 + self.c2)

    def passes(self, alpha: np.ndarray) -> np.ndarray:
        alpha = np.asarray(alpha, dtype=np.float64)
        return (alpha > self.c1) & (alpha < self.c2)

    def orient(self, d_ts: np.ndarray, d_is: np.ndarray) -> np.ndarray:
        d_ts = np.asarray(d_ts, dtype=np.float64)
        d_is = np.asarray(d_is, dtype=np.float64)
        # α of (j, i) from the negated deltas, so the result does not depend on the image order
        a_fwd = angle_deg(d_ts, d_is)
        a_rev = angle_deg(-d_ts, -d_is)
        fwd = self.passes(a_fwd)
        rev = self.passes(a_rev)
        both = fwd & rev
        if both.any():
            closer_fwd = np.abs(a_fwd - self.centre) <= np.abs(a_rev - self.centre)
            fwd = fwd & (~both | closer_fwd)
            rev = rev & (~both | ~closer_fwd)
        out = np.zeros(a_fwd.shape, dtype=np.int8)
        out[fwd] = 1
        out[rev] = -1
        out[(d_ts == 0) & (d_is == 0)] = 0
        return out

    def describe(self) -> str:
        return f"angle: {self.c1:g} < alpha < {self.c2:g} deg"


FILTER_KINDS: dict[str, type[PairFilter]] = {"threshold": ThresholdFilter, "angle": AngleFilter}


@dataclass
class Pairs:
    """Kept pairs (indices into the K scored images) plus the candidate α for the histogram.

    d_ts = TS(winner) − TS(loser), d_is likewise, alpha = atan2(d_is, d_ts) in degrees;
    candidate_alpha is α of every candidate in the i < j orientation (NaN for exact ties).
    """

    winner: np.ndarray
    loser: np.ndarray
    d_ts: np.ndarray
    d_is: np.ndarray
    alpha: np.ndarray
    n_candidates: int
    candidate_alpha: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return int(self.winner.shape[0])


def _candidates(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i < j, with group[i] == group[j]; ordered by group, then i, then j."""
    k = group.shape[0]
    if k == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    codes = np.unique(group, return_inverse=True)[1].reshape(-1)
    order = np.argsort(codes, kind="stable")  # stable: positions keep the original index order
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pi, pj = [], []
    for m in np.unique(sizes[sizes >= 2]):
        st = starts[sizes == m][:, None]
        iu, ju = np.triu_indices(int(m), 1)
        pi.append((st + iu).reshape(-1))
        pj.append((st + ju).reshape(-1))
    if not pi:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    pi_a = np.concatenate(pi)
    pj_a = np.concatenate(pj)
    o = np.lexsort((pj_a, pi_a))
    return order[pi_a[o]].astype(np.int64), order[pj_a[o]].astype(np.int64)


def build_pairs(ts: np.ndarray, is_: np.ndarray, group: np.ndarray, filt: PairFilter) -> Pairs:
    """Kept (winner, loser) pairs among the images of each group (prompt); never across groups."""
    ts = np.asarray(ts, dtype=np.float64).reshape(-1)
    is_ = np.asarray(is_, dtype=np.float64).reshape(-1)
    group = np.asarray(group).reshape(-1)
    if not (ts.shape == is_.shape == group.shape):
        raise ValueError(
            f"build_pairs: ts, is_ and group must have the same length, got {ts.shape[0]}, "
            f"{is_.shape[0]}, {group.shape[0]}"
        )
    i, j = _candidates(group)
    d_ts = ts[i] - ts[j]
    d_is = is_[i] - is_[j]
    cand_alpha = angle_deg(d_ts, d_is)
    cand_alpha[(d_ts == 0) & (d_is == 0)] = np.nan
    o = filt.orient(d_ts, d_is)
    # drop pairs with a non-finite score, whatever the filter does with NaN
    o[~(np.isfinite(d_ts) & np.isfinite(d_is))] = 0
    keep = o != 0
    fwd = o[keep] > 0
    ik, jk = i[keep], j[keep]
    sign = np.where(fwd, 1.0, -1.0)
    kd_ts = d_ts[keep] * sign
    kd_is = d_is[keep] * sign
    return Pairs(
        winner=np.where(fwd, ik, jk),
        loser=np.where(fwd, jk, ik),
        d_ts=kd_ts,
        d_is=kd_is,
        alpha=angle_deg(kd_ts, kd_is),
        n_candidates=int(i.shape[0]),
        candidate_alpha=cand_alpha,
    )


def _reverse_alpha(alpha: np.ndarray) -> np.ndarray:
    """α of the other orientation: α ∓ 180, in (−180, 180]."""
    return np.where(alpha > 0, alpha - 180.0, alpha + 180.0)


def _hist(alpha: np.ndarray, bins: int) -> dict[str, list]:
    """Counts over (−180, 180] in bins (e_k, e_k+1]; NaN (ties) not counted."""
    edges = np.linspace(-180.0, 180.0, bins + 1)
    a = alpha[np.isfinite(alpha)]
    idx = np.clip(np.searchsorted(edges, a, side="left") - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def all_candidate_alpha(pairs: Pairs) -> np.ndarray:
    """α of every non-tied candidate in both orientations."""
    a = pairs.candidate_alpha[np.isfinite(pairs.candidate_alpha)]
    return np.concatenate([a, _reverse_alpha(a)])


def pair_stats(pairs: Pairs, bins: int = 36) -> dict[str, Any]:
    """Per-step report: counts, mean ΔTS/ΔIS of kept pairs, α histograms (JSON-ready).

    kept_fraction = kept / candidates (0.0 with no candidates); candidate_alpha_hist counts every
    non-tied candidate twice, once per orientation.
    """
    if bins < 1:
        raise ValueError(f"pair_stats: bins must be >= 1, got {bins}")
    n = int(pairs.n_candidates)
    kept = len(pairs)
    return {
        "candidates": n,
        "kept": kept,
        "kept_fraction": kept / n if n else 0.0,
        "ties": int(np.count_nonzero(np.isnan(pairs.candidate_alpha))),
        "mean_d_ts": float(np.mean(pairs.d_ts)) if kept else None,
        "mean_d_is": float(np.mean(pairs.d_is)) if kept else None,
        "alpha_hist": _hist(np.asarray(pairs.alpha, dtype=np.float64), bins),
        "candidate_alpha_hist": _hist(all_candidate_alpha(pairs), bins),
    }


def plot_alpha_hist(pairs: Pairs, filt: PairFilter, path: str | os.PathLike, bins: int = 72) -> Path:
    """PNG histogram of α for all candidates (both orientations) and kept pairs; window shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edges = np.linspace(-180.0, 180.0, bins + 1)
    fig = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if isinstance(filt, AngleFilter):
        ax.axvspan(filt.c1, filt.c2, color="tab:green", alpha=0.15, label="window")
    label = f"candidates, both orientations ({pairs.n_candidates} pairs)"
    ax.hist(all_candidate_alpha(pairs), bins=edges, color="0.6", label=label)
    ax.hist(np.asarray(pairs.alpha), bins=edges, color="tab:blue", alpha=0.8, label=f"kept ({len(pairs)})")
    ax.set_xlim(-180, 180)
    ax.set_xticks(np.arange(-180, 181, 45))
    ax.set_xlabel("alpha = atan2(dIS, dTS) [deg]")
    ax.set_ylabel("pairs")
    ax.set_title(filt.describe(), fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_pairs_scatter(pairs: Pairs, filt: PairFilter, path: str | os.PathLike) -> Path:
    """PNG of the kept pairs in the (ΔTS, ΔIS) plane (winner − loser), the angle window drawn when there is one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(pairs.d_ts, pairs.d_is, s=8, alpha=0.6, color="tab:blue", label=f"kept ({len(pairs)})")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.axvline(0, color="0.7", lw=0.6)
    lim = float(max(np.abs(pairs.d_ts).max(initial=0), np.abs(pairs.d_is).max(initial=0), 1e-3)) * 1.1
    if isinstance(filt, AngleFilter):
        for c in (filt.c1, filt.c2):
            a = np.deg2rad(c)
            ax.plot([0, lim * 2 * np.cos(a)], [0, lim * 2 * np.sin(a)], "--", color="tab:green", lw=0.8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("ΔTS (winner − loser)")
    ax.set_ylabel("ΔIS (winner − loser)")
    ax.set_title(filt.describe(), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def pair_table(pairs: Pairs, samples, n: int, seed: int) -> list[dict]:
    """Up to `n` kept pairs drawn at random (seeded): winner and loser image, prompt, ΔTS, ΔIS, α."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(pairs))[:n])
    return [{"winner": str(samples.images[int(pairs.winner[k])]), "loser": str(samples.images[int(pairs.loser[k])]),
             "prompt": samples.texts[int(pairs.winner[k])], "d_ts": float(pairs.d_ts[k]),
             "d_is": float(pairs.d_is[k]), "alpha": float(pairs.alpha[k])} for k in pick]


def require_pairs(pairs: Pairs, filt: PairFilter, step: int | None = None) -> Pairs:
    """Return `pairs` if any were kept, else raise NoPairsError saying what to loosen."""
    if len(pairs) > 0:
        return pairs
    where = f"step {step}: " if step is not None else ""
    n = pairs.n_candidates
    if n == 0:
        raise NoPairsError(
            f"{where}no candidate pairs: every prompt has fewer than 2 scored images; "
            f"raise generate.images_per_prompt"
        )
    if isinstance(filt, ThresholdFilter):
        if filt.tau > 0:
            hint = f"lower filter.tau (now {filt.tau:g})"
        else:
            hint = "change filter.score_type (all candidates tie on this score)"
    elif isinstance(filt, AngleFilter):
        hint = (
            f"widen the window: lower filter.c1 (now {filt.c1:g}) or raise filter.c2 (now {filt.c2:g}), "
            f"or pick another preset ({', '.join(ANGLE_PRESETS)})"
        )
    else:
        hint = "loosen the filter settings"
    raise NoPairsError(
        f"{where}no pair passed the filter ({filt.describe()}) out of {n} candidate pairs; "
        f"{hint}, or generate more images per prompt (generate.images_per_prompt)"
    )


def make_filter(cfg: Mapping[str, Any]) -> PairFilter:
    """Filter from a config with `kind` (threshold | angle) and its fields; `name` is ignored."""
    if cfg is None or not hasattr(cfg, "items"):
        raise ConfigError(f"filter must be a mapping with a 'kind' key, got {cfg!r}")
    items = {str(k): v for k, v in cfg.items()}
    kind = items.pop("kind", None)
    items.pop("name", None)
    if kind not in FILTER_KINDS:
        raise ConfigError(f"filter.kind must be one of {', '.join(FILTER_KINDS)}, got {kind!r}")
    cls = FILTER_KINDS[kind]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(items) - set(allowed))
    if unknown:
        raise ConfigError(
            f"filter.{unknown[0]} is not a setting of the {kind} filter; its settings: {', '.join(allowed)}"
        )
    missing = [f.name for f in fields(cls) if f.name not in items and f.default is MISSING]
    if missing:
        raise ConfigError(f"filter.{missing[0]} is required for the {kind} filter")
    return cls(**items)
