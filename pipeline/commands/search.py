"""``forest-carbon search``: find scenes in a STAC catalog and freeze them to a JSON file.

Example::

    forest-carbon search --catalog earth-search --bbox 118.0 26.5 118.1 26.6 \\
        --start 2024-03-01 --end 2024-11-30 --max-cloud 60 --out items/2024.json

``--catalog`` is ``local`` (with ``--location items.ndjson``), ``earth-search``,
``planetary-computer`` or ``stac-api`` (with ``--location URL``). The file written is a
STAC ItemCollection that ``forest-carbon composite`` (and the pipeline) read back.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a STAC catalog and write the items found")
    p.add_argument(
        "--catalog",
        default="earth-search",
        choices=["local", "earth-search", "planetary-computer", "stac-api"],
    )
    p.add_argument("--location", help="items.ndjson (local) or API root URL (stac-api)")
    p.add_argument("--collections", nargs="+", default=["sentinel-2-l2a", "landsat-c2-l2"])
    p.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        required=True,
        metavar=("WEST", "SOUTH", "EAST", "NORTH"),
        help="WGS84 degrees",
    )
    p.add_argument("--start", type=dt.date.fromisoformat, help="first date (YYYY-MM-DD)")
    p.add_argument("--end", type=dt.date.fromisoformat, help="last date (YYYY-MM-DD)")
    p.add_argument("--max-cloud", type=float, default=80.0, help="cloud cover limit, percent")
    p.add_argument("--max-items", type=int, default=200, help="most items per collection")
    p.add_argument("--out", type=Path, required=True, help="ItemCollection JSON to write")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline import catalog
    from pipeline.io import atomic_path

    req = catalog.SearchRequest(
        collections=tuple(args.collections),
        bbox=tuple(args.bbox),
        start=args.start,
        end=args.end,
        max_cloud_cover=args.max_cloud,
        max_items=args.max_items,
    )
    found = catalog.search(req, kind=args.catalog, location=args.location)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(found.to_dict(), sort_keys=True, indent=1))
    by_coll: dict[str, int] = {}
    for item in found:
        by_coll[str(item.collection_id)] = by_coll.get(str(item.collection_id), 0) + 1
    summary = ", ".join(f"{n} {c}" for c, n in sorted(by_coll.items()))
    print(f"{len(found)} items ({summary}) -> {args.out}")
    return 0
