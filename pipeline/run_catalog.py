"""The run folder as a STAC catalog, for a data centre to harvest.

``catalog.json`` beside ``manifest.json`` is a self-contained pystac Catalog (relative
hrefs: the folder can be moved or copied as a whole) with one Item per output of the
manifest, ``stac/<item id>.json``. It is rebuilt from the manifest every time the runner
writes the manifest (the manifest is the one source of truth), each file atomically, so a
killed or partial run leaves a catalog of exactly the outputs its manifest records.

Every item carries

- the output as its ``data`` asset, with the File extension's ``file:checksum`` (the
  sha256 multihash of the file's bytes, what a transfer is checked against) and
  ``file:size``;
- ``forest_carbon:content_checksum`` (the manifest's content checksum, what ``reproduce``
  compares: pixels and georeferencing, or table rows), ``forest_carbon:config_sha256``,
  ``forest_carbon:stage`` (the stage that wrote it) and ``forest_carbon:region``;
- ``datetime``: an epoch's reference date for the outputs of one epoch (composites,
  per-epoch maps, frozen scene items; ``start_datetime``/``end_datetime`` are the epoch's
  season), otherwise the time the run started; ``created`` is when its stage finished;
- rasters: the Projection extension (EPSG code, shape, transform, native bbox), the Raster
  extension's ``raster:bands`` (nodata, data type, unit, resolution) and STAC 1.1's
  ``bands`` with the band names; geometry and bbox are the raster's footprint in WGS 84;
- vector layers: the layer's footprint; tables, JSON, the report: the run's extent (the
  union of the spatial outputs' footprints), since they describe that area;
- the QGIS styles of a layer (:func:`pipeline.contracts.style_relpath`) as ``style``
  assets of the layer's item rather than items of their own.

Validate with ``pystac.Catalog.from_file("outputs/tiny/catalog.json").validate_all()``
(needs ``jsonschema``; see docs/data_centre.md for what validates offline).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension
from pystac.layout import CustomLayoutStrategy
from pystac.stac_io import DefaultStacIO

from pipeline import io
from pipeline.contracts import STYLE_SUFFIX, RunLayout, styled_layer

#: property prefix of the pipeline's own item fields
PREFIX = "forest_carbon:"

#: sha2-256 in the multihash table (code 0x12, digest length 0x20 bytes): the prefix the
#: File extension's ``file:checksum`` puts before the hex digest. Two constant bytes; a
#: multihash package would add a dependency for nothing else.
SHA256_MULTIHASH_PREFIX = "1220"

MEDIA_TYPES: dict[str, str] = {
    ".tif": pystac.MediaType.COG,
    ".gpkg": pystac.MediaType.GEOPACKAGE,
    ".geojson": pystac.MediaType.GEOJSON,
    ".csv": "text/csv",
    ".json": pystac.MediaType.JSON,
    ".html": pystac.MediaType.HTML,
    ".png": pystac.MediaType.PNG,
    STYLE_SUFFIX: "application/xml",
}

#: asset roles by suffix (STAC best practices: data, metadata, overview, style)
ROLES: dict[str, list[str]] = {".png": ["overview"], STYLE_SUFFIX: ["style"]}


class AtomicStacIO(DefaultStacIO):
    """pystac's file I/O, writing every file under a temporary name first (recorded in
    ``journal``, see :func:`pipeline.io.atomic_path`)."""

    def __init__(self, journal: io.TemporaryJournal | None = None) -> None:
        super().__init__()
        self.journal = journal

    def write_text_to_href(self, href: str, txt: str) -> None:
        with io.atomic_path(Path(href), journal=self.journal) as tmp:
            tmp.write_text(txt, encoding="utf-8")


def item_id(relpath: str) -> str:
    """An output's item id: its path in the run folder with ``-`` for ``/``."""
    return relpath.replace("/", "-")


