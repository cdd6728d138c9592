"""``forest-carbon fit``: fit the biomass models on plots and rasters (the ``model`` stage).

    forest-carbon fit --plot-biomass plots/plot_biomass.csv --plots plots.gpkg \\
        --composite 2019=composites/2019.tif --composite 2024=composites/2024.tif \\
        --terrain composites/terrain.tif [--lidar-metrics lidar/metrics.tif] \\
        [--lidar-epoch 2019] [--cv-block-m 1000] [--seed 0] --out DIR

Writes DIR/model/model_card.json (CV metrics per candidate, spatial and random split),
DIR/model/plot_features.csv, DIR/model/fold_maps.csv (the map and its cross-fitting fold maps
at a systematic sample of cells) and DIR/model/models.pkl (for ``forest-carbon predict``), and
records their sha256 in DIR/manifest.json (``predict`` unpickles only the recorded file).
The science is in :mod:`models.biomass`; the stage in :mod:`pipeline.stages.model`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import make_params, param_option, read_input, write_outputs
from pipeline.config import ModelParams, PredictParams, StandaloneParams
from pipeline.errors import ConfigError
from pipeline.run_folder import record_outputs


def epoch_paths(items: list[str], *, option: str) -> dict[str, Path]:
    """``["2019=a.tif", ...]`` -> ``{"2019": Path("a.tif"), ...}`` (order kept)."""
    out: dict[str, Path] = {}
    for item in items:
        epoch, sep, path = item.partition("=")
        if not sep or not epoch or not path:
            raise ConfigError(
                f"{option}: '{item}' is not EPOCH=PATH (e.g. 2019=composites/2019.tif)"
            )
        if epoch in out:
            raise ConfigError(f"{option}: epoch {epoch} given twice")
        out[epoch] = Path(path)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help="fit biomass models (plots -> LiDAR -> satellite) with spatial CV"
    )
    p.add_argument(
        "--plot-biomass", type=Path, required=True, help="plot_biomass.csv of the plots stage"
    )
    p.add_argument(
        "--plots", type=Path, required=True, help="plot squares (GeoPackage with plot_id)"
    )
    p.add_argument(
        "--composite",
        action="append",
        required=True,
        metavar="EPOCH=PATH",
        help="composite of an epoch (repeat per epoch, in chronological order)",
    )
    p.add_argument(
        "--terrain", type=Path, required=True, help="terrain.tif (elevation, slope, aspect)"
    )
    p.add_argument("--lidar-metrics", type=Path, help="LiDAR metrics.tif with lidar_fraction")
    param_option(
        p,
        "--lidar-epoch",
        ModelParams,
        "lidar_epoch",
        help="epoch the LiDAR was flown in (default: the first)",
    )
    param_option(
        p, "--cv-block-m", ModelParams, "cv_block_m", help="side of the spatial CV blocks, metres"
    )
    param_option(p, "--seed", StandaloneParams, "seed", help="random seed")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from pipeline.stages.model import ModelJob, model

    composites = epoch_paths(args.composite, option="--composite")
    params = make_params(
        ModelParams, command="fit", lidar_epoch=args.lidar_epoch, cv_block_m=args.cv_block_m
    )
    terrain = read_input(args.terrain)
    job = ModelJob(
        params=params,
        epochs=tuple(composites),
        seed=args.seed,
        crs=str(terrain.rio.crs),
        forest_land_classes=PredictParams().forest_land_classes,
    )
    outputs = model(
        job,
        plot_biomass=read_input(args.plot_biomass),
        plot_locations=read_input(args.plots),
        composites={e: read_input(p) for e, p in composites.items()},
        terrain=terrain,
        lidar_metrics=read_input(args.lidar_metrics) if args.lidar_metrics else None,
    )
    write_outputs({args.out / rel: obj for rel, obj in outputs.items()})
    record_outputs(args.out, outputs, command="fit")  # `predict` checks models.pkl by it
    return 0
