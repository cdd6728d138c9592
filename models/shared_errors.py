"""The conversion factors' shared error of the plots' carbon: one draw for every plot and epoch.

The plots' Monte Carlo (:mod:`models.plot_biomass`, BIOMASS ``AGBmonteCarlo``) draws a
carbon fraction per tree and a root-to-shoot ratio per plot, independently for each plot:
errors that differ from tree to tree or plot to plot average out over the population's
many trees and plots. But every tree of a species takes the same row of
``models/data/carbon_fraction.csv`` and every stand of a biomass class the same row of
``root_shoot.csv``: the error of those table values is shared by all plots and epochs, does
not average out and is in no sampling SE (IPCC 2006 Guidelines Vol. 1 Ch. 3: a component of
its own, combined with the sampling one by Approach 1 or 2; McRoberts & Westfall 2014,
Forest Science 60:34-42, for the model part: the residual part negligible over a large
area, the parameters' part not).

:func:`shared_factor_shifts` draws these factors ONCE per draw for every plot and epoch
(IPCC Approach 2, Monte Carlo) and gives the change of each plot-epoch's carbon density
(Mg C/ha) that each draw makes; a survey estimator rerun on the shifted plot values gives
the totals' systematic SD (:func:`models.survey.totals.systematic_sd`). The same draw for
both epochs: a common relative error scales a stock change instead of cancelling.

The factors and their distributions are those of the plots' Monte Carlo:

* **carbon fraction**: normal with the row's ``sd`` (``carbon_fraction.csv``);
* **root-to-shoot ratio** (trees whose BGB comes from a ratio, not a root equation):
  triangular on the row's ``low``, ``root_shoot_ratio``, ``high`` (IPCC 2006 Vol. 4
  Table 4.4 ranges), the class chosen by the plot's AGB as in the plots stage.

One standard normal per draw moves every carbon fraction (all rows, above- and
belowground) and one uniform every root-to-shoot ratio (all rows, through each row's
inverse CDF, as the plots' Monte Carlo does for the species of a plot). How the errors of
different rows are correlated is not published; the rows stand on the same IPCC defaults
and ranges, and with every plot's weight positive full correlation gives the largest
variance of a total, so this is the conservative choice. The two factors are drawn
independently of each other. The rows' SDs and ranges describe the spread of the factor
among stands and species more than the error of its mean, so the result is an upper-side
estimate of the systematic component.

Not included (no published figure to draw from): the allometric equations' coefficient
errors (no equation of ``allometry.yaml`` gives parameter SEs or a covariance matrix; the
per-tree residual error is independent between trees and averages out over them), the
error of the wood density tables' taxon means (``wood_density.csv`` and
``uncertainty.yaml`` give the within-taxon SD, not the SE of a mean), and the H-D models'
parameters (fitted from the run's own trees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import norm, qmc, triang

from models import allometry
from models.errors import PlotDataError

FloatArray = npt.NDArray[np.float64]

KG_PER_MG = 1000.0
#: the columns of the plots stage's tree table (``plots/trees.csv``) the draws need
TREE_COLUMNS = (
    "plot_id", "epoch", "species", "usable", "plot_area_ha", "agb_kg", "bgb_kg",
    "root_shoot_ratio",
)  # fmt: skip


#: how the draws are made, and the factors drawn and not drawn, for the run's record
SAMPLING = "Latin hypercube (scipy.stats.qmc), one draw for every plot and epoch"
INCLUDED = {
    "carbon_fraction": "carbon_fraction.csv: normal(value, sd) of each tree's row; one "
    "deviate per draw moves every row, above- and belowground",
    "root_shoot_ratio": "root_shoot.csv: triangular(low, value, high) of the row of the "
    "plot's AGB class, trees whose BGB is a ratio; one uniform per draw for every row",
}
NOT_INCLUDED = {
    "allometric_coefficients": "no equation of allometry.yaml gives parameter SEs or a "
    "covariance matrix (the per-tree residual error is independent between trees and "
    "averages out over them)",
    "wood_density_means": "wood_density.csv and uncertainty.yaml give the within-taxon SD, "
    "not the SE of a taxon mean",
    "height_diameter_models": "fitted from the run's own trees; their parameter error is "
    "not propagated",
}


@dataclass(frozen=True)
class SharedDraws:
    """The draws of the shared factors (one value per draw)."""

    #: standard normal deviate that moves every carbon fraction by its row's SD
    carbon_fraction_z: FloatArray
    #: uniform (0, 1) that sets every root-to-shoot ratio through its row's inverse CDF
    root_shoot_u: FloatArray

    @classmethod
    def draw(cls, n_draws: int, seed: int) -> SharedDraws:
        """``n_draws`` Latin hypercube draws seeded with ``seed`` (reproducible).

        A Latin hypercube sample (McKay, Beckman & Conover 1979, Technometrics 21:239-245;
        :class:`scipy.stats.qmc.LatinHypercube`) puts one draw in each of ``n_draws``
        equal-probability strata of each factor: with 200 draws the SD of a total comes
        within a fraction of a percent of its limit, where plain random draws scatter by
        about 5 % (1 / sqrt(2 (n - 1))).
        """
        if n_draws < 2:
            raise PlotDataError(f"n_draws must be at least 2 for an SD, got {n_draws}")
        u = qmc.LatinHypercube(d=2, seed=seed).random(n_draws)
        return cls(norm.ppf(u[:, 0]), u[:, 1])


def shared_factor_shifts(trees: pd.DataFrame, draws: SharedDraws) -> pd.DataFrame:
    """The change of each plot-epoch's carbon density (Mg C/ha) under each shared draw.

    Parameters
    ----------
    trees
        The plots stage's tree table (``plots/trees.csv``: :data:`TREE_COLUMNS`; a tree
        whose ``root_shoot_ratio`` is empty has its BGB from a root equation).
    draws
        The shared factors' draws (:meth:`SharedDraws.draw`).

    Returns
    -------
    DataFrame
        Index ``(plot_id, epoch)`` as text, one column per draw: the draw's plot carbon
        density minus the plots stage's ``carbon_mg_ha``. Plot-epochs without a usable
        tree (zero biomass) are not in it: their shift is 0.

    Raises
    ------
    PlotDataError
        A column is missing.
    """
    missing = [c for c in TREE_COLUMNS if c not in trees.columns]
    if missing:
        raise PlotDataError(
            f"tree table: column(s) {missing} missing (the plots stage writes them to "
            "plots/trees.csv)"
        )
    t = trees[trees["usable"].astype(str).str.lower() == "true"]
    key = [t["plot_id"].astype(str), t["epoch"].astype(str)]
    species = t["species"].astype(str).to_numpy(dtype=object)
    agb = t["agb_kg"].to_numpy(dtype=np.float64)
    bgb = t["bgb_kg"].to_numpy(dtype=np.float64)
    per_ha = 1.0 / (KG_PER_MG * t["plot_area_ha"].to_numpy(dtype=np.float64))
    cf_bgb = allometry.carbon_fraction(species, "belowground")
    sd_agb = allometry.carbon_fraction_sd(species, "aboveground")
    sd_bgb = allometry.carbon_fraction_sd(species, "belowground")
    z = draws.carbon_fraction_z[None, :]
    # carbon = AGB cf_a + BGB cf_b; a draw moves cf by z sd and, for trees whose BGB is
    # AGB x ratio, BGB to AGB x the drawn ratio r: with dB = AGB r - BGB,
    # carbon' - carbon = z (AGB sd_a + BGB sd_b) + dB (cf_b + z sd_b)
    shift = z * (agb * sd_agb + bgb * sd_bgb)[:, None]
    ratio = t["root_shoot_ratio"].to_numpy(dtype=np.float64)
    by_ratio = np.isfinite(ratio)
    if by_ratio.any():
        plot_agb = pd.Series(agb * per_ha).groupby([k.to_numpy() for k in key]).transform("sum")
        ratios = _ratio_draws(species[by_ratio], plot_agb.to_numpy()[by_ratio], draws.root_shoot_u)
        d_bgb = agb[by_ratio, None] * ratios - bgb[by_ratio, None]
        shift[by_ratio] += d_bgb * (cf_bgb[by_ratio, None] + z * sd_bgb[by_ratio, None])
    out = pd.DataFrame(
        shift * per_ha[:, None], index=pd.MultiIndex.from_arrays(key, names=["plot_id", "epoch"])
    )
    return out.groupby(level=["plot_id", "epoch"], sort=True).sum()


def _ratio_draws(
    species: npt.NDArray[np.object_], plot_agb_mg_ha: FloatArray, u: FloatArray
) -> FloatArray:
    """Per tree and draw, the drawn root-to-shoot ratio of the tree's row (the class of its
    plot's AGB, as the plots stage chooses it)."""
    out = np.full((species.size, u.size), np.nan)
    for sp in pd.unique(species):
        rows = species == sp
        for lo, hi, value, low, high in allometry.root_shoot_classes(str(sp)):
            cls = rows & (plot_agb_mg_ha >= lo) & (plot_agb_mg_ha < hi)
            dist = triang((value - low) / (high - low), loc=low, scale=high - low)
            out[cls] = dist.ppf(u)
    return out


