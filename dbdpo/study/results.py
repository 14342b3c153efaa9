"""Table 1 from the votes: Win / Lose / No Diff (%) per compared pair and question, with bootstrap intervals,
the number of answers and assessors, agreement between assessors on the tasks several answered, and CLIP's
verdict on the same image pairs (ΔTS for question 1, ΔIS for question 2) with its agreement rate.

Win = the pair's first side (the method, `--compare METHOD BASELINE`) chosen, Lose = the second chosen,
No Diff = "Can't decide". An answer's side: answer '1' → the side shown as image 1 (`shown_order`[0]).

Bootstrap: tasks are resampled with replacement (each with all its answers: answers to one task are not
independent), B times; the interval is the (2.5, 97.5) percentiles of each percentage.

Agreement on tasks with ≥ 2 assessors: the pairwise agreement rate (fraction of assessor pairs giving the same
answer) and Fleiss' κ with a varying number of raters per task:
    P_i = (Σ_j n_ij² − n_i) / (n_i (n_i − 1)),  P̄ = mean_i P_i,  p_j = Σ_i n_ij / Σ_i n_i,  P_e = Σ_j p_j²,
    κ = (P̄ − P_e) / (1 − P_e).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import QUESTIONS
from .build import VOTES, load_manifest
from .store import Votes
from ..errors import DbdpoError
from ..io import write_text

OUTCOMES = ("win", "lose", "nodiff")
CLIP_KEY = {1: "ts", 2: "is"}


def side_of(answer: str, shown: str) -> str | None:
    """'A', 'B' or None (Can't decide) for an answer given with image 1 = side `shown[0]`."""
    if answer == "none":
        return None
    return shown[int(answer) - 1]


def outcome(answer: str, shown: str) -> str:
    return {"A": "win", "B": "lose", None: "nodiff"}[side_of(answer, shown)]


def bootstrap_ci(counts: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> np.ndarray:
    """`counts`: (tasks, 3) answers per task as (win, lose, nodiff). Returns (3, 2): each percentage's interval."""
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) == 0:
        return np.full((3, 2), np.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(counts), size=(n_boot, len(counts)))
    sums = counts[idx].sum(axis=1)
    pct = 100.0 * sums / sums.sum(axis=1, keepdims=True)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return np.stack([np.percentile(pct, lo, axis=0), np.percentile(pct, hi, axis=0)], axis=1)


def _rated(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a (items, categories) count table with ≥ 2 raters, and their numbers of raters."""
    t = np.asarray(table, dtype=np.float64)
    n = t.sum(axis=1)
    return t[n >= 2], n[n >= 2]


def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' κ of a (items, categories) count table; items may have different numbers of raters (≥ 2)."""
    t, n = _rated(table)
    if len(t) == 0:
        return math.nan
    p_i = ((t ** 2).sum(axis=1) - n) / (n * (n - 1))
    p_j = t.sum(axis=0) / n.sum()
    pe = float((p_j ** 2).sum())
    return math.nan if pe == 1 else float((p_i.mean() - pe) / (1 - pe))


def pairwise_agreement(table: np.ndarray) -> float:
    """Mean over items (≥ 2 raters) of the fraction of rater pairs that gave the same answer."""
    t, n = _rated(table)
    if len(t) == 0:
        return math.nan
    return float(((t * (t - 1)).sum(axis=1) / (n * (n - 1))).mean())


def table(manifest: dict, rows: list[tuple], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One record per compared pair × question (see the module docstring)."""
    tasks = {t["id"]: t for t in manifest["tasks"]}
    out = []
    for k, pair in enumerate(manifest["pairs"]):
        for q in QUESTIONS:
            per_task: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
            for assessor, tid, question, answer, shown, _ in rows:
                if question == q and tid in tasks and tasks[tid]["pair"] == k:
                    per_task[tid][outcome(answer, shown)].append(assessor)
            counts = np.array([[len(per_task[t][o]) for o in OUTCOMES] for t in per_task], dtype=np.float64)
            n = int(counts.sum()) if len(counts) else 0
            rec = {"pair": pair["name"], "question": q, "answers": n,
                   "assessors": len({a for t in per_task.values() for o in t.values() for a in o}),
                   "tasks": len(per_task)}
            ci = bootstrap_ci(counts, n_boot, seed)
            for j, o in enumerate(OUTCOMES):
                rec[o] = 100.0 * counts[:, j].sum() / n if n else math.nan
                rec[f"{o}_lo"], rec[f"{o}_hi"] = float(ci[j, 0]), float(ci[j, 1])
            multi = counts[counts.sum(axis=1) >= 2] if len(counts) else counts
            rec["overlap_tasks"] = int(len(multi))
            rec["agreement"] = pairwise_agreement(multi) if len(multi) else math.nan
            rec["fleiss_kappa"] = fleiss_kappa(multi) if len(multi) else math.nan
            rec.update(_clip(tasks, per_task, q))
            out.append(rec)
    return out


def _clip(tasks: dict, per_task: dict, q: int) -> dict:
    """CLIP's verdict on the same image pairs (ΔTS for q1, ΔIS for q2): how often it prefers the method, and how
    often a decided human answer (win or lose) agrees with it."""
    key = CLIP_KEY.get(q)
    if key is None:
        return {"clip_prefers_method": math.nan, "clip_agreement": math.nan, "clip_decided": 0}
    prefers, agree, decided = [], 0, 0
    for tid, outcomes in per_task.items():
        clip = tasks[tid].get("clip") or {}
        if not clip.get("A") or not clip.get("B"):
            continue
        delta = clip["A"][key] - clip["B"][key]
        if delta == 0:
            continue
        verdict = "win" if delta > 0 else "lose"
        prefers.append(verdict == "win")
        for o in ("win", "lose"):
            decided += len(outcomes[o])
            agree += len(outcomes[o]) if o == verdict else 0
    return {"clip_prefers_method": 100.0 * float(np.mean(prefers)) if prefers else math.nan,
            "clip_agreement": 100.0 * agree / decided if decided else math.nan, "clip_decided": decided}


def _fmt(x: float, nd: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def markdown(records: list[dict], manifest: dict, n_boot: int) -> str:
    lines = ["# User study: Table 1", "",
             f"Win = the first side of a pair chosen, Lose = the second, No Diff = \"Can't decide\"; % of answers with "
             f"95 % bootstrap intervals (tasks resampled, B = {n_boot}).", ""]
    for pair in manifest["pairs"]:
        lines += [f"## {pair['name']}", "",
                  f"First side: `{pair['A']['run']}` stage `{pair['A']['stage']}`; second: `{pair['B']['run']}` stage "
                  f"`{pair['B']['stage']}`.", "",
                  "| question | Win % | Lose % | No Diff % | answers | assessors | agreement (κ) on overlap | "
                  "CLIP prefers first % | human–CLIP agreement % |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in records if r["pair"] == pair["name"]):
            cells = [f"{_fmt(r[o])} [{_fmt(r[o + '_lo'])}, {_fmt(r[o + '_hi'])}]" for o in OUTCOMES]
            agree = (f"{_fmt(100 * r['agreement'])} % ({_fmt(r['fleiss_kappa'], 2)}, {r['overlap_tasks']} tasks)"
                     if r["overlap_tasks"] else "–")
            lines.append(f"| {r['question']}. {QUESTIONS[r['question']]} | {' | '.join(cells)} | {r['answers']} | "
                         f"{r['assessors']} | {agree} | {_fmt(r['clip_prefers_method'])} | "
                         f"{_fmt(r['clip_agreement'])} ({r['clip_decided']}) |")
        lines.append("")
    return "\n".join(lines)


def results(study: str | Path, out: str | Path | None = None, n_boot: int = 2000, seed: int = 0,
            wandb_project: str | None = None) -> list[dict]:
    study = Path(study)
    manifest = load_manifest(study)
    if not (study / VOTES).exists():
        raise DbdpoError(f"{study} has no votes yet ({VOTES}); serve it with `python -m dbdpo.study serve {study}`")
    rows = Votes(study / VOTES).rows()
    if not rows:
        raise DbdpoError(f"{study}/{VOTES} holds no answers yet")
    records = table(manifest, rows, n_boot, seed)
    out = Path(out) if out else study
    write_text(out / "results.md", markdown(records, manifest, n_boot))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(records[0]))
    w.writeheader()
    w.writerows(records)
    write_text(out / "results.csv", buf.getvalue())
    if wandb_project:
        import wandb

        run = wandb.init(project=wandb_project, name=f"study {study.name}", job_type="user-study")
        run.log({"study/table1": wandb.Table(columns=list(records[0]), data=[list(r.values()) for r in records])})
        run.finish()
    return records
