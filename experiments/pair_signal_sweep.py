"""Which sampling settings give DPO's preference pairs attribute-level signal? Measured by the oracle.

    python experiments/pair_signal_sweep.py UNIT_DIR OUT_DIR [setting ...]

UNIT_DIR is a verify unit (`results/miniworld/runs/<concept>/seed<k>`, with its DreamBooth checkpoints). Each
setting `step:guidance:M` generates the unit's 32 pool prompts × M images from DreamBooth checkpoint `step` at
guidance `guidance` (10 DDIM steps, as `backbone=world`), scores them with the scorer, builds the TS / IS / MIX
pairs, and reports what the oracle sees: the fraction of a prompt's sample pairs it separates on
prompt-following, and the fraction of kept pairs whose winner it finds better / worse.
Default settings: 400:3:8 (verify's), 400:1.5:8, 400:7.5:8, 200:3:8, 400:3:16.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dbdpo.generate import generate
from dbdpo.multistep import load_unet_into, prepare, score_step
from dbdpo.pairs import build_pairs, make_filter
from dbdpo.prompts import read_pool
from dbdpo.world.judge import look_labels, oracle_scores
from dbdpo.world.concepts import parse_world_concept
from dbdpo.world.oracle import load_oracle, predict
from dbdpo.world.verify import compose_train
from pair_labels_vs_oracle import agreement  # this folder is on sys.path when the script runs

DEFAULT = ["400:3:8", "400:1.5:8", "400:7.5:8", "200:3:8", "400:3:16"]


def main(unit_dir: str, out_dir: str, settings: list[str]) -> None:
    import torch

    torch.set_num_threads(2)
    unit, out = Path(unit_dir), Path(out_dir)
    cfg = compose_train([f"concept=world/{unit.parent.name}", f"seed={unit.name.removeprefix('seed')}",
                         "backbone=world", "logger=none", "progress=false", "eval.judge=false",
                         f"paths.output_dir={out / 'run'}"])
    ctx = prepare(cfg)
    oracle = load_oracle(str(Path(cfg.paths.assets_dir) / "world" / "oracle.safetensors"), "cpu")
    look = look_labels(parse_world_concept(cfg.concept).look)
    prompts = [p.prompt for p in read_pool(unit / "ts_s1" / "prompts" / "pool.jsonl")]
    filters = {name: make_filter(compose_train([f"filter={name}"]).filter) for name in ("ts", "is", "mix")}
    print("| DreamBooth step | guidance | M | prompt pairs separated | identity pairs separated | "
          + " | ".join(f"{n.upper()} kept: prompt better / worse" for n in filters) + " |")
    print("|---|---|---|---|---|" + "---|" * len(filters))
    for setting in settings:
        step, guidance, m = setting.split(":")
        load_unet_into(ctx.backbone.unet, unit / "db" / f"step_{step}" / "unet")
        ctx.backbone.unet.eval()
        d = out / setting.replace(":", "_")
        samples = generate(ctx.backbone, prompts, ctx.concept.holder, d / "samples", int(m), seed=int(cfg.seed) * 1000 + 1,
                           batch_size=64, prompts_per_shard=8, guidance_scale=float(guidance), progress=False)
        scores = score_step(cfg, ctx.scorer, samples, ctx.concept, ctx.concept_emb, d / "scores")
        images = np.stack([np.asarray(im) for im in samples.load_images()])
        o = oracle_scores(predict(oracle, images), list(samples.prompts), ctx.concept.holder, look)
        follow, ident = np.nan_to_num(o["follow"], nan=-1.0), o["identity"]
        pidx = np.asarray(samples.prompt_index)
        cells = []
        for filt in filters.values():
            pairs = build_pairs(scores["ts"], scores["is"], pidx, filt)
            df = follow[pairs.winner] - follow[pairs.loser]
            cells.append(f"{np.mean(df > 0):.3f} / {np.mean(df < 0):.3f} (of {len(df)})")
        sep_prompt, sep_identity = agreement(scores["ts"], follow, pidx)[0], agreement(scores["is"], ident, pidx)[0]
        print(f"| {step} | {guidance} | {m} | {sep_prompt:.3f} | {sep_identity:.3f} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or DEFAULT)
