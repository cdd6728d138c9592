"""Stage ``estimate``: survey estimates of stock and stock change from the plot samples.

Totals that users act on (a region's carbon stock and its change, a project's stock change
and so its credits) are survey estimates from probability samples of field plots, with the
carbon maps as auxiliary data (DESIGN §4; :mod:`models.survey`). The samples and their
strata come from ``sources.plot_design`` (one sampling frame polygon per sample and
stratum); each plot of ``sources.plot_locations`` names its ``sample`` and ``stratum``.

For each sample the stage computes, for the stock at every epoch (Mg C) and the change
from the first to the last epoch (t CO2e), every estimator of
:func:`models.survey.totals.sample_totals`:

* the plot values are the plots stage's carbon densities (``carbon_mg_ha``);
* the map value at a plot is the mean over the plot square of the map inside the plot's
  stratum frame (cells by their exact coverage fractions of the square and of the frame,
  :mod:`pipeline.zonal`; cells outside the frame and unmapped cells, not forest land, as
  0), and the map's stratum mean is its total over the frame divided by the stratum's
  expansion area; so the auxiliary variable is defined as the plots' is, at the plots
  and over the population.

A stratum's expansion area is the design's ``centre_area_ha`` when given: the area over
which the plot centres were drawn when plots that straddle the frame's edge tally only the
trees inside it (the buffer method of boundary correction, Gregoire & Valentine 2008,
Sampling Strategies for Natural Resources and the Environment, ch. 7). The stratum total is
that area times the mean plot density, and equals the frame's total without the edge bias
of keeping plots inside the frame. Without ``centre_area_ha`` it is the frame's ``area_ha``
(plots kept inside the frame). Per-hectare figures in the table are per frame hectare.

``estimates/sample_plan.csv`` sizes each sample with CDM AR-TOOL03 for the target
precision (``stages.estimate.target_relative_half_width``) of its stock at the last epoch
and of its change, from the sample's own stratum SDs, beside the plots it has.

``estimates/totals.csv`` (and, in short, the manifest's ``results.estimate``) holds one row
per sample, quantity and estimator, with the
estimate, its SE, degrees of freedom, interval, relative efficiency against the plot-only
estimator, the map's own total over the same area for comparison, and ``chosen`` marking
the estimate the report and the credits use: ``stages.estimate.estimator`` for stocks,
``stages.estimate.change_estimator`` for a change, and the methodology file's
``estimator`` for the ``project`` sample's change (the credited quantity).

The SE is the sampling error: it holds what differs from plot to plot, not an error that
every plot shares. Each row also has ``systematic_sd``, the SD of the estimate over
``stages.estimate.systematic_draws`` draws of the conversion factors (carbon fraction,
root-to-shoot ratio) drawn once per draw for every plot and epoch of every sample, seeded
with the run's seed (:mod:`models.shared_errors`, :func:`models.survey.totals.systematic_sd`;
the maps, converted from biomass with the same factors, scale with each draw), and the
combined SD ``sqrt(se^2 + systematic_sd^2)`` with its interval (``combined_*``, the
sampling estimate's t quantile). The credits keep the sampling interval (docs/estimation.md).
``estimates/systematic.json`` records the draws, the factors included and not included, and
``map_relative_sd``: the relative systematic SD that any sum of a carbon or sink map carries
(fully correlated, apart from the map's own SD), which the report gives beside the map sums.

Which samples the map may assist: a model-assisted estimator is design-unbiased, with a
valid variance, only when the map's values at the sample plots do not depend on the
sample (Särndal et al. 1992 §6.3). The ``model`` stage trains the maps on every plot except
the project's monitoring sample, so the project's estimates use the map as it is. At the
plots that trained it (the region's inventory) the map's values are in-sample fits, whose
residuals understate the variance several-fold; there the stage cross-fits (the difference
estimator of double machine learning, :mod:`models.survey.crossfit`):

* each training plot's map value is shifted by the difference between the cross-fitted and
  the in-sample prediction of the model that maps it (``held_out_mg_ha - fitted_mg_ha`` of
  ``model/plot_features.csv``, the out-of-fold prediction of a random split of whole
  plots, converted to carbon by the model card's factors and weighted by the plot's share
  inside its frame;
  :func:`models.biomass.cross_fitted_at_plots`);
* each stratum's map mean is corrected by the fold maps' (``model/fold_maps.csv``: the map
  and the map of each fold's models at a systematic sample of forest-land cells): the
  share of the stratum's plots in fold ``k`` (``fold`` of ``plot_features.csv``) times
  fold ``k``'s map mean minus the map's, over the sampled cells whose centre lies in the
  stratum's frame (:func:`models.survey.crossfit.fold_map_correction`). The stock change
  takes the corrected means of both epochs.

The rows say so (``note``), with the correction of the total and its own sampling SE from
the cell sample, which the estimate's SE leaves out: with tens of thousands of cells it is
a few tenths of a percent of it (the demo: see docs/estimation.md). They are chosen when
``stages.estimate.cross_fit`` is true. Without ``fold_maps.csv`` (a run folder of an
older model stage) they are written without the correction and not chosen; without the
held-out columns neither; the plot-only ``stratified`` estimate is then chosen for such a
sample, and the model-assisted rows say why.

A region without ``sources.plot_design`` gets an empty table; the credits stage then falls
back to the map and says so.

Run: ``forest-carbon run --region nanping --stages estimate``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from shapely.geometry.base import BaseGeometry

from models.allometry import co2_per_c
from models.errors import PlotDataError, SurveyError
from models.plot_biomass import carbon_per_agb
from models.shared_errors import (
    INCLUDED,
    NOT_INCLUDED,
    SAMPLING,
    SharedDraws,
    map_factor_shifts,
    shared_factor_shifts,
)
from models.survey.crossfit import NO_FOLD, NO_STRATUM, FoldCorrection, fold_map_correction
from models.survey.design import StratifiedDesign, combine_systematic, relative_half_width
from models.survey.sample_size import ar_tool03_sample_size
from models.survey.totals import (
    PLOT_ONLY,
    SampleTotal,
    change_quantity,
    choose,
    independent_sum,
    is_change,
    sample_totals,
    stock_quantity,
    systematic_sd,
)
from pipeline.config import Config
from pipeline.contracts import (
    ESTIMATES_RELPATH,
    FOLD_MAP_PREFIX,
    FOLD_MAPS_RELPATH,
    MODEL_CARD_RELPATH,
    PLOT_BIOMASS_RELPATH,
    PLOT_FEATURES_RELPATH,
    PROJECT_SAMPLE,
    SAMPLE_PLAN_RELPATH,
    SYSTEMATIC_RELPATH,
    TREES_RELPATH,
    RunLayout,
    credits_job,
    domain_sample,
    map_relpath,
    with_project_sample,
)
from pipeline.errors import ConfigError, InputDataError, PipelineWarning
from pipeline.stage import Stage
from pipeline.units import M2_PER_HA
from pipeline.zonal import (
    Coverage,
    coverage_cells,
    fraction_raster,
    weighted_sum,
)

COLUMNS = (
    "sample", "quantity", "unit", "estimator", "chosen", "total", "se", "df", "confidence",
    "half_width", "lower", "upper", "relative_half_width", "mean_per_ha", "area_ha",
    "n_plots", "relative_efficiency", "map_total", "meets_target", "systematic_sd",
    "combined_sd", "combined_half_width", "combined_lower", "combined_upper", "note",
)  # fmt: skip
#: the columns of the systematic SD and the combined interval
COMBINED_COLUMNS = (
    "systematic_sd", "combined_sd", "combined_half_width", "combined_lower", "combined_upper",
)  # fmt: skip
PLAN_COLUMNS = (
    "sample", "quantity", "stratum", "area_ha", "n_plots", "sd_per_ha", "mean_per_ha",
    "target_relative_half_width", "confidence", "n_required", "plots_required",
)  # fmt: skip
#: why a model-assisted estimate of a sample that trained the map is not chosen
IN_SAMPLE_NOTE = (
    "not used: the map was trained on these plots, so their residuals understate the variance"
)
#: how a model-assisted estimate of a sample that trained the map was made valid
CROSS_FITTED_NOTE = (
    "cross-fitted: out-of-fold map values at the plots that trained the map, and the fold "
    "maps' stratum means (models.survey.crossfit)"
)
#: why it is not chosen unless ``stages.estimate.cross_fit`` asks
CROSS_FIT_OFF_NOTE = "cross-fitted, not chosen (stages.estimate.cross_fit is false)"
#: why it is not chosen when the model stage wrote no fold maps
NO_FOLD_MAPS_NOTE = (
    "cross-fitted without the fold maps' population correction (the model stage wrote no "
    f"{FOLD_MAPS_RELPATH}), not chosen: the fold models can differ systematically from the "
    "map fitted on all plots (docs/estimation.md)"
)
#: the columns of ``model/plot_features.csv`` that cross-fitting needs, and the one the
#: fold maps' correction needs besides (each plot's fold)
CROSS_FIT_COLUMNS = ("plot_id", "epoch", "fitted_mg_ha", "held_out_mg_ha")
FOLD_COLUMN = "fold"


@dataclass(frozen=True)
class EstimateJob:
    """The epochs, the confidence level and the estimator each sample's totals use."""

    epochs: tuple[str, ...]
    confidence: float
    target: float
    #: estimator rule of the stocks (``stages.estimate.estimator``)
    estimator: str
    #: estimator rule of a stock change (``stages.estimate.change_estimator``)
    change_estimator: str
    #: estimator rule of the project sample's stock change (the methodology's ``estimator``)
    project_change_estimator: str
    #: whether a sample that trained the map may take its cross-fitted model-assisted
    #: estimates (``stages.estimate.cross_fit``, on by default); otherwise they are shown,
    #: not chosen
    cross_fit: bool = True
    #: the project's domains: (methodology id, forest types it credits) of every
    #: methodology with an ``applies_to`` rule (:func:`domain_sample`)
    domains: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: draws of the conversion factors' shared error (``stages.estimate.systematic_draws``)
    systematic_draws: int = 200
    #: seed of those draws (the run's ``seed``)
    seed: int = 0


