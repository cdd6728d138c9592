"""Cross-fitted difference estimation: the population term of each fold's own map.

When the plots of a sample also trained the map, the difference estimator
(:func:`models.survey.assisted.difference_estimate`) is made valid by sample splitting
(double machine learning, Chernozhukov et al. 2018, Econometrics J. 21:C1-C68, §3; for
model-assisted survey estimation with learned predictions, Breidt & Opsomer 2017, Statist.
Sci. 32:190-205): the plots are split into the folds ``k = 1..K`` of the map's spatial
cross-validation, ``map_{-k}`` is the map fitted without fold ``k``, and within stratum
``h`` (``n_hk`` of its ``n_h`` plots in fold ``k``)::

    mean_h = sum_k (n_hk / n_h) [ M_h(map_{-k}) + mean_{i in h,k} (y_i - map_{-k}(x_i)) ]   (1)

with ``M_h(.)`` a map's mean over the stratum. Each fold's term is a difference estimator
whose map does not depend on the fold's plots, so its residuals are out of sample and the
usual variance estimator ``sum_h W_h^2 (1 - f_h) s_e,h^2 / n_h`` of the out-of-fold
residuals applies (Chernozhukov et al. 2018, Theorem 3.1 and its variance estimator
(3.9)). Written against the map fitted on all plots, ``map``, (1) is the difference
estimator with out-of-fold values at the plots plus a correction of the map's stratum mean::

    mean_h = M_h(map) + mean_{i in h} (y_i - map_{-k(i)}(x_i)) + c_h,
    c_h    = sum_k (n_hk / n_h) [ M_h(map_{-k}) - M_h(map) ]                                 (2)

Without ``c_h`` the estimate takes the fold maps' residuals but the full map's population
mean, and any systematic difference between them (fold models fitted on (K-1)/K of the
plots, or a map trained with other samples as well) is left in as a bias.

``M_h(map_{-k}) - M_h(map)`` need not come from K wall-to-wall predictions: a probability
sample of the stratum's cells, each with inclusion probability ``pi`` (a systematic grid
with a random start: every cell ``1 / s^2`` for a grid of spacing ``s`` cells), gives it by
the Horvitz-Thompson estimator. With ``D_i = sum_k (n_hk / n_h) (map_{-k}(x_i) - map(x_i))``
at sampled cell ``i`` of area ``a``, and ``A_h`` the stratum's (expansion) area::

    c_h = (1 / A_h) sum_{i in s_h} a D_i / pi                                                (3)
    V(c_h) = (1 / A_h^2) sum_{i in s_h} (1 - pi) (a D_i / pi)^2                              (4)

(4) is the Horvitz-Thompson variance estimator of Bernoulli sampling (Särndal, Swensson &
Wretman 1992, §3.3), which for a systematic sample, with no unbiased variance estimator of its own,
is the usual conservative substitute (Särndal et al. 1992 §3.4). The cells outside forest
land and those not yet forest are 0 in every map, ``D_i = 0``, and need not be listed.

Which ``k`` a plot belongs to is the pipeline's choice (each plot's fold is the fold in which
the model that maps it held it out); here ``plot_fold`` is given, with :data:`NO_FOLD` for a
plot whose map value is out of sample already (its model never trained on it): such a plot
takes ``map`` itself, its term in ``c_h`` is 0, and it counts in ``n_h``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.errors import SurveyError
from models.survey.design import StratifiedDesign

#: fold of a plot whose map value is out of sample already: the full map is its own
NO_FOLD = -1
#: stratum index of a sampled cell outside every stratum of the design
NO_STRATUM = -1


@dataclass(frozen=True)
class FoldCorrection:
    """The correction ``c_h`` of each stratum's map mean (eq. 2) and its standard error
    from the cell sample (eq. 4), in the unit of the maps per hectare."""

    mean_per_ha: NDArray[np.float64]
    se_per_ha: NDArray[np.float64]

    def total_se(self, design: StratifiedDesign) -> float:
        """Standard error of the correction of the sample's total (strata independent)."""
        return float(np.sqrt(np.sum((design.stratum_area_ha * self.se_per_ha) ** 2)))


