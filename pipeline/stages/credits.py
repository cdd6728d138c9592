"""Stage ``credits``: net removals, uncertainty deduction and buffer for the project area.

The arithmetic is :func:`models.credits.credit_steps`; the rules come from the
methodology file named by ``stages.credits.methodology`` (one of ``configs/methodology/*.yaml``,
described in ``docs/methodologies.md``), resolved into the frozen job before any work.

The credited line is the project ``TOTAL``. Its project removals are the project's stock
change as estimated from its monitoring plots (``estimates/totals.csv``, sample
``project``, the estimator the methodology file names: :mod:`pipeline.stages.estimate`),
with that estimate's standard error and Student-t degrees of freedom (AR-TOOL14); the
baseline is the parcels' stated ``baseline_tco2e_ha_yr`` times their area (from the
geometry, in the map CRS) and the period (years between the two epochs' reference dates).
Without a project plot sample the total falls back to the sink map's sum with the fully
correlated SD bound (normal quantile), and the stage warns: a verifier will not accept it.

Land rules (:mod:`pipeline.eligibility`): a methodology file's ``eligibility`` (afforestation:
not forest before the start, judged on the parcel layer and the model card's land-use
classification) and ``applies_to`` (forest types) refuse project parcels with a named
reason (columns ``eligible`` and ``ineligible_reason``). A refused parcel leaves the
credited total: the ``TOTAL`` is then the eligible parcels' map sum, and the project
sample's estimate, which covers the declared area, is the ``DECLARED`` row beside it, not
credited. A parcel the data cannot judge stays in, with a warning.

Parcel rows are informative: the fractional-coverage zonal sum of the sink map (t CO2e/yr,
:mod:`pipeline.zonal`) times the period, with the SD aggregation of ``SinkParams``
(correlated: SDs add up; independent: root sum of squares). The sink raster is read on the
windows of the project's parcels only (:func:`pipeline.zonal.coverage_windows`).

Signatures
----------
``credits_job(config) -> CreditsJob`` (:mod:`pipeline.contracts`, shared with ``report``)
    loads and validates the methodology (``ConfigError`` naming the file on problems) and
    applies ``stages.credits.leakage_fraction`` / ``buffer_fraction`` overrides.
``credits_inputs(config, layout) -> {"sink": rasters/sink.tif, "project": sources.project_area,
"estimates": estimates/totals.csv}``, with a land rule in a methodology also ``"parcels":
sources.parcels`` (when set) and ``"model_card": model/model_card.json``
``credits_stage(job, *, sink, project, estimates=None, parcels=None, model_card=None)
-> {"credits/credits.csv": DataFrame, "credits/credits_<id>.csv": DataFrame, ...}``
    one row per parcel and a ``TOTAL`` row (and ``DECLARED`` when parcels are refused),
    every step's value in its own column; one table per methodology of
    ``stages.credits.compare`` beside the run's.

Run: ``forest-carbon run --region nanping --stages credits`` or ``forest-carbon credits``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from models.credits import CreditSteps, Methodology, credit_steps
from models.survey.totals import change_quantity, stock_quantity
from pipeline.config import Config
from pipeline.contracts import (
    CREDITS_RELPATH,
    DECLARED_ID,
    ESTIMATES_RELPATH,
    MODEL_CARD_RELPATH,
    PROJECT_SAMPLE,
    SAMPLE_PLAN_RELPATH,
    SINK_RELPATH,
    TOTAL_ID,
    CreditsJob,
    RunLayout,
    compared_credits_relpath,
    credits_job,
    domain_sample,
)
from pipeline.eligibility import LandUseData, parcel_eligibility
from pipeline.errors import ConfigError, InputDataError, PipelineWarning
from pipeline.sink import as_band, decimal_year, named_band
from pipeline.stage import Stage
from pipeline.units import M2_PER_HA, with_mu_areas
from pipeline.zonal import block_shape, coverage_windows, weighted_sum


def credits_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """Input files of the ``credits`` stage."""
    if config.sources.project_area is None:
        raise ConfigError(
            "sources.project_area: the credits stage needs the project parcels "
            "(e.g. data/<region>/parcels/project.gpkg)"
        )
    inputs = {
        "sink": layout.path(SINK_RELPATH),
        "project": config.sources.project_area,
        "estimates": layout.path(ESTIMATES_RELPATH),
    }
    methods = [m for m, _ in credits_job(config).methodologies]
    if any(m.eligibility is not None or m.applies_to is not None for m in methods):
        # the land rules are checked on the parcel layer and the land-use classifier
        if config.sources.parcels is not None:
            inputs["parcels"] = config.sources.parcels
        inputs["model_card"] = layout.path(MODEL_CARD_RELPATH)
    return inputs


#: the TOTAL row's flags: the project sample's stock at the last epoch (CDM AR-TOOL03's
#: target) and its credited stock change reach the target precision
TARGET_COLUMNS = ("sample_meets_target", "change_meets_target")
#: the estimator name of a total taken from the maps (no project plot sample)
MAP_SUM = "map_sum_correlated_bound"
#: the scope of the credited TOTAL when parcels are refused: the eligible parcels' map sum,
#: or the project sample's estimate over the strata of the eligible parcels
ELIGIBLE_SCOPE = "eligible parcels (credited, map sum)"
DOMAIN_SCOPE = "eligible parcels (credited, survey of their strata)"
#: relative difference allowed between a domain's strata frames and the eligible parcels'
#: area (geometry round-off; a refused parcel of a credited type is far larger)
DOMAIN_AREA_TOLERANCE = 0.005
DECLARED_SCOPE = "declared project area (survey; covers refused parcels; not credited)"


def _chosen(estimates: pd.DataFrame, sample: str, quantity: str) -> pd.DataFrame:
    """The chosen estimates of ``quantity`` of ``sample`` in ``estimates/totals.csv``."""
    return estimates[
        (estimates["sample"] == sample)
        & (estimates["quantity"] == quantity)
        & estimates["chosen"].astype(bool)
    ]


def sample_meets_target(job: CreditsJob, estimates: pd.DataFrame, quantity: str) -> bool:
    """Whether the project sample's chosen estimate of ``quantity`` reaches the target
    precision (``meets_target`` of the estimate stage: CDM AR-TOOL03)."""
    rows = _chosen(estimates, PROJECT_SAMPLE, quantity)
    return bool(len(rows) and rows["meets_target"].astype(bool).all())


def project_change(
    job: CreditsJob, estimates: pd.DataFrame | None, *, sample: str = PROJECT_SAMPLE
) -> tuple[float, float, float, str] | None:
    """The chosen survey estimate of the project's stock change: total, SE, df, estimator.

    ``sample`` is the project sample or one of its domains (:func:`domain_sample`).
    ``None`` when ``estimates`` has no such sample (no project plots).
    """
    row = _chosen_change(job, estimates, sample)
    return None if row is None else _survey(row, sample)


def _survey(row: pd.Series, sample: str) -> tuple[float, float, float, str]:
    """Total, SE, df and estimator of a chosen change estimate of ``sample``."""
    where = "project plots" if sample == PROJECT_SAMPLE else f"project plots of {sample}"
    return float(row["total"]), float(row["se"]), float(row["df"]), f"{row['estimator']} ({where})"


def _chosen_change(
    job: CreditsJob, estimates: pd.DataFrame | None, sample: str
) -> pd.Series | None:
    if estimates is None or estimates.empty:
        return None
    quantity = change_quantity(job.sink.epoch_start, job.sink.epoch_end)
    rows = _chosen(estimates, sample, quantity)
    if rows.empty:
        return None
    if len(rows) > 1:
        raise InputDataError(
            f"{ESTIMATES_RELPATH}: more than one chosen estimate of {quantity} ({sample})"
        )
    return rows.iloc[0]


def domain_change(
    job: CreditsJob, estimates: pd.DataFrame | None, method_id: str, eligible_area_ha: float
) -> tuple[float, float, float, str] | None:
    """The project sample's estimate over the strata ``method_id`` credits, when those
    strata are the eligible parcels: their frames' area within
    :data:`DOMAIN_AREA_TOLERANCE` of the eligible parcels' (parcels refused for another
    reason than their forest type make the two differ)."""
    sample = domain_sample(method_id)
    row = _chosen_change(job, estimates, sample)
    if row is None or eligible_area_ha <= 0:
        return None
    if abs(float(row["area_ha"]) / eligible_area_ha - 1.0) > DOMAIN_AREA_TOLERANCE:
        return None
    return _survey(row, sample)


def _steps_row(unit_id: str, scope: str, steps: CreditSteps) -> dict[str, Any]:
    return {"parcel_id": unit_id, "scope": scope, **dataclasses.asdict(steps)}


def land_use_data(
    job: CreditsJob,
    *,
    parcels: gpd.GeoDataFrame | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> LandUseData:
    """What the run knows of the parcels' land use before the start (the parcel layer
    and the model card's land-use record, when given)."""
    return LandUseData(
        parcels=parcels,
        land_use=None if model_card is None else model_card.get("land_use", {}),
        epochs_before_start=job.epochs_before_start or (job.sink.epoch_start,),
        parcels_epoch=job.parcels_epoch or job.sink.epoch_end,
        forest_land_classes=job.forest_land_classes,
        start_year=decimal_year(job.sink.reference_start),
    )


