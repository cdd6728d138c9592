"""Forest stands, their growth between epochs, and the individual trees of every pixel.

The landscape is a set of sub-compartments (parcels, :mod:`pipeline.simulate.parcels`),
each with a forest type (Chinese fir plantation, Masson pine, evergreen broadleaf, Moso
bamboo) or a non-forest use. A forest parcel has an age, a site-index multiplier and, between
the two epochs, possibly a disturbance: clear-cut and replanting, thinning, or (farmland)
afforestation with Chinese fir.

Stand state at an epoch (all coefficients in ``simulation.yaml``, ``forest_types``):

* mean height and quadratic-mean-like DBH follow Chapman-Richards curves
  ``y = site * ymax * (1 - exp(-k * age)) ** c`` (Richards 1959, J. Exp. Bot. 10:290,
  doi:10.1093/jxb/10.2.290; coefficients: assumption);
* stem density ``n_min + (n0 - n_min) * exp(-m * age)`` (self-thinning; assumption),
  times a local lognormal stocking field (assumption) so stands are not uniform;
* Moso bamboo stands are uneven-aged and in steady state; their culms are renewed
  between epochs (harvest at 4-8 years; assumption).

Trees are generated per 10 m pixel from counter-based random numbers keyed by (pixel,
cohort, slot) (:func:`pipeline.simulate.noise.hash_uniform`), so the trees of a pixel are
the same whether they are generated for the whole region (truth rasters), a LiDAR tile
(crowns) or a field plot (tree lists). The number of stems is Poisson with the stand's
density; a tree keeps its relative size between epochs (``dbh = mean_dbh * z``, ``z``
lognormal), and when density falls the trees in the highest slots die (random mortality;
assumption). A clear-cut or a bamboo culm renewal starts a new cohort (new trees). Trees
below the inventory threshold ``min_dbh_cm`` are not part of the simulated world.

Tree aboveground biomass is :func:`models.allometry.tree_agb_kg`; pixel AGB truth is the sum
of the pixel's trees, so field plots reproduce the truth raster up to their boundary
effects. Carbon truth uses the same module's carbon fraction and root-to-shoot ratio
(the ratio's AGB class from the pixel's own AGB, as a per-pixel carbon stage does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from odc.geo.geobox import GeoBox
from scipy.stats import poisson

from models.allometry import tree_agb_kg, tree_bgb_kg, tree_carbon_kg, tree_equations
from models.plot_biomass import rse_log
from pipeline.simulate.noise import hash_normal, hash_uniform
from pipeline.simulate.science import FOREST_TYPES, coefficients
from pipeline.units import M2_PER_HA

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# field ids of the counter-based random numbers
_F_COUNT, _F_X, _F_Y, _F_SIZE, _F_HEIGHT, _F_SPECIES, _F_AGE, _F_ALLOMETRY = range(8)


def chapman_richards(age_yr: npt.ArrayLike, ymax: float, k: float, c: float) -> FloatArray:
    """``ymax * (1 - exp(-k * age)) ** c`` (Richards 1959)."""
    a = np.maximum(np.asarray(age_yr, dtype=np.float64), 0.0)
    return np.asarray(ymax * (1.0 - np.exp(-k * a)) ** c, dtype=np.float64)


def stems_per_ha(age_yr: npt.ArrayLike, p: dict[str, float]) -> FloatArray:
    """Stem density of a type at an age (self-thinning curve, assumption)."""
    a = np.maximum(np.asarray(age_yr, dtype=np.float64), 0.0)
    n0, nmin, m = float(p["n0_per_ha"]), float(p["n_min_per_ha"]), float(p["mortality_per_yr"])
    return np.asarray(nmin + (n0 - nmin) * np.exp(-m * a), dtype=np.float64)


@dataclass(frozen=True)
class StandEpoch:
    """Per-parcel stand state at one epoch (arrays indexed by parcel row)."""

    type_index: IntArray  # index into FOREST_TYPES, -1 = non-forest
    cohort: IntArray
    stems_per_ha: FloatArray
    mean_dbh_cm: FloatArray
    mean_height_m: FloatArray


def stand_epochs(parcels: pd.DataFrame, epoch_years: list[float]) -> list[StandEpoch]:
    """Stand state of every parcel at every epoch, from its type, age and disturbances.

    ``parcels`` columns: ``type_<i>`` (forest type name or a non-forest use at epoch i),
    ``age_<i>`` (stand age, years), ``cohort_<i>``, ``site_index``, ``density_factor_<i>``.
    """
    coef = coefficients()["forest_types"]
    out = []
    for i, _ in enumerate(epoch_years):
        types = parcels[f"type_{i}"].to_numpy()
        n = len(parcels)
        tix = np.full(n, -1, dtype=np.int64)
        dens = np.zeros(n)
        dbh = np.zeros(n)
        hgt = np.zeros(n)
        age = parcels[f"age_{i}"].to_numpy(dtype=np.float64)
        site = parcels["site_index"].to_numpy(dtype=np.float64)
        for j, name in enumerate(FOREST_TYPES):
            m = types == name
            if not m.any():
                continue
            p = coef[name]
            tix[m] = j
            dens[m] = stems_per_ha(age[m], p) * parcels[f"density_factor_{i}"].to_numpy()[m]
            dbh[m] = site[m] * chapman_richards(age[m], p["dbh_max_cm"], p["dbh_k"], p["dbh_c"])
            hgt[m] = site[m] * chapman_richards(
                age[m], p["height_max_m"], p["height_k"], p["height_c"]
            )
        out.append(StandEpoch(tix, parcels[f"cohort_{i}"].to_numpy(dtype=np.int64), dens, dbh, hgt))
    return out


@dataclass(frozen=True)
class Trees:
    """Individual trees (one element per tree)."""

    pixel: IntArray  # flat index on the model grid
    cohort: IntArray
    slot: IntArray
    x_m: FloatArray
    y_m: FloatArray
    type_index: IntArray
    species: npt.NDArray[np.object_]
    dbh_cm: FloatArray
    height_m: FloatArray
    age_yr: FloatArray  # bamboo culm age, NaN otherwise
    allometry_z: FloatArray  # standard normal deviate of the tree's allometric residual

    def __len__(self) -> int:
        return int(self.pixel.shape[0])

    def subset(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> Trees:
        """The trees selected by a boolean mask or an index array."""
        return Trees(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    def agb_kg(self) -> FloatArray:
        """Aboveground biomass per tree: :func:`models.allometry.tree_agb_kg` times the
        tree's own allometric residual.

        Real trees scatter around any allometry; each simulated tree gets a mean-preserving
        log-normal residual ``exp(s z - s^2 / 2)`` with ``s`` the residual SE its equation
        has in the plots stage's Monte Carlo (:func:`models.plot_biomass.rse_log`), so
        the plot truth contains the error the Monte Carlo propagates.
        """
        if len(self) == 0:
            return np.zeros(0)
        agb = tree_agb_kg(self.species, self.dbh_cm, self.height_m, self.age_yr)
        names, tree = np.unique(
            tree_equations(self.species, self.height_m).astype(str), return_inverse=True
        )
        s = np.array([rse_log(n) for n in names])[tree.reshape(-1)]
        return np.asarray(agb * np.exp(s * self.allometry_z - 0.5 * s**2))

    def crown_radius_m(self) -> FloatArray:
        coef = coefficients()["forest_types"]
        a = np.array([coef[t]["crown_radius_a_m"] for t in FOREST_TYPES])
        b = np.array([coef[t]["crown_radius_b_m_per_cm"] for t in FOREST_TYPES])
        return np.asarray(a[self.type_index] + b[self.type_index] * self.dbh_cm)

    def crown_length_m(self) -> FloatArray:
        coef = coefficients()["forest_types"]
        r = np.array([coef[t]["crown_length_ratio"] for t in FOREST_TYPES])
        return np.asarray(r[self.type_index] * self.height_m)


def _species_tables() -> tuple[list[list[str]], list[FloatArray]]:
    coef = coefficients()["forest_types"]
    names = [list(coef[t]["species"]) for t in FOREST_TYPES]
    cum = [np.cumsum(list(coef[t]["species"].values()), dtype=np.float64) for t in FOREST_TYPES]
    return names, cum


def generate_trees(
    seed: int,
    grid: GeoBox,
    pixels: IntArray,
    parcel_of_pixel: IntArray,
    stocking: FloatArray,
    stand: StandEpoch,
) -> Trees:
    """The trees of the given model-grid pixels at one epoch.

    Parameters
    ----------
    seed
        The region seed.
    grid
        The model grid (10 m).
    pixels
        Flat pixel indices to generate.
    parcel_of_pixel
        Parcel row of each of ``pixels`` (-1 = road, no trees).
    stocking
        Local stocking multiplier of each of ``pixels``.
    stand
        The parcels' stand state at the epoch.
    """
    coef = coefficients()
    ftc = coef["forest_types"]
    valid = parcel_of_pixel >= 0
    tix = np.where(valid, stand.type_index[np.maximum(parcel_of_pixel, 0)], -1)
    forest = tix >= 0
    px = pixels[forest]
    par = parcel_of_pixel[forest]
    tix = tix[forest]
    cohort = stand.cohort[par]
    area_ha = grid.resolution.x**2 / M2_PER_HA
    lam = stand.stems_per_ha[par] * area_ha * stocking[forest]
    u = hash_uniform(seed, px, cohort, 0, _F_COUNT)
    count = np.where(lam > 0, poisson.ppf(u, np.maximum(lam, 1e-12)), 0).astype(np.int64)
    total = int(count.sum())
    owner = np.repeat(np.arange(px.shape[0]), count)
    starts = np.cumsum(count) - count
    slot = np.arange(total, dtype=np.int64) - np.repeat(starts, count)
    tp = px[owner]
    tc = cohort[owner]
    tt = tix[owner]
    row, col = np.divmod(tp, grid.width)
    x = grid.affine.c + (col + hash_uniform(seed, tp, tc, slot, _F_X)) * grid.resolution.x
    y = grid.affine.f - (row + hash_uniform(seed, tp, tc, slot, _F_Y)) * grid.resolution.x
    sd = np.array([ftc[t]["dbh_sd_log"] for t in FOREST_TYPES])[tt]
    hd = np.array([ftc[t]["hd_exponent"] for t in FOREST_TYPES])[tt]
    hsd = np.array([ftc[t]["height_sd_log"] for t in FOREST_TYPES])[tt]
    z = np.exp(sd * hash_normal(seed, tp, tc, slot, _F_SIZE) - 0.5 * sd**2)
    dbar = stand.mean_dbh_cm[par][owner]
    hbar = stand.mean_height_m[par][owner]
    dbh = dbar * z
    height = 1.3 + np.maximum(hbar - 1.3, 0.0) * z**hd * np.exp(
        hsd * hash_normal(seed, tp, tc, slot, _F_HEIGHT)
    )
    names, cum = _species_tables()
    us = hash_uniform(seed, tp, tc, slot, _F_SPECIES)
    species = np.empty(total, dtype=object)
    age = np.full(total, np.nan)
    for j, t in enumerate(FOREST_TYPES):
        m = tt == j
        if not m.any():
            continue
        k = np.minimum(np.searchsorted(cum[j], us[m] * cum[j][-1]), len(names[j]) - 1)
        species[m] = np.asarray(names[j], dtype=object)[k]
        if "culm_age_max_yr" in ftc[t]:
            ua = hash_uniform(seed, tp[m], tc[m], slot[m], _F_AGE)
            age[m] = 1.0 + np.floor(ua * float(ftc[t]["culm_age_max_yr"]))
    keep = dbh >= float(coef["min_dbh_cm"])
    allometry_z = hash_normal(seed, tp, tc, slot, _F_ALLOMETRY)
    trees = Trees(tp, tc, slot, x, y, tt, species, dbh, height, age, allometry_z)
    return trees.subset(keep)


@dataclass(frozen=True)
class PixelTruth:
    """Per-pixel truth aggregated from trees (flat arrays over the requested pixels)."""

    agb_mg_ha: FloatArray
    carbon_mg_ha: FloatArray
    canopy_height_m: FloatArray


def pixel_truth(trees: Trees, pixels: IntArray, *, res_m: float) -> PixelTruth:
    """AGB, carbon (AGB + BGB) and canopy height (tallest tree) of each of ``pixels``."""
    n = pixels.shape[0]
    if len(trees) == 0:
        z = np.zeros(n)
        return PixelTruth(z, z.copy(), z.copy())
    local = np.searchsorted(pixels, trees.pixel)
    area_ha = res_m**2 / M2_PER_HA
    agb = trees.agb_kg()
    agb_px = np.bincount(local, weights=agb, minlength=n) / 1000.0 / area_ha
    hmax = np.zeros(n)
    np.maximum.at(hmax, local, trees.height_m)
    # belowground biomass exactly as the plots stage computes it (species root equations,
    # else the root-to-shoot ratio of the stand's AGB class)
    bgb = tree_bgb_kg(
        trees.species, trees.dbh_cm, trees.height_m, trees.age_yr, stand_agb_mg_ha=agb_px[local]
    )
    carbon_kg = tree_carbon_kg(trees.species, agb, bgb)
    carbon = np.bincount(local, weights=carbon_kg, minlength=n) / 1000.0 / area_ha
    return PixelTruth(agb_px, carbon, hmax)