def estimate_job(config: Config) -> EstimateJob:
    """The stage's frozen parameters from a run config."""
    p = config.stages.estimate
    project_rule: str = p.change_estimator
    domains: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if config.sources.project_area is not None:
        credits = credits_job(config)
        project_rule = credits.methodology.estimator
        domains = tuple(
            (m.id, tuple(m.applies_to.forest_types))
            for m, _ in credits.methodologies
            if m.applies_to is not None
        )
    return EstimateJob(
        epochs=tuple(e.name for e in config.epochs),
        confidence=p.confidence,
        target=p.target_relative_half_width,
        estimator=p.estimator,
        change_estimator=p.change_estimator,
        project_change_estimator=project_rule,
        cross_fit=p.cross_fit,
        domains=domains,
        systematic_draws=p.systematic_draws,
        seed=config.seed,
    )


def estimate_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """The plot and tree tables, plot squares and design, and every epoch's carbon map."""
    if config.sources.plot_design is None:
        return {}
    if config.sources.plot_locations is None:
        raise ConfigError(
            "sources.plot_locations: the estimate stage needs the plot squares with their "
            "'sample' and 'stratum' (sources.plot_design is set)"
        )
    return {
        "plot_biomass": layout.path(PLOT_BIOMASS_RELPATH),
        "trees": layout.path(TREES_RELPATH),
        "plot_locations": config.sources.plot_locations,
        "design": config.sources.plot_design,
        "plot_features": layout.path(PLOT_FEATURES_RELPATH),
        "fold_maps": layout.path(FOLD_MAPS_RELPATH),
        "model_card": layout.path(MODEL_CARD_RELPATH),
        **{f"carbon.{e.name}": layout.path(map_relpath("carbon", e.name)) for e in config.epochs},
    }


