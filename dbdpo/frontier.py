"""The personalization baseline's trade-off curve and its Pareto frontier, and where DPO lands against it.

Points are (IS, TS) = (CLIP-I, CLIP-T) means of an evaluation. The frontier is the set of non-dominated baseline
checkpoints (maximising both); a DPO stage's margin is its TS minus the frontier's piecewise-linear TS at the
stage's IS (> 0: beyond the frontier, the paper's Figs. 6-7 reading).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def pareto_frontier(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """The non-dominated (IS, TS) points (maximising both), sorted by IS: TS falls along it."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    keep = [i for i, (a, b) in enumerate(pts)
            if not np.any((pts[:, 0] >= a) & (pts[:, 1] >= b) & ((pts[:, 0] > a) | (pts[:, 1] > b)))]
    front = np.unique(pts[keep], axis=0)
    return front[np.argsort(front[:, 0], kind="stable")]


def margin_above_frontier(front: np.ndarray, point: tuple[float, float]) -> float:
    """TS of `point` minus the frontier's piecewise-linear TS at the point's IS (> 0: beyond the frontier).

    Left of the frontier the bound is its highest TS (flat); right of it, the TS of its highest-IS point (a point
    with more IS than any checkpoint is beyond only if its TS is at least that point's).
    """
    x, y = float(point[0]), float(point[1])
    if x <= front[0, 0]:
        return y - front[0, 1]
    if x >= front[-1, 0]:
        return y - front[-1, 1]
    return y - float(np.interp(x, front[:, 0], front[:, 1]))


def point(metrics: dict, is_key: str = "eval/clip_i", ts_key: str = "eval/clip_t") -> tuple[float, float]:
    return float(metrics[is_key]["mean"]), float(metrics[ts_key]["mean"])


def curve_summary(curve: dict[int, dict], stages: dict[str, dict], is_key: str = "eval/clip_i",
                  ts_key: str = "eval/clip_t") -> dict:
    """The baseline curve (step → IS, TS), its frontier, and each DPO stage's margin above it."""
    steps = sorted(curve)
    pts = [point(curve[s], is_key, ts_key) for s in steps]
    front = pareto_frontier(pts)
    return {
        "keys": [is_key, ts_key],
        "curve": [{"step": s, "is": p[0], "ts": p[1]} for s, p in zip(steps, pts)],
        "frontier": [{"is": float(a), "ts": float(b)} for a, b in front],
        "margins": {name: margin_above_frontier(front, point(m, is_key, ts_key)) for name, m in stages.items()
                    if name != "personalize" and is_key in m and ts_key in m},
    }


def plot_pareto(summary: dict, trajectory: list[tuple[str, tuple[float, float]]], path: str | Path,
                title: str = "") -> Path:
    """TS against IS: the baseline checkpoints (labelled with their steps), their frontier, the DPO trajectory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    pts = np.array([[c["ts"], c["is"]] for c in summary["curve"]])
    ax.plot(pts[:, 0], pts[:, 1], "o-", color="grey", label="personalization checkpoints")
    for c in summary["curve"]:
        ax.annotate(str(c["step"]), (c["ts"], c["is"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = np.array([[f["ts"], f["is"]] for f in summary["frontier"]])
    ax.plot(front[:, 0], front[:, 1], "--", color="black", lw=0.8, label="Pareto frontier")
    if trajectory:
        tr = np.array([[p[1], p[0]] for _, p in trajectory])
        ax.plot(tr[:, 0], tr[:, 1], "*-", color="tab:purple", ms=9, label="DPO steps")
        for name, p in trajectory:
            ax.annotate(name, (p[1], p[0]), fontsize=7, color="tab:purple", xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel(f"TS ({summary['keys'][1]})")
    ax.set_ylabel(f"IS ({summary['keys'][0]})")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return Path(path)
