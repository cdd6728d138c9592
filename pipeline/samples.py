"""Predictor tables of the ``model`` stage: at the plots, and at samples of grid cells.

The rasters' side of the model fit (xarray in, pandas out; the science that uses the
tables is in :mod:`models.biomass` and :mod:`models.landuse`):

- the plot table: per plot and epoch, the field AGB next to the satellite predictors
  (composite, terrain, parcel classes) and, at the LiDAR epoch, the LiDAR metrics, all
  area-weighted over the plot square (:func:`pipeline.features.plot_features`);
- systematic samples of cells (:func:`models.biomass.thinned_sample`) with their
  predictors at plot support: the LiDAR-model map sample that can train the satellite
  model, and the parcels' cells that train and apply the land-use classifier;
- the LiDAR cover (:func:`lidar_cover`);
- which monitoring plots the map errors are measured at (:func:`monitoring_plots`);
- the predictor stack of an epoch that the ``predict`` stage maps, cell by cell, and the
  parcels stage's error model predicts on inside the LiDAR cover (:func:`epoch_stack`),
  with every epoch's forest-land mask (:func:`predictor_stacks`; the ``model`` stage
  samples the same stacks for its fold maps), and a block of it as a table of cells
  (:func:`block_table`).

I/O-free like :mod:`pipeline.features`; only :func:`sampled_cells` and the cover
computations compute Dask arrays, at the size of a sample or of the LiDAR cover.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr

from models.biomass import BiomassMapper, thinned_sample
from pipeline.contracts import (
    LIDAR_METRICS_RELPATH,
    MODELS_RELPATH,
    PLOT_BIOMASS_RELPATH,
    PROJECT_SAMPLE,
    TERRAIN_RELPATH,
    composite_relpath,
    composites_by_epoch,
    lidar_by_epoch,
    open_raster,
)
from pipeline.errors import InputDataError
from pipeline.features import (
    class_layers,
    concat_aligned,
    focal_mean,
    forest_land_mask,
    gather_cells,
    grid_extent,
    parcel_classes,
    parcel_index,
    plot_features,
    predictor_stack,
    support_window_px,
    terrain_features,
    with_band_names,
)
from pipeline.subcompartment import SURVEY_FIELDS, has_record, inventory_layer

#: name of the forest-land mask band added to the predictor stack
FOREST_BAND = "forest_land"


def satellite_stacks(
    composites: Mapping[str, xr.DataArray],
    terrain: xr.DataArray,
    parcels: gpd.GeoDataFrame | None,
    *,
    class_column: str | None,
    inventory: bool = False,
) -> tuple[dict[str, xr.DataArray], dict[str, xr.DataArray], dict[str, Any] | None]:
    """Per epoch the spectral predictors (composite and terrain) and the satellite
    predictors, and the record of the parcel layers among them (``None``: none).

    Given a parcel layer, the satellite predictors add the share of each class of its
    ``class_column`` (:func:`pipeline.features.class_layers`) and, with ``inventory`` and
    a layer that carries the sub-compartment record, the record's AGB density
    (:func:`pipeline.subcompartment.inventory_layer`).
    """
    spectral = {
        e: predictor_stack(comp, terrain, sources=(composite_relpath(e), TERRAIN_RELPATH))
        for e, comp in composites.items()
    }
    spec: dict[str, Any] = {
        "column": class_column,
        "classes": [] if parcels is None or class_column is None
        else parcel_classes(parcels, column=class_column),
        "inventory": inventory and has_record(parcels),
    }  # fmt: skip
    layers = parcel_layers(spec, parcels, terrain)
    if layers is None:
        return spectral, spectral, None
    stacks = {
        e: concat_aligned([st, layers], sources=(composite_relpath(e), "parcels"))
        for e, st in spectral.items()
    }
    return spectral, stacks, spec


def parcel_layers(
    spec: Mapping[str, Any], parcels: gpd.GeoDataFrame | None, like: xr.DataArray
) -> xr.DataArray | None:
    """The parcel-layer predictor bands ``spec`` asks for (``column`` and ``classes``:
    class shares; ``inventory``: the sub-compartment record's AGB density), on the grid
    of ``like``; ``None`` when it asks for none."""
    layers = []
    if spec.get("column") is not None and parcels is not None:
        layers.append(class_layers(parcels, like, column=spec["column"], classes=spec["classes"]))
    if spec.get("inventory") and parcels is not None:
        layers.append(inventory_layer(parcels, like))
    if not layers:
        return None
    return xr.concat(layers, dim="band") if len(layers) > 1 else layers[0]


def lidar_predictors(lidar: xr.DataArray, features: Sequence[str]) -> list[str]:
    """The LiDAR metrics that are predictors: ``features``, or when empty every ``h_*``
    and ``cover*`` band.

    Raises
    ------
    InputDataError
        A band of ``features`` is missing.
    """
    names = [str(b) for b in lidar["band"].to_numpy()]
    if features:
        missing = [f for f in features if f not in names]
        if missing:
            raise InputDataError(
                f"model.lidar_features {missing} not in {LIDAR_METRICS_RELPATH} ({names})"
            )
        return list(features)
    return [n for n in names if n.startswith("h_") or n.startswith("cover")]


def plot_table(
    biomass: pd.DataFrame,
    sat_stacks: Mapping[str, xr.DataArray],
    plot_locations: gpd.GeoDataFrame,
    *,
    lidar: Mapping[str, xr.DataArray] | None = None,
    lidar_features: Sequence[str] = (),
) -> pd.DataFrame:
    """Field AGB and predictors per plot and epoch (epochs: ``sat_stacks``' keys).

    The satellite features' ``valid_fraction`` becomes ``sat_valid_fraction``; the LiDAR
    metrics ``lidar_features`` of each epoch with a flight (``lidar``: metrics by epoch,
    :func:`pipeline.contracts.lidar_by_epoch`) are joined at that epoch, with the share of
    the plot that flight covers as ``lidar_flight_fraction`` (the LiDAR model's training
    plots) and the share every epoch's flight covers as ``lidar_fraction``
    (:func:`joint_cover`: where the maps take the LiDAR model).

    Raises
    ------
    InputDataError
        ``lidar`` lacks ``lidar_fraction``, or no plot matches the plot squares.
    """
    tables = []
    for e, stack in sat_stacks.items():
        t = plot_features(stack, plot_locations).rename(
            columns={"valid_fraction": "sat_valid_fraction"}
        )
        tables.append(t.assign(epoch=e))
    feats = pd.concat(tables, ignore_index=True)
    flights = []
    for epoch, metrics in (lidar or {}).items():
        if "lidar_fraction" not in metrics["band"].to_numpy():
            raise InputDataError(f"LiDAR metrics of {epoch}: band 'lidar_fraction' missing")
        lt = plot_features(metrics.sel(band=[*lidar_features, "lidar_fraction"]), plot_locations)
        flights.append(lt.drop(columns=["x_m", "y_m", "valid_fraction"]).assign(epoch=epoch))
    if flights:
        own = pd.concat(flights).rename(columns={"lidar_fraction": "lidar_flight_fraction"})
        feats = feats.merge(own, on=["plot_id", "epoch"], how="left")
        every = (
            own.pivot(index="plot_id", columns="epoch", values="lidar_flight_fraction")
            .reindex(columns=list(sat_stacks))
            .fillna(0.0)
            .min(axis=1)
        )
        feats["lidar_fraction"] = feats["plot_id"].map(every).fillna(0.0).to_numpy()
    keep_cols = [
        c for c in ("plot_id", "epoch", "agb_mg_ha", "agb_sd_mg_ha") if c in biomass.columns
    ]
    table = biomass.loc[:, keep_cols].merge(feats, on=["plot_id", "epoch"], how="inner")
    if table.empty:
        raise InputDataError(
            f"no plot of {PLOT_BIOMASS_RELPATH} matches plots.gpkg and the epochs "
            f"{list(sat_stacks)} (check plot_id and epoch values)"
        )
    return table


def whole_in_frame(plots: gpd.GeoDataFrame, design: gpd.GeoDataFrame | None) -> np.ndarray:
    """Whether each plot's square lies wholly inside its stratum's sampling frame.

    A sample laid out with the buffer method (centres drawn over the frame dilated by the
    square; :mod:`pipeline.stages.estimate`) tallies, in a square that straddles the
    frame's edge, only the trees inside the frame, so its value is not the AGB of its
    square: half of it on average, where the stand beyond the edge is another parcel's.
    The estimators compare such a plot with the map inside the frame only; a comparison
    of a plot with a prediction or map value over its whole square (the SD calibration,
    the map errors at plots) must leave it out. A plot whose sample and stratum the design
    does not list, or any plot without a design or without ``sample`` and ``stratum``
    columns, counts as whole. Tolerance: a millionth of the square's area.
    """
    whole = np.ones(len(plots), dtype=bool)
    if design is None or not {"sample", "stratum"} <= set(plots.columns):
        return whole
    frames = design.to_crs(plots.crs) if plots.crs is not None else design
    squares = plots.geometry.to_numpy()
    keys = plots["sample"].astype(str) + "\0" + plots["stratum"].astype(str)
    for a, b, frame in zip(frames["sample"], frames["stratum"], frames.geometry, strict=True):
        at = np.flatnonzero((keys == f"{a}\0{b}").to_numpy())
        if at.size == 0 or frame is None:
            continue
        shapely.prepare(frame)
        inside = shapely.covers(frame, squares[at])
        # squares not covered exactly: whole if all but a sliver of their area is inside
        rest = at[~inside]
        outside = shapely.area(shapely.difference(squares[rest], frame))
        whole[rest] = outside <= 1e-6 * shapely.area(squares[rest])
    return whole


def monitoring_plots(
    plots: gpd.GeoDataFrame, design: gpd.GeoDataFrame | None
) -> tuple[np.ndarray, np.ndarray]:
    """Two masks over ``plots``: the carbon project's monitoring plots (``sample ==
    "project"``; none without a ``sample`` column), and those of them the maps' errors are
    measured at, whose square lies wholly inside its frame (:func:`whole_in_frame`)."""
    if "sample" not in plots.columns:
        none = np.zeros(len(plots), dtype=bool)
        return none, none
    monitoring = (plots["sample"] == PROJECT_SAMPLE).to_numpy()
    return monitoring, monitoring & whole_in_frame(plots, design)


def plot_support_px(plots: gpd.GeoDataFrame, grid: xr.DataArray) -> int:
    """Window (cells) of the plots' support: median plot side over the grid resolution."""
    _, _, _, _, res_x, _ = grid_extent(grid)
    crs = grid.rio.crs if hasattr(grid, "rio") else None
    areas = (plots.to_crs(crs) if crs is not None and plots.crs is not None else plots).area
    return support_window_px(float(np.sqrt(np.median(areas))), res_x)


def lazy_lidar_cover(lidar: xr.DataArray, *, min_fraction: float) -> da.Array:
    """Cells inside the LiDAR cover (``lidar_fraction >= min_fraction``), lazily."""
    frac = da.asarray(lidar.sel(band="lidar_fraction").data).astype(np.float64)
    return da.nan_to_num(frac) >= min_fraction


def lidar_cover(lidar: xr.DataArray, *, min_fraction: float) -> np.ndarray:
    """Cells inside the LiDAR cover (:func:`lazy_lidar_cover`), computed."""
    (cover,) = dask.compute(lazy_lidar_cover(lidar, min_fraction=min_fraction))
    return np.asarray(cover)


def sampled_cells(stack: xr.DataArray, rows: np.ndarray, cols: np.ndarray) -> pd.DataFrame:
    """Values of ``stack`` at cells ``(rows, cols)``, a column per band, with the cells'
    ``x_m`` and ``y_m``."""
    (vals,) = dask.compute(gather_cells(stack, rows, cols).transpose("point", "band").data)
    names = [str(b) for b in stack["band"].to_numpy()]
    table = pd.DataFrame(np.asarray(vals, dtype=np.float64), columns=names)
    table["x_m"] = stack["x"].to_numpy()[cols]
    table["y_m"] = stack["y"].to_numpy()[rows]
    return table


def _step_px(grid: xr.DataArray, spacing_m: float) -> int:
    """Cells between the samples of a systematic grid of ``spacing_m`` metres."""
    _, _, _, _, res_x, _ = grid_extent(grid)
    return max(1, round(spacing_m / res_x))


def upscaling_cells(
    lidar: xr.DataArray,
    cover: np.ndarray,
    sat_stack: xr.DataArray,
    lidar_features: Sequence[str],
    *,
    spacing_m: float,
    max_samples: int,
    seed: int,
    support_px: int,
) -> tuple[pd.DataFrame, float]:
    """LiDAR and satellite predictors at a thinned sample of the LiDAR cover's cells, at
    plot support (moving-window means, as in ``predict``), and the sample's spacing (m)."""
    step = _step_px(lidar, spacing_m)
    rows, cols = thinned_sample(cover, step_px=step, max_samples=max_samples, seed=seed)
    both = concat_aligned(
        [lidar.sel(band=list(lidar_features)), sat_stack],
        sources=(LIDAR_METRICS_RELPATH, "satellite predictors"),
    )
    _, _, _, _, res_x, _ = grid_extent(lidar)
    return sampled_cells(focal_mean(both, size_px=support_px), rows, cols), step * res_x


def land_use_cells(
    parcels: gpd.GeoDataFrame,
    stacks: Mapping[str, xr.DataArray],
    *,
    ref: str,
    forest_land_classes: Sequence[str],
    spacing_m: float,
    max_samples: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, Callable[[str], pd.DataFrame]]:
    """Cell samples of the land-use classifier, each cell with its ``parcel`` (row).

    Returns the training cells of the forest-land and of the other parcels at ``ref``
    (the parcel layer's epoch; at most ``max_samples`` each), and a function giving, for
    an epoch, every forest-land parcel's cells on the full systematic grid. ``stacks``
    hold the predictors at plot support per epoch.
    """
    grid = stacks[ref]
    index = parcel_index(parcels, grid)
    row_of = np.arange(len(parcels))
    is_forest = parcels["land_class"].isin(forest_land_classes).to_numpy()
    forest = np.isin(index, 1 + row_of[is_forest])
    other = np.isin(index, 1 + row_of[~is_forest])
    step = _step_px(grid, spacing_m)

    def cells(mask: np.ndarray, stack: xr.DataArray, seed: int, cap: int) -> pd.DataFrame:
        rows, cols = thinned_sample(mask, step_px=step, max_samples=cap, seed=seed)
        table = sampled_cells(stack, rows, cols)
        table["parcel"] = index[rows, cols] - 1
        return table

    def at_epoch(epoch: str) -> pd.DataFrame:
        return cells(forest, stacks[epoch], seed + 2, int(forest.sum()))

    return (
        cells(forest, grid, seed, max_samples),
        cells(other, grid, seed + 1, max_samples),
        at_epoch,
    )


def epoch_stack(
    composite: xr.DataArray,
    terrain: xr.DataArray,
    lidar: xr.DataArray | None,
    *,
    epoch: str,
    support_px: int,
    forest: xr.DataArray | None = None,
    classes: xr.DataArray | None = None,
) -> xr.DataArray:
    """Predictor stack of one epoch at plot support, + ``lidar_fraction``, ``n_valid`` and
    the forest-land mask (band :data:`FOREST_BAND`, when ``forest`` is given).

    Predictors (composite bands and indices, terrain, the parcel-class layers of
    :func:`pipeline.features.class_layers` when given, LiDAR metrics) are averaged over
    the plot-sized window of each cell (:func:`pipeline.features.focal_mean`); the
    data-quality bands and the mask are kept per cell. One chunk along ``band``.
    """
    comp_source = composite_relpath(epoch)
    comp = with_band_names(composite, source=comp_source)
    layers = [comp, terrain]
    sources = [comp_source, TERRAIN_RELPATH]
    if classes is not None:
        layers.append(classes)
        sources.append("parcels (classes)")
    if lidar is not None:
        layers.append(lidar)
        sources.append(LIDAR_METRICS_RELPATH)
    parts = [focal_mean(predictor_stack(*layers, sources=sources), size_px=support_px)]
    part_sources = [comp_source]
    if lidar is not None:
        parts.append(lidar.sel(band=["lidar_fraction"]).astype(np.float32))
        part_sources.append(LIDAR_METRICS_RELPATH)
    if "n_valid" in comp["band"].to_numpy():
        parts.append(comp.sel(band=["n_valid"]).astype(np.float32))
        part_sources.append(comp_source)
    if forest is not None:
        parts.append(forest.astype(np.float32).expand_dims(band=[FOREST_BAND]))
        part_sources.append("parcels (forest land)")
    stack = concat_aligned(parts, sources=part_sources)
    return stack.chunk({"band": -1})


def bundle_class_layers(
    bundle: Mapping[str, Any], parcels: gpd.GeoDataFrame | None, terrain: xr.DataArray
) -> xr.DataArray | None:
    """The parcel-layer predictor bands (:func:`parcel_layers`) the fitted models of
    ``bundle`` (``models.pkl``, :func:`pipeline.contracts.load_models`) use, on the grid
    of ``terrain``; ``None`` when they use none.

    Raises
    ------
    InputDataError
        The models use the parcel layer and ``parcels`` is ``None``, or lacks the
        sub-compartment record they were fitted with.
    """
    spec = bundle.get("parcel_classes")
    if spec is None:
        return None
    if parcels is None:
        raise InputDataError(
            f"{MODELS_RELPATH}: the models use the parcel layer's attributes as predictors; "
            "give the parcel layer (sources.parcels, or --parcels)"
        )
    if spec.get("inventory") and not has_record(parcels):
        raise InputDataError(
            f"{MODELS_RELPATH}: the models use the sub-compartment record "
            f"({', '.join(SURVEY_FIELDS)}) as a predictor and the parcel layer lacks it; "
            "give the layer the models were fitted with, or rerun the model stage"
        )
    return parcel_layers(spec, parcels, terrain)


def block_table(block: np.ndarray, *, names: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """One block's cells as a table (one row per cell, columns ``names``), emptied where
    :data:`FOREST_BAND` is 0 or negative, and the cells of land not yet forest (negative)."""
    nb = block.shape[0]
    table = pd.DataFrame(block.reshape(nb, -1).T.astype(np.float64), columns=list(names))
    baseline = np.zeros(len(table), dtype=bool)
    if FOREST_BAND in table.columns:
        baseline = (table[FOREST_BAND] < 0).to_numpy()
        table.loc[table[FOREST_BAND] <= 0, [n for n in names if n != FOREST_BAND]] = np.nan
    return table, baseline


def joint_cover(
    lidars: Mapping[str, xr.DataArray], epochs: Sequence[str]
) -> dict[str, xr.DataArray]:
    """The flights' metrics for the maps: each with its ``lidar_fraction`` replaced by the
    share of the cell that every epoch's flight covers (the least of their fractions), or
    none at all when an epoch of the run has no flight.

    The maps take the LiDAR model at a cell only where every epoch was flown, so that a
    cell's change always comes from one model: a change from the LiDAR model at one epoch
    and the satellite model at the other holds the difference of their biases (time-series
    consistency, IPCC 2006 Guidelines Vol. 1 Ch. 5; docs/lidar.md gives the demo's figures).
    """
    if not lidars or any(e not in lidars for e in epochs):
        return {}
    fractions = [lidars[e].sel(band="lidar_fraction").drop_vars("band") for e in epochs]
    every = xr.concat(fractions, dim="flight").min(dim="flight", skipna=False)
    out = {}
    for e in epochs:
        m = lidars[e]
        rest = m.sel(band=[b for b in m["band"].to_numpy() if b != "lidar_fraction"])
        out[e] = xr.concat([rest, every.expand_dims(band=["lidar_fraction"])], dim="band")
    return out


def predictor_stacks(
    bundle: Mapping[str, Any],
    *,
    composites: Mapping[str, Any] | Sequence[Any],
    terrain: xr.DataArray | Path,
    lidar_metrics: xr.DataArray | Path | None,
    parcels: gpd.GeoDataFrame | None,
    epochs: Sequence[str],
    forest_land_classes: tuple[str, ...],
    lidar_repeat: Mapping[str, xr.DataArray | Path] | None = None,
) -> dict[str, xr.DataArray]:
    """Per epoch, the lazy predictor stack (:func:`pipeline.samples.epoch_stack`) the maps
    of the models of ``bundle`` (``models.pkl``) are predicted from, with the forest-land
    mask of that epoch; the ``model`` stage samples the same stacks for its fold maps."""
    mapper: BiomassMapper = bundle["mapper"]
    comps = composites_by_epoch(composites, epochs)
    terr = terrain_features(open_raster(terrain), source=TERRAIN_RELPATH)
    lidars: dict[str, xr.DataArray] = {}
    if lidar_metrics is not None and mapper.lidar is not None:
        repeat = {e: m for e, m in (lidar_repeat or {}).items() if e in mapper.lidar_epochs}
        lidars = joint_cover(
            lidar_by_epoch(lidar_metrics, repeat, epochs=epochs, lidar_epoch=mapper.lidar_epoch),
            epochs,
        )
    # one grid for every epoch: the mask is rasterised once, and again for an epoch at
    # which some forest-land parcels were not forest yet (the model stage's judgement)
    forest = (
        None
        if parcels is None
        else forest_land_mask(parcels, terr, land_classes=forest_land_classes)
    )
    non_forest: Mapping[str, Sequence[str]] = bundle.get("non_forest_parcels") or {}
    classes = bundle_class_layers(bundle, parcels, terr)
    stacks = {}
    for e in epochs:
        forest_e = forest
        if forest is not None and parcels is not None and non_forest.get(e):
            not_yet = parcels[parcels["parcel_id"].astype(str).isin(non_forest[e])]
            not_yet_mask = forest_land_mask(not_yet, terr, land_classes=forest_land_classes)
            # 1 forest land, 0 not forest land, -1 forest land not yet forest at this epoch
            forest_e = forest.astype(np.int8) - 2 * (forest & not_yet_mask).astype(np.int8)
        stacks[e] = epoch_stack(
            comps[e],
            terr,
            lidars.get(e),
            epoch=e,
            support_px=bundle["support_px"],
            forest=forest_e,
            classes=classes,
        )
    return stacks
