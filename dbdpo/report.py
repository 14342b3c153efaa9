"""`python -m dbdpo.report DIR... [--out DIR]`: turn runs and sweeps into the paper's tables and figures.

Reads every run under the given folders (single runs, Hydra multiruns, submitit sweeps, any mix: a run is a
folder with `metrics.json` and `config.yaml`), groups them by experiment (`experiment=<name>` of their overrides;
`default` without one) and, within an experiment, by the keys their overrides sweep (every override whose value
differs between the experiment's runs, except the replicate keys `concept` and `seed`, over which figures are
mean ± σ). Writes into `--out` (default: the first DIR):

- `report.md`: per experiment, per variant and stage, IS / TS (CLIP-I / CLIP-T, and a judge's evaluator / oracle
  figures where present) as mean ± σ over concepts and seeds, with the kept fraction of the candidate pairs;
  the baseline frontier (the mean personalization curve of runs with `method.eval_at`) and each variant's
  final margin above it, with the fraction of runs beyond their own frontier;
- `runs.csv`: every run × stage × metric (mean and std of that run's evaluation);
- `<experiment>_pareto.png`: TS against IS — baseline checkpoints and frontier, each variant's trajectory over
  its steps (mean, with ±σ bars);
- `<experiment>_sweep.png` for a swept experiment: final IS, TS and the kept fraction against the swept key (the
  paper's Figs. 1b λ, 1c S, 5a presets, 5b M, 5c N × S, 11 τ, 12/13 long prompts).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DbdpoError
from .frontier import margin_above_frontier, pareto_frontier

REPLICATE_KEYS = ("concept", "seed")
IGNORED_KEYS = ("progress", "logger", "hydra.", "paths.", "device", "trainer.devices", "trainer.accelerator")
MAIN = ("eval/clip_i", "eval/clip_t")


@dataclass
class Run:
    path: Path
    metrics: dict
    overrides: dict[str, str]
    experiment: str = "default"
    variant: tuple = field(default_factory=tuple)

    @property
    def stages(self) -> dict[str, dict]:
        return self.metrics.get("stages", {})

    def replicate(self) -> str:
        return f"{self.metrics.get('concept', self.overrides.get('concept', '?'))}/seed{self.overrides.get('seed', 0)}"


def _overrides(run_dir: Path, metrics: dict) -> list[str]:
    if "overrides" in metrics:
        return list(metrics["overrides"])
    f = run_dir / ".hydra" / "overrides.yaml"
    if f.exists():
        from omegaconf import OmegaConf

        return [str(o) for o in OmegaConf.load(f)]
    return []


def find_runs(dirs: Sequence[str | Path]) -> list[Run]:
    """Every run folder (with metrics.json) under `dirs`, in path order."""
    from .io import read_json

    found: dict[Path, Run] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise DbdpoError(f"{d}: not a folder of runs")
        for f in sorted(d.rglob("metrics.json")):
            if any(part.startswith(".") or part == "checkpoints" for part in f.relative_to(d).parts[:-1]):
                continue
            metrics = read_json(f)
            if "stages" not in metrics:
                continue
            ov = {}
            for o in _overrides(f.parent, metrics):
                k, _, v = o.lstrip("+~").partition("=")
                ov[k] = v
            found[f.parent.resolve()] = Run(f.parent, metrics, ov, ov.get("experiment", "default"))
    if not found:
        raise DbdpoError(f"no runs (folders with metrics.json) under {', '.join(map(str, dirs))}")
    return list(found.values())


def _ignored(key: str) -> bool:
    return key in REPLICATE_KEYS or any(key == k or key.startswith(k) for k in IGNORED_KEYS)


def group(runs: list[Run]) -> dict[str, dict[tuple, list[Run]]]:
    """experiment → variant (the swept (key, value) pairs) → runs."""
    out: dict[str, dict[tuple, list[Run]]] = {}
    by_exp: dict[str, list[Run]] = {}
    for r in runs:
        by_exp.setdefault(r.experiment, []).append(r)
    for exp, rs in by_exp.items():
        keys = sorted({k for r in rs for k in r.overrides if not _ignored(k) and k != "experiment"})
        swept = [k for k in keys if len({r.overrides.get(k) for r in rs}) > 1]
        for r in rs:
            r.variant = tuple((k, r.overrides.get(k, "")) for k in swept)
            out.setdefault(exp, {}).setdefault(r.variant, []).append(r)
    return out


def variant_name(variant: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant) or "all runs"


def _mean_std(xs: list[float]) -> tuple[float, float, int]:
    """(mean, σ, n) of the values present (`evaluate.mean_std`); NaN, NaN, 0 when there are none."""
    from .evaluate import mean_std

    a = [x for x in xs if x is not None and not math.isnan(x)]
    if not a:
        return math.nan, math.nan, 0
    m = mean_std(np.asarray(a))
    return m["mean"], m["std"], m["n"]


def metric_keys(runs: list[Run]) -> list[str]:
    """CLIP-I / CLIP-T first, then any other evaluation figure the runs hold (a judge's)."""
    extra = sorted({k for r in runs for v in r.stages.values() for k, x in v.items()
                    if k.startswith("eval/") and k not in MAIN and isinstance(x, dict) and "mean" in x})
    return [*MAIN, *extra]


def kept_fraction(stage: dict) -> float | None:
    if stage.get("pairs/candidates"):
        return stage["pairs/kept"] / stage["pairs/candidates"]
    return None


def stage_order(runs: list[Run]) -> list[str]:
    names = {s for r in runs for s in r.stages}
    return sorted(names, key=lambda s: (s != "personalize", int(s.split("_")[1]) if s.startswith("step_") else 0))


def summarize(runs: list[Run]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """stage → metric (and `pairs/kept_fraction`) → (mean, σ, n) over the runs."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    keys = metric_keys(runs)
    for stage in stage_order(runs):
        row = {}
        for k in keys:
            row[k] = _mean_std([r.stages[stage][k]["mean"] for r in runs
                                if stage in r.stages and isinstance(r.stages[stage].get(k), dict)])
        row["pairs/kept_fraction"] = _mean_std([kept_fraction(r.stages[stage]) for r in runs if stage in r.stages])
        out[stage] = row
    return out


def baseline(runs: list[Run]) -> dict | None:
    """The mean personalization curve (IS, TS by step over the runs that have one) and its frontier."""
    curves = [r.metrics["baseline_curve"] for r in runs if "baseline_curve" in r.metrics]
    if not curves:
        return None
    steps = sorted({c["step"] for cu in curves for c in cu["curve"]})
    pts = []
    for s in steps:
        at = [c for cu in curves for c in cu["curve"] if c["step"] == s]
        pts.append((s, float(np.mean([c["is"] for c in at])), float(np.mean([c["ts"] for c in at]))))
    front = pareto_frontier([(i, t) for _, i, t in pts])
    return {"curve": pts, "frontier": front, "runs": len(curves)}


def final_stage(runs: list[Run]) -> str:
    return stage_order(runs)[-1]


def beyond(runs: list[Run], base: dict | None) -> dict | None:
    """The variant's final mean (IS, TS) against the mean frontier, and the fraction of runs beyond their own."""
    if base is None:
        return None
    last = final_stage(runs)
    is_, ts = (summarize(runs)[last][k][0] for k in MAIN)
    if math.isnan(is_) or math.isnan(ts):
        return None
    own = [r.metrics["baseline_curve"]["margins"].get(last) for r in runs if "baseline_curve" in r.metrics]
    own = [m for m in own if m is not None]
    return {"stage": last, "margin": margin_above_frontier(base["frontier"], (is_, ts)),
            "fraction_beyond": float(np.mean([m > 0 for m in own])) if own else None, "n": len(own)}


# ---- outputs ----------------------------------------------------------------------------------------------

def _fmt(x: tuple[float, float, int], digits: int = 4) -> str:
    m, s, n = x
    return "–" if n == 0 else f"{m:.{digits}f} ± {s:.{digits}f}"


def experiment_markdown(exp: str, variants: dict[tuple, list[Run]], figures: list[str]) -> str:
    runs = [r for rs in variants.values() for r in rs]
    keys = metric_keys(runs)
    lines = [f"## {exp}", "", f"{len(runs)} runs; replicates: "
             f"{', '.join(sorted({r.replicate() for r in runs}))}", ""]
    head = ["variant", "stage", "runs", *(k.removeprefix("eval/") for k in keys), "kept pairs"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, rs in variants.items():
        for stage, row in summarize(rs).items():
            n = max(v[2] for k, v in row.items() if k != "pairs/kept_fraction")
            cells = [variant_name(variant), stage, str(n), *(_fmt(row[k]) for k in keys),
                     _fmt(row["pairs/kept_fraction"], 3)]
            lines.append("| " + " | ".join(cells) + " |")
    base = baseline(runs)
    if base is not None:
        lines += ["", f"Baseline curve (mean of {base['runs']} runs' `method.eval_at` checkpoints): "
                  + ", ".join(f"step {s}: IS {i:.4f}, TS {t:.4f}" for s, i, t in base["curve"]), "",
                  "| variant | final stage | margin above the frontier (TS) | beyond? | runs beyond their own |",
                  "|---|---|---|---|---|"]
        for variant, rs in variants.items():
            b = beyond(rs, base)
            if b is None:
                continue
            frac = f"{b['fraction_beyond']:.2f} of {b['n']}" if b["fraction_beyond"] is not None else "–"
            lines.append(f"| {variant_name(variant)} | {b['stage']} | {b['margin']:+.4f} | "
                         f"{'yes' if b['margin'] > 0 else 'no'} | {frac} |")
    lines += [""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    return "\n".join(lines)


def csv_rows(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        for stage, v in r.stages.items():
            for k, x in v.items():
                mean, std = (x.get("mean"), x.get("std")) if isinstance(x, dict) else (x, None)
                if not isinstance(mean, (int, float)):
                    continue
                rows.append({"run": str(r.path), "experiment": r.experiment, "variant": variant_name(r.variant),
                             "concept": r.metrics.get("concept"), "seed": r.overrides.get("seed", ""),
                             "stage": stage, "metric": k, "mean": mean, "std": "" if std is None else std})
    return rows


def plot_experiment(exp: str, variants: dict[tuple, list[Run]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write

    runs = [r for rs in variants.values() for r in rs]
    paths = []
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    base = baseline(runs)
    if base is not None:
        ax.plot([t for _, _, t in base["curve"]], [i for _, i, _ in base["curve"]], "o-", color="grey",
                label="personalization checkpoints")
        for s, i, t in base["curve"]:
            ax.annotate(str(s), (t, i), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.plot(base["frontier"][:, 1], base["frontier"][:, 0], "--", color="black", lw=0.8, label="frontier")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, (variant, rs) in zip(colours * 10, variants.items()):
        summ = summarize(rs)
        pts = [(st, row[MAIN[0]], row[MAIN[1]]) for st, row in summ.items() if row[MAIN[0]][2]]
        if not pts:
            continue
        ax.errorbar([p[2][0] for p in pts], [p[1][0] for p in pts], xerr=[p[2][1] for p in pts],
                    yerr=[p[1][1] for p in pts], fmt="*-", color=c, ms=8, capsize=2, label=variant_name(variant))
    ax.set_xlabel("TS (CLIP-T)")
    ax.set_ylabel("IS (CLIP-I)")
    ax.set_title(exp, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths.append(atomic_write(out / f"{exp}_pareto.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110)))
    plt.close(fig)

    swept = [k for k, _ in next(iter(variants))] if variants and next(iter(variants)) else []
    if swept:
        first, rest = swept[0], swept[1:]
        lines: dict[tuple, list] = {}
        for variant, rs in variants.items():
            d = dict(variant)
            lines.setdefault(tuple((k, d[k]) for k in rest), []).append((d[first], rs))
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for c, (rest_v, items) in zip(colours * 10, lines.items()):
            items.sort(key=lambda it: _sort_key(it[0]))
            xs = [it[0] for it in items]
            for ax, key in zip(axes, (*MAIN, "pairs/kept_fraction")):
                vals = [summarize(rs) for _, rs in items]
                if key == "pairs/kept_fraction":  # the first DPO step's filter
                    ys = [v.get("step_1", {}).get(key, (math.nan, 0, 0)) for v in vals]
                else:
                    ys = [v[final_stage(rs)][key] for v, (_, rs) in zip(vals, items)]
                ax.errorbar(range(len(xs)), [y[0] for y in ys], yerr=[y[1] for y in ys], fmt="o-", color=c,
                            capsize=2, label=variant_name(rest_v) if rest else None)
                ax.set_xticks(range(len(xs)), xs, fontsize=7)
                ax.set_xlabel(first)
                ax.set_title({"eval/clip_i": "IS (final)", "eval/clip_t": "TS (final)"}.get(key, "kept fraction (step 1)"),
                             fontsize=9)
        if rest:
            axes[0].legend(fontsize=6)
        fig.suptitle(exp, fontsize=10)
        fig.tight_layout()
        paths.append(atomic_write(out / f"{exp}_sweep.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110)))
        plt.close(fig)
    return paths


def _sort_key(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def report(dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write report.md, runs.csv and the figures into `out`; returns the report's path."""
    from .io import write_text

    runs = find_runs(dirs)
    out = Path(out or dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    groups = group(runs)
    parts = [f"# dbdpo report\n\n{len(runs)} runs from {', '.join(str(d) for d in dirs)}; figures are mean ± σ "
             "over concepts and seeds.\n"]
    for exp, variants in sorted(groups.items()):
        figures = plot_experiment(exp, variants, out)
        parts.append(experiment_markdown(exp, variants, [str(f) for f in figures]))
    buf = io.StringIO()
    rows = csv_rows(runs)
    writer = csv.DictWriter(buf, fieldnames=["run", "experiment", "variant", "concept", "seed", "stage", "metric",
                                             "mean", "std"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "runs.csv", buf.getvalue())
    return write_text(out / "report.md", "\n".join(parts))


def main(argv: list[str] | None = None) -> None:
    from .cli import report_errors

    ap = argparse.ArgumentParser(prog="python -m dbdpo.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="run or multirun folders")
    ap.add_argument("--out", default=None, help="where report.md, runs.csv and the PNGs go (default: the first DIR)")
    args = ap.parse_args(argv)
    path = report_errors(report, args.dirs, args.out)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