def _band(carbon: xr.DataArray) -> xr.DataArray:
    return carbon.squeeze("band", drop=True) if "band" in carbon.dims else carbon


def _at_plots(
    plot_cover: list[Coverage],
    frame_share: list[np.ndarray],
    values: np.ndarray,
    plot_cells: np.ndarray,
) -> np.ndarray:
    """Mean over each plot square of ``values`` inside the plot's frame (share per cell),
    cells outside the frame and unmapped cells (NaN) as 0. The mean is over the whole
    square (``plot_cells``: its area in cells), as the plot's density is its tally over
    the whole square: a part beyond the grid counts as 0, as it lies outside any frame."""
    flat = values.reshape(-1)
    means = []
    for cov, share, cells in zip(plot_cover, frame_share, plot_cells, strict=True):
        v = np.nan_to_num(flat[cov.cell]) * share.reshape(-1)[cov.cell]
        means.append(float(np.sum(v * cov.fraction)) / cells if cells > 0 else np.nan)
    return np.asarray(means, dtype=np.float64)


def _expansion_areas(name: str, frames: gpd.GeoDataFrame) -> dict[str, float]:
    """Each stratum's expansion area (ha): ``centre_area_ha`` where given, else ``area_ha``."""
    area = frames["area_ha"].astype(float).to_numpy()
    if "centre_area_ha" in frames:
        centre = frames["centre_area_ha"].astype(float).to_numpy()
        bad = np.isfinite(centre) & ~(centre >= area)
        if bad.any():
            strata = frames["stratum"].astype(str)[bad].tolist()
            raise InputDataError(
                f"plot design: sample {name!r}, strata {strata}: centre_area_ha is below "
                "area_ha; the region of plot centres (the frame dilated by the plot square) "
                "contains the frame, so give its area or leave the value empty"
            )
        area = np.where(np.isfinite(centre), centre, area)
    return dict(zip(frames["stratum"].astype(str), area.tolist(), strict=True))


def _sample_design(
    name: str, frames: gpd.GeoDataFrame, plots: gpd.GeoDataFrame
) -> StratifiedDesign:
    area = _expansion_areas(name, frames)
    unknown = sorted(set(plots["stratum"].astype(str)) - set(area))
    if unknown:
        raise InputDataError(
            f"plot locations: sample {name!r} has plots in strata {unknown} that the design "
            f"file does not list (it lists {sorted(area)})"
        )
    try:
        return StratifiedDesign.from_labels(plots["stratum"].astype(str).tolist(), area)
    except SurveyError as err:
        raise _refused(name, err) from None


def _refused(sample: str, err: SurveyError) -> InputDataError:
    """A survey error of one sample as an input error naming the design file's sample."""
    return InputDataError(f"plot design: sample {sample!r}: {err}")


def _rows(
    name: str,
    totals: list[SampleTotal],
    rules: tuple[str, str],
    area_ha: float,
    *,
    assisted_note: str,
    may_assist: bool,
    target: float,
    systematic: Mapping[tuple[str, str], float] | None,
) -> list[dict[str, Any]]:
    """Table rows of a sample's totals; ``rules`` choose the (stock, change) estimates.

    ``assisted_note`` is the note of the model-assisted rows (``""`` for a sample that did
    not train the map); unless ``may_assist``, the plot-only estimate is chosen.
    ``systematic`` is each estimate's systematic SD by (quantity, estimator)
    (:func:`models.survey.totals.systematic_sd`; ``None``: not computed, NaN columns)."""

    def rule(quantity: str) -> str:
        if not may_assist:
            return PLOT_ONLY
        return rules[1] if is_change(quantity) else rules[0]

    def note(estimator: str) -> str:
        return "" if estimator == PLOT_ONLY else assisted_note

    def combined(t: SampleTotal) -> dict[str, float]:
        if systematic is None:
            return dict.fromkeys(COMBINED_COLUMNS, np.nan)
        c = combine_systematic(t.estimate, systematic[(t.quantity, t.estimate.estimator)])
        return {
            "systematic_sd": c.systematic_sd, "combined_sd": c.sd,
            "combined_half_width": c.half_width, "combined_lower": c.lower,
            "combined_upper": c.upper,
        }  # fmt: skip

    quantities = dict.fromkeys(t.quantity for t in totals)
    chosen = {choose(totals, q, rule(q)).estimate for q in quantities}
    return [
        {
            "sample": name,
            "quantity": t.quantity,
            "unit": t.unit,
            "estimator": t.estimate.estimator,
            "chosen": t.estimate in chosen,
            "total": t.estimate.total,
            "se": t.estimate.se,
            "df": t.estimate.df,
            "confidence": t.estimate.confidence,
            "half_width": t.estimate.half_width,
            "lower": t.estimate.lower,
            "upper": t.estimate.upper,
            "relative_half_width": relative_half_width(t.estimate),
            "mean_per_ha": t.estimate.total / area_ha,
            "area_ha": area_ha,
            "n_plots": t.estimate.n,
            "relative_efficiency": t.relative_efficiency,
            "map_total": t.map_total,
            "meets_target": bool(relative_half_width(t.estimate) <= target),
            **combined(t),
            "note": note(t.estimate.estimator),
        }
        for t in totals
    ]


