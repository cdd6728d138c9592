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
#: tree-draw values of a block of :func:`shared_factor_shifts`: 2 MB for each float64
#: array of a block (1,310 trees at 200 draws), whatever the number of trees
CHUNK_VALUES = 2**18
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

    @property
    def n_draws(self) -> int:
        """The number of draws."""
        return int(self.carbon_fraction_z.size)


def shared_factor_shifts(
    trees: pd.DataFrame, draws: SharedDraws, *, chunk_values: int = CHUNK_VALUES
) -> pd.DataFrame:
    """The change of each plot-epoch's carbon density (Mg C/ha) under each shared draw.

    The trees are taken in blocks of at most ``chunk_values`` tree-draw values and each
    block added to its plot-epochs' running sums, so the memory follows the block and the
    result (plot-epochs x draws), not the trees times the draws. The sums are compensated
    (Kahan) in the table's order: the same numbers for every block size, to the bit.

    Parameters
    ----------
    trees
        The plots stage's tree table (``plots/trees.csv``: :data:`TREE_COLUMNS`; a tree
        whose ``root_shoot_ratio`` is empty has its BGB from a root equation).
    draws
        The shared factors' draws (:meth:`SharedDraws.draw`).
    chunk_values
        Tree-draw values of a block (:data:`CHUNK_VALUES`): at least one tree a block.

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
    t = trees.loc[trees["usable"].astype(str).str.lower() == "true", list(TREE_COLUMNS)]
    agb = t["agb_kg"].to_numpy(dtype=np.float64)
    per_ha = 1.0 / (KG_PER_MG * t["plot_area_ha"].to_numpy(dtype=np.float64))
    plot_epochs = pd.Series(agb * per_ha, index=t.index).groupby(
        [t["plot_id"].astype(str), t["epoch"].astype(str)], sort=True
    )
    # the class of a ratio tree's row is chosen by its whole plot's AGB, not its block's
    terms = _TreeTerms.of(t, plot_epochs.transform("sum").to_numpy(), per_ha, draws.root_shoot_u)
    total = _KahanSums(plot_epochs.ngroup().to_numpy(), plot_epochs.ngroups, draws.n_draws)
    size = max(1, chunk_values // draws.n_draws)
    for start in range(0, len(t), size):
        rows = slice(start, min(start + size, len(t)))
        total.add(rows, terms.shifts(rows, draws.carbon_fraction_z))
    index = plot_epochs.size().index.set_names(["plot_id", "epoch"])
    # not copied: pandas keeps the draws of a plot-epoch together in memory, as a group
    # sum leaves them, which sets the order in which the columns' sums add (map_factor_shifts)
    return pd.DataFrame(total.sums, index=index, copy=False)


class _KahanSums:
    """Per group and draw, the compensated (Kahan) sum of its rows' values in the rows'
    order, NaN left out, as pandas' group sum makes it (``groupby(...).sum()`` of groups
    that are not sorted), to the bit; fed a block of rows at a time."""

    def __init__(self, group: npt.NDArray[np.intp], n_groups: int, n_draws: int) -> None:
        self.group = group
        self.sums = np.zeros((n_groups, n_draws))
        self.compensation = np.zeros((n_groups, n_draws))

    def add(self, rows: slice, values: FloatArray) -> None:
        """Add the rows ``rows`` of the table (one row of ``values`` each) to their groups."""
        group = self.group[rows]
        order = np.argsort(group, kind="stable")
        run_start = np.flatnonzero(np.diff(group[order], prepend=-1))
        run_length = np.diff(np.append(run_start, order.size))
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size) - np.repeat(run_start, run_length)
        # each pass takes every group's next row, so a group's rows go in their order
        for r in range(int(rank.max(initial=-1)) + 1):
            row = np.flatnonzero(rank == r)
            g = group[row]
            value = values[row]
            s, c = self.sums[g], self.compensation[g]
            y = value - c
            t = s + y
            new_c = (t - s) - y
            new_c[np.isnan(new_c)] = 0.0  # an infinite sum: no compensation (as pandas)
            skip = np.isnan(value)
            self.sums[g] = np.where(skip, s, t)
            self.compensation[g] = np.where(skip, c, new_c)


@dataclass(frozen=True)
class _TreeTerms:
    """Per tree, what a draw's shift of its carbon needs (one value a tree; the tree-draw
    values are made a block at a time)."""

    #: AGB sd_a + BGB sd_b (kg): the carbon a unit carbon fraction deviate moves
    own_sd_kg: FloatArray
    agb_kg: FloatArray
    bgb_kg: FloatArray
    cf_bgb: FloatArray
    sd_bgb: FloatArray
    #: 1 / (1000 plot area): kg per tree to Mg/ha
    per_ha: FloatArray
    #: trees whose BGB is AGB x a ratio, and the row of each: index into ``ratio_draws``
    by_ratio: npt.NDArray[np.bool_]
    ratio_row: npt.NDArray[np.intp]
    #: per ratio row (species and AGB class), the drawn ratio of each draw
    ratio_draws: FloatArray

    @classmethod
    def of(
        cls, t: pd.DataFrame, plot_agb_mg_ha: FloatArray, per_ha: FloatArray, u: FloatArray
    ) -> _TreeTerms:
        # each species looked up once (a code per tree, not a name)
        species, names = pd.factorize(t["species"].astype(str))
        names = np.asarray(names, dtype=object)
        agb = t["agb_kg"].to_numpy(dtype=np.float64)
        bgb = t["bgb_kg"].to_numpy(dtype=np.float64)
        sd_bgb = allometry.carbon_fraction_sd(names, "belowground")[species]
        sd_agb = allometry.carbon_fraction_sd(names, "aboveground")[species]
        by_ratio = np.isfinite(t["root_shoot_ratio"].to_numpy(dtype=np.float64))
        row, ratio_draws = _ratio_rows(species, names, plot_agb_mg_ha, by_ratio, u)
        return cls(
            own_sd_kg=agb * sd_agb + bgb * sd_bgb,
            agb_kg=agb,
            bgb_kg=bgb,
            cf_bgb=allometry.carbon_fraction(names, "belowground")[species],
            sd_bgb=sd_bgb,
            per_ha=per_ha,
            by_ratio=by_ratio,
            ratio_row=row,
            ratio_draws=ratio_draws,
        )

    def shifts(self, rows: slice, carbon_fraction_z: FloatArray) -> FloatArray:
        """The trees ``rows``' shift of their plot's carbon density (Mg C/ha) per draw."""
        z = carbon_fraction_z[None, :]
        # carbon = AGB cf_a + BGB cf_b; a draw moves cf by z sd and, for trees whose BGB is
        # AGB x ratio, BGB to AGB x the drawn ratio r: with dB = AGB r - BGB,
        # carbon' - carbon = z (AGB sd_a + BGB sd_b) + dB (cf_b + z sd_b)
        shift = z * self.own_sd_kg[rows, None]
        ratio = np.flatnonzero(self.by_ratio[rows])
        if ratio.size:
            tree = ratio + rows.start
            ratios = self.ratio_draws[self.ratio_row[tree]]
            d_bgb = self.agb_kg[tree, None] * ratios - self.bgb_kg[tree, None]
            shift[ratio] += d_bgb * (self.cf_bgb[tree, None] + z * self.sd_bgb[tree, None])
        shift *= self.per_ha[rows, None]
        return shift


def _ratio_rows(
    species: npt.NDArray[np.intp],
    names: npt.NDArray[np.object_],
    plot_agb_mg_ha: FloatArray,
    by_ratio: npt.NDArray[np.bool_],
    u: FloatArray,
) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Per tree, its root-to-shoot row (the class of its plot's AGB, as the plots stage
    chooses it), and per row the drawn ratio of each draw. ``species`` is each tree's index
    into ``names``. Row 0 is NaN: the row of a tree without a ratio or without a class
    (whose shifts are NaN, left out of its plot's sum)."""
    row = np.zeros(species.size, dtype=np.intp)
    draws = [np.full(u.size, np.nan)]
    for sp in np.unique(species[by_ratio]):
        trees = by_ratio & (species == sp)
        for lo, hi, value, low, high in allometry.root_shoot_classes(str(names[sp])):
            cls = trees & (plot_agb_mg_ha >= lo) & (plot_agb_mg_ha < hi)
            if cls.any():
                dist = triang((value - low) / (high - low), loc=low, scale=high - low)
                row[cls] = len(draws)
                draws.append(dist.ppf(u))
    return row, np.asarray(draws, dtype=np.float64)


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
