"""DreamBoothDPO end to end: `python train.py [group=choice ...] [key=value ...]` (Hydra app, conf/train.yaml)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from dbdpo.schema import register_schemas  # noqa: E402

register_schemas()  # every group's structured config in Hydra's ConfigStore (`<group>/schema`, `train_schema`)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict | None:
    from dbdpo.cli import run_main

    return run_main(cfg)


if __name__ == "__main__":
    from dbdpo.cli import check_choices_or_exit

    check_choices_or_exit(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    main()
