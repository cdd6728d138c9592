"""``forest-carbon credits``: net removals and credits of a project area.

    forest-carbon credits --sink rasters/sink.tif --project project.gpkg \\
        --dates 2019-07-01 2024-07-01 [--methodology configs/methodology/ccer.yaml] \\
        [--leakage-fraction F] [--buffer-fraction F] [--aggregation correlated] --out DIR

Writes DIR/credits/credits.csv: per project parcel and for the project total, every step
(project removals, baseline, leakage, net removals, uncertainty and its deduction,
buffer, credits). The arithmetic is :mod:`models.credits`, the rules the methodology file.
The command has no parcel layer nor land-use classification: a methodology's land rules
(:mod:`pipeline.eligibility`) come out ``unchecked``, with a warning, unless the project
layer has its own ``forest_type``; a run (``forest-carbon run``) checks them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.commands import (
    make_params,
    param_option,
    parse_dates,
    read_input,
    write_outputs,
)
from pipeline.config import CreditsParams, SinkParams
from pipeline.errors import InputDataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("credits", help="carbon credits of a project area from the sink map")
    p.add_argument("--sink", type=Path, required=True, help="rasters/sink.tif of a run")
    p.add_argument(
        "--project",
        type=Path,
        required=True,
        help="project parcels (parcel_id, baseline_tco2e_ha_yr, geometry)",
    )
    p.add_argument(
        "--dates",
        nargs=2,
        required=True,
        metavar=("START", "END"),
        help="reference dates of the two epochs (YYYY-MM-DD)",
    )
    param_option(p, "--methodology", CreditsParams, "methodology", help="methodology file")
    param_option(
        p,
        "--leakage-fraction",
        CreditsParams,
        "leakage_fraction",
        type=float,
        help="override the methodology's leakage fraction",
    )
    param_option(
        p,
        "--buffer-fraction",
        CreditsParams,
        "buffer_fraction",
        type=float,
        help="override the methodology's buffer fraction",
    )
    param_option(
        p, "--aggregation", SinkParams, "parcel_error_aggregation", help="how pixel errors add up"
    )
    p.add_argument(
        "--estimates",
        type=Path,
        help="estimates/totals.csv of a run: the project total is its chosen estimate of the "
        "project sample's stock change (without it: the sink map's sum, an upper-bound SD)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)  # fmt: skip


def _epochs(estimates: Any, path: Path | None) -> tuple[str, str]:
    """The compared epochs' names: those of the project's stock change in ``estimates``
    (``change_<start>_<end>``), or placeholders without a table."""
    if estimates is None:
        return ("start", "end")
    from models.survey.totals import CHANGE_PREFIX, change_quantity, is_change
    from pipeline.contracts import PROJECT_SAMPLE

    changes = sorted(
        {
            str(q)
            for q, s in zip(estimates["quantity"], estimates["sample"], strict=True)
            if s == PROJECT_SAMPLE and is_change(str(q))
        }
    )
    epochs = changes[0].removeprefix(CHANGE_PREFIX).split("_") if len(changes) == 1 else []
    if len(epochs) != 2 or change_quantity(*epochs) != changes[0]:
        raise InputDataError(
            f"{path}: expected one stock change of the '{PROJECT_SAMPLE}' sample "
            f"({change_quantity('<start>', '<end>')}, epoch names without '_'), found {changes}"
        )
    return (epochs[0], epochs[1])


def main(args: argparse.Namespace) -> int:
    from pipeline.contracts import TOTAL_ID, CreditsJob, SinkJob
    from pipeline.stages.credits import credits_stage

    reference_dates = parse_dates(args.dates)
    params = make_params(
        CreditsParams,
        command="credits",
        methodology=args.methodology,
        leakage_fraction=args.leakage_fraction,
        buffer_fraction=args.buffer_fraction,
    )
    sink_params = make_params(
        SinkParams, command="credits", parcel_error_aggregation=args.aggregation
    )
    estimates = read_input(args.estimates) if args.estimates else None
    sink_job = SinkJob.from_params(
        sink_params, epochs=_epochs(estimates, args.estimates), reference_dates=reference_dates
    )
    job = CreditsJob.from_params(params, sink_job, key="--methodology")
    outputs = credits_stage(
        job, sink=read_input(args.sink), project=read_input(args.project), estimates=estimates
    )
    write_outputs({args.out / rel: obj for rel, obj in outputs.items()})
    table = next(iter(outputs.values()))
    total = table.loc[table["parcel_id"] == TOTAL_ID].iloc[0]
    print(f"credits: {total['credits_tco2e']:,.1f} t CO2e "
          f"(net {total['net_tco2e']:,.1f}, U {total['uncertainty_pct']:.1f} %) -> "
          f"{args.out / next(iter(outputs))}")  # fmt: skip
    return 0
