"""Prompt data, COCO mining, the prompt pool and `python -m dbdpo.prompts`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from dbdpo.errors import ConfigError, DataError
from dbdpo.prompts import (
    CATEGORIES,
    CLASS_TO_COCO,
    PLACEHOLDER,
    SUBJECTS,
    PromptTruncatedWarning,
    build_pool,
    eval_prompts,
    format_prompt,
    get_subject,
    load_agnostic,
    mine_coco,
    read_pool,
    read_pool_parts,
    split_pool,
    truncate_prompt,
    write_pool,
)
from dbdpo.prompts.__main__ import main
from dbdpo.prompts.pool import AGNOSTIC_FILE

REPO = Path(__file__).resolve().parents[1]


def _norm(p: str) -> str:
    words = re.sub(r"[^\w\s]", " ", p.lower()).split()
    return " ".join(w for w in words if w not in {"a", "an", "the"})


# ---- shipped data -------------------------------------------------------------------------------


def _agnostic_rows() -> list[dict]:
    return [json.loads(line) for line in AGNOSTIC_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_agnostic_file_shape():
    rows = _agnostic_rows()
    assert len(rows) == 1000
    assert Counter(r["category"] for r in rows) == {c: 200 for c in CATEGORIES}
    assert all(set(r) == {"prompt", "category", "live_only"} and isinstance(r["live_only"], bool) for r in rows)
    assert all(r["prompt"].count(PLACEHOLDER) == 1 for r in rows)
    assert len({_norm(r["prompt"]) for r in rows}) == 1000
    assert all(r["prompt"] == r["prompt"].strip() and "  " not in r["prompt"] for r in rows)
    # object concepts still get outfit prompts
    assert sum(r["category"] == "outfit" and not r["live_only"] for r in rows) >= 50


def test_agnostic_prompts_do_not_leak_eval_prompts():
    evals = {_norm(p) for live in (True, False) for w in ("full", "long") for p in eval_prompts(live, w)}
    assert not evals & {_norm(r["prompt"]) for r in _agnostic_rows()}


def test_agnostic_generator_reproduces_file():
    from dbdpo.prompts import _make_agnostic

    assert _make_agnostic.main(["--check"]) == 0


def test_dreambench_prompt_sets():
    live, obj = eval_prompts(True), eval_prompts(False)
    sizes = [len(eval_prompts(lv, w)) for w in ("full", "long", "val") for lv in (True, False)]
    assert sizes == [25, 25, 10, 10, 5, 5]
    shared = live[:10] + live[20:]
    assert shared == obj[:10] + obj[20:]
    assert "a [V*] in the jungle" in shared and "a cube shaped [V*]" in shared
    assert "a [V*] wearing a santa hat" in live and "a [V*] wearing a santa hat" not in obj
    assert "a [V*] on top of a mirror" in obj and "a [V*] on top of a mirror" not in live
    assert set(eval_prompts(True, "val")) <= set(live) and set(eval_prompts(False, "val")) <= set(obj)
    long_live = eval_prompts(True, "long")
    assert long_live[0].startswith("[V*] in a chief outfit")
    for w in ("full", "long", "val"):
        for lv in (True, False):
            assert all(p.count(PLACEHOLDER) == 1 for p in eval_prompts(lv, w))
    with pytest.raises(ConfigError, match="full"):
        eval_prompts(True, "test")
    data = json.loads((AGNOSTIC_FILE.parent / "dreambench_prompts.json").read_text(encoding="utf-8"))
    assert "CC BY 4.0" in data["source"]["live"] and "appendix C" in data["source"]["long_object"]


def test_subject_registry():
    assert len(SUBJECTS) == 30
    live = {s.name for s in SUBJECTS.values() if s.live}
    assert live == {"cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}
    assert {SUBJECTS[n].class_name for n in live} == {"cat", "dog"}
    assert all(s.class_name not in {"cat", "dog"} for s in SUBJECTS.values() if not s.live)
    assert get_subject("bear_plushie").class_name == "stuffed animal"
    assert {s.class_name for s in SUBJECTS.values()} <= set(CLASS_TO_COCO)
    with pytest.raises(ConfigError, match="dog6"):
        get_subject("dog4")


def test_concept_configs_match_registry():
    from omegaconf import OmegaConf

    files = sorted((REPO / "conf" / "concept" / "dreambench").glob("*.yaml"))
    assert len(files) == 30
    for f in files:
        c = OmegaConf.load(f)
        s = SUBJECTS[f.stem]
        assert (c.name, c.class_name, c.live, c.token) == (s.name, s.class_name, s.live, "sks")
        assert OmegaConf.to_container(c)["path"] == "${paths.dreambench_root}/" + s.name


def test_format_prompt():
    assert format_prompt("a [V*] in the jungle", "sks dog") == "a sks dog in the jungle"
    assert format_prompt("[V*] in a chief outfit", "sks cat") == "sks cat in a chief outfit"
    assert format_prompt("a [V*] in the jungle", "") == "a in the jungle"
    with pytest.raises(DataError):
        format_prompt("a dog in the jungle", "sks dog")


# ---- COCO ----------------------------------------------------------------------------------------


def _write_coco(d: Path, year: int = 2017) -> tuple[Path, Path]:
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(1, 6)]
    categories = [
        {"id": 17, "name": "cat", "supercategory": "animal"},
        {"id": 18, "name": "dog", "supercategory": "animal"},
        {"id": 27, "name": "backpack", "supercategory": "accessory"},
        {"id": 88, "name": "teddy bear", "supercategory": "indoor"},
    ]
    instances = {"images": images, "categories": categories, "annotations": [
        {"id": 1, "image_id": 1, "category_id": 18},
        {"id": 2, "image_id": 2, "category_id": 18},
        {"id": 3, "image_id": 3, "category_id": 17},
        {"id": 4, "image_id": 4, "category_id": 17},
        {"id": 5, "image_id": 4, "category_id": 18},
        {"id": 6, "image_id": 5, "category_id": 88},
    ]}
    caps = [
        (1, "A black dog."),
        (1, "a black dog and a white dog"),
        (1, "A man eating a hot dog"),
        (2, "A black dog"),  # duplicate after normalisation
        (2, "Two dogs playing in the grass."),
        (2, "A small dog laying on a bean bag "),
        (3, "A dog sits on a bed."),  # image without the dog label
        (4, "A dog sits on top of a bed."),
        (4, "black dogs and a cat"),
        (5, "A teddy bear on a shelf."),
    ]
    captions = {"images": images, "annotations": [
        {"id": 100 + i, "image_id": img, "caption": c} for i, (img, c) in enumerate(caps)]}
    cp, ip = d / f"captions_train{year}.json", d / f"instances_train{year}.json"
    cp.write_text(json.dumps(captions))
    ip.write_text(json.dumps(instances))
    return cp, ip


DOG_PROMPTS = ["a [V*] sits on top of a bed", "a black [V*]", "a small [V*] laying on a bean bag"]


def test_mine_coco_exact(tmp_path):
    cp, ip = _write_coco(tmp_path)
    with pytest.warns(UserWarning, match="only 3"):
        assert mine_coco(cp, ip, "dog") == DOG_PROMPTS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = mine_coco(cp, ip, "dog", n=2, seed=1)
        assert len(two) == 2 and set(two) <= set(DOG_PROMPTS)
        assert mine_coco(cp, ip, "dog", n=2, seed=1) == two
        assert mine_coco(cp, ip, "dog", n=3) == DOG_PROMPTS
    with pytest.warns(UserWarning):
        assert mine_coco(cp, ip, "toy", n=5) == ["a [V*] on a shelf"]
        assert mine_coco(cp, ip, "Stuffed_Animal", n=5) == ["a [V*] on a shelf"]


def test_mine_coco_2014_folder(tmp_path):
    _write_coco(tmp_path, year=2014)
    with pytest.warns(UserWarning):
        assert mine_coco(tmp_path, tmp_path, "dog") == DOG_PROMPTS


def test_mine_coco_errors(tmp_path):
    cp, ip = _write_coco(tmp_path)
    with pytest.raises(DataError, match=r"cocodataset\.org.*annotations_trainval2017\.zip|annotations_trainval2017"):
        mine_coco(tmp_path / "captions_missing.json", ip, "dog")
    with pytest.raises(DataError, match="cocodataset.org"):
        mine_coco(cp, tmp_path / "nope.json", "dog")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"foo": 1}))
    with pytest.raises(DataError, match="cocodataset.org"):
        mine_coco(bad, ip, "dog")
    with pytest.raises(DataError, match="categories"):
        mine_coco(cp, cp, "dog")  # a captions file where instances are expected
    notjson = tmp_path / "x.json"
    notjson.write_text("not json")
    with pytest.raises(DataError, match="cocodataset.org"):
        mine_coco(notjson, ip, "dog")
    with pytest.raises(ConfigError, match="stuffed animal"):
        mine_coco(cp, ip, "giraffe")


# ---- pool ----------------------------------------------------------------------------------------


COCO = [f"a [V*] near landmark number {i}" for i in range(600)]


def test_pool_seeded_and_ratio():
    a = build_pool("dog", True, 400, 0.75, seed=0, coco_prompts=COCO)
    assert a == build_pool("dog", True, 400, 0.75, seed=0, coco_prompts=COCO)
    assert a != build_pool("dog", True, 400, 0.75, seed=1, coco_prompts=COCO)
    assert len(a) == 400 and len({p.prompt for p in a}) == 400
    src = Counter(p.source for p in a)
    assert src == {"coco": 300, "agnostic": 100}
    assert all(p.category is None for p in a if p.source == "coco")
    assert all(p.category in CATEGORIES for p in a if p.source == "agnostic")
    # shuffled: the sources are interleaved
    assert {p.source for p in a[:50]} == {"coco", "agnostic"}


def test_pool_agnostic_only_and_objects():
    pool = build_pool("backpack", False, 300, 0.75, seed=3)
    assert all(p.source == "agnostic" for p in pool)
    live_only = {r["prompt"] for r in _agnostic_rows() if r["live_only"]}
    assert not live_only & {p.prompt for p in pool}
    assert not live_only & {p.prompt for p in load_agnostic(False)}
    assert len(load_agnostic(True)) == 1000
    assert Counter(p.category for p in load_agnostic(False))["outfit"] >= 50
    assert build_pool("backpack", False, 300, 0.75, seed=3, coco_prompts=[]) == pool


def test_pool_shortfall_and_limits():
    with pytest.warns(UserWarning, match="only 10 COCO"):
        pool = build_pool("dog", True, 100, 0.5, seed=0, coco_prompts=COCO[:10])
    assert Counter(p.source for p in pool) == {"coco": 10, "agnostic": 90}
    with pytest.warns(UserWarning, match="agnostic"):
        pool = build_pool("dog", True, 1200, 0.0, seed=0, coco_prompts=COCO)
    assert Counter(p.source for p in pool) == {"coco": 200, "agnostic": 1000}
    with pytest.raises(ConfigError, match=r"prompts\.n"):
        build_pool("dog", True, 2000, 0.75, seed=0, coco_prompts=COCO)
    # agnostic-only: capped at what suits the concept, with a warning naming the fix
    with pytest.warns(UserWarning, match="prompts.coco_prompts"):
        capped = build_pool("vase", False, 1000, 0.75, seed=0)
    assert len(capped) == len({p.prompt for p in capped}) < 1000
    assert not any(p.source == "coco" for p in capped)
    with pytest.raises(ConfigError, match=r"prompts\.n"):
        build_pool("dog", True, 0, 0.75, seed=0)
    with pytest.raises(ConfigError, match="coco_fraction"):
        build_pool("dog", True, 10, 1.5, seed=0)
    with pytest.raises(DataError, match="coco_prompts"):
        build_pool("dog", True, 10, 0.5, seed=0, coco_prompts=["a dog without placeholder"])


def test_split_pool():
    pool = build_pool("cat", True, 101, 0.0, seed=0)
    parts = split_pool(pool, 3)
    assert [len(p) for p in parts] == [34, 34, 33]
    flat = [p for part in parts for p in part]
    assert flat == pool and len({p.prompt for p in flat}) == 101
    assert split_pool(pool, 1) == [pool]
    with pytest.raises(ConfigError):
        split_pool(pool, 0)
    with pytest.raises(ConfigError):
        split_pool(pool[:2], 3)


def test_pool_roundtrip(tmp_path):
    pool = build_pool("dog", True, 50, 0.5, seed=0, coco_prompts=COCO)
    write_pool(tmp_path / "pool.jsonl", pool)
    assert read_pool(tmp_path / "pool.jsonl") == pool
    parts = split_pool(pool, 2)
    write_pool(tmp_path / "parts.jsonl", parts)
    assert read_pool_parts(tmp_path / "parts.jsonl") == parts
    assert read_pool(tmp_path / "parts.jsonl") == pool
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(DataError):
        read_pool(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(DataError, match="line 1"):
        read_pool(tmp_path / "bad.jsonl")


# ---- truncation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_tokenizer():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


def test_truncate_long_prompt(clip_tokenizer):
    prompt = "a sks dog " + " ".join(f"with a shiny red balloon number {i}," for i in range(40))
    assert len(clip_tokenizer.encode(prompt)) > 75
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = truncate_prompt(prompt, clip_tokenizer)
    assert len(w) == 1 and issubclass(w[0].category, PromptTruncatedWarning)
    assert str(len(clip_tokenizer.encode(prompt))) in str(w[0].message)
    assert len(clip_tokenizer.encode(out)) <= 75
    assert prompt.startswith(out) and prompt[len(out)] in " ,"
    assert len(clip_tokenizer.encode(out)) >= 65  # cut close to the limit, not far before it


def test_truncate_short_prompt(clip_tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in eval_prompts(True, "long") + eval_prompts(False, "long"):
            assert truncate_prompt(p, clip_tokenizer) == p


def test_truncate_with_counter():
    def count(s: str) -> int:
        return len(s.split())

    with pytest.warns(PromptTruncatedWarning, match="12"):
        assert truncate_prompt("one two three four five six seven eight nine ten eleven twelve", count, 5) == \
            "one two three four five"
    assert truncate_prompt("short prompt", count, 5) == "short prompt"
    with pytest.warns(PromptTruncatedWarning):
        assert truncate_prompt("abcdefghij", len, 4) == "abcd"  # a single over-long word is cut inside


# ---- CLI -----------------------------------------------------------------------------------------


def test_cli_show(capsys, tmp_path):
    assert main(["show"]) == 0
    out = capsys.readouterr().out
    assert "appearance=200" in out and "DreamBench live" in out and "CC BY 4.0" in out
    pool = build_pool("dog", True, 20, 0.5, seed=0, coco_prompts=COCO)
    write_pool(tmp_path / "p.jsonl", split_pool(pool, 2))
    assert main(["show", str(tmp_path / "p.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "2 part(s)" in out and "coco=10" in out


def test_cli_coco_and_build(capsys, tmp_path):
    cp, ip = _write_coco(tmp_path)
    txt = tmp_path / "dog.txt"
    with pytest.warns(UserWarning):
        assert main(["coco", "--captions", str(cp), "--instances", str(ip), "--class-name", "dog",
                     "--out", str(txt)]) == 0
    assert txt.read_text().splitlines() == DOG_PROMPTS
    assert main(["show", str(txt)]) == 0

    out = tmp_path / "pool.jsonl"
    with pytest.warns(UserWarning):  # only 3 COCO prompts
        assert main(["build", "--class-name", "dog", "--live", "--n", "40", "--coco-fraction", "0.5",
                     "--coco-prompts", str(txt), "--parts", "2", "--seed", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and Counter(r["part"] for r in rows) == {0: 20, 1: 20}
    assert sum(r["source"] == "coco" for r in rows) == 3

    assert main(["build", "--subject", "backpack", "--n", "30", "--out", str(out)]) == 0
    live_only = {r["prompt"] for r in _agnostic_rows() if r["live_only"]}
    assert not live_only & {p.prompt for p in read_pool(out)}
    capsys.readouterr()


def test_cli_errors(capsys, tmp_path):
    assert main(["build", "--class-name", "dog", "--n", "0", "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "prompts.n" in err and "Traceback" not in err
    assert main(["coco", "--captions", str(tmp_path / "a.json"), "--instances", str(tmp_path / "b.json"),
                 "--class-name", "dog", "--out", str(tmp_path / "o.txt")]) == 2
    assert "cocodataset.org" in capsys.readouterr().err
    assert main(["build", "--subject", "dog4", "--out", str(tmp_path / "x.jsonl")]) == 2


@pytest.mark.parametrize("cmd", [[], ["coco"], ["build"], ["show"]])
def test_cli_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "dbdpo.prompts", "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0 and "build" in r.stdout