#: parcel ids a warning names per reason; the rest are counted (credits.csv has them all)
LISTED_IDS = 5


def _by_reason(ids: list[str], reasons: Any, mask: np.ndarray) -> str:
    """``ids`` under ``mask`` grouped by their reason: "NP1, NP2 and 3 more (reason); ..."."""
    groups: dict[str, list[str]] = {}
    for i in np.flatnonzero(mask):
        groups.setdefault(str(reasons[i]), []).append(ids[i])
    parts = []
    for reason, members in groups.items():
        shown = ", ".join(members[:LISTED_IDS])
        more = len(members) - LISTED_IDS
        parts.append(f"{shown}{f' and {more} more' if more > 0 else ''} ({reason})")
    return "; ".join(parts)


def credits_table(
    job: CreditsJob,
    *,
    sink: xr.DataArray | xr.Dataset,
    project: gpd.GeoDataFrame,
    estimates: pd.DataFrame | None = None,
    land: LandUseData | None = None,
    methodology: Methodology | None = None,
) -> pd.DataFrame:
    """Credit calculation per project parcel and for the project total under
    ``methodology`` (default: the job's), with each parcel's eligibility under its land
    rules checked on ``land`` (:mod:`pipeline.eligibility`)."""
    method = methodology or job.methodology
    col = method.baseline_column
    for needed in ("parcel_id", col):
        if needed not in project.columns:
            raise InputDataError(
                f"project area: no '{needed}' column (needed by methodology '{method.id}', "
                f"{dict((m.id, f) for m, f in job.methodologies)[method.id]}); "
                f"columns: {list(project.columns)}"
            )
    if project[col].isna().any():
        bad = project.loc[project[col].isna(), "parcel_id"].tolist()[:5]
        raise InputDataError(f"project area: '{col}' is empty for parcels {bad}")
    rate = as_band(named_band(sink, "sink_tco2e_ha_yr", source=SINK_RELPATH), name="sink")
    sd = as_band(named_band(sink, "sink_sd_tco2e_ha_yr", source=SINK_RELPATH), name="sink SD")
    crs = rate.rio.crs
    if crs is None:
        raise InputDataError(f"{SINK_RELPATH}: the sink raster has no CRS")
    transform = rate.rio.transform(recalc=True)
    px_ha = abs(transform.a * transform.e) / M2_PER_HA
    # the sink's zonal sums per parcel (t CO2e/yr): its value and SD, and the SD's root sum
    # of squares, read on the windows of the project's parcels only
    zonal = np.zeros((len(project), 3))
    for win in coverage_windows(
        project,
        transform=transform,
        shape=(rate.sizes["y"], rate.sizes["x"]),
        crs=crs.to_string(),
        block=block_shape(rate),
    ):
        rate_v, sd_v = (
            np.asarray(v, dtype=np.float64)
            for v in dask.compute(win.grid(rate).data, win.grid(sd).data)
        )
        for i, cov in zip(win.members, win.covs, strict=True):
            zonal[i] = (
                weighted_sum(cov, rate_v) * px_ha,
                weighted_sum(cov, sd_v) * px_ha,
                math.sqrt(weighted_sum(cov, sd_v, power=2)) * px_ha,
            )
    areas_ha = project.geometry.to_crs(crs.to_string()).area.to_numpy() / M2_PER_HA
    years = job.sink.years
    # the spatial error model is fitted by the parcels stage, for the parcels' SDs; the
    # credits' map rows (informative) keep the fully correlated bound under it
    correlated = job.sink.parcel_error_aggregation != "independent"
    aggregation = "correlated" if correlated else "independent"
    eligibility = parcel_eligibility(
        project.to_crs(crs.to_string()), method, land or land_use_data(job)
    )
    refused = eligibility["eligible"].eq(False).fillna(False).to_numpy(dtype=bool)

    rows = []
    # sums over every declared parcel and over the parcels not refused
    sums = {k: dict.fromkeys(("project", "sd_lin", "area", "baseline"), 0.0) for k in ("all", "ok")}
    for i, (pid, base_rate, area, (proj_yr, sd_lin, sd_rss)) in enumerate(
        zip(project["parcel_id"], project[col].astype(float), areas_ha, zonal, strict=True)
    ):
        sd_yr = sd_lin if correlated else sd_rss
        steps = credit_steps(
            area_ha=float(area),
            period_yr=years,
            project_tco2e=proj_yr * years,
            project_sd_tco2e=sd_yr * years,
            baseline_rate_tco2e_ha_yr=float(base_rate),
            methodology=method,
            df=math.inf,
            estimator=f"map ({aggregation} pixel errors)",
        )
        rows.append(_steps_row(str(pid), "parcel (informative)", steps))
        for key in ("all",) if refused[i] else ("all", "ok"):
            sums[key]["project"] += proj_yr * years
            sums[key]["sd_lin"] += sd_lin * years
            sums[key]["area"] += float(area)
            sums[key]["baseline"] += float(base_rate) * float(area)

    def total(key: str, change: float, change_sd: float, df: float, estimator: str) -> CreditSteps:
        area = sums[key]["area"]
        return credit_steps(
            area_ha=area,
            period_yr=years,
            project_tco2e=change,
            project_sd_tco2e=change_sd,
            # area-weighted mean stated rate, so that rate x area x period = sum of parcels
            baseline_rate_tco2e_ha_yr=sums[key]["baseline"] / area if area > 0 else 0.0,
            methodology=method,
            df=df,
            estimator=estimator,
        )

    ids = project["parcel_id"].astype(str).tolist()
    unchecked = eligibility["eligible"].isna().to_numpy(dtype=bool)
    if unchecked.any():
        listed = _by_reason(ids, eligibility["ineligible_reason"], unchecked)
        warnings.warn(
            PipelineWarning(
                f"credits: under {method.id}, the eligibility of project parcels {listed} "
                "could not be checked on the data; they stay in the credited total, which a "
                "verifier must confirm (docs/methodologies.md, 'Eligibility on the data')",
                code="eligibility_unchecked",
                values={"methodology": method.id, "parcels": listed},
            ),
            stacklevel=2,
        )
    survey = project_change(job, estimates)
    # the stock at the last epoch (AR-TOOL03's target) and the credited change
    meets_target: tuple[bool, bool] | None = None
    if survey is not None and estimates is not None:
        meets_target = (
            sample_meets_target(job, estimates, stock_quantity(job.sink.epoch_end)),
            sample_meets_target(
                job, estimates, change_quantity(job.sink.epoch_start, job.sink.epoch_end)
            ),
        )
        if not meets_target[0]:
            warnings.warn(
                PipelineWarning(
                    f"credits: the project's plot sample misses its target precision for the "
                    f"stock (see {SAMPLE_PLAN_RELPATH} for the plots it needs)",
                    code="sample_misses_target",
                    values={"plan": SAMPLE_PLAN_RELPATH},
                ),
                stacklevel=2,
            )
    map_sum = ("ok", sums["ok"]["project"], sums["ok"]["sd_lin"], math.inf, MAP_SUM)
    #: the row that takes the project sample's estimate (its target flags go there)
    survey_row: int | None = None
    if refused.any():
        listed = _by_reason(ids, eligibility["ineligible_reason"], refused)
        if survey is not None:
            # the project sample's frames cover the declared area, refused parcels too: its
            # estimate is shown, not credited; the credited line is the eligible parcels' map
            rows.append(_steps_row(DECLARED_ID, DECLARED_SCOPE, total("all", *survey)))
            survey_row = len(rows) - 1
        domain = domain_change(job, estimates, method.id, sums["ok"]["area"])
        if domain is not None:
            warnings.warn(
                PipelineWarning(
                    f"credits: under {method.id}, project parcels {listed} are not "
                    "eligible and leave the credited total; the credited TOTAL is the project "
                    "plot sample's estimate over the strata of the eligible parcels, and the "
                    f"estimate over the declared project area is the {DECLARED_ID} row beside "
                    "it, not credited",
                    code="ineligible_sample_domain",
                    values={"methodology": method.id, "parcels": listed, "declared": DECLARED_ID},
                ),
                stacklevel=2,
            )
            rows.append(_steps_row(TOTAL_ID, DOMAIN_SCOPE, total("ok", *domain)))
        else:
            message = (
                f"credits: under {method.id}, project parcels {listed} are not "
                "eligible and leave the credited total; the credited TOTAL is the eligible "
                "parcels' map sum (fully correlated SD bound)"
            )
            if survey is None:
                warnings.warn(
                    PipelineWarning(
                        message,
                        code="ineligible_map_sum",
                        values={"methodology": method.id, "parcels": listed},
                    ),
                    stacklevel=2,
                )
            else:
                warnings.warn(
                    PipelineWarning(
                        f"{message}, and the project plot sample's estimate, which covers the "
                        f"declared project area, is the {DECLARED_ID} row beside it, not "
                        "credited (its strata are not the eligible parcels)",
                        code="ineligible_map_sum_beside_sample",
                        values={
                            "methodology": method.id,
                            "parcels": listed,
                            "declared": DECLARED_ID,
                        },
                    ),
                    stacklevel=2,
                )
            rows.append(_steps_row(TOTAL_ID, ELIGIBLE_SCOPE, total(*map_sum)))
    else:
        if survey is None:
            survey_row = None
            warnings.warn(
                PipelineWarning(
                    f"credits: no project plot sample in {ESTIMATES_RELPATH}; the project total "
                    "is the sink map's sum with the fully correlated SD bound, which a verifier "
                    "will not accept (declare the project's monitoring plots in "
                    "sources.plot_design)",
                    code="no_project_sample",
                    values={"estimates": ESTIMATES_RELPATH},
                ),
                stacklevel=2,
            )
            survey = map_sum[1:]
        else:
            survey_row = len(rows)
        rows.append(_steps_row(TOTAL_ID, "project (credited)", total("all", *survey)))
    table = pd.DataFrame(rows)
    n = len(project)
    table["eligible"] = pd.array(
        [*eligibility["eligible"], *[pd.NA] * (len(table) - n)], dtype="boolean"
    )
    table["ineligible_reason"] = [*eligibility["ineligible_reason"], *[""] * (len(table) - n)]
    for column, met in zip(TARGET_COLUMNS, meets_target or (None, None), strict=True):
        table[column] = pd.Series(dtype="boolean")
        if met is not None and survey_row is not None:
            table.loc[survey_row, column] = met
    table.insert(2, "methodology", method.id)
    table.insert(3, "epochs", f"{job.sink.epoch_start}-{job.sink.epoch_end}")
    return table


def credits_stage(
    job: CreditsJob,
    *,
    sink: xr.DataArray | xr.Dataset,
    project: gpd.GeoDataFrame,
    estimates: pd.DataFrame | None = None,
    parcels: gpd.GeoDataFrame | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """The ``credits`` stage: ``credits/credits.csv`` and, per methodology of
    ``stages.credits.compare``, ``credits/credits_<id>.csv``."""
    land = land_use_data(job, parcels=parcels, model_card=model_card)
    out = {}
    for i, (method, _) in enumerate(job.methodologies):
        table = credits_table(
            job, sink=sink, project=project, estimates=estimates, land=land, methodology=method
        )
        out[CREDITS_RELPATH if i == 0 else compared_credits_relpath(method.id)] = with_mu_areas(
            table
        )
    return out


STAGE = Stage(name="credits", func=credits_stage, params=credits_job, inputs=credits_inputs)
