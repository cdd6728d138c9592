"""``forest-carbon run``: run the pipeline for a region (what ``make region=R`` calls)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_config, region_config_path


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``reproduce``."""
    parser.add_argument(
        "--scheduler", metavar="ADDR", help="use an existing Dask scheduler (tcp://HOST:PORT)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline for a region")
    p.add_argument("--region", help="region name: loads configs/regions/REGION.yaml")
    p.add_argument("--config", type=Path, help="config file (instead of --region)")
    p.add_argument("--stages", help="comma-separated subset of stages to run")
    p.add_argument("--force", action="store_true", help="rerun stages even when unchanged")
    p.add_argument("--out", type=Path, help="run folder (default: the config's output_dir)")
    add_run_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline.errors import ConfigError
    from pipeline.run_folder import check_available
    from pipeline.runner import Runner, RunOptions
    from pipeline.stages import STAGES

    if (args.region is None) == (args.config is None):
        raise ConfigError("run: give exactly one of --region NAME or --config FILE")
    path = args.config or region_config_path(args.region)
    overrides = {"output_dir": str(args.out)} if args.out else None
    config = load_config(path, overrides=overrides)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else None
    options = RunOptions(
        stages=stages, force=args.force, scheduler=args.scheduler, quiet=args.quiet
    )
    runner = Runner(config, STAGES, options=options)
    # a folder that is in use or not a run folder is refused first, then the inputs are
    # checked before the run folder is touched (docs/input_checks.md, docs/run_folder.md)
    check_available(runner.layout.root)
    runner.check_inputs()
    runner.run()
    runner.console.print(f"run folder: {runner.layout.root}  (config sha256 {config.sha256[:12]})")
    return 0
