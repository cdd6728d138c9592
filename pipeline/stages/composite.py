"""Stage ``composite``: seasonal median composites and terrain on the model grid.

Inputs: the frozen items of every epoch (``items/<epoch>.json``), the DEM items
(``items/terrain.json``) and the AOI. Outputs (lazy, written by the runner as COGs):
``composites/<epoch>.tif`` (bands blue ... swir22, ndvi, evi, nbr, ndmi, ndre, n_valid),
``composites/terrain.tif`` (elevation, slope_deg, aspect_deg) and
``composites/qa.json`` (per scene: scale, offset and why, dark-object check). The science
is in :mod:`pipeline.composite`.

An epoch whose composite has no clear pixel stops the run (exit 2, naming the epoch). With
``dark_object_check: warn`` (the default), every scene the check flags (a suspect provider
offset flag, or no clear pixels) is also a warning, which the runner records in the manifest
and the report lists; with ``error`` a suspect offset stops the run.

Command: ``forest-carbon run --region nanping --stages composite``
(or ``forest-carbon composite ITEMS.json ...`` on explicit inputs).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd

from pipeline import catalog
from pipeline import composite as science
from pipeline.config import CompositeParams, Config
from pipeline.contracts import (
    COMPOSITE_QA_RELPATH,
    TERRAIN_KEY,
    TERRAIN_RELPATH,
    RunLayout,
    composite_relpath,
    items_relpath,
)
from pipeline.errors import PipelineWarning, ScienceDomainError
from pipeline.grid import region_geobox
from pipeline.stage import Stage


@dataclass(frozen=True)
class CompositeJob:
    """Everything ``composite`` needs, resolved from the config before any work."""

    params: CompositeParams
    epochs: tuple[str, ...]
    crs: str
    resolution_m: float
    chunk_px: int
    default_provider: str | None

    @classmethod
    def from_config(cls, config: Config) -> CompositeJob:
        src = config.sources.catalog
        provider = src.provider or catalog.catalogs()[src.kind].get("provider")
        return cls(
            config.stages.composite,
            tuple(e.name for e in config.epochs),
            config.crs,
            config.resolution_m,
            min(config.dask.chunk_px, 1024),
            provider,
        )

    @property
    def settings(self) -> science.CompositeSettings:
        return science.CompositeSettings.from_params(
            self.params, chunk_px=self.chunk_px, default_provider=self.default_provider
        )


def _qa_line(record: Mapping[str, Any]) -> str:
    """One scene's dark-object check, as the warning and the error say it."""
    return (
        f"{record['item_id']}: {record['status']} (p1 {record['dark_object_reflectance']}, "
        f"offset {record['offset']} from {record['offset_reason']})"
    )


def _warn_dark_object(epoch: str, record: Mapping[str, Any]) -> None:
    """Warn of a scene the dark-object check did not pass: without clear pixels where it
    samples, or with dark objects too bright or negative."""
    message = (
        f"composite: epoch {epoch}: dark-object check: {_qa_line(record)}; see "
        f"{COMPOSITE_QA_RELPATH}"
    )
    item = record["item_id"]
    if record["dark_object_reflectance"] is None:
        warnings.warn(
            PipelineWarning(
                message,
                code="dark_object_no_clear_pixels",
                values={"epoch": epoch, "item": item, "qa": COMPOSITE_QA_RELPATH},
            ),
            stacklevel=3,
        )
    else:
        warnings.warn(
            PipelineWarning(
                message,
                code="dark_object_suspect",
                values={
                    "epoch": epoch,
                    "item": item,
                    "qa": COMPOSITE_QA_RELPATH,
                    "p1": record["dark_object_reflectance"],
                    "offset": record["offset"],
                    "reason": record["offset_reason"],
                },
            ),
            stacklevel=3,
        )


def composite(
    job: CompositeJob,
    *,
    aoi: gpd.GeoDataFrame,
    items: Mapping[str, Mapping[str, Any]],
    terrain_items: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Composites per epoch (``items`` keyed by epoch name), terrain and QA.

    Returns ``{"composites/<epoch>.tif": DataArray, "composites/terrain.tif": DataArray,
    "composites/qa.json": dict}``; rasters are lazy (Dask) with CRS set.
    """
    geobox = region_geobox(aoi, crs=job.crs, resolution_m=job.resolution_m)
    settings = job.settings
    out: dict[str, Any] = {}
    qa: dict[str, Any] = {"dark_object_check": job.params.dark_object_check, "epochs": {}}
    for epoch in job.epochs:
        ic = catalog.item_collection_from_dict(items[epoch])
        comp, scenes = science.seasonal_composite(list(ic), geobox, settings=settings)
        science.require_model_bands(scenes, epoch=epoch)
        science.require_clear_pixels(comp, epoch=epoch, n_scenes=len(scenes))
        out[composite_relpath(epoch)] = comp
        if job.params.dark_object_check != "off":
            records = science.dark_object_qa(scenes)
            qa["epochs"][epoch] = records
            bad = [r for r in records if r["status"].startswith("suspect")]
            if bad and job.params.dark_object_check == "error":
                lines = "; ".join(map(_qa_line, bad))
                raise ScienceDomainError(
                    f"epoch {epoch}: dark-object check failed for {lines}. Drop the scenes or "
                    f"set stages.composite.dark_object_check: warn"
                )
            for r in records:
                if r["status"] != "ok":
                    _warn_dark_object(epoch, r)
        else:
            qa["epochs"][epoch] = [
                {
                    "item_id": s.item_id,
                    "scale": s.radiometry.scale,
                    "offset": s.radiometry.offset,
                    "offset_reason": s.radiometry.reason,
                }
                for s in scenes
            ]
    if terrain_items is not None:
        dem = list(catalog.item_collection_from_dict(terrain_items))
        out[TERRAIN_RELPATH] = science.terrain(dem, geobox, settings=settings)
    out[COMPOSITE_QA_RELPATH] = qa
    return out


def composite_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """The AOI, each epoch's frozen items (``items.<epoch>``) and the DEM items."""
    inputs = {"aoi": config.aoi}
    if config.sources.catalog.dem_collection:
        inputs["terrain_items"] = layout.path(items_relpath(TERRAIN_KEY))
    for e in config.epochs:
        inputs[f"items.{e.name}"] = layout.path(items_relpath(e.name))
    return inputs


STAGE = Stage(
    name="composite", func=composite, params=CompositeJob.from_config, inputs=composite_inputs
)
