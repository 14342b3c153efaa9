"""The baseline frontier of any run: personalization checkpoints at `method.eval_at`, evaluated on the way, DPO
from `method.start_from`, and where the DPO steps land against the frontier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["backbone=tiny", "concept=default", "prompts.n=4", "generate.images_per_prompt=3", "logger=none",
        "progress=false", "eval.max_prompts=3", "eval.images_per_prompt=1", "steps=2", "dpo.batch_size=4",
        "dpo.micro_batch_size=4", "dpo.epochs=1", "method.max_steps=6"]


def _cfg(out: Path, extra=()):
    return compose_config([*TINY, *extra], out)


def test_frontier_and_margins_by_hand():
    from dbdpo.frontier import curve_summary, margin_above_frontier, pareto_frontier

    pts = [(0.70, 0.30), (0.80, 0.28), (0.75, 0.25), (0.90, 0.20)]  # (IS, TS); (0.75, 0.25) is dominated
    front = pareto_frontier(pts)
    assert front.tolist() == [[0.70, 0.30], [0.80, 0.28], [0.90, 0.20]]
    assert margin_above_frontier(front, (0.85, 0.25)) == pytest.approx(0.25 - 0.24)  # halfway 0.28 → 0.20
    assert margin_above_frontier(front, (0.60, 0.31)) == pytest.approx(0.01)  # left: the highest TS
    assert margin_above_frontier(front, (0.95, 0.19)) == pytest.approx(-0.01)  # right: the last point's TS

    def ev(i, t):
        return {"eval/clip_i": {"mean": i}, "eval/clip_t": {"mean": t}}

    s = curve_summary({k: ev(*p) for k, p in zip((100, 200, 400, 600), pts)}, {"step_1": ev(0.85, 0.25)})
    assert [c["step"] for c in s["curve"]] == [100, 200, 400, 600]
    assert s["margins"]["step_1"] == pytest.approx(0.01) and len(s["frontier"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dreambooth", "lora"])
def test_eval_at_and_start_from_give_the_baseline_curve_and_dpo_from_that_checkpoint(tmp_path, method):
    from safetensors.torch import load_file

    from dbdpo import multistep as ms

    out = tmp_path / "run"
    metrics = ms.run(_cfg(out, [f"method={method}", "method.eval_at=[2,4,6]", "method.start_from=4"]))
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["personalize", "personalize_step2", "personalize_step4",
                                                    "personalize_step6", "step_1", "step_2"]
    name = "diffusion_pytorch_model.safetensors" if method == "dreambooth" else "adapter.safetensors"
    theta0, at4, at6 = (load_file(str(ck / d / name)) for d in ("personalize", "personalize_step4",
                                                                  "personalize_step6"))
    assert all(np.array_equal(theta0[k].numpy(), at4[k].numpy()) for k in theta0)  # DPO starts from step 4
    assert any(not np.array_equal(at6[k].numpy(), at4[k].numpy()) for k in at4)
    for k in (2, 6):
        assert (out / "personalize" / f"step_{k}" / "eval" / "eval.json").exists()
    curve = json.loads((out / "personalize" / "curve.json").read_text())
    assert [c["step"] for c in curve["curve"]] == [2, 4, 6]
    assert set(curve["margins"]) == {"step_1", "step_2"} and metrics["baseline_curve"] == curve
    assert (out / "pareto.png").stat().st_size > 1000
    # the in-training evaluation of θ_4 equals an evaluation of the saved θ0 afterwards
    cfg = _cfg(out, [f"method={method}"])
    ctx = ms.prepare(cfg)
    ms._restore(ms.make_adapter(cfg.method), ctx.backbone, ck / "personalize", ctx.device)
    again = ms.run_eval(cfg, ctx.backbone, ctx.scorer, ctx.concept, ctx.concept_emb, ms.eval_prompts(cfg, ctx.concept),
                        tmp_path / "again", "again")
    assert again["eval/clip_i"] == pytest.approx(metrics["stages"]["personalize"]["eval/clip_i"], abs=1e-6)
    assert again["eval/clip_t"] == pytest.approx(metrics["stages"]["personalize"]["eval/clip_t"], abs=1e-6)


def test_curve_settings_are_checked(tmp_path):
    from dbdpo.errors import ConfigError
    from dbdpo.schema import check_config

    with pytest.raises(ConfigError) as e:
        check_config(_cfg(tmp_path, ["method.eval_at=[2,9]", "method.start_from=7"]))
    assert "method.eval_at: step 9" in str(e.value) and "method.start_from=7" in str(e.value)
