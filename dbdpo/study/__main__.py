"""`python -m dbdpo.study build | serve | results` (see `dbdpo/study/__init__.py`)."""

from __future__ import annotations

import argparse
import sys

from ..cli import report_errors


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dbdpo.study", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="a study folder from two finished runs or two stages of one run")
    b.add_argument("sides", nargs="*", metavar="RUN[:STAGE]",
                   help="the method, then its baseline (e.g. out/run:step_2 out/run:personalize)")
    b.add_argument("--compare", nargs=2, action="append", default=[], metavar=("METHOD", "BASELINE"),
                   help="one more compared pair (repeatable)")
    b.add_argument("--out", required=True, help="the study folder to write")
    b.add_argument("--assessors", type=int, default=1)
    b.add_argument("--tasks-per-assessor", type=int, default=None)
    b.add_argument("--overlap", type=int, default=0, help="tasks every assessor answers (agreement is measured there)")
    b.add_argument("--max-tasks", type=int, default=None, help="tasks per compared pair (default: every prompt × seed)")
    b.add_argument("--seed", type=int, default=0, help="seeds the task order and the image 1 / image 2 order")
    s = sub.add_parser("serve", help="the study's web page on localhost")
    s.add_argument("study")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    r = sub.add_parser("results", help="Table 1 from the votes")
    r.add_argument("study")
    r.add_argument("--out", default=None)
    r.add_argument("--bootstrap", type=int, default=2000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--wandb", default=None, metavar="PROJECT", help="also log the table to this W&B project")
    a = p.parse_args(argv)
    if a.command == "build":
        if len(a.sides) % 2:
            p.error("sides come in pairs: METHOD BASELINE")
        pairs = [tuple(a.sides[i:i + 2]) for i in range(0, len(a.sides), 2)] + [tuple(c) for c in a.compare]
        from .build import build

        m = report_errors(build, a.out, pairs, tasks_per_assessor=a.tasks_per_assessor, assessors=a.assessors,
                          overlap=a.overlap, seed=a.seed, max_tasks=a.max_tasks)
        print(f"{a.out}: {len(m['tasks'])} tasks for {len(m['assessors'])} assessor(s); links in {a.out}/links.txt; "
              f"serve with: python -m dbdpo.study serve {a.out}")
        if m["unassigned"]:
            print(f"warning: {m['unassigned']} image pairs went to no assessor (more --assessors or "
                  "--tasks-per-assessor would include them)", file=sys.stderr)
    elif a.command == "serve":
        from .server import serve

        report_errors(serve, a.study, a.host, a.port)
    else:
        from .results import results

        recs = report_errors(results, a.study, a.out, a.bootstrap, a.seed, a.wandb)
        print((__import__("pathlib").Path(a.out or a.study) / "results.md").read_text())
        del recs


if __name__ == "__main__":
    main(sys.argv[1:])