def estimate(
    job: EstimateJob,
    *,
    plot_biomass: pd.DataFrame | None = None,
    trees: pd.DataFrame | None = None,
    plot_locations: gpd.GeoDataFrame | None = None,
    design: gpd.GeoDataFrame | None = None,
    carbon: Mapping[str, xr.DataArray] | None = None,
    plot_features: pd.DataFrame | None = None,
    fold_maps: pd.DataFrame | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """The ``estimate`` stage: ``estimates/totals.csv``."""
    if design is None or plot_biomass is None or plot_locations is None or carbon is None:
        warnings.warn(
            PipelineWarning(
                "estimate: no plot design (sources.plot_design), so no survey estimates; "
                "totals in the report and the credits fall back to map sums, whose SDs are "
                "upper bounds",
                code="no_plot_design",
                values={},
            ),
            stacklevel=2,
        )
        return {
            ESTIMATES_RELPATH: pd.DataFrame(columns=list(COLUMNS)),
            SAMPLE_PLAN_RELPATH: pd.DataFrame(columns=list(PLAN_COLUMNS)),
            SYSTEMATIC_RELPATH: _systematic_record(job, None),
        }
    for table, name, cols in (
        (plot_locations, "plot locations", ("plot_id", "sample", "stratum")),
        (design, "plot design", ("sample", "stratum", "area_ha")),
        (plot_biomass, PLOT_BIOMASS_RELPATH, ("plot_id", "epoch", "carbon_mg_ha")),
    ):
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise InputDataError(f"{name}: column(s) {missing} missing; has {list(table.columns)}")
    values = plot_biomass.assign(epoch=plot_biomass["epoch"].astype(str)).pivot_table(
        index="plot_id", columns="epoch", values="carbon_mg_ha", aggfunc="first"
    )
    # every epoch's map is read once; all maps share one grid (the predict stage's)
    grid = _band(carbon[job.epochs[0]])
    maps = {e: np.asarray(_band(carbon[e]).values, dtype=np.float64) for e in job.epochs}
    transform = grid.rio.transform(recalc=True)
    grid_shape = maps[job.epochs[0]].shape
    cell_ha = abs(transform.a * transform.e) / M2_PER_HA
    cover = partial(coverage_cells, transform=transform, shape=grid_shape, crs=str(grid.rio.crs))
    rows: list[dict[str, Any]] = []
    plan: list[dict[str, Any]] = []
    plot_area_ha = (
        float(plot_biomass["plot_area_ha"].median()) if "plot_area_ha" in plot_biomass else None
    )
    cross_fit = _cross_fit(plot_features, fold_maps, model_card)
    shared = _shared_draws(job, trees, plot_biomass)
    context = _Context(
        job, values, maps, cover, cell_ha, grid_shape, str(grid.rio.crs), cross_fit, shared
    )
    samples = {}
    project: _SampleResult | None = None
    for name, frames in design.groupby("sample", sort=True):
        plots = plot_locations[plot_locations["sample"] == name].reset_index(drop=True)
        plots = plots[plots["plot_id"].isin(values.index)].reset_index(drop=True)
        if plots.empty:
            raise InputDataError(f"plot design: sample {name!r} has no plot with a plot estimate")
        samples[str(name)] = frames, plots
        result = _sample_rows(context, str(name), frames, plots, plot_area_ha)
        rows.extend(result.rows)
        plan.extend(result.plan)
        if name != PROJECT_SAMPLE:
            continue
        project = result
        # the project sample restricted to the strata each methodology credits is itself a
        # stratified sample of those strata (strata are sampled independently): its
        # estimates are the domain's, with every estimator's variance
        strata = set(frames["stratum"].astype(str))
        for method_id, types in job.domains:
            kept = strata & set(types)
            if not kept or kept == strata:
                continue  # the whole sample, or none of it: no domain to add
            in_kept = frames["stratum"].astype(str).isin(kept)
            domain = _sample_rows(
                context,
                domain_sample(method_id),
                frames[in_kept],
                plots[plots["stratum"].astype(str).isin(kept)].reset_index(drop=True),
                plot_area_ha,
                note=f"the project sample's strata that {method_id} credits: "
                + ", ".join(sorted(kept)),
            )
            rows.extend(domain.rows)
    if project is not None:
        rows.extend(_with_project(context, samples, project, plot_area_ha))
    return {
        ESTIMATES_RELPATH: pd.DataFrame(rows, columns=list(COLUMNS)),
        SAMPLE_PLAN_RELPATH: pd.DataFrame(plan, columns=list(PLAN_COLUMNS)),
        SYSTEMATIC_RELPATH: _systematic_record(job, shared),
    }


def _with_project(
    context: _Context,
    samples: Mapping[str, tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]],
    project: _SampleResult,
    plot_area_ha: float | None,
) -> list[dict[str, Any]]:
    """Rows of sample ``<S>+project`` for every other sample ``S`` (the region's
    inventory): ``S``'s estimate of its population outside the project sample's frames plus
    the project sample's estimate inside them, two independent samples of disjoint parts
    (:func:`models.survey.totals.independent_sum`). The project's own, denser sample
    replaces the few plots of ``S`` that fall in the project area.

    ``S``'s part is the domain of its population outside the project's frames, estimated
    from all of ``S``'s plots, those with a centre in the project counting as 0
    (:func:`_sample_rows` with ``exclude``): design-unbiased whatever number of plots falls
    in the domain, where dividing by the domain's own plots (post-stratifying) is not when
    a stratum's part gets one plot or none. It costs variance only through the spread of
    the domain indicator times the plots' mean, small for residuals and stock changes.
    Each estimator is summed with its namesake; the chosen one follows the stage's rules
    for ``S``. The systematic SDs (one draw of the conversion factors for both samples)
    are added as fully correlated: an upper bound."""
    frames_p, _ = samples[PROJECT_SAMPLE]
    outside = shapely.union_all(frames_p.to_crs(context.crs).geometry.to_numpy())
    rows: list[dict[str, Any]] = []
    for name, (frames, plots) in samples.items():
        if name == PROJECT_SAMPLE:
            continue
        combined_name = with_project_sample(name)
        frames, plots = frames.to_crs(context.crs), plots.to_crs(context.crs)
        part = _sample_rows(context, combined_name, frames, plots, plot_area_ha, exclude=outside)
        area_ha = part.domain_area_ha + float(frames_p["area_ha"].sum())
        systematic = None
        if part.systematic is not None and project.systematic is not None:
            systematic = {
                key: part.systematic[key] + project.systematic[key]
                for key in part.systematic.keys() & project.systematic.keys()
            }
        note = (
            f"the {name} sample's estimate of its population outside the {PROJECT_SAMPLE} "
            f"sample's frames ({part.plots_in_domain} of its {len(plots)} plots lie there; "
            f"the others count as 0) plus the {PROJECT_SAMPLE} sample's inside them: "
            "independent samples of disjoint parts, variances added"
        )
        try:
            combined = _rows(
                combined_name, independent_sum([part.totals, project.totals], area_ha=area_ha),
                (context.job.estimator, context.job.change_estimator), area_ha,
                assisted_note=part.assisted_note, may_assist=part.may_assist,
                target=context.job.target, systematic=systematic,
            )  # fmt: skip
        except SurveyError as err:
            raise _refused(combined_name, err) from None
        for row in combined:
            row["note"] = "; ".join(filter(None, (note, row["note"])))
        rows.extend(combined)
    return rows


