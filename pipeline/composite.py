"""Seasonal surface-reflectance composites and terrain on the model grid.

The science, per scene (STAC item) and then per season:

1. **Load** the item's reflectance and mask assets with odc-stac onto the region's model
   grid (:func:`pipeline.grid.region_geobox`) as Dask arrays (lazy, chunked).
2. **DN to reflectance** with the provider's convention (:func:`pipeline.catalog.radiometry`):
   Sentinel-2 ``DN * 1e-4`` and, from processing baseline 04.00 on, ``- 0.1`` unless the
   provider already removed the offset (Earth Search v1 flag); Landsat C2 L2
   ``DN * 0.0000275 - 0.2``. DN 0 is no data.
3. **Mask** clouds, shadows, cirrus, snow and no data: Sentinel-2 SCL classes or Landsat
   QA_PIXEL bits (``data_catalog/collections/*.yaml``); cloud and shadow masks grow by
   ``cloud_dilation_px`` pixels (a disk), since cloud edges and thin shadows escape both
   classifiers.
4. **Harmonise** Landsat to Sentinel-2 MSI: OLI with NASA HLS bandpass coefficients
   (published as MSI to OLI; we apply the inverse); ETM+ (Landsat 7) and TM (Landsat 4/5)
   first to OLI with Roy et al. (2016)'s coefficients, since HLS harmonises OLI only
   (``data_catalog/collections/landsat-c2-l2.yaml``; the instrument from the item's
   ``platform``).
5. **Median** per band over the season's valid observations (``nanmedian`` per pixel,
   chunked in space, one chunk in time: never the whole stack in memory), the count of
   valid observations ``n_valid``, and indices NDVI, EVI, NBR, NDMI, NDRE
   (``data_catalog/indices.yaml``) from the median bands. The NIR indices use the narrow
   NIR that HLS harmonises across both sensors (B8A / OLI B5), so they exist wherever
   either sensor saw the ground; red edge, B08 and NDRE are Sentinel-2 only
   (:func:`single_sensor_bands`).

A QA check on each scene's dark objects (low percentile of clear blue reflectance)
catches wrong provider offset flags, reported for some 2022 and 2025 Earth Search scenes.

Terrain: elevation (bilinear onto the model grid), slope and aspect by Horn's (1981)
finite-difference method, computed here with ``map_overlap`` because no library in the
lock (xarray-spatial and richdem are not in it) does it on Dask arrays.

References: Horn, B.K.P. (1981) Hill shading and the reflectance map, Proc. IEEE 69:14,
doi:10.1109/PROC.1981.11918. Claverie et al. (2018) The Harmonized Landsat and
Sentinel-2 surface reflectance data set, Remote Sens. Environ. 219:145,
doi:10.1016/j.rse.2018.09.002.

Command: ``forest-carbon composite ITEMS.json --aoi AOI --crs EPSG:32650 --out DIR``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np
import pystac
import rioxarray  # noqa: F401  (registers the .rio accessor the writer reads the CRS from)
import xarray as xr
from dask.base import tokenize
from odc.geo.geobox import GeoBox
from scipy import ndimage

from pipeline import catalog
from pipeline.config import CompositeParams
from pipeline.errors import CatalogError, InputDataError, PipelineWarning, ScienceDomainError

REFLECTANCE_BANDS: tuple[str, ...] = (
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "swir16",
    "swir22",
)
INDEX_NAMES: tuple[str, ...] = ("ndvi", "evi", "nbr", "ndmi", "ndre")
COMPOSITE_BANDS: tuple[str, ...] = (*REFLECTANCE_BANDS, *INDEX_NAMES, "n_valid")
TERRAIN_BANDS: tuple[str, ...] = ("elevation", "slope_deg", "aspect_deg")


@dataclass(frozen=True)
class CompositeSettings:
    """Resolved options of one composite (from :class:`pipeline.config.CompositeParams`)."""

    cloud_dilation_px: int
    harmonise_landsat: bool
    harmonise_to: Literal["sentinel-2a", "sentinel-2b"]
    resampling: str
    chunk_px: int
    #: provider convention for items that do not reveal theirs (catalogs.yaml default)
    default_provider: str | None

    @classmethod
    def from_params(
        cls, params: CompositeParams, *, chunk_px: int, default_provider: str | None
    ) -> CompositeSettings:
        """The settings of a ``stages.composite`` section, in chunks of ``chunk_px``."""
        return cls(
            cloud_dilation_px=params.cloud_dilation_px,
            harmonise_landsat=params.harmonise_landsat,
            harmonise_to=params.harmonise_to,
            resampling=params.resampling,
            chunk_px=chunk_px,
            default_provider=default_provider,
        )


# --------------------------------------------------------------------------- pure kernels


def dn_to_reflectance(dn: np.ndarray, *, scale: float, offset: float, nodata_dn: int) -> np.ndarray:
    """Reflectance (unitless, float32) from DN; ``nodata_dn`` becomes NaN."""
    refl = dn.astype("float32") * np.float32(scale) + np.float32(offset)
    return np.where(dn != nodata_dn, refl, np.float32(np.nan)).astype("float32")


def scl_invalid(scl: Any, classes: Sequence[int]) -> Any:
    """True where an SCL class is one of ``classes``."""
    return np.isin(scl, np.asarray(classes, dtype=np.int64))


def qa_bits_set(qa: Any, bits: Sequence[int]) -> Any:
    """True where any of the QA_PIXEL ``bits`` is set."""
    mask_value = sum(1 << int(b) for b in bits)
    return (np.asarray(qa).astype(np.int64) & mask_value) != 0


def disk(radius_px: int) -> np.ndarray:
    """A disk structuring element of ``radius_px`` (Euclidean)."""
    r = int(radius_px)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r


def dilate(mask: da.Array, radius_px: int) -> da.Array:
    """Binary dilation of a Dask boolean array by a disk, seamless across chunks."""
    if radius_px <= 0:
        return mask
    structure = disk(radius_px)

    def _block(block: np.ndarray) -> np.ndarray:
        return ndimage.binary_dilation(block, structure=structure)

    return da.map_overlap(
        _block, mask, depth=radius_px, boundary=False, dtype=bool, meta=np.array((), dtype=bool)
    )


def harmonisation_coefficients(target: str) -> dict[str, tuple[float, float]]:
    """HLS bandpass coefficients (slope, offset), published MSI to OLI, for ``target``."""
    table = catalog.collection_profile("landsat-c2-l2")["harmonisation"]
    if table.get("direction") != "msi_to_oli":
        raise ScienceDomainError("landsat-c2-l2.yaml: harmonisation.direction must be msi_to_oli")
    return {b: (float(c["slope"]), float(c["offset"])) for b, c in table[target].items()}


def landsat_sensor(item: pystac.Item) -> str:
    """The instrument (``oli``, ``etm+`` or ``tm``) of a Landsat item, from its STAC
    ``platform`` and the profile's ``sensors`` table."""
    sensors = catalog.collection_profile("landsat-c2-l2")["sensors"]
    platform = str(item.properties.get("platform", "")).lower().replace("_", "-")
    if platform not in sensors:
        raise CatalogError(
            f"item {item.id!r}: platform {item.properties.get('platform')!r} is not a Landsat "
            f"platform of data_catalog/collections/landsat-c2-l2.yaml (sensors: "
            f"{', '.join(sorted(sensors))}); fix the item's properties.platform"
        )
    return str(sensors[platform])


