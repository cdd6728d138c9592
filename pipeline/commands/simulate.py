"""``forest-carbon simulate``: build the embedded demo region's input data.

``forest-carbon simulate --region nanping --out data/nanping`` loads
``configs/regions/nanping.yaml`` and writes the simulated inputs (STAC catalog with COG
scenes, LAZ tiles, plots, parcels) and their truth (``truth/``) to ``--out``. The data are
written to a temporary folder next to ``--out`` and renamed into place; ``.complete`` is
written last. Same seed, same bytes. See :mod:`pipeline.simulate` for the science.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from pipeline.config import load_config, region_config_path
from pipeline.errors import ConfigError, InputDataError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="build the simulated demo region's input data",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--region", help="region name (loads configs/regions/NAME.yaml)")
    src.add_argument("--config", type=Path, help="a region config file")
    p.add_argument("--out", type=Path, help="output folder (default: the config's data_dir)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.simulate import aoi_frame, aoi_grid, simulate_region

    path = region_config_path(args.region) if args.region else args.config
    config = load_config(path)
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    seed = config.seed if args.seed is None else args.seed
    out = Path(args.out) if args.out else config.data_dir
    if out.exists():
        if not args.force:
            raise InputDataError(
                f"{out}: output folder already exists; remove it or pass --force to replace it"
            )
    # the config's AOI file must be the simulated AOI (or absent: then it is written)
    grid = aoi_grid(config)
    aoi_path = Path(config.aoi)
    if aoi_path.is_file():
        import geopandas as gpd

        from pipeline.grid import snapped_bounds

        have = snapped_bounds(
            tuple(gpd.read_file(aoi_path).to_crs(config.crs).total_bounds), config.resolution_m
        )
        want = tuple(grid.boundingbox)
        if any(abs(a - b) > 1e-6 for a, b in zip(have, want, strict=True)):
            raise ConfigError(
                f"{path}: aoi {aoi_path} has bounds {have} but simulate.size_km/center_lon/"
                f"center_lat give {want}; fix the config or delete the AOI file to "
                "have it written"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = simulate_region(config, tmp, seed=seed)
        if not aoi_path.is_file() and not aoi_path.resolve().is_relative_to(out.resolve()):
            aoi_path.parent.mkdir(parents=True, exist_ok=True)
            aoi_frame(grid, config.crs).to_file(aoi_path, driver="GeoJSON")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        (out / ".complete").write_text(json.dumps({"seed": seed, "region": config.region}) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    t, n = summary["timings_s"], summary["n_plots"]
    print(
        f"simulated {config.region} (seed {seed}) into {out}: {summary['shape'][1]}x"
        f"{summary['shape'][0]} px, {summary['n_items']} items, {len(summary['lidar']['tiles'])}"
        f" LiDAR tiles, {n['inventory']} inventory + {n['project']} project plots, "
        f"{summary['n_parcels']} parcels; "
        f"timings {t}"
    )
    return 0
