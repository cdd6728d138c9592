"""Predictor features: raster stacks on the model grid and their values at plot squares.

A plot is a 0.0667 ha square (about 25.8 m on a side); on a 10 m grid it touches up to
16 cells, most of them only in part. Taking the centre pixel, or the plain mean of the
touched cells, mixes in vegetation outside the plot and shifts the predictor away from
the biomass it is paired with. Plot features are therefore *area-weighted* means: each
cell counts with the fraction of its area inside the plot square, as computed by
exactextract (Baston 2022, https://github.com/isciences/exactextract). Cells with no data
(NaN or the raster's nodata value) drop out and the weights of the others are rescaled;
``valid_fraction`` records the share of the plot area that had data.

Terrain aspect is circular (359 deg is next to 1 deg), so it enters the models as
northness ``cos(aspect)`` and eastness ``sin(aspect)`` computed per cell before any
averaging.

Used by the ``model`` stage (``forest-carbon fit``) and the ``predict`` stage
(``forest-carbon predict``); I/O-free: inputs are lazy ``xarray.DataArray`` objects
(dims ``band, y, x``) and a ``geopandas.GeoDataFrame`` of plot squares.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import dask.array
import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
from exactextract import exact_extract
from exactextract.raster import NumPyRasterSource

from pipeline.errors import InputDataError

#: composite bands that describe the data, not the forest (never predictors)
NON_PREDICTOR_BANDS = frozenset({"n_valid", "lidar_fraction", "density_pts_m2"})


def with_band_names(da: xr.DataArray, *, source: str) -> xr.DataArray:
    """``da`` with a ``band`` coordinate of band names.

    The runner gives rasters either with band names as the ``band`` coordinate, or with
    integer bands and the names in a ``long_name`` attribute (rioxarray's way); both are
    accepted.
    """
    if "band" not in da.dims:
        da = da.expand_dims(band=[str(da.name or "band_1")])
    names = da["band"].to_numpy()
    if names.dtype.kind in "UO":
        return da.assign_coords(band=[str(n) for n in names])
    long_name = da.attrs.get("long_name")
    if isinstance(long_name, str):
        long_name = (long_name,)
    if isinstance(long_name, (tuple, list)) and len(long_name) == da.sizes["band"]:
        return da.assign_coords(band=[str(n) for n in long_name])
    raise InputDataError(
        f"{source}: bands have no names (no string 'band' coordinate nor 'long_name' attribute "
        f"with {da.sizes['band']} entries); write the raster with band descriptions"
    )


def _masked(da: xr.DataArray) -> xr.DataArray:
    nodata = da.attrs.get("_FillValue", da.attrs.get("nodata"))
    da = da.astype(np.float32) if da.dtype.kind != "f" else da
    if nodata is not None and np.isfinite(nodata):
        da = da.where(da != nodata)
    return da


def terrain_features(terrain: xr.DataArray, *, source: str) -> xr.DataArray:
    """Elevation (m), slope (deg), northness and eastness (unitless) from ``terrain``
    (bands ``elevation``, ``slope_deg``, ``aspect_deg``; ``source`` names it in errors)."""
    terrain = _masked(with_band_names(terrain, source=source))
    names = list(terrain["band"].to_numpy())
    needed = {"elevation", "slope_deg", "aspect_deg"}
    if not needed <= set(names):
        raise InputDataError(f"{source}: bands {sorted(needed - set(names))} missing (has {names})")
    aspect_rad = terrain.sel(band="aspect_deg", drop=True) * (np.pi / 180.0)
    northness = xr.apply_ufunc(np.cos, aspect_rad, dask="allowed")
    eastness = xr.apply_ufunc(np.sin, aspect_rad, dask="allowed")
    parts = [
        terrain.sel(band=["elevation", "slope_deg"]),
        northness.expand_dims(band=["northness"]),
        eastness.expand_dims(band=["eastness"]),
    ]
    return xr.concat(parts, dim="band").astype(np.float32)


def predictor_stack(*layers: xr.DataArray, sources: Sequence[str]) -> xr.DataArray:
    """One float32 stack of the predictor bands of ``layers`` (data-quality bands left out)."""
    named = [_masked(with_band_names(da, source=s)) for da, s in zip(layers, sources, strict=True)]
    named = [
        da.sel(band=[b for b in da["band"].to_numpy() if b not in NON_PREDICTOR_BANDS])
        for da in named
    ]
    stack = concat_aligned(named, sources=sources)
    names = list(stack["band"].to_numpy())
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputDataError(f"band name(s) {dupes} appear in more than one of {list(sources)}")
    return stack.astype(np.float32)


def concat_aligned(layers: Sequence[xr.DataArray], *, sources: Sequence[str]) -> xr.DataArray:
    """Concatenate rasters along ``band`` after checking they share the model grid.

    Files written by different stages may carry coordinates that differ in the last
    bits; cells within a thousandth of a cell count as the same grid.
    """
    ref = layers[0]
    for da, src in zip(layers[1:], sources[1:], strict=False):
        same = da.sizes["y"] == ref.sizes["y"] and da.sizes["x"] == ref.sizes["x"]
        if same:
            tol = 1e-3 * abs(float(ref["x"][1] - ref["x"][0])) if ref.sizes["x"] > 1 else 1e-6
            same = np.allclose(da["x"], ref["x"], rtol=0.0, atol=tol) and np.allclose(
                da["y"], ref["y"], rtol=0.0, atol=tol
            )
        if not same:
            raise InputDataError(
                f"{src}: not on the model grid of {sources[0]} (shape or cell positions differ); "
                "write every raster on pipeline.grid.region_geobox"
            )
    aligned = [da.assign_coords(y=ref["y"], x=ref["x"]) for da in layers]
    return xr.concat(aligned, dim="band", join="exact", coords="minimal", compat="override")


def grid_extent(da: xr.DataArray) -> tuple[float, float, float, float, float, float]:
    """``(xmin, ymin, xmax, ymax, res_x, res_y)`` of a north-up grid from its cell centres."""
    x = da["x"].to_numpy()
    y = da["y"].to_numpy()
    if x.size < 2 or y.size < 2:
        raise InputDataError("raster needs at least 2 cells in x and in y")
    rx, ry = float(x[1] - x[0]), float(y[0] - y[1])
    if rx <= 0 or ry <= 0:
        raise InputDataError("raster must be north-up (x increasing, y decreasing)")
    return (
        float(x[0]) - rx / 2,
        float(y[-1]) - ry / 2,
        float(x[-1]) + rx / 2,
        float(y[0]) + ry / 2,
        rx,
        ry,
    )


def _crs_of(da: xr.DataArray) -> str | None:
    crs = getattr(getattr(da, "rio", None), "crs", None)
    if crs is not None:
        return str(crs)
    spatial_ref = da.coords.get("spatial_ref")
    if spatial_ref is not None and "crs_wkt" in spatial_ref.attrs:
        return str(spatial_ref.attrs["crs_wkt"])
    return None


def cell_weights(
    plots: gpd.GeoDataFrame, grid: xr.DataArray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per plot: rows, columns and fractional coverage of the grid cells it covers.

    The coverage of a cell is the fraction of the cell's area inside the plot polygon
    (exactextract's ``coverage`` with ``cell_id``); only the grid geometry is used, no
    pixel values are read.
    """
    xmin, ymin, xmax, ymax, _, _ = grid_extent(grid)
    ny, nx = grid.sizes["y"], grid.sizes["x"]
    crs = _crs_of(grid)
    if crs is not None and plots.crs is not None:
        plots = plots.to_crs(crs)
    # a broadcast view: exactextract needs a raster source but we only want geometry
    template = NumPyRasterSource(
        np.broadcast_to(np.zeros((1, 1), dtype=np.float32), (ny, nx)), xmin, ymin, xmax, ymax
    )
    table = exact_extract(
        template,
        plots[["geometry"]].reset_index(drop=True),
        ["cell_id", "coverage"],
        output="pandas",
    )
    out = []
    for ids, cov in zip(table["cell_id"], table["coverage"], strict=True):
        ids = np.asarray(ids, dtype=np.int64)
        out.append((ids // nx, ids % nx, np.asarray(cov, dtype=np.float64)))
    return out


def gather_cells(stack: xr.DataArray, rows: np.ndarray, cols: np.ndarray) -> xr.DataArray:
    """Lazy values of ``stack`` at cells ``(rows, cols)``: dims ``band, point``."""
    return stack.isel(
        y=xr.DataArray(np.asarray(rows, dtype=np.int64), dims="point"),
        x=xr.DataArray(np.asarray(cols, dtype=np.int64), dims="point"),
    )


def plot_features(
    stack: xr.DataArray, plots: gpd.GeoDataFrame, *, id_column: str = "plot_id"
) -> pd.DataFrame:
    """Area-weighted mean of every band of ``stack`` over each plot polygon.

    Parameters
    ----------
    stack
        Lazy raster stack (dims ``band, y, x``, ``band`` = names) on a north-up grid.
    plots
        Plot polygons with an ``id_column``.

    Returns
    -------
    pandas.DataFrame
        One row per plot: ``id_column``, ``x_m``/``y_m`` (polygon centroid in the grid
        CRS), one column per band, and ``valid_fraction`` (share of the plot's covered
        cell area with data in every band, 0-1).
    """
    if id_column not in plots.columns:
        raise InputDataError(
            f"plots.gpkg: column {id_column!r} missing (has {list(plots.columns)})"
        )
    crs = _crs_of(stack)
    if crs is not None and plots.crs is not None:
        plots = plots.to_crs(crs)
    weights = cell_weights(plots, stack)
    rows = np.concatenate([w[0] for w in weights]) if weights else np.empty(0, np.int64)
    cols = np.concatenate([w[1] for w in weights]) if weights else np.empty(0, np.int64)
    (values,) = dask.compute(gather_cells(stack, rows, cols).transpose("point", "band").data)
    values = np.asarray(values, dtype=np.float64)
    bands = [str(b) for b in stack["band"].to_numpy()]
    records = []
    start = 0
    for (r, _, w), pid in zip(weights, plots[id_column], strict=True):
        v = values[start : start + r.size]
        start += r.size
        ok = np.isfinite(v)
        wv = np.where(ok, w[:, None], 0.0)
        wsum = wv.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(wsum > 0, (wv * np.nan_to_num(v)).sum(axis=0) / wsum, np.nan)
        all_ok = ok.all(axis=1)
        total = w.sum()
        rec = {id_column: pid, **dict(zip(bands, mean, strict=True))}
        rec["valid_fraction"] = float(w[all_ok].sum() / total) if total > 0 else 0.0
        records.append(rec)
    table = pd.DataFrame.from_records(records, columns=[id_column, *bands, "valid_fraction"])
    centroids = plots.geometry.centroid
    table.insert(1, "x_m", centroids.x.to_numpy())
    table.insert(2, "y_m", centroids.y.to_numpy())
    return table


def _focal_mean_block(block: np.ndarray, *, size_px: int) -> np.ndarray:
    # explicit shifted sums rather than scipy's running-sum uniform_filter: the summation
    # order is then the same for every cell wherever the chunk borders fall, so maps are
    # bit-identical for any chunking
    half = size_px // 2
    valid = np.isfinite(block)
    pad = ((0, 0), (half, half), (half, half))
    values = np.pad(np.where(valid, block, 0.0).astype(np.float64), pad)
    weights = np.pad(valid.astype(np.float64), pad)
    ny, nx = block.shape[1:]
    total = np.zeros(block.shape, dtype=np.float64)
    count = np.zeros(block.shape, dtype=np.float64)
    for dy in range(size_px):
        for dx in range(size_px):
            total += values[:, dy : dy + ny, dx : dx + nx]
            count += weights[:, dy : dy + ny, dx : dx + nx]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    # a cell without data stays without data (no filling across edges of the data)
    return np.where(valid & (count > 0), out, np.nan).astype(block.dtype)


def support_window_px(plot_side_m: float, resolution_m: float) -> int:
    """Odd window side (cells) closest to a plot's side: the support of plot features."""
    n = max(1, round(plot_side_m / resolution_m))
    return n if n % 2 == 1 else n + 1


def focal_mean(stack: xr.DataArray, *, size_px: int) -> xr.DataArray:
    """NaN-aware moving-window mean over ``size_px`` x ``size_px`` cells, per band, lazily.

    Plot features are means over a plot square (about 3 x 3 cells of 10 m for a 0.0667 ha
    plot), so a model fitted on them describes AGB at that support. Predicting from
    single-cell predictors would feed it noisier inputs than it was trained and
    calibrated on (e.g. LiDAR metrics from a tenth of the returns); the map instead
    predicts, at every cell, the AGB of the plot-sized window centred on it, as
    area-based LiDAR inventories do with cells of plot size (Næsset 2002,
    doi:10.1016/S0034-4257(01)00290-5). Cells outside the raster or without data do not
    count; a cell without data stays without data.
    """
    if size_px <= 1:
        return stack
    half = size_px // 2
    data = stack.data
    if not isinstance(data, dask.array.Array):
        data = dask.array.from_array(data, chunks=(1, *data.shape[1:]))
    out = dask.array.map_overlap(
        _focal_mean_block,
        data,
        depth={0: 0, 1: half, 2: half},
        boundary=np.nan,
        dtype=stack.dtype,
        meta=np.empty((0, 0, 0), dtype=stack.dtype),
        size_px=size_px,
    )
    return stack.copy(data=out)


def _burn(
    parcels: gpd.GeoDataFrame,
    like: xr.DataArray,
    values: Sequence[int] | None = None,
    dtype: str = "uint8",
) -> np.ndarray:
    """Grid of ``like``: where a cell's centre lies in a parcel, that parcel's value of
    ``values`` (1 without ``values``), 0 elsewhere."""
    from rasterio.features import rasterize

    band = like.isel(band=0) if "band" in like.dims else like
    shape = (band.sizes["y"], band.sizes["x"])
    if not len(parcels):
        return np.zeros(shape, dtype=dtype)
    burn = [1] * len(parcels) if values is None else [int(v) for v in values]
    return rasterize(
        zip(parcels.to_crs(like.rio.crs).geometry, burn, strict=True),
        out_shape=shape,
        transform=like.rio.transform(recalc=True),
        fill=0,
        dtype=dtype,
    )


def parcel_index(parcels: gpd.GeoDataFrame, like: xr.DataArray) -> np.ndarray:
    """int32 grid of ``like``: 1 + the row number of the parcel each cell's centre lies
    in, 0 outside every parcel."""
    return _burn(parcels, like, values=range(1, len(parcels) + 1), dtype="int32")


def burn_values(
    parcels: gpd.GeoDataFrame, like: xr.DataArray, values: np.ndarray
) -> dask.array.Array:
    """float32 grid of ``like`` (lazy, chunked like it): where a cell's centre lies in a
    parcel, that parcel's entry of ``values`` (one per row of ``parcels``), 0 elsewhere."""
    index = parcel_index(parcels, like)
    table = np.concatenate([[0.0], np.asarray(values, dtype=np.float32)]).astype(np.float32)
    band = like.isel(band=0) if "band" in like.dims else like
    chunks = band.data.chunksize if isinstance(band.data, dask.array.Array) else index.shape
    return dask.array.from_array(index, chunks=chunks).map_blocks(
        lambda block: table[block], dtype=np.float32
    )


def forest_land_mask(
    parcels: gpd.GeoDataFrame,
    like: xr.DataArray,
    *,
    land_classes: tuple[str, ...],
    column: str = "land_class",
) -> xr.DataArray:
    """True where a pixel of ``like``'s grid has its centre in a forest-land parcel.

    A mask by pixel centre is what a forest/non-forest map is; the parcel sums themselves
    use fractional coverage (:mod:`pipeline.zonal`).
    """
    if column not in parcels.columns:
        raise InputDataError(
            f"parcels: no column {column!r} to tell forest land (values {list(land_classes)}); "
            "add it to the parcel layer or leave sources.parcels unset"
        )
    mask = _burn(parcels[parcels[column].isin(land_classes)], like)
    band = like.isel(band=0) if "band" in like.dims else like
    return xr.DataArray(mask.astype(bool), dims=("y", "x"), coords={"y": band.y, "x": band.x})


def _class_column(parcels: gpd.GeoDataFrame, column: str) -> pd.Series:
    if column not in parcels.columns:
        raise InputDataError(
            f"parcels: no column {column!r} (columns {list(parcels.columns)}); add it to the "
            "parcel layer or set model.parcel_class_column to another column or to null"
        )
    return parcels[column]


def parcel_classes(parcels: gpd.GeoDataFrame, *, column: str) -> list[str]:
    """The sorted classes of the parcel attribute ``column`` (see :func:`class_layers`)."""
    return sorted(str(v) for v in _class_column(parcels, column).dropna().unique())


def class_layers(
    parcels: gpd.GeoDataFrame, like: xr.DataArray, *, column: str, classes: Sequence[str]
) -> xr.DataArray:
    """One 0/1 band per class of the parcel attribute ``column``, named ``column:class``:
    1 where a cell's centre lies in a parcel of that class.

    Averaged over a plot square or the plot-sized window like every predictor, a band
    becomes the share of that area in the class: this is how the bureau's
    sub-compartment map (forest type or dominant species of every parcel) enters the
    models. A class the layer no longer has gives an all-zero band.
    """
    values = _class_column(parcels, column).astype(str)
    band = like.isel(band=0) if "band" in like.dims else like
    # one byte per cell in memory (class number, 0 = none; parcels do not overlap), the
    # float bands are made lazily from it chunk by chunk
    if len(classes) > np.iinfo(np.uint8).max:
        raise InputDataError(
            f"parcels: column {column!r} has {len(classes)} classes, more than 255; use a "
            "coarser class column for model.parcel_class_column"
        )
    code = {c: k for k, c in enumerate(classes, start=1)}
    known = values.isin(code)
    codes = _burn(parcels[known], like, values=values[known].map(code).tolist())
    chunks = band.data.chunksize if isinstance(band.data, dask.array.Array) else codes.shape
    lazy = dask.array.from_array(codes, chunks=chunks)
    data = dask.array.stack([lazy == k for k in range(1, len(classes) + 1)]).astype(np.float32)
    return xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": [f"{column}:{c}" for c in classes], "y": band.y, "x": band.x},
    )
