"""``forest-carbon composite``: a seasonal median composite from a frozen items file.

Example::

    forest-carbon composite items/2024.json --aoi aoi/nanping.geojson --crs EPSG:32650 \\
        --resolution 10 --dem-items items/terrain.json --out composites/

Writes ``<out>/<name>.tif`` (bands blue ... swir22, ndvi, evi, nbr, ndmi, ndre, n_valid;
``name`` is the items file's stem), ``<out>/terrain.tif`` when DEM items are given, and
``<out>/qa.json`` (per scene: scale, offset and why, dark-object check).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import make_params, param_option, read_input, write_outputs
from pipeline.config import CompositeParams, DaskSettings, StandaloneParams


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("composite", help="seasonal median composite from a STAC items file")
    p.add_argument("items", type=Path, help="ItemCollection JSON (from `forest-carbon search`)")
    p.add_argument("--aoi", type=Path, required=True, help="AOI vector file with a CRS")
    p.add_argument("--crs", required=True, help="model grid CRS, e.g. EPSG:32650")
    param_option(
        p, "--resolution", StandaloneParams, "resolution_m", help="model grid cell, metres"
    )
    p.add_argument("--dem-items", type=Path, help="DEM ItemCollection JSON for terrain.tif")
    param_option(
        p, "--dilation", CompositeParams, "cloud_dilation_px", help="cloud mask growth, pixels"
    )
    p.add_argument("--no-harmonise", action="store_true", help="keep Landsat OLI as is")
    p.add_argument("--provider", help="provider convention of items that do not reveal it")
    param_option(p, "--chunk", DaskSettings, "chunk_px", help="chunk side, pixels")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline.inputs import read_polygons
    from pipeline.stages.composite import CompositeJob, composite

    params = make_params(
        CompositeParams,
        command="composite",
        cloud_dilation_px=args.dilation,
        harmonise_landsat=False if args.no_harmonise else None,
    )
    name = args.items.stem
    job = CompositeJob(params, (name,), args.crs, args.resolution, args.chunk, args.provider)
    out = composite(
        job,
        aoi=read_polygons(args.aoi, setting="--aoi"),
        items={name: read_input(args.items)},
        terrain_items=read_input(args.dem_items) if args.dem_items else None,
    )
    write_outputs({args.out / Path(rel).name: obj for rel, obj in out.items()})
    return 0
