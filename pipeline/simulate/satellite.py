"""Sentinel-2 L2A and Landsat 8/9 Collection 2 Level-2 scenes of the simulated landscape.

Surface reflectance of a pixel (all coefficients in ``simulation.yaml``, ``reflectance``;
end-member spectra and most constants are assumptions, see there):

* forest: a linear mixture of the type's canopy spectrum and the forest-floor spectrum,
  with canopy fraction ``f = 1 - exp(-AGB / agb_saturation)`` so that the optical signal
  saturates at high biomass, and a crown-shadow darkening ``1 - shade * (1 - exp(-AGB /
  agb_shade))`` that keeps a weak sensitivity beyond saturation (the behaviour reported for
  optical AGB retrieval, e.g. Lu et al. 2016, Int. J. Digital Earth 9:63-105,
  doi:10.1080/17538947.2014.990526);
* non-forest uses (farmland, settlement, water, road): their background spectrum;
* season: NIR and red-edge scaled by ``1 + a cos(2 pi (doy - peak) / 365)``, red by the
  inverse, with a type-specific amplitude ``a`` (evergreen forests small, farmland large);
* terrain illumination: ``rho * (cos i + c) / (cos sz + c)`` with the incidence angle from
  the analytic slope/aspect and the sun position at overpass time (the C-correction form of
  Teillet et al. 1982, Can. J. Remote Sens. 8:84-106, used here forwards);
* per-scene residual atmospheric bias and per-pixel noise (Gaussian).

Clouds: a smooth random field thresholded at the scene's cloud fraction (some scenes
mostly cloudy) with soft edges; cloud reflectance is blended by the cloud opacity.
Shadows are the cloud opacity field displaced by ``cloud_height * tan(sun zenith)`` away
from the sun and darken the surface. The L2A scene classification (SCL) and Landsat
QA_PIXEL flag clouds and shadows with realistic misses (a share of thin cloud edges and
shadows go unflagged; see ``clouds`` in the YAML). ``truth/clear/<item>.tif`` says where the
scene was truly clear.

Encoding follows the real products: Sentinel-2 DN = 10000 * rho before processing baseline
04.00 and DN = 10000 * rho + 1000 from 04.00 (25 Jan 2022) on, uint16 with nodata 0, SCL
uint8; Landsat DN = (rho + 0.2) / 0.0000275, uint16 nodata 0, QA_PIXEL uint16 with fill 1.
Landsat reflectance is the Sentinel-2 reflectance of the equivalent band passed through the
NASA HLS v2.0 MSI->OLI bandpass adjustment (so a harmonising composite can undo it).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from odc.geo.geobox import GeoBox
from scipy import ndimage

from pipeline.grid import cell_centres, north_up_geobox
from pipeline.simulate.noise import gaussian_field
from pipeline.simulate.science import FOREST_TYPES, coefficients

FloatArray = npt.NDArray[np.float64]

S2_BANDS = (
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
S2_10M = ("blue", "green", "red", "nir")
_NIR_LIKE = ("rededge2", "rededge3", "nir", "nir08")


@dataclass(frozen=True)
class Scene:
    """One planned acquisition."""

    collection: str  # sentinel-2-l2a | landsat-c2-l2
    platform: str
    epoch: str
    epoch_index: int
    when: dt.datetime
    cloud_fraction: float
    cloud_height_m: float
    seed: int
    item_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def solar_position(when: dt.datetime, lon_deg: float, lat_deg: float) -> tuple[float, float]:
    """Sun zenith and azimuth (deg, azimuth clockwise from north).

    Declination and equation of time from the Fourier series of Spencer (1971), "Fourier
    series representation of the position of the sun", Search 2(5):172 (accuracy ~0.1 deg,
    ample here). Own code: no solar-position package is in the environment.
    """
    doy = when.timetuple().tm_yday
    g = 2.0 * math.pi / 365.0 * (doy - 1 + (when.hour - 12) / 24.0)
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    eqt = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    minutes = when.hour * 60 + when.minute + when.second / 60.0
    tst = minutes + eqt + 4.0 * lon_deg
    ha = math.radians(tst / 4.0 - 180.0)
    lat = math.radians(lat_deg)
    cos_z = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(ha)
    zen = math.acos(max(-1.0, min(1.0, cos_z)))
    az = math.degrees(
        math.atan2(math.sin(ha), math.cos(ha) * math.sin(lat) - math.tan(decl) * math.cos(lat))
    )
    return math.degrees(zen), (az + 180.0) % 360.0


def base_reflectance(use: npt.NDArray[np.object_], agb_mg_ha: FloatArray, doy: int) -> FloatArray:
    """Noise-free, flat-terrain surface reflectance (band, y, x) on the model grid."""
    r = coefficients()["reflectance"]
    bands = list(r["bands"])
    nb = len(bands)
    out = np.zeros((nb, *use.shape))
    season = math.cos(2.0 * math.pi * (doy - float(r["phenology_peak_doy"])) / 365.0)
    nir_idx = [bands.index(b) for b in _NIR_LIKE]
    red_idx = bands.index("red")

    def seasonal(spec: list[float], name: str) -> FloatArray:
        s = np.array(spec, dtype=np.float64)
        a = float(r["season_amplitude"][name]) * season
        s[nir_idx] *= 1.0 + a
        s[red_idx] *= 1.0 - a
        return s

    floor = seasonal(r["background"]["forest_floor"], "forest_floor")
    sat = float(r["agb_saturation_mg_ha"])
    shade = np.full(nb, float(r["shade_visible_swir"]))
    shade[nir_idx] = float(r["shade_nir"])
    for name in FOREST_TYPES:
        m = use == name
        if not m.any():
            continue
        can = seasonal(r["canopy"][name], name)
        agb = agb_mg_ha[m]
        f = 1.0 - np.exp(-agb / sat)
        g = 1.0 - np.exp(-agb / float(r["agb_shade_mg_ha"]))
        out[:, m] = (1.0 - f)[None] * floor[:, None] + (f[None] * can[:, None]) * (
            1.0 - shade[:, None] * g[None]
        )
    for name, spec in r["background"].items():
        if name == "forest_floor":
            continue
        m = use == name
        if m.any():
            out[:, m] = seasonal(spec, name)[:, None]
    return out


def illumination_factor(
    slope_deg: FloatArray, aspect_deg: FloatArray, sun_zenith_deg: float, sun_azimuth_deg: float
) -> tuple[FloatArray, FloatArray]:
    """(illumination factor, cos incidence) for the C-correction-form forward model."""
    c = float(coefficients()["reflectance"]["illumination_c"])
    sz = math.radians(sun_zenith_deg)
    s = np.radians(slope_deg)
    cos_i = np.cos(sz) * np.cos(s) + np.sin(sz) * np.sin(s) * np.cos(
        math.radians(sun_azimuth_deg) - np.radians(aspect_deg)
    )
    cos_i = np.clip(cos_i, 0.0, 1.0)
    return (cos_i + c) / (math.cos(sz) + c), cos_i


@dataclass(frozen=True)
class CloudState:
    """Cloud opacity and shadow strength (0-1) on the model grid."""

    opacity: FloatArray
    shadow: FloatArray

    @property
    def clear(self) -> npt.NDArray[np.bool_]:
        return (self.opacity < 0.02) & (self.shadow < 0.02)


def clouds(scene: Scene, grid: GeoBox, sun_zenith_deg: float, sun_azimuth_deg: float) -> CloudState:
    """Cloud opacity and displaced shadow of a scene."""
    c = coefficients()["clouds"]
    rng = np.random.default_rng(scene.seed)
    if scene.cloud_fraction <= 0.0:
        z = np.zeros(grid.shape)
        return CloudState(z, z.copy())
    field_ = gaussian_field(
        rng, grid.shape.yx, length_px=float(c["length_scale_m"]) / grid.resolution.x
    )
    thr = float(np.quantile(field_, 1.0 - scene.cloud_fraction))
    opacity = np.clip((field_ - thr) / float(c["edge_width"]) + 0.5, 0.0, 1.0)
    opacity[field_ < thr - 0.5 * float(c["edge_width"])] = 0.0
    d = scene.cloud_height_m * math.tan(math.radians(sun_zenith_deg)) / grid.resolution.x
    az = math.radians(sun_azimuth_deg)
    # the shadow falls away from the sun: east/north components of the displacement
    dx, dy = -d * math.sin(az), -d * math.cos(az)
    shadow = ndimage.shift(opacity, (-dy, dx), order=0, mode="constant", cval=0.0)
    shadow = shadow * (1.0 - opacity)
    return CloudState(opacity, shadow)


def observe(rho: FloatArray, cl: CloudState, *, rng: np.random.Generator) -> FloatArray:
    """Top-of-canopy reflectance as observed: shadows, clouds, bias and noise."""
    c = coefficients()
    cloud_rho = np.array(c["clouds"]["cloud_reflectance"], dtype=np.float64)
    r = c["reflectance"]
    dark = 1.0 - float(c["clouds"]["shadow_darkening"]) * cl.shadow
    obs = rho * dark[None]
    obs = (1.0 - cl.opacity[None]) * obs + cl.opacity[None] * cloud_rho[:, None, None]
    obs = obs + rng.normal(0.0, float(r["scene_bias_sd"]), (rho.shape[0], 1, 1))
    obs = obs + rng.normal(0.0, float(r["pixel_noise_sd"]), rho.shape)
    return np.asarray(obs)


def block_mean(a: FloatArray, k: int) -> FloatArray:
    """Mean over k x k blocks of the last two axes (sizes must be multiples of k)."""
    *lead, ny, nx = a.shape
    return np.asarray(a.reshape(*lead, ny // k, k, nx // k, k).mean(axis=(-3, -1)))


def scl_20m(
    obs20: FloatArray,
    cl: CloudState,
    use: npt.NDArray[np.object_],
    cos_i: FloatArray,
    *,
    rng: np.random.Generator,
) -> npt.NDArray[np.uint8]:
    """Sentinel-2 scene classification at 20 m (with realistic misses)."""
    c = coefficients()
    cc = c["clouds"]
    k = c["sentinel2"]["scl_classes"]
    bands = list(c["reflectance"]["bands"])
    red, nir = obs20[bands.index("red")], obs20[bands.index("nir08")]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    op = block_mean(cl.opacity, 2)
    sh = block_mean(cl.shadow, 2)
    water = use[::2, ::2] == "water"
    dark = block_mean(cos_i, 2) < float(cc["dark_cos_incidence"])
    scl = np.where(ndvi > 0.4, k["vegetation"], k["not_vegetated"]).astype(np.uint8)
    scl[water] = k["water"]
    scl[dark & ~water] = k["dark_area"]
    scl[rng.uniform(size=scl.shape) < 0.002] = k["unclassified"]
    shadow_flag = (sh > 0.3) & (rng.uniform(size=scl.shape) >= float(cc["scl_miss_shadow"]))
    scl[shadow_flag] = k["cloud_shadow"]
    thin = (op > 0.05) & (op <= 0.25) & (rng.uniform(size=scl.shape) >= float(cc["scl_miss_thin"]))
    scl[thin] = k["thin_cirrus"]
    scl[(op > 0.25) & (op <= 0.6)] = k["cloud_medium"]
    scl[op > 0.6] = k["cloud_high"]
    return scl


def qa_pixel(
    opacity: FloatArray,
    shadow: FloatArray,
    water: npt.NDArray[np.bool_],
    inside: npt.NDArray[np.bool_],
) -> npt.NDArray[np.uint16]:
    """Landsat C2 QA_PIXEL values (USGS LSDS-1619 bit layout; values in the YAML)."""
    q = coefficients()["landsat"]
    out = np.where(water, q["qa_clear_water"], q["qa_clear_land"]).astype(np.uint16)
    out[shadow > 0.3] = q["qa_cloud_shadow"]
    out[(opacity > 0.1) & (opacity <= 0.5)] = q["qa_dilated_cloud"]
    out[opacity > 0.5] = q["qa_cloud_high"]
    out[~inside] = q["qa_fill"]
    return out


def to_s2_dn(rho: FloatArray, *, offset_applied: bool) -> npt.NDArray[np.uint16]:
    """Sentinel-2 L2A digital numbers (0 is nodata, so valid values are at least 1)."""
    s = coefficients()["sentinel2"]
    dn = rho * float(s["quantification_value"]) + (
        float(s["boa_add_offset_dn"]) if offset_applied else 0.0
    )
    return np.clip(np.rint(dn), 1, 65535).astype(np.uint16)


def to_landsat_dn(rho: FloatArray) -> npt.NDArray[np.uint16]:
    """Landsat C2 L2 surface-reflectance digital numbers."""
    q = coefficients()["landsat"]
    dn = (rho - float(q["offset"])) / float(q["scale"])
    return np.clip(np.rint(dn), 1, 65535).astype(np.uint16)


def s2_20m_grid(grid10: GeoBox) -> GeoBox:
    """The 20 m grid of the Sentinel-2 bands at 20 m (same corner as the 10 m grid)."""
    a = grid10.affine
    shape = (grid10.height // 2, grid10.width // 2)
    return north_up_geobox(shape, x0_m=a.c, ytop_m=a.f, res_m=20.0, crs=grid10.crs)


def landsat_grid(model: GeoBox) -> GeoBox:
    """A 30 m grid offset by 15 m from the 30 m multiples (as Landsat's), covering the AOI."""
    xmin, ymin, xmax, ymax = model.boundingbox
    x0 = math.floor((xmin - 15.0) / 30.0) * 30.0 + 15.0
    y1 = math.ceil((ymax - 15.0) / 30.0) * 30.0 + 15.0
    nx = math.ceil((xmax - x0) / 30.0)
    ny = math.ceil((y1 - ymin) / 30.0)
    return north_up_geobox((ny, nx), x0_m=x0, ytop_m=y1, res_m=30.0, crs=model.crs)


def resample_to(values: FloatArray, model: GeoBox, target: GeoBox, *, smooth_px: int) -> FloatArray:
    """Values (..., y, x) on the model grid, box-averaged and sampled at ``target`` centres."""
    tx, ty = cell_centres(target)
    cols = (tx - model.affine.c) / model.resolution.x - 0.5
    rows = (model.affine.f - ty) / model.resolution.x - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    lead = values.shape[:-2]
    flat = values.reshape(-1, *values.shape[-2:])
    out = np.empty((flat.shape[0], target.height, target.width))
    for i in range(flat.shape[0]):
        sm = ndimage.uniform_filter(flat[i], size=smooth_px, mode="nearest")
        out[i] = ndimage.map_coordinates(sm, [rr, cc], order=1, mode="nearest")
    return out.reshape(*lead, target.height, target.width)


def inside_model(model: GeoBox, target: GeoBox) -> npt.NDArray[np.bool_]:
    """Target cells whose centre lies inside the model grid."""
    tx, ty = cell_centres(target)
    xmin, ymin, xmax, ymax = model.boundingbox
    return ((ty[:, None] > ymin) & (ty[:, None] < ymax)) & ((tx[None] > xmin) & (tx[None] < xmax))


def hls_to_oli(rho_s2: FloatArray) -> FloatArray:
    """OLI-like reflectance (coastal..swir22) from the Sentinel-2 bands (HLS v2.0 adjustment)."""
    c = coefficients()
    bands = list(c["reflectance"]["bands"])
    q = c["landsat"]
    out = np.empty((len(q["bands"]), *rho_s2.shape[1:]))
    for i, (src, a, b) in enumerate(
        zip(q["from_s2_band"], q["hls_slope"], q["hls_offset"], strict=True)
    ):
        out[i] = float(a) * rho_s2[bands.index(src)] + float(b)
    return out
