"""`python -m dbdpo.report`: fake run folders with known metrics give hand-computed tables, frontiers, verdicts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ev(i, t):
    return {"eval/clip_i": {"mean": i, "std": 0.01, "n": 5}, "eval/clip_t": {"mean": t, "std": 0.01, "n": 5}}


def write_run(d: Path, overrides: list[str], stages: dict, concept: str, curve: list | None = None,
              margins: dict | None = None) -> None:
    d.mkdir(parents=True)
    m = {"concept": concept, "stages": stages}
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if curve:
        m["baseline_curve"] = {"curve": [{"step": s, "is": i, "ts": t} for s, i, t in curve],
                               "margins": margins or {}, "frontier": []}
    (d / "metrics.json").write_text(json.dumps(m))
    (d / "config.yaml").write_text("seed: 0\n")


@pytest.fixture
def sweep(tmp_path):
    """fig1b: λ ∈ {0, 1} × concepts a, b (a multirun folder), and a single default run elsewhere."""
    curve = [(100, 0.70, 0.30), (200, 0.80, 0.28), (400, 0.90, 0.20)]
    vals = {("0", "a"): (0.80, 0.25), ("0", "b"): (0.84, 0.27), ("1", "a"): (0.70, 0.33), ("1", "b"): (0.74, 0.29)}
    for k, ((lam, concept), (i, t)) in enumerate(vals.items()):
        stages = {"personalize": ev(0.90, 0.20),
                  "step_1": {**ev(i, t), "pairs/kept": 10 if lam == "0" else 30, "pairs/candidates": 100}}
        margin = {"step_1": 0.01 if lam == "0" else -0.02}
        write_run(tmp_path / "multi" / str(k), ["experiment=fig1b_weighted", f"filter.weight={lam}",
                                                f"concept=world/{concept}", "seed=0", "progress=false"],
                  stages, concept, curve, margin)
    write_run(tmp_path / "single" / "run", ["backbone=tiny"], {"personalize": ev(0.5, 0.1)}, "toy")
    return tmp_path


def test_report_tables_frontier_and_csv_by_hand(sweep):
    from dbdpo.report import report

    path = report([sweep / "multi", sweep / "single"], sweep / "out")
    md = path.read_text()
    assert "6 runs" not in md and "5 runs from" in md
    # λ = 0, step_1: IS mean(0.80, 0.84) = 0.8200, σ = 0.0283; TS mean(0.25, 0.27) = 0.2600 ± 0.0141; kept 0.100
    assert "| filter.weight=0 | step_1 | 2 | 0.8200 ± 0.0283 | 0.2600 ± 0.0141 | 0.100 ± 0.000 |" in md
    assert "| filter.weight=1 | step_1 | 2 | 0.7200 ± 0.0283 | 0.3100 ± 0.0283 | 0.300 ± 0.000 |" in md
    # frontier (0.70, 0.30) – (0.80, 0.28) – (0.90, 0.20): at IS 0.82 its TS is 0.264 → margin 0.26 − 0.264
    assert "| filter.weight=0 | step_1 | -0.0040 | no | 1.00 of 2 |" in md  # each run beyond its own (+0.01)
    # λ = 1 at IS 0.72: frontier TS 0.296 → margin 0.31 − 0.296 = +0.014
    assert "| filter.weight=1 | step_1 | +0.0140 | yes | 0.00 of 2 |" in md
    assert "## default" in md and "## fig1b_weighted" in md
    for png in ("fig1b_weighted_pareto.png", "fig1b_weighted_sweep.png", "default_pareto.png"):
        assert (sweep / "out" / png).stat().st_size > 1000, png
    rows = list(csv.DictReader((sweep / "out" / "runs.csv").open()))
    assert len(rows) == 4 * (2 + 2 + 2) + 2  # 4 runs × (personalize 2 + step_1 2 metrics + 2 pair counts) + 1 × 2
    r = next(r for r in rows if r["variant"] == "filter.weight=1" and r["concept"] == "b" and r["stage"] == "step_1"
             and r["metric"] == "eval/clip_t")
    assert float(r["mean"]) == pytest.approx(0.29)


def test_report_cli_errors_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dbdpo.report", str(tmp_path / "nothing")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and "not a folder of runs" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "dbdpo.report", str(tmp_path / "empty")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and "no runs" in proc.stderr
