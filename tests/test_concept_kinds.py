"""Concept kinds plug into the loop through config (`_target_`): the loop itself knows none of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shape_image

ROOT = Path(__file__).resolve().parents[1]

# A third kind of concept, written here and nowhere in dbdpo: photos from a folder, one fixed list of prompts for
# training (in its own order) and evaluation (reversed), and a judge that counts the evaluation samples.
THIRD_KIND = '''
import json
from pathlib import Path

from dbdpo.concept import Concept
from dbdpo.prompts import PoolPrompt


class ListConcept(Concept):
    def __init__(self, name, class_name, path, prompts, token="sks", live=False):
        super().__init__(name=name, class_name=class_name, path=path, token=token, live=live)
        self.prompts = list(prompts)

    def prompt_pool(self, n, seed, coco_fraction=0.0, coco_prompts=None):
        return [PoolPrompt(p, "agnostic", "mine") for p in self.prompts[:n]]

    def eval_prompts(self, which="full"):
        return self.prompts[::-1]

    def judge(self, images, device):
        def count(out_dir):
            n = len(json.loads((Path(out_dir) / "samples" / "shard_00000" / "meta.json").read_text()))
            return {"eval/samples_seen": {"mean": float(n), "std": 0.0, "n": 1}}
        count.labels = {"eval/samples_seen": "samples judged"}
        return count
'''
PROMPTS = ["a [V*] on a red carpet", "a [V*] in the snow", "a [V*] floating in space", "a [V*] under a lamp"]


@pytest.mark.slow
def test_a_third_concept_kind_runs_through_train_py(tmp_path):
    (tmp_path / "mykinds").mkdir()
    (tmp_path / "mykinds" / "third_kind.py").write_text(THIRD_KIND)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]):
        shape_image((40, 40), colour=colour, ellipse=bool(i % 2)).save(photos / f"p{i}.png")
    conf = tmp_path / "myconf" / "concept" / "mine"
    conf.mkdir(parents=True)
    (conf / "blob.yaml").write_text(
        f"_target_: third_kind.ListConcept\nname: blob\nclass_name: blob\npath: {photos}\n"
        f"prompts: {json.dumps(PROMPTS)}\n")
    run_dir = tmp_path / "run"
    args = ["backbone=tiny", "concept=mine/blob", "method.max_steps=2", "prompts.n=4", "generate.images_per_prompt=3", "filter=weighted",
            "eval.images_per_prompt=2", "logger=none", "progress=false", "steps=2",
            f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "mykinds"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    pool = [json.loads(line) for line in (run_dir / "prompts" / "pool.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in pool] == PROMPTS and {r["category"] for r in pool} == {"mine"}
    for s, part in ((1, PROMPTS[:2]), (2, PROMPTS[2:])):
        assert [json.loads(x)["prompt"] for x in (run_dir / f"step_{s}" / "prompts.jsonl").read_text().splitlines()] \
            == part
    meta = json.loads((run_dir / "step_2" / "eval" / "samples" / "shard_00000" / "meta.json").read_text())
    assert list(dict.fromkeys(m["prompt"] for m in meta)) == PROMPTS[::-1]
    assert "sks blob" in meta[0]["text"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"personalize", "step_1", "step_2"} and metrics["concept"] == "blob"
    for stage in ("personalize", "step_2"):
        assert metrics["stages"][stage]["eval/samples_seen"]["mean"] == 8.0  # 4 prompts × 2 images
    assert "samples judged" in proc.stdout  # the judge's column in the printed summary


def test_the_core_loop_imports_no_concept_kind():
    """Importing the loop loads nothing of the miniature world: concept kinds arrive through config only."""
    code = ("import sys, dbdpo.multistep, dbdpo.scores, dbdpo.generate, dbdpo.dpo, dbdpo.personalize; "
            "print([m for m in sys.modules if m.startswith('dbdpo.world')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_concept_configs_name_their_kind():
    from omegaconf import OmegaConf

    from dbdpo.concept import Concept, build_concept
    from dbdpo.world.concepts import RenderedConcept

    for path in sorted((ROOT / "conf" / "concept").rglob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert "_target_" in cfg, path
        cfg.path = "/nonexistent"  # photos are not needed to build the concept
        concept = build_concept(cfg)
        assert isinstance(concept, RenderedConcept if "world" in cfg else Concept), path
        assert concept.eval_prompts("full") and concept.prompt_pool(8, 0)


def test_bad_concept_configs_get_one_clear_error(tmp_path):
    from dbdpo.concept import build_concept
    from dbdpo.errors import ConfigError

    base = {"name": "x", "class_name": "star", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"concept\.world.*RenderedConcept"):
        build_concept({**base, "world": {"shape": "star", "pattern": "zigzag", "colours": ["red", "yellow"]}})
    with pytest.raises(ConfigError, match=r"concept\._target_='no\.such\.Kind'"):
        build_concept({**base, "_target_": "no.such.Kind"})
    with pytest.raises(ConfigError, match=r"not a subclass"):
        build_concept({**base, "_target_": "pathlib.Path"})
    with pytest.raises(ConfigError, match=r"concept\.world\.colours is missing"):
        build_concept({**base, "_target_": "dbdpo.world.concepts.RenderedConcept",
                       "world": {"shape": "star", "pattern": "zigzag"}})
    with pytest.raises(ConfigError, match=r"'concept\.class_name'\] missing"):
        build_concept({"name": "x", "path": str(tmp_path)})
