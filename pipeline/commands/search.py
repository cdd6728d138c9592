"""``forest-carbon search``: find scenes in a STAC catalog and freeze them to a JSON file.

Example::

    forest-carbon search --catalog earth-search --bbox 118.0 26.5 118.1 26.6 \\
        --start 2024-03-01 --end 2024-11-30 --max-cloud 60 --out items/2024.json

``--catalog`` is ``local`` (with ``--location items.ndjson``), ``earth-search``,
``planetary-computer`` or ``stac-api`` (with ``--location URL``). The file written is a
STAC ItemCollection that ``forest-carbon composite`` (and the pipeline) read back.
API requests time out after ``--timeout`` seconds and are retried ``--retries`` times on
429/5xx or a lost connection (docs/scene_catalogs.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from pipeline.commands import param_option, write_outputs
from pipeline.config import AcquireParams, CatalogSource


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a STAC catalog and write the items found")
    p.add_argument(
        "--catalog",
        default="earth-search",
        choices=["local", "earth-search", "planetary-computer", "stac-api"],
    )
    p.add_argument("--location", help="items.ndjson (local) or API root URL (stac-api)")
    param_option(
        p,
        "--collections",
        CatalogSource,
        "collections",
        nargs="+",
        help="STAC collections searched",
    )
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
    param_option(
        p, "--max-cloud", AcquireParams, "max_cloud_cover", help="cloud cover limit, percent"
    )
    param_option(p, "--max-items", AcquireParams, "max_items", help="most items per collection")
    param_option(p, "--timeout", AcquireParams, "timeout_s", help="seconds a STAC API may take")
    param_option(p, "--retries", AcquireParams, "retries", help="retries on 429/5xx or timeout")
    p.add_argument("--out", type=Path, required=True, help="ItemCollection JSON to write")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pipeline import catalog

    req = catalog.SearchRequest(
        collections=tuple(args.collections),
        bbox=tuple(args.bbox),
        start=args.start,
        end=args.end,
        max_cloud_cover=args.max_cloud,
        max_items=args.max_items,
        timeout_s=args.timeout,
        retries=args.retries,
    )
    found = catalog.search(req, kind=args.catalog, location=args.location)
    write_outputs({args.out: found.to_dict()})
    by_coll: dict[str, int] = {}
    for item in found:
        by_coll[str(item.collection_id)] = by_coll.get(str(item.collection_id), 0) + 1
    summary = ", ".join(f"{n} {c}" for c, n in sorted(by_coll.items()))
    print(f"{len(found)} items ({summary})")
    return 0
