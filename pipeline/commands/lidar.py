"""``forest-carbon lidar``: DTM, CHM and area-based metrics from LAS/LAZ tiles.

Example::

    forest-carbon lidar data/nanping/lidar/*.laz --resolution 1 --grid-resolution 10 \\
        --out outputs/lidar_only/

Writes ``DIR/dtm.tif`` and ``DIR/chm.tif`` (``--resolution`` cells over the tiles),
``DIR/metrics.tif`` (``--grid-resolution`` cells over ``--aoi``, or over the tiles; bands
h_mean ... lidar_fraction), ``DIR/qa.json`` and ``DIR/tiles.csv``. The CRS is the tiles'
own (``--crs`` states it, overriding their headers). Tiles that fail to decode are
listed in the QA; the others' results are written and the command then exits with 2.
Runs on a local Dask cluster sized to the machine, or on ``--scheduler ADDR``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipeline.commands import make_params, param_option, write_outputs
from pipeline.config import LidarParams, StandaloneParams


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lidar", help="DTM, CHM and area-based metrics from LAS/LAZ tiles")
    p.add_argument(
        "tiles", type=Path, nargs="+", help="LAS/LAZ files, folders of them, or a .vpc file"
    )
    param_option(p, "--resolution", LidarParams, "resolution_m", help="DTM/CHM cell, metres")
    param_option(
        p,
        "--grid-resolution",
        StandaloneParams,
        "resolution_m",
        help="metrics (model grid) cell, metres",
    )
    p.add_argument(
        "--crs", help="CRS of the tiles, e.g. EPSG:32650: overrides their headers (warned)"
    )
    p.add_argument("--aoi", type=Path, help="AOI vector file: the metrics grid covers it")
    param_option(p, "--chm", LidarParams, "chm_algorithm", help="CHM algorithm")
    param_option(
        p,
        "--ground",
        LidarParams,
        "ground_algorithm",
        help="ground filter of tiles without ground class (simple morphological or cloth)",
    )
    param_option(p, "--buffer", LidarParams, "buffer_m", help="chunk buffer, metres")
    param_option(p, "--chunk-size", LidarParams, "chunk_size_m", help="chunk side, metres")
    p.add_argument("--scheduler", metavar="ADDR", help="existing Dask scheduler tcp://HOST:PORT")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)


def _expand(paths: list[Path]) -> tuple[Path, ...]:
    from pipeline.errors import InputDataError
    from pipeline.lidar.index import tiles_of

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in (".las", ".laz"))
        elif p.suffix.lower() == ".vpc":
            out += tiles_of(str(p), setting="TILES")
        elif p.is_file():
            out.append(p)
        else:
            raise InputDataError(f"{p}: LiDAR tile not found")
    if not out:
        raise InputDataError(f"no .las/.laz files in {', '.join(map(str, paths))}")
    return tuple(out)


def main(args: argparse.Namespace) -> int:
    from pipeline.cluster import dask_client
    from pipeline.config import DaskSettings
    from pipeline.contracts import LIDAR_QA_RELPATH
    from pipeline.errors import InputDataError
    from pipeline.grid import region_geobox
    from pipeline.inputs import read_polygons
    from pipeline.lidar.index import index_tiles
    from pipeline.stages.lidar import LidarJob, model_grid_for_tiles, run_lidar

    tiles = _expand(list(args.tiles))
    index = index_tiles(list(tiles), assume_crs=args.crs)
    crs = next((t.crs for t in index if t.crs is not None), None)
    if crs is None:
        raise InputDataError("no LiDAR tile could be read: " + "; ".join(t.error for t in index))
    params = make_params(
        LidarParams,
        command="lidar",
        resolution_m=args.resolution,
        buffer_m=args.buffer,
        chunk_size_m=args.chunk_size,
        chm_algorithm=args.chm,
        ground_algorithm=args.ground,
        # the command writes the other tiles' results, then exits 2 naming the failures
        allow_skipped_tiles=True,
    )
    job = LidarJob(params, crs=crs, resolution_m=args.grid_resolution, tile_crs=args.crs)
    if args.aoi is not None:
        aoi = read_polygons(args.aoi, setting="--aoi")
        grid = region_geobox(aoi, crs=crs, resolution_m=args.grid_resolution)
    else:
        grid = model_grid_for_tiles(index, resolution_m=args.grid_resolution)
    args.out.mkdir(parents=True, exist_ok=True)
    # the rasters are read from the staged chunks while they are written
    with tempfile.TemporaryDirectory(prefix=".lidar-staging-", dir=args.out) as staging:
        with dask_client(DaskSettings(), scheduler=args.scheduler):
            out = run_lidar(job, tiles=tiles, model_grid=grid, staging=Path(staging))
        write_outputs({args.out / Path(rel).name: obj for rel, obj in out.items()})
    qa = out[LIDAR_QA_RELPATH]
    failed = qa["failed_tiles"]  # type: ignore[index]
    if failed:
        listing = "; ".join(f"{msg}" for msg in failed.values())
        raise InputDataError(
            f"{len(failed)} of {len(tiles)} LiDAR tiles failed ({listing}); the other tiles' "
            f"results are in {args.out} and qa.json lists the failures"
        )
    return 0