def etm_to_oli_coefficients(sensor: str) -> dict[str, tuple[float, float]]:
    """Roy et al. (2016) ETM+ to OLI coefficients (slope, offset) for a TM or ETM+ item's
    bands (``oli = slope * etm + offset``); empty for OLI."""
    table = catalog.collection_profile("landsat-c2-l2")["etm_to_oli"]
    if sensor not in table["applies_to"]:
        return {}
    return {b: (float(c["slope"]), float(c["offset"])) for b, c in table["bands"].items()}


def harmonised_bands() -> frozenset[str]:
    """Reflectance bands both sensors deliver on one scale: the bands of the Landsat
    profile's HLS harmonisation table (``data_catalog/collections/landsat-c2-l2.yaml``)."""
    table = catalog.collection_profile("landsat-c2-l2")["harmonisation"]
    targets = [v for v in table.values() if isinstance(v, Mapping)]
    return frozenset(str(b) for t in targets for b in t)


def index_inputs() -> dict[str, frozenset[str]]:
    """The reflectance bands each index of ``data_catalog/indices.yaml`` is computed from."""
    spec = catalog.index_definitions()
    out = {
        name: frozenset((nd["a"], nd["b"])) for name, nd in spec["normalised_difference"].items()
    }
    e = spec["evi"]
    out["evi"] = frozenset((e["nir"], e["red"], e["blue"]))
    return out


