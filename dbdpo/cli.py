"""Shared entry-point behaviour: user errors print one line and exit 2, never a traceback."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from .errors import DbdpoError


def quiet_libraries() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("diffusers", "transformers", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # a resumed stage writes its mid-stage checkpoints into the folder its killed run left
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .*partial exists and is not empty.*")
    # The frozen VAE, text encoder and DPO reference stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")


def report_errors(fn, *args, **kwargs):
    """Call `fn`; a `DbdpoError` prints `error: <message>` and exits 2."""
    quiet_libraries()
    try:
        return fn(*args, **kwargs)
    except DbdpoError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run_main(cfg):
    from .multistep import run

    return report_errors(run, cfg)


def check_choices_or_exit(argv: list[str], conf_dir) -> None:
    """Unknown `group=choice` names on the command line: one line listing the group's options, exit 2."""
    from .schema import check_group_choices

    report_errors(check_group_choices, argv, conf_dir)