@dataclass(frozen=True)
class _Context:
    """What every sample's estimates share: the job, plot values and maps."""

    job: EstimateJob
    values: pd.DataFrame
    maps: dict[str, np.ndarray]
    cover: Any
    cell_ha: float
    grid_shape: tuple[int, int]
    #: the maps' CRS, that of the fold maps' cell coordinates
    crs: str
    cross_fit: _CrossFit | None
    #: the conversion factors' shared draws, or None without a tree table
    shared: _Shared | None


@dataclass(frozen=True)
class _Shared:
    """The conversion factors' shared draws: per epoch, each plot's shift of its carbon
    density (index plot_id as text, one column per draw), and per draw the maps' scale."""

    shifts: dict[str, pd.DataFrame]
    map_scales: np.ndarray


def _shared_draws(
    job: EstimateJob, trees: pd.DataFrame | None, plot_biomass: pd.DataFrame
) -> _Shared | None:
    """The conversion factors' shared draws (:mod:`models.shared_errors`); None, with a
    warning, without the plots stage's tree table."""
    if trees is None:
        warnings.warn(
            PipelineWarning(
                f"estimate: no tree table ({TREES_RELPATH}), so the totals' systematic SD (the "
                "conversion factors' shared error) is not computed: its columns are empty",
                code="no_tree_table",
                values={"trees": TREES_RELPATH},
            ),
            stacklevel=3,
        )
        return None
    try:
        shifts = shared_factor_shifts(trees, SharedDraws.draw(job.systematic_draws, job.seed))
    except PlotDataError as err:
        raise InputDataError(f"{TREES_RELPATH}: {err}") from None
    try:
        scales = 1.0 + map_factor_shifts(plot_biomass, shifts)
    except PlotDataError as err:
        raise InputDataError(f"{PLOT_BIOMASS_RELPATH}: {err}") from None
    empty = pd.DataFrame(columns=shifts.columns, dtype=np.float64)  # an epoch without trees
    epochs = set(shifts.index.get_level_values("epoch"))
    return _Shared(
        {e: shifts.xs(e, level="epoch") if e in epochs else empty for e in job.epochs}, scales
    )


def _systematic_record(job: EstimateJob, shared: _Shared | None) -> dict[str, Any]:
    """``estimates/systematic.json``: how the shared error was drawn, what it includes and
    what not, and ``map_relative_sd``, the relative systematic SD of any sum of a carbon or
    sink map (:func:`models.shared_errors.map_factor_shifts`; null when not computed)."""
    return {
        "draws": job.systematic_draws,
        "seed": job.seed,
        "sampling": SAMPLING,
        "included": INCLUDED,
        "not_included": NOT_INCLUDED,
        "map_relative_sd": None if shared is None else float(np.std(shared.map_scales, ddof=1)),
    }


