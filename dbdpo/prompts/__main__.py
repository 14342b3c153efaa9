"""`python -m dbdpo.prompts {coco,build,show}`: mine COCO prompts, build a pool, inspect prompt files."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from dbdpo.errors import DataError, DbdpoError
from dbdpo.io import write_text
from dbdpo.prompts.coco import mine_coco
from dbdpo.prompts.dreambench import SUBJECTS, eval_prompts, get_subject, prompt_source
from dbdpo.prompts.pool import build_pool, load_agnostic, read_pool_parts, split_pool, write_pool

LIVE_CLASSES = {"cat", "dog"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dbdpo.prompts", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("coco", help="mine [V*] prompts for one class from COCO captions",
                       description="Mine concept-specific prompts from COCO captions (method.md, 'Prompts').")
    c.add_argument("--captions", required=True, help="captions_train2017.json (or 2014, or the annotations/ folder)")
    c.add_argument("--instances", required=True, help="instances_train2017.json (or 2014, or the annotations/ folder)")
    c.add_argument("--class-name", required=True, help="DreamBench class word, e.g. dog, 'stuffed animal'")
    c.add_argument("--n", type=int, default=3000, help="number of prompts (default 3000)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True, help="output text file, one prompt per line")

    b = sub.add_parser("build", help="build a prompt pool and split it into parts",
                       description="Build the training prompt pool (JSONL with a 'part' field per prompt).")
    who = b.add_mutually_exclusive_group(required=True)
    who.add_argument("--class-name", help="class word of the concept")
    who.add_argument("--subject", help="a DreamBench subject (sets class and live/object)")
    kind = b.add_mutually_exclusive_group()
    kind.add_argument("--live", dest="live", action="store_true", default=None, help="a living subject")
    kind.add_argument("--object", dest="live", action="store_false", default=None, help="an object (no live-only prompts)")
    b.add_argument("--n", type=int, default=1000, help="pool size (default 1000)")
    b.add_argument("--coco-fraction", type=float, default=0.75, help="share of COCO prompts (default 0.75)")
    b.add_argument("--coco-prompts", help="text file from the `coco` command (default: agnostic prompts only)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--parts", type=int, default=1, help="number of disjoint parts, one per DPO step")
    b.add_argument("--out", required=True, help="output .jsonl file")

    s = sub.add_parser("show", help="summarise a prompt file (default: the shipped prompt sets)",
                       description="Counts per source/category/part and a few samples.")
    s.add_argument("file", nargs="?", help="a pool .jsonl or a prompt .txt; omit for the shipped sets")
    s.add_argument("--samples", type=int, default=5, help="samples to print (default 5)")
    return p


def _read_lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read prompt file {path} ({e.strerror}); create it with `python -m dbdpo.prompts coco`") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def _cmd_coco(a: argparse.Namespace) -> None:
    prompts = mine_coco(a.captions, a.instances, a.class_name, n=a.n, seed=a.seed)
    write_text(a.out, "".join(p + "\n" for p in prompts))
    print(f"wrote {len(prompts)} prompts to {a.out}")


def _cmd_build(a: argparse.Namespace) -> None:
    if a.subject:
        subj = get_subject(a.subject)
        cls, live = subj.class_name, subj.live if a.live is None else a.live
    else:
        cls = a.class_name
        live = cls.lower() in LIVE_CLASSES if a.live is None else a.live
    coco = _read_lines(a.coco_prompts) if a.coco_prompts else None
    pool = build_pool(cls, live, a.n, a.coco_fraction, a.seed, coco)
    parts = split_pool(pool, a.parts)
    write_pool(a.out, parts)
    src = Counter(p.source for p in pool)
    print(f"wrote {len(pool)} prompts ({src['coco']} coco, {src['agnostic']} agnostic; "
          f"{'live' if live else 'object'} class {cls!r}) in {len(parts)} parts to {a.out}")


def _summary(title: str, prompts, n: int) -> None:
    print(f"{title}: {len(prompts)}")
    for p in prompts[:n]:
        print(f"    {p}")


def _cmd_show(a: argparse.Namespace) -> None:
    if a.file is None:
        for live in (True, False):
            rows = load_agnostic(live)
            cats = Counter(r.category for r in rows)
            print(f"agnostic prompts ({'live' if live else 'object'} concepts): {len(rows)}  "
                  + "  ".join(f"{k}={v}" for k, v in sorted(cats.items())))
        for key, (live, which) in {"live": (True, "full"), "object": (False, "full"), "val_live": (True, "val"),
                                   "val_object": (False, "val"), "long_live": (True, "long"),
                                   "long_object": (False, "long")}.items():
            _summary(f"DreamBench {key} [{prompt_source(key)}]", eval_prompts(live, which), a.samples)
        print(f"DreamBench subjects: {len(SUBJECTS)} ({sum(s.live for s in SUBJECTS.values())} live)")
        return
    if a.file.endswith(".jsonl"):
        parts = read_pool_parts(a.file)
        pool = [p for part in parts for p in part]
        print(f"{a.file}: {len(pool)} prompts in {len(parts)} part(s) ({', '.join(str(len(p)) for p in parts)})")
        print("by source: " + "  ".join(f"{k}={v}" for k, v in sorted(Counter(p.source for p in pool).items())))
        print("by category: " + "  ".join(f"{k}={v}" for k, v in
                                          sorted(Counter(p.category or "-" for p in pool).items())))
        _summary("samples", [json.dumps(p.prompt, ensure_ascii=False) + f" ({p.source})" for p in pool], a.samples)
    else:
        _summary(a.file, _read_lines(a.file), a.samples)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"coco": _cmd_coco, "build": _cmd_build, "show": _cmd_show}[args.cmd](args)
    except DbdpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
