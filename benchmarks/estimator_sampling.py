"""Repeated-sampling validation of the survey estimators on a simulated region (issue 14).

How a survey statistician validates an estimator: keep the population and the maps fixed,
draw many samples of the same design, run the estimator on each and compare with the
known truth. Here the population is a simulated region's true carbon density
(``truth/carbon_<epoch>.tif``), the auxiliary maps are a pipeline run's
(``rasters/carbon_<epoch>.tif``, NaN outside mapped forest land counted as 0, as the
``estimate`` stage does), and the designs are the region's plot samples
(``plots/design.gpkg``, layer ``strata``: each stratum's sampling frame and area;
``plots/plots.gpkg``: how many plots each stratum has).

One draw, for each sample (``inventory``: the AOI's forest land; ``project``):

1. in every stratum, ``n_h`` plot squares (the plots' area, axis-parallel like the
   simulator's; overlaps allowed: at ~100 plots in thousands of hectares they are rare)
   placed as the design file says: where the stratum has a ``centre_area_ha`` (the
   buffer method), centres uniform over the frame dilated by the square
   (:func:`pipeline.simulate.sampling.centre_region`), and each plot sees only the frame's
   part of its square; otherwise centres uniform over the positions whose whole square
   lies inside the frame;
2. a plot's true value is the true density (inside the frame, for the buffer method)
   averaged over its square with exact fractional cell coverage (:func:`square_means`),
   plus a measurement error: zero-mean
   normal with the plots stage's median relative SD (``carbon_sd_mg_ha / carbon_mg_ha`` of
   ``plots/plot_biomass.csv``), drawn independently at each epoch (the simulator draws
   its measurement errors per epoch; a shared allometric error would not be independent);
   the map value at the plot is the map averaged the same way;
3. :func:`models.survey.totals.sample_totals`, the function the ``estimate`` stage runs,
   gives stock at each epoch and change by every estimator, with the maps' stratum means
   computed once, exactly, over the frames (:mod:`pipeline.zonal`);
   :func:`~models.survey.totals.choose` adds the ``most_precise`` pick;
4. for the project, :func:`models.credits.credit_steps` turns each rule's change estimate
   into credits, with the estimate's Student-t half-width as the interval.

Each draw also gives the ``estimate`` stage's ``inventory+project`` totals: the inventory's
estimate of its population outside the project's frames (its plots whose centre lies in
them counting as 0, the map's totals over the frames minus the project's) plus the
project sample's, summed by :func:`models.survey.totals.independent_sum`; its truth is the
true total over both populations.

The truth is the true total over each sample's population (the union of its frames);
stratum totals are the expansion area (``centre_area_ha``, else ``area_ha``) times the
mean density per hectare of it, as in the ``estimate`` stage.
Printed per sample, quantity and estimator: relative bias, relative RMSE, 90 % interval
coverage with its Monte Carlo SE, mean relative half-width U, relative efficiency over
the plot-only estimator (mean of the per-draw variance ratios, and the ratio of the
empirical variances); for credits, how often they exceed the true net removals. The
mean true density at the drawn squares against the stratum's mean shows the edge effect
of keeping squares inside the frames (and its absence under the buffer method).

Plot squares are axis-parallel on a north-up grid, so their exact coverage of a cell is a
product of two interval overlaps; :func:`square_means` computes that for all plots at
once, and the run starts by checking it against exactextract (:mod:`pipeline.zonal`) on a
few hundred squares. A plot-support raster (a moving mean at cell centres) would move
every plot to the nearest cell centre; the exact means cost no more.

Usage: ``python benchmarks/estimator_sampling.py --data data/nanping --run outputs/nanping
[--region nanping] [--draws 500] [--seed 1]``
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from scipy.ndimage import minimum_filter

from models.allometry import co2_per_c
from models.credits import Methodology, credit_steps
from models.survey.design import StratifiedDesign, relative_half_width
from models.survey.totals import (
    ESTIMATORS,
    MOST_PRECISE,
    PLOT_ONLY,
    SampleTotal,
    change_quantity,
    choose,
    independent_sum,
    is_change,
    sample_totals,
    stock_quantity,
)
from pipeline.config import load_config, region_config_path
from pipeline.contracts import (
    PLOT_BIOMASS_RELPATH,
    credits_job,
    map_relpath,
    with_project_sample,
)
from pipeline.simulate.sampling import centre_region
from pipeline.units import M2_PER_HA
from pipeline.zonal import coverage_cells, covered_fraction_sum, fraction_raster, weighted_sum

#: the estimate rules scored, plot-only first (the reference of the relative efficiency)
RULES = (*ESTIMATORS, MOST_PRECISE)
#: how the report names each sample's population
POPULATION_NAMES = {"inventory": "AOI forest land", "project": "project"}
#: the sum of the inventory outside the project and the project sample (``estimate`` stage)
COMBINED = with_project_sample("inventory")
#: how the report names the sum's population
COMBINED_NAME = "AOI and project"
#: squares checked against exactextract before the run
CHECKED_SQUARES = 300


@dataclass(frozen=True)
class Stratum:
    """A stratum's sampling frame on the raster grid, its plot count and its true means."""

    name: str
    #: the expansion area (ha): the centre region's under the buffer method, else the frame's
    area_ha: float
    n_plots: int
    #: the sampling frame (prepared for repeated containment tests)
    frame: shapely.Geometry
    #: row and column of each cell the frame touches (where plot centres can lie)
    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    #: per cell: the square around any centre in it lies inside the frame
    interior: NDArray[np.bool_]
    #: per epoch, the true and the map's total over the frame per hectare of ``area_ha``
    truth_mean: Mapping[str, float]
    map_mean: Mapping[str, float]
    #: buffer method: the region of plot centres (prepared) and the frame's share of each
    #: cell, by which the densities are multiplied; ``None`` when plots stay inside
    centres: shapely.Geometry | None = None
    share: NDArray[np.float64] | None = None

    def masked(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        """``values`` as this stratum's plots see them."""
        return values if self.share is None else values * self.share


@dataclass(frozen=True)
class Population:
    """One sample's strata and the fixed true and map densities its plots are drawn from."""

    strata: tuple[Stratum, ...]
    transform: Affine
    half_side_m: float
    #: per epoch (time order), the density on the grid with NaN as 0
    truth: Mapping[str, NDArray[np.float64]]
    maps: Mapping[str, NDArray[np.float64]]

    @property
    def epochs(self) -> list[str]:
        return list(self.truth)

    @property
    def area_ha(self) -> float:
        return float(sum(s.area_ha for s in self.strata))

    def design(self) -> StratifiedDesign:
        """The design of every draw: ``n_h`` plots per stratum, plots ordered by stratum."""
        labels = [s.name for s in self.strata for _ in range(s.n_plots)]
        return StratifiedDesign.from_labels(labels, {s.name: s.area_ha for s in self.strata})

    def true_totals(self, change_factor: float) -> dict[str, float]:
        """True stock per epoch and change from the first to the last (x ``change_factor``)."""
        stock = {e: sum(s.area_ha * s.truth_mean[e] for s in self.strata) for e in self.epochs}
        return stock_and_change(stock, change_factor)


def stock_and_change(stock: Mapping[str, float], change_factor: float) -> dict[str, float]:
    """Totals keyed by quantity: the stock per epoch (``stock``, in time order) and the
    change from the first to the last epoch times ``change_factor``."""
    epochs = list(stock)
    return {
        **{stock_quantity(e): v for e, v in stock.items()},
        change_quantity(epochs[0], epochs[-1]): (stock[epochs[-1]] - stock[epochs[0]])
        * change_factor,
    }


def population(
    frames: gpd.GeoDataFrame,
    n_plots: Mapping[str, int],
    *,
    truth: Mapping[str, NDArray[np.float64]],
    maps: Mapping[str, NDArray[np.float64]],
    transform: Affine,
    crs: str,
    plot_area_ha: float,
) -> Population:
    """A sample's population from its frames (columns ``stratum``, ``area_ha`` and, for
    the buffer method, ``centre_area_ha``) and rasters.

    ``truth`` and ``maps`` map each epoch, in time order, to a density array on the
    north-up grid ``transform``; NaN counts as 0. Stratum totals use the exact fractional
    cell coverage of the frame (:mod:`pipeline.zonal`).
    """
    truth = {e: np.nan_to_num(np.asarray(v, dtype=np.float64)) for e, v in truth.items()}
    maps = {e: np.nan_to_num(np.asarray(v, dtype=np.float64)) for e, v in maps.items()}
    shape = next(iter(truth.values())).shape
    half = math.sqrt(plot_area_ha * M2_PER_HA) / 2.0
    # a square centred anywhere in a cell stays within `reach` cells of it
    reach = math.ceil(half / abs(transform.a))
    cell_ha = abs(transform.a * transform.e) / M2_PER_HA
    covs = coverage_cells(frames, transform=transform, shape=shape, crs=crs)
    centre_area = frames.get("centre_area_ha", pd.Series(np.nan, index=frames.index))
    strata = []
    for name, area, centre_ha, frame, cov in zip(
        frames["stratum"], frames["area_ha"], centre_area, frames.geometry, covs, strict=True
    ):
        fraction = fraction_raster(cov, shape)
        inner = minimum_filter(fraction >= 1.0, size=2 * reach + 1, mode="constant", cval=False)
        shapely.prepare(frame)
        rows, cols = np.divmod(cov.cell, shape[1])
        centres, share, expansion = None, None, float(area)
        if np.isfinite(centre_ha):
            centres = centre_region(frame, half)
            shapely.prepare(centres)
            share = fraction
            expansion = float(centre_ha)
        per_ha = cell_ha / expansion
        strata.append(
            Stratum(
                name=str(name),
                area_ha=expansion,
                n_plots=int(n_plots[str(name)]),
                frame=frame,
                rows=rows,
                cols=cols,
                interior=inner.reshape(-1)[cov.cell],
                truth_mean={e: weighted_sum(cov, v) * per_ha for e, v in truth.items()},
                map_mean={e: weighted_sum(cov, v) * per_ha for e, v in maps.items()},
                centres=centres,
                share=share,
            )
        )
    return Population(tuple(strata), transform, half, truth, maps)


def draw_centres(
    rng: np.random.Generator, stratum: Stratum, k: int, *, transform: Affine, half_side_m: float
) -> NDArray[np.float64]:
    """``k`` plot centres (k, 2), uniform over the stratum's centre region (buffer method)
    or over the positions whose square fits in the frame.

    Rejection sampling. Buffer method: a candidate is a uniform point of the region's
    bounding box, kept when the region contains it. Otherwise a candidate is a uniform
    point in a uniformly chosen cell that the frame touches (the cells have equal areas);
    it is kept at once in an interior cell, and elsewhere when the frame contains its
    square.
    """
    kept: list[NDArray[np.float64]] = []
    have = 0
    h = half_side_m
    while stratum.centres is not None and have < k:
        xmin, ymin, xmax, ymax = stratum.centres.bounds
        batch = max(4 * (k - have), 1024)
        x, y = rng.uniform(xmin, xmax, batch), rng.uniform(ymin, ymax, batch)
        new = np.column_stack([x, y])[shapely.contains_xy(stratum.centres, x, y)][: k - have]
        kept.append(new)
        have += len(new)
    while have < k:
        batch = max(2 * (k - have), 1024)
        pick = rng.integers(0, stratum.interior.size, batch)
        offset = rng.random((batch, 2))
        # north-up grid (checked by coverage_cells when the population was built)
        x = transform.c + transform.a * (stratum.cols[pick] + offset[:, 0])
        y = transform.f + transform.e * (stratum.rows[pick] + offset[:, 1])
        ok = stratum.interior[pick].copy()
        edge = ~ok
        ok[edge] = shapely.contains(
            stratum.frame, shapely.box(x[edge] - h, y[edge] - h, x[edge] + h, y[edge] + h)
        )
        new = np.column_stack([x, y])[ok][: k - have]
        kept.append(new)
        have += len(new)
    return np.concatenate(kept)


def _overlaps(
    edge: NDArray[np.float64], width: float, n_cells: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Cells along one axis under ``[edge, edge + width]`` (cell units) and their overlaps;
    beyond the raster (a buffer-method square past the edge) the overlap is 0."""
    index = np.floor(edge).astype(np.int64)[:, None] + np.arange(math.ceil(width) + 1)
    overlap = np.minimum(edge[:, None] + width, index + 1) - np.maximum(edge[:, None], index)
    overlap = np.where((index < 0) | (index >= n_cells), 0.0, np.clip(overlap, 0.0, None))
    return np.clip(index, 0, n_cells - 1), overlap


def square_means(
    values: NDArray[np.float64],
    centres: NDArray[np.float64],
    *,
    transform: Affine,
    half_side_m: float,
) -> NDArray[np.float64]:
    """Mean of ``values`` over the axis-parallel square around each centre (exact coverage).

    On a north-up grid a square's coverage of a cell is the product of its overlaps with
    the cell's column and row, so the fractional-coverage mean is two small weight
    vectors per square. The mean is over the whole square: a part beyond the raster
    counts as 0.
    """
    res_x, res_y = transform.a, -transform.e
    cols, wx = _overlaps(
        (centres[:, 0] - half_side_m - transform.c) / res_x,
        2 * half_side_m / res_x,
        values.shape[1],
    )
    rows, wy = _overlaps(
        (transform.f - centres[:, 1] - half_side_m) / res_y,
        2 * half_side_m / res_y,
        values.shape[0],
    )
    cells = values[rows[:, :, None], cols[:, None, :]]
    total = np.einsum("ni,nj,nij->n", wy, wx, cells)
    return total / ((2 * half_side_m / res_x) * (2 * half_side_m / res_y))


def exact_square_means(
    values: NDArray[np.float64],
    centres: NDArray[np.float64],
    *,
    transform: Affine,
    half_side_m: float,
    crs: str,
) -> NDArray[np.float64]:
    """The same means by exactextract (:mod:`pipeline.zonal`): the reference of the check."""
    h = half_side_m
    x, y = centres[:, 0], centres[:, 1]
    squares = gpd.GeoDataFrame(geometry=shapely.box(x - h, y - h, x + h, y + h), crs=crs)
    covs = coverage_cells(squares, transform=transform, shape=values.shape, crs=crs)
    return np.array([weighted_sum(c, values) / covered_fraction_sum(c) for c in covs])


@dataclass(frozen=True)
class Draws:
    """Every draw's estimates of one sample, and where its plots fell."""

    #: one row per draw, quantity and rule: total, se, half_width, lower, upper, u, rel_eff
    estimates: pd.DataFrame
    #: per stratum and epoch: the frame's true mean density and the mean at the drawn
    #: squares (with its Monte Carlo SE), and the same two of the map: the edge effect of
    #: keeping squares inside the frame
    support: pd.DataFrame
    #: every draw's totals (:func:`~models.survey.totals.sample_totals`)
    totals: list[list[SampleTotal]]
    #: with a :class:`Domain`: every draw's totals of the domain alone
    domain_totals: list[list[SampleTotal]] | None = None


@dataclass(frozen=True)
class Domain:
    """The part of a population outside another sample's frames (the project's), as the
    ``estimate`` stage's ``<S>+project`` rows estimate it: every plot of a draw stays in
    its stratum, one whose centre lies in ``outside`` counting as 0 (plot and map value),
    and each stratum's map total is taken over its frame minus ``outside``."""

    outside: shapely.Geometry
    #: per stratum, the part's map and true totals (density x ha) per epoch
    map_total: Mapping[str, Mapping[str, float]]
    truth_total: Mapping[str, Mapping[str, float]]

    def true_totals(self, change_factor: float) -> dict[str, float]:
        """True stock per epoch over the domain and change (x ``change_factor``)."""
        epochs = list(next(iter(self.truth_total.values())))
        stock = {e: sum(t[e] for t in self.truth_total.values()) for e in epochs}
        return stock_and_change(stock, change_factor)


def domain(
    pop: Population, frames: gpd.GeoDataFrame, outside: shapely.Geometry, *, crs: str
) -> Domain:
    """The :class:`Domain` of ``pop`` (built from ``frames``) outside ``outside``."""
    shape = next(iter(pop.truth.values())).shape
    cell_ha = abs(pop.transform.a * pop.transform.e) / M2_PER_HA
    parts = frames.assign(geometry=frames.geometry.difference(outside))
    left = ~parts.geometry.is_empty.to_numpy()  # a stratum wholly outside has no part
    covs = iter(coverage_cells(parts[left], transform=pop.transform, shape=shape, crs=crs))
    map_total, truth_total = {}, {}
    for s, has_part in zip(pop.strata, left, strict=True):
        cov = next(covs) if has_part else None
        for out, values in ((map_total, pop.maps), (truth_total, pop.truth)):
            out[s.name] = {
                e: 0.0 if cov is None else weighted_sum(cov, v) * cell_ha for e, v in values.items()
            }
    shapely.prepare(outside)
    return Domain(outside, map_total, truth_total)


def run_draws(
    pop: Population,
    *,
    draws: int,
    rng: np.random.Generator,
    plot_rel_sd: float,
    confidence: float,
    change_factor: float,
    stock_unit: str = "Mg C",
    change_unit: str = "t CO2e",
    part: Domain | None = None,
) -> Draws:
    """Draw ``draws`` samples of the design from ``pop`` and estimate every total from each.

    Plot values are the true square means (of the density the stratum's plots see,
    :meth:`Stratum.masked`) times ``1 + plot_rel_sd x N(0, 1)``, drawn independently per
    plot and epoch; the map values at plots are the map's square means, seen alike. With
    ``part``, each draw's plots also estimate that domain's totals.
    """
    design = pop.design()
    xy = [
        draw_centres(
            rng, s, draws * s.n_plots, transform=pop.transform, half_side_m=pop.half_side_m
        ).reshape(draws, s.n_plots, 2)
        for s in pop.strata
    ]
    shape = (draws, design.n_plots)

    def at_squares(values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each draw's plot means of ``values`` (draws, plots), plots ordered by stratum."""
        means = [
            square_means(
                s.masked(values), c.reshape(-1, 2), transform=pop.transform,
                half_side_m=pop.half_side_m,
            ).reshape(draws, s.n_plots)
            for s, c in zip(pop.strata, xy, strict=True)
        ]  # fmt: skip
        return np.concatenate(means, axis=1)

    true = {e: at_squares(pop.truth[e]) for e in pop.epochs}
    measured = {e: true[e] * (1.0 + plot_rel_sd * rng.standard_normal(shape)) for e in pop.epochs}
    at_plots = {e: at_squares(pop.maps[e]) for e in pop.epochs}
    map_mean = {e: np.array([s.map_mean[e] for s in pop.strata]) for e in pop.epochs}
    units = {"stock_unit": stock_unit, "change_factor": change_factor,
             "change_unit": change_unit, "confidence": confidence}  # fmt: skip
    rows, every, in_part = [], [], []
    centres = np.concatenate(xy, axis=1)  # (draws, plots, 2), plots ordered by stratum
    if part is not None:
        part_mean = {
            e: np.array([part.map_total[s.name][e] / s.area_ha for s in pop.strata])
            for e in pop.epochs
        }
    for d in range(draws):
        totals = sample_totals(
            design,
            plot_values={e: v[d] for e, v in measured.items()},
            map_at_plots={e: v[d] for e, v in at_plots.items()},
            map_stratum_mean=map_mean,
            epochs=pop.epochs,
            **units,
        )
        rows.extend(rule_rows(d, totals))
        every.append(totals)
        if part is None:
            continue
        keep = ~shapely.contains_xy(part.outside, centres[d, :, 0], centres[d, :, 1])
        in_part.append(
            sample_totals(
                design,
                plot_values={e: np.where(keep, v[d], 0.0) for e, v in measured.items()},
                map_at_plots={e: np.where(keep, v[d], 0.0) for e, v in at_plots.items()},
                map_stratum_mean=part_mean,
                epochs=pop.epochs,
                **units,
            )
        )
    estimates = pd.DataFrame(rows, columns=list(ESTIMATE_COLUMNS))
    support = []
    start = 0
    for s in pop.strata:
        for e in pop.epochs:
            v = true[e][:, start : start + s.n_plots]
            m = at_plots[e][:, start : start + s.n_plots]
            support.append(
                (s.name, e, s.truth_mean[e], v.mean(), v.std(ddof=1) / math.sqrt(v.size),
                 s.map_mean[e], m.mean())
            )  # fmt: skip
        start += s.n_plots
    cols = ["stratum", "epoch", "frame_mean", "plot_mean", "plot_mean_se", "map_frame_mean"]
    cols.append("map_plot_mean")
    return Draws(estimates, pd.DataFrame(support, columns=cols), every, in_part or None)


#: one row of a draw's estimates (:func:`rule_rows`)
ESTIMATE_COLUMNS = (
    "draw", "quantity", "rule", "estimator", "total", "se", "df", "half_width", "lower",
    "upper", "u", "rel_eff",
)  # fmt: skip


def rule_rows(draw: int, totals: list[SampleTotal]) -> list[tuple[Any, ...]]:
    """The estimate each rule of :data:`RULES` picks, per quantity, from one draw's totals
    (columns :data:`ESTIMATE_COLUMNS`)."""
    rows = []
    for quantity in dict.fromkeys(t.quantity for t in totals):
        # an estimator that could not run on this draw's quantity (GREG) is left out
        ran = {t.estimate.estimator for t in totals if t.quantity == quantity} | {MOST_PRECISE}
        for rule in (r for r in RULES if r in ran):
            t = choose(totals, quantity, rule)
            est = t.estimate
            rows.append(
                (draw, quantity, rule, est.estimator, est.total, est.se, est.df, est.half_width,
                 est.lower, est.upper, relative_half_width(est), t.relative_efficiency)
            )  # fmt: skip
    return rows


def score(estimates: pd.DataFrame, truth: Mapping[str, float]) -> pd.DataFrame:
    """Per quantity and rule: bias, RMSE, coverage, U and efficiency against ``truth``.

    Relative figures are in % of the true total; ``*_mcse`` are Monte Carlo standard
    errors; ``below_pct`` / ``above_pct`` the draws whose interval lies above / below the
    truth; ``se_ratio`` the root mean estimated variance over the empirical SD (1: the
    variance estimator is right on average); ``corr_err_se`` the correlation of the error
    with the estimated SE (skewed plot values make small errors come with small SEs);
    ``u_pct`` is the mean of the per-draw U (half-width over the estimate: heavy
    tailed when the estimate can be near zero), ``hw_pct`` the mean half-width over the
    true total; ``re_mean`` is the mean of the per-draw variance ratios plot-only/this,
    ``re_empirical`` the ratio of the empirical variances of the totals; ``within10_pct``
    the draws whose estimate is within 10 % of the truth (what one demo run can show).
    """
    rows = []
    for (quantity, rule), g in estimates.groupby(["quantity", "rule"], sort=False):
        t = truth[quantity]
        ref = estimates[(estimates["quantity"] == quantity) & (estimates["rule"] == ESTIMATORS[0])]
        n = len(g)
        err = g["total"].to_numpy() - t
        cover = float(np.mean((g["lower"] <= t) & (t <= g["upper"])))
        se = g["se"].to_numpy()
        rows.append(
            {
                "quantity": quantity,
                "rule": rule,
                "truth": t,
                "bias_pct": 100 * err.mean() / abs(t),
                "bias_mcse_pct": 100 * err.std(ddof=1) / math.sqrt(n) / abs(t),
                "rmse_pct": 100 * math.sqrt(np.mean(err**2)) / abs(t),
                "within10_pct": 100 * float(np.mean(np.abs(err) <= 0.1 * abs(t))),
                "coverage_pct": 100 * cover,
                "coverage_mcse_pct": 100 * math.sqrt(cover * (1 - cover) / n),
                "below_pct": 100 * float(np.mean(t < g["lower"])),
                "above_pct": 100 * float(np.mean(t > g["upper"])),
                "se_ratio": math.sqrt(np.mean(se**2)) / err.std(ddof=1),
                "corr_err_se": float(np.corrcoef(err, se)[0, 1]),
                "u_pct": 100 * g["u"].mean(),
                "hw_pct": 100 * g["half_width"].mean() / abs(t),
                "re_mean": g["rel_eff"].mean(),
                "re_empirical": ref["total"].var() / g["total"].var(),
            }
        )
    return pd.DataFrame(rows)


def credit_draws(
    estimates: pd.DataFrame,
    quantity: str,
    *,
    area_ha: float,
    baseline_tco2e: float,
    period_yr: float,
    methodology: Methodology,
) -> pd.DataFrame:
    """Credits of every draw and rule from the change estimate ``quantity`` (t CO2e).

    :func:`~models.credits.credit_steps` builds its interval from an SD and the normal
    quantile; the SD passed is the estimate's Student-t half-width over that quantile, so
    the half-width it works with is the estimate's own.
    """
    rows = []
    for d, rule, estimator, total, se, df in estimates.loc[
        estimates["quantity"] == quantity, ["draw", "rule", "estimator", "total", "se", "df"]
    ].itertuples(index=False):
        steps = credit_steps(
            area_ha=area_ha,
            period_yr=period_yr,
            project_tco2e=total,
            project_sd_tco2e=se,
            baseline_rate_tco2e_ha_yr=baseline_tco2e / (area_ha * period_yr),
            methodology=methodology,
            df=df,
            estimator=estimator,
        )
        rows.append((d, rule, steps.net_tco2e, steps.uncertainty_pct, steps.credits_tco2e))
    return pd.DataFrame(rows, columns=["draw", "rule", "net_tco2e", "u_pct", "credits_tco2e"])


def print_scores(scores: pd.DataFrame, units: Mapping[str, str]) -> None:
    print(
        f"  {'quantity':<18}{'rule':<13}{'truth':>10} {'bias%':>6} {'±mcse':>5} {'rmse%':>6} "
        f"{'cover%':>6} {'±mcse':>5} {'lo/hi%':>9} {'se/sd':>5} {'r(e,se)':>7} {'U%':>7} "
        f"{'hw/T%':>6} {'RE mean':>7} {'RE emp':>6}"
    )
    for r in scores.itertuples(index=False):
        print(
            f"  {r.quantity:<18}{r.rule:<13}{r.truth:>10,.0f} {r.bias_pct:>+6.2f} "
            f"{r.bias_mcse_pct:>5.2f} {r.rmse_pct:>6.2f} {r.coverage_pct:>6.1f} "
            f"{r.coverage_mcse_pct:>5.1f} {r.below_pct:>4.1f}/{r.above_pct:<4.1f} "
            f"{r.se_ratio:>5.2f} {r.corr_err_se:>+7.2f} {r.u_pct:>7.2f} {r.hw_pct:>6.2f} "
            f"{r.re_mean:>7.2f} "
            f"{r.re_empirical:>6.2f}"
        )
    print(
        "  truth in " + ", ".join(f"{q} {u}" for q, u in units.items()) + "; U = mean over "
        "draws of half-width/|estimate|, hw/T = mean half-width/|truth|; RE = variance of "
        "the plot-only estimate over this one's (mean of per-draw ratios; empirical); lo/hi "
        "= truth below/above the interval; se/sd = RMS estimated SE / empirical SD; "
        "r(e,se) = correlation of error and estimated SE"
    )


def print_support(support: pd.DataFrame) -> None:
    print("  edge effect: mean density at the drawn squares vs over the frame (Mg C/ha)")
    for r in support.itertuples(index=False):
        rel = 100 * (r.plot_mean / r.frame_mean - 1)
        rel_map = 100 * (r.map_plot_mean / r.map_frame_mean - 1)
        print(
            f"    {r.stratum:<12}{r.epoch:>5}: truth: frame {r.frame_mean:7.2f}, squares "
            f"{r.plot_mean:7.2f} ± {r.plot_mean_se:.2f} ({rel:+.2f} %); map: frame "
            f"{r.map_frame_mean:7.2f}, squares {r.map_plot_mean:7.2f} ({rel_map:+.2f} %)"
        )


def credit_scores(credits: pd.DataFrame, true_net_tco2e: float) -> pd.DataFrame:
    """Per rule: share of draws whose credits exceed the true net removals, mean credits."""
    rows = []
    for rule, g in credits.groupby("rule", sort=False):
        over = float(np.mean(g["credits_tco2e"] > true_net_tco2e))
        rows.append(
            {
                "rule": rule,
                "over_pct": 100 * over,
                "over_mcse_pct": 100 * math.sqrt(over * (1 - over) / len(g)),
                "mean_credits": g["credits_tco2e"].mean(),
                "no_credit_pct": 100 * float(np.mean(g["credits_tco2e"] <= 0)),
                "median_u_pct": g["u_pct"].median(),
            }
        )
    return pd.DataFrame(rows)


def with_empirical_se(estimates: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """``estimates`` of ``quantity`` with every draw's SE replaced by the empirical SD of
    its rule's totals over the draws: an oracle SE, uncorrelated with the draw's error."""
    rows = estimates[estimates["quantity"] == quantity].copy()
    rows["se"] = rows.groupby("rule")["total"].transform(lambda t: t.std(ddof=1))
    return rows


def print_oracle_credits(scores: pd.DataFrame) -> None:
    """How often credits would exceed the truth if each draw knew its estimator's true SD."""
    print(
        "  the same with each draw's SE replaced by the empirical SD of the estimates (an "
        "oracle no project has; what is left above 5 % is the estimate's own bias and "
        "skewness, the rest is its SE's correlation with its error):"
    )
    for r in scores.itertuples(index=False):
        print(f"    {r.rule:<13} exceed truth in {r.over_pct:5.1f} ± {r.over_mcse_pct:.1f} %")


def print_credits(scores: pd.DataFrame, true_net_tco2e: float) -> None:
    print(f"  credits vs the true net removals, {true_net_tco2e:,.0f} t CO2e")
    for r in scores.itertuples(index=False):
        print(
            f"    {r.rule:<13} exceed truth in {r.over_pct:5.1f} ± {r.over_mcse_pct:.1f} % of "
            f"draws; mean credits {r.mean_credits:,.0f} "
            f"({100 * (r.mean_credits / true_net_tco2e - 1):+.1f} %); no credits in "
            f"{r.no_credit_pct:.1f} %; median U of the net removals {r.median_u_pct:.1f} %"
        )


def verdict(value: float, mcse: float, low: float, high: float) -> str:
    """Whether a Monte Carlo figure meets ``low <= value <= high``, at its own precision.

    ``ok`` or ``FAILS`` when the figure's 95 % Monte Carlo interval (``value ± 1.96
    mcse``) lies wholly inside or wholly outside the target range; otherwise the draws
    cannot tell, and the verdict says so instead of reading noise as a result.
    """
    lo, hi = value - 1.96 * mcse, value + 1.96 * mcse
    if low <= lo and hi <= high:
        return "ok"
    if hi < low or lo > high:
        return "FAILS"
    return "undecided at this many draws"


def print_targets(
    scores: Mapping[str, pd.DataFrame],
    credits: pd.DataFrame,
    rules: Mapping[str, tuple[str, str]],
) -> None:
    """The issue's targets for the estimates a run chooses (``rules`` by sample: the
    stocks' rule, the change's), met or not, each figure with its Monte Carlo SE
    (:func:`verdict`)."""
    print(f"== targets of issue 14 (the run's rules, stock and change: {dict(rules)})")
    for sample, sc in scores.items():
        stock_rule, change_rule = rules[sample]
        chosen = np.where(sc["quantity"].map(is_change), change_rule, stock_rule)
        for r in sc[sc["rule"] == chosen].itertuples(index=False):
            line = (
                f"  {POPULATION_NAMES.get(sample, COMBINED_NAME):<16}{r.quantity:<18}"
                f"bias {r.bias_pct:+.2f} "
                f"± {r.bias_mcse_pct:.2f} % "
                f"({verdict(r.bias_pct, r.bias_mcse_pct, -2.0, 2.0)}: within ±2 %)"
            )
            if sample != "project" or is_change(r.quantity):
                cov = verdict(r.coverage_pct, r.coverage_mcse_pct, 86.0, 94.0)
                line += (
                    f"; coverage {r.coverage_pct:.1f} ± {r.coverage_mcse_pct:.1f} % ({cov}: 86-94)"
                )
            line += f"; within 10 % of the truth in {r.within10_pct:.1f} % of draws"
            line += f"; efficiency over plot-only {r.re_empirical:.2f} (empirical)"
            print(line)
    c = credits[credits["rule"] == rules["project"][1]].iloc[0]
    over = verdict(c["over_pct"], c["over_mcse_pct"], 0.0, 5.0)
    print(
        f"  project credits exceed the true net removals in {c['over_pct']:.1f} "
        f"± {c['over_mcse_pct']:.1f} % of draws ({over}: at most 5 %)"
    )


def _read(path: Path) -> tuple[NDArray[np.float64], Affine, str]:
    with rasterio.open(path) as src:
        values = src.read(1, out_dtype="float64", masked=True).filled(np.nan)
        return values, src.transform, src.crs.to_string()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="simulated region, e.g. data/nanping")
    ap.add_argument(
        "--run", type=Path, required=True, help="pipeline run on it, e.g. outputs/nanping"
    )
    ap.add_argument("--region", default="nanping", help="region config: epochs, methodology")
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    started = time.perf_counter()
    cfg = load_config(region_config_path(args.region))
    epochs = [e.name for e in cfg.epochs]
    job = credits_job(cfg)
    methodology, years = job.methodology, job.sink.years
    confidence = methodology.confidence_level
    factor = co2_per_c()
    truth, maps = {}, {}
    for e in epochs:
        truth[e], transform, crs = _read(args.data / "truth" / f"carbon_{e}.tif")
        maps[e], map_transform, _ = _read(args.run / map_relpath("carbon", e))
        if map_transform != transform or maps[e].shape != truth[e].shape:
            raise SystemExit(f"the map of {e} is not on the truth's grid")
    frames = gpd.read_file(args.data / "plots" / "design.gpkg", layer="strata").to_crs(crs)
    plots = gpd.read_file(args.data / "plots" / "plots.gpkg")
    n_plots = plots.groupby(["sample", "stratum"]).size()
    (plot_area_ha,) = plots["plot_area_ha"].unique()
    pb = pd.read_csv(args.run / PLOT_BIOMASS_RELPATH)
    rel_sd = float((pb["carbon_sd_mg_ha"] / pb["carbon_mg_ha"]).median())
    print(
        f"== estimator sampling: {args.draws} draws, seed {args.seed}, epochs {epochs}, "
        f"{100 * confidence:.0f} % intervals, plot {plot_area_ha} ha, plot measurement error "
        f"{100 * rel_sd:.2f} % (median relative SD of the run's plots, independent per epoch)"
    )
    check_rng, rng = np.random.default_rng(args.seed).spawn(2)
    pops = {}
    for sample in POPULATION_NAMES:
        f = frames[frames["sample"] == sample].reset_index(drop=True)
        pops[sample] = population(
            f,
            n_plots[sample].to_dict(),
            truth=truth,
            maps=maps,
            transform=transform,
            crs=crs,
            plot_area_ha=float(plot_area_ha),
        )
    check_square_support(pops["inventory"], check_rng, crs=crs)
    project = gpd.read_file(args.data / "parcels" / "project.gpkg").to_crs(crs)
    rate = project[methodology.baseline_column].to_numpy(dtype=float)
    baseline = float(np.sum(rate * project.geometry.area.to_numpy() / M2_PER_HA)) * years
    change = change_quantity(epochs[0], epochs[-1])
    project_frames = frames[frames["sample"] == "project"]
    outside = shapely.union_all(project_frames.geometry.to_numpy())
    part = domain(
        pops["inventory"], frames[frames["sample"] == "inventory"].reset_index(drop=True),
        outside, crs=crs,
    )  # fmt: skip
    scores, estimates, all_draws = {}, {}, {}
    loop_start = time.perf_counter()
    for sample, pop in pops.items():
        n_h = ", ".join(f"{s.name} {s.n_plots}" for s in pop.strata)
        print(
            f"== {POPULATION_NAMES[sample]} ({sample} sample: {pop.area_ha:,.1f} ha; plots {n_h})"
        )
        draws = run_draws(
            pop, draws=args.draws, rng=rng, plot_rel_sd=rel_sd, confidence=confidence,
            change_factor=factor, part=part if sample == "inventory" else None,
        )  # fmt: skip
        true = pop.true_totals(factor)
        all_draws[sample] = draws
        estimates[sample] = draws.estimates
        scores[sample] = score(draws.estimates, true)
        print_scores(
            scores[sample], {q: "Mg C" if q.startswith("stock") else "t CO2e" for q in true}
        )
        print_support(draws.support)
    combined_area = float(shapely.union_all(frames.geometry.to_numpy()).area / M2_PER_HA)
    print(
        f"== {COMBINED_NAME} ({COMBINED}: the inventory's estimate outside the project's "
        f"frames, its plots in them as 0, plus the project sample's; {combined_area:,.1f} ha)"
    )
    domain_draws = all_draws["inventory"].domain_totals or []
    rows = []
    for d, (inside, outside_totals) in enumerate(
        zip(all_draws["project"].totals, domain_draws, strict=True)
    ):
        rows.extend(rule_rows(d, independent_sum([outside_totals, inside], area_ha=combined_area)))
    estimates[COMBINED] = pd.DataFrame(rows, columns=list(ESTIMATE_COLUMNS))
    true_outside, true_project = part.true_totals(factor), pops["project"].true_totals(factor)
    true = {q: v + true_project[q] for q, v in true_outside.items()}
    scores[COMBINED] = score(estimates[COMBINED], true)
    print_scores(scores[COMBINED], {q: "Mg C" if q.startswith("stock") else "t CO2e" for q in true})
    credits = credit_draws(
        estimates["project"], change, area_ha=pops["project"].area_ha, baseline_tco2e=baseline,
        period_yr=years, methodology=methodology,
    )  # fmt: skip
    true_net = pops["project"].true_totals(factor)[change] - baseline
    credit_table = credit_scores(credits, true_net)
    print(
        f"  credits ({methodology.id}): baseline {baseline:,.0f} t CO2e over {years:.3f} years; "
        f"the rule's estimate of the change, with its Student-t half-width"
    )
    print_credits(credit_table, true_net)
    print_oracle_credits(
        credit_scores(
            credit_draws(
                with_empirical_se(estimates["project"], change), change,
                area_ha=pops["project"].area_ha, baseline_tco2e=baseline, period_yr=years,
                methodology=methodology,
            ),
            true_net,
        )
    )  # fmt: skip
    loop = time.perf_counter() - loop_start
    # the estimate stage's choices (the inventory's model-assisted stocks cross-fitted
    # there; here the maps are fixed and the draws fresh, so every estimator is valid)
    stages = cfg.stages.estimate
    region = (stages.estimator if stages.cross_fit else PLOT_ONLY, stages.change_estimator)
    rules = {
        "inventory": region,
        "project": (stages.estimator, methodology.estimator),
        COMBINED: region,
    }
    print_targets(scores, credit_table, rules)
    print(
        f"== wall time {time.perf_counter() - started:.1f} s; draws {loop:.1f} s "
        f"({args.draws / loop:.1f} draws per second, each: both samples, all estimators)"
    )


def check_square_support(pop: Population, rng: np.random.Generator, *, crs: str) -> None:
    """Print the largest difference of :func:`square_means` from exactextract's means."""
    s = max(pop.strata, key=lambda s: s.area_ha)
    values = pop.truth[pop.epochs[0]]
    # squares wholly on the grid: beyond it exactextract averages the covered part only,
    # where square_means (like a plot's tally) counts it as 0
    h, t = pop.half_side_m, pop.transform
    x0, y1 = t.c, t.f
    x1, y0 = x0 + t.a * values.shape[1], y1 + t.e * values.shape[0]
    centres = draw_centres(
        rng, s, 4 * CHECKED_SQUARES, transform=pop.transform, half_side_m=pop.half_side_m
    )
    on_grid = (
        (centres[:, 0] - h >= x0) & (centres[:, 0] + h <= x1)
        & (centres[:, 1] - h >= y0) & (centres[:, 1] + h <= y1)
    )  # fmt: skip
    centres = centres[on_grid][:CHECKED_SQUARES]
    fast = square_means(values, centres, transform=pop.transform, half_side_m=pop.half_side_m)
    exact = exact_square_means(
        values, centres, crs=crs, transform=pop.transform, half_side_m=pop.half_side_m
    )
    print(
        f"  plot squares: separable exact coverage vs exactextract on {CHECKED_SQUARES} squares "
        f"of {s.name}: max |difference| {np.max(np.abs(fast - exact)):.2e} Mg C/ha "
        f"(mean density {np.mean(exact):.1f})"
    )


if __name__ == "__main__":
    main()
