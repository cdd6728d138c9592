"""A bureau's own GeoTIFF scenes as a local STAC catalog the pipeline searches.

A folder of scenes (one GeoTIFF per band, ``<scene>_<band>.tif``, or one multi-band
GeoTIFF per scene whose bands carry descriptions or follow the profile's band numbers)
becomes a static STAC catalog: ``items.ndjson`` (what ``sources.catalog.location`` points
at, read by :func:`pipeline.catalog.search_local`) and the same items as a browsable
``catalog.json`` tree. Each item's outline, bounding box and projection (``proj:epsg``,
``proj:shape``, ``proj:transform``) come from its rasters through rio-stac; its date from
``--datetime``, else the first ``YYYYMMDD`` in its file name, else the GeoTIFF's
``ACQUISITIONDATETIME`` tag; its assets are keyed as the collection profile
(``data_catalog/collections/<profile>.yaml``) names them, so the composite reads them like
any other item of that collection. A band of a multi-band file is referenced through a
one-band VRT beside the item (written by GDAL, naming the file relative to itself).

Anything the pipeline could not read right is refused, naming the file: a TIFF without
georeferencing (a GF L1A scene with RPCs only), an unknown band, a scene without a date,
floating-point data where the profile expects scaled integers.

Command: ``forest-carbon catalog SCENES_DIR --out CATALOG_DIR --collection gf1-wfv``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import rasterio.shutil
from rasterio.errors import RasterioError
from rio_stac import create_stac_item
from rio_stac.stac import get_projection_info

from pipeline import catalog
from pipeline.errors import ConfigError, InputDataError
from pipeline.io import RASTER_SUFFIXES, atomic_folder

#: the file the pipeline searches (``sources.catalog.location``)
ITEMS_FILE = "items.ndjson"

#: points added to each edge of a scene's outline before it goes to WGS84, so the curved
#: edges of a projected footprint are followed (GDAL's own choice for warped outlines)
DENSIFY_POINTS = 21

#: a date in a file name: ``YYYYMMDD``, optionally ``THHMMSS`` (CRESDA's
#: ``GF1_WFV3_E119.2_N26.5_20190330_L1A0003912345``, Sentinel-2's ``..._20190330T024551_...``)
DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{6})(?:T(\d{6}))?(?!\d)")

#: separators between a scene's name and its band in ``<scene>_<band>.tif``
BAND_SEPARATORS = "_-."


@dataclass(frozen=True)
class BandTable:
    """The bands a collection profile knows, as the catalog writes and recognises them."""

    collection: str
    #: our band name -> asset key written in the items
    asset_keys: dict[str, str]
    #: a band's name in a file name or band description (lower case) -> our band name
    tokens: dict[str, str]
    #: the band number in the product's multi-band file -> our band name
    numbers: dict[int, str]
    profile: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, collection: str) -> BandTable:
        """The table of ``data_catalog/collections/<collection>.yaml``.

        Its assets are those of the profile's ``local`` provider, else of the provider
        local catalogs follow (``catalogs.yaml``); ``bands`` adds the bands the composite
        does not use (GF-6's coastal and yellow) and the product's band numbers.
        """
        profile = catalog.collection_profile(collection)
        if profile.get("kind") != "reflectance":
            raise ConfigError(
                f"--collection {collection}: not a reflectance collection; scenes of it cannot "
                f"be catalogued"
            )
        providers = profile["providers"]
        own = "local" if "local" in providers else str(catalog.catalogs()["local"]["provider"])
        if own not in providers:
            raise ConfigError(
                f"data_catalog/collections/{collection}.yaml has no provider {own!r}, whose "
                f"asset keys a local catalog's items use"
            )
        bands = profile.get("bands", {})
        keys = {str(b): str(k) for b, k in providers[own]["assets"].items()}
        keys.update({str(b): str(b) for b in bands if b not in keys})
        tokens: dict[str, str] = {}
        for entry in providers.values():  # every provider's name of a band: B04, SCL, red
            for band, key in entry["assets"].items():
                tokens.setdefault(str(key).lower(), str(band))
        numbers = {int(spec["number"]): str(b) for b, spec in bands.items() if "number" in spec}
        for n, band in numbers.items():
            tokens.update({f"b{n}": band, f"b{n:02d}": band, f"band{n}": band})
        tokens.update({b.lower(): b for b in keys})
        return cls(str(profile["collection"]), keys, tokens, numbers, profile)

    def band(self, token: str) -> str | None:
        """Our band name for a file-name token or band description, or None."""
        return self.tokens.get(token.strip().lower())


@dataclass(frozen=True)
class BandFile:
    """One band of a scene: the file, its band number in the file, and our band name."""

    path: Path
    band: str
    index: int
    n_bands: int
    #: named by the profile's band numbers (the file's bands have no descriptions)
    by_number: bool = False


def _open_checked(path: Path, table: BandTable) -> tuple[int, tuple[str | None, ...]]:
    """The band count and descriptions of a GeoTIFF the pipeline can read, else refuse."""
    try:
        with rasterio.open(path) as src:
            driver, crs, count = src.driver, src.crs, src.count
            dtypes, nodata, descriptions = src.dtypes, src.nodata, src.descriptions
            rpcs = src.rpcs is not None or bool(src.gcps[0])
            transform_set = not src.transform.is_identity
    except RasterioError as err:
        raise InputDataError(f"{path}: not a raster GDAL can read ({err})") from None
    if driver != "GTiff":
        raise InputDataError(f"{path}: a {driver} file, not a GeoTIFF; convert it to GeoTIFF")
    if crs is None or not transform_set:
        why = " (it has RPCs or GCPs only: an L1A scene)" if rpcs else ""
        raise InputDataError(
            f"{path}: no map georeferencing (CRS and geotransform){why}; orthorectify it "
            f"into a map projection first (e.g. gdalwarp -rpc -t_srs EPSG:326xx)"
        )
    if table.profile.get("stored_as") == "integer" and any(
        np.issubdtype(np.dtype(d), np.floating) for d in dtypes
    ):
        raise InputDataError(
            f"{path}: floating-point data ({dtypes[0]}), but collection {table.collection} "
            f"expects {table.profile.get('expects')} (data_catalog/collections/"
            f"{table.collection}.yaml); store reflectance x 10000 as integers"
        )
    want = table.profile.get("nodata_dn")
    if nodata is not None and want is not None and float(nodata) != float(want):
        raise InputDataError(
            f"{path}: no-data value {nodata:g}, but collection {table.collection} reads DN "
            f"{want} as no data; rewrite the file with nodata {want}"
        )
    return count, descriptions


def _split_band(stem: str, table: BandTable) -> tuple[str, str] | None:
    """``(scene, band)`` of a one-band file named ``<scene><sep><band>``, or None."""
    cut = max(stem.rfind(sep) for sep in BAND_SEPARATORS)
    if cut <= 0:
        return None
    band = table.band(stem[cut + 1 :])
    return (stem[:cut], band) if band else None


def scan(scenes_dir: Path, table: BandTable) -> tuple[dict[str, list[BandFile]], list[Path]]:
    """The scenes of a folder (searched recursively): scene id -> its bands, and the
    files that are not ``.tif``/``.tiff`` (metadata, thumbnails), which are skipped.

    Raises
    ------
    InputDataError
        A file the pipeline cannot read or whose band is unknown, or a band given twice;
        the message names the file.
    """
    if not scenes_dir.is_dir():
        raise InputDataError(f"{scenes_dir}: not a folder of GeoTIFF scenes")
    files = sorted(p for p in scenes_dir.rglob("*") if p.is_file())
    tifs = [p for p in files if p.suffix.lower() in RASTER_SUFFIXES]
    skipped = [p for p in files if p.suffix.lower() not in RASTER_SUFFIXES]
    if not tifs:
        raise InputDataError(f"{scenes_dir}: no .tif or .tiff files in it (or its sub-folders)")
    known = ", ".join(sorted(table.asset_keys))
    scenes: dict[str, list[BandFile]] = {}
    for path in tifs:
        count, descriptions = _open_checked(path, table)
        if count == 1:
            split = _split_band(path.stem, table)
            if split is None:
                raise InputDataError(
                    f"{path}: a one-band file whose name does not end in a band of collection "
                    f"{table.collection} (name it <scene>_<band>.tif, band one of {known})"
                )
            scene, band = split
            scenes.setdefault(scene, []).append(BandFile(path, band, 1, 1))
            continue
        if all(descriptions):
            named = [(table.band(str(d)), str(d)) for d in descriptions]
            unknown = [d for b, d in named if b is None]
            if unknown:
                raise InputDataError(
                    f"{path}: band description(s) {unknown} are not bands of collection "
                    f"{table.collection} (known: {known})"
                )
            bands = [str(b) for b, _ in named]
        elif not any(descriptions) and set(table.numbers) == set(range(1, count + 1)):
            bands = [table.numbers[n] for n in range(1, count + 1)]
        else:
            raise InputDataError(
                f"{path}: {count} bands, but not all have a description and collection "
                f"{table.collection} numbers {len(table.numbers)} bands; give each band a "
                f"description (one of {known})"
            )
        scenes.setdefault(path.stem, []).extend(
            BandFile(path, b, i, count, by_number=not any(descriptions))
            for i, b in enumerate(bands, start=1)
        )
    for scene, parts in scenes.items():
        seen: dict[str, Path] = {}
        for part in parts:
            if part.band in seen:
                raise InputDataError(
                    f"scene {scene}: band {part.band} is in both {seen[part.band]} and "
                    f"{part.path}; keep one"
                )
            seen[part.band] = part.path
    return scenes, skipped


def scene_datetime(
    scene: str, parts: Sequence[BandFile], *, given: dt.datetime | None
) -> dt.datetime:
    """When a scene was acquired: ``given``, else its name's date, else its TIFF tag.

    The TIFF ``DateTime`` tag is not used: it is when the file was written (TIFF 6.0,
    tag 306), which for a processed scene is not when it was acquired.
    """
    if given is not None:
        return given if given.tzinfo else given.replace(tzinfo=dt.UTC)
    for name in (scene, *(p.path.stem for p in parts)):
        for match in DATE_IN_NAME.finditer(name):
            text = match.group(1) + (match.group(2) or "000000")
            try:
                return dt.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
            except ValueError:  # eight digits that are no date (an orbit number)
                continue
    with rasterio.open(parts[0].path) as src:
        tag = src.get_tag_item("ACQUISITIONDATETIME", "IMAGERY")
    if tag:
        try:
            when = dt.datetime.fromisoformat(tag)
        except ValueError:
            raise InputDataError(
                f"{parts[0].path}: its ACQUISITIONDATETIME tag {tag!r} is not an ISO date"
            ) from None
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    raise InputDataError(
        f"{parts[0].path}: no acquisition date: none in the file name (YYYYMMDD) and no "
        f"ACQUISITIONDATETIME tag; rename it with its date or give --datetime"
    )


def _one_band_vrt(part: BandFile, vrt: Path, final_dir: Path) -> None:
    """Write band ``part.index`` of a multi-band file as a one-band VRT at ``vrt``.

    GDAL writes the VRT (``vrt://`` band subset, copied with the VRT driver); its source
    is then named relative to the VRT's final folder, so the catalog and the scenes can be
    moved together, as relative hrefs allow.
    """
    rasterio.shutil.copy(f"vrt://{part.path.resolve()}?bands={part.index}", vrt, driver="VRT")
    tree = ET.parse(vrt)
    for source in tree.iter("SourceFilename"):
        source.text = os.path.relpath(part.path.resolve(), final_dir)
        source.set("relativeToVRT", "1")
    tree.write(vrt)


def _asset(href: str, part: BandFile, table: BandTable) -> pystac.Asset:
    with rasterio.open(part.path) as src:
        proj = get_projection_info(src)
    extra: dict[str, Any] = {
        f"proj:{k}": proj[k] for k in ("epsg", "shape", "transform") if proj.get(k) is not None
    }
    if proj.get("epsg") is None and "wkt2" in proj:
        extra["proj:wkt2"] = proj["wkt2"]
    spec = table.profile.get("bands", {}).get(part.band)
    if spec and "range_um" in spec:
        lo, hi = (float(v) for v in spec["range_um"])
        extra["eo:bands"] = [
            {
                "name": part.band,
                "center_wavelength": round((lo + hi) / 2, 4),
                "full_width_half_max": round(hi - lo, 4),
            }
        ]
    # a VRT has no registered media type; left unset, odc-stac takes a "data" asset as raster
    media = pystac.MediaType.GEOTIFF if part.n_bands == 1 else None
    return pystac.Asset(href=href, media_type=media, roles=["data"], extra_fields=extra)


def scene_item(
    scene: str,
    parts: Sequence[BandFile],
    *,
    table: BandTable,
    when: dt.datetime,
    platform: str | None,
    tmp_dir: Path,
    final_dir: Path,
) -> pystac.Item:
    """The STAC item of one scene; asset hrefs are absolute paths of the final catalog.

    One-band VRTs of multi-band files are written under ``tmp_dir`` (the catalog being
    built) at the place they will have under ``final_dir``.
    """
    assets: dict[str, pystac.Asset] = {}
    for part in parts:
        key = table.asset_keys[part.band]
        if part.n_bands == 1:
            href = part.path.resolve()
        else:
            rel = Path(table.collection) / scene / f"{key}.vrt"
            (tmp_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            _one_band_vrt(part, tmp_dir / rel, (final_dir / rel).parent)
            href = final_dir / rel
        assets[key] = _asset(str(href), part, table)
    properties: dict[str, Any] = {}
    if platform:
        properties["platform"] = platform
    if "gsd_m" in table.profile:
        properties["gsd"] = float(table.profile["gsd_m"])
    item = create_stac_item(
        str(parts[0].path),  # outline and projection of the scene's first file
        input_datetime=when,
        collection=table.collection,
        properties=properties,
        id=scene,
        assets=assets,
        with_proj=True,
        geom_densify_pts=DENSIFY_POINTS,
    )
    item.links = []  # rio-stac's collection link names the collection by id only
    return item


@dataclass(frozen=True)
class CatalogSummary:
    """What ``forest-carbon catalog`` wrote, for its log."""

    items_file: Path
    items: list[pystac.Item]
    crs: list[str]
    skipped: list[Path]
    #: composite bands (reflectance and indices) no scene gives
    absent: list[str]
    notes: list[str]


def build_catalog(
    scenes_dir: Path,
    out_dir: Path,
    *,
    collection: str,
    when: dt.datetime | None = None,
    platform: str | None = None,
    replace: bool = False,
) -> CatalogSummary:
    """Catalog the GeoTIFF scenes of ``scenes_dir`` as collection ``collection`` in ``out_dir``.

    ``out_dir`` is written whole or not at all (a temporary folder renamed into place).

    Raises
    ------
    InputDataError
        A file that cannot be catalogued; the message names it and what to do.
    ConfigError
        An unknown collection, or a platform the collection does not know.
    """
    from pipeline.composite import absent_bands  # imported here: Dask comes with it

    table = BandTable.of(collection)
    platform = platform or table.profile.get("platform")
    sensors = table.profile.get("sensors")
    if sensors is not None and str(platform).lower().replace("_", "-") not in sensors:
        raise ConfigError(
            f"--platform {platform or '(not given)'}: collection {collection} needs the "
            f"platform of its scenes, one of {', '.join(sensors)}"
        )
    scenes, skipped = scan(scenes_dir, table)
    final = out_dir.resolve()
    with atomic_folder(final, replace=replace) as tmp:
        items = [
            scene_item(
                scene,
                parts,
                table=table,
                when=scene_datetime(scene, parts, given=when),
                platform=platform,
                tmp_dir=tmp,
                final_dir=final,
            )
            for scene, parts in sorted(scenes.items())
        ]
        lines = []
        for item in items:
            data = item.to_dict(include_self_link=False, transform_hrefs=False)
            for asset in data["assets"].values():  # relative to items.ndjson: movable
                asset["href"] = os.path.relpath(asset["href"], final)
            lines.append(json.dumps(data, ensure_ascii=False))
        (tmp / ITEMS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        _write_stac_tree(items, tmp, final, collection=table.collection)
    absent = absent_bands({p.band for parts in scenes.values() for p in parts})
    notes = []
    if table.profile.get("verified") is False:
        notes.append(
            f"collection {collection}: DN are read as {table.profile.get('expects')}, a "
            f"convention, not a published calibration (verified: false in "
            f"data_catalog/collections/{collection}.yaml)"
        )
    if table.profile.get("band_order_verified") is False and any(
        p.by_number for parts in scenes.values() for p in parts
    ):
        notes.append(
            f"collection {collection}: the bands of files without band descriptions were "
            f"named by the profile's band numbers, which could not be verified "
            f"(band_order_verified: false); check them, or give the bands descriptions"
        )
    crs = sorted(
        {
            f"EPSG:{a.extra_fields['proj:epsg']}"
            if a.extra_fields.get("proj:epsg")
            else "a CRS without an EPSG code"
            for i in items
            for a in i.assets.values()
        }
    )
    return CatalogSummary(final / ITEMS_FILE, items, crs, skipped, absent, notes)


def _write_stac_tree(
    items: Sequence[pystac.Item], tmp: Path, final: Path, *, collection: str
) -> None:
    """The items as a self-contained static STAC catalog (``catalog.json`` and below)."""
    cat = pystac.Catalog(
        id="scenes",
        description=f"GeoTIFF scenes catalogued by forest-carbon catalog ({collection})",
    )
    coll = pystac.Collection(
        id=collection,
        description=f"{collection} scenes (data_catalog/collections/{collection}.yaml)",
        extent=pystac.Extent.from_items(items),
        license="other",
    )
    coll.add_items([i.clone() for i in items])
    cat.add_child(coll)
    cat.normalize_hrefs(str(final))
    cat.make_all_asset_hrefs_relative()
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, dest_href=str(tmp))
