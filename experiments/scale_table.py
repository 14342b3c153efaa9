"""Issue 27's table: per setting and variant, Δ = final − start over verify's units (mean ± σ), for the scorer's
CLIP-T (the CLIP that labelled the pairs, on the evaluation prompts), the evaluator's TS / IS and the oracle's
prompt-following / identity, the TS transfer (evaluator ΔTS ÷ scorer ΔTS: how much of the labelling CLIP's gain an
independent CLIP sees) and the kept fraction of the candidate pairs.

    python experiments/scale_table.py n16=results/fast-preset/default/verify.json n64=results/scale-check/n64/verify.json \
        [--plot OUT.png]

`--plot`: one panel per measure, the variants side by side, each setting's per-unit Δs (dots) and mean (bar), so
where DPO's movement goes (scorer → evaluator → oracle) is seen at a glance.
"""

from __future__ import annotations

import json
import sys

import numpy as np

COLUMNS = [("ΔTS scorer", "eval/clip_t"), ("ΔTS evaluator", "eval/evaluator_ts"), ("ΔIS evaluator", "eval/evaluator_is"),
           ("Δprompt oracle", "eval/oracle_prompt"), ("Δidentity oracle", "eval/oracle_identity")]
VARIANTS = {"ts": "DPO-TS", "is": "DPO-IS", "mix": "DPO-MIX"}


def runs_of(units: list[dict], variant: str) -> list[dict]:
    """The variant's S-step runs of every unit (S = 1 runs left out)."""
    return [u["variants"][k] for u in units for k in u["variants"] if k.startswith(f"{variant}_s") and
            not k.endswith("_s1")]


def deltas(runs: list[dict], key: str) -> np.ndarray:
    """Per run: Δ = final − start of `key`."""
    return np.array([r["final"][key]["mean"] - r["start"][key]["mean"] for r in runs])


def plot(settings: list[tuple[str, list[dict]]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(3.3 * len(COLUMNS), 3.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(settings)
    for ax, (label, key) in zip(axes[0], COLUMNS):
        for i, (v, name) in enumerate(VARIANTS.items()):
            for j, (setting, units) in enumerate(settings):
                d = deltas(runs_of(units, v), key)
                x = i - 0.4 + width * (j + 0.5)
                ax.scatter(np.full(len(d), x), d, s=10, color=colours[j % len(colours)], alpha=0.6,
                           label=setting if i == 0 else None)
                ax.hlines(d.mean(), x - width / 2.5, x + width / 2.5, color=colours[j % len(colours)], lw=2.5)
        ax.axhline(0, color="0.3", lw=0.6, ls=":")
        ax.set_xticks(range(len(VARIANTS)), list(VARIANTS.values()), fontsize=8)
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel("Δ final − start (dots: units; bars: mean)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(args: list[str]) -> None:
    out = None
    if "--plot" in args:
        i = args.index("--plot")
        out, args = args[i + 1], args[:i] + args[i + 2:]
    settings = [(label, json.load(open(path))["units"]) for label, path in (a.rsplit("=", 1) for a in args)]
    print("| variant | setting | units | " + " | ".join(c for c, _ in COLUMNS) + " | TS transfer | kept / candidates |")
    print("|---|---|---|" + "---|" * (len(COLUMNS) + 2))
    for v, name in VARIANTS.items():
        for label, units in settings:
            runs = runs_of(units, v)
            cells, means = [], {}
            for _, key in COLUMNS:
                d = deltas(runs, key)
                means[key] = d.mean()
                cells.append(f"{d.mean():+.4f} ± {d.std(ddof=1) if len(d) > 1 else 0:.4f}")
            # how much of the labelling CLIP's TS gain an independent CLIP sees
            cells.append(f"{means['eval/evaluator_ts'] / means['eval/clip_t']:+.2f}")
            kept = np.mean([r["final"]["pairs/kept"] / r["final"]["pairs/candidates"] for r in runs])
            print(f"| {name} | {label} | {len(runs)} | " + " | ".join(cells) + f" | {kept:.2f} |")
    if out:
        plot(settings, out)


if __name__ == "__main__":
    main(sys.argv[1:])
