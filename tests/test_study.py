"""The user study: a blind study built from a real run's evaluations, the server's contract (tokens, answers,
double submits, path traversal, a kill between answers), Table 1 from a hand-made vote table, and the page in a
real headless Chromium driven with mouse and keyboard."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dbdpo.errors import DbdpoError
from dbdpo.study.build import build, load_manifest
from dbdpo.study.results import bootstrap_ci, fleiss_kappa, pairwise_agreement, results, table
from dbdpo.study.store import Votes

ROOT = Path(__file__).resolve().parents[1]
RUN = ["backbone=tiny", "concept=default", "method.max_steps=4", "method.batch_size=2", "prompts.n=4",
       "generate.images_per_prompt=2", "eval.max_prompts=4", "eval.images_per_prompt=2", "logger=none",
       "progress=false", "steps=1", "dpo.epochs=1", "dpo.batch_size=2", "dpo.micro_batch_size=1",
       "trainer.checkpoint_every=0", "trainer.accelerator=cpu"]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *RUN, f"hydra.run.dir={d}"], cwd=d,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


@pytest.fixture
def study(run_dir, tmp_path) -> Path:
    out = tmp_path / "study"
    build(out, [(f"{run_dir}:step_1", f"{run_dir}:personalize")], assessors=3, overlap=2, tasks_per_assessor=4,
          seed=7)
    return out


def _tokens(study: Path) -> list[str]:
    return list(load_manifest(study)["assessors"])


# ---- build --------------------------------------------------------------------------------------------------------

def test_build_pairs_the_same_prompt_and_seed_blind_and_assigns_tasks(run_dir, study):
    from dbdpo.generate import load_samples

    m = load_manifest(study)
    assert len(m["tasks"]) == 8  # 4 prompts × 2 seeds, every one assigned: 2 shared + 3 × 2 own ≥ 8
    people = list(m["assessors"].values())
    assert all(len(p["tasks"]) == 4 for p in people)
    shared = set.intersection(*(set(p["tasks"]) for p in people))
    assert len(shared) == 2
    assert {t for p in people for t in p["tasks"]} == {t["id"] for t in m["tasks"]}
    a, b = load_samples(run_dir / "step_1" / "eval" / "samples"), load_samples(run_dir / "personalize" / "eval" /
                                                                                "samples")
    for t in m["tasks"]:
        for side, s in (("A", a), ("B", b)):
            i = next(i for i in range(len(s)) if s.prompts[i] == t["template"] and s.seeds[i] == t["seed"])
            assert (study / "images" / f"{t['images'][side]}.png").read_bytes() == s.images[i].read_bytes()
        assert t["prompt"] == t["template"].replace("[V*]", "toy") and t["shown"] in ("AB", "BA")
        assert t["clip"]["A"] and t["clip"]["B"]
    assert {t["shown"] for t in m["tasks"]} == {"AB", "BA"}
    names = [p.name for p in (study / "images").iterdir()] + [p.name for p in (study / "refs").iterdir()]
    assert all(len(n) == 20 and n.endswith(".png") and int(n[:16], 16) >= 0 for n in names)
    assert len(list((study / "refs").iterdir())) == len(m["concepts"]["toy"]["refs"]) > 0
    again = build(study.parent / "again", [(f"{run_dir}:step_1", f"{run_dir}:personalize")], assessors=3,
                  overlap=2, tasks_per_assessor=4, seed=7)
    assert [(t["template"], t["seed"], t["shown"]) for t in again["tasks"]] == \
        [(t["template"], t["seed"], t["shown"]) for t in m["tasks"]]
    assert m["unassigned"] == 0
    few = build(study.parent / "few", [(f"{run_dir}:step_1", f"{run_dir}:personalize")], tasks_per_assessor=3)
    assert len(few["tasks"]) == 3 and few["unassigned"] == 5 and len(list((study.parent / "few" / "images").iterdir())) == 6


def test_build_errors_name_what_to_change(run_dir, tmp_path):
    with pytest.raises(DbdpoError, match="no evaluation samples.*stages with some: personalize/eval"):
        build(tmp_path / "s", [(f"{run_dir}:step_9", f"{run_dir}:personalize")])
    with pytest.raises(DbdpoError, match="not a finished run folder"):
        build(tmp_path / "s", [(str(tmp_path / "nope"), f"{run_dir}:personalize")])
    proc = subprocess.run([sys.executable, "-m", "dbdpo.study", "build", str(run_dir), "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "pairs" in proc.stderr and "Traceback" not in proc.stderr


# ---- the server ----------------------------------------------------------------------------------------------------

def _client(study: Path):
    from dbdpo.study.server import create_app

    return create_app(study).test_client()


def _rows(study: Path) -> list[tuple]:
    return Votes(study / "votes.sqlite").rows()


def test_page_and_api_are_blind_and_resume_where_the_assessor_left(study, run_dir):
    c = _client(study)
    tok = _tokens(study)[0]
    page = c.get(f"/s/{tok}")
    assert page.status_code == 200 and b"Which image" not in page.data  # questions come from the API
    state = c.get(f"/api/{tok}/state").get_json()
    assert state["total"] == 4 and state["done"] == 0 and len(state["task"]["images"]) == 2
    text = json.dumps(state) + page.data.decode() + c.get("/static/app.js").data.decode()
    for secret in ("step_1", "personalize", "dreambooth", run_dir.name, "manifest"):
        assert secret not in text
    for url in [*state["task"]["refs"], *state["task"]["images"]]:
        r = c.get(url)
        assert r.status_code == 200 and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    first = state["task"]["id"]
    r = c.post(f"/api/{tok}/answer", json={"task": first, "answers": {"1": "1", "2": "none", "3": "2"}})
    assert r.status_code == 200 and r.get_json()["stored"] and r.get_json()["done"] == 1
    again = _client(study).get(f"/api/{tok}/state").get_json()  # a new server process: where the assessor left
    assert again["done"] == 1 and again["task"]["id"] != first
    shown = next(t["shown"] for t in load_manifest(study)["tasks"] if t["id"] == first)
    assert [r[:5] for r in _rows(study)] == [(tok, first, 1, "1", shown), (tok, first, 2, "none", shown),
                                             (tok, first, 3, "2", shown)]


def test_double_submit_is_stored_once(study):
    c = _client(study)
    tok = _tokens(study)[1]
    tid = c.get(f"/api/{tok}/state").get_json()["task"]["id"]
    body = {"task": tid, "answers": {"1": "2", "2": "2", "3": "1"}}
    assert c.post(f"/api/{tok}/answer", json=body).get_json()["stored"] is True
    second = c.post(f"/api/{tok}/answer", json={**body, "answers": {"1": "1", "2": "1", "3": "1"}})
    assert second.status_code == 200 and second.get_json()["stored"] is False
    assert [r[3] for r in _rows(study)] == ["2", "2", "1"]  # the first answers, once


@pytest.mark.parametrize("method, url, body, code", [
    ("get", "/s/NOPE", None, 404),
    ("get", "/api/NOPE/state", None, 404),
    ("post", "/api/NOPE/answer", {"task": "x", "answers": {"1": "1", "2": "1", "3": "1"}}, 404),
    ("post", "/api/{tok}/answer", {"task": "0000000000000000", "answers": {"1": "1", "2": "1", "3": "1"}}, 404),
    ("post", "/api/{tok}/answer", {"task": "{task}", "answers": {"1": "1", "2": "1"}}, 400),
    ("post", "/api/{tok}/answer", {"task": "{task}", "answers": {"1": "1", "2": "yes", "3": "1"}}, 400),
    ("post", "/api/{tok}/answer", {"task": "{task}", "answers": {"1": "1", "2": "1", "3": "1", "4": "1"}}, 400),
    ("post", "/api/{tok}/answer", "not json", 400),
    ("get", "/api/{tok}/answer", None, 405),
    ("get", "/img/{tok}/../manifest.json", None, 404),
    ("get", "/img/{tok}/..%2F..%2Fmanifest.json", None, 404),
    ("get", "/img/{tok}/%2e%2e%2fvotes.sqlite", None, 404),
    ("get", "/img/{tok}/{other_image}", None, 404),  # an image of a task this assessor does not have
    ("get", "/img/NOPE/{image}", None, 404),
    ("get", "/static/..%2Fbuild.py", None, 404),
    ("get", "/static/index.html%00.js", None, 404),
    ("get", "/manifest.json", None, 404),
    ("get", "/images/{image}.png", None, 404),
])
def test_bad_requests_get_a_clear_4xx_and_write_nothing(study, method, url, body, code):
    m = load_manifest(study)
    tok, other = _tokens(study)[:2]
    mine = m["assessors"][tok]["tasks"]
    others = [t for t in m["assessors"][other]["tasks"] if t not in mine]
    task = next(t for t in m["tasks"] if t["id"] == mine[0])
    other_image = next(t for t in m["tasks"] if t["id"] == others[0])["images"]["A"]
    fill = dict(tok=tok, task=task["id"], image=task["images"]["A"], other_image=other_image)
    url = url.format(**fill)
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace("{task}", fill["task"]))
    c = _client(study)
    if method == "get":
        r = c.get(url)
    elif isinstance(body, dict):
        r = c.post(url, json=body)
    else:
        r = c.post(url, data=body, content_type="text/plain")
    assert r.status_code == code
    if r.is_json:
        assert r.get_json()["error"]
    assert _rows(study) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(study: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "dbdpo.study", "serve", str(study), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while time.time() - t0 < 60:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
    raise AssertionError("the study server did not start")


def _http(port: int, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body else "GET",
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_a_server_killed_between_two_answers_loses_nothing(study):
    tok = _tokens(study)[2]
    port = _free_port()
    proc = _serve(study, port)
    try:
        tid = _http(port, f"/api/{tok}/state")["task"]["id"]
        assert _http(port, f"/api/{tok}/answer", {"task": tid, "answers": {"1": "1", "2": "2", "3": "none"}})["stored"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(study / "votes.sqlite") as db:
        assert db.execute("SELECT question, answer FROM answers ORDER BY question").fetchall() == \
            [(1, "1"), (2, "2"), (3, "none")]
    proc = _serve(study, port)
    try:
        state = _http(port, f"/api/{tok}/state")
        assert state["done"] == 1 and state["task"]["id"] != tid
    finally:
        proc.kill()
        proc.wait()


# ---- results -----------------------------------------------------------------------------------------------------

def _hand_study(tmp_path: Path) -> tuple[Path, dict]:
    """4 tasks of one compared pair; CLIP (evaluator) prefers A on TS for t0, t1 and on IS for t0 only."""
    clip = {"t0": ({"is": .9, "ts": .6}, {"is": .8, "ts": .5}), "t1": ({"is": .7, "ts": .6}, {"is": .8, "ts": .5}),
            "t2": ({"is": .7, "ts": .4}, {"is": .8, "ts": .5}), "t3": ({"is": .7, "ts": .4}, {"is": .8, "ts": .5})}
    tasks = [{"id": t, "pair": 0, "concept": "c", "prompt": "p", "template": "p", "seed": 0,
              "images": {"A": "a" * 16, "B": "b" * 16}, "shown": "AB" if t in ("t0", "t2") else "BA",
              "clip": {"A": a, "B": b}} for t, (a, b) in clip.items()]
    manifest = {"pairs": [{"name": "dpo vs db", "A": {"run": "r", "stage": "step_2"},
                           "B": {"run": "r", "stage": "personalize"}}],
                "concepts": {"c": {"class_name": "c", "refs": []}}, "tasks": tasks,
                "assessors": {"x": {"name": "x", "tasks": ["t0", "t1", "t2", "t3"]},
                              "y": {"name": "y", "tasks": ["t0", "t1"]}}}
    study = tmp_path / "hand"
    study.mkdir()
    (study / "manifest.json").write_text(json.dumps(manifest))
    v = Votes(study / "votes.sqlite")
    # question 1 as sides: x: t0 A, t1 A, t2 B, t3 none; y: t0 A, t1 B   (shown AB for t0/t2, BA for t1/t3)
    v.record("x", "t0", {1: "1", 2: "1", 3: "1"}, "AB")
    v.record("x", "t1", {1: "2", 2: "2", 3: "2"}, "BA")
    v.record("x", "t2", {1: "2", 2: "none", 3: "2"}, "AB")
    v.record("x", "t3", {1: "none", 2: "1", 3: "none"}, "BA")
    v.record("y", "t0", {1: "1", 2: "2", 3: "1"}, "AB")
    v.record("y", "t1", {1: "1", 2: "2", 3: "none"}, "BA")
    return study, manifest


def test_table1_from_a_hand_made_vote_table(tmp_path, monkeypatch):
    study, manifest = _hand_study(tmp_path)
    recs = {r["question"]: r for r in table(manifest, Votes(study / "votes.sqlite").rows(), n_boot=4000)}
    q1 = recs[1]  # sides: A, A, B, none, A, B → win 3/6, lose 2/6, no diff 1/6
    assert (q1["answers"], q1["assessors"], q1["tasks"]) == (6, 2, 4)
    assert q1["win"] == pytest.approx(50.0) and q1["lose"] == pytest.approx(100 / 3) and \
        q1["nodiff"] == pytest.approx(100 / 6)
    assert q1["win_lo"] <= q1["win"] <= q1["win_hi"] and 0 <= q1["nodiff_lo"] and q1["lose_hi"] <= 100
    # overlap: t0 (A, A) agree, t1 (A, B) disagree → pairwise agreement 1/2; Fleiss: p_A = 3/4, p_B = 1/4,
    # P_e = 10/16, P̄ = 1/2 → κ = (1/2 − 5/8) / (3/8) = −1/3
    assert q1["overlap_tasks"] == 2 and q1["agreement"] == pytest.approx(0.5)
    assert q1["fleiss_kappa"] == pytest.approx(-1 / 3)
    # CLIP, question 1 (ΔTS): prefers A on t0, t1; B on t2, t3 → 50 %. Decided human answers: t0 A, A (agree),
    # t1 A (agree), B (no), t2 B (agree) → 4 of 5
    assert q1["clip_prefers_method"] == pytest.approx(50.0) and q1["clip_decided"] == 5
    assert q1["clip_agreement"] == pytest.approx(80.0)
    q2 = recs[2]  # sides: x: A, A, none, B (t3 shown BA, answer 1 → B); y: t0 B, t1 A
    assert (q2["win"], q2["lose"], q2["nodiff"]) == pytest.approx((50.0, 100 / 3, 100 / 6))
    # CLIP on IS prefers A on t0 only: decided answers t0 A (agree), B (no), t1 A, A (no, no), t3 B (agree) → 2/5
    assert q2["clip_agreement"] == pytest.approx(40.0)
    assert np.isnan(recs[3]["clip_agreement"])  # question 3 has no CLIP counterpart
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = results(study, n_boot=500, wandb_project="dbdpo-study")
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/study/table1_*.table.json"))
    assert len(tables) == 1 and len(json.loads(tables[0].read_text())["data"]) == 3
    md = (study / "results.md").read_text()
    assert "dpo vs db" in md and "50.0 [" in md and (study / "results.csv").read_text().count("\n") == 4
    assert len(out) == 3


def test_bootstrap_intervals_and_agreement_by_hand():
    # every task a win: the interval is the point
    np.testing.assert_allclose(bootstrap_ci(np.array([[1, 0, 0]] * 5)), [[100, 100], [0, 0], [0, 0]])
    # two tasks, one win and one loss: win% is 0, 50 or 100 with probability 1/4, 1/2, 1/4 → (2.5, 97.5) = (0, 100)
    ci = bootstrap_ci(np.array([[1, 0, 0], [0, 1, 0]]), n_boot=20000)
    np.testing.assert_allclose(ci[:2], [[0, 100], [0, 100]])
    np.testing.assert_allclose(ci[2], [0, 0])
    # unanimous raters: agreement 1; κ is 1 when categories vary across items
    t = np.array([[3, 0, 0], [0, 3, 0]])
    assert pairwise_agreement(t) == 1.0 and fleiss_kappa(t) == pytest.approx(1.0)
    assert np.isnan(fleiss_kappa(np.array([[1, 0, 0]])))  # one rater: nothing to agree on


# ---- the page in a real browser ------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it)")
    return sync_playwright


def test_an_assessor_answers_with_mouse_and_keyboard_reloads_and_resumes(study):
    sync_playwright = _browser()
    from playwright.sync_api import expect

    tok = _tokens(study)[0]
    port = _free_port()
    server = _serve(study, port)
    given: list[tuple[str, dict]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/s/{tok}")
            page.wait_for_selector("#task:not([hidden])")
            assert page.inner_text("#progress-text") == "Task 1 of 4"

            def task_id() -> str:
                return _http(port, f"/api/{tok}/state")["task"]["id"]

            # task 1 with the mouse
            tid = task_id()
            for q, label in (("1", "1"), ("2", "Can't decide"), ("3", "2")):
                page.click(f".question[data-question='{q}'] button:text-is(\"{label}\")")
            assert page.is_enabled("#submit")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "study_task.png"), full_page=True)
            page.click("#submit")
            given.append((tid, {1: "1", 2: "none", 3: "2"}))
            expect(page.locator("#progress-text")).to_have_text("Task 2 of 4")
            # task 2 with the keyboard: a wrong key, Backspace, then 2 / 0 / 1 and Enter
            tid = task_id()
            page.keyboard.press("1")
            page.keyboard.press("Backspace")
            for key in ("2", "0", "1"):
                page.keyboard.press(key)
            page.keyboard.press("Enter")
            given.append((tid, {1: "2", 2: "none", 3: "1"}))
            expect(page.locator("#progress-text")).to_have_text("Task 3 of 4")
            # reload: the page comes back at task 3
            page.reload()
            page.wait_for_selector("#task:not([hidden])")
            assert page.inner_text("#progress-text") == "Task 3 of 4"
            tid = task_id()
            for key in ("1", "1", "1", "Enter"):
                page.keyboard.press(key)
            given.append((tid, {1: "1", 2: "1", 3: "1"}))
            expect(page.locator("#progress-text")).to_have_text("Task 4 of 4")
            tid = task_id()
            page.keyboard.press("2")
            page.click(".question[data-question='2'] button:text-is(\"1\")")
            page.keyboard.press("0")
            page.keyboard.press("Enter")
            given.append((tid, {1: "2", 2: "1", 3: "none"}))
            page.wait_for_selector("#done:not([hidden])")
            assert page.inner_text("#progress-text") == "Done: 4 of 4 tasks"
            browser.close()
    finally:
        server.kill()
        server.wait()
    shown = {t["id"]: t["shown"] for t in load_manifest(study)["tasks"]}
    expected = sorted((tok, tid, q, a, shown[tid]) for tid, ans in given for q, a in ans.items())
    assert sorted(r[:5] for r in _rows(study)) == expected
