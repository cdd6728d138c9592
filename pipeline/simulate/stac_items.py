"""STAC items and collections shaped like Earth Search v1's.

Items carry the properties and asset fields real Earth Search v1 items have (checked
against published item JSON: ``eo:cloud_cover``, ``proj:epsg``, ``s2:processing_baseline``,
``earthsearch:boa_offset_applied``, per-asset ``proj:shape``/``proj:transform`` and
``raster:bands`` with ``nodata``/``data_type``/``spatial_resolution``/``scale``/``offset``),
plus ``proj:code`` (projection extension v2) and ``"forest-carbon:simulated": true``. Hrefs
are relative to the catalog file ``catalog/items.ndjson`` (``../scenes/...``).

Convention for the Sentinel-2 offset, as real Earth Search v1 items of baseline >= 04.00
have it: every reflectance asset declares ``scale`` 0.0001 and ``offset`` -0.1 in
``raster:bands`` whether or not the provider already removed the +1000 DN BOA offset from
the pixels; ``earthsearch:boa_offset_applied`` says which (true: removed, so reflectance
= DN / 10000 and applying ``raster:bands`` blindly would subtract it twice; see
Element84/earth-search#66 and cirrus-geo/cirrus-earth-search#21 and #33). Items before
baseline 04.00 declare offset 0 and ``earthsearch:boa_offset_applied: false``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from odc.geo.geobox import GeoBox
from pyproj import Transformer

from pipeline.simulate.satellite import s2_20m_grid
from pipeline.simulate.science import coefficients

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EXT = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
]


def mgrs_square(zone: int, easting_m: float, northing_m: float) -> str:
    """The MGRS 100 km square letters (e.g. ``PQ``) of a UTM coordinate (AA scheme)."""
    cols = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    col = cols[int(easting_m // 100_000) - 1]
    row = rows[(int(northing_m // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return col + row


def footprint(grid: GeoBox, crs: str) -> tuple[dict[str, Any], list[float]]:
    """WGS84 polygon and bbox of a grid's extent."""
    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    xmin, ymin, xmax, ymax = grid.boundingbox
    ring = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)]
    ll = [tuple(round(v, 8) for v in t.transform(x, y)) for x, y in ring]
    lons = [p[0] for p in ll]
    lats = [p[1] for p in ll]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ll]]}, [
        min(lons),
        min(lats),
        max(lons),
        max(lats),
    ]


def _transform(g: GeoBox) -> list[float]:
    return list(g.affine)[:6]


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def s2_item(
    *,
    item_id: str,
    when: dt.datetime,
    platform: str,
    baseline: str,
    post_baseline: bool,
    boa_offset_applied: bool,
    grid10: GeoBox,
    crs: str,
    hrefs: dict[str, str],
    cloud_cover: float,
    scl_percent: dict[str, float],
    sun_zenith: float,
    sun_azimuth: float,
    tile: str,
) -> dict[str, Any]:
    """A Sentinel-2 L2A item like Earth Search v1's ``sentinel-2-l2a``."""
    s = coefficients()["sentinel2"]
    epsg = int(crs.split(":")[1])
    geom, bbox = footprint(grid10, crs)
    grid20 = s2_20m_grid(grid10)
    assets: dict[str, Any] = {}
    names = coefficients()["reflectance"]["bands"]
    for name, bid, res, cw, fw in zip(
        names,
        s["band_ids"],
        s["resolution_m"],
        s["center_wavelength_um"],
        s["full_width_half_max_um"],
        strict=True,
    ):
        g = grid10 if res == 10 else grid20
        assets[name] = {
            "href": hrefs[name],
            "type": COG,
            "title": f"{name} ({bid}) - {res}m",
            "eo:bands": [
                {
                    "name": name,
                    "common_name": name.rstrip("123") if name.startswith("rededge") else name,
                    "description": bid,
                    "center_wavelength": cw,
                    "full_width_half_max": fw,
                }
            ],
            "gsd": res,
            "proj:shape": [g.height, g.width],
            "proj:transform": _transform(g),
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "bits_per_sample": 15,
                    "spatial_resolution": res,
                    "scale": 0.0001,
                    "offset": -0.1 if post_baseline else 0.0,
                }
            ],
            "roles": ["data", "reflectance"],
        }
    assets["scl"] = {
        "href": hrefs["scl"],
        "type": COG,
        "title": "Scene classification map (SCL)",
        "proj:shape": [grid20.height, grid20.width],
        "proj:transform": _transform(grid20),
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
        "roles": ["data", "reflectance"],
    }
    date = when.strftime("%Y%m%dT%H%M%S")
    nb = baseline.replace(".", "")
    props: dict[str, Any] = {
        "created": _iso(when + dt.timedelta(hours=6)),
        "updated": _iso(when + dt.timedelta(hours=6)),
        "datetime": _iso(when),
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(cloud_cover, 6),
        "proj:epsg": epsg,
        "proj:code": crs,
        "mgrs:utm_zone": int(tile[:2]),
        "mgrs:latitude_band": tile[2],
        "mgrs:grid_square": tile[3:],
        "grid:code": f"MGRS-{tile}",
        "view:sun_azimuth": round(sun_azimuth, 6),
        "view:sun_elevation": round(90.0 - sun_zenith, 6),
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "s2:product_uri": f"S2{platform[-1].upper()}_MSIL2A_{date}_N{nb}_R089_T{tile}_{date}.SAFE",
        "s2:generation_time": _iso(when + dt.timedelta(hours=3)),
        "s2:datatake_type": "INS-NOBS",
        "s2:nodata_pixel_percentage": 0.0,
        "earthsearch:boa_offset_applied": boa_offset_applied,
        "forest-carbon:simulated": True,
    }
    props.update({f"s2:{k}_percentage": round(v, 6) for k, v in scl_percent.items()})
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": EXT,
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": geom,
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": assets,
    }


