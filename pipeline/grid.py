"""The region's model grid: one GeoBox shared by composites, LiDAR metrics and maps.

Every raster the pipeline writes on the model grid uses :func:`region_geobox`, so the
composites, the LiDAR area-based metrics and the biomass maps align cell for cell. The
grid is the AOI's bounding box in the region CRS, snapped outwards to whole multiples of
the resolution (so grids at 10 m and 1 m nest exactly).
"""

from __future__ import annotations

import math

import geopandas as gpd
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox


def snapped_bounds(
    bounds: tuple[float, float, float, float], resolution_m: float
) -> tuple[float, float, float, float]:
    """Bounds snapped outwards to multiples of ``resolution_m``."""
    minx, miny, maxx, maxy = bounds
    r = resolution_m
    return (
        math.floor(minx / r) * r,
        math.floor(miny / r) * r,
        math.ceil(maxx / r) * r,
        math.ceil(maxy / r) * r,
    )


def region_geobox(aoi: gpd.GeoDataFrame, *, crs: str, resolution_m: float) -> GeoBox:
    """The model grid covering ``aoi`` in ``crs`` at ``resolution_m`` (north-up)."""
    if aoi.crs is None:
        raise ValueError(
            "the AOI has no CRS; write it with an explicit CRS (e.g. GeoJSON in WGS84)"
        )
    bounds = snapped_bounds(tuple(aoi.to_crs(crs).total_bounds), resolution_m)
    return GeoBox.from_bbox(BoundingBox(*bounds, crs=crs), crs=crs, resolution=resolution_m)
