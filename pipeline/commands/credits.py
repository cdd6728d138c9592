"""``forest-carbon credits``: net removals and credits of a project area.

    forest-carbon credits --sink rasters/sink.tif --project project.gpkg \\
        --dates 2019-07-01 2024-07-01 [--methodology configs/methodology/ccer.yaml] \\
        [--leakage-fraction F] [--buffer-fraction F] [--aggregation correlated] --out DIR

Writes DIR/credits/credits.csv: per project parcel and for the project total, every step
(project removals, baseline, leakage, net removals, uncertainty and its deduction,
buffer, credits). The arithmetic is :mod:`models.credits`, the rules the methodology file.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from pipeline.errors import ConfigError


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
    p.add_argument(
        "--methodology",
        type=Path,
        default=Path("configs/methodology/ccer.yaml"),
        help="methodology file (default configs/methodology/ccer.yaml)",
    )
    p.add_argument("--leakage-fraction", type=float, help="override the leakage fraction")
    p.add_argument("--buffer-fraction", type=float, help="override the buffer fraction")
    p.add_argument(
        "--aggregation",
        choices=("correlated", "independent"),
        default="correlated",
        help="how pixel errors add up (default correlated)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from models.credits import load_methodology
    from pipeline import io
    from pipeline.contracts import TOTAL_ID, CreditsJob, SinkJob
    from pipeline.stages.credits import credits_stage

    try:
        dates = [dt.date.fromisoformat(d) for d in args.dates]
    except ValueError:
        raise ConfigError(f"--dates: {args.dates} are not dates (use YYYY-MM-DD)") from None
    for name in ("leakage_fraction", "buffer_fraction"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")
    try:
        method = load_methodology(args.methodology)
    except ValueError as err:
        raise ConfigError(f"--methodology: {err}") from None
    method = method.with_overrides(
        leakage_fraction=args.leakage_fraction, buffer_fraction=args.buffer_fraction
    )
    sink_job = SinkJob("start", "end", dates[0], dates[1],
                       parcel_error_aggregation=args.aggregation)  # fmt: skip
    job = CreditsJob(method, str(args.methodology), sink_job)
    outputs = credits_stage(
        job,
        sink=io.read_input(args.sink, chunk_px=1024),
        project=io.read_input(args.project, chunk_px=1024),
    )
    io.write_outputs({args.out / rel: obj for rel, obj in outputs.items()})
    table = next(iter(outputs.values()))
    total = table.loc[table["parcel_id"] == TOTAL_ID].iloc[0]
    print(f"credits: {total['credits_tco2e']:,.1f} t CO2e "
          f"(net {total['net_tco2e']:,.1f}, U {total['uncertainty_pct']:.1f} %) -> "
          f"{args.out / next(iter(outputs))}")  # fmt: skip
    return 0
