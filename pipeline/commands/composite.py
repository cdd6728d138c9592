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
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("composite", help="seasonal median composite from a STAC items file")
    p.add_argument("items", type=Path, help="ItemCollection JSON (from `forest-carbon search`)")
    p.add_argument("--aoi", type=Path, required=True, help="AOI vector file with a CRS")
    p.add_argument("--crs", required=True, help="model grid CRS, e.g. EPSG:32650")
    p.add_argument("--resolution", type=float, default=10.0, help="model grid cell, metres")
    p.add_argument("--dem-items", type=Path, help="DEM ItemCollection JSON for terrain.tif")
    p.add_argument("--dilation", type=int, default=2, help="cloud mask growth, pixels")
    p.add_argument("--no-harmonise", action="store_true", help="keep Landsat OLI as is")
    p.add_argument("--provider", help="provider convention of items that do not reveal it")
    p.add_argument("--chunk", type=int, default=512, help="chunk side, pixels")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import geopandas as gpd

    from pipeline.config import CompositeParams
    from pipeline.errors import InputDataError
    from pipeline.io import atomic_path, write_cog
    from pipeline.stages.composite import CompositeJob, composite

    for path in [args.items, args.aoi, *([args.dem_items] if args.dem_items else [])]:
        if not path.is_file():
            raise InputDataError(f"{path}: not found")
    params = CompositeParams(
        cloud_dilation_px=args.dilation, harmonise_landsat=not args.no_harmonise
    )
    name = args.items.stem
    job = CompositeJob(params, (name,), args.crs, args.resolution, args.chunk, args.provider)
    items = {name: json.loads(args.items.read_text())}
    dem = json.loads(args.dem_items.read_text()) if args.dem_items else None
    out = composite(job, aoi=gpd.read_file(args.aoi), items=items, terrain_items=dem)
    for rel, obj in out.items():
        target = args.out / Path(rel).name
        if target.suffix == ".tif":
            write_cog(obj, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                tmp.write_text(json.dumps(obj, sort_keys=True, indent=1))
        print(f"wrote {target}")
    return 0
