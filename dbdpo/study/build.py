"""Build a study folder from finished runs: per task the concept's reference photos, the prompt, and the two images
the compared sides generated with the same prompt and seed (their evaluation samples), shown in a random order.

Layout of STUDY/:
    manifest.json   sides of each compared pair, tasks (images, shown order, CLIP scores), assessors and their tasks
    images/<id>.png the compared images, refs/<id>.png the reference photos: ids are random hex, so neither a file
                    name nor a URL says which side an image comes from
    links.txt       one link per assessor
"""

from __future__ import annotations

import random
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DbdpoError
from ..io import read_json, write_json, write_text

MANIFEST = "manifest.json"
VOTES = "votes.sqlite"


@dataclass
class Side:
    """One side of a comparison: a run folder and one of its stages (`personalize`, `step_2`, …)."""

    run: Path
    stage: str

    @property
    def eval_dir(self) -> Path:
        return self.run / self.stage / "eval"

    @property
    def label(self) -> str:
        return f"{self.run.name}:{self.stage}"


def parse_side(spec: str) -> Side:
    """`RUN_DIR` (its last stage) or `RUN_DIR:STAGE`."""
    path, _, stage = spec.rpartition(":") if ":" in spec else (spec, "", "")
    run = Path(path).expanduser()
    if not (run / "metrics.json").exists() and not (run / "config.yaml").exists():
        raise DbdpoError(f"{spec}: {run} is not a finished run folder (no metrics.json); give RUN_DIR or RUN_DIR:STAGE")
    if not stage:
        stages = list(read_json(run / "metrics.json").get("stages", {})) if (run / "metrics.json").exists() else []
        if not stages:
            raise DbdpoError(f"{spec}: the run lists no stages in metrics.json; name one as RUN_DIR:STAGE")
        stage = stages[-1]
    side = Side(run, stage)
    if not (side.eval_dir / "samples").is_dir():
        have = sorted(str(p.parent.relative_to(run)) for p in run.rglob("eval/samples")) if run.is_dir() else []
        raise DbdpoError(f"{spec}: no evaluation samples in {side.eval_dir}; stages with some: "
                         f"{', '.join(have) or 'none'}")
    return side


def _samples(side: Side) -> dict[tuple, dict]:
    """(prompt, sample index, seed) → the sample's image, prompt template and CLIP scores (from eval/scores)."""
    from ..generate import load_samples

    s = load_samples(side.eval_dir / "samples")
    scores: dict[int, dict] = {}
    shard_of = [p.parent.name for p in s.images]
    for shard in dict.fromkeys(shard_of):
        f = side.eval_dir / "scores" / f"{shard}.json"
        if f.exists():
            got = read_json(f)
            for i, is_, ts in zip([i for i, x in enumerate(shard_of) if x == shard], got["is"], got["ts"]):
                scores[i] = {"is": float(is_), "ts": float(ts)}
    return {(s.prompts[i], s.sample_index[i], s.seeds[i]): {"image": s.images[i], "prompt": s.prompts[i],
                                                           "seed": s.seeds[i], "clip": scores.get(i)}
            for i in range(len(s))}


def _concept(side: Side):
    from omegaconf import OmegaConf

    from ..concept import build_concept

    cfg = OmegaConf.load(side.run / "config.yaml")
    concept = build_concept(cfg.concept)
    concept.prepare(int(cfg.backbone.resolution))
    return concept


def _new_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