def landsat_item(
    *,
    item_id: str,
    when: dt.datetime,
    platform: str,
    grid30: GeoBox,
    crs: str,
    hrefs: dict[str, str],
    cloud_cover: float,
    sun_zenith: float,
    sun_azimuth: float,
    wrs_path: str,
    wrs_row: str,
) -> dict[str, Any]:
    """A Landsat Collection 2 Level-2 item like Earth Search v1's ``landsat-c2-l2``."""
    q = coefficients()["landsat"]
    epsg = int(crs.split(":")[1])
    geom, bbox = footprint(grid30, crs)
    assets: dict[str, Any] = {}
    for name, bid, cw in zip(q["bands"], q["band_ids"], q["center_wavelength_um"], strict=True):
        assets[name] = {
            "href": hrefs[name],
            "type": COG,
            "title": f"{name} ({bid})",
            "eo:bands": [{"name": bid, "common_name": name, "center_wavelength": cw}],
            "gsd": 30,
            "proj:shape": [grid30.height, grid30.width],
            "proj:transform": _transform(grid30),
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "spatial_resolution": 30,
                    "scale": float(q["scale"]),
                    "offset": float(q["offset"]),
                    "unit": "unitless",
                }
            ],
            "roles": ["data", "reflectance"],
        }
    assets["qa_pixel"] = {
        "href": hrefs["qa_pixel"],
        "type": COG,
        "title": "Pixel Quality Assessment Band (QA_PIXEL)",
        "proj:shape": [grid30.height, grid30.width],
        "proj:transform": _transform(grid30),
        "raster:bands": [
            {
                "nodata": int(q["qa_fill"]),
                "data_type": "uint16",
                "spatial_resolution": 30,
                "unit": "bit index",
            }
        ],
        "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
    }
    props = {
        "datetime": _iso(when),
        "platform": platform,
        "constellation": "landsat",
        "instruments": ["oli", "tirs"],
        "eo:cloud_cover": round(cloud_cover, 2),
        "view:sun_azimuth": round(sun_azimuth, 6),
        "view:sun_elevation": round(90.0 - sun_zenith, 6),
        "view:off_nadir": 0,
        "proj:epsg": epsg,
        "proj:code": crs,
        "landsat:wrs_type": "2",
        "landsat:wrs_path": wrs_path,
        "landsat:wrs_row": wrs_row,
        "landsat:collection_category": "T1",
        "landsat:collection_number": "02",
        "landsat:correction": "L2SP",
        "landsat:cloud_cover_land": round(cloud_cover, 2),
        "forest-carbon:simulated": True,
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": EXT,
        "id": item_id,
        "collection": "landsat-c2-l2",
        "geometry": geom,
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": assets,
    }


def dem_item(
    *, item_id: str, href: str, shape: tuple[int, int], transform: list[float], bbox: list[float]
) -> dict[str, Any]:
    """A Copernicus DEM GLO-30 item (EPSG:4326, 1 arc-second) like Earth Search's."""
    w, s, e, n = bbox
    geom = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": EXT[1:3],
        "id": item_id,
        "collection": "cop-dem-glo-30",
        "geometry": geom,
        "bbox": bbox,
        "properties": {
            "datetime": "2021-04-22T00:00:00Z",
            "platform": "tandem-x",
            "gsd": 30,
            "proj:epsg": 4326,
            "proj:code": "EPSG:4326",
            "proj:shape": list(shape),
            "proj:transform": transform,
            "forest-carbon:simulated": True,
        },
        "links": [],
        "assets": {
            "data": {
                "href": href,
                "type": COG,
                "title": "Copernicus DEM GLO-30",
                "proj:shape": list(shape),
                "proj:transform": transform,
                "raster:bands": [
                    {
                        "data_type": "float32",
                        "spatial_resolution": 30,
                        "unit": "metre",
                        "nodata": -32767.0,
                    }
                ],
                "roles": ["data"],
            }
        },
    }


def collections(bbox: list[float], interval: list[str | None]) -> list[dict[str, Any]]:
    """Minimal STAC collections for the local catalog."""
    out = []
    for cid, title in (
        ("sentinel-2-l2a", "Sentinel-2 Level-2A (simulated)"),
        ("landsat-c2-l2", "Landsat Collection 2 Level-2 (simulated)"),
        ("cop-dem-glo-30", "Copernicus DEM GLO-30 (simulated)"),
    ):
        out.append(
            {
                "type": "Collection",
                "stac_version": "1.0.0",
                "id": cid,
                "title": title,
                "description": f"{title}: simulated by forest-carbon simulate for the demo region",
                "license": "CC-BY-4.0",
                "links": [],
                "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
                "forest-carbon:simulated": True,
            }
        )
    return out
