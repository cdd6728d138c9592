"""The ``forest-carbon`` command line (also ``python -m pipeline``).

Each sub-command lives in its own module under :mod:`pipeline.commands` with a
``register(subparsers)`` function that adds its parser and sets ``func(args) -> int``.
Errors the user can fix (:class:`~pipeline.errors.ForestCarbonError`) print one line and
exit 2; anything else is an internal error, exit 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipeline.errors import ForestCarbonError

COMMAND_MODULES = (
    "pipeline.commands.run",
    "pipeline.commands.init",
    "pipeline.commands.check",
    "pipeline.commands.reproduce",
    "pipeline.commands.simulate",
    "pipeline.commands.search",
    "pipeline.commands.catalog",
    "pipeline.commands.composite",
    "pipeline.commands.lidar",
    "pipeline.commands.plots",
    "pipeline.commands.fit",
    "pipeline.commands.predict",
    "pipeline.commands.sink",
    "pipeline.commands.credits",
    "pipeline.commands.plan",
    "pipeline.commands.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forest-carbon",
        description="Forest carbon stocks and sinks from satellite, airborne LiDAR and "
        "field plots.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ForestCarbonError as err:
        if args.debug:
            raise
        print(f"forest-carbon: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("forest-carbon: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # internal error: one line, traceback only with --debug
        if args.debug:
            raise
        print(
            f"forest-carbon: internal error: {type(err).__name__}: {err} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
