"""``forest-carbon predict``: wall-to-wall AGB, carbon and CO2e maps (the ``predict`` stage).

    forest-carbon predict --models model/models.pkl \\
        --composite 2019=composites/2019.tif --composite 2024=composites/2024.tif \\
        --terrain composites/terrain.tif [--lidar-metrics lidar/metrics.tif] \\
        [--parcels parcels.gpkg [--forest-class forest ...]] --out DIR

Writes, per epoch, DIR/rasters/agb_<epoch>.tif, agb_sd_, agb_interval_, carbon_,
carbon_sd_, co2e_ and quality_<epoch>.tif (COGs); with ``--parcels``, values only where
a cell's centre lies in a parcel whose ``land_class`` is a forest class. models.pkl is
unpickled only when its sha256 is the one recorded in the manifest.json of the folder
``fit`` or ``run`` wrote it to; unpickling runs code, so use only folders you trust.
Stage: :mod:`pipeline.stages.predict`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import make_params, param_option, read_input, write_outputs
from pipeline.config import PredictParams, StandaloneParams


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
    param_option(
        p,
        "--forest-class",
        PredictParams,
        "forest_land_classes",
        action="append",
        help="land_class value of forest land (repeat)",
    )
    param_option(
        p,
        "--good-relative-error",
        PredictParams,
        "good_relative_error",
        help="SD/AGB below which the quality flag is good",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from pipeline.commands.fit import epoch_paths
    from pipeline.errors import InputDataError
    from pipeline.stages.predict import PredictJob, predict

    if not args.models.is_file():
        raise InputDataError(
            f"{args.models}: models file not found (write it with `forest-carbon fit`)"
        )
    params = make_params(
        PredictParams,
        command="predict",
        good_relative_error=args.good_relative_error,
        forest_land_classes=tuple(args.forest_class) if args.forest_class else None,
    )
    composites = epoch_paths(args.composite, option="--composite")
    terrain = read_input(args.terrain)
    job = PredictJob(
        params=params,
        epochs=tuple(composites),
        seed=StandaloneParams().seed,
        crs=str(terrain.rio.crs),
    )
    outputs = predict(
        job,
        models=args.models,
        composites={e: read_input(p) for e, p in composites.items()},
        terrain=terrain,
        lidar_metrics=read_input(args.lidar_metrics) if args.lidar_metrics else None,
        parcels=read_input(args.parcels) if args.parcels else None,
    )
    write_outputs({args.out / rel: obj for rel, obj in outputs.items()})
    return 0