def single_sensor_bands() -> tuple[str, ...]:
    """Composite bands that only Sentinel-2 observes: its reflectance bands HLS does not
    harmonise with Landsat (red edge, the broad NIR B08) and the indices computed from one
    of them. Where a season's only clear views are Landsat's, these bands are NaN."""
    common = harmonised_bands()
    inputs = index_inputs()
    return tuple(
        b
        for b in (*REFLECTANCE_BANDS, *INDEX_NAMES)
        if (b in REFLECTANCE_BANDS and b not in common) or (b in inputs and not inputs[b] <= common)
    )


def etm_to_oli(etm: Any, *, slope: float, offset: float) -> Any:
    """Roy et al. (2016)'s ``oli = slope * etm + offset``: the OLI-equivalent reflectance."""
    return etm * np.float32(slope) + np.float32(offset)


def landsat_to_sentinel2(oli: Any, *, slope: float, offset: float) -> Any:
    """Invert HLS's ``oli = slope * msi + offset``: the MSI-equivalent reflectance."""
    return (oli - np.float32(offset)) / np.float32(slope)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float32, NaN where ``den`` is 0 (no divide warnings)."""
    # the error state has to be set where the blocks compute, not where the graph is built
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / den, np.nan).astype("float32")


def _nd_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _ratio(a - b, a + b)


def _evi_kernel(
    nir: np.ndarray,
    red: np.ndarray,
    blue: np.ndarray,
    *,
    gain: float,
    c1: float,
    c2: float,
    canopy_l: float,
) -> np.ndarray:
    return _ratio(gain * (nir - red), nir + c1 * red - c2 * blue + canopy_l)


def normalised_difference(a: Any, b: Any) -> Any:
    """``(a - b) / (a + b)``; NaN where ``a + b`` is 0 (lazy on Dask-backed arrays)."""
    return xr.apply_ufunc(_nd_kernel, a, b, dask="parallelized", output_dtypes=[np.float32])


def indices(bands: Mapping[str, xr.DataArray]) -> dict[str, xr.DataArray]:
    """NDVI, NBR, NDMI, NDRE, EVI from median reflectance (``data_catalog/indices.yaml``)."""
    spec = catalog.index_definitions()
    out: dict[str, xr.DataArray] = {}
    for name, nd in spec["normalised_difference"].items():
        out[name] = normalised_difference(bands[nd["a"]], bands[nd["b"]]).astype("float32")
    e = spec["evi"]
    out["evi"] = xr.apply_ufunc(
        _evi_kernel,
        bands[e["nir"]],
        bands[e["red"]],
        bands[e["blue"]],
        kwargs={"gain": e["G"], "c1": e["C1"], "c2": e["C2"], "canopy_l": e["L"]},
        dask="parallelized",
        output_dtypes=[np.float32],
    ).astype("float32")
    return {k: out[k] for k in INDEX_NAMES}


def horn_slope_aspect(
    elevation_m: np.ndarray, *, dx_m: float, dy_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect (degrees) by Horn (1981) on a north-up grid.

    ``elevation_m`` rows run north to south. Aspect is the direction the slope faces,
    clockwise from north (0 north, 90 east); NaN on flat cells and where a neighbour is
    NaN (e.g. the grid edge when padded with NaN).
    """
    z = np.asarray(elevation_m, dtype="float64")
    p = np.pad(z, 1, mode="constant", constant_values=np.nan)
    a, b, c = p[:-2, :-2], p[:-2, 1:-1], p[:-2, 2:]
    d, f = p[1:-1, :-2], p[1:-1, 2:]
    g, h, i = p[2:, :-2], p[2:, 1:-1], p[2:, 2:]
    dz_east = ((c + 2 * f + i) - (a + 2 * d + g)) / (8.0 * dx_m)
    dz_north = ((a + 2 * b + c) - (g + 2 * h + i)) / (8.0 * dy_m)
    grad = np.hypot(dz_east, dz_north)
    slope = np.degrees(np.arctan(grad))
    aspect = np.mod(np.degrees(np.arctan2(-dz_east, -dz_north)), 360.0)
    aspect = np.where(grad > 0, aspect, np.nan)
    return slope.astype("float32"), aspect.astype("float32")


