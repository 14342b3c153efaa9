"""The paper's claims as computations on verify's numbers (pure functions: tested on hand-made values).

A *unit* is one concept × seed: the DreamBooth curve `db` = [(step, metrics)], and `variants` =
{"ts_s2": {"start": metrics, "final": metrics}, "ts_s1": ..., ...}, where metrics holds the judges'
{"eval/evaluator_is": {"mean", "std"}, ...}. A judge maps IS / TS to metric names: the evaluator CLIP
(IS, TS) or the oracle (identity, prompt-following). The main runs are those of the largest S (`<v>_s<S>`); a
run of a subset of the variants (`verify variants=[ts,is]`) gets the claims its variants can decide, the others
are left out (claim 4 needs all three, claim 2 DPO-TS, claim 3 DPO-IS, claim 6 the S = 1 runs).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..frontier import margin_above_frontier, pareto_frontier  # noqa: F401  (re-exported)

JUDGES = {
    "evaluator": {"is": "eval/evaluator_is", "ts": "eval/evaluator_ts"},
    "oracle": {"is": "eval/oracle_identity", "ts": "eval/oracle_prompt"},
}
VARIANTS = ("ts", "is", "mix")
CLAIMS = {
    "1_dreambooth_trades_ts_for_is": "DreamBooth trades TS for IS along training: rank correlation with steps "
                                     "ρ(IS) > 0 and ρ(TS) < 0 (figure: ρ(IS) − ρ(TS))",
    "2_dpo_ts_raises_ts": "DPO-TS raises TS over its start checkpoint (figure: ΔTS), IS not lower by more than "
                          "1σ of the checkpoint's spread over prompts",
    "3_dpo_is_raises_is": "DPO-IS raises IS (figure: ΔIS)",
    "4_orderings": "ΔTS: TS > MIX > IS and ΔIS: IS > MIX > TS (figure: fraction of units with both orderings)",
    "5_beyond_frontier": "a DPO variant lies above the DreamBooth Pareto frontier for most concepts "
                         "(figure: best margin above the frontier's TS)",
    "6_s2_beats_s1": "S=2 beats S=1 at equal DPO compute on the variant's own objective "
                     "(TS, IS, TS+IS; figure: objective(S=2) − objective(S=1))",
    "7_oracle_agrees": "the oracle agrees in direction with the evaluator on claims 1–6 (figure: fraction agreeing)",
}


def value(metrics: dict, key: str) -> float:
    v = metrics[key]
    return float(v["mean"] if isinstance(v, dict) else v)


def spread(metrics: dict, key: str) -> float:
    v = metrics[key]
    return float(v.get("std", 0.0)) if isinstance(v, dict) else 0.0


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    def ranks(a):
        a = np.asarray(a, dtype=np.float64)
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=np.float64)
        for v in np.unique(a):  # ties share their mean rank
            r[a == v] = r[a == v].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _ms(xs) -> dict[str, float]:
    a = np.asarray(list(xs), dtype=np.float64)
    return {"mean": float(a.mean()) if len(a) else float("nan"),
            "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a))}


def _delta(unit: dict, variant: str, key: str) -> float:
    v = unit["variants"][variant]
    return value(v["final"], key) - value(v["start"], key)


def main_variants(unit: dict) -> tuple[int, list[str]]:
    """(S of the main runs = the largest S run, the variants of VARIANTS run at that S, in VARIANTS' order)."""
    S = max(int(name.rsplit("_s", 1)[1]) for name in unit["variants"])
    return S, [v for v in VARIANTS if f"{v}_s{S}" in unit["variants"]]


def unit_figures(unit: dict, judge: str = "evaluator") -> dict[str, float]:
    """The per-unit numbers every claim is built from (rank correlations, Δs, frontier margin, S − S=1); the Δs
    only of the variants run."""
    k = JUDGES[judge]
    S, variants = main_variants(unit)
    steps = [s for s, _ in unit["db"]]
    f = {"rho_is": spearman(steps, [value(m, k["is"]) for _, m in unit["db"]]),
         "rho_ts": spearman(steps, [value(m, k["ts"]) for _, m in unit["db"]]),
         # every variant starts from the same checkpoint: its spread over prompts is claim 2's IS margin
         "sigma": spread(unit["variants"][f"{variants[0]}_s{S}"]["start"], k["is"])}
    for v in variants:
        for m in ("is", "ts"):
            f[f"d_{v}_{m}"] = _delta(unit, f"{v}_s{S}", k[m])
    front = pareto_frontier([(value(m, k["is"]), value(m, k["ts"])) for _, m in unit["db"]])
    f["margin"] = max(margin_above_frontier(front, (value(unit["variants"][f"{v}_s{S}"]["final"], k["is"]),
                                                    value(unit["variants"][f"{v}_s{S}"]["final"], k["ts"])))
                      for v in variants)

    def objective(metrics, v):
        return (value(metrics, k["ts"]) if v == "ts" else value(metrics, k["is"]) if v == "is"
                else value(metrics, k["ts"]) + value(metrics, k["is"]))

    if S > 1 and all(f"{v}_s1" in unit["variants"] for v in variants):
        for v in variants:
            f[f"s2_s1_{v}"] = (objective(unit["variants"][f"{v}_s{S}"]["final"], v)
                               - objective(unit["variants"][f"{v}_s1"]["final"], v))
    return f


def aggregate(figs: dict[str, np.ndarray], concepts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Claims 1–6 from per-unit figures (arrays aligned with `concepts`, one entry per unit); a claim whose
    variants were not run is left out."""
    out: dict[str, dict[str, Any]] = {}
    rho_is, rho_ts = figs["rho_is"], figs["rho_ts"]
    out["1_dreambooth_trades_ts_for_is"] = {
        **_ms(rho_is - rho_ts), "holds": bool(rho_is.mean() > 0 and rho_ts.mean() < 0), "rho_is": _ms(rho_is),
        "rho_ts": _ms(rho_ts)}

    ran = [v for v in VARIANTS if f"d_{v}_is" in figs]
    d = {(v, m): figs[f"d_{v}_{m}"] for v in ran for m in ("is", "ts")}
    if "ts" in ran:
        f = _ms(d["ts", "ts"])
        out["2_dpo_ts_raises_ts"] = {
            **f, "holds": bool(f["mean"] > 0 and d["ts", "is"].mean() >= -figs["sigma"].mean()),
            "delta_is": _ms(d["ts", "is"]), "start_is_sigma": _ms(figs["sigma"])}
    if "is" in ran:
        f = _ms(d["is", "is"])
        out["3_dpo_is_raises_is"] = {**f, "holds": bool(f["mean"] > 0), "delta_ts": _ms(d["is", "ts"])}

    if len(ran) == len(VARIANTS):
        mean = {key: float(v.mean()) for key, v in d.items()}
        per_unit = ((d["ts", "ts"] > d["mix", "ts"]) & (d["mix", "ts"] > d["is", "ts"])
                    & (d["is", "is"] > d["mix", "is"]) & (d["mix", "is"] > d["ts", "is"])).astype(np.float64)
        out["4_orderings"] = {
            **_ms(per_unit),
            "holds": bool(mean["ts", "ts"] > mean["mix", "ts"] > mean["is", "ts"]
                          and mean["is", "is"] > mean["mix", "is"] > mean["ts", "is"]),
            "delta_ts": {v: mean[v, "ts"] for v in VARIANTS}, "delta_is": {v: mean[v, "is"] for v in VARIANTS}}

    beyond_by_concept: dict[str, list[bool]] = {}
    for c, mg in zip(concepts, figs["margin"]):
        beyond_by_concept.setdefault(c, []).append(bool(mg > 0))
    concept_beyond = {c: float(np.mean(b)) >= 0.5 for c, b in beyond_by_concept.items()}
    out["5_beyond_frontier"] = {**_ms(figs["margin"]), "holds": bool(np.mean(list(concept_beyond.values())) > 0.5),
                                "concepts_beyond": concept_beyond}

    if ran and all(f"s2_s1_{v}" in figs for v in ran):
        diffs = {v: figs[f"s2_s1_{v}"] for v in ran}
        out["6_s2_beats_s1"] = {**_ms(np.concatenate([diffs[v] for v in ran])),
                                "holds": bool(all(diffs[v].mean() > 0 for v in ran)),
                                "per_variant": {v: _ms(diffs[v]) for v in ran}}
    return out


def _stack(units: list[dict], judge: str) -> dict[str, np.ndarray]:
    per = [unit_figures(u, judge) for u in units]
    keys = set.intersection(*(set(p) for p in per)) if per else set()
    return {key: np.array([p[key] for p in per], dtype=np.float64) for key in keys}


def claims_for(units: list[dict], judge: str = "evaluator") -> dict[str, dict[str, Any]]:
    """Claims 1–6 judged by `judge` ("evaluator" or "oracle")."""
    return aggregate(_stack(units, judge), [u["concept"] for u in units])


def bootstrap_support(units: list[dict], judge: str = "evaluator", n: int = 2000, seed: int = 0) -> dict[str, float]:
    """For each claim, the fraction of cluster-bootstrap resamples in which it holds.

    A resample draws as many concepts as there are, with replacement, and takes every run (seed) of each drawn
    concept, so runs of one concept are not counted as independent evidence. ≥ 0.95: the verdict "holds" is
    unlikely to be an accident of which concepts and seeds were run; ≤ 0.05: likewise for "does not hold".
    """
    return _support(_stack(units, judge), [u["concept"] for u in units], n, seed)


def _support(figs: dict[str, np.ndarray], concept_list: Sequence[str], n: int, seed: int) -> dict[str, float]:
    concepts = np.asarray(concept_list)
    names = sorted(set(concept_list))
    members = {c: np.flatnonzero(concepts == c) for c in names}
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for _ in range(n):
        idx = np.concatenate([members[names[i]] for i in rng.integers(0, len(names), len(names))])
        for name, c in aggregate({k: v[idx] for k, v in figs.items()}, concepts[idx].tolist()).items():
            counts[name] = counts.get(name, 0) + int(c["holds"])
    return {name: count / n for name, count in counts.items()}


def all_claims(units: list[dict], n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """Claims 1–6 by the evaluator, each with the oracle's verdict beside it (and the bootstrap support of both
    verdicts), and claim 7."""
    concepts = [u["concept"] for u in units]
    figs = {j: _stack(units, j) for j in JUDGES}
    ev, orc = aggregate(figs["evaluator"], concepts), aggregate(figs["oracle"], concepts)
    support = {j: _support(figs[j], concepts, n_boot, seed=0) for j in JUDGES}
    out = {}
    agree = []
    for name, c in ev.items():
        o = orc[name]
        same = bool(c["holds"] == o["holds"] and np.sign(c["mean"]) == np.sign(o["mean"]))
        agree.append(same)
        out[name] = {**c, "claim": CLAIMS[name], "figure": f"{c['mean']:+.4f} ± {c['std']:.4f}",
                     "support": support["evaluator"].get(name),
                     "oracle": {"holds": o["holds"], "mean": o["mean"], "std": o["std"],
                                "figure": f"{o['mean']:+.4f} ± {o['std']:.4f}",
                                "support": support["oracle"].get(name)}}
    out["7_oracle_agrees"] = {"claim": CLAIMS["7_oracle_agrees"], "holds": bool(all(agree)),
                              "mean": float(np.mean(agree)), "std": 0.0, "n": len(agree),
                              "figure": f"{sum(agree)}/{len(agree)} claims"}
    return out
