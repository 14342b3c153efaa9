"""How often the scorer's preference pairs are right by the oracle, on verify's runs of world concepts.

    python experiments/pair_labels_vs_oracle.py results/miniworld/runs/*/seed0

For each unit, variant and DPO step (its `<variant>_s<S>/step_<k>` samples, scores and kept pairs) it reports:
- the fraction of a prompt's sample pairs that the oracle tells apart on prompt-following (or on identity),
  and among those how often the scorer's TS (IS) orders them as the oracle does;
- among the filter's kept pairs, the fraction whose winner the oracle finds better / worse on each.
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


def main(unit_dirs: list[str]) -> None:
    oracle = load_oracle(str(ORACLE), "cpu")
    print("| unit | variant | prompt pairs separated by oracle | TS agrees | identity pairs separated | IS agrees "
          "| kept: prompt better / worse | kept: identity better / worse | kept |")
    print("|---|---|---|---|---|---|---|---|---|")
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
            print(f"| {unit.parent.name}/{unit.name} | {v} | {sep_p:.2f} | {agree_ts:.2f} | {sep_i:.2f} | {agree_is:.2f} "
                  f"| {np.mean(df > 0):.2f} / {np.mean(df < 0):.2f} | {np.mean(di > 0):.2f} / {np.mean(di < 0):.2f} "
                  f"| {len(w)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