# --------------------------------------------------------------------------- loading


def _load(
    items: Sequence[pystac.Item],
    assets: Sequence[str],
    geobox: GeoBox,
    *,
    settings: CompositeSettings,
    resampling: Mapping[str, str],
    groupby: str = "time",
) -> xr.Dataset:
    import odc.stac

    return odc.stac.load(
        # signed here, just before reading, so the frozen items never hold expiring tokens
        catalog.readable_items(items, default_provider=settings.default_provider),
        bands=list(assets),
        geobox=geobox,
        chunks={"x": settings.chunk_px, "y": settings.chunk_px},
        resampling=dict(resampling),
        groupby=groupby,
        fail_on_error=True,
    )


def _empty(geobox: GeoBox, chunk_px: int) -> da.Array:
    ny, nx = geobox.shape
    return da.full((ny, nx), np.nan, dtype="float32", chunks=(chunk_px, chunk_px))


@dataclass(frozen=True)
class Scene:
    """One item's lazy reflectance on the model grid, masked, and how it was scaled."""

    item_id: str
    collection: str
    bands: dict[str, da.Array]
    radiometry: catalog.Radiometry
    #: the chain of scales the reflectance went through, e.g. ``etm+>oli>msi``; empty when
    #: the scene was not harmonised (Sentinel-2, or ``harmonise_landsat: false``)
    harmonised: str
    #: the reflectance bands read from the item (the others in ``bands`` are all NaN)
    bands_read: tuple[str, ...]
    #: whether clouds were masked (False: the collection has no cloud mask)
    masked: bool


def load_scene(item: pystac.Item, geobox: GeoBox, *, settings: CompositeSettings) -> Scene:
    """Load, scale, mask (and for Landsat harmonise) one item lazily on ``geobox``."""
    coll = catalog.profile_collection(item)
    profile = catalog.collection_profile(coll)
    provider = catalog.provider_of(item, default=settings.default_provider)
    keys = catalog.asset_keys(item, provider=provider)
    rad = catalog.radiometry(item, provider=provider)
    profiled = [b for b in REFLECTANCE_BANDS if b in keys]
    ours = [b for b in profiled if keys[b] in item.assets]
    rule = profile["mask"]
    # a collection without a cloud mask (a bureau's own GF-1/GF-6 WFV scenes) says so in
    # its profile (mask kind "none"); every other scene without its mask is refused
    masked = rule["kind"] != "none"
    if (masked and keys["mask"] not in item.assets) or not ours:
        need = "its mask asset" if ours else "any reflectance asset"
        raise CatalogError(
            f"item {item.id!r} ({provider}) lacks {need}; its collection profile "
            f"data_catalog/collections/{coll}.yaml expects {sorted(keys.values())}"
        )
    if len(ours) < len(profiled):  # a partial download: use what is there, say what is not
        lacking = ", ".join(f"{b} ({keys[b]})" for b in profiled if b not in ours)
        warnings.warn(
            PipelineWarning(
                f"item {item.id!r} lacks the assets of {lacking}: the composite uses its other "
                f"bands, and these bands (and indices made from them) come from the epoch's "
                f"other scenes only",
                code="scene_lacks_bands",
                values={"item": item.id, "bands": lacking},
            ),
            stacklevel=2,
        )
    resampling = {keys[b]: settings.resampling for b in ours}
    if masked:
        resampling[keys["mask"]] = "nearest"
    ds = _load(
        [item],
        list(resampling),
        geobox,
        settings=settings,
        resampling=resampling,
    )
    ds = ds.isel(time=0)
    if not masked:  # said once per season by seasonal_composite
        invalid = da.zeros_like(ds[keys[ours[0]]].data, dtype=bool)
    else:
        mask_raw = ds[keys["mask"]].data
        if rule["kind"] == "classes":
            invalid = da.map_blocks(scl_invalid, mask_raw, classes=rule["invalid"], dtype=bool)
            grow = da.map_blocks(scl_invalid, mask_raw, classes=rule["dilate"], dtype=bool)
        else:
            invalid = da.map_blocks(qa_bits_set, mask_raw, bits=rule["invalid_bits"], dtype=bool)
            grow = da.map_blocks(qa_bits_set, mask_raw, bits=rule["dilate_bits"], dtype=bool)
        invalid = invalid | dilate(grow, settings.cloud_dilation_px)
    harmonise = settings.harmonise_landsat and coll == "landsat-c2-l2"
    coeffs = harmonisation_coefficients(settings.harmonise_to) if harmonise else {}
    # TM and ETM+ first go to the OLI scale (HLS harmonises OLI only)
    sensor = landsat_sensor(item) if harmonise else ""
    to_oli = etm_to_oli_coefficients(sensor) if harmonise else {}
    if to_oli and sensor == "tm":
        note = catalog.collection_profile("landsat-c2-l2")["etm_to_oli"]["tm_note"]
        warnings.warn(
            PipelineWarning(
                f"item {item.id!r}: {note}", code="tm_as_etm", values={"item": item.id}
            ),
            stacklevel=2,
        )
    bands: dict[str, da.Array] = {}
    for b in REFLECTANCE_BANDS:
        if b not in ours:
            bands[b] = _empty(geobox, settings.chunk_px)
            continue
        dn = ds[keys[b]].data
        refl = da.map_blocks(
            dn_to_reflectance,
            dn,
            scale=rad.scale,
            offset=rad.offset,
            nodata_dn=rad.nodata_dn,
            dtype="float32",
        )
        if b in to_oli:
            slope, offset = to_oli[b]
            refl = etm_to_oli(refl, slope=slope, offset=offset)
        if harmonise and b in coeffs:
            slope, offset = coeffs[b]
            refl = landsat_to_sentinel2(refl, slope=slope, offset=offset)
        bands[b] = da.where(invalid, np.float32(np.nan), refl).astype("float32")
    chain = [sensor] + (["oli"] if to_oli else []) + ["msi"] if harmonise else []
    return Scene(item.id, coll, bands, rad, ">".join(chain), tuple(ours), masked)


