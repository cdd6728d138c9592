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
import datetime as dt
from pathlib import Path

from pipeline.config import SinkParams
from pipeline.errors import ConfigError


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
    p.add_argument(
        "--correlation",
        type=float,
        default=0.0,
        help="correlation of the epochs' errors (default 0: conservative)",
    )
    p.add_argument(
        "--min-quality",
        type=int,
        default=SinkParams().min_quality,
        help="lowest quality flag kept (default: the config default, no masking)",
    )
    p.add_argument(
        "--aggregation",
        choices=("correlated", "independent"),
        default="correlated",
        help="how pixel errors add up inside a parcel (default correlated)",
    )
    p.add_argument("--parcels", type=Path, help="parcel polygons with parcel_id: zonal table")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)  # fmt: skip


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--dates: '{text}' is not a date (use YYYY-MM-DD)") from None


def main(args: argparse.Namespace) -> int:
    from pipeline import io
    from pipeline.contracts import SinkJob
    from pipeline.stages.parcels import parcels_stage
    from pipeline.stages.sink import sink

    if not -1 <= args.correlation <= 1:
        raise ConfigError(f"--correlation must lie in [-1, 1], got {args.correlation}")
    job = SinkJob(
        epoch_start="start",
        epoch_end="end",
        reference_start=_date(args.dates[0]),
        reference_end=_date(args.dates[1]),
        epoch_error_correlation=args.correlation,
        min_quality=args.min_quality,
        parcel_error_aggregation=args.aggregation,
    )
    rasters = {
        f"{kind}_{role}": io.read_input(path, chunk_px=1024)
        for kind, paths in (("carbon", args.carbon), ("carbon_sd", args.sd),
                            ("quality", args.quality))
        for role, path in zip(("start", "end"), paths, strict=True)
    }  # fmt: skip
    outputs = dict(sink(job, **rasters))
    if args.parcels is not None:
        outputs.update(parcels_stage(job, parcels=io.read_input(args.parcels, chunk_px=1024),
                                     **rasters))  # fmt: skip
    io.write_outputs({args.out / rel: obj for rel, obj in outputs.items()})
    for rel in outputs:
        print(args.out / rel)
    return 0
