"""`python -m tfsft.train [--config a.yaml ...] [--set key=value ...] [--resume auto|never|RUN_DIR]`.

With no --config it runs the quickstart (configs/quickstart.yaml), which works offline.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tfsft.cli.common import QUICKSTART, add_config_arguments, run_with_config

if TYPE_CHECKING:
    from tfsft.config import RunConfig


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfsft.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(
        parser,
        "YAML config; repeat to merge several (later files win). Default: the quickstart.",
        "optimizer.learning_rate=3e-5",
    )
    parser.add_argument(
        "--resume",
        default="auto",
        help="auto: continue an unfinished run with the same config; never; or a run directory.",
    )
    parser.add_argument("--print-config", action="store_true", help="Print the resolved config and exit.")
    parser.add_argument(
        "--verbose", action="store_true", help="Debug logging, and TensorFlow's own start-up lines (hidden by default)."
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_with_config(
        args.config or [QUICKSTART], args.overrides, args.verbose, lambda config: _train(config, args)
    )


def _train(config: RunConfig, args: argparse.Namespace) -> None:
    from tfsft.preflight import check_resume, check_run_inputs

    check_resume(args.resume)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return
    check_run_inputs(config, args.resume)
    from tfsft.trainer import train

    result = train(config, resume=args.resume)
    print(f"Run directory: {result.run_dir}")


if __name__ == "__main__":
    sys.exit(main())