def _nanmedian_block(block: np.ndarray) -> np.ndarray:
    # Pixels with no valid observation get NaN. They are filled before nanmedian rather
    # than silenced with warnings.catch_warnings, which is not thread-safe (threads of a
    # Dask worker share the global warning filters, so warnings leaked into the logs).
    empty = np.isnan(block).all(axis=0)
    if empty.any():
        block = np.where(empty[None], np.float32(0), block)
    med = np.nanmedian(block, axis=0).astype("float32")
    med[empty] = np.nan
    return med


def median_stack(layers: Sequence[da.Array]) -> tuple[da.Array, da.Array]:
    """Per-pixel median and count of non-NaN values over ``layers`` (lazy).

    The stack is rechunked to one chunk in time and the spatial chunks of the layers,
    so memory per task is ``n_layers * chunk_px**2 * 4`` bytes.
    """
    stack = da.stack(list(layers), axis=0).rechunk({0: -1})
    med = da.map_blocks(
        _nanmedian_block,
        stack,
        drop_axis=0,
        dtype="float32",
        name="median-" + tokenize(stack),
        meta=np.array((), dtype="float32"),
    )
    count = da.isfinite(stack).sum(axis=0).astype("float32")
    return med, count


def _as_dataarray(data: da.Array, geobox: GeoBox, name: str) -> xr.DataArray:
    from odc.geo.xr import xr_coords

    return xr.DataArray(data, coords=xr_coords(geobox), dims=("y", "x"), name=name)


