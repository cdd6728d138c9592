"""Index of LAS/LAZ tile headers: bounds, point counts, CRS, point format; and the tiles a
setting names (a glob, or a virtual point cloud file).

Like lidR's ``readLAScatalog`` this reads headers only (no points), checks that every
tile has one usable, metric CRS, and decides which tiles can be processed at all. A tile
whose header cannot be read is kept in the index with ``status="failed"`` and its error
(the stage then fails, or skips it when ``stages.lidar.allow_skipped_tiles`` says so).

A CRS stated by the user (``--crs``, ``sources.lidar_crs``) overrides the header's; a
header that disagrees is named in a warning. CRS advice names the UTM zone of the tile's
own location (:mod:`pipeline.crs`).
"""

from __future__ import annotations

import glob
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import laspy
import pyproj
from laspy.vlrs.known import GeoKeyDirectoryVlr, WktCoordinateSystemVlr

from pipeline.crs import horizontal, label, non_metre_axes, utm_advice
from pipeline.errors import InputDataError, PipelineWarning


@dataclass(frozen=True)
class TileInfo:
    """What a tile's header says.

    ``status`` is ``ok``, ``empty`` (no points) or ``failed`` (``error`` says why).
    Bounds are in the tile CRS (metres); ``crs`` is its ``EPSG:n`` or WKT string.
    """

    path: Path
    status: str
    error: str
    point_count: int
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    zmin: float
    zmax: float
    crs: str | None
    crs_source: str
    point_format: int
    version: str

    @property
    def name(self) -> str:
        return self.path.name

    def intersects(self, box: tuple[float, float, float, float]) -> bool:
        """Whether the tile may hold points in the closed-open box ``(xmin, ymin, xmax, ymax)``."""
        return (
            self.xmin < box[2]
            and box[0] <= self.xmax
            and self.ymin < box[3]
            and box[1] <= self.ymax
        )


def _header_crs(path: Path, header: laspy.LasHeader) -> tuple[pyproj.CRS | None, str]:
    """The CRS of a header, checking that its WKT and GeoTIFF records agree."""
    found: list[tuple[str, pyproj.CRS]] = []
    for vlr in header.vlrs:
        if isinstance(vlr, WktCoordinateSystemVlr | GeoKeyDirectoryVlr):
            kind = "WKT" if isinstance(vlr, WktCoordinateSystemVlr) else "GeoTIFF keys"
            try:
                crs = vlr.parse_crs()
            except Exception as err:  # laspy/pyproj raise several types for bad records
                raise InputDataError(
                    f"{path}: its {kind} CRS record cannot be parsed ({err})"
                ) from None
            if crs is not None:
                found.append((kind, crs))
    if not found:
        return None, "none"
    first_kind, first = found[0]
    for kind, other in found[1:]:
        if not horizontal(first).equals(horizontal(other), ignore_axis_order=True):
            raise InputDataError(
                f"{path}: conflicting CRS records in the header: {first_kind} says "
                f"{label(first)}, {kind} says {label(other)}; fix the header (e.g. "
                "`pdal translate IN OUT --writers.las.a_srs=EPSG:n`) or state the CRS with --crs "
                "(config: sources.lidar_crs)"
            )
    return first, first_kind


def _check_units(path: Path, crs: pyproj.CRS, bounds: tuple[float, float, float, float]) -> None:
    """Metric horizontal and vertical units, or a clear error with the tile's UTM zone."""
    advice = utm_advice(crs, bounds)
    reproject = (
        "reproject them (`pdal translate IN OUT reprojection "
        '--filters.reprojection.out_srs="EPSG:n"`, with Z converted to metres)'
    )
    if horizontal(crs).is_geographic:
        raise InputDataError(
            f"{path}: CRS {label(crs)} is geographic (degrees); LiDAR tiles must be in a "
            f"projected CRS in metres: {reproject}; {advice}"
        )
    odd = non_metre_axes(crs)
    if odd:
        raise InputDataError(
            f"{path}: CRS {label(crs)} has axes in {', '.join(odd)}; this pipeline computes "
            f"heights and densities in metres: {reproject}; {advice}"
        )


def _stated_crs(path: Path, header: laspy.LasHeader, stated: str) -> tuple[pyproj.CRS, str]:
    """The CRS the user stated, warning when the header says otherwise."""
    try:
        crs = pyproj.CRS.from_user_input(stated)
    except pyproj.exceptions.CRSError:
        raise InputDataError(
            f"--crs / sources.lidar_crs: {stated} is not a CRS known to PROJ"
        ) from None
    try:
        said, _ = _header_crs(path, header)
        disagree = said is not None and not horizontal(said).equals(
            horizontal(crs), ignore_axis_order=True
        )
        what = label(said) if said is not None else ""
    except InputDataError as err:  # conflicting or unreadable records: overridden too
        disagree, what = True, str(err)
    if disagree:
        warnings.warn(
            PipelineWarning(
                f"lidar: {path.name}: the header says {what}; using {label(crs)} as stated "
                "(--crs / sources.lidar_crs)",
                code="lidar_crs_overridden",
                values={"file": path.name, "header": what, "crs": label(crs)},
            ),
            stacklevel=3,
        )
    return crs, "stated (--crs / sources.lidar_crs)"


def _unreadable(path: Path, error: str) -> TileInfo:
    """A tile whose header cannot be used."""
    return TileInfo(path, "failed", error, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, "none", -1, "")


