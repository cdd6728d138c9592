"""A region's own input files, read and checked before any stage runs.

``forest-carbon run`` (and ``forest-carbon check``) call :func:`check_inputs` before the
runner touches the run folder, so a bad input ends in exit 2 with the file, the feature
or column and what to do, and the run folder has nothing new. What is checked (the
user's guide is ``docs/input_checks.md``):

- the AOI, parcel and project layers are vector files GDAL reads (:func:`read_polygons`),
  with a CRS, at least one feature, only Polygon/MultiPolygon features, none empty and
  none invalid (a self-intersecting ring gives shapely an area of 0 and exactextract a
  non-zero one, so the two would disagree silently), unless ``sources.repair_geometry``
  asks to repair them: then every stage gets the repaired layer (:func:`read_vector`, on
  which :func:`pipeline.io.read_input` reads vector inputs) and warns;
- every parcel and project polygon lies at least partly on the model grid (a wrong CRS
  label or a layer of another place gives parcels 0 t of carbon); those partly on it are
  warned about, here and by the ``parcels`` stage, whose table flags them (column
  ``grid_fraction``; :func:`pipeline.zonal.grid_fractions`);
- the plots lie on the model grid, the AOI's extent (refused when none does, warned for
  those off it: they have no predictors);
- the tree list is UTF-8, or its encoding is detected (GBK/GB18030, as many Chinese
  bureaus save CSV files) and said (:func:`read_csv_text`), or a sheet of an XLSX
  workbook (:func:`read_xlsx`); it has the columns the ``plots`` stage requires; its
  species names given in Chinese, pinyin or as a Latin synonym are said with the Latin
  name they were read as (``models/data/species_names.csv``);
- a parcel layer with its own field names has the fields ``sources.parcel_fields`` maps
  (:func:`map_fields`);
- the LiDAR tile headers (readable, with points, in one metric CRS; the stage decodes the
  points and fails on a corrupt tile unless ``stages.lidar.allow_skipped_tiles``).

Each check is where the file is read, so the stages and stand-alone commands that read
the same file say the same thing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from odc.geo.geobox import GeoBox
from pyogrio.errors import DataLayerError, DataSourceError

from pipeline.config import Config, Sources
from pipeline.errors import InputDataError, PipelineWarning
from pipeline.grid import region_geobox
from pipeline.zonal import grid_fractions

POLYGON_TYPES = ("Polygon", "MultiPolygon")
#: a polygon counts as wholly on the grid from this share on (float sums of coverage
#: fractions, float32 in exactextract, fall short of 1 by rounding only)
FULLY_ON_GRID = 0.999

#: a tree list's encodings besides UTF-8 that are read (after detection) rather than
#: refused: the Chinese national encodings (GB18030 decodes GBK and GB2312 text)
CHINESE_ENCODINGS = {"gb18030": "gb18030", "gbk": "gb18030", "gb2312": "gb18030"}

#: ``about(*files)``: a block whose warnings are about ``files`` (:func:`check_inputs`)
About = Callable[..., AbstractContextManager[None]]


def _feature(gdf: gpd.GeoDataFrame, i: int, id_column: str | None) -> str:
    """How a message names feature ``i``: its id when the layer has one, else its index."""
    if id_column is not None and id_column in gdf.columns:
        return f"feature {i} ({id_column} {gdf[id_column].iloc[i]!r})"
    return f"feature {i}"


def valid_polygons(
    gdf: gpd.GeoDataFrame, *, where: str, id_column: str | None, repair: bool
) -> gpd.GeoDataFrame:
    """``gdf`` if its geometries are valid; else repaired (``repair``, warned) or refused.

    The repair is shapely's ``make_valid`` with the ``structure`` method, keeping only
    polygonal parts (a bow-tie becomes its two triangles).
    """
    geoms = gdf.geometry.array
    valid = shapely.is_valid(geoms) | shapely.is_missing(geoms)
    if valid.all():
        return gdf
    bad = np.flatnonzero(~valid)
    names = ", ".join(_feature(gdf, int(i), id_column) for i in bad[:5])
    if not repair:
        i = int(bad[0])
        raise InputDataError(
            f"{where}: {_feature(gdf, i, id_column)} is an invalid polygon "
            f"({shapely.is_valid_reason(geoms[i])}; {bad.size} of {len(gdf)} features "
            "invalid): its area is undefined. Repair the layer, e.g. `ogr2ogr -makevalid "
            "OUT.gpkg IN.gpkg` or QGIS 'Fix geometries', and check the result; or set "
            "sources.repair_geometry: true"
        )
    fixed = shapely.make_valid(geoms, method="structure", keep_collapsed=False)
    warnings.warn(
        PipelineWarning(
            f"{where}: {bad.size} invalid polygon(s) repaired with shapely.make_valid "
            f"(sources.repair_geometry): {names}; check their areas",
            code="geometry_repaired",
            values={"where": where, "n": int(bad.size), "names": names},
        ),
        stacklevel=2,
    )
    return gdf.set_geometry(gpd.GeoSeries(fixed, index=gdf.index, crs=gdf.crs))


#: suffixes of GeoParquet files (read by pyarrow: the GDAL of pyogrio's wheels has no
#: Parquet driver)
GEOPARQUET_SUFFIXES = (".parquet", ".geoparquet")


def read_layer(path: Path) -> gpd.GeoDataFrame:
    """A vector file: GeoParquet through pyarrow, any other format through GDAL (GeoPackage,
    Shapefile in the encoding its ``.cpg`` names, FlatGeobuf, GeoJSON, ...)."""
    if path.suffix.lower() in GEOPARQUET_SUFFIXES:
        return gpd.read_parquet(path)
    return gpd.read_file(path)


@dataclass(frozen=True)
class FieldMapping:
    """How a layer's own field names become the pipeline's (``sources.parcel_fields``)."""

    #: the pipeline's name -> the layer's field
    fields: Mapping[str, str]
    #: the pipeline's names whose field the layer must have
    required: frozenset[str]
    #: a required column may instead be under the pipeline's own name (a project layer
    #: drawn with the pipeline's names beside a bureau's parcel layer)
    own_names: bool = False


def layer_fields(sources: Sources, path: Path) -> FieldMapping | None:
    """The field mapping of the layer at ``path``: ``sources.parcel_fields`` for the parcel
    layer (every field required) and the project layer (the id's field, or a ``parcel_id``
    column, required); None for any other file or without a mapping."""
    fields = sources.parcel_fields
    if not fields:
        return None
    if path == sources.parcels:
        return FieldMapping(fields, frozenset(fields))
    if path == sources.project_area:
        return FieldMapping(fields, frozenset(fields) & {"parcel_id"}, own_names=True)
    return None


def read_settings(sources: Sources, spec: Path | tuple[Path, ...]) -> dict[str, Any]:
    """How the config says an input file is read: the keyword arguments of
    :func:`pipeline.io.read_input` (repair of polygons, a layer's field mapping, a
    workbook's sheet) for the input ``spec``."""
    if isinstance(spec, tuple):
        return {}
    return {
        "repair_geometry": sources.repair_geometry,
        "fields": layer_fields(sources, spec),
        "sheet": sources.trees_sheet if spec == sources.trees else None,
    }


def map_fields(
    gdf: gpd.GeoDataFrame, mapping: FieldMapping, *, path: Path, where: str
) -> gpd.GeoDataFrame:
    """``gdf``, read from ``path``, with its fields renamed to the pipeline's names
    (:class:`FieldMapping`); ``where`` names the file in messages.

    Raises
    ------
    InputDataError
        A required field is not in the layer (the message lists the layer's fields and,
        for a Shapefile without a ``.cpg``, says how its encoding is told), or the layer
        has both a mapped field and a column of the pipeline's name.
    """
    have = [str(c) for c in gdf.columns if c != gdf.geometry.name]
    rename = {}
    for ours, theirs in mapping.fields.items():
        if theirs not in gdf.columns:
            if ours in mapping.required and not (mapping.own_names and ours in gdf.columns):
                hint = ""
                if path.suffix.lower() == ".shp" and not path.with_suffix(".cpg").exists():
                    hint = (
                        "; the Shapefile has no .cpg file, so its field names were decoded "
                        "in the encoding its DBF header names, else as ISO-8859-1: if the "
                        "names above are garbled, add a .cpg file (e.g. one line GBK)"
                    )
                raise InputDataError(
                    f"{where}: no field {theirs!r} (sources.parcel_fields.{ours}); the "
                    f"layer's fields are {have}{hint}"
                )
            continue
        if ours != theirs and ours in gdf.columns:
            raise InputDataError(
                f"{where}: the layer has both {theirs!r} (sources.parcel_fields.{ours}) and "
                f"a field {ours!r}; map only one of them"
            )
        rename[theirs] = ours
    return gdf.rename(columns=rename)


def read_vector(
    path: Path, *, repair: bool = False, fields: FieldMapping | None = None
) -> gpd.GeoDataFrame:
    """A vector input as the stages get it: its fields named as ``fields`` maps them
    (:func:`map_fields`), its polygons valid, or repaired if asked (:func:`valid_polygons`;
    the layer's other checks are :func:`read_polygons`')."""
    gdf = read_layer(path)
    if fields is not None:
        gdf = map_fields(gdf, fields, path=path, where=str(path))
    return valid_polygons(gdf, where=str(path), id_column="parcel_id", repair=repair)


def read_polygons(
    path: Path,
    *,
    setting: str,
    id_column: str | None = None,
    repair: bool = False,
    fields: FieldMapping | None = None,
) -> gpd.GeoDataFrame:
    """A polygon layer (AOI, parcels, project area), checked.

    Parameters
    ----------
    path
        A vector file GDAL reads (GeoPackage, GeoJSON, Shapefile, FlatGeobuf, ...).
    setting
        The config key or option that names the file, for the messages.
    id_column
        The column that names a feature in messages (e.g. ``parcel_id``).
    repair
        Repair invalid polygons (warned) rather than refuse them.
    fields
        The layer's fields renamed to the pipeline's names (:func:`map_fields`).

    Raises
    ------
    InputDataError
        Not a vector file, no CRS, no features, a feature that is not a polygon, empty
        or invalid; the message names the file, the feature and what to do.
    """
    where = f"{path} ({setting})"
    if not path.is_file():
        raise InputDataError(f"{where}: file not found")
    try:
        gdf = read_layer(path)
    except (DataSourceError, DataLayerError, ValueError) as err:
        raise InputDataError(
            f"{where}: not a vector file GDAL can read ({err}); give a GeoPackage, GeoJSON, "
            "Shapefile, FlatGeobuf or GeoParquet file of polygons"
        ) from None
    if not isinstance(gdf, gpd.GeoDataFrame) or gdf.geometry is None:
        raise InputDataError(f"{where}: the file has no geometry column")
    if len(gdf) == 0:
        raise InputDataError(f"{where}: the layer has no features")
    if gdf.crs is None:
        raise InputDataError(
            f"{where}: the layer has no CRS; write it with one (GeoJSON: WGS84 longitude/latitude)"
        )
    if fields is not None:
        gdf = map_fields(gdf, fields, path=path, where=where)
    geoms = gdf.geometry.array
    missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise InputDataError(
            f"{where}: {_feature(gdf, i, id_column)} has an empty geometry "
            f"({int(missing.sum())} of {len(gdf)} features); delete or redraw them"
        )
    types = gdf.geometry.geom_type.to_numpy()
    wrong = ~np.isin(types, POLYGON_TYPES)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise InputDataError(
            f"{where}: {_feature(gdf, i, id_column)} is a {types[i]}; this input must be "
            f"polygons ({' or '.join(POLYGON_TYPES)}), e.g. the boundary of the area"
        )
    return valid_polygons(gdf, where=where, id_column=id_column, repair=repair)


def read_csv_text(path: Path) -> pd.DataFrame:
    """A CSV table, UTF-8 (with or without a byte-order mark) or a detected Chinese encoding.

    Many bureaus' tools save CSV in GBK (Excel on a Chinese Windows does). A file that is
    not UTF-8 is given to charset-normalizer; GBK/GB18030/GB2312 text is read as GB18030
    (a superset of the others) with a warning that says so; anything else is refused.

    Raises
    ------
    InputDataError
        The text is neither UTF-8 nor a detected Chinese encoding, or not a CSV table.
    """
    from charset_normalizer import from_path

    from pipeline.io import CSV_ENCODING  # io reads tables through here

    try:
        return pd.read_csv(path, encoding=CSV_ENCODING)
    except UnicodeDecodeError:
        pass
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputDataError(f"{path}: not a CSV table ({err})") from None
    best = from_path(path).best()
    detected = best.encoding if best is not None else None
    encoding = CHINESE_ENCODINGS.get(detected or "")
    if detected is None or encoding is None:
        raise InputDataError(
            f"{path}: the text is not UTF-8 (detected: {detected or 'unknown'}); save the "
            "file as 'CSV UTF-8' (Excel: Save As > CSV UTF-8)"
        )
    try:
        table = pd.read_csv(path, encoding=encoding)
    except UnicodeDecodeError as err:
        raise InputDataError(
            f"{path}: neither UTF-8 nor {encoding} ({err}); save the file as 'CSV UTF-8'"
        ) from None
    warnings.warn(
        PipelineWarning(
            f"{path}: the text is not UTF-8; read it as {detected.upper()} (detected), as "
            "Chinese Excel saves CSV; save it as 'CSV UTF-8' to silence this",
            code="csv_not_utf8",
            values={"path": str(path), "encoding": detected.upper()},
        ),
        stacklevel=2,
    )
    return table


def read_xlsx(path: Path, *, sheet: str | None = None) -> pd.DataFrame:
    """A sheet of an XLSX workbook (openpyxl), the first when ``sheet`` is None; the table
    a CSV export of that sheet would give (header in the first row, empty cells missing).

    Raises
    ------
    InputDataError
        The file is not an XLSX workbook, or has no sheet ``sheet`` (its sheets are listed).
    """
    from zipfile import BadZipFile

    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = pd.ExcelFile(path, engine="openpyxl")
    except (BadZipFile, InvalidFileException, ValueError, KeyError, OSError) as err:
        raise InputDataError(
            f"{path}: not an XLSX workbook ({err}); save it from Excel or WPS as .xlsx, or "
            "as 'CSV UTF-8'"
        ) from None
    with book:
        names = [str(n) for n in book.sheet_names]
        if sheet is not None and sheet not in names:
            raise InputDataError(
                f"{path}: no sheet {sheet!r} (sources.trees_sheet or --sheet); its sheets are "
                f"{names}"
            )
        return book.parse(sheet if sheet is not None else names[0])


def refuse_off_grid(
    fractions: np.ndarray, polygons: gpd.GeoDataFrame, *, where: str, id_column: str
) -> None:
    """Polygons with no part on the model grid are an error naming them."""
    off = np.flatnonzero(fractions <= 0)
    if off.size:
        names = [_feature(polygons, int(i), id_column) for i in off[:5]]
        raise InputDataError(
            f"{where}: {off.size} of {len(polygons)} polygons lie entirely off the model grid "
            f"(the AOI's extent), e.g. {', '.join(names)}: they would get 0 t of carbon. "
            "Check the layer's CRS label, or clip the layer to the AOI"
        )


def warn_partly_off_grid(
    fractions: np.ndarray, polygons: gpd.GeoDataFrame, *, where: str, id_column: str
) -> None:
    """A warning naming the polygons partly off the model grid, with their share on it."""
    partly = np.flatnonzero(fractions < FULLY_ON_GRID)
    if partly.size:
        listing = ", ".join(
            f"{_feature(polygons, int(i), id_column)}: {fractions[i]:.0%}" for i in partly[:10]
        )
        warnings.warn(
            PipelineWarning(
                f"{where}: {partly.size} of {len(polygons)} polygons lie partly off the map grid "
                f"(share on it: {listing}); their totals cover only that share (column "
                "grid_fraction of the parcel table): clip the layer to the AOI or widen the AOI",
                code="partly_off_grid",
                values={
                    "where": where,
                    "partly": int(partly.size),
                    "n": len(polygons),
                    "listing": listing,
                },
            ),
            stacklevel=2,
        )


def _check_plots(path: Path, grid: GeoBox) -> None:
    """Plots on the model grid (the AOI's extent): refused when none is, warned for those off it."""
    try:
        plots = read_layer(path)
    except (DataSourceError, DataLayerError, ValueError) as err:
        raise InputDataError(
            f"{path} (sources.plot_locations): not a vector file ({err})"
        ) from None
    if plots.crs is None:
        raise InputDataError(f"{path} (sources.plot_locations): the layer has no CRS")
    on_grid = plots.to_crs(str(grid.crs)).intersects(shapely.box(*grid.boundingbox)).to_numpy()
    if not on_grid.any():
        raise InputDataError(
            f"{path} (sources.plot_locations): none of its {len(plots)} plots lies in the AOI's "
            "extent (config: aoi); check the plots' CRS label and that the AOI is the right one"
        )
    if not on_grid.all():
        off = np.flatnonzero(~on_grid)
        names = ", ".join(_feature(plots, int(i), "plot_id") for i in off[:10])
        warnings.warn(
            PipelineWarning(
                f"{path} (sources.plot_locations): {off.size} of {len(plots)} plots lie outside "
                f"the AOI's extent ({names}): they have no predictors and do not train the maps",
                code="plots_outside_aoi",
                values={"path": str(path), "off": int(off.size), "n": len(plots), "names": names},
            ),
            stacklevel=2,
        )


def _check_trees(path: Path, *, sheet: str | None) -> None:
    """The tree list read as the ``plots`` stage reads it (CSV or XLSX), with the columns
    it requires; species names translated to Latin are said (a warning: the bureau checks
    that 杉木 became the species it meant)."""
    from models.errors import PlotDataError
    from models.plot_biomass import require_tree_columns, species_translations
    from pipeline.io import TABLE_SUFFIXES, read_table

    if path.suffix.lower() not in TABLE_SUFFIXES:
        return
    trees = read_table(path, sheet=sheet)
    try:
        require_tree_columns(trees)
    except PlotDataError as err:
        raise InputDataError(
            f"{path} (sources.trees): {err}; its columns are {list(trees.columns)}"
        ) from None
    lines = species_translations(trees["species"])
    if lines:
        listing = "; ".join(lines.values())
        warnings.warn(
            PipelineWarning(
                f"{path} (sources.trees): {len(lines)} species name(s) read through "
                f"models/data/species_names.csv: {listing}",
                code="species_names_translated",
                values={"path": str(path), "n": len(lines), "listing": listing},
            ),
            stacklevel=2,
        )


def _check_lidar(config: Config, about: About) -> None:
    from pipeline.contracts import RunLayout
    from pipeline.lidar.index import index_tiles
    from pipeline.stages.lidar import check_tile_crs, lidar_inputs, refuse_skips

    inputs = lidar_inputs(config, RunLayout(Path(config.output_dir)))
    # the first flight's tiles and each repeat flight's (``repeat_tiles.<epoch>``)
    for name, tiles in inputs.items():
        if name == "aoi":
            continue
        assert isinstance(tiles, tuple)  # for mypy: the glob's matches
        with about(*tiles):
            index = index_tiles(list(tiles), assume_crs=config.sources.lidar_crs)
            check_tile_crs(index, config.crs)
            refuse_skips([t.error for t in index if t.status != "ok"], config.stages.lidar)


@dataclass(frozen=True)
class CheckWarning:
    """A warning of the checks and the input files it is about (the runner records it
    with the first stage that reads one of them, so it reaches the manifest and the
    report as that stage's warning)."""

    files: tuple[Path, ...]
    message: str
    #: its code and values, when it has them (:meth:`PipelineWarning.coded`)
    code: dict[str, Any] | None = None


def check_inputs(config: Config, stages: Sequence[str]) -> list[CheckWarning]:
    """Read and check the inputs that ``stages`` of ``config`` use (module docstring).

    Returns
    -------
    list of CheckWarning
        The warnings raised by the checks (e.g. a tree list read as GBK), in order, each
        with the files it is about.

    Raises
    ------
    ForestCarbonError
        The first problem found, naming the file, feature or setting.
    """
    found: list[CheckWarning] = []

    @contextmanager
    def about(*files: Path) -> Iterator[None]:
        """Keep the pipeline's warnings raised in the block, as about ``files``."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PipelineWarning)
            yield
        found.extend(
            CheckWarning(files, str(w.message), w.message.coded())
            for w in caught
            if isinstance(w.message, PipelineWarning)
        )

    _check(config, stages, about)
    return found


def _check(config: Config, stages: Sequence[str], about: About) -> None:
    s = config.sources
    repair = s.repair_geometry
    with about(config.aoi):
        aoi = read_polygons(config.aoi, setting="aoi", repair=repair)
    grid = region_geobox(aoi, crs=config.crs, resolution_m=config.resolution_m)
    layers = [(s.parcels, "sources.parcels"), (s.project_area, "sources.project_area")]
    for path, setting in layers:
        if path is None:
            continue
        with about(path):
            polygons = read_polygons(
                path,
                setting=setting,
                id_column="parcel_id",
                repair=repair,
                fields=layer_fields(s, path),
            )
            fractions = grid_fractions(polygons, grid=grid)
            where = f"{path} ({setting})"
            refuse_off_grid(fractions, polygons, where=where, id_column="parcel_id")
            warn_partly_off_grid(fractions, polygons, where=where, id_column="parcel_id")
    if s.plot_locations is not None and "plots" in stages:
        if not s.plot_locations.is_file():
            raise InputDataError(f"{s.plot_locations} (sources.plot_locations): file not found")
        with about(s.plot_locations):
            _check_plots(s.plot_locations, grid)
    if s.trees is not None and "plots" in stages:
        if not s.trees.is_file():
            raise InputDataError(f"{s.trees} (sources.trees): file not found")
        with about(s.trees):
            _check_trees(s.trees, sheet=s.trees_sheet)
    if "lidar" in stages:
        _check_lidar(config, about)
