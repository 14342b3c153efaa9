"""How much of `verify`'s Δ is measurement noise of the evaluation itself?

    python experiments/eval_noise.py RESULTS_DIR [--group 4] [--json OUT.json] [--plot OUT.png]

Run `verify` with a larger evaluation (e.g. `eval.images_per_prompt=32` in `train_overrides`). Every sample's noise
is seeded by (prompt, sample index, eval seed), so images 0–3 of that evaluation are exactly the images of
`verify`'s own 4-per-prompt check, and images 4–7, 8–11, … are further checks of the same kind with fresh noise.
For each unit (concept × seed) and DPO variant, Δ = final − start (the DreamBooth start vs the last DPO step, on
the same evaluation seeds) is computed

- on each group of `--group` images per prompt (the group 0 figure is what `verify` reports), giving the
  spread of a `group`-image check over its sampling noise (σ_noise, per unit, then averaged);
- on all images (the pooled figure).

The evaluation seeds depend on (prompt, sample index, `eval.seed`) only, and world concepts share their evaluation
prompts, so every unit's check `g` draws the same noises: a check's noise is shared by all units and does not
average out over them. The noise of `verify`'s across-unit figure is therefore measured as the spread over checks
of the across-unit mean Δ_g (not as one unit's spread ÷ √units).

Across units it prints, per variant and metric: the mean pooled Δ ± σ over units, the cluster-bootstrap support
(fraction of unit resamples with mean Δ > 0), verify's figure (the check-0 mean over units) ± σ over units, the
σ over checks of the across-unit mean (the noise of that figure), the naive σ that assumes independent noise per
unit, and the checks whose across-unit mean is > 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from dbdpo.generate import load_samples
from dbdpo.io import read_json
from dbdpo.world.concepts import parse_world_concept
from dbdpo.world.judge import look_labels, oracle_scores
from dbdpo.world.oracle import load_oracle, predict

ORACLE = Path(__file__).resolve().parents[1] / "dbdpo" / "assets" / "world" / "oracle.safetensors"
METRICS = {"scorer_ts": "TS scorer", "evaluator_ts": "TS evaluator", "evaluator_is": "IS evaluator",
           "oracle_prompt": "oracle prompt-following", "oracle_identity": "oracle identity"}


def _shard_scores(folder: Path, key: str) -> np.ndarray:
    return np.concatenate([read_json(f)[key] for f in sorted(folder.glob("*.json"))])


def per_image(eval_dir: Path, oracle, holder: str, look: dict) -> dict[str, np.ndarray]:
    """Per image of an evaluation: scorer TS, evaluator IS / TS, oracle prompt-following (NaN when the prompt
    asks for no attribute) and identity; with the prompt and sample indices."""
    s = load_samples(eval_dir / "samples")
    images = np.stack([np.asarray(im) for im in s.load_images()])
    o = oracle_scores(predict(oracle, images), list(s.prompts), holder, look)
    return {"prompt": np.asarray(s.prompt_index), "sample": np.asarray(s.sample_index),
            "scorer_ts": _shard_scores(eval_dir / "scores", "ts"),
            "evaluator_ts": _shard_scores(eval_dir / "evaluator_scores", "ts"),
            "evaluator_is": _shard_scores(eval_dir / "evaluator_scores", "is"),
            "oracle_prompt": o["follow"], "oracle_identity": o["identity"]}


def prompt_means(d: dict[str, np.ndarray], metric: str, keep: np.ndarray) -> np.ndarray:
    v, p = d[metric][keep], d["prompt"][keep]
    ok = ~np.isnan(v)
    return np.array([v[ok & (p == q)].mean() for q in np.unique(p[ok])])


def figure(d: dict[str, np.ndarray], metric: str, keep: np.ndarray) -> float:
    """The evaluation's figure on the kept images: mean over prompts of the per-prompt mean (NaNs dropped)."""
    return float(prompt_means(d, metric, keep).mean())