def read_tile_info(path: Path, *, assume_crs: str | None = None) -> TileInfo:
    """Read one tile's header.

    Raises
    ------
    InputDataError
        The header has no CRS and ``assume_crs`` is not given, its CRS records conflict, or
        its units are not metres. (An unreadable header is not raised: the tile is returned
        with ``status="failed"``.)
    """
    try:
        with laspy.open(path) as reader:
            header = reader.header
    except FileNotFoundError:
        raise InputDataError(f"{path}: LiDAR tile not found") from None
    except Exception as err:  # laspy raises LaspyException, ValueError, OSError, ...
        return _unreadable(path, f"{path.name}: cannot read the header: {err}")
    size = path.stat().st_size
    if size < header.offset_to_point_data:
        # cut inside the header's records: what is left of them (e.g. the CRS) is partial
        return _unreadable(
            path,
            f"{path.name}: the header is truncated (the file has {size} bytes, its point "
            f"records start at byte {header.offset_to_point_data}); re-download or re-export it",
        )
    mins, maxs = header.mins, header.maxs
    bounds = (float(mins[0]), float(mins[1]), float(maxs[0]), float(maxs[1]))
    if assume_crs is not None:
        crs, source = _stated_crs(path, header, assume_crs)
    else:
        found, source = _header_crs(path, header)
        if found is None:
            raise InputDataError(
                f"{path}: the tile's header has no CRS; state it with --crs EPSG:n "
                "(config: sources.lidar_crs) or add it to the file "
                "(`pdal translate IN OUT --writers.las.a_srs=EPSG:n`); " + utm_advice(None, bounds)
            )
        crs = found
    _check_units(path, crs, bounds)
    count = int(header.point_count)
    return TileInfo(
        path=path,
        status="ok" if count > 0 else "empty",
        error="" if count > 0 else f"{path.name}: the tile has no points",
        point_count=count,
        xmin=float(mins[0]),
        ymin=float(mins[1]),
        xmax=float(maxs[0]),
        ymax=float(maxs[1]),
        zmin=float(mins[2]),
        zmax=float(maxs[2]),
        crs=label(horizontal(crs)),
        crs_source=source,
        point_format=int(header.point_format.id),
        version=str(header.version),
    )


def index_tiles(paths: Sequence[Path], *, assume_crs: str | None = None) -> list[TileInfo]:
    """Index tile headers and check that all readable tiles share one CRS.

    Raises
    ------
    InputDataError
        No tiles given; a tile has no CRS (and no ``assume_crs``), conflicting CRS records
        or non-metric units; tiles disagree on the CRS.
    """
    if not paths:
        raise InputDataError(
            "no LiDAR tiles given (check sources.lidar_tiles or the TILES arguments)"
        )
    tiles = [read_tile_info(Path(p), assume_crs=assume_crs) for p in sorted(paths)]
    crs_seen: dict[str, str] = {}
    for t in tiles:
        if t.crs is not None:
            crs_seen.setdefault(t.crs, t.name)
    if len(crs_seen) > 1:
        listing = ", ".join(f"{name} has {crs}" for crs, name in crs_seen.items())
        raise InputDataError(
            f"LiDAR tiles are in different CRSs ({listing}); reproject them to one CRS first"
        )
    return tiles


def tiles_of(spec: str, *, setting: str = "sources.lidar_tiles") -> tuple[Path, ...]:
    """The LAS/LAZ files ``spec`` names: a glob pattern (``data/lidar/*.laz``), or a
    virtual point cloud file (``.vpc``, the STAC ItemCollection of point-cloud tiles that
    PDAL's ``pdal_wrench build_vpc`` and QGIS write: one Feature per tile whose ``data``
    asset's href is the tile, relative to the ``.vpc`` or absolute).

    Raises
    ------
    InputDataError
        Nothing matches, the ``.vpc`` cannot be read, or it names a tile that is missing;
        the message names ``setting`` and the file.
    """
    if not spec.lower().endswith(".vpc"):
        tiles = tuple(Path(p) for p in sorted(glob.glob(spec)))
        if not tiles:
            raise InputDataError(
                f"{setting}: no file matches {spec!r}; check the path or build the demo "
                "data (forest-carbon simulate)"
            )
        return tiles
    vpc = Path(spec)
    try:
        doc = json.loads(vpc.read_text(encoding="utf-8"))
        features = doc["features"] if doc.get("type") == "FeatureCollection" else None
    except (OSError, ValueError, AttributeError, KeyError) as err:
        raise InputDataError(
            f"{setting}: {vpc} is not a readable virtual point cloud ({err}); it must be the "
            "JSON FeatureCollection that pdal_wrench build_vpc or QGIS writes"
        ) from None
    if not features:
        raise InputDataError(f"{setting}: {vpc} lists no tile (no features)")
    out = []
    for k, feature in enumerate(features):
        href = (feature.get("assets", {}).get("data") or {}).get("href")
        if not isinstance(href, str):
            raise InputDataError(
                f"{setting}: {vpc}: feature {k} ({feature.get('id')!r}) has no assets.data.href"
            )
        url = urlparse(href)
        if url.scheme not in ("", "file"):
            raise InputDataError(
                f"{setting}: {vpc}: tile {href!r} is remote; download the tiles and point the "
                "virtual point cloud at local files"
            )
        path = Path(unquote(url.path)) if url.scheme == "file" else Path(href)
        path = path if path.is_absolute() else vpc.parent / path
        if not path.is_file():
            raise InputDataError(f"{setting}: {vpc}: tile {path} (feature {k}) does not exist")
        out.append(path)
    return tuple(out)
