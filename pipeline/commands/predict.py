"""``forest-carbon predict``: wall-to-wall AGB, carbon and CO2e maps (the ``predict`` stage).

    forest-carbon predict --models model/models.pkl \\
        --composite 2019=composites/2019.tif --composite 2024=composites/2024.tif \\
        --terrain composites/terrain.tif [--lidar-metrics lidar/metrics.tif] \\
        [--parcels parcels.gpkg [--forest-class forest ...]] --out DIR

Writes, per epoch, DIR/rasters/agb_<epoch>.tif, agb_sd_, agb_interval_, carbon_,
carbon_sd_, co2e_ and quality_<epoch>.tif (COGs); with ``--parcels``, values only where
a cell's centre lies in a parcel whose ``land_class`` is a forest class. Only load a
models.pkl that your own ``forest-carbon fit`` wrote: unpickling runs code.
Stage: :mod:`pipeline.stages.predict`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="wall-to-wall biomass/carbon maps with per-pixel uncertainty"
    )
    p.add_argument("--models", type=Path, required=True, help="models.pkl written by `fit`")
    p.add_argument(
        "--composite",
        action="append",
        required=True,
        metavar="EPOCH=PATH",
        help="composite of an epoch (repeat per epoch)",
    )
    p.add_argument("--terrain", type=Path, required=True, help="terrain.tif")
    p.add_argument("--lidar-metrics", type=Path, help="LiDAR metrics.tif with lidar_fraction")
    p.add_argument("--parcels", type=Path, help="parcels with land_class: map forest land only")
    p.add_argument(
        "--forest-class",
        action="append",
        help="land_class value of forest land (repeat; default from the config defaults)",
    )
    p.add_argument(
        "--good-relative-error",
        type=float,
        default=None,
        help="SD/AGB below which the quality flag is good (default from the config defaults)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from pipeline import io
    from pipeline.commands.fit import epoch_paths
    from pipeline.config import PredictParams
    from pipeline.errors import ConfigError, InputDataError
    from pipeline.stages.predict import PredictJob, predict

    if not args.models.is_file():
        raise InputDataError(
            f"{args.models}: models file not found (write it with `forest-carbon fit`)"
        )
    if args.good_relative_error is not None and args.good_relative_error <= 0:
        raise ConfigError(f"--good-relative-error must be > 0, got {args.good_relative_error}")
    given = {
        "good_relative_error": args.good_relative_error,
        "forest_land_classes": tuple(args.forest_class) if args.forest_class else None,
    }
    params = PredictParams(**{k: v for k, v in given.items() if v is not None})
    composites = epoch_paths(args.composite, option="--composite")
    terrain = io.read_input(args.terrain, chunk_px=1024)
    job = PredictJob(params=params, epochs=tuple(composites), seed=0, crs=str(terrain.rio.crs))
    outputs = predict(
        job,
        models=args.models,
        composites={e: io.read_input(p, chunk_px=1024) for e, p in composites.items()},
        terrain=terrain,
        lidar_metrics=io.read_input(args.lidar_metrics, chunk_px=1024)
        if args.lidar_metrics
        else None,
        parcels=io.read_input(args.parcels, chunk_px=1024) if args.parcels else None,
    )
    io.write_outputs({args.out / rel: obj for rel, obj in outputs.items()})
    for rel in outputs:
        print(args.out / rel)
    return 0