def fold_shares(
    design: StratifiedDesign, plot_fold: ArrayLike, n_folds: int
) -> NDArray[np.float64]:
    """``n_hk / n_h`` per stratum ``h`` and fold ``k``, shape ``(H, n_folds)``; the plots
    of :data:`NO_FOLD` count in ``n_h`` only."""
    fold = np.asarray(plot_fold, dtype=np.int64)
    if fold.shape != (design.n_plots,):
        raise SurveyError(
            f"plot_fold has shape {fold.shape}; the design has {design.n_plots} plots"
        )
    if ((fold < NO_FOLD) | (fold >= n_folds)).any():
        raise SurveyError(
            f"plot_fold must be in [{NO_FOLD}, {n_folds - 1}], got {sorted(set(fold))}"
        )
    counts = np.zeros((design.n_strata, n_folds))
    inside = fold != NO_FOLD
    np.add.at(counts, (design.plot_stratum[inside], fold[inside]), 1.0)
    return counts / design.plots_per_stratum[:, None]


def fold_map_correction(
    design: StratifiedDesign,
    plot_fold: ArrayLike,
    *,
    cell_stratum: ArrayLike,
    cell_shift: ArrayLike,
    cell_ha: float,
    inclusion_probability: float,
) -> FoldCorrection:
    """The correction ``c_h`` of the map's stratum means (eqs. 2-4 of the module).

    Parameters
    ----------
    design
        The stratified plot sample (its stratum areas ``A_h``).
    plot_fold
        Fold of each plot of ``design`` (:data:`NO_FOLD`: none).
    cell_stratum
        Stratum index of each sampled cell (:data:`NO_STRATUM`: outside the design's strata).
    cell_shift
        ``map_{-k}(x_i) - map(x_i)`` at each sampled cell, shape ``(cells, K)``.
    cell_ha
        Area of one cell (ha).
    inclusion_probability
        Each cell's probability of being in the cell sample.
    """
    shift = np.asarray(cell_shift, dtype=np.float64)
    stratum = np.asarray(cell_stratum, dtype=np.int64)
    if shift.ndim != 2 or shift.shape[0] != stratum.shape[0]:
        raise SurveyError(
            f"cell_shift must be (cells, folds) with one row per cell of cell_stratum "
            f"({stratum.shape[0]}), got shape {shift.shape}"
        )
    if not np.isfinite(shift).all():
        raise SurveyError("cell_shift has non-finite values (a fold map without a value)")
    if not 0.0 < inclusion_probability <= 1.0:
        raise SurveyError(f"inclusion_probability must be in (0, 1], got {inclusion_probability}")
    if ((stratum < NO_STRATUM) | (stratum >= design.n_strata)).any():
        raise SurveyError(f"cell_stratum must be in [{NO_STRATUM}, {design.n_strata - 1}]")
    shares = fold_shares(design, plot_fold, shift.shape[1])
    inside = stratum != NO_STRATUM
    h = stratum[inside]
    # D_i: the fold maps' shifts weighted by the shares of the cell's stratum, times a / pi
    expanded = np.sum(shift[inside] * shares[h], axis=1) * cell_ha / inclusion_probability
    area = design.stratum_area_ha
    total = np.bincount(h, weights=expanded, minlength=design.n_strata)
    variance = np.bincount(
        h, weights=(1.0 - inclusion_probability) * expanded**2, minlength=design.n_strata
    )
    return FoldCorrection(mean_per_ha=total / area, se_per_ha=np.sqrt(variance) / area)


def systematic_cells(
    *, target_cells: int, candidates: int, seed: int
) -> tuple[slice, slice, float]:
    """A systematic sample of a grid's cells with a seeded random start: the row and column
    slices of the sampled cells and their inclusion probability ``1 / s^2``.

    The spacing ``s`` (cells) is the one that leaves about ``target_cells`` of the
    ``candidates`` cells of interest (e.g. forest land) in the sample; ``s = 1`` takes every
    cell (probability 1). A systematic grid spreads the sample evenly over the strata, so
    each stratum's correction (eq. 3) rests on its share of the cells.
    """
    if target_cells < 1:
        raise SurveyError(f"target_cells must be at least 1, got {target_cells}")
    s = max(1, int(np.floor(np.sqrt(max(candidates, 1) / target_cells))))
    rng = np.random.default_rng(seed)
    r0, c0 = (int(v) for v in rng.integers(0, s, size=2))
    return slice(r0, None, s), slice(c0, None, s), 1.0 / s**2