def seasonal_composite(
    items: Sequence[pystac.Item], geobox: GeoBox, *, settings: CompositeSettings
) -> tuple[xr.DataArray, list[Scene]]:
    """The season's median composite: bands, indices and ``n_valid`` (lazy, ``band, y, x``)."""
    refl_items = [
        i
        for i in items
        if catalog.collection_profile(catalog.profile_collection(i)).get("kind") == "reflectance"
    ]
    if not refl_items:
        raise CatalogError("no reflectance items to composite (check the frozen items file)")
    scenes = [load_scene(i, geobox, settings=settings) for i in refl_items]
    unmasked = sorted({s.collection for s in scenes if not s.masked})
    if unmasked:
        n = sum(not s.masked for s in scenes)
        colls = ", ".join(unmasked)
        warnings.warn(
            PipelineWarning(
                f"{n} of the season's {len(scenes)} scene(s) ({colls}) have no cloud mask "
                f"(data_catalog/collections/): their clouds and cloud shadows are not removed "
                f"before the median; catalog only cloud-free scenes of such collections",
                code="scenes_without_cloud_mask",
                values={"n": n, "total": len(scenes), "collections": colls},
            ),
            stacklevel=2,
        )
    absent = absent_bands({b for s in scenes for b in s.bands_read})
    if absent:
        colls = ", ".join(sorted({s.collection for s in scenes}))
        missing = ", ".join(b for b in absent if b in REFLECTANCE_BANDS)
        nan_layers = ", ".join(absent)
        warnings.warn(
            PipelineWarning(
                f"no scene of this season ({colls}) has the band(s) {missing}: the "
                f"composite's {nan_layers} are NaN throughout (indices: data_catalog/indices.yaml)",
                code="bands_absent",
                values={"collections": colls, "bands": missing, "layers": nan_layers},
            ),
            stacklevel=2,
        )
    bands: dict[str, xr.DataArray] = {}
    n_valid = None
    for b in REFLECTANCE_BANDS:
        med, count = median_stack([s.bands[b] for s in scenes])
        bands[b] = _as_dataarray(med, geobox, b)
        if b == "red":
            n_valid = count
    if n_valid is None:  # red is always in REFLECTANCE_BANDS; keeps mypy satisfied
        raise ScienceDomainError("internal: red band missing from the composite")
    layers = [*bands.values(), *indices(bands).values(), _as_dataarray(n_valid, geobox, "n_valid")]
    out = xr.concat(layers, dim="band").assign_coords(band=list(COMPOSITE_BANDS))
    out = out.transpose("band", "y", "x").astype("float32")
    out.attrs.update({"_FillValue": np.float32(np.nan), "units": "1"})
    out = out.rio.write_crs(str(geobox.crs))
    return out, scenes


def absent_bands(read: AbstractSet[str]) -> list[str]:
    """Composite bands that scenes with only the reflectance bands ``read`` cannot give:
    the other reflectance bands, and the indices made from one of those.

    Scenes with four bands (GF-1 WFV: blue, green, red, broad NIR) have no narrow NIR and
    no SWIR, so a season made only of them has none of NDVI, EVI, NBR, NDMI, NDRE.
    """
    inputs = index_inputs()
    return [
        b
        for b in (*REFLECTANCE_BANDS, *INDEX_NAMES)
        if (b in REFLECTANCE_BANDS and b not in read) or (b in inputs and inputs[b] - read)
    ]


def model_gaps(absent: Sequence[str]) -> list[str]:
    """The bands of ``absent`` the satellite model cannot do without: all but the
    Sentinel-2-only ones (:func:`single_sensor_bands`)."""
    single = set(single_sensor_bands())
    return [b for b in absent if b not in single]


def require_model_bands(scenes: Sequence[Scene], *, epoch: str) -> None:
    """Refuse a season whose scenes lack a band the satellite model needs at every plot.

    The model may miss only the Sentinel-2-only bands (:func:`single_sensor_bands`, left
    out by its common-band variant where only Landsat saw the ground); any other band
    that no scene gives would leave it no plot to train on.
    """
    needed = model_gaps(absent_bands({b for s in scenes for b in s.bands_read}))
    if needed:
        have = sorted({s.collection for s in scenes})
        raise InputDataError(
            f"epoch {epoch}: its {len(scenes)} scene(s) ({', '.join(have)}) give no "
            f"{', '.join(needed)}, which the satellite model needs at every plot (only "
            f"Sentinel-2-only bands may be missing). Add Sentinel-2 or Landsat scenes to this "
            f"epoch (sources.catalog.collections); scenes without narrow NIR and SWIR, such "
            f"as GF-1 WFV, cannot make a season on their own"
        )


def require_clear_pixels(composite: xr.DataArray, *, epoch: str, n_scenes: int) -> None:
    """Refuse a composite without one clear observation (every band would be NaN).

    Computes the largest ``n_valid`` of the composite: one pass over the red band and the
    masks of every scene, the price of never writing an empty composite with exit 0.
    """
    n_max = float(composite.sel(band="n_valid").max().compute())
    if not n_max > 0:
        raise InputDataError(
            f"epoch {epoch}: the composite has no clear pixel: none of its {n_scenes} scene(s) "
            f"has a cloud-free, valid observation on the AOI's grid, so every band would be "
            f"NaN. Check items/{epoch}.json (do the scenes cover the AOI?), widen the epoch's "
            f"dates in the config's epochs, or raise stages.acquire.max_cloud_cover"
        )