def map_factor_shifts(plots: pd.DataFrame, shifts: pd.DataFrame) -> FloatArray:
    """Per draw, the relative change of the maps' carbon per AGB under the shared draws.

    The maps' carbon is AGB times the plots' ratio of carbon to AGB summed over all
    plot-epochs (:func:`models.plot_biomass.conversion_factors`); a shared draw moves that
    ratio by the same relative amount everywhere, so every carbon and sink map, and every
    sum of one, scales by ``1 + shift``: its SD over the draws is the maps' relative
    systematic SD, fully correlated within and across parcels.

    ``plots`` is the plot table (``plot_id``, ``epoch``, ``carbon_mg_ha``), ``shifts``
    :func:`shared_factor_shifts`' result.

    Raises
    ------
    PlotDataError
        A column is missing, or the plots' total carbon is not positive.
    """
    missing = [c for c in ("plot_id", "epoch", "carbon_mg_ha") if c not in plots.columns]
    if missing:
        raise PlotDataError(f"plot table: column(s) {missing} missing")
    table = plots.dropna(subset=["carbon_mg_ha"])
    carbon = float(table["carbon_mg_ha"].sum())
    if not carbon > 0:
        raise PlotDataError("the plot table's total carbon is not positive")
    keys = pd.MultiIndex.from_arrays(
        [table["plot_id"].astype(str), table["epoch"].astype(str)], names=["plot_id", "epoch"]
    )
    return np.asarray(shifts.reindex(keys).fillna(0.0).sum(axis=0), dtype=np.float64) / carbon