def build(out: str | Path, compare: list[tuple[str, str]], tasks_per_assessor: int | None = None,
          assessors: int = 1, overlap: int = 0, seed: int = 0, max_tasks: int | None = None,
          refs_per_task: int = 4) -> dict:
    """Write the study folder `out` for the compared pairs (method side, baseline side) and return its manifest.

    Tasks: every (prompt, seed) both sides evaluated, per compared pair (the first `max_tasks` of a seeded
    shuffle). Image 1 / image 2 order: random per task (seed `seed`). Assessors: `overlap` tasks go to every
    assessor (their agreement is measured on these), the others round-robin, each assessor getting at most
    `tasks_per_assessor` tasks (shared ones included); each assessor's order is shuffled."""
    from PIL import Image

    from ..concept import list_concept_images, load_image

    out = Path(out)
    if (out / VOTES).exists():
        raise DbdpoError(f"--out {out} already holds votes ({VOTES}); build a new study into another folder")
    if not compare:
        raise DbdpoError("nothing to compare: give two sides (RUN_A[:STAGE] RUN_B[:STAGE]) or --compare A B")
    if assessors < 1 or overlap < 0 or (tasks_per_assessor is not None and tasks_per_assessor < 1):
        raise DbdpoError("--assessors must be ≥ 1, --overlap ≥ 0 and --tasks-per-assessor ≥ 1")
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out / "images", ignore_errors=True)
        shutil.rmtree(out / "refs", ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refs").mkdir(parents=True, exist_ok=True)

    pairs, tasks, concepts = [], [], {}
    by_run: dict[Path, object] = {}  # each run's concept, prepared once for all its stages
    for k, (a_spec, b_spec) in enumerate(compare):
        a, b = parse_side(a_spec), parse_side(b_spec)
        for side in (a, b):
            if side.run.resolve() not in by_run:
                by_run[side.run.resolve()] = _concept(side)
        ca, cb = by_run[a.run.resolve()], by_run[b.run.resolve()]
        if ca.name != cb.name:
            raise DbdpoError(f"compared pair {k + 1}: {a.label} is concept {ca.name!r}, {b.label} is {cb.name!r}; "
                             "a study compares two methods on the same concept")
        if ca.name not in concepts:
            refs = []
            for p in list_concept_images(ca.path)[:refs_per_task]:
                rid = _new_id(rng)
                im = load_image(p)
                im.thumbnail((512, 512), Image.Resampling.BICUBIC)
                im.save(out / "refs" / f"{rid}.png")
                refs.append(rid)
            concepts[ca.name] = {"class_name": ca.class_name, "refs": refs}
        sa, sb = _samples(a), _samples(b)
        common = [key for key in sa if key in sb]
        if not common:
            raise DbdpoError(f"compared pair {k + 1}: {a.label} and {b.label} share no evaluation prompt and seed; "
                             "evaluate both with the same eval.prompt_set, eval.seed and eval.images_per_prompt")
        rng.shuffle(common)
        for key in common[:max_tasks] if max_tasks else common:
            ids = {}
            for side_name, item in (("A", sa[key]), ("B", sb[key])):
                ids[side_name] = _new_id(rng)
                shutil.copyfile(item["image"], out / "images" / f"{ids[side_name]}.png")
            tasks.append({
                "id": _new_id(rng), "pair": k, "concept": ca.name,
                "prompt": sa[key]["prompt"].replace("[V*]", ca.class_name), "template": sa[key]["prompt"],
                "seed": sa[key]["seed"], "images": ids, "shown": rng.choice(["AB", "BA"]),
                "clip": {"A": sa[key]["clip"], "B": sb[key]["clip"]},
            })
        pairs.append({"name": f"{a.label} vs {b.label}", "A": {"run": str(a.run.resolve()), "stage": a.stage},
                      "B": {"run": str(b.run.resolve()), "stage": b.stage}, "n_tasks": sum(t["pair"] == k for t in tasks)})

    order = [t["id"] for t in tasks]
    rng.shuffle(order)
    shared, rest = order[:overlap], order[overlap:]
    cap = tasks_per_assessor or len(order)
    if overlap > cap:
        raise DbdpoError(f"--overlap {overlap} is more than --tasks-per-assessor {cap}")
    lists: list[list[str]] = [list(shared) for _ in range(assessors)]
    i = 0
    for tid in rest:
        open_ = [j for j in range(assessors) if len(lists[j]) < cap]
        if not open_:
            break
        lists[open_[i % len(open_)]].append(tid)
        i += 1
    assigned = {tid for lst in lists for tid in lst}
    unassigned = len(tasks) - len(assigned)
    tasks = [t for t in tasks if t["id"] in assigned]
    for lst in lists:
        rng.shuffle(lst)
    people = {secrets.token_urlsafe(9): {"name": f"assessor{j + 1}", "tasks": lst} for j, lst in enumerate(lists)}
    manifest = {"version": 1, "seed": seed, "pairs": pairs, "concepts": concepts, "tasks": tasks,
                "assessors": people, "settings": {"tasks_per_assessor": tasks_per_assessor, "assessors": assessors,
                                                  "overlap": overlap, "max_tasks": max_tasks},
                "unassigned": unassigned}
    keep = {i for t in tasks for i in t["images"].values()}
    for f in (out / "images").glob("*.png"):
        if f.stem not in keep:
            f.unlink()
    write_json(out / MANIFEST, manifest)
    write_text(out / "links.txt", "".join(f"{p['name']}\t/s/{tok}\t{len(p['tasks'])} tasks\n"
                                          for tok, p in people.items()))
    return manifest


def load_manifest(study: str | Path) -> dict:
    f = Path(study) / MANIFEST
    if not f.exists():
        raise DbdpoError(f"{study} is not a study folder (no {MANIFEST}); make one with `python -m dbdpo.study build`")
    return read_json(f)
