"""``forest-carbon check``: read and check a region's inputs without running anything.

The same checks ``run`` makes before any stage (:func:`pipeline.inputs.check_inputs`):
exit 2 with the first problem (file, feature or setting, and what to do), or exit 0 with
the warnings, if any. Writes nothing.

    forest-carbon check --config configs/regions/myregion.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_config, region_config_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a region's inputs (what run checks first)")
    p.add_argument("--region", help="region name: loads configs/regions/REGION.yaml")
    p.add_argument("--config", type=Path, help="config file (instead of --region)")
    p.add_argument("--stages", help="check only the inputs of these stages (comma-separated)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline.errors import ConfigError
    from pipeline.inputs import check_inputs
    from pipeline.runner import Runner, RunOptions
    from pipeline.stages import STAGES

    if (args.region is None) == (args.config is None):
        raise ConfigError("check: give exactly one of --region NAME or --config FILE")
    path = args.config or region_config_path(args.region)
    config = load_config(path)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else None
    # the runner resolves --stages as run does (it touches no file until it runs)
    runner = Runner(config, STAGES, options=RunOptions(stages=stages, quiet=True))
    messages = [w.message for w in check_inputs(config, [s.name for s in runner.selected()])]
    for message in messages:
        print(f"warning: {message}")
    print(f"{path}: inputs checked, {len(messages)} warning(s)")
    return 0