def terrain(
    items: Sequence[pystac.Item], geobox: GeoBox, *, settings: CompositeSettings
) -> xr.DataArray:
    """Elevation (m), slope and aspect (degrees) on the model grid from DEM items (lazy)."""
    if not items:
        raise CatalogError("no DEM items for terrain (sources.catalog.dem_collection)")
    key = catalog.asset_keys(
        items[0], provider=catalog.provider_of(items[0], default=settings.default_provider)
    )["elevation"]
    ds = _load(items, [key], geobox, settings=settings, resampling={key: "bilinear"})
    elev = ds[key].astype("float32")
    nodata = ds[key].attrs.get("nodata")
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        elev = elev.where(ds[key] != nodata)
    elev_2d = elev.max("time", skipna=True).data.astype("float32")
    res = geobox.resolution
    dx, dy = abs(float(res.x)), abs(float(res.y))

    def _slope(block: np.ndarray) -> np.ndarray:
        return horn_slope_aspect(block, dx_m=dx, dy_m=dy)[0]

    def _aspect(block: np.ndarray) -> np.ndarray:
        return horn_slope_aspect(block, dx_m=dx, dy_m=dy)[1]

    slope = da.map_overlap(
        _slope,
        elev_2d,
        depth=1,
        boundary=np.nan,
        dtype="float32",
        meta=np.array((), dtype="float32"),
    )
    aspect = da.map_overlap(
        _aspect,
        elev_2d,
        depth=1,
        boundary=np.nan,
        dtype="float32",
        meta=np.array((), dtype="float32"),
    )
    layers = [
        _as_dataarray(a, geobox, n)
        for a, n in zip((elev_2d, slope, aspect), TERRAIN_BANDS, strict=True)
    ]
    out = xr.concat(layers, dim="band").assign_coords(band=list(TERRAIN_BANDS))
    out.attrs.update({"_FillValue": np.float32(np.nan), "units": ["m", "degree", "degree"]})
    return out.rio.write_crs(str(geobox.crs))


# --------------------------------------------------------------------------- QA


def dark_object_qa(scenes: Sequence[Scene], *, stride: int = 4) -> list[dict[str, Any]]:
    """Per scene: low percentile of clear reflectance in the dark-object band, and a flag.

    Computes (eagerly) on every ``stride``-th pixel of each scene. A percentile above
    the profile's ``dark_object_max_reflectance`` suggests an offset that was not
    removed (e.g. a provider flag saying "applied" when it was not); below
    ``dark_object_min_reflectance``, an offset removed twice.
    """
    import dask

    lazy = []
    for s in scenes:
        q = catalog.collection_profile(s.collection)["qa"]
        lazy.append(s.bands[q["dark_object_band"]][::stride, ::stride])
    samples = dask.compute(*lazy)
    out: list[dict[str, Any]] = []
    for s, sample in zip(scenes, samples, strict=True):
        q = catalog.collection_profile(s.collection)["qa"]
        vals = sample[np.isfinite(sample)]
        rec: dict[str, Any] = {
            "item_id": s.item_id,
            "collection": s.collection,
            "scale": s.radiometry.scale,
            "offset": s.radiometry.offset,
            "offset_reason": s.radiometry.reason,
            "harmonised": s.harmonised,
            "n_clear_sampled": int(vals.size),
        }
        if vals.size == 0:
            rec.update(dark_object_reflectance=None, status="no clear pixels")
        else:
            p = float(np.percentile(vals, float(q["dark_object_percentile"])))
            rec["dark_object_reflectance"] = round(p, 5)
            if p > float(q["dark_object_max_reflectance"]):
                rec["status"] = "suspect: dark objects too bright (BOA offset not removed?)"
            elif p < float(q["dark_object_min_reflectance"]):
                rec["status"] = "suspect: dark objects negative (offset removed twice?)"
            else:
                rec["status"] = "ok"
        out.append(rec)
    return out
