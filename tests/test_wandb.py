"""W&B (offline): one run per Hydra job, named from its overrides, grouped by sweep, its config flat; per DPO step a
pairs table, the α histogram and the (ΔTS, ΔIS) scatter; labelled evaluation grids, the stage comparison and the
Pareto plot — each also a file in the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_job_multirun_logs_two_wandb_runs_with_tables_and_images(tmp_path):
    args = ["-m", "backbone=tiny", "concept=default", "method.max_steps=4", "method.eval_at=[2,4]", "prompts.n=4",
            "generate.images_per_prompt=3", "eval.max_prompts=2", "eval.images_per_prompt=1", "progress=false",
            "steps=1", "dpo.epochs=1", "dpo.batch_size=2", "dpo.micro_batch_size=2", "seed=0,1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = []
    for job in ("0", "1"):
        d = tmp_path / "sweep" / job
        (run,) = list((d / "wandb").glob("offline-run-*"))  # one W&B run per job, in the job's own folder
        runs.append(run.name)
        media = run / "files" / "media"
        for key in ("images/pairs/alpha_hist/step_1_", "images/pairs/scatter/step_1_", "images/eval/grid/personalize_",
                    "images/eval/grid/step_1_", "images/eval/comparison_", "images/eval/pareto_",
                    "table/pairs/table/step_1_"):
            folder, prefix = (media / key).parent, (media / key).name
            assert any(p.name.startswith(prefix) for p in folder.glob("*")), key
        (table_file,) = list((media / "table" / "pairs" / "table").glob("*.table.json"))
        table = json.loads(table_file.read_text())
        assert table["columns"] == ["winner", "loser", "prompt", "d_ts", "d_is", "alpha"] and table["data"]
        # the same things as files in the run directory
        rows = json.loads((d / "step_1" / "pairs_table.json").read_text())
        assert len(rows) == len(table["data"]) and all(Path(r["winner"]).exists() for r in rows)
        for f in ("step_1/pairs_scatter.png", "step_1/alpha_hist.png", "personalize/eval/grid.png",
                  "step_1/eval/grid.png", "eval_comparison.png", "pareto.png"):
            assert (d / f).stat().st_size > 1000, f
        record = next(run.glob("run-*.wandb")).read_bytes()  # the run's protobuf log: name, group, flat config
        assert f"seed={job}".encode() in record and b"tiny-toy-mix-s1" in record
        assert b"sweep-sweep" in record and b"method.lr" in record and b"dpo.beta" in record
    assert runs[0] != runs[1]
