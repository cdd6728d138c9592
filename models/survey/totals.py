"""Every survey estimate of one plot sample: stock per epoch and stock change, by each estimator.

One function, :func:`sample_totals`, runs the estimators of :mod:`models.survey` on one
stratified plot sample (the region's inventory or a project's monitoring plots) with a
wall-to-wall map as auxiliary variable, and marks the one a report or a credit calculation
uses (:func:`choose`). The pipeline's ``estimate`` stage and the repeated-sampling
benchmark both call it, so what is validated is what runs.

Quantities and units: ``stock`` at each epoch from the plots' carbon density (Mg C/ha) and
the map's; ``change`` between the first and the last epoch from the plots measured at both
(paired differences, AR-TOOL14 "direct estimation of change by re-measurement"), scaled by
``change_factor`` (e.g. 44/12 for t CO2e).

Estimators (names used in ``estimates/totals.csv`` and the methodology files):

``stratified``
    Plot-only stratified estimator, CDM AR-TOOL14 (:mod:`models.survey.stratified`).
``difference``
    Difference estimator with the map as auxiliary
    (:func:`~models.survey.assisted.difference_estimate`).
``greg``
    GREG with a linear model on the map within strata
    (:func:`~models.survey.assisted.greg_estimate`).

The estimator chosen by ``"most_precise"`` is the one of these with the smallest standard
error; all three are design-consistent, so choosing among them keeps the inference
design-based (the repeated-sampling benchmark measures what the choice costs in coverage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from models.errors import SurveyError
from models.survey.assisted import difference_estimate, greg_estimate
from models.survey.design import (
    Estimate,
    Quantity,
    StratifiedDesign,
    estimate_from_mean,
    satterthwaite_df,
)
from models.survey.stratified import stratified_estimate

#: estimator names, plot-only first (the reference of the relative efficiency)
ESTIMATORS = ("stratified", "difference", "greg")
#: the design-based estimator that uses no map
PLOT_ONLY = "stratified"
#: the rule that picks the smallest standard error among :data:`ESTIMATORS`
MOST_PRECISE = "most_precise"
#: prefix of the name of a stock change (``change_<start>_<end>``)
CHANGE_PREFIX = "change_"


def stock_quantity(epoch: str) -> str:
    """The name of the stock at ``epoch`` in the totals (``stock_<epoch>``)."""
    return f"stock_{epoch}"


def change_quantity(first: str, last: str) -> str:
    """The name of the stock change from ``first`` to ``last`` (``change_<first>_<last>``)."""
    return f"{CHANGE_PREFIX}{first}_{last}"


def is_change(quantity: str) -> bool:
    """Whether ``quantity`` names a stock change."""
    return quantity.startswith(CHANGE_PREFIX)


@dataclass(frozen=True)
class SampleTotal:
    """One estimate of one quantity from one sample, with what a reader compares it to."""

    quantity: str
    unit: str
    estimate: Estimate
    #: variance of the plot-only estimate over this one's (> 1: the map helps)
    relative_efficiency: float
    #: the map's own total over the sample's population (same unit), for comparison
    map_total: float


def _estimates(
    design: StratifiedDesign,
    y: NDArray[np.float64],
    m: NDArray[np.float64],
    map_mean: NDArray[np.float64],
    *,
    quantity: Quantity,
    confidence: float,
) -> dict[str, Estimate]:
    q = quantity
    out = {
        "stratified": stratified_estimate(design, y, quantity=q, confidence=confidence),
        "difference": difference_estimate(
            design, y, m, map_mean, quantity=q, confidence=confidence
        ),
    }
    try:  # a line per stratum needs a residual degree of freedom and varying map values
        greg = greg_estimate(design, y, m, map_mean, quantity=q, confidence=confidence)
        out["greg"] = replace(greg, estimator="greg")  # the linear model: "greg" in configs
    except SurveyError:
        pass  # not estimable on this sample: choose() says so if a rule names it
    return out


def sample_totals(
    design: StratifiedDesign,
    *,
    plot_values: Mapping[str, NDArray[np.float64]],
    map_at_plots: Mapping[str, NDArray[np.float64]],
    map_stratum_mean: Mapping[str, NDArray[np.float64]],
    epochs: Sequence[str],
    stock_unit: str,
    change_factor: float,
    change_unit: str,
    confidence: float,
) -> list[SampleTotal]:
    """Stock at every epoch and change from the first to the last epoch, by each estimator.

    Parameters
    ----------
    design
        The sample's strata (areas) and each plot's stratum.
    plot_values, map_at_plots
        Per epoch, one density per plot (NaN where a plot was not measured at that epoch);
        the map's value at the plot must be on the same support and unit as the plot's.
    map_stratum_mean
        Per epoch, the map's mean density over each stratum's whole area.
    epochs
        The epochs, in time order; the change is from the first to the last.
    change_factor, change_unit
        Factor from the stock unit to the change's unit (e.g. 44/12: Mg C to t CO2e).
    confidence
        Two-sided confidence level of the intervals.

    Raises
    ------
    SurveyError
        Fewer than two measured plots in a stratum, or arrays that do not match the design.
    """
    rows: list[SampleTotal] = []

    def add(quantity: str, unit: str, ests: dict[str, Estimate], map_total: float) -> None:
        ref = ests[PLOT_ONLY].se ** 2
        for est in ests.values():
            eff = ref / est.se**2 if est.se > 0 else float("inf")
            rows.append(SampleTotal(quantity, unit, est, eff, map_total))

    for e in epochs:
        y, m = plot_values[e], map_at_plots[e]
        ok = np.isfinite(y)
        sub = design.subset(ok)
        ests = _estimates(
            sub, y[ok], np.nan_to_num(m[ok]), map_stratum_mean[e], quantity="stock",
            confidence=confidence,
        )  # fmt: skip
        add(
            stock_quantity(e),
            stock_unit,
            ests,
            float(np.sum(design.stratum_area_ha * map_stratum_mean[e])),
        )
    first, last = epochs[0], epochs[-1]
    both = np.isfinite(plot_values[first]) & np.isfinite(plot_values[last])
    if not both.any():
        raise SurveyError(f"no plot was measured at both epochs {first} and {last}")
    sub = design.subset(both)
    d = (plot_values[last][both] - plot_values[first][both]) * change_factor
    dm = (
        np.nan_to_num(map_at_plots[last][both]) - np.nan_to_num(map_at_plots[first][both])
    ) * change_factor
    dm_mean = (map_stratum_mean[last] - map_stratum_mean[first]) * change_factor
    # the plot-only estimate of d is AR-TOOL14's direct estimation of change (eqs. 4-8)
    ests = _estimates(sub, d, dm, dm_mean, quantity="change", confidence=confidence)
    add(
        change_quantity(first, last),
        change_unit,
        ests,
        float(np.sum(design.stratum_area_ha * dm_mean)),
    )
    return rows


def independent_sum(parts: Sequence[Sequence[SampleTotal]], *, area_ha: float) -> list[SampleTotal]:
    """Totals over the union of disjoint populations, each estimated from its own sample.

    Independent samples of disjoint parts of a population (e.g. the region's inventory
    plots estimating the domain outside a project, and the project's own plots inside it)
    give the whole population's total as the sum of the parts' totals, with the sum of
    their variances (the samples are drawn independently: no covariance term). This is
    stratified estimation with the parts as strata (Cochran 1977 §5.2; Särndal et al.
    1992 §3.7 and §10.3 for a domain total from a stratified sample); the interval's
    degrees of freedom are Satterthwaite's for the sum of the parts' variances (Cochran
    1977 §5.4).

    Each part must hold the same estimators of the same quantities; a (quantity,
    estimator) missing from a part is missing from the result. The relative efficiency is
    recomputed against the summed plot-only estimate, and ``area_ha`` (the union's area)
    gives the mean density.
    """
    if not parts or area_ha <= 0:
        raise SurveyError(f"independent_sum needs parts and a positive area, got {area_ha}")
    keyed = [{(t.quantity, t.estimate.estimator): t for t in part} for part in parts]
    keys = [k for k in keyed[0] if all(k in other for other in keyed[1:])]
    summed: dict[tuple[str, str], tuple[Estimate, float, str]] = {}
    for key in keys:
        members = [part[key] for part in keyed]
        ests = [t.estimate for t in members]
        variances = np.array([e.se**2 for e in ests])
        total = float(sum(e.total for e in ests))
        estimate = estimate_from_mean(
            key[1], ests[0].quantity, mean_per_ha=total / area_ha,
            var_mean=float(variances.sum()) / area_ha**2, area_ha=area_ha,
            df=satterthwaite_df(variances, np.array([e.df for e in ests])),
            n=sum(e.n for e in ests), confidence=ests[0].confidence,
        )  # fmt: skip
        map_total = float(sum(t.map_total for t in members))
        summed[key] = estimate, map_total, members[0].unit
    out = []
    for (quantity, _), (estimate, map_total, unit) in summed.items():
        ref = summed.get((quantity, PLOT_ONLY))
        eff = float("nan")
        if ref is not None:
            eff = ref[0].se ** 2 / estimate.se**2 if estimate.se > 0 else float("inf")
        out.append(SampleTotal(quantity, unit, estimate, eff, map_total))
    return out


def choose(totals: Sequence[SampleTotal], quantity: str, rule: str) -> SampleTotal:
    """The estimate of ``quantity`` that ``rule`` names: an estimator, or ``most_precise``.

    Raises
    ------
    SurveyError
        ``rule`` is neither an estimator name nor ``most_precise``, or it names an
        estimator that could not run on this sample.
    """
    cands = [t for t in totals if t.quantity == quantity]
    if rule == MOST_PRECISE:
        return min(cands, key=lambda t: (t.estimate.se, ESTIMATORS.index(t.estimate.estimator)))
    if rule not in ESTIMATORS:
        raise SurveyError(f"unknown estimator {rule!r}; use one of {[*ESTIMATORS, MOST_PRECISE]}")
    for t in cands:
        if t.estimate.estimator == rule:
            return t
    raise SurveyError(
        f"estimator {rule!r} could not run on this sample (GREG needs 3 plots and varying map "
        "values in every stratum)"
    )


def systematic_sd(
    design: StratifiedDesign,
    *,
    plot_value_draws: Sequence[Mapping[str, NDArray[np.float64]]],
    map_scales: NDArray[np.float64],
    map_at_plots: Mapping[str, NDArray[np.float64]],
    map_stratum_mean: Mapping[str, NDArray[np.float64]],
    epochs: Sequence[str],
    change_factor: float,
) -> dict[tuple[str, str], float]:
    """The SD over draws of every estimate of :func:`sample_totals` under an error shared
    by every plot (one draw of the conversion factors for all plots and epochs).

    Draw ``k`` takes the plot values ``plot_value_draws[k]`` (per epoch, as
    ``plot_values`` of :func:`sample_totals`) and the map times ``map_scales[k]`` (maps
    converted from biomass with the same factors move with them). The estimators are
    rerun on every draw, so a stock change takes the draw of both epochs and its SD
    follows from the estimator, not from an assumption of how the error cancels.

    Returns
    -------
    dict
        ``(quantity, estimator)`` -> SD over the draws (unit of the estimate).

    Raises
    ------
    SurveyError
        Fewer than two draws, or not one map scale per draw.
    """
    n = len(plot_value_draws)
    if n < 2 or np.shape(map_scales) != (n,):
        raise SurveyError(
            f"the systematic SD needs at least 2 draws and one map scale per draw; got {n} "
            f"draws and map scales of shape {np.shape(map_scales)}"
        )
    totals: dict[tuple[str, str], list[float]] = {}
    for values, scale in zip(plot_value_draws, map_scales, strict=True):
        # units and the confidence level do not change a total
        for t in sample_totals(
            design, plot_values=values,
            map_at_plots={e: m * scale for e, m in map_at_plots.items()},
            map_stratum_mean={e: m * scale for e, m in map_stratum_mean.items()},
            epochs=epochs, stock_unit="", change_factor=change_factor, change_unit="",
            confidence=0.9,
        ):  # fmt: skip
            totals.setdefault((t.quantity, t.estimate.estimator), []).append(t.estimate.total)
    return {key: float(np.std(v, ddof=1)) for key, v in totals.items()}
