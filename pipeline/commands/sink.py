"""``forest-carbon sink``: the annual stock-change sink from two epochs' carbon maps.

    forest-carbon sink --carbon C2019.tif C2024.tif --sd SD2019.tif SD2024.tif \\
        --quality Q2019.tif Q2024.tif --dates 2019-07-01 2024-07-01 \\
        [--correlation 0] [--min-quality 0] [--parcels parcels.gpkg] --out DIR

Writes DIR/rasters/sink.tif and DIR/rasters/forest_carbon_index.tif; with ``--parcels``
also DIR/parcels/parcel_sink.gpkg and .csv (fractional-coverage zonal sums). The science
is in :mod:`pipeline.sink` and :mod:`pipeline.stages.parcels`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import (
    make_params,
    param_option,
    parse_dates,
    read_input,
    write_outputs,
)
from pipeline.config import SinkParams, StandaloneParams


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sink", help="annual carbon sink from two epochs' carbon maps")
    p.add_argument(
        "--carbon",
        type=Path,
        nargs=2,
        required=True,
        metavar=("START", "END"),
        help="carbon density maps (Mg C/ha) of the two epochs",
    )
    p.add_argument(
        "--sd",
        type=Path,
        nargs=2,
        required=True,
        metavar=("START", "END"),
        help="their standard deviation maps (Mg C/ha)",
    )
    p.add_argument(
        "--quality",
        type=Path,
        nargs=2,
        required=True,
        metavar=("START", "END"),
        help="their quality flag maps",
    )
    p.add_argument(
        "--dates",
        nargs=2,
        required=True,
        metavar=("START", "END"),
        help="reference dates of the two epochs (YYYY-MM-DD)",
    )
    param_option(
        p,
        "--correlation",
        StandaloneParams,
        "epoch_error_correlation",
        help="correlation of the epochs' errors (0: conservative)",
    )
    param_option(
        p,
        "--min-quality",
        SinkParams,
        "min_quality",
        help="lowest quality flag kept (0: no masking)",
    )
    param_option(
        p,
        "--aggregation",
        SinkParams,
        "parcel_error_aggregation",
        help="how pixel errors add up inside a parcel",
    )
    p.add_argument("--parcels", type=Path, help="parcel polygons with parcel_id: zonal table")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from pipeline.contracts import SinkJob
    from pipeline.stages.parcels import parcels_stage
    from pipeline.stages.sink import sink

    params = make_params(
        SinkParams,
        command="sink",
        epoch_error_correlation=args.correlation,
        min_quality=args.min_quality,
        parcel_error_aggregation=args.aggregation,
    )
    job = SinkJob.from_params(
        params, epochs=("start", "end"), reference_dates=parse_dates(args.dates)
    )
    rasters = {
        f"{kind}_{role}": read_input(path)
        for kind, paths in (("carbon", args.carbon), ("carbon_sd", args.sd),
                            ("quality", args.quality))
        for role, path in zip(("start", "end"), paths, strict=True)
    }  # fmt: skip
    outputs = dict(sink(job, **rasters))
    if args.parcels is not None:
        outputs.update(parcels_stage(job, parcels=read_input(args.parcels), **rasters))
    write_outputs({args.out / rel: obj for rel, obj in outputs.items()})
    return 0
