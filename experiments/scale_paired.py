"""Settings compared unit by unit on the same starts and the same evaluation noises.

    python experiments/scale_paired.py n16=A/eval_noise.json n256=B/eval_noise.json [--plot OUT.png] [--json OUT]

Each input is `experiments/eval_noise.py --json` of a `verify` run; the first setting is the reference. When the
settings share their DreamBooth starts (copied between result folders) and their evaluation seeds (`eval_noise=shared`
or the same `per_unit` seeds), a unit's Δ under setting B minus its Δ under A is final_B − final_A on the very same
start images and noises: the start's evaluation and most of the evaluation noise cancel, so the paired difference
is far less noisy than the difference of the two across-unit means.

Over the units present in every input, per DPO variant and metric, it prints each setting's pooled Δ (mean ± σ over
units) and, for every other setting, the paired difference to the reference: mean ± σ over units, the cluster
bootstrap support (fraction of unit resamples with mean difference > 0), the units whose difference is > 0, and
the σ over evaluation checks of the mean difference (the noise of a check of `--group` images per prompt, from
the per-check Δs of both inputs); then the TS transfer (evaluator ΔTS ÷ scorer ΔTS) per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_noise import METRICS, support  # noqa: E402


def load(spec: str) -> tuple[str, dict]:
    name, _, path = spec.partition("=")
    if not path:
        raise SystemExit(f"expected NAME=PATH/eval_noise.json, got {spec!r}")
    return name, json.loads(Path(path).read_text())["units"]


def compare(settings: dict[str, dict]) -> dict:
    """Per "variant/metric": each setting's per-unit pooled Δ, and each non-reference setting's paired difference
    (per unit, and per check of the across-unit mean)."""
    names = list(settings)
    units = sorted(set.intersection(*(set(u) for u in settings.values())))
    variants = sorted(set.intersection(*(set(settings[n][u]) for n in names for u in units)))
    out = {"units": units, "settings": names, "rows": {}}
    for v in variants:
        for m in METRICS:
            pooled = {n: np.array([settings[n][u][v][m]["pooled"] for u in units]) for n in names}
            checks = {n: np.array([settings[n][u][v][m]["groups"] for u in units]) for n in names}
            row = {"pooled": {n: x.tolist() for n, x in pooled.items()}, "diff": {}}
            ref = names[0]
            for n in names[1:]:
                d = pooled[n] - pooled[ref]
                k = min(checks[n].shape[1], checks[ref].shape[1])
                per_check = (checks[n][:, :k] - checks[ref][:, :k]).mean(axis=0)
                row["diff"][n] = {"per_unit": d.tolist(), "mean": float(d.mean()), "sd": float(d.std(ddof=1)),
                                  "support": support(d), "units_positive": int((d > 0).sum()),
                                  "check_noise": float(per_check.std(ddof=1)) if k > 1 else float("nan")}
            out["rows"][f"{v}/{m}"] = row
    return out


def table(res: dict) -> str:
    names, ref = res["settings"], res["settings"][0]
    lines = [f"{len(res['units'])} units: {', '.join(res['units'])}", ""]
    head = "| variant | metric | " + " | ".join(f"Δ {n}" for n in names) + " | " + " | ".join(
        f"{n} − {ref} (± σ over units) | support | units > 0 | σ of a check" for n in names[1:]) + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for key, row in res["rows"].items():
        v, m = key.split("/")
        cells = [f"{np.mean(row['pooled'][n]):+.4f} ± {np.std(row['pooled'][n], ddof=1):.4f}" for n in names]
        for n in names[1:]:
            d = row["diff"][n]
            cells += [f"{d['mean']:+.4f} ± {d['sd']:.4f}", f"{d['support']:.2f}",
                      f"{d['units_positive']} of {len(d['per_unit'])}", f"{d['check_noise']:.4f}"]
        lines.append(f"| {v.split('_s')[0].upper()} | {METRICS[m]} | " + " | ".join(cells) + " |")
    lines += ["", "| variant | " + " | ".join(f"TS transfer {n}" for n in names) + " |",
              "|---|" + "---|" * len(names)]
    for v in sorted({k.split("/")[0] for k in res["rows"]}):
        ev, sc = res["rows"][f"{v}/evaluator_ts"]["pooled"], res["rows"][f"{v}/scorer_ts"]["pooled"]
        lines.append(f"| {v.split('_s')[0].upper()} | " + " | ".join(
            f"{np.mean(ev[n]) / np.mean(sc[n]):+.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    """One panel per variant × metric: each unit's pooled Δ under every setting (grey lines), the mean (black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = res["settings"]
    variants = sorted({k.split("/")[0] for k in res["rows"]})
    metrics = ["scorer_ts", "evaluator_ts", "evaluator_is", "oracle_prompt", "oracle_identity"]
    fig, axes = plt.subplots(len(variants), len(metrics), figsize=(2.9 * len(metrics), 2.5 * len(variants)),
                             squeeze=False, sharex=True)
    x = np.arange(len(names))
    for i, v in enumerate(variants):
        for j, m in enumerate(metrics):
            ax = axes[i][j]
            p = np.array([res["rows"][f"{v}/{m}"]["pooled"][n] for n in names])  # settings × units
            ax.plot(x, p, color="0.65", lw=0.9, marker="o", ms=3)
            ax.plot(x, p.mean(axis=1), color="k", lw=2.2, marker="s", ms=5)
            ax.axhline(0, color="0.3", lw=0.6, ls=":")
            ax.set_title(f"{v.split('_s')[0].upper()}: {METRICS[m]}", fontsize=9)
            ax.set_xticks(x, names, fontsize=8)
            if j == 0:
                ax.set_ylabel("Δ final − start")
    fig.suptitle("Δ per unit (grey, same starts and evaluation noises) and mean (black) by setting", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="+", help="NAME=PATH/eval_noise.json, the reference first")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if len(a.settings) < 2:
        raise SystemExit("give at least two settings: the reference and one to compare")
    res = compare(dict(load(s) for s in a.settings))
    if not res["units"]:
        raise SystemExit("the settings have no unit in common")
    print(table(res), end="")
    if a.plot:
        plot(res, a.plot)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