def unit_deltas(start: dict, final: dict, group: int) -> dict[str, dict]:
    """Per metric: Δ = figure(final) − figure(start) on each check of `group` images per prompt ("groups") and on
    all images ("pooled"); "start_sd" / "start_sd_pooled": the start's σ over prompts (claim 2's IS margin)."""
    n = int(start["sample"].max()) + 1
    groups = [np.arange(g * group, (g + 1) * group) for g in range(n // group)]
    # the kept images of each check, then of all: (start, final) masks
    masks = [(np.isin(start["sample"], g), np.isin(final["sample"], g)) for g in groups]
    masks.append((np.ones(len(start["sample"]), bool), np.ones(len(final["sample"]), bool)))
    out = {}
    for m in METRICS:
        d, sd = [], []
        for keep_start, keep_final in masks:
            s = prompt_means(start, m, keep_start)
            d.append(figure(final, m, keep_final) - float(s.mean()))
            sd.append(float(s.std(ddof=1)))
        out[m] = {"groups": d[:-1], "pooled": d[-1], "start_sd": sd[:-1], "start_sd_pooled": sd[-1]}
    return out


JUDGE_METRICS = {"evaluator": {"is": "evaluator_is", "ts": "evaluator_ts"},
                 "oracle": {"is": "oracle_identity", "ts": "oracle_prompt"}}
VERDICT_CLAIMS = ("2_dpo_ts_raises_ts", "3_dpo_is_raises_is", "4_orderings")


def verdicts(units: dict, check: int | None) -> dict[str, dict[str, bool]]:
    """verify's claims 2–4 (`dbdpo.world.claims.aggregate`, the same code as verify's report) by each judge, on
    one check's Δs (`check` = its index) or on the pooled Δs (`check` = None). Needs the ts/is/mix variants at
    one S in every unit."""
    from dbdpo.world.claims import aggregate

    names = list(units)
    s = max(int(v.rsplit("_s", 1)[1]) for u in units.values() for v in u["variants"])

    def pick(r: dict, key: str) -> float:
        return r[key] if check is None else r["groups"][check]

    out: dict[str, dict[str, bool]] = {}
    for judge, k in JUDGE_METRICS.items():
        figs = {f"d_{v}_{m}": np.array([pick(units[n]["variants"][f"{v}_s{s}"][k[m]], "pooled") for n in names])
                for v in ("ts", "is", "mix") for m in ("is", "ts")}
        ts_is = [units[n]["variants"][f"ts_s{s}"][k["is"]] for n in names]
        figs["sigma"] = np.array([r["start_sd_pooled"] if check is None else r["start_sd"][check] for r in ts_is])
        zeros = np.zeros(len(names))  # claims 1 and 5 need the DreamBooth curve: not computed here
        figs.update(rho_is=zeros, rho_ts=zeros, margin=zeros)
        claims = aggregate(figs, [n.split("/")[0] for n in names])
        out[judge] = {c: bool(claims[c]["holds"]) for c in VERDICT_CLAIMS}
    return out


def support(x: np.ndarray, n_boot: int = 10000, seed: int = 0) -> float:
    """Cluster bootstrap over units: the fraction of resamples whose mean is > 0."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    return float((x[idx].mean(1) > 0).mean())


def plot(units: dict, variants: list[str], group: int, path: Path) -> None:
    """One panel per variant × metric: for each unit the Δ of every `group`-image check (grey dots; verify's own
    check ringed) and the pooled Δ over all images (black bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["evaluator_ts", "evaluator_is", "oracle_prompt", "oracle_identity"]
    names = list(units)
    fig, axes = plt.subplots(len(variants), len(metrics), figsize=(3.6 * len(metrics), 2.6 * len(variants)),
                             squeeze=False, sharex=True)
    for i, v in enumerate(variants):
        for j, m in enumerate(metrics):
            ax = axes[i][j]
            for x, k in enumerate(names):
                r = units[k]["variants"].get(v, {}).get(m)
                if r is None:
                    continue
                g = np.asarray(r["groups"])
                ax.scatter(np.full(len(g), x) + np.linspace(-0.2, 0.2, len(g)), g, s=9, color="0.6")
                ax.scatter([x - 0.2], [g[0]], s=40, facecolors="none", edgecolors="tab:red")
                ax.hlines(r["pooled"], x - 0.3, x + 0.3, color="k", lw=2)
            ax.axhline(0, color="0.3", lw=0.6, ls=":")
            ax.set_title(f"{v}: {METRICS[m]}", fontsize=9)
            if j == 0:
                ax.set_ylabel("Δ final − start")
            ax.set_xticks(range(len(names)), [n.replace("/seed", " s") for n in names], rotation=60, fontsize=7)
    fig.suptitle(f"Δ of each {group}-image check (grey; red ring: verify's own) and pooled over all images (black)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir", type=Path)
    ap.add_argument("--group", type=int, default=4, help="images per prompt of the check whose noise is measured")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="per unit: each check's Δ (dots) and the pooled Δ")
    a = ap.parse_args(argv)
    oracle = load_oracle(str(ORACLE), "cpu")
    units: dict[str, dict] = {}
    for unit in sorted((a.results_dir / "runs").glob("*/seed*")):
        starts = sorted((unit / "db").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        if not starts:
            continue
        for vdir in sorted(unit.glob("*_s[0-9]*")):
            S = int(vdir.name.rsplit("_s", 1)[1])
            fin = vdir / f"step_{S}" / "eval"
            if not (fin / "judge.json").exists():
                continue
            cfg = OmegaConf.load(vdir / "config.yaml")
            holder = f"{cfg.concept.token} {cfg.concept.class_name}"
            look = look_labels(parse_world_concept(cfg.concept).look)
            key = f"{unit.parent.name}/{unit.name}"
            if key not in units:
                units[key] = {"start": per_image(starts[-1] / "eval", oracle, holder, look), "variants": {}}
            units[key]["variants"][vdir.name] = unit_deltas(units[key]["start"], per_image(fin, oracle, holder, look),
                                                            a.group)
            print(f"{key} {vdir.name}", file=sys.stderr)
    variants = sorted({v for u in units.values() for v in u["variants"]})
    n_img = {int(u["start"]["sample"].max()) + 1 for u in units.values()}
    print(f"{len(units)} units; {sorted(n_img)} images per prompt pooled; checks of {a.group} images per prompt\n")
    print(f"| variant | metric | Δ pooled (mean ± σ over units) | support | verify's Δ (check 0) ± σ over units "
          f"| σ over checks of the mean Δ | naive σ (independent noise) | checks with mean Δ > 0 |")
    print("|---|---|---|---|---|---|---|---|")
    summary = {}
    for v in variants:
        for m, label in METRICS.items():
            rows = [u["variants"][v][m] for u in units.values() if v in u["variants"]]
            pooled = np.array([r["pooled"] for r in rows])
            first = np.array([r["groups"][0] for r in rows])
            groups = np.array([r["groups"] for r in rows])  # units × checks
            naive = float(np.sqrt(np.mean(groups.std(axis=1, ddof=1) ** 2)) / np.sqrt(len(rows)))
            per_check = groups.mean(axis=0)
            summary[f"{v}/{m}"] = {"pooled_mean": float(pooled.mean()), "pooled_sd": float(pooled.std(ddof=1)),
                                   "support": support(pooled), "first_mean": float(first.mean()),
                                   "first_sd": float(first.std(ddof=1)), "check_means": per_check.tolist(),
                                   "noise_shared": float(per_check.std(ddof=1)), "noise_naive": naive,
                                   "checks_positive": int((per_check > 0).sum()), "units": len(rows)}
            s = summary[f"{v}/{m}"]
            print(f"| {v} | {label} | {s['pooled_mean']:+.4f} ± {s['pooled_sd']:.4f} | {s['support']:.2f} "
                  f"| {s['first_mean']:+.4f} ± {s['first_sd']:.4f} | {s['noise_shared']:.4f} | {naive:.4f} "
                  f"| {s['checks_positive']} of {len(per_check)} |")
    verdict = None
    last_s = max(int(v.rsplit("_s", 1)[1]) for v in variants)
    if all(f"{v}_s{last_s}" in u["variants"] for u in units.values() for v in ("ts", "is", "mix")):
        n_checks = len(next(iter(units.values()))["variants"][variants[0]]["evaluator_ts"]["groups"])
        per_check = [verdicts(units, g) for g in range(n_checks)]
        pooled_v = verdicts(units, None)
        verdict = {"pooled": pooled_v, "checks": per_check}
        print(f"\n| claim | judge | verify's check (check 0) | pooled ({sorted(n_img)[0]} images per prompt) "
              f"| checks in which it holds |")
        print("|---|---|---|---|---|")
        for c in VERDICT_CLAIMS:
            for judge in JUDGE_METRICS:
                held = [v[judge][c] for v in per_check]
                print(f"| {c} | {judge} | {'holds' if held[0] else 'does not hold'} "
                      f"| {'holds' if pooled_v[judge][c] else 'does not hold'} | {sum(held)} of {len(held)} |")
        agree = [sum(v["evaluator"][c] == v["oracle"][c] for c in VERDICT_CLAIMS) for v in per_check]
        print(f"\noracle agrees with the evaluator on claims 2–4, per check: {agree} (of 3); pooled: "
              f"{sum(pooled_v['evaluator'][c] == pooled_v['oracle'][c] for c in VERDICT_CLAIMS)}")
    if a.plot:
        plot(units, variants, a.group, a.plot)
    if a.json:
        a.json.write_text(json.dumps({"units": {k: u["variants"] for k, u in units.items()}, "summary": summary,
                                      "verdicts": verdict}, indent=1))


if __name__ == "__main__":
    main()
