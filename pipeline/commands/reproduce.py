"""``forest-carbon reproduce RUN/manifest.json``: rerun a recorded run and compare.

Prints, per output, identical, different or missing; exit 0 only when every output is
identical (see :mod:`pipeline.reproduce`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline.commands.run import add_run_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="rerun a run from its manifest and compare outputs")
    p.add_argument("manifest", type=Path)
    p.add_argument(
        "--out",
        type=Path,
        help="new folder for the reproduction (default: RUN-reproduce, replaced)",
    )
    add_run_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline.reproduce import reproduce
    from pipeline.stages import STAGES

    out = args.out
    if out is None:
        out = args.manifest.parent.with_name(args.manifest.parent.name + "-reproduce")
        if out.exists():
            shutil.rmtree(out)
    result = reproduce(args.manifest, STAGES, out=out, scheduler=args.scheduler, quiet=args.quiet)
    for rel, verdict in result.outputs:
        print(f"{verdict:<10} {rel}")
    for name in result.changed_inputs:
        print(f"input changed since the recorded run: {name}")
    print(
        f"reproduction in {out}: {'all outputs identical' if result.identical else 'NOT identical'}"
    )
    return 0 if result.identical else 1
