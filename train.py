"""DreamBoothDPO end to end: `python train.py [group=choice ...] [key=value ...]` (Hydra app, conf/train.yaml)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict | None:
    from dbdpo.cli import run_main

    return run_main(cfg)


if __name__ == "__main__":
    main()
