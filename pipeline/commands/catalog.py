"""``forest-carbon catalog``: a folder of GeoTIFF scenes as a local STAC catalog.

Example::

    forest-carbon catalog /data/gf1 --out data/myregion/catalog --collection gf1-wfv

writes ``data/myregion/catalog/items.ndjson`` (point ``sources.catalog.location`` at it and
add the collection to ``sources.catalog.collections``) and the same items as a static
STAC catalog (``catalog.json``). Scenes are one GeoTIFF per band (``<scene>_<band>.tif``)
or one multi-band GeoTIFF per scene; dates come from ``--datetime``, the file names
(``YYYYMMDD``) or the ``ACQUISITIONDATETIME`` tag. A file that cannot be catalogued stops
the command with exit 2, naming it (docs/scene_catalogs.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalog", help="make a local STAC catalog of your own GeoTIFF scenes")
    p.add_argument("scenes", type=Path, metavar="SCENES_DIR", help="folder of GeoTIFF scenes")
    p.add_argument("--out", type=Path, required=True, help="catalog folder to write")
    p.add_argument(
        "--collection",
        default="gf1-wfv",
        help="collection profile of the scenes, data_catalog/collections/<name>.yaml "
        "(default: gf1-wfv)",
    )
    p.add_argument(
        "--datetime",
        type=dt.datetime.fromisoformat,
        help="acquisition date (ISO, e.g. 2024-05-01 or 2024-05-01T03:10:00Z) of every scene; "
        "by default each scene's file name or TIFF tag gives it",
    )
    p.add_argument("--platform", help="platform of the scenes (default: the profile's, e.g. gf-1)")
    p.add_argument("--force", action="store_true", help="replace an existing catalog folder")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline.composite import model_gaps
    from pipeline.scene_catalog import build_catalog

    done = build_catalog(
        args.scenes,
        args.out,
        collection=args.collection,
        when=args.datetime,
        platform=args.platform,
        replace=args.force,
    )
    dates = sorted(i.datetime.date().isoformat() for i in done.items if i.datetime)
    print(
        f"{len(done.items)} {args.collection} scene(s), {dates[0]} to {dates[-1]}, "
        f"written to {done.items_file}"
    )
    if len(done.crs) > 1:
        print(
            f"note: the scenes are in {len(done.crs)} CRSs ({', '.join(done.crs)}); the "
            f"composite reprojects each onto the region's grid"
        )
    if done.skipped:
        print(f"note: {len(done.skipped)} file(s) that are not .tif/.tiff were skipped")
    if done.absent:
        print(f"note: no scene gives {', '.join(done.absent)} (NaN in their composites)")
        gaps = model_gaps(done.absent)
        if gaps:
            print(
                f"note: the satellite model needs {', '.join(gaps)}: an epoch made only of "
                f"these scenes is refused; use them with Sentinel-2 or Landsat scenes"
            )
    for note in done.notes:
        print(f"note: {note}")
    print(
        f"use it: sources.catalog.kind: local, location: {done.items_file}, and "
        f"{args.collection} in sources.catalog.collections"
    )
    return 0