def _sample_rows(
    context: _Context,
    name: str,
    frames: gpd.GeoDataFrame,
    plots: gpd.GeoDataFrame,
    plot_area_ha: float | None,
    *,
    note: str = "",
    exclude: BaseGeometry | None = None,
) -> _SampleResult:
    """One sample's rows of ``totals.csv`` and of ``sample_plan.csv``.

    With ``exclude``, the rows estimate the domain of the sample's population outside it
    (Särndal et al. 1992 §10.3, the domain total with its size unknown to the estimator): a plot
    whose centre lies in ``exclude`` counts as 0 (plot value and map value), the map's
    stratum totals are taken over each frame minus ``exclude``, and the strata keep their
    expansion areas and plot counts; each plot still sees its stratum's whole frame, as it
    was measured. No plan rows then."""
    job, values, maps, cross_fit = context.job, context.values, context.maps, context.cross_fit
    cover, cell_ha, grid_shape = context.cover, context.cell_ha, context.grid_shape
    rows: list[dict[str, Any]] = []
    plan: list[dict[str, Any]] = []
    frames = frames.reset_index(drop=True)
    sample_design = _sample_design(str(name), frames, plots)
    order = list(sample_design.stratum_names)
    frames = frames.set_index(frames["stratum"].astype(str)).loc[order].reset_index(drop=True)
    population, in_domain = frames, np.ones(len(plots), dtype=bool)
    if exclude is not None:
        population = frames.assign(geometry=frames.geometry.difference(exclude))
        centres = plots.geometry.centroid
        in_domain = ~shapely.contains_xy(exclude, centres.x.to_numpy(), centres.y.to_numpy())
    plot_cover, frame_cover = cover(plots), cover(frames)
    shares = [fraction_raster(c, grid_shape) for c in frame_cover]
    plot_share = [shares[h] for h in sample_design.plot_stratum]
    plot_cells = plots.to_crs(context.crs).geometry.area.to_numpy() / (cell_ha * M2_PER_HA)
    at_plots = {e: _at_plots(plot_cover, plot_share, maps[e], plot_cells) for e in job.epochs}
    project = name == PROJECT_SAMPLE or name.startswith(f"{PROJECT_SAMPLE}:")
    # a stratum wholly in ``exclude`` has no part left: its map total there is 0
    left = np.flatnonzero(~population.geometry.is_empty.to_numpy())
    population_cover = dict(zip(left.tolist(), cover(population.iloc[left]), strict=True))

    def map_total(values: np.ndarray, h: int) -> float:
        return weighted_sum(population_cover[h], values) if h in population_cover else 0.0

    frame_means = {
        e: np.array([map_total(maps[e], h) for h in range(len(population))])
        * cell_ha
        / sample_design.stratum_area_ha
        for e in job.epochs
    }
    y = {e: values.reindex(plots["plot_id"])[e].to_numpy(dtype=np.float64) for e in job.epochs}
    assisted_note, may_assist = "", True
    corrections: dict[str, tuple[FoldCorrection, StratifiedDesign]] = {}
    if not project:
        assisted_note, may_assist = IN_SAMPLE_NOTE, False
        if cross_fit is not None:
            may_assist = job.cross_fit and cross_fit.cells is not None
            assisted_note = (
                NO_FOLD_MAPS_NOTE
                if cross_fit.cells is None
                else CROSS_FITTED_NOTE
                if job.cross_fit
                else CROSS_FIT_OFF_NOTE
            )
            inside = _at_plots(plot_cover, plot_share, np.ones(grid_shape), plot_cells)
            ids = plots["plot_id"].astype(str)
            for e in job.epochs:
                shift = cross_fit.shifts.get(e, pd.Series(dtype=np.float64))
                at_plots[e] = at_plots[e] + inside * np.nan_to_num(
                    shift.reindex(ids).to_numpy(dtype=np.float64)
                )
                measured = sample_design.subset(np.isfinite(y[e]))
                correction = cross_fit.correction(
                    e, population.to_crs(context.crs), measured, ids[np.isfinite(y[e])]
                )
                if correction is not None:
                    frame_means[e] = frame_means[e] + correction.mean_per_ha
                    corrections[e] = correction, measured
    for e in job.epochs:  # a plot outside the domain adds 0 (it stays in the sample)
        y[e] = np.where(in_domain | np.isnan(y[e]), y[e], 0.0)
        at_plots[e] = np.where(in_domain, at_plots[e], 0.0)
    try:
        totals = sample_totals(
            sample_design, plot_values=y, map_at_plots=at_plots, map_stratum_mean=frame_means,
            epochs=job.epochs, stock_unit="Mg C", change_factor=co2_per_c(),
            change_unit="t CO2e", confidence=job.confidence,
        )  # fmt: skip
        change_rule = job.project_change_estimator if project else job.change_estimator
        rule = (job.estimator, change_rule)
        systematic = None
        if context.shared is not None:
            draws = [
                {e: np.where(in_domain, v, 0.0) for e, v in draw.items()}
                for draw in _draws(context.shared.shifts, plots, y)
            ]
            systematic = systematic_sd(
                sample_design, plot_value_draws=draws,
                map_scales=context.shared.map_scales, map_at_plots=at_plots,
                map_stratum_mean=frame_means, epochs=job.epochs, change_factor=co2_per_c(),
            )  # fmt: skip
        rows.extend(
            _rows(
                str(name), totals, rule, float(frames["area_ha"].sum()),
                assisted_note=assisted_note, may_assist=may_assist, target=job.target,
                systematic=systematic,
            )
        )  # fmt: skip
        _note_corrections(rows, totals, corrections, job.epochs)
        if exclude is None:
            plan.extend(_plan(str(name), sample_design, y, job, plot_area_ha))
    except SurveyError as err:
        raise _refused(str(name), err) from None
    if note:
        for row in rows:
            row["note"] = "; ".join(filter(None, (note, row["note"])))
    return _SampleResult(
        rows, plan, totals, systematic, assisted_note, may_assist,
        domain_area_ha=float(population.geometry.area.sum()) / M2_PER_HA,
        plots_in_domain=int(in_domain.sum()),
    )  # fmt: skip


