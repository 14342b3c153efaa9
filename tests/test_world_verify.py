"""`python -m dbdpo.world verify`: claim computations on hand-made numbers, and a tiny end-to-end run of a concept
config that lives in a temporary folder added through Hydra's search path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dbdpo.world.claims import all_claims, claims_for, margin_above_frontier, pareto_frontier, spearman

ROOT = Path(__file__).resolve().parents[1]


def test_spearman_by_hand():
    assert spearman([0, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [9, 5, 4, 1]) == pytest.approx(-1.0)
    # ranks x: 0,1,2,3; y = (2, 1, 4, 3) -> d = (-1, 1, -1, 1): rho = 1 - 6*4/(4*15) = 0.6
    assert spearman([0, 1, 2, 3], [2, 1, 4, 3]) == pytest.approx(0.6)
    assert spearman([0, 1, 2], [5, 5, 5]) == 0.0


def test_frontier_and_margins_by_hand():
    pts = [(0.1, 0.9), (0.5, 0.7), (0.4, 0.5), (0.9, 0.3)]  # (0.4, 0.5) is dominated by (0.5, 0.7)
    front = pareto_frontier(pts)
    assert front.tolist() == [[0.1, 0.9], [0.5, 0.7], [0.9, 0.3]]
    assert margin_above_frontier(front, (0.3, 0.85)) == pytest.approx(0.05)   # interp at 0.3 is 0.8
    assert margin_above_frontier(front, (0.7, 0.4)) == pytest.approx(-0.1)    # interp at 0.7 is 0.5
    assert margin_above_frontier(front, (0.95, 0.35)) == pytest.approx(0.05)  # right of it: vs 0.3
    assert margin_above_frontier(front, (0.05, 0.8)) == pytest.approx(-0.1)   # left of it: vs 0.9


def m(is_, ts, idn=None, pr=None, sd=0.01):
    """metrics with evaluator IS/TS and oracle identity/prompt (oracle defaults to the evaluator's numbers)."""
    return {"eval/evaluator_is": {"mean": is_, "std": sd}, "eval/evaluator_ts": {"mean": ts, "std": sd},
            "eval/oracle_identity": {"mean": is_ if idn is None else idn, "std": sd},
            "eval/oracle_prompt": {"mean": ts if pr is None else pr, "std": sd}}


def unit(concept, db, finals, start):
    return {"concept": concept, "seed": 0, "db": [[s, x] for s, x in db],
            "variants": {k: {"start": start, "final": v} for k, v in finals.items()}}


def good_unit(concept="a", shift=0.0):
    db = [(0, m(0.2, 0.8)), (1, m(0.5, 0.6)), (2, m(0.8, 0.3))]
    start = db[-1][1]
    finals = {"ts_s2": m(0.795, 0.5 + shift), "mix_s2": m(0.83, 0.4), "is_s2": m(0.9, 0.32),
              "ts_s1": m(0.795, 0.45), "mix_s1": m(0.81, 0.38), "is_s1": m(0.85, 0.3)}
    return unit(concept, db, finals, start)


def test_claims_on_hand_made_units_all_hold():
    units = [good_unit("a"), good_unit("b", 0.02)]
    c = claims_for(units)
    assert c["1_dreambooth_trades_ts_for_is"]["rho_is"]["mean"] == pytest.approx(1.0)
    assert c["1_dreambooth_trades_ts_for_is"]["rho_ts"]["mean"] == pytest.approx(-1.0)
    assert c["2_dpo_ts_raises_ts"]["mean"] == pytest.approx(np.mean([0.2, 0.22]))  # 0.5 - 0.3, 0.52 - 0.3
    assert c["2_dpo_ts_raises_ts"]["holds"]  # ΔIS = -0.005 ≥ -σ = -0.01
    assert c["3_dpo_is_raises_is"]["mean"] == pytest.approx(0.1) and c["3_dpo_is_raises_is"]["holds"]
    assert c["4_orderings"]["holds"] and c["4_orderings"]["mean"] == 1.0
    # frontier (0.2,0.8)-(0.5,0.6)-(0.8,0.3); ts_s2 at (0.795, 0.5): interp 0.305 -> margin 0.195 (0.215 for b)
    assert c["5_beyond_frontier"]["holds"]
    assert c["5_beyond_frontier"]["mean"] == pytest.approx(np.mean([0.5 - 0.305, 0.52 - 0.305]))
    assert c["6_s2_beats_s1"]["holds"]
    assert c["6_s2_beats_s1"]["per_variant"]["is"]["mean"] == pytest.approx(0.05)
    full = all_claims(units)
    assert full["7_oracle_agrees"]["holds"] and full["7_oracle_agrees"]["figure"] == "6/6 claims"


def test_claims_that_fail_and_an_oracle_that_disagrees():
    u = good_unit()
    u["variants"]["ts_s2"]["final"] = m(0.6, 0.35, pr=0.2)  # TS up by CLIP, IS down 0.2 ≫ σ; oracle: prompt down
    u["variants"]["is_s2"]["final"] = m(0.75, 0.3)         # IS down
    c = all_claims([u])
    assert not c["2_dpo_ts_raises_ts"]["holds"] and c["2_dpo_ts_raises_ts"]["mean"] == pytest.approx(0.05)
    assert not c["3_dpo_is_raises_is"]["holds"]
    assert not c["4_orderings"]["holds"]
    assert c["2_dpo_ts_raises_ts"]["oracle"]["mean"] == pytest.approx(-0.1)
    assert not c["7_oracle_agrees"]["holds"]


def test_a_subset_of_variants_or_another_s_gets_the_claims_it_can_decide():
    # `verify variants=[ts,is]`: no DPO-MIX, so no orderings (claim 4); the rest as with all three
    units = [good_unit("a"), good_unit("b", 0.02)]
    for u in units:
        for k in ("mix_s2", "mix_s1"):
            del u["variants"][k]
    c = all_claims(units, n_boot=50)
    assert set(c) == {"1_dreambooth_trades_ts_for_is", "2_dpo_ts_raises_ts", "3_dpo_is_raises_is",
                      "5_beyond_frontier", "6_s2_beats_s1", "7_oracle_agrees"}
    assert c["2_dpo_ts_raises_ts"]["mean"] == pytest.approx(np.mean([0.2, 0.22])) and c["3_dpo_is_raises_is"]["holds"]
    assert set(c["6_s2_beats_s1"]["per_variant"]) == {"ts", "is"} and c["7_oracle_agrees"]["figure"] == "5/5 claims"
    # DPO-TS alone, at S = 3 (runs named <v>_s3) without S = 1: claims 1, 2, 5
    u = good_unit("a")
    u["variants"] = {"ts_s3": u["variants"]["ts_s2"]}
    c = claims_for([u])
    assert set(c) == {"1_dreambooth_trades_ts_for_is", "2_dpo_ts_raises_ts", "5_beyond_frontier"}
    assert c["2_dpo_ts_raises_ts"]["mean"] == pytest.approx(0.2) and c["5_beyond_frontier"]["holds"]


def test_beyond_frontier_needs_most_concepts():
    below = good_unit("c")
    for k in ("ts_s2", "mix_s2", "is_s2"):
        below["variants"][k]["final"] = m(0.5, 0.55)  # under the frontier's 0.6 at IS 0.5
    c = claims_for([good_unit("a"), below, {**below, "concept": "d"}])
    assert c["5_beyond_frontier"]["concepts_beyond"] == {"a": True, "c": False, "d": False}
    assert not c["5_beyond_frontier"]["holds"]


@pytest.mark.slow
def test_tiny_verify_with_a_concept_from_a_search_path_folder(tmp_path):
    conf = tmp_path / "myconf" / "concept" / "world"
    conf.mkdir(parents=True)
    (conf / "lab_heart.yaml").write_text(
        "# someone else's concept\n_target_: dbdpo.world.concepts.RenderedConcept\nname: lab_heart\nclass_name: heart\nlive: false\ntoken: sks\n"
        "world:\n  shape: heart\n  pattern: zigzag\n  colours: [blue, orange]\n"
        "  photos: {n: 4, background: sand, position: center, size: large, style: flat, seed: 3}\n"
        "path: ${paths.output_dir}/concept_photos\n")
    results = tmp_path / "results"
    tiny = ["backbone=tiny", "logger=none", "progress=false", "method.max_steps=4", "prompts.n=8",
            "generate.images_per_prompt=3", "eval.max_prompts=3", "eval.images_per_prompt=2"]
    args = [sys.executable, "-m", "dbdpo.world", "verify", f"results_dir={results}", "concepts=[lab_heart]",
            "seeds=[0,1]", "workers=2", "db_checkpoints=[0,2,4]", "progress=false",
            f"train_overrides=[{','.join(repr(t) for t in tiny)}]",
            f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((results / "verify.json").read_text())
    assert set(out["claims"]) == {"1_dreambooth_trades_ts_for_is", "2_dpo_ts_raises_ts", "3_dpo_is_raises_is",
                                  "4_orderings", "5_beyond_frontier", "6_s2_beats_s1", "7_oracle_agrees"}
    for c in out["claims"].values():
        assert isinstance(c["holds"], bool) and {"figure", "mean", "std"} <= set(c)
    assert [(u["concept"], u["seed"]) for u in out["units"]] == [("lab_heart", 0), ("lab_heart", 1)]  # 2 workers
    u = out["units"][0]
    assert [s for s, _ in u["db"]] == [0, 2, 4]
    assert set(u["variants"]) == {"ts_s2", "is_s2", "mix_s2", "ts_s1", "is_s1", "mix_s1"}
    # every variant starts from the shared DreamBooth checkpoint and its evaluation
    for v in u["variants"].values():
        assert v["start"] == u["db"][-1][1]
    md = (results / "verify.md").read_text()
    assert "holds" in md and "lab_heart" in md
    assert (results / "pareto.png").stat().st_size > 1000
    # the variants' first-step samples are generated once (the unit's sample cache) and identical; only the last
    # step is evaluated
    unit_dir = results / "runs" / "lab_heart" / "seed0"
    for S in (1, 2):
        lat = [sorted((unit_dir / f"{v}_s{S}" / "step_1" / "samples" / "shard_00000").glob("*.png"))
               for v in ("ts", "is", "mix")]
        assert lat[0] and all([x.read_bytes() for x in a] == [x.read_bytes() for x in lat[0]] for a in lat)
    # shards generated: S=2 step 1 once, S=2 step 2 per variant (3), S=1 once (tiny: one shard per generation)
    assert len(list((unit_dir / "sample_cache").iterdir())) == 5
    assert not (unit_dir / "ts_s2" / "step_1" / "eval").exists() and (unit_dir / "ts_s2" / "step_2" / "eval").is_dir()
    # the photos were rendered from the outside config
    assert len(list((results / "runs" / "lab_heart" / "seed0" / "db" / "concept_photos").glob("*.png"))) == 4

    # a rerun skips every finished unit and reproduces the report, with results_dir/notes.md as its Notes
    (results / "notes.md").write_text("Tried: nothing else.\n")
    mtime = (results / "runs" / "lab_heart" / "seed0" / "unit.json").stat().st_mtime_ns
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (results / "runs" / "lab_heart" / "seed0" / "unit.json").stat().st_mtime_ns == mtime
    assert json.loads((results / "verify.json").read_text())["claims"] == out["claims"]
    assert "## Notes\n\nTried: nothing else." in (results / "verify.md").read_text()


def test_bootstrap_support_separates_robust_from_unsettled_verdicts():
    from dbdpo.world.claims import bootstrap_support

    rng = np.random.default_rng(0)
    units = []
    for i in range(8):
        u = good_unit(f"c{i}")
        # DPO-IS: +0.1 IS everywhere (robust); DPO-TS: ΔTS of alternating sign around a mean of ~0 (unsettled)
        u["variants"]["ts_s2"]["final"] = m(0.8, 0.3 + (0.05 if i % 2 else -0.05) + rng.normal(0, 1e-3))
        units.append(u)
    s = bootstrap_support(units, n=500)
    assert s["3_dpo_is_raises_is"] == 1.0
    assert 0.2 < s["2_dpo_ts_raises_ts"] < 0.8
    # resampling is by concept: one concept's many seeds count once
    one = [dict(good_unit("same"), seed=k) for k in range(5)]
    one[0]["variants"]["is_s2"]["final"] = m(0.0, 0.3)   # one very bad seed pulls the concept's mean below 0
    assert bootstrap_support(one, n=50)["3_dpo_is_raises_is"] == 0.0  # a single cluster: every resample is it
    full = all_claims(units, n_boot=200)
    assert full["3_dpo_is_raises_is"]["support"] == 1.0 and "support" in full["3_dpo_is_raises_is"]["oracle"]


def test_eval_noise_per_unit_gives_every_unit_its_own_evaluation_seed_and_shared_gives_one():
    from omegaconf import OmegaConf

    from dbdpo.errors import ConfigError
    from dbdpo.world.verify import compose_train, unit_overrides, verify

    vcfg = OmegaConf.load(ROOT / "conf" / "verify.yaml")
    assert vcfg.eval_noise == "shared"  # the committed results/miniworld was run so
    vcfg.train_overrides = ["backbone=world", "logger=none"]
    units = [("zigzag_star", 0), ("zigzag_star", 1), ("ringed_circle", 0)]

    def eval_seeds(mode):
        vcfg.eval_noise = mode
        return [int(compose_train(unit_overrides(vcfg, c, s)).eval.seed) for c, s in units]

    assert eval_seeds("shared") == [12345] * 3
    per_unit = eval_seeds("per_unit")
    assert len(set(per_unit)) == 3 and per_unit == eval_seeds("per_unit")  # distinct per unit, and fixed
    # every run of a unit (DreamBooth start, each variant) composes from the same overrides: one seed per unit
    assert int(compose_train([*unit_overrides(vcfg, "zigzag_star", 1), "filter=ts", "steps=1"]).eval.seed) == \
        per_unit[1]
    # verify's settings are checked by its schema before any work, every problem named together
    vcfg.eval_noise, vcfg.workers, vcfg.variants = "independent", 0, ["ts", "weighted"]
    with pytest.raises(ConfigError, match="3 invalid settings") as e:
        verify(vcfg)
    assert "eval_noise='independent': must be one of shared, per_unit" in str(e.value)
    assert "workers=0: must be an integer ≥ 1" in str(e.value)
    assert "variants=['ts', 'weighted']: must be a non-empty list of distinct values from ts, is, mix" in str(e.value)
    for bad in ([], ["ts", "ts"]):
        vcfg.eval_noise, vcfg.workers, vcfg.variants = "shared", 1, bad
        with pytest.raises(ConfigError, match="variants="):
            verify(vcfg)