def _epoch_of(relpath: str, epochs: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The epoch an output belongs to: ``<epoch>.<ext>`` or ``<map>_<epoch>.<ext>``
    (:func:`~pipeline.contracts.composite_relpath`, ``items_relpath``, ``map_relpath``)."""
    stem = Path(relpath).name.split(".")[0]
    for epoch in epochs:
        if stem == epoch["name"] or stem.endswith(f"_{epoch['name']}"):
            return epoch
    return None


def _utc(value: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(value)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t


def _box(bbox: list[float]) -> dict[str, Any]:
    w, s, e, n = bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _wgs84_bbox(crs: Any, bounds: tuple[float, float, float, float]) -> list[float]:
    from rasterio.warp import transform_bounds

    return [float(v) for v in transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)]


def _nodata(value: float | None) -> float | NoDataStrings | None:
    """The Raster extension's nodata: NaN and infinities as the strings JSON allows."""
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return NoDataStrings.NAN
    return NoDataStrings.INF if value > 0 else NoDataStrings.NINF


def _raster_fields(item: pystac.Item, asset: pystac.Asset, path: Path) -> list[float]:
    """Projection and band fields of a raster's item and asset; returns its WGS 84 bbox."""
    import rasterio

    with rasterio.open(path) as src:
        bbox = _wgs84_bbox(src.crs, tuple(src.bounds))
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        epsg = src.crs.to_epsg() if src.crs else None
        proj.apply(
            code=f"EPSG:{epsg}" if epsg else None,
            wkt2=None if epsg or src.crs is None else src.crs.to_wkt(),
            shape=[src.height, src.width],
            transform=list(src.transform)[:6],
            bbox=list(src.bounds),
        )
        names = [d or f"band_{i}" for i, d in enumerate(src.descriptions, start=1)]
        nodata = _nodata(src.nodata)
        raster_bands = [
            RasterBand.create(
                nodata=nodata,
                data_type=DataType(dtype),
                unit=unit or None,
                spatial_resolution=float(abs(src.transform.a)),
            )
            for dtype, unit in zip(src.dtypes, src.units, strict=True)
        ]
    RasterExtension.ext(asset, add_if_missing=True).apply(raster_bands)
    # STAC 1.1 core ``bands``: the names (the Raster extension 1.1 has no field for them)
    # with the same nodata, type and unit
    asset.extra_fields["bands"] = [
        {"name": name, **{k: v for k, v in band.to_dict().items() if k != "spatial_resolution"}}
        for name, band in zip(names, raster_bands, strict=True)
    ]
    return bbox


def _vector_bbox(path: Path) -> list[float] | None:
    import pyogrio

    info = pyogrio.read_info(path, force_total_bounds=True)
    bounds = info.get("total_bounds")
    if info.get("crs") is None or bounds is None or not all(map(math.isfinite, bounds)):
        return None
    return _wgs84_bbox(info["crs"], tuple(bounds))


def _add_asset(
    item: pystac.Item, key: str, path: Path, relpath: str, record: Mapping[str, Any]
) -> pystac.Asset:
    """Add an output file as asset ``key`` of ``item``, with its checksums."""
    suffix = Path(relpath).suffix.lower()
    asset = pystac.Asset(
        href=str(path),
        title=relpath,
        media_type=MEDIA_TYPES.get(suffix),
        roles=ROLES.get(suffix, ["data"]),
    )
    item.add_asset(key, asset)
    file_ext = FileExtension.ext(asset, add_if_missing=True)
    if record.get("file_sha256"):
        file_ext.checksum = SHA256_MULTIHASH_PREFIX + record["file_sha256"]
    if path.is_file():
        file_ext.size = path.stat().st_size
    asset.extra_fields[f"{PREFIX}content_checksum"] = record.get("checksum")
    return asset


def build_catalog(manifest: Mapping[str, Any], root: Path) -> pystac.Catalog:
    """The STAC catalog of the outputs ``manifest`` records in the run folder ``root``.

    Parameters
    ----------
    manifest
        A run's manifest (:mod:`pipeline.runner`): ``outputs``, ``stages``, ``config``
        (its ``epochs``), ``config_sha256``, ``region`` and ``run_datetime``.
    root
        The run folder the output paths are relative to.

    Returns
    -------
    pystac.Catalog
        Items with absolute hrefs; :func:`write_catalog` lays them out and saves them.
    """
    if "run_datetime" not in manifest:
        raise ValueError("manifest has no run_datetime (written by the runner since the catalog)")
    run_time = _utc(manifest["run_datetime"])
    epochs = list(manifest.get("config", {}).get("epochs", []))
    outputs: Mapping[str, Mapping[str, Any]] = manifest.get("outputs", {})
    region = manifest.get("region")
    catalog = pystac.Catalog(
        id=f"forest-carbon-{region}",
        title=f"Forest carbon run: {region}",
        description=(
            f"Outputs of a forest-carbon run of region {region!r} (config sha256 "
            f"{manifest.get('config_sha256')}), one item per file of its manifest.json."
        ),
    )
    styles: dict[str, tuple[str, str | None]] = {}
    for rel in outputs:
        target = styled_layer(rel, list(outputs)) if rel.endswith(STYLE_SUFFIX) else None
        if target is not None:
            styles[rel] = target
    items: dict[str, pystac.Item] = {}
    footprints: list[list[float]] = []
    unplaced: list[pystac.Item] = []
    for rel in sorted(outputs):
        if rel in styles:
            continue
        record = outputs[rel]
        path = root / rel
        stage = record.get("stage")
        finished = manifest.get("stages", {}).get(stage, {}).get("finished")
        epoch = _epoch_of(rel, epochs)
        props: dict[str, Any] = {
            f"{PREFIX}stage": stage,
            f"{PREFIX}config_sha256": manifest.get("config_sha256"),
            f"{PREFIX}content_checksum": record.get("checksum"),
            f"{PREFIX}region": region,
        }
        if epoch is not None:
            props[f"{PREFIX}epoch"] = epoch["name"]
        when = _utc(str(epoch["reference_date"])) if epoch is not None else run_time
        item = pystac.Item(
            id=item_id(rel), geometry=None, bbox=None, datetime=when, properties=props
        )
        if finished:
            item.common_metadata.created = _utc(finished)
        if epoch is not None:
            item.common_metadata.start_datetime = _utc(str(epoch["start"]))
            item.common_metadata.end_datetime = _utc(str(epoch["end"]))
        asset = _add_asset(item, "data", path, rel, record)
        suffix = path.suffix.lower()
        bbox = None
        if path.is_file() and suffix in io.RASTER_SUFFIXES:
            bbox = _raster_fields(item, asset, path)
        elif path.is_file() and suffix in io.VECTOR_SUFFIXES:
            bbox = _vector_bbox(path)
        if bbox is not None:
            item.bbox, item.geometry = bbox, _box(bbox)
            footprints.append(bbox)
        else:
            unplaced.append(item)
        items[rel] = item
    if footprints:
        extent = [
            min(b[0] for b in footprints),
            min(b[1] for b in footprints),
            max(b[2] for b in footprints),
            max(b[3] for b in footprints),
        ]
        for item in unplaced:
            item.bbox, item.geometry = extent, _box(extent)
    for style, (layer, band) in styles.items():
        key = "style" if band is None else f"style_{band}"
        _add_asset(items[layer], key, root / style, style, outputs[style])
    for item in items.values():
        catalog.add_item(item)
    return catalog


def write_catalog(
    manifest: Mapping[str, Any], layout: RunLayout, *, journal: io.TemporaryJournal | None = None
) -> pystac.Catalog:
    """Rebuild the run's catalog from ``manifest`` and save it, self-contained, atomically.

    ``catalog.json`` is written last, so it never lists an item file that is not there;
    item files of outputs the manifest no longer records are removed.
    """
    root = layout.root.resolve()  # absolute hrefs first, made relative to the catalog below
    catalog = build_catalog(manifest, root)
    items_dir = root / layout.catalog_items_dir.relative_to(layout.root)
    catalog.normalize_hrefs(
        str(root),
        strategy=CustomLayoutStrategy(
            item_func=lambda item, _parent: str(items_dir / f"{item.id}.json")
        ),
    )
    catalog.make_all_asset_hrefs_relative()
    # pystac saves the items first and the catalog last
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=AtomicStacIO(journal))
    keep = {f"{item.id}.json" for item in catalog.get_items()}
    for stale in items_dir.glob("*.json"):
        if stale.name not in keep:
            stale.unlink()
    return catalog
