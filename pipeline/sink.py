"""Per-pixel carbon sink by stock difference, with its propagated uncertainty.

Science
-------
The annual sink of a pixel between two epochs is the stock-difference estimate

    sink = (C2 - C1) / (t2 - t1)                      [Mg C ha-1 yr-1]

with ``C1``, ``C2`` the carbon densities (AGB + BGB, Mg C/ha) of the two epochs and
``t2 - t1`` the time between the epochs' reference dates (``Epoch.reference``) in years.
Its variance follows from first-order error propagation of a difference,

    Var(C2 - C1) = s1^2 + s2^2 - 2 rho s1 s2,         sd_sink = sqrt(Var) / (t2 - t1)

where ``s1``, ``s2`` are the per-pixel standard deviations and ``rho`` the correlation of
the two epochs' errors (``SinkParams.epoch_error_correlation``). Both maps come from the
same model fitted to the same kind of predictors, so their errors are positively
correlated (0 <= rho <= 1), which makes the true sink SD *smaller* than at rho = 0. By
default rho is estimated from the held-out residuals of the plots measured at both
epochs (:func:`models.biomass.epoch_error_correlation`, resolved by
:func:`pipeline.contracts.resolve_correlation`); rho = 0 gives the largest
(conservative) sink SD, as CDM AR-TOOL14 v04.2, eq. 2, which treats the two stock
estimates as independent.

A pixel's sink is masked (NaN) where either epoch has no carbon estimate (not forest, or
outside the maps) or a quality flag below ``SinkParams.min_quality``. The quality flag is
band ``good`` of the predict stage's ``rasters/quality_<epoch>.tif`` (1 where the
relative SD is below ``PredictParams.good_relative_error``), or a single-band flag.

The SDs are those of the maps' support (band ``carbon_sd_support`` of the predict
stage's SD rasters, :func:`support_sd_band`): the within-window variation that a single
cell's SD adds belongs to the same trees at both epochs, so it largely cancels in the
difference, while the window estimate's error is what the two maps' errors share.

CO2 equivalents use the molar-mass ratio of CO2 to C, 44/12 (IPCC convention; the value
and its source are in ``models/data/defaults.yaml``).

The "forest carbon index" is one multi-band COG in the spirit of the GEDI L4B gridded
product: carbon density and its (support) SD at the last epoch, the annual sink and its SD, and a
quality flag (2 = stock and sink valid, 1 = stock valid but the sink is masked, 0 = no
valid estimate).

Everything is element-wise xarray arithmetic, so Dask-backed inputs stay lazy; the runner
computes while writing. Run with ``forest-carbon run --region nanping --stages sink`` or,
on explicit files, ``forest-carbon sink --carbon A.tif B.tif ... --out DIR``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import xarray as xr

from models.allometry import co2_per_c
from pipeline.errors import InputDataError

#: days in a Julian year, the year used for annual rates between two dates
DAYS_PER_YEAR = 365.25


def decimal_year(d: dt.date) -> float:
    """A date as a decimal year, at the middle of its day (2019-07-02 -> 2019.4986)."""
    start = dt.date(d.year, 1, 1)
    days = (dt.date(d.year + 1, 1, 1) - start).days
    return d.year + ((d - start).days + 0.5) / days


def years_between(start: dt.date, end: dt.date) -> float:
    """Time between two reference dates in (Julian) years."""
    years = (end - start).days / DAYS_PER_YEAR
    if years <= 0:
        raise InputDataError(
            f"the end epoch's reference date ({end}) is not after the start's ({start}); "
            "check stages.sink.epochs and the epochs' reference_date in the region config"
        )
    return years


def as_band(da: xr.DataArray, *, name: str) -> xr.DataArray:
    """A single-band raster as float32 ``(y, x)`` with its nodata value replaced by NaN."""
    if "band" in da.dims:
        if da.sizes["band"] != 1:
            raise InputDataError(f"{name}: expected a single-band raster, got {da.sizes['band']}")
        da = da.isel(band=0, drop=True)
    elif "band" in da.coords:  # a band picked by name keeps its name as a scalar coordinate
        da = da.drop_vars("band")
    nodata = da.attrs.get("_FillValue", da.attrs.get("nodata"))
    out = da.astype(np.float32)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        out = out.where(da != nodata)
    out.attrs = {}
    return out


def named_band(raster: xr.DataArray | xr.Dataset, name: str, *, source: str) -> xr.DataArray:
    """The band called ``name`` of a multi-band raster (runner-loaded DataArray or Dataset)."""
    if isinstance(raster, xr.Dataset):
        if name in raster.data_vars:
            return raster[name]
        bands = list(raster.data_vars)
    else:
        bands = [str(b) for b in raster.coords["band"].values] if "band" in raster.coords else []
        if name in bands:
            return raster.sel(band=name)
    raise InputDataError(f"{source}: no band named '{name}' (bands: {bands})")


#: band of the predict stage's quality raster that flags a good estimate (1) or not (0)
QUALITY_BAND = "good"


#: band of the predict stage's carbon SD raster with the window estimate's own error
SUPPORT_SD_BAND = "carbon_sd_support"


def _band_or_only(raster: xr.DataArray, band: str, *, name: str) -> xr.DataArray:
    if "band" in raster.dims and raster.sizes["band"] > 1:
        return as_band(named_band(raster, band, source=name), name=name)
    return as_band(raster, name=name)


def quality_band(quality: xr.DataArray, *, name: str) -> xr.DataArray:
    """The good-quality flag: band ``good`` of a multi-band quality raster, or its only band."""
    return _band_or_only(quality, QUALITY_BAND, name=name)


#: band of the predict stage's quality raster with the clear observations of a cell (0: a
#: forest-land cell no scene saw clear, so it has no value; negative: no value wanted)
N_VALID_BAND = "n_valid"


def observed_band(quality: xr.DataArray | xr.Dataset) -> xr.DataArray | None:
    """Band ``n_valid`` of a multi-band quality raster, or None (a single-band quality
    raster does not say which cells should have had a value)."""
    try:
        return as_band(named_band(quality, N_VALID_BAND, source="quality"), name="n_valid")
    except InputDataError:
        return None


def support_sd_band(carbon_sd: xr.DataArray, *, name: str) -> xr.DataArray:
    """The carbon SD to sum over areas and difference over epochs: band
    ``carbon_sd_support`` of the predict stage's SD raster (the error of the plot-sized
    window estimate, shared by neighbouring cells and by the epochs; see
    :mod:`pipeline.stages.predict`), or the only band of a single-band SD raster."""
    return _band_or_only(carbon_sd, SUPPORT_SD_BAND, name=name)


def _check_same_grid(arrays: dict[str, xr.DataArray], files: dict[str, str | None]) -> None:
    """The maps share one grid, or an error naming the two (and their files, if read)."""

    def named(name: str) -> str:
        return f"{name} ({files[name]})" if files.get(name) else name

    ref_name, ref = next(iter(arrays.items()))
    for name, da in arrays.items():
        if da.shape != ref.shape or not (
            np.allclose(da["x"].values, ref["x"].values)
            and np.allclose(da["y"].values, ref["y"].values)
        ):
            raise InputDataError(
                f"{named(name)} is not on the same grid as {named(ref_name)} ({da.shape} vs "
                f"{ref.shape}); all maps must be on the region's model grid "
                "(pipeline.grid.region_geobox)"
            )


def stock_change_sink(
    carbon_start: xr.DataArray,
    carbon_end: xr.DataArray,
    carbon_sd_start: xr.DataArray,
    carbon_sd_end: xr.DataArray,
    quality_start: xr.DataArray,
    quality_end: xr.DataArray,
    *,
    years: float,
    epoch_error_correlation: float,
    min_quality: int,
) -> xr.Dataset:
    """Annual stock-change sink per pixel and its standard deviation.

    Parameters
    ----------
    carbon_start, carbon_end
        Carbon density of the two epochs, Mg C/ha (AGB + BGB), NaN or nodata = no estimate.
    carbon_sd_start, carbon_sd_end
        Their per-pixel standard deviations, Mg C/ha.
    quality_start, quality_end
        Per-pixel quality flags of the two epochs (higher is better).
    years
        Time between the epochs' reference dates, years.
    epoch_error_correlation
        Correlation rho of the two epochs' errors (see the module docstring).
    min_quality
        Pixels with a quality flag below this in either epoch are masked.

    Returns
    -------
    xarray.Dataset
        ``sink_mg_c_ha_yr``, ``sink_sd_mg_c_ha_yr``, ``sink_tco2e_ha_yr``,
        ``sink_sd_tco2e_ha_yr`` (float32, NaN where masked).
    """
    if years <= 0:
        raise InputDataError(f"the time between epochs must be positive, got {years} years")
    rho = float(epoch_error_correlation)
    if not -1 <= rho <= 1:
        raise InputDataError(f"epoch_error_correlation must lie in [-1, 1], got {rho}")
    arrays = {
        "carbon (start epoch)": as_band(carbon_start, name="carbon (start epoch)"),
        "carbon (end epoch)": as_band(carbon_end, name="carbon (end epoch)"),
        "carbon SD (start epoch)": support_sd_band(carbon_sd_start, name="carbon SD (start epoch)"),
        "carbon SD (end epoch)": support_sd_band(carbon_sd_end, name="carbon SD (end epoch)"),
        "quality (start epoch)": quality_band(quality_start, name="quality (start epoch)"),
        "quality (end epoch)": quality_band(quality_end, name="quality (end epoch)"),
    }
    read = (carbon_start, carbon_end, carbon_sd_start, carbon_sd_end, quality_start, quality_end)
    # rasters read from files carry their path (xarray's encoding["source"])
    _check_same_grid(
        arrays, {k: da.encoding.get("source") for k, da in zip(arrays, read, strict=True)}
    )
    c1, c2, s1, s2, q1, q2 = arrays.values()
    valid = (
        c1.notnull()
        & c2.notnull()
        & s1.notnull()
        & s2.notnull()
        & (q1 >= min_quality)
        & (q2 >= min_quality)
    )
    variance = s1 * s1 + s2 * s2 - 2.0 * rho * s1 * s2
    # rounding can make a perfectly correlated difference of equal SDs slightly negative
    sd_diff = variance.clip(min=0.0) ** 0.5
    sink = ((c2 - c1) / years).where(valid).astype(np.float32)
    sink_sd = (sd_diff / years).where(valid).astype(np.float32)
    co2 = np.float32(co2_per_c())
    ds = xr.Dataset(
        {
            "sink_mg_c_ha_yr": sink,
            "sink_sd_mg_c_ha_yr": sink_sd,
            "sink_tco2e_ha_yr": (sink * co2).astype(np.float32),
            "sink_sd_tco2e_ha_yr": (sink_sd * co2).astype(np.float32),
        }
    )
    units = {
        "sink_mg_c_ha_yr": "Mg C ha-1 yr-1",
        "sink_sd_mg_c_ha_yr": "Mg C ha-1 yr-1",
        "sink_tco2e_ha_yr": "t CO2e ha-1 yr-1",
        "sink_sd_tco2e_ha_yr": "t CO2e ha-1 yr-1",
    }
    for name, unit in units.items():
        ds[name].attrs = {"units": unit, "_FillValue": np.float32(np.nan)}
    ds.attrs = {
        "years": years,
        "epoch_error_correlation": rho,
        "min_quality": min_quality,
    }
    _copy_spatial_ref(carbon_end, ds)
    return ds


def forest_carbon_index(
    carbon_end: xr.DataArray,
    carbon_sd_end: xr.DataArray,
    quality_end: xr.DataArray,
    sink: xr.Dataset,
    *,
    min_quality: int,
) -> xr.Dataset:
    """The multi-band forest carbon index (GEDI L4B-like gridded product).

    Returns
    -------
    xarray.Dataset
        ``carbon_mg_c_ha``, ``carbon_sd_mg_c_ha`` (end epoch), ``sink_mg_c_ha_yr``,
        ``sink_sd_mg_c_ha_yr`` and ``quality_flag`` (2 = stock and sink valid, 1 = stock
        valid but sink masked, 0 = no valid estimate), all float32.
    """
    c2 = as_band(carbon_end, name="carbon (end epoch)")
    s2 = support_sd_band(carbon_sd_end, name="carbon SD (end epoch)")
    q2 = quality_band(quality_end, name="quality (end epoch)")
    stock_ok = c2.notnull() & s2.notnull() & (q2 >= min_quality)
    sink_ok = sink["sink_mg_c_ha_yr"].notnull()
    flag = xr.where(sink_ok, 2, xr.where(stock_ok, 1, 0)).astype(np.float32)
    ds = xr.Dataset(
        {
            "carbon_mg_c_ha": c2.where(stock_ok).astype(np.float32),
            "carbon_sd_mg_c_ha": s2.where(stock_ok).astype(np.float32),
            "sink_mg_c_ha_yr": sink["sink_mg_c_ha_yr"],
            "sink_sd_mg_c_ha_yr": sink["sink_sd_mg_c_ha_yr"],
            "quality_flag": flag,
        }
    )
    units = {
        "carbon_mg_c_ha": "Mg C ha-1",
        "carbon_sd_mg_c_ha": "Mg C ha-1",
        "sink_mg_c_ha_yr": "Mg C ha-1 yr-1",
        "sink_sd_mg_c_ha_yr": "Mg C ha-1 yr-1",
        "quality_flag": "2 = stock and sink valid, 1 = stock only, 0 = none",
    }
    for name, unit in units.items():
        ds[name].attrs = {"units": unit, "_FillValue": np.float32(np.nan)}
    # CF flag attributes: the writer keeps flag bands out of averaged overviews
    ds["quality_flag"].attrs.update(
        flag_values=[0, 1, 2], flag_meanings="no_estimate stock_only stock_and_sink"
    )
    _copy_spatial_ref(carbon_end, ds)
    return ds


def _copy_spatial_ref(template: xr.DataArray, ds: xr.Dataset) -> None:
    """Carry the CRS of the inputs (rioxarray keeps it in a ``spatial_ref`` coordinate)."""
    if "spatial_ref" in template.coords and "spatial_ref" not in ds.coords:
        ds.coords["spatial_ref"] = template.coords["spatial_ref"]
