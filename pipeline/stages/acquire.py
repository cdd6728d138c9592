"""Stage ``acquire``: search scenes per epoch and freeze them as ItemCollections.

For each epoch, the configured catalog (``data_catalog/catalogs.yaml``) is searched for
the AOI's WGS84 bounding box, the epoch's date window and the cloud limit; the chosen
items are written as ``items/<epoch>.json`` (a STAC FeatureCollection). The DEM items
(``sources.catalog.dem_collection``) go to ``items/terrain.json``. A rerun from a
manifest passes the frozen item collections back in (``frozen``) and nothing is searched,
so the same scenes are used byte for byte.

Command: ``forest-carbon run --region nanping --stages acquire``
(or ``forest-carbon search`` for a one-off search).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd

from pipeline import catalog
from pipeline.config import AcquireParams, CatalogSource, Config, Epoch
from pipeline.contracts import PINNED_ITEMS_DIR, TERRAIN_KEY, RunLayout, items_relpath
from pipeline.errors import CatalogError, InputDataError
from pipeline.stage import Stage


@dataclass(frozen=True)
class AcquireJob:
    """Everything ``acquire`` needs, resolved from the config before any work."""

    params: AcquireParams
    source: CatalogSource
    epochs: tuple[Epoch, ...]
    collections: tuple[str, ...]
    dem_collection: str | None

    @classmethod
    def from_config(cls, config: Config) -> AcquireJob:
        src = config.sources.catalog
        return cls(config.stages.acquire, src, config.epochs, src.collections, src.dem_collection)

    def epoch_request(
        self, bbox: tuple[float, float, float, float], epoch: Epoch
    ) -> catalog.SearchRequest:
        """The search for ``epoch``'s scenes over ``bbox`` (WGS84), with the stage's limits."""
        return catalog.SearchRequest(
            collections=self.collections,
            bbox=bbox,
            start=epoch.start,
            end=epoch.end,
            max_cloud_cover=self.params.max_cloud_cover,
            max_items=self.params.max_items,
            page_size=self.params.page_size,
            timeout_s=self.params.timeout_s,
            retries=self.params.retries,
        )


def aoi_bbox_wgs84(aoi: gpd.GeoDataFrame) -> tuple[float, float, float, float]:
    """The AOI's bounding box in WGS84 (lon/lat) as STAC searches expect."""
    if aoi.empty or (aoi.geometry.isna() | aoi.geometry.is_empty).all():
        raise InputDataError(
            "the AOI (config key `aoi`) holds no geometry, so there is no area to search "
            "scenes for: write the area of interest as a polygon into that file"
        )
    if aoi.crs is None:
        raise CatalogError("the AOI has no CRS; write it with an explicit CRS")
    minx, miny, maxx, maxy = (float(v) for v in aoi.to_crs("EPSG:4326").total_bounds)
    return (minx, miny, maxx, maxy)


def acquire(
    job: AcquireJob,
    *,
    aoi: gpd.GeoDataFrame,
    frozen: Mapping[str, Mapping[str, Any]] | None = None,
    catalog_file: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Search (or reuse ``frozen``) items per epoch; ``{"items/<epoch>.json": dict}``.

    ``catalog_file`` is the local catalog (kind ``local``), handed in by the runner so that
    its checksum is part of the stage's fingerprint; it overrides ``source.location``.

    Raises
    ------
    CatalogError
        A search found nothing; the message names catalog, collections, bbox, dates and
        cloud limit.
    """
    keys = [e.name for e in job.epochs] + ([TERRAIN_KEY] if job.dem_collection else [])
    if frozen is not None:
        missing = [k for k in keys if k not in frozen]
        if missing:
            raise CatalogError(f"frozen items lack epochs {missing}; rerun acquire without them")
        return {
            items_relpath(k): catalog.item_collection_from_dict(frozen[k]).to_dict() for k in keys
        }
    bbox = aoi_bbox_wgs84(aoi)
    location = str(catalog_file) if catalog_file is not None else job.source.location
    out: dict[str, dict[str, Any]] = {}
    for epoch in job.epochs:
        found = catalog.search(
            job.epoch_request(bbox, epoch), kind=job.source.kind, location=location
        )
        out[items_relpath(epoch.name)] = found.to_dict()
    if job.dem_collection:
        req = catalog.SearchRequest(
            collections=(job.dem_collection,),
            bbox=bbox,
            start=None,
            end=None,
            max_cloud_cover=None,
            max_items=job.params.max_items,
            page_size=job.params.page_size,
            timeout_s=job.params.timeout_s,
            retries=job.params.retries,
        )
        dem = catalog.search(req, kind=job.source.kind, location=location)
        out[items_relpath(TERRAIN_KEY)] = dem.to_dict()
    return out


def acquire_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """The AOI and the local catalog file, or the pinned items of a reproduction."""
    inputs: dict[str, Path] = {"aoi": config.aoi}
    pinned = layout.path(PINNED_ITEMS_DIR)
    if pinned.is_dir():  # a reproduction: the recorded items, never a new search
        inputs.update({f"frozen.{p.stem}": p for p in sorted(pinned.glob("*.json"))})
        return inputs
    src = config.sources.catalog
    if src.kind == "local":
        inputs["catalog_file"] = catalog.local_catalog_file(src.location)
    return inputs


STAGE = Stage(name="acquire", func=acquire, params=AcquireJob.from_config, inputs=acquire_inputs)
