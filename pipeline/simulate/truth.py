"""Truth of the simulated region: per-pixel AGB, carbon and canopy height per epoch.

Computed from the individual trees of every pixel (:mod:`pipeline.simulate.stands`), row
block by row block so memory stays bounded on large regions. The truth is what a perfect
method would estimate: AGB (Mg/ha) of trees >= the inventory DBH threshold, carbon
(Mg C/ha, AGB + BGB times carbon fraction, via :mod:`models.allometry`), canopy height
(m, the tallest tree of the 10 m cell). Written under ``truth/`` for tests and benchmarks
only; the pipeline never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from odc.geo.geobox import GeoBox

from pipeline.simulate.stands import StandEpoch, generate_trees, pixel_truth

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class StandTally:
    """Per parcel (row of the parcel table), sums over its trees >= the DBH threshold:
    what a sub-compartment (小班) survey measures, before its errors."""

    stems: FloatArray
    #: sum of DBH^2 (cm^2): the quadratic mean DBH is sqrt(d2 / stems)
    d2_cm2: FloatArray
    #: sum of DBH^2 x height: Lorey's mean height is ba_height / d2
    d2_height: FloatArray
    #: sum of bamboo culm ages (years; 0 for trees)
    culm_age_yr: FloatArray

    def quadratic_mean_dbh_cm(self) -> FloatArray:
        return np.sqrt(self.d2_cm2 / np.maximum(self.stems, 1.0))

    def lorey_height_m(self) -> FloatArray:
        return self.d2_height / np.maximum(self.d2_cm2, 1e-12)


@dataclass(frozen=True)
class EpochTruth:
    agb_mg_ha: FloatArray
    carbon_mg_ha: FloatArray
    canopy_height_m: FloatArray
    n_trees: int
    stands: StandTally


def epoch_truth(
    seed: int,
    grid: GeoBox,
    parcel_idx: npt.NDArray[np.int64],
    stocking: FloatArray,
    stand: StandEpoch,
    *,
    n_parcels: int,
    rows_per_block: int = 64,
) -> EpochTruth:
    """Truth rasters (y, x) of one epoch on the model grid, and the tree tally of each of the
    ``n_parcels`` parcels (zero for a parcel that owns no cell: one smaller than a cell)."""
    agb = np.zeros(grid.height * grid.width)
    carbon = np.zeros_like(agb)
    height = np.zeros_like(agb)
    n_trees = 0
    flat_parcel = parcel_idx.ravel()
    flat_stock = stocking.ravel()
    tally = np.zeros((4, n_parcels))
    for r0 in range(0, grid.height, rows_per_block):
        r1 = min(grid.height, r0 + rows_per_block)
        pixels = np.arange(r0 * grid.width, r1 * grid.width, dtype=np.int64)
        trees = generate_trees(seed, grid, pixels, flat_parcel[pixels], flat_stock[pixels], stand)
        t = pixel_truth(trees, pixels, res_m=grid.resolution.x)
        agb[pixels] = t.agb_mg_ha
        carbon[pixels] = t.carbon_mg_ha
        height[pixels] = t.canopy_height_m
        n_trees += len(trees)
        owner = flat_parcel[trees.pixel]
        d2 = trees.dbh_cm**2
        for k, w in enumerate(
            (np.ones(len(trees)), d2, d2 * trees.height_m, np.nan_to_num(trees.age_yr))
        ):
            tally[k] += np.bincount(owner, weights=w, minlength=n_parcels)
    shape = grid.shape
    return EpochTruth(
        agb.reshape(shape),
        carbon.reshape(shape),
        height.reshape(shape),
        n_trees,
        StandTally(*tally),
    )
