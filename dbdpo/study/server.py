"""The study's web page: `python -m dbdpo.study serve STUDY` (Flask).

Routes (TOKEN is an assessor's own; nothing else gives access):
    GET  /s/TOKEN              the page (one task at a time; static HTML + JS from this package, no internet)
    GET  /api/TOKEN/state      progress and the next unanswered task: prompt, reference and image URLs
    POST /api/TOKEN/answer     {"task": id, "answers": {"1": a1, "2": a2, "3": a3}}, each a in ('1','2','none')
    GET  /img/TOKEN/ID         an image of one of this assessor's tasks (ID: 16 hex digits, looked up in the
                               manifest: no part of a request becomes a path)
An unknown token, task or image is 404, a malformed answer 400; neither writes anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import ANSWERS, QUESTIONS
from .build import VOTES, load_manifest
from .store import Votes

IMAGE_ID = re.compile(r"^[0-9a-f]{16}$")
STATIC = Path(__file__).parent / "static"


def create_app(study: str | Path):
    from flask import Flask, abort, jsonify, request, send_file, send_from_directory

    study = Path(study).resolve()
    manifest = load_manifest(study)
    tasks = {t["id"]: t for t in manifest["tasks"]}
    people = manifest["assessors"]
    votes = Votes(study / VOTES)
    files: dict[str, dict[str, Path]] = {}  # token → image id → file, for this assessor's tasks only
    for token, person in people.items():
        allowed = {}
        for tid in person["tasks"]:
            t = tasks[tid]
            for iid in t["images"].values():
                allowed[iid] = study / "images" / f"{iid}.png"
            for rid in manifest["concepts"][t["concept"]]["refs"]:
                allowed[rid] = study / "refs" / f"{rid}.png"
        files[token] = allowed

    app = Flask(__name__, static_folder=None)

    def person(token: str) -> dict:
        p = people.get(token)
        if p is None:
            abort(404, description="unknown assessor link")
        return p

    def state(token: str) -> dict:
        p = person(token)
        done = votes.answered(token)
        nxt = next((tid for tid in p["tasks"] if tid not in done), None)
        out = {"total": len(p["tasks"]), "done": sum(tid in done for tid in p["tasks"]), "task": None,
               "questions": {str(k): v for k, v in QUESTIONS.items()}}
        if nxt is not None:
            t = tasks[nxt]
            first, second = t["shown"][0], t["shown"][1]
            out["task"] = {"id": nxt, "prompt": t["prompt"],
                           "refs": [f"/img/{token}/{r}" for r in manifest["concepts"][t["concept"]]["refs"]],
                           "images": [f"/img/{token}/{t['images'][first]}", f"/img/{token}/{t['images'][second]}"]}
        return out

    @app.after_request
    def headers(resp):
        resp.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self'; style-src 'self'"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    @app.errorhandler(400)
    @app.errorhandler(404)
    @app.errorhandler(405)
    def error(e):
        return jsonify(error=e.description), e.code

    @app.get("/s/<token>")
    def page(token: str):
        person(token)
        return send_from_directory(STATIC, "index.html")

    @app.get("/static/<name>")
    def static_file(name: str):
        if name not in ("app.js", "style.css"):
            abort(404, description="no such file")
        return send_from_directory(STATIC, name)

    @app.get("/api/<token>/state")
    def get_state(token: str):
        return jsonify(state(token))

    @app.post("/api/<token>/answer")
    def answer(token: str):
        p = person(token)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, description="send JSON: {\"task\": id, \"answers\": {\"1\": a, \"2\": a, \"3\": a}}")
        tid = body.get("task")
        if not isinstance(tid, str) or tid not in p["tasks"]:
            abort(404, description="unknown task for this assessor")
        given = body.get("answers")
        if not isinstance(given, dict) or sorted(map(str, given)) != sorted(map(str, QUESTIONS)) or \
                any(given[k] not in ANSWERS for k in given):
            abort(400, description=f"answers must give each of questions {sorted(QUESTIONS)} one of {list(ANSWERS)}")
        new = votes.record(token, tid, {int(k): v for k, v in given.items()}, tasks[tid]["shown"])
        return jsonify({**state(token), "stored": new})

    @app.get("/img/<token>/<iid>")
    def image(token: str, iid: str):
        person(token)
        path = files[token].get(iid) if IMAGE_ID.match(iid) else None
        if path is None:
            abort(404, description="no such image")
        return send_file(path, mimetype="image/png")

    return app


def serve(study: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    from werkzeug.serving import run_simple

    app = create_app(study)
    manifest = load_manifest(study)
    print(f"study {study}: {len(manifest['tasks'])} tasks, {len(manifest['assessors'])} assessors; links:", flush=True)
    for token, p in manifest["assessors"].items():
        print(f"  {p['name']}: http://{host}:{port}/s/{token}", flush=True)
    run_simple(host, port, app, threaded=True, use_reloader=False)
