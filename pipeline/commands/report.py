"""``forest-carbon report``: (re)build report.html from an existing run folder.

    forest-carbon report --region nanping [--out RUN_DIR]
    forest-carbon report --config FILE [--out RUN_DIR]

Reads the run folder's outputs (sink, parcel table, credits and whatever else exists:
composites, CHM, maps, model card, items, plots) and writes RUN_DIR/report/report.html,
RUN_DIR/report/quicklooks/*.png, the roll-ups RUN_DIR/report/rollup_*.csv and
RUN_DIR/report/tables.xlsx. The config gives the title, the epochs, the methodology
and the config hash shown in the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import read_input, write_outputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="build the HTML report of a run folder")
    p.add_argument("--region", help="region name: loads configs/regions/REGION.yaml")
    p.add_argument("--config", type=Path, help="config file (instead of --region)")
    p.add_argument("--out", type=Path, help="run folder (default: the config's output_dir)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline.config import load_config, region_config_path
    from pipeline.contracts import RunLayout
    from pipeline.errors import ConfigError
    from pipeline.stages.report import report_inputs, report_job, report_stage

    if (args.region is None) == (args.config is None):
        raise ConfigError("report: give exactly one of --region NAME or --config FILE")
    config = load_config(args.config or region_config_path(args.region))
    layout = RunLayout(args.out or config.output_dir)
    inputs = {
        name: read_input(path, dask=config.dask)
        for name, path in report_inputs(config, layout).items()
    }
    outputs = report_stage(report_job(config), **inputs)
    write_outputs({layout.path(rel): obj for rel, obj in outputs.items()})
    return 0
