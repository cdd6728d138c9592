"""Stage ``predict``: wall-to-wall AGB, carbon and CO2e maps with per-pixel uncertainty.

Per epoch, the fitted :class:`~models.biomass.BiomassMapper` from the ``model`` stage is
applied lazily, chunk by chunk (``dask.array.map_blocks`` with ``meta=``, graph layers
named by ``tokenize`` so reruns hit the same keys): the LiDAR model where every epoch's
LiDAR flight (the first, ``sources.lidar_tiles``, and the repeats, ``sources.lidar_repeat``)
covers the cell (:func:`pipeline.samples.joint_cover`: a cell's change comes from one
model), the satellite model elsewhere, and where a cell lacks one of the
satellite model's predictors (its season was clear only in Landsat scenes, which have no
red edge nor B08) the common-band satellite model (``model_source`` 6, see
:class:`~models.biomass.BiomassMapper`). With a parcel layer, only cells whose
centre lies in a forest-land parcel (``PredictParams.forest_land_classes``) get values:
the models know forest plots only. At an epoch before the parcel layer's date, parcels
the ``model`` stage judged not yet forest (``non_forest_parcels`` of ``models.pkl``, see
:mod:`models.landuse`: afforestation) hold the baseline vegetation stock, taken as zero
with zero SD (``model_source`` 5), so that their growth counts in the sink instead of
dropping out with "no value"; a measured pre-project stock would belong here instead.
Carbon is ``AGB * (1 + R) * CF`` and CO2e is ``carbon * (CO2/C)``, with ``R``
(root-to-shoot), ``CF`` (carbon fraction) and ``CO2/C`` taken from ``models.pkl``
(ratio estimators of the plots stage's table, see
:func:`models.plot_biomass.conversion_factors`); the SDs scale by the same factors (the
factors' own uncertainty is not propagated).

Two supports of uncertainty. Each cell's value is the AGB of the plot-sized window
centred on it (:func:`pipeline.features.focal_mean`), the support the models are
calibrated at. The first band of each SD and interval raster is for the cell itself: it
adds the within-window variation of the stand (``BiomassMapper.cell_support``, estimated
from the plots' stem granularity in the ``model`` stage), so a 10 m cell's 90 % interval
covers the AGB of that cell. The ``*_support`` bands are the window estimate's own
error: that error is shared by neighbouring cells and by both epochs, the within-window
variation is not (it averages out over areas and largely persists between epochs), so
sums over parcels and
the sink use the ``*_support`` bands (:func:`pipeline.sink.support_sd_band`), and so does
the quality flag.

Signature::

    predict(job: PredictJob, *, models: Path | bytes,
            composites: Mapping[epoch, DataArray] | Sequence[DataArray],
            terrain: DataArray, lidar_metrics: DataArray | None = None,
            lidar_repeat: Mapping[epoch, DataArray] | None = None,
            parcels: GeoDataFrame | None = None)
    -> {"rasters/agb_<epoch>.tif": DataArray (Mg/ha),
        "rasters/agb_sd_<epoch>.tif": DataArray, bands agb_sd, agb_sd_support (Mg/ha),
        "rasters/agb_interval_<epoch>.tif": DataArray, bands agb_lower, agb_upper,
            agb_lower_support, agb_upper_support (Mg/ha),
        "rasters/carbon_<epoch>.tif" (Mg C/ha),
        "rasters/carbon_sd_<epoch>.tif": bands carbon_sd, carbon_sd_support (Mg C/ha),
        "rasters/co2e_<epoch>.tif" (t CO2e/ha),
        "rasters/quality_<epoch>.tif": int16 bands model_source (0 none, 1 LiDAR model,
            2 satellite model upscaled from LiDAR, 3 satellite model from plots,
            4 satellite model from both, 5 baseline stock of land not yet forest,
            6 common-band satellite model),
            n_valid (clear observations in the composite, -1 unknown),
            good (1 if support SD/AGB < good_relative_error),
        "rasters/coverage.json": dict, per epoch the forest-land cells (all cells without
            a parcel layer) by model_source, with shares}

Nothing is left out silently: the stage counts, per epoch, the forest-land cells each
model maps and those left without a value (no clear observation by either sensor, or a
predictor missing for every model), writes them to ``rasters/coverage.json`` (the report
shows them) and warns (the CLI prints it) when any cell took the common-band model or has
no value. The count decides by the predictors alone
(:meth:`~models.biomass.BiomassMapper.sources`), so it costs one pass over the predictor
stacks, not a second prediction.

All maps are lazy DataArrays (dims ``band, y, x``) with the CRS written. Command:
``forest-carbon predict`` (see :mod:`pipeline.commands.predict`).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as darr
import geopandas as gpd
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor used to write the CRS)
import xarray as xr
from dask.base import tokenize

from models.biomass import (
    SOURCE_BASELINE,
    SOURCE_NAMES,
    SOURCE_NONE,
    SOURCE_SATELLITE_COMMON,
    BiomassMapper,
)
from models.plot_biomass import carbon_per_agb
from pipeline.config import Config, PredictParams
from pipeline.contracts import (
    MAP_COVERAGE_RELPATH,
    MODELS_RELPATH,
    RunLayout,
    load_models,
    map_relpath,
    predictor_inputs,
)
from pipeline.errors import PipelineWarning
from pipeline.samples import FOREST_BAND, block_table, predictor_stacks
from pipeline.stage import Stage

#: float layers produced per block, in order
FLOAT_LAYERS = (
    "agb",
    "agb_sd",
    "agb_sd_support",
    "agb_lower",
    "agb_upper",
    "agb_lower_support",
    "agb_upper_support",
    "carbon",
    "carbon_sd",
    "carbon_sd_support",
    "co2e",
)
#: int layers, after the float ones
INT_LAYERS = ("model_source", "n_valid", "good")
#: position of each layer in a block of :func:`predict_block`
LAYER_INDEX = {n: i for i, n in enumerate((*FLOAT_LAYERS, *INT_LAYERS))}
INT_NODATA = -1


@dataclass(frozen=True)
class PredictJob:
    """What the ``predict`` stage needs from the config."""

    params: PredictParams
    epochs: tuple[str, ...]
    seed: int
    crs: str


def source_block(
    block: np.ndarray, *, names: Sequence[str], mapper: BiomassMapper, epoch: str
) -> np.ndarray:
    """The ``model_source`` code each cell of a block gets (``(ny, nx)`` int8), by the
    predictors alone; :data:`INT_NODATA` outside forest land (where no value is wanted)."""
    _, ny, nx = block.shape
    table, baseline = block_table(block, names=names)
    code = mapper.sources(table, epoch=epoch).astype(np.int8)
    code[baseline] = SOURCE_BASELINE
    if FOREST_BAND in table.columns:
        code[(table[FOREST_BAND] == 0).to_numpy()] = INT_NODATA
    return code.reshape(ny, nx)


def map_coverage(stack: xr.DataArray, *, mapper: BiomassMapper, epoch: str) -> dict[str, Any]:
    """Cells of forest land (all cells without a :data:`FOREST_BAND`) by ``model_source``.

    Computes, here in the stage, one pass over the predictor stack (no model is applied):
    the stage reports the counts before the runner writes the maps.
    """
    import dask

    names = [str(b) for b in stack["band"].to_numpy()]
    data = stack.data if isinstance(stack.data, darr.Array) else darr.from_array(stack.data)
    data = data.rechunk({0: -1})
    codes = darr.map_blocks(
        source_block,
        data,
        drop_axis=0,
        dtype=np.int8,
        meta=np.empty((0, 0), dtype=np.int8),
        name=f"map-sources-{tokenize(data, names, epoch, pickle.dumps(mapper))}",
        names=names,
        mapper=mapper,
        epoch=epoch,
    )
    counts = dask.compute(*[(codes == c).sum() for c in SOURCE_NAMES])
    by_code = {c: int(n) for c, n in zip(SOURCE_NAMES, counts, strict=True)}
    cells = sum(by_code.values())
    return {
        "cells": cells,
        "cells_are": "forest land" if FOREST_BAND in names else "all cells",
        "by_model_source": {
            str(c): {"name": SOURCE_NAMES[c], "cells": n, "share": n / cells if cells else None}
            for c, n in by_code.items()
        },
    }


def warn_coverage(epoch: str, coverage: Mapping[str, Any]) -> None:
    """Warn (:func:`predict`) of one epoch's :func:`map_coverage` when a cell took the
    common-band model or has no value."""
    by = coverage["by_model_source"]
    common, none = by[str(SOURCE_SATELLITE_COMMON)], by[str(SOURCE_NONE)]
    if not common["cells"] and not none["cells"]:
        return
    cells, n_common, n_none = (
        f"{n:,}" for n in (coverage["cells"], common["cells"], none["cells"])
    )
    common_share, none_share = f"{common['share']:.1%}", f"{none['share']:.1%}"
    warnings.warn(
        PipelineWarning(
            f"predict: epoch {epoch}: of {cells} {coverage['cells_are']} cells, {n_common} "
            f"({common_share}) lack a Sentinel-2-only band (seen clear only by Landsat) and are "
            f"mapped by the common-band model (model_source {SOURCE_SATELLITE_COMMON}); "
            f"{n_none} ({none_share}) have no value (no clear observation, or a predictor "
            f"missing; model_source {SOURCE_NONE}). See {MAP_COVERAGE_RELPATH}.",
            code="map_cells_fallback_or_empty",
            values={
                "epoch": epoch,
                "cells": cells,
                "common": n_common,
                "common_share": common_share,
                "none": n_none,
                "none_share": none_share,
                "coverage": MAP_COVERAGE_RELPATH,
            },
        ),
        stacklevel=3,
    )


def predict_block(
    block: np.ndarray,
    *,
    names: Sequence[str],
    mapper: BiomassMapper,
    epoch: str,
    conversion: Mapping[str, float],
    good_relative_error: float,
) -> np.ndarray:
    """Maps of one block: ``(n_bands, ny, nx)`` predictors -> ``(n_layers, ny, nx)`` float32.

    ``names`` are the band names of ``block`` (predictors, optionally ``lidar_fraction``,
    ``n_valid`` and ``forest_land``: 0 where no value is wanted, negative on land not yet
    forest at this epoch, which gets the baseline stock zero). Layers:
    :data:`FLOAT_LAYERS` then :data:`INT_LAYERS` (as floats).
    """
    _, ny, nx = block.shape
    table, baseline = block_table(block, names=names)
    pred, source = mapper.predict(table, epoch=epoch)
    cell = pred if mapper.cell_support is None else mapper.cell_support.widen(pred)
    factor_c = carbon_per_agb(conversion)
    carbon = pred.mean * factor_c
    with np.errstate(invalid="ignore", divide="ignore"):
        good = np.where(
            np.isfinite(pred.mean),
            (pred.sd < good_relative_error * pred.mean).astype(np.float64),
            INT_NODATA,
        )
    n_valid = (
        table["n_valid"].to_numpy() if "n_valid" in table.columns else np.full(len(table), np.nan)
    )
    n_valid = np.where(np.isfinite(n_valid), n_valid, INT_NODATA)
    layers = [
        pred.mean,
        cell.sd,
        pred.sd,
        cell.lower,
        cell.upper,
        pred.lower,
        pred.upper,
        carbon,
        cell.sd * factor_c,
        pred.sd * factor_c,
        carbon * conversion["co2e_per_c"],
        source.astype(np.float64),
        n_valid,
        good,
    ]
    out = np.stack(layers)
    out[: len(FLOAT_LAYERS), baseline] = 0.0
    out[LAYER_INDEX["model_source"], baseline] = SOURCE_BASELINE
    out[LAYER_INDEX["good"], baseline] = 1.0  # an exact zero: "good"
    return out.reshape(len(layers), ny, nx).astype(np.float32)


def predict(
    job: PredictJob,
    *,
    models: Path | bytes,
    composites: Mapping[str, Any] | Sequence[Any],
    terrain: xr.DataArray | Path,
    lidar_metrics: xr.DataArray | Path | None = None,
    lidar_repeat: Mapping[str, xr.DataArray | Path] | None = None,
    parcels: gpd.GeoDataFrame | None = None,
) -> dict[str, Any]:
    """Lazy wall-to-wall maps for every epoch and their coverage record (see the module
    docstring)."""
    bundle = load_models(models)
    mapper: BiomassMapper = bundle["mapper"]
    conversion = bundle["conversion"]
    stacks = predictor_stacks(
        bundle, composites=composites, terrain=terrain, lidar_metrics=lidar_metrics,
        lidar_repeat=lidar_repeat, parcels=parcels, epochs=job.epochs,
        forest_land_classes=job.params.forest_land_classes,
    )  # fmt: skip
    out: dict[str, Any] = {}
    coverage: dict[str, dict[str, Any]] = {}
    for e, stack in stacks.items():
        maps = predict_maps(
            stack, mapper=mapper, epoch=e, conversion=conversion, params=job.params, crs=job.crs
        )
        out.update({map_relpath(k, e): v for k, v in maps.items()})
        coverage[e] = map_coverage(stack, mapper=mapper, epoch=e)
        warn_coverage(e, coverage[e])
    out[MAP_COVERAGE_RELPATH] = {
        "epochs": coverage,
        "model_source": {str(c): n for c, n in SOURCE_NAMES.items()},
    }
    return out


def predict_maps(
    stack: xr.DataArray,
    *,
    mapper: BiomassMapper,
    epoch: str,
    conversion: Mapping[str, float],
    params: PredictParams,
    crs: str,
) -> dict[str, xr.DataArray]:
    """Lazy maps of one epoch from its predictor stack, keyed by map name."""
    names = [str(b) for b in stack["band"].to_numpy()]
    data = stack.data if isinstance(stack.data, darr.Array) else darr.from_array(stack.data)
    data = data.rechunk({0: -1})
    n_layers = len(FLOAT_LAYERS) + len(INT_LAYERS)
    kwargs = {
        "names": names,
        "mapper": mapper,
        "epoch": epoch,
        "conversion": dict(conversion),
        "good_relative_error": params.good_relative_error,
    }
    token = tokenize(
        data, names, epoch, kwargs["conversion"], params.good_relative_error, pickle.dumps(mapper)
    )
    result = darr.map_blocks(
        predict_block,
        data,
        chunks=((n_layers,), *data.chunks[1:]),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name=f"predict-biomass-{token}",
        **kwargs,
    )
    coords = {"y": stack["y"], "x": stack["x"]}

    def make(bands: Sequence[str], *, units: str, dtype: Any, nodata: float) -> xr.DataArray:
        arr = result[[LAYER_INDEX[b] for b in bands]]
        if np.dtype(dtype).kind == "i":
            arr = darr.where(darr.isnan(arr), nodata, arr).astype(dtype)
        da = xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": list(bands), **coords})
        da.attrs.update({"units": units, "_FillValue": nodata})
        return da.rio.write_crs(crs)

    nan = float("nan")
    return {
        "agb": make(["agb"], units="Mg/ha", dtype=np.float32, nodata=nan),
        "agb_sd": make(["agb_sd", "agb_sd_support"], units="Mg/ha", dtype=np.float32, nodata=nan),
        "agb_interval": make(
            ["agb_lower", "agb_upper", "agb_lower_support", "agb_upper_support"],
            units="Mg/ha",
            dtype=np.float32,
            nodata=nan,
        ),
        "carbon": make(["carbon"], units="Mg C/ha", dtype=np.float32, nodata=nan),
        "carbon_sd": make(
            ["carbon_sd", "carbon_sd_support"], units="Mg C/ha", dtype=np.float32, nodata=nan
        ),
        "co2e": make(["co2e"], units="t CO2e/ha", dtype=np.float32, nodata=nan),
        "quality": make(list(INT_LAYERS), units="1", dtype=np.int16, nodata=INT_NODATA),
    }


def predict_job(config: Config) -> PredictJob:
    """The stage's frozen parameters from a run config."""
    return PredictJob(
        params=config.stages.predict,
        epochs=tuple(e.name for e in config.epochs),
        seed=config.seed,
        crs=config.crs,
    )


def predict_inputs(config: Config, layout: RunLayout) -> dict[str, Path | tuple[Path, ...]]:
    """Files the stage reads: the fitted models and the predictor rasters."""
    inputs: dict[str, Path | tuple[Path, ...]] = {
        "models": layout.path(MODELS_RELPATH),
        **predictor_inputs(config, layout),
    }
    if config.sources.parcels is not None:
        inputs["parcels"] = config.sources.parcels
    return inputs


STAGE = Stage(name="predict", func=predict, params=predict_job, inputs=predict_inputs)
