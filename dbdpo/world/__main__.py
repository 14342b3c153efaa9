"""`python -m dbdpo.world <command> [hydra overrides]` — commands: pretrain."""

from __future__ import annotations

import os
import sys
from pathlib import Path

COMMANDS = ("pretrain",)
CONF = Path(__file__).resolve().parents[2] / "conf" / "world"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m dbdpo.world {{{','.join(COMMANDS)}}} [key=value ...]\n"
              "  pretrain   train the world's oracle, scorer/evaluator CLIPs, VAE and text-to-image model",
              file=sys.stderr if len(sys.argv) >= 2 and sys.argv[1] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help") else 2)
    command = sys.argv.pop(1)
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))

    import hydra

    from ..cli import report_errors

    @hydra.main(version_base="1.3", config_path=str(CONF), config_name=command)
    def app(cfg):
        from .pretrain import pretrain

        return report_errors(pretrain, cfg)

    app()


if __name__ == "__main__":
    main()
