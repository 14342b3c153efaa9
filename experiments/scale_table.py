"""Issue 27's table: per setting and variant, Δ = final − start over verify's units (mean ± σ), for the scorer's
CLIP-T (the CLIP that labelled the pairs, on the evaluation prompts), the evaluator's TS / IS and the oracle's
prompt-following / identity, the TS transfer (evaluator ΔTS ÷ scorer ΔTS: how much of the labelling CLIP's gain an
independent CLIP sees) and the kept fraction of the candidate pairs.

    python experiments/scale_table.py n16=results/fast-preset/default/verify.json n64=results/scale-check/n64/verify.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

COLUMNS = [("ΔTS scorer", "eval/clip_t"), ("ΔTS evaluator", "eval/evaluator_ts"), ("ΔIS evaluator", "eval/evaluator_is"),
           ("Δprompt oracle", "eval/oracle_prompt"), ("Δidentity oracle", "eval/oracle_identity")]
VARIANTS = {"ts": "DPO-TS", "is": "DPO-IS", "mix": "DPO-MIX"}


def main(args: list[str]) -> None:
    settings = [a.rsplit("=", 1) for a in args]
    print("| variant | setting | units | " + " | ".join(c for c, _ in COLUMNS) + " | TS transfer | kept / candidates |")
    print("|---|---|---|" + "---|" * (len(COLUMNS) + 2))
    for v, name in VARIANTS.items():
        for label, path in settings:
            units = json.load(open(path))["units"]
            runs = [u["variants"][k] for u in units for k in u["variants"] if k.startswith(f"{v}_s") and
                    not k.endswith("_s1")]
            cells, means = [], {}
            for _, key in COLUMNS:
                d = np.array([r["final"][key]["mean"] - r["start"][key]["mean"] for r in runs])
                means[key] = d.mean()
                cells.append(f"{d.mean():+.4f} ± {d.std(ddof=1) if len(d) > 1 else 0:.4f}")
            # how much of the labelling CLIP's TS gain an independent CLIP sees
            cells.append(f"{means['eval/evaluator_ts'] / means['eval/clip_t']:+.2f}")
            kept = np.mean([r["final"]["pairs/kept"] / r["final"]["pairs/candidates"] for r in runs])
            print(f"| {name} | {label} | {len(runs)} | " + " | ".join(cells) + f" | {kept:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
