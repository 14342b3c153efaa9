"""`python -m dbdpo.world <command> [hydra overrides]` — commands: pretrain, verify."""

from __future__ import annotations

import os
import sys
from pathlib import Path

COMMANDS = ("pretrain", "verify")
ROOT_CONF = Path(__file__).resolve().parents[2] / "conf"
CONF = {"pretrain": ROOT_CONF / "world", "verify": ROOT_CONF}  # verify composes conf/train.yaml per run


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m dbdpo.world {{{','.join(COMMANDS)}}} [key=value ...]\n"
              "  pretrain   train the world's oracle, scorer/evaluator CLIPs, VAE and text-to-image model\n"
              "  verify     check the paper's claims on world concepts (results/miniworld/verify.md)",
              file=sys.stderr if len(sys.argv) >= 2 and sys.argv[1] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help") else 2)
    command = sys.argv.pop(1)
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))

    import hydra

    from ..cli import report_errors

    @hydra.main(version_base="1.3", config_path=str(CONF[command]), config_name=command)
    def app(cfg):
        if command == "verify":
            from hydra.core.hydra_config import HydraConfig

            from .verify import verify

            return report_errors(verify, cfg, [str(p) for p in HydraConfig.get().searchpath])
        from .pretrain import pretrain

        return report_errors(pretrain, cfg)

    app()


if __name__ == "__main__":
    main()