@dataclass(frozen=True)
class _SampleResult:
    """One sample's (or domain's) rows and plan, and what a sum over samples needs."""

    rows: list[dict[str, Any]]
    plan: list[dict[str, Any]]
    totals: list[SampleTotal]
    #: systematic SD by (quantity, estimator), or None
    systematic: dict[tuple[str, str], float] | None
    assisted_note: str
    may_assist: bool
    #: the geometric area (ha) of the frames' part estimated (minus ``exclude``), and the
    #: plots whose centre lies in it
    domain_area_ha: float
    plots_in_domain: int


def _draws(
    shifts: Mapping[str, pd.DataFrame], plots: gpd.GeoDataFrame, y: Mapping[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """The plot values of each shared draw: per epoch, ``y`` plus the draw's shift of each
    plot (0 for a plot without trees: zero biomass has no conversion error)."""
    ids = plots["plot_id"].astype(str)
    by_epoch = {
        e: y[e][:, None] + shifts[e].reindex(ids).fillna(0.0).to_numpy(dtype=np.float64) for e in y
    }
    n = len(next(iter(shifts.values())).columns)
    return [{e: v[:, k] for e, v in by_epoch.items()} for k in range(n)]


@dataclass(frozen=True)
class _CrossFit:
    """What the cross-fitted estimates of a sample that trained the map need from the model
    stage: per epoch each training plot's shift to its out-of-fold map value (Mg C/ha) and
    its fold, and the map and fold maps at the sampled cells (``None``: no fold maps)."""

    shifts: dict[str, pd.Series]
    folds: dict[str, pd.Series]
    cells: pd.DataFrame | None
    factor_c: float
    cell_ha: float
    inclusion_probability: float

    def correction(
        self, epoch: str, frames: gpd.GeoDataFrame, design: StratifiedDesign, plot_ids: pd.Series
    ) -> FoldCorrection | None:
        """The fold maps' correction of the stratum means of ``frames`` (in the order of
        ``design``'s strata) at ``epoch`` for the plots ``plot_ids`` of ``design``
        (:func:`models.survey.crossfit.fold_map_correction`): each sampled cell in the
        stratum whose frame holds its centre; ``None`` without fold maps."""
        if self.cells is None:
            return None
        cells = self.cells[self.cells["epoch"] == epoch]
        x, y = cells["x_m"].to_numpy(), cells["y_m"].to_numpy()
        stratum = np.full(len(cells), NO_STRATUM, dtype=np.int64)
        for h, geometry in enumerate(frames.geometry):
            stratum[shapely.contains_xy(geometry, x, y)] = h
        columns = [c for c in cells.columns if c.startswith(FOLD_MAP_PREFIX)]
        # a cell without a value is 0 in every map: no shift
        shift = cells[columns].to_numpy(dtype=np.float64) - cells[["agb_mg_ha"]].to_numpy()
        fold = self.folds.get(epoch, pd.Series(dtype=np.int64)).reindex(plot_ids)
        try:
            return fold_map_correction(
                design,
                fold.fillna(NO_FOLD).to_numpy(dtype=np.int64),
                cell_stratum=stratum,
                cell_shift=np.nan_to_num(shift) * self.factor_c,
                cell_ha=self.cell_ha,
                inclusion_probability=self.inclusion_probability,
            )
        except SurveyError as err:
            raise InputDataError(f"{FOLD_MAPS_RELPATH}: {err}") from None


def _cross_fit(
    plot_features: pd.DataFrame | None,
    fold_maps: pd.DataFrame | None,
    model_card: Mapping[str, Any] | None,
) -> _CrossFit | None:
    """The model stage's cross-fitting records (:class:`_CrossFit`): the carbon density
    (Mg C/ha) to add to the map's value at each training plot (index ``plot_id``) to make
    it cross-fitted, the model stage's held-out minus in-sample prediction (Mg/ha AGB)
    times the maps' AGB-to-carbon factor, with the plot's fold; and the fold maps.
    ``None`` when the model stage did not record the plots' values."""
    if plot_features is None or model_card is None:
        return None
    if not set(CROSS_FIT_COLUMNS) <= set(plot_features.columns):
        return None
    factor_c = carbon_per_agb(model_card["conversion"])
    table = plot_features.assign(
        plot_id=plot_features["plot_id"].astype(str),
        epoch=plot_features["epoch"].astype(str),
        shift=(plot_features["held_out_mg_ha"] - plot_features["fitted_mg_ha"]) * factor_c,
    )
    record = model_card.get("fold_maps")
    if record is not None and "skipped" in record:
        record = None  # the model stage made no fold maps (stages.estimate.cross_fit false)
    if fold_maps is not None and record is not None and FOLD_COLUMN in table:
        fold_maps = fold_maps.assign(epoch=fold_maps["epoch"].astype(str))
    else:  # a model stage before the fold maps: cross-fitted rows without the correction
        fold_maps, table[FOLD_COLUMN] = None, NO_FOLD
    by_epoch = {str(e): part.set_index("plot_id") for e, part in table.groupby("epoch", sort=False)}
    return _CrossFit(
        shifts={e: part["shift"].astype(np.float64) for e, part in by_epoch.items()},
        folds={e: part[FOLD_COLUMN].astype(np.int64) for e, part in by_epoch.items()},
        cells=fold_maps,
        factor_c=factor_c,
        cell_ha=float(record["cell_ha"]) if record else np.nan,
        inclusion_probability=float(record["inclusion_probability"]) if record else np.nan,
    )


def _note_corrections(
    rows: list[dict[str, Any]],
    totals: list[SampleTotal],
    corrections: Mapping[str, tuple[FoldCorrection, StratifiedDesign]],
    epochs: Sequence[str],
) -> None:
    """Append to the model-assisted stock rows the fold maps' correction of the total and
    its own sampling SE, beside the estimate's SE (which leaves it out, being negligible),
    and take the correction out of every row's ``map_total``, which is the map's own sum
    (the estimators took the corrected stratum means)."""
    shifts = {
        e: float(design.stratum_area_ha @ correction.mean_per_ha)
        for e, (correction, design) in corrections.items()
    }
    stocks = {stock_quantity(e): e for e in corrections}
    first, last = epochs[0], epochs[-1]
    change = change_quantity(first, last)
    change_shift = (shifts.get(last, 0.0) - shifts.get(first, 0.0)) * co2_per_c()
    for row, total in zip(rows, totals, strict=True):
        if row["quantity"] in stocks:
            row["map_total"] -= shifts[stocks[row["quantity"]]]
        elif row["quantity"] == change:
            row["map_total"] -= change_shift
        if row["estimator"] == PLOT_ONLY or row["quantity"] not in stocks:
            continue
        correction, design = corrections[stocks[row["quantity"]]]
        shift = shifts[stocks[row["quantity"]]]
        se = correction.total_se(design)
        row["note"] = (
            f"{row['note']}; fold maps' correction {shift:+,.0f} {total.unit} "
            f"({shift / row['total']:+.1%}), its sampling SE {se:,.0f} "
            f"({se / row['se']:.1%} of the estimate's SE, not added)"
        )


def _plan(
    name: str,
    design: StratifiedDesign,
    y: Mapping[str, np.ndarray],
    job: EstimateJob,
    plot_area_ha: float | None,
) -> list[dict[str, Any]]:
    """The AR-TOOL03 plan of a sample for its stock at the last epoch and for the change.

    The stratum SDs and means are the sample's own (plot densities; the change in t CO2e),
    and the areas the strata's expansion areas:
    how many plots, allocated by Neyman, the target precision needs, beside how many the
    sample has. A project developer reads it before the next measurement.
    """
    first, last = job.epochs[0], job.epochs[-1]
    both = np.isfinite(y[first]) & np.isfinite(y[last])
    values = {
        stock_quantity(last): (np.isfinite(y[last]), y[last]),
        change_quantity(first, last): (both, (y[last] - y[first]) * co2_per_c()),
    }
    rows = []
    for quantity, (ok, v) in values.items():
        sub = design.subset(ok)
        vals = v[ok]
        idx = sub.plot_stratum
        sd = np.array([np.std(vals[idx == h], ddof=1) for h in range(sub.n_strata)])
        mean = np.array([np.mean(vals[idx == h]) for h in range(sub.n_strata)])
        plan = ar_tool03_sample_size(
            sub.stratum_area_ha, sd, mean, relative_error=job.target,
            confidence=job.confidence, plot_area_ha=plot_area_ha,
        )  # fmt: skip
        for h, stratum in enumerate(sub.stratum_names):
            rows.append(
                {
                    "sample": name, "quantity": quantity, "stratum": stratum,
                    "area_ha": float(sub.stratum_area_ha[h]),
                    "n_plots": int(sub.plots_per_stratum[h]), "sd_per_ha": float(sd[h]),
                    "mean_per_ha": float(mean[h]), "target_relative_half_width": job.target,
                    "confidence": job.confidence, "n_required": plan.n_required,
                    "plots_required": int(plan.plots[h]),
                }
            )  # fmt: skip
    return rows


#: the columns of ``estimates/totals.csv`` the manifest records for every estimate
RESULT_COLUMNS = (
    "sample", "quantity", "unit", "estimator", "chosen", "total", "se", "df", "half_width",
    "lower", "upper", "relative_efficiency", "map_total", "meets_target", "systematic_sd",
    "combined_half_width",
)  # fmt: skip


def estimate_results(outputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every estimator's result with its relative efficiency, for the manifest."""
    table = outputs[ESTIMATES_RELPATH].loc[:, list(RESULT_COLUMNS)]
    # NaN (no efficiency of the plot-only estimate against itself) as null
    records: list[dict[str, Any]] = json.loads(table.to_json(orient="records", double_precision=15))
    return records


STAGE = Stage(
    name="estimate",
    func=estimate,
    params=estimate_job,
    inputs=estimate_inputs,
    results=estimate_results,
)
