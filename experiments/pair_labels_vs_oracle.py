"""How often the scorer's preference pairs are right by the oracle, on verify's runs of world concepts.

    python experiments/pair_labels_vs_oracle.py results/miniworld/runs/*/seed0

For each unit, variant and DPO step (its `<variant>_s<S>/step_<k>` samples, scores and kept pairs) it reports:
- the fraction of a prompt's sample pairs that the oracle tells apart on prompt-following (or on identity),
  and among those how often the scorer's TS (IS) orders them as the oracle does;
- among the filter's kept pairs, the fraction whose winner the oracle finds better / worse on each;
then one row per variant and step with the mean over units (each unit weighs the same).
"""

from __future__ import annotations

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


def agreement(score: np.ndarray, truth: np.ndarray, pidx: np.ndarray) -> tuple[float, float]:
    """(fraction of within-prompt pairs the truth separates, fraction of those the score orders alike)."""
    sep, agree, total = 0, 0, 0
    for p in np.unique(pidx):
        i = np.flatnonzero(pidx == p)
        a, b = np.triu_indices(len(i), 1)
        dt, ds = truth[i[a]] - truth[i[b]], score[i[a]] - score[i[b]]
        total += len(a)
        sep += int((dt != 0).sum())
        agree += int(((dt * ds) > 0).sum())
    return sep / max(total, 1), agree / max(sep, 1)


COLUMNS = ("sep_p", "agree_ts", "sep_i", "agree_is", "kept_p_better", "kept_p_worse", "kept_i_better",
           "kept_i_worse", "kept")


def row(name: str, variant: str, r: dict) -> str:
    return (f"| {name} | {variant} | {r['sep_p']:.2f} | {r['agree_ts']:.2f} | {r['sep_i']:.2f} | {r['agree_is']:.2f} "
            f"| {r['kept_p_better']:.2f} / {r['kept_p_worse']:.2f} | {r['kept_i_better']:.2f} / {r['kept_i_worse']:.2f} "
            f"| {r['kept']:.0f} |")


def summary(rows: list[tuple[str, str, dict]]) -> list[str]:
    """Per variant/step, the unweighted mean of every column over the units that ran it."""
    out = []
    for variant in sorted({v for _, v, _ in rows}):
        rs = [r for _, v, r in rows if v == variant]
        mean = {c: float(np.mean([r[c] for r in rs])) for c in COLUMNS}
        out.append(row(f"**mean of {len(rs)} units**", variant, mean))
    return out


def main(unit_dirs: list[str]) -> None:
    oracle = load_oracle(str(ORACLE), "cpu")
    print("| unit | variant | prompt pairs separated by oracle | TS agrees | identity pairs separated | IS agrees "
          "| kept: prompt better / worse | kept: identity better / worse | kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows: list[tuple[str, str, dict]] = []
    for unit in map(Path, unit_dirs):
        for d in sorted(unit.glob("*_s[0-9]*/step_[0-9]*")):
            v = f"{d.parent.name}/{d.name}"
            if not (d / "pairs.json").exists() or not (d / "samples").is_dir():
                continue
            cfg = OmegaConf.load(d.parent / "config.yaml")
            holder = f"{cfg.concept.token} {cfg.concept.class_name}"
            samples = load_samples(d / "samples")
            images = np.stack([np.asarray(im) for im in samples.load_images()])
            o = oracle_scores(predict(oracle, images), list(samples.prompts), holder,
                              look_labels(parse_world_concept(cfg.concept).look))
            shards = sorted((d / "scores").glob("shard_*.json"))
            ts = np.concatenate([read_json(f)["ts"] for f in shards])
            is_ = np.concatenate([read_json(f)["is"] for f in shards])
            follow, ident = np.nan_to_num(o["follow"], nan=-1.0), o["identity"]
            pidx = np.asarray(samples.prompt_index)
            sep_p, agree_ts = agreement(ts, follow, pidx)
            sep_i, agree_is = agreement(is_, ident, pidx)
            pairs = read_json(d / "pairs.json")
            w, l = np.asarray(pairs["winner"]), np.asarray(pairs["loser"])
            df, di = follow[w] - follow[l], ident[w] - ident[l]
            r = {"sep_p": sep_p, "agree_ts": agree_ts, "sep_i": sep_i, "agree_is": agree_is,
                 "kept_p_better": np.mean(df > 0), "kept_p_worse": np.mean(df < 0),
                 "kept_i_better": np.mean(di > 0), "kept_i_worse": np.mean(di < 0), "kept": len(w)}
            rows.append((f"{unit.parent.name}/{unit.name}", v, r))
            print(row(*rows[-1]))
    for line in summary(rows):
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
