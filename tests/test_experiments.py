"""Every experiment file: its sweep axis (`hydra.sweeper.params`) composes and validates at every point, and its
first point runs end to end at tiny size, so none can rot."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
TINY = ["backbone=tiny", "concept=default", "logger=none", "progress=false", "prompts.n=16",
        "generate.images_per_prompt=2", "eval.max_prompts=1", "eval.images_per_prompt=1", "method.max_steps=2",
        "dpo.batch_size=2", "dpo.micro_batch_size=2", "dpo.epochs=1", "method.eval_at=null", "method.start_from=null"]


def compose(overrides, hydra_config: bool = False):
    return compose_config(overrides, hydra_config=hydra_config)


def sweep_points(experiment: str) -> list[list[str]]:
    """The experiment's own sweep, expanded as Hydra's basic sweeper does (the cartesian product of its axes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = compose([f"experiment={experiment}"], hydra_config=True).hydra.sweeper.params or {}
    parser = OverridesParser.create()
    axes = []
    for key, values in params.items():
        (ov,) = parser.parse_overrides([f"{key}={values}"])
        axes.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
    return [list(p) for p in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_sweeps_by_itself_and_every_point_validates(experiment, tmp_path):
    from dbdpo.schema import check_config

    points = sweep_points(experiment)
    assert len(points) >= 2, f"{experiment} has no sweep axis of its own (hydra.sweeper.params)"
    for point in points:
        cfg = compose([f"experiment={experiment}", *TINY, *point, f"paths.output_dir={tmp_path}"])
        check_config(cfg)
        for o in point:
            key, value = o.split("=", 1)
            got = cfg.filter.name if key == "filter" else cfg
            if key != "filter":
                for part in key.split("."):
                    got = got[part]
            assert str(got) == value or float(got) == float(value), (experiment, o, got)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_first_point_runs_end_to_end_at_tiny_size(experiment, tmp_path):
    from dbdpo.multistep import run

    first = sweep_points(experiment)[0]
    steps = [o for o in first if o.startswith("steps=")] or ["steps=1"]
    point = [o for o in first if not o.startswith("steps=")]
    metrics = run(compose([f"experiment={experiment}", *TINY, *point, *steps, "prompts.n=2",
                           f"paths.output_dir={tmp_path}"]))
    assert "step_1" in metrics["stages"] and "eval/clip_i" in metrics["stages"]["personalize"]


def test_eval_noise_splits_a_larger_evaluation_into_verifys_checks():
    # experiments/eval_noise.py: 2 prompts × 8 images per prompt, checks of 4 images; figures by hand
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("eval_noise", ROOT / "experiments" / "eval_noise.py")
    en = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(en)
    prompt, sample = np.repeat([0, 1], 8), np.tile(np.arange(8), 2)
    start = {"prompt": prompt, "sample": sample, **{m: np.zeros(16) for m in en.METRICS}}
    final = {"prompt": prompt, "sample": sample, **{m: np.zeros(16) for m in en.METRICS}}
    final["oracle_prompt"] = np.where(sample < 4, 1.0, 0.0)  # the first check sees a gain of 1, the second none
    final["oracle_identity"] = np.where(prompt == 0, 0.5, np.nan)  # prompt 1 asks for nothing: dropped, not 0
    d = en.unit_deltas(start, final, group=4)
    assert d["oracle_prompt"]["groups"] == [1.0, 0.0] and d["oracle_prompt"]["pooled"] == 0.5
    assert d["oracle_identity"]["groups"] == [0.5, 0.5] and d["oracle_identity"]["pooled"] == 0.5
    assert d["evaluator_ts"]["groups"] == [0.0, 0.0] and d["evaluator_ts"]["pooled"] == 0.0
    assert en.support(np.array([0.1, 0.2, 0.3])) == 1.0 and en.support(np.array([-0.1, -0.2])) == 0.0
    assert d["evaluator_is"]["start_sd"] == [0.0, 0.0] and d["evaluator_is"]["start_sd_pooled"] == 0.0

    # verify's claims 2–4 per check: DPO-TS raises the evaluator's TS in check 0 only, DPO-IS its IS in both;
    # the orderings hold in check 0 only (TS > MIX > IS on ΔTS, IS > MIX > TS on ΔIS)
    def r(groups, sd=0.0):
        return {"groups": groups, "pooled": float(np.mean(groups)), "start_sd": [sd] * len(groups),
                "start_sd_pooled": sd}

    ev = {"ts_s2": {"evaluator_ts": r([0.02, -0.01]), "evaluator_is": r([-0.001, -0.001], sd=0.01)},
          "mix_s2": {"evaluator_ts": r([0.01, 0.0]), "evaluator_is": r([0.005, 0.0])},
          "is_s2": {"evaluator_ts": r([0.0, 0.0]), "evaluator_is": r([0.01, 0.01])}}
    for v in ev.values():  # the oracle sees nothing
        v.update(oracle_prompt=r([0.0, 0.0]), oracle_identity=r([0.0, 0.0]))
    units = {"a/seed0": {"variants": ev}, "b/seed0": {"variants": ev}}
    c0, c1, pooled = en.verdicts(units, 0), en.verdicts(units, 1), en.verdicts(units, None)
    assert c0["evaluator"] == {"2_dpo_ts_raises_ts": True, "3_dpo_is_raises_is": True, "4_orderings": True}
    assert c1["evaluator"] == {"2_dpo_ts_raises_ts": False, "3_dpo_is_raises_is": True, "4_orderings": False}
    assert pooled["evaluator"]["2_dpo_ts_raises_ts"] and not any(c0["oracle"].values())


def test_scale_table_prints_the_deltas_and_transfer_and_plots_them(tmp_path, capsys):
    # experiments/scale_table.py on a hand-made verify.json: 2 units, Δs by hand; S = 1 runs are left out
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("scale_table", ROOT / "experiments" / "scale_table.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    keys = [k for _, k in st.COLUMNS]

    def run(d):  # start all 0, final = d for every measure (scorer TS 2d: transfer 0.5)
        final = {k: {"mean": d} for k in keys}
        final["eval/clip_t"] = {"mean": 2 * d}
        final.update({"pairs/kept": 1, "pairs/candidates": 4})
        return {"start": {k: {"mean": 0.0} for k in keys}, "final": final}

    units = [{"variants": {f"{v}_s2": run(d), f"{v}_s1": run(9.0)}} for d in (0.01, 0.03) for v in st.VARIANTS]
    path = tmp_path / "verify.json"
    path.write_text(json.dumps({"units": units}))
    st.main([f"a={path}", "--plot", str(tmp_path / "p.png")])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| DPO-TS")]
    assert rows == ["| DPO-TS | a | 2 | +0.0400 ± 0.0283 | +0.0200 ± 0.0141 | +0.0200 ± 0.0141 | +0.0200 ± 0.0141 "
                    "| +0.0200 ± 0.0141 | +0.50 | 0.25 |"]
    assert list(st.deltas(st.runs_of(units, "is"), "eval/evaluator_is")) == [0.01, 0.03]
    assert (tmp_path / "p.png").stat().st_size > 5000


def test_scale_paired_differences_per_unit_on_the_common_units(tmp_path, capsys):
    # experiments/scale_paired.py on two hand-made eval_noise.json: units a, b in both (c only in the reference);
    # setting B raises every unit's oracle prompt-following Δ by 0.1 in check 0 and 0.3 in check 1 (pooled +0.2)
    import importlib.util
    import json

    import numpy as np

    spec = importlib.util.spec_from_file_location("scale_paired", ROOT / "experiments" / "scale_paired.py")
    sp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sp)
    metrics = list(sp.METRICS)

    def unit(base: float, extra: tuple[float, float] = (0.0, 0.0)):
        def r(m):
            g = [base + extra[0], base + extra[1]] if m == "oracle_prompt" else [base, base]
            return {"groups": g, "pooled": float(np.mean(g))}
        sc = {**{m: r(m) for m in metrics}, "scorer_ts": {"groups": [0.02, 0.02], "pooled": 0.02},
              "evaluator_ts": {"groups": [0.01, 0.01], "pooled": 0.01}}
        return {"ts_s2": sc, "is_s2": sc}

    a = {"a/seed0": unit(0.0), "b/seed0": unit(0.05), "c/seed0": unit(0.5)}
    b = {"a/seed0": unit(0.0, (0.1, 0.3)), "b/seed0": unit(0.05, (0.1, 0.3))}
    for name, units in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"units": units}))
    sp.main([f"n16={tmp_path / 'a.json'}", f"n256={tmp_path / 'b.json'}", "--plot", str(tmp_path / "p.png"),
             "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["units"] == ["a/seed0", "b/seed0"]
    d = res["rows"]["ts_s2/oracle_prompt"]["diff"]["n256"]
    assert np.allclose(d["per_unit"], [0.2, 0.2]) and d["support"] == 1.0 and d["units_positive"] == 2
    assert np.isclose(d["check_noise"], np.std([0.1, 0.3], ddof=1))
    assert res["rows"]["ts_s2/evaluator_is"]["diff"]["n256"]["mean"] == 0.0
    assert "| TS | oracle prompt-following | +0.0250 ± 0.0354 | +0.2250 ± 0.0354 | +0.2000 ± 0.0000 | 1.00 | 2 of 2 |" \
        in out
    assert "| TS | +0.50 | +0.50 |" in out  # TS transfer: evaluator 0.01 ÷ scorer 0.02
    assert (tmp_path / "p.png").stat().st_size > 5000


def test_pair_labels_vs_oracle_agreement_and_mean_rows():
    # experiments/pair_labels_vs_oracle.py: agreement on one prompt of 3 samples, and the per-variant mean rows
    import importlib.util

    import numpy as np
    spec = importlib.util.spec_from_file_location("plo", ROOT / "experiments" / "pair_labels_vs_oracle.py")
    plo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plo)
    # truth 1, 1, 0: pairs (0,1) tied, (0,2) and (1,2) separated; the score orders (0,2) alike and (1,2) not
    sep, agree = plo.agreement(np.array([0.9, 0.1, 0.5]), np.array([1.0, 1.0, 0.0]), np.array([0, 0, 0]))
    assert (sep, agree) == (2 / 3, 1 / 2)
    base = dict.fromkeys(plo.COLUMNS, 0.0)
    rows = [("u1", "ts_s1/step_0", {**base, "sep_p": 0.1, "kept": 100}),
            ("u2", "ts_s1/step_0", {**base, "sep_p": 0.3, "kept": 300}),
            ("u1", "is_s1/step_0", {**base, "agree_is": 0.8, "kept": 50})]
    lines = plo.summary(rows)
    assert lines == [plo.row("**mean of 1 units**", "is_s1/step_0", {**base, "agree_is": 0.8, "kept": 50}),
                     plo.row("**mean of 2 units**", "ts_s1/step_0", {**base, "sep_p": 0.2, "kept": 200})]
    assert "| 0.20 |" in lines[1] and lines[1].endswith("| 200 |")
