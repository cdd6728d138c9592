"""``forest-carbon reproduce RUN/manifest.json``: rerun a recorded run and compare.

Checks the inputs as ``run`` does, and the recorded input files and frozen STAC items
against their checksums, then reruns into ``--out`` (default: the run folder's name with
``-reproduce``, beside it; an earlier reproduction there is reused) and prints, per
output, identical, different or missing. Works from any working directory. Exit 0: every
output identical; 3: some different or missing; 2: bad input (the manifest, an invalid or
changed input file, the output folder); 1: internal error. See :mod:`pipeline.reproduce`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.run import add_run_options

#: exit code of a reproduction whose outputs are not all identical
EXIT_DIFFERENT = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="rerun a run from its manifest and compare outputs")
    p.add_argument("manifest", type=Path)
    p.add_argument(
        "--out",
        type=Path,
        help="folder for the reproduction (default: RUN-reproduce beside the run folder)",
    )
    p.add_argument(
        "--allow-changed-inputs",
        action="store_true",
        help="rerun even when input files differ from the recorded ones (they are listed)",
    )
    add_run_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline.reproduce import reproduce
    from pipeline.stages import STAGES

    run_dir = args.manifest.absolute().parent
    out = args.out or run_dir.with_name(run_dir.name + "-reproduce")
    result = reproduce(
        args.manifest,
        STAGES,
        out=out,
        scheduler=args.scheduler,
        quiet=args.quiet,
        allow_changed_inputs=args.allow_changed_inputs,
    )
    for rel, verdict in result.outputs:
        print(f"{verdict:<10} {rel}")
    for name in result.changed_inputs:
        print(f"input changed since the recorded run: {name}")
    print(
        f"reproduction in {out}: {'all outputs identical' if result.identical else 'NOT identical'}"
    )
    return 0 if result.identical else EXIT_DIFFERENT
