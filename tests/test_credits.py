"""Tests of the credit arithmetic (models.credits) and the credits stage."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr
import yaml
from helpers import assert_numpy_equals_dask
from scipy.stats import t as student_t
from shapely.geometry import box

from models.credits import (
    CreditSteps,
    Methodology,
    credit_steps,
    load_methodology,
    methodology_from_mapping,
    uncertainty_deduction_tco2e,
)
from pipeline.config import CreditsParams, SinkParams, parse_config
from pipeline.contracts import CREDITS_RELPATH, TOTAL_ID, CreditsJob, SinkJob, credits_job
from pipeline.errors import ConfigError, InputDataError
from pipeline.stages.credits import credits_stage

REPO = Path(__file__).resolve().parent.parent
CCER = load_methodology(REPO / "configs/methodology/ccer.yaml")
VM0047 = load_methodology(REPO / "configs/methodology/vm0047.yaml")
FOREST_MANAGEMENT = load_methodology(REPO / "configs/methodology/forest_management.yaml")
BAMBOO_MANAGEMENT = load_methodology(REPO / "configs/methodology/bamboo_management.yaml")


def test_methodology_files_load_with_sources():
    assert CCER.uncertainty_rule.kind == "discount_table"
    assert [b.share_of_half_width for b in CCER.uncertainty_rule.bands] == [
        0.0, 0.25, 0.5, 0.75, 1.0,
    ]  # fmt: skip
    assert VM0047.uncertainty_rule.kind == "excess_over_threshold"
    assert VM0047.uncertainty_rule.threshold == pytest.approx(0.15)
    for m in (CCER, VM0047):
        assert m.confidence_level == pytest.approx(0.90)
        names = {p[0] for p in m.provenance}
        assert {"leakage_fraction", "buffer_fraction", "uncertainty_rule"} <= names
        assert all(src for _, src, _ in m.provenance)


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs/methodology").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_methodology_file_loads_and_cites_its_sources(path: Path) -> None:
    m = load_methodology(path)
    names = [p[0] for p in m.provenance]
    assert {"leakage_fraction", "buffer_fraction", "baseline", "uncertainty_rule"} <= set(names)
    assert all(src.strip() for _, src, _ in m.provenance)


def test_management_methodologies_carry_their_ids_and_defaults():
    # AR-CM-003-V01 and AR-CM-005-V01: no leakage or buffer clause could be read, so both
    # default to 0 and are flagged unverified; the uncertainty rule is AR-TOOL14's table
    for m, ident in ((FOREST_MANAGEMENT, "ar-cm-003"), (BAMBOO_MANAGEMENT, "ar-cm-005")):
        assert m.id == ident
        assert (m.leakage_fraction, m.buffer_fraction) == (0.0, 0.0)
        assert m.uncertainty_rule.kind == "discount_table"
        assert m.estimator == "stratified"
        verified = {name: ok for name, _, ok in m.provenance}
        assert not verified["leakage_fraction"] and not verified["buffer_fraction"]


def test_ar_tool14_worked_example():
    # AR-TOOL14 v04.2 Appendix 2: mean 60 +- 9 t d.m./ha, U = 9/60 = 15 % -> 25 % of the
    # half-width: 0.25 x 9 = 2.25, conservative project value 60 - 2.25 = 57.75
    deduction, share = uncertainty_deduction_tco2e(60.0, 9.0, CCER.uncertainty_rule)
    assert share == 0.25
    assert deduction == pytest.approx(2.25)
    assert 60.0 - deduction == pytest.approx(57.75)
    # U = 8 % -> no deduction; U = 40 % -> the whole half-width
    assert uncertainty_deduction_tco2e(100.0, 8.0, CCER.uncertainty_rule) == (0.0, 0.0)
    assert uncertainty_deduction_tco2e(100.0, 40.0, CCER.uncertainty_rule)[0] == pytest.approx(40.0)


def _steps(methodology: Methodology, **changes: Any) -> CreditSteps:
    """The hand examples' unit: 10 ha over 5 years, baseline 4 t CO2e/ha/yr, P 1000 +- 100."""
    inputs: dict[str, Any] = {
        "area_ha": 10.0, "period_yr": 5.0, "project_tco2e": 1000.0, "project_sd_tco2e": 100.0,
        "baseline_rate_tco2e_ha_yr": 4.0, "df": math.inf, "estimator": "hand",
    }  # fmt: skip
    return credit_steps(**{**inputs, **changes}, methodology=methodology)


def test_credit_steps_by_hand_ccer_table():
    # Hand computation (t CO2e), CCER file with leakage 10 % and buffer 5 % overrides:
    #   project P = 1000, sd_P = 100, area 10 ha, period 5 yr, baseline 4 t/ha/yr
    #   baseline B = 4 x 10 x 5 = 200
    #   leakage L = 0.10 x (1000 - 200) = 80
    #   net N = 1000 - 200 - 80 = 720; sd_N = 100 x (1 - 0.10) = 90
    #   z(90 %) = 1.6448536; half-width = 1.6448536 x 90 = 148.036826
    #   U = 148.036826 / 720 = 0.2056067 (20.56 %) -> band 20-30 % -> 75 % of half-width
    #   deduction = 0.75 x 148.036826 = 111.027620; after = 720 - 111.027620 = 608.972380
    #   buffer = 0.05 x 608.972380 = 30.448619; credits = 608.972380 - 30.448619 = 578.523761
    m = CCER.with_overrides(leakage_fraction=0.10, buffer_fraction=0.05)
    s = _steps(m)
    assert s.baseline_tco2e == pytest.approx(200.0)
    assert s.leakage_tco2e == pytest.approx(80.0)
    assert s.net_tco2e == pytest.approx(720.0)
    assert s.net_sd_tco2e == pytest.approx(90.0)
    assert s.t_value == pytest.approx(1.6448536, abs=1e-7)  # df = inf: the normal quantile
    assert s.half_width_tco2e == pytest.approx(148.036826, abs=1e-5)
    assert s.uncertainty_pct == pytest.approx(20.56067, abs=1e-4)
    assert s.uncertainty_factor == 0.75
    assert s.uncertainty_deduction_tco2e == pytest.approx(111.027620, abs=1e-5)
    assert s.after_uncertainty_tco2e == pytest.approx(608.972380, abs=1e-5)
    assert s.buffer_tco2e == pytest.approx(30.448619, abs=1e-5)
    assert s.credits_tco2e == pytest.approx(578.523761, abs=1e-5)


def test_credit_steps_by_hand_vm0047_threshold():
    # Same inputs, VM0047 file (threshold 15 %), leakage 10 %, buffer 10 %:
    #   N = 720, half-width 148.036826, U = 20.56067 %
    #   UNC = (0.2056067 - 0.15) x 720 = 148.036826 - 108 = 40.036826
    #   after = 679.963174; buffer = 0.10 x 679.963174 = 67.996317; credits = 611.966857
    m = VM0047.with_overrides(leakage_fraction=0.10, buffer_fraction=0.10)
    s = _steps(m)
    assert s.uncertainty_deduction_tco2e == pytest.approx(40.036826, abs=1e-5)
    assert s.after_uncertainty_tco2e == pytest.approx(679.963174, abs=1e-5)
    assert s.buffer_tco2e == pytest.approx(67.996317, abs=1e-5)
    assert s.credits_tco2e == pytest.approx(611.966857, abs=1e-5)


def test_credit_steps_floor_at_the_lower_end_of_the_interval():
    # The CCER hand example above with the run's floor (stages.credits.at_most_lower_bound):
    #   the table deducts 0.75 x 148.036826 = 111.027620; the floor raises it to the whole
    #   half-width 148.036826: after = 720 - 148.036826 = 571.963174, the interval's lower
    #   end; buffer 0.05 x 571.963174 = 28.598159; credits = 543.365015
    m = CCER.with_overrides(leakage_fraction=0.10, buffer_fraction=0.05, at_most_lower_bound=True)
    s = _steps(m)
    assert s.rule_deduction_tco2e == pytest.approx(111.027620, abs=1e-5)
    assert s.uncertainty_factor == 0.75  # the rule's own factor is still reported
    assert s.uncertainty_deduction_tco2e == pytest.approx(148.036826, abs=1e-5)
    assert s.after_uncertainty_tco2e == pytest.approx(571.963174, abs=1e-5)
    assert s.credits_tco2e == pytest.approx(543.365015, abs=1e-5)
    # where the rule already deducts the whole half-width (U > 30 %) the floor changes nothing
    wide = _steps(m, project_sd_tco2e=200.0)
    assert wide.uncertainty_deduction_tco2e == wide.rule_deduction_tco2e
    assert wide.uncertainty_deduction_tco2e == pytest.approx(wide.half_width_tco2e)
    # never more than the net removals; VM0047's threshold rule gets the same floor
    assert _steps(m, project_sd_tco2e=600.0).credits_tco2e == 0.0
    vm = VM0047.with_overrides(
        leakage_fraction=0.10, buffer_fraction=0.10, at_most_lower_bound=True
    )
    assert _steps(vm).uncertainty_deduction_tco2e == pytest.approx(148.036826, abs=1e-5)
    # the methodology file alone does not floor; the run config does, by default
    assert not CCER.at_most_lower_bound
    assert CreditsParams().at_most_lower_bound


def test_credit_steps_by_hand_forest_management_negative_baseline():
    # AR-CM-003 file as it stands (leakage 0, buffer 0). A forest-management baseline can
    # lose carbon (business-as-usual harvest): -2 t CO2e/ha/yr on 10 ha over 5 years
    #   B = -2 x 10 x 5 = -100; P = 1000, sd_P = 100 (df inf: z = 1.6448536)
    #   N = 1000 - (-100) - 0 = 1100; half-width = 164.48536; U = 164.48536 / 1100 = 14.953 %
    #   band 10-15 % -> 25 % of the half-width: 41.12134; credits = 1100 - 41.12134 = 1058.87866
    s = _steps(FOREST_MANAGEMENT, baseline_rate_tco2e_ha_yr=-2.0)
    assert s.baseline_tco2e == pytest.approx(-100.0)
    assert s.leakage_tco2e == 0.0
    assert s.net_tco2e == pytest.approx(1100.0)
    assert s.half_width_tco2e == pytest.approx(164.48536, abs=1e-4)
    assert s.uncertainty_pct == pytest.approx(14.953215, abs=1e-5)
    assert s.uncertainty_factor == 0.25
    assert s.uncertainty_deduction_tco2e == pytest.approx(41.12134, abs=1e-4)
    assert s.buffer_tco2e == 0.0
    assert s.credits_tco2e == pytest.approx(1058.87866, abs=1e-4)


def test_credit_steps_by_hand_bamboo_management_steady_state():
    # AR-CM-005 file as it stands. A managed Moso stand near its steady state: baseline 0,
    # a small stock change with a wide interval from 20 re-measured plots (19 df):
    #   P = 300, sd_P = 100; t(0.90 two-sided, 19 df) = 1.729133 (tables: 1.729)
    #   N = 300; half-width = 172.9133; U = 57.64 % -> last band: the whole half-width
    #   deduction = 172.9133; credits = 300 - 172.9133 = 127.0867
    s = _steps(BAMBOO_MANAGEMENT, project_tco2e=300.0, baseline_rate_tco2e_ha_yr=0.0, df=19.0)
    assert s.net_tco2e == pytest.approx(300.0)
    assert s.t_value == pytest.approx(1.729133, abs=1e-6)
    assert s.half_width_tco2e == pytest.approx(172.9133, abs=1e-3)
    assert s.uncertainty_pct == pytest.approx(57.6378, abs=1e-3)
    assert s.uncertainty_factor == 1.0
    assert s.uncertainty_deduction_tco2e == pytest.approx(172.9133, abs=1e-3)
    assert s.credits_tco2e == pytest.approx(127.0867, abs=1e-3)


def test_half_width_uses_the_estimate_degrees_of_freedom():
    # AR-TOOL14: t(0.90 two-sided, 33 df) = 1.6924 (tables: 1.692); P = 1000, sd 100,
    # no leakage: half-width = 169.24 of the net 800 (baseline 200) -> U = 21.2 %
    s = _steps(CCER, df=33.0, estimator="stratified")
    assert s.t_value == pytest.approx(1.6924, abs=1e-4)
    assert s.project_half_width_tco2e == pytest.approx(169.24, abs=0.01)
    assert s.half_width_tco2e == pytest.approx(169.24, abs=0.01)
    assert s.uncertainty_pct == pytest.approx(100 * 169.24 / 800, abs=0.01)
    assert s.estimator == "stratified"


def test_no_credits_when_net_removals_are_not_positive():
    # project 100 below baseline 4 x 10 x 5 = 200: net -100, nothing deducted, reported as is
    s = _steps(CCER, project_tco2e=100.0, project_sd_tco2e=10.0)
    assert s.net_tco2e == pytest.approx(-100.0)
    assert s.uncertainty_deduction_tco2e == 0.0
    assert s.buffer_tco2e == 0.0
    assert s.credits_tco2e == 0.0
    assert s.reversal_tco2e == pytest.approx(100.0)


def test_methodology_without_source_is_rejected():
    data = {
        "id": "x",
        "name": "x",
        "leakage_fraction": {"value": 0.0},
        "buffer_fraction": {"value": 0.1, "source": "s"},
        "confidence_level": {"value": 0.9, "source": "s"},
        "baseline": {"kind": "stated_per_parcel", "column": "b", "source": "s"},
        "uncertainty_rule": {"kind": "excess_over_threshold", "threshold": 0.1, "source": "s"},
    }
    with pytest.raises(ValueError, match="'leakage_fraction' has no 'source'"):
        methodology_from_mapping(data, source="m.yaml")


def _sink_raster(rate: float, sd: float) -> xr.DataArray:
    # 10 x 10 grid of 10 m cells at (500000, 3000000) - (500100, 2999900)
    y = 3_000_000 - 10 * (np.arange(10) + 0.5)
    x = 500_000 + 10 * (np.arange(10) + 0.5)
    data = np.stack(
        [np.full((10, 10), v, dtype=np.float32) for v in (rate / 3.6667, 0.1, rate, sd)]
    )
    da = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": ["sink_mg_c_ha_yr", "sink_sd_mg_c_ha_yr", "sink_tco2e_ha_yr",
                     "sink_sd_tco2e_ha_yr"],
            "y": y,
            "x": x,
        },
    )  # fmt: skip
    return da.rio.write_crs("EPSG:32650")


#: parcels A (0.5 ha, baseline 2) and B (0.1 ha, baseline 0)
TWO_PARCELS = gpd.GeoDataFrame(
    {"parcel_id": ["A", "B"], "baseline_tco2e_ha_yr": [2.0, 0.0]},
    geometry=[
        box(500_000, 2_999_900, 500_050, 3_000_000),
        box(500_060, 2_999_950, 500_085, 2_999_990),
    ],
    crs="EPSG:32650",
)


def test_credits_stage_on_a_uniform_sink():
    # sink 10 t CO2e/ha/yr (sd 1) everywhere; parcels A = 50 x 100 m = 0.5 ha (baseline 2),
    # B = 25 x 40 m = 0.1 ha (baseline 0); 5.0021 years between the reference dates.
    # A: P = 10 x 0.5 x T, B = 2 x 0.5 x T; B: P = 10 x 0.1 x T
    sink_job = SinkJob.from_params(
        SinkParams(epoch_error_correlation=0.0),
        epochs=("2019", "2024"),
        reference_dates=(dt.date(2019, 7, 1), dt.date(2024, 7, 1)),
    )
    years = sink_job.years
    job = CreditsJob(CCER, "configs/methodology/ccer.yaml", sink_job)
    project = TWO_PARCELS
    with pytest.warns(UserWarning, match="no project plot sample"):
        table = credits_stage(job, sink=_sink_raster(10.0, 1.0), project=project)[CREDITS_RELPATH]
    rows = table.set_index("parcel_id")
    assert rows.loc["A", "project_tco2e"] == pytest.approx(10 * 0.5 * years, rel=1e-6)
    assert rows.loc["A", "baseline_tco2e"] == pytest.approx(2 * 0.5 * years, rel=1e-9)
    assert rows.loc["B", "project_tco2e"] == pytest.approx(10 * 0.1 * years, rel=1e-6)
    total = rows.loc[TOTAL_ID]
    assert total["project_tco2e"] == pytest.approx(6.0 * years, rel=1e-6)
    assert total["baseline_tco2e"] == pytest.approx(1.0 * years, rel=1e-9)
    # correlated pixel errors: sd = 1 t/ha/yr x 0.6 ha x T; U = 1.645 x 0.6 / 5 = 19.7 %
    assert total["project_sd_tco2e"] == pytest.approx(0.6 * years, rel=1e-6)
    assert total["uncertainty_pct"] == pytest.approx(100 * 1.6448536 * 0.6 / 5.0, rel=1e-5)
    assert total["uncertainty_factor"] == 0.5  # band 15-20 %
    assert total["credits_tco2e"] == pytest.approx(
        total["net_tco2e"] - total["uncertainty_deduction_tco2e"] - total["buffer_tco2e"]
    )
    assert list(table["scope"])[-1] == "project (credited)"
    assert total["estimator"] == "map_sum_correlated_bound"
    # areas in 亩 beside ha: A = 5000 m2 / (6000/9 m2 per 亩) = 7.5 亩, B = 1.5 亩
    cols = list(table.columns)
    assert cols[cols.index("area_ha") + 1] == "area_mu"
    assert rows.loc["A", "area_mu"] == pytest.approx(5000 / (6000 / 9), rel=1e-12)
    assert rows.loc["B", "area_mu"] == pytest.approx(1000 / (6000 / 9), rel=1e-12)
    assert total["area_mu"] == pytest.approx(9.0, rel=1e-12)


def test_credits_read_the_sink_on_the_parcels_windows_alike():
    # a varying sink in chunks of 3 px: each parcel is summed on its own window, and the
    # table equals the one from the whole raster to the bit
    rng = np.random.default_rng(5)
    sink = _sink_raster(10.0, 1.0).copy(data=rng.uniform(0, 12, (4, 10, 10)).astype(np.float32))
    third = gpd.GeoDataFrame(
        {"parcel_id": ["C"], "baseline_tco2e_ha_yr": [1.0]},
        geometry=[box(500_040, 2_999_850, 500_090, 2_999_950)],  # half off the grid
        crs="EPSG:32650",
    )
    project = pd.concat([TWO_PARCELS, third], ignore_index=True)
    job = _one_parcel_job()
    with pytest.warns(UserWarning, match="no project plot sample"):
        table = assert_numpy_equals_dask(credits_stage, job, chunks=3, sink=sink, project=project)
    rows = table[CREDITS_RELPATH].set_index("parcel_id")
    # parcel B by hand: x 60-85 m, y 10-50 m below the top: rows 1-4, columns 6 and 7
    # whole and column 8 half; 0.01 ha a cell
    rate = sink.sel(band="sink_tco2e_ha_yr").values.astype(np.float64)
    by_hand = (rate[1:5, 6:8].sum() + 0.5 * rate[1:5, 8].sum()) * 0.01 * job.sink.years
    assert rows.loc["B", "project_tco2e"] == pytest.approx(by_hand, rel=1e-12)


#: one project parcel of 0.5 ha with a stated baseline of 2 t CO2e/ha/yr
ONE_PARCEL = gpd.GeoDataFrame(
    {"parcel_id": ["A"], "baseline_tco2e_ha_yr": [2.0]},
    geometry=[box(500_000, 2_999_900, 500_050, 3_000_000)],
    crs="EPSG:32650",
)


def _one_parcel_job() -> CreditsJob:
    """The CCER job comparing 2019 and 2024 (reference dates 1 July)."""
    sink_job = SinkJob.from_params(
        SinkParams(epoch_error_correlation=0.0),
        epochs=("2019", "2024"),
        reference_dates=(dt.date(2019, 7, 1), dt.date(2024, 7, 1)),
    )
    return CreditsJob(CCER, "configs/methodology/ccer.yaml", sink_job)


def test_credits_warn_when_the_project_sample_misses_its_target():
    job = _one_parcel_job()
    estimates = pd.DataFrame(
        {"sample": ["project"] * 2, "quantity": ["change_2019_2024", "stock_2024"],
         "estimator": ["difference"] * 2, "chosen": [True, True], "total": [20.0, 300.0],
         "se": [2.0, 40.0], "df": [14.0, 14.0], "meets_target": [False, False]}
    )  # fmt: skip
    with pytest.warns(UserWarning, match="misses its target precision"):
        table = credits_stage(
            job, sink=_sink_raster(10.0, 1.0), project=ONE_PARCEL, estimates=estimates
        )[CREDITS_RELPATH]
    assert not table.set_index("parcel_id").loc[TOTAL_ID, "sample_meets_target"]
    assert not table.set_index("parcel_id").loc[TOTAL_ID, "change_meets_target"]


def test_credits_total_is_the_project_sample_estimate():
    # The chosen survey estimate of the project's change replaces the map sum in TOTAL:
    # P = 20, SE 2, 14 df -> t(0.90, 14) = 1.7613; baseline 1.0 x T; parcels stay map-based
    job = _one_parcel_job()
    estimates = pd.DataFrame(
        {
            "sample": ["project", "project", "inventory", "project"],
            "quantity": ["change_2019_2024"] * 3 + ["stock_2024"],
            "estimator": ["stratified", "greg", "greg", "greg"],
            "chosen": [False, True, True, True],
            "total": [25.0, 20.0, 999.0, 300.0],
            "se": [5.0, 2.0, 1.0, 10.0],
            "df": [15.0, 14.0, 70.0, 14.0],
            "meets_target": [True, False, True, True],
        }
    )
    table = credits_stage(
        job, sink=_sink_raster(10.0, 1.0), project=ONE_PARCEL, estimates=estimates
    )[CREDITS_RELPATH]
    total = table.set_index("parcel_id").loc[TOTAL_ID]
    assert total["project_tco2e"] == 20.0
    assert total["project_sd_tco2e"] == 2.0
    assert total["t_value"] == pytest.approx(1.7613, abs=1e-4)
    assert total["project_half_width_tco2e"] == pytest.approx(2.0 * 1.7613, abs=1e-3)
    assert total["estimator"] == "greg (project plots)"
    # the flags follow the chosen project rows only (the stratified change meets it)
    assert total["sample_meets_target"]
    assert not total["change_meets_target"]
    assert total["baseline_tco2e"] == pytest.approx(2.0 * 0.5 * job.sink.years, rel=1e-9)


def test_credits_stage_names_a_missing_baseline_column():
    sink_job = SinkJob.from_params(
        SinkParams(epoch_error_correlation=0.0),
        epochs=("a", "b"),
        reference_dates=(dt.date(2019, 7, 1), dt.date(2024, 7, 1)),
    )
    job = CreditsJob(CCER, "ccer.yaml", sink_job)
    project = gpd.GeoDataFrame(
        {"parcel_id": ["A"]}, geometry=[box(500_000, 2_999_900, 500_050, 3_000_000)],
        crs="EPSG:32650",
    )  # fmt: skip
    with pytest.raises(InputDataError, match="baseline_tco2e_ha_yr"):
        credits_stage(job, sink=_sink_raster(1.0, 0.1), project=project)


def test_credits_job_reports_a_missing_methodology_file():
    cfg = parse_config(
        {
            "region": "t", "aoi": "a.geojson", "crs": "EPSG:32650", "resolution_m": 10,
            "epochs": [{"name": "a", "start": "2019-01-01", "end": "2019-12-31"},
                       {"name": "b", "start": "2024-01-01", "end": "2024-12-31"}],
            "data_dir": "d", "output_dir": "o", "seed": 1,
            "stages": {"credits": {"methodology": "configs/methodology/nope.yaml"}},
        },
        source="test",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"nope\.yaml: methodology file not found"):
        credits_job(cfg)


def test_credits_command_takes_the_epochs_from_the_estimates(tmp_path: Path) -> None:
    from pipeline.cli import main

    sink = _sink_raster(10.0, 1.0)
    sink.attrs["long_name"] = tuple(str(b) for b in sink["band"].values)  # band descriptions
    sink.rio.to_raster(tmp_path / "sink.tif")
    ONE_PARCEL.to_file(tmp_path / "project.gpkg")
    pd.DataFrame(
        {"sample": ["project"] * 2, "quantity": ["change_2019_2024", "stock_2024"],
         "estimator": ["stratified"] * 2, "chosen": [True, True], "total": [20.0, 300.0],
         "se": [2.0, 10.0], "df": [14.0, 14.0], "meets_target": [True, True]}
    ).to_csv(tmp_path / "totals.csv", index=False)  # fmt: skip
    code = main(
        ["credits", "--sink", str(tmp_path / "sink.tif"), "--project",
         str(tmp_path / "project.gpkg"), "--estimates", str(tmp_path / "totals.csv"),
         "--dates", "2019-07-01", "2024-07-01", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    table = pd.read_csv(tmp_path / "out" / CREDITS_RELPATH).set_index("parcel_id")
    assert table.loc[TOTAL_ID, "epochs"] == "2019-2024"
    assert table.loc[TOTAL_ID, "project_tco2e"] == 20.0
    assert table.loc[TOTAL_ID, "estimator"] == "stratified (project plots)"


# -- eligibility on the data (pipeline.eligibility) -------------------------------------


def _layer(forest_types: list[str], land_classes: list[str]) -> gpd.GeoDataFrame:
    """A parcel layer with the two project parcels' geometries (ids P1, P2: the project's
    ids need not be the layer's) in geographic coordinates (the check reprojects)."""
    return gpd.GeoDataFrame(
        {"parcel_id": ["P1", "P2"], "forest_type": forest_types, "land_class": land_classes},
        geometry=list(TWO_PARCELS.geometry),
        crs="EPSG:32650",
    ).to_crs("EPSG:4326")


def _survey(total: float, se: float, df: float) -> pd.DataFrame:
    return pd.DataFrame(
        {"sample": ["project"] * 2, "quantity": ["change_2019_2024", "stock_2024"],
         "estimator": ["stratified"] * 2, "chosen": [True, True], "total": [total, 300.0],
         "se": [se, 10.0], "df": [df, df], "meets_target": [True, True]}
    )  # fmt: skip


def test_afforestation_refuses_a_parcel_that_was_forest_at_the_start():
    # The classifier found P1 (= A) not forest in 2019 and P2 (= B) forest: B is refused.
    # TOTAL = A's map sum: P = 10 x 0.5 x T, B = 2 x 0.5 x T, SD = 1 x 0.5 x T (correlated)
    # N = 4 T; U = 1.6449 x 0.5 T / 4 T = 20.6 % -> band 20-30 %, 75 % of the half-width.
    # The survey estimate (40 +- 3, 9 df) over the declared 0.6 ha is the DECLARED row.
    job = _one_parcel_job()
    years = job.sink.years
    card = {"land_use": {"2019": {"non_forest_parcels": ["P1"], "parcels_judged": 2}}}
    with pytest.warns(UserWarning, match=r"B \(forest at 2019 \(land-use classifier"):
        table = credits_stage(
            job, sink=_sink_raster(10.0, 1.0), project=TWO_PARCELS, estimates=_survey(40, 3, 9),
            parcels=_layer(["chinese_fir"] * 2, ["forest"] * 2), model_card=card,
        )[CREDITS_RELPATH]  # fmt: skip
    rows = table.set_index("parcel_id")
    assert bool(rows.loc["A", "eligible"]) and rows.loc["A", "ineligible_reason"] == ""
    assert not rows.loc["B", "eligible"]
    assert (
        "forest at 2019 (land-use classifier: 100 % of its area)"
        in rows.loc["B", "ineligible_reason"]
    )
    total = rows.loc[TOTAL_ID]
    assert total["scope"] == "eligible parcels (credited, map sum)"
    assert total["area_ha"] == pytest.approx(0.5, rel=1e-9)
    assert total["project_tco2e"] == pytest.approx(5.0 * years, rel=1e-6)
    assert total["baseline_tco2e"] == pytest.approx(1.0 * years, rel=1e-9)
    net, half = 4.0 * years, 1.6448536 * 0.5 * years
    assert total["net_tco2e"] == pytest.approx(net, rel=1e-6)
    assert total["uncertainty_factor"] == 0.75
    assert total["credits_tco2e"] == pytest.approx(net - 0.75 * half, rel=1e-5)
    assert pd.isna(total["change_meets_target"])
    declared = rows.loc["DECLARED"]
    assert declared["project_tco2e"] == 40.0 and declared["area_ha"] == pytest.approx(0.6)
    assert declared["baseline_tco2e"] == pytest.approx(1.0 * years, rel=1e-9)
    assert "not credited" in declared["scope"] and declared["change_meets_target"]


def test_afforestation_takes_the_declared_land_class_at_the_layer_epoch():
    # the parcel layer describes 2019 (the start): A is declared farmland, B forest land
    job = replace(_one_parcel_job(), epochs_before_start=("2019",), parcels_epoch="2019")
    with pytest.warns(UserWarning, match="not eligible"):
        table = credits_stage(
            job, sink=_sink_raster(10.0, 1.0), project=TWO_PARCELS, estimates=_survey(40, 3, 9),
            parcels=_layer(["non_forest", "chinese_fir"], ["farmland", "forest"]), model_card={},
        )[CREDITS_RELPATH]  # fmt: skip
    rows = table.set_index("parcel_id")
    assert list(rows["eligible"].iloc[:2]) == [True, False]
    assert rows.loc["B", "ineligible_reason"].startswith("forest at 2019 (declared land class")


def test_afforestation_refuses_a_young_plantation_its_sub_compartment_record_dates():
    # The classifier sees neither parcel as forest in 2019 (a young plantation's canopy is
    # not closed), but B's sub-compartment record of 2019 says 7-year-old Chinese fir:
    # established in 2012, before the start (2019-07-01), so its land is no afforestation
    # land. A's record is empty (no stand at the survey): eligible.
    job = _one_parcel_job()
    card = {"land_use": {"2019": {"non_forest_parcels": ["P1", "P2"], "parcels_judged": 2}}}
    layer = _layer(["chinese_fir"] * 2, ["forest"] * 2).assign(
        dominant_species=[None, "杉木"], mean_dbh_cm=[np.nan, 6.0], mean_height_m=[np.nan, 5.5],
        stems_per_ha=[np.nan, 2400.0], survey_year=[np.nan, 2019.0], age_yr=[np.nan, 7.0],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="not eligible"):
        table = credits_stage(
            job, sink=_sink_raster(10.0, 1.0), project=TWO_PARCELS, estimates=_survey(40, 3, 9),
            parcels=layer, model_card=card,
        )[CREDITS_RELPATH]  # fmt: skip
    rows = table.set_index("parcel_id")
    assert list(rows["eligible"].iloc[:2]) == [True, False]
    assert rows.loc["B", "ineligible_reason"] == (
        "a stand established before the start by the sub-compartment record (100 % of its area)"
    )
    # the same stand planted in 2020 (surveyed in 2021 at age 1) is after the start
    later = layer.assign(survey_year=[np.nan, 2021.0], age_yr=[np.nan, 1.0])
    table = credits_stage(
        job, sink=_sink_raster(10.0, 1.0), project=TWO_PARCELS, estimates=_survey(40, 3, 9),
        parcels=later, model_card=card,
    )[CREDITS_RELPATH]  # fmt: skip
    assert list(table.set_index("parcel_id")["eligible"].iloc[:2]) == [True, True]


def test_afforestation_without_a_land_use_map_says_unchecked():
    # no model card: the start epoch cannot be judged; the parcels stay in, loudly
    job = _one_parcel_job()
    with pytest.warns(UserWarning, match="could not be checked on the data"):
        table = credits_stage(
            job, sink=_sink_raster(10.0, 1.0), project=TWO_PARCELS, estimates=_survey(40, 3, 9),
            parcels=_layer(["chinese_fir"] * 2, ["forest"] * 2),
        )[CREDITS_RELPATH]  # fmt: skip
    rows = table.set_index("parcel_id")
    assert rows["eligible"].iloc[:2].isna().all()
    assert (
        "no land-use classification at epoch 2019 (no model card)"
        in rows.loc["A", "ineligible_reason"]
    )
    assert rows.loc[TOTAL_ID, "project_tco2e"] == 40.0  # the survey total, both parcels
    assert "DECLARED" not in rows.index


def test_bamboo_management_credits_only_bamboo_parcels():
    # A is Moso bamboo, B Chinese fir: under AR-CM-005 B is refused; under AR-CM-003 A is
    sink_job = _one_parcel_job().sink
    layer = _layer(["moso_bamboo", "chinese_fir"], ["forest"] * 2)
    job = CreditsJob(
        BAMBOO_MANAGEMENT, "bamboo_management.yaml", sink_job,
        compare=((FOREST_MANAGEMENT, "forest_management.yaml"),),
    )  # fmt: skip
    with pytest.warns(UserWarning, match="not eligible"):
        out = credits_stage(job, sink=_sink_raster(10.0, 1.0), project=TWO_PARCELS, parcels=layer)
    assert set(out) == {CREDITS_RELPATH, "credits/credits_ar-cm-003.csv"}
    bamboo = out[CREDITS_RELPATH].set_index("parcel_id")
    forest = out["credits/credits_ar-cm-003.csv"].set_index("parcel_id")
    assert list(bamboo["eligible"].iloc[:2]) == [True, False]
    assert "forest type chinese_fir" in bamboo.loc["B", "ineligible_reason"]
    assert list(forest["eligible"].iloc[:2]) == [False, True]
    years = sink_job.years
    # bamboo: A alone (10 x 0.5 x T); forest management: B alone (10 x 0.1 x T, baseline 0)
    assert bamboo.loc[TOTAL_ID, "project_tco2e"] == pytest.approx(5.0 * years, rel=1e-6)
    assert forest.loc[TOTAL_ID, "project_tco2e"] == pytest.approx(1.0 * years, rel=1e-6)
    assert forest.loc[TOTAL_ID, "baseline_tco2e"] == 0.0
    assert (forest["methodology"] == "ar-cm-003").all()


def test_refused_strata_leave_the_survey_estimate_of_the_credited_strata():
    # The project sample is stratified by forest type; the estimate stage wrote each
    # methodology's strata (project:<id>). AR-CM-005 refuses B (fir): its TOTAL is the
    # survey of the bamboo stratum (A, 0.5 ha: 30 +- 2, 6 df), not A's map sum; AR-CM-003's
    # domain row has the wrong area (0.3 ha, not B's 0.1 ha), so it falls back to B's map sum
    sink_job = _one_parcel_job().sink
    years = sink_job.years
    layer = _layer(["moso_bamboo", "chinese_fir"], ["forest"] * 2)
    job = CreditsJob(
        BAMBOO_MANAGEMENT, "bamboo_management.yaml", sink_job,
        compare=((FOREST_MANAGEMENT, "forest_management.yaml"),),
    )  # fmt: skip
    domains = pd.DataFrame(
        {"sample": ["project:ar-cm-005", "project:ar-cm-003"],
         "quantity": ["change_2019_2024"] * 2, "estimator": ["stratified"] * 2,
         "chosen": [True, True], "total": [30.0, 8.0], "se": [2.0, 1.0], "df": [6.0, 3.0],
         "meets_target": [False, False], "area_ha": [0.5, 0.3]}
    )  # fmt: skip
    estimates = pd.concat([_survey(40, 3, 9).assign(area_ha=0.6), domains], ignore_index=True)
    with pytest.warns(UserWarning, match="survey estimate|estimate over the strata"):
        out = credits_stage(
            job, sink=_sink_raster(10.0, 1.0), project=TWO_PARCELS, estimates=estimates,
            parcels=layer,
        )  # fmt: skip
    bamboo = out[CREDITS_RELPATH].set_index("parcel_id")
    total = bamboo.loc[TOTAL_ID]
    assert total["scope"] == "eligible parcels (credited, survey of their strata)"
    assert total["project_tco2e"] == 30.0 and total["project_sd_tco2e"] == 2.0
    assert total["df"] == 6.0
    assert total["estimator"] == "stratified (project plots of project:ar-cm-005)"
    # the eligible parcel's area and stated baseline (A: 2 t/ha/yr x 0.5 ha)
    assert total["area_ha"] == pytest.approx(0.5, rel=1e-9)
    assert total["baseline_tco2e"] == pytest.approx(1.0 * years, rel=1e-9)
    t6 = student_t.ppf(0.95, 6.0)
    assert total["project_half_width_tco2e"] == pytest.approx(2.0 * t6, rel=1e-9)
    assert bamboo.loc["DECLARED", "project_tco2e"] == 40.0
    forest = out["credits/credits_ar-cm-003.csv"].set_index("parcel_id")
    assert forest.loc[TOTAL_ID, "scope"] == "eligible parcels (credited, map sum)"
    assert forest.loc[TOTAL_ID, "project_tco2e"] == pytest.approx(1.0 * years, rel=1e-6)


def test_compared_methodologies_must_differ():
    params = CreditsParams(
        methodology=REPO / "configs/methodology/ccer.yaml",
        compare=(REPO / "configs/methodology/ccer.yaml",),
    )
    with pytest.raises(ConfigError, match="compare: each methodology may appear once"):
        CreditsJob.from_params(params, _one_parcel_job().sink, key="stages.credits.methodology")
    params = CreditsParams(compare=(Path("configs/methodology/nope.yaml"),))
    with pytest.raises(ConfigError, match=r"^stages\.credits\.compare: .*nope\.yaml: .*not found"):
        CreditsJob.from_params(params, _one_parcel_job().sink, key="stages.credits.methodology")


def test_land_rules_must_cite_their_clause():
    data = yaml.safe_load((REPO / "configs/methodology/ccer.yaml").read_text())
    del data["eligibility"]["clause"]
    with pytest.raises(ValueError, match=r"'eligibility\.clause' must be a non-empty string"):
        methodology_from_mapping(data, source="m.yaml")
    data = yaml.safe_load((REPO / "configs/methodology/ccer.yaml").read_text())
    data["eligibility"]["rule"] = "not_forest_for_10_years"
    with pytest.raises(ValueError, match=r"eligibility\.rule"):
        methodology_from_mapping(data, source="m.yaml")


def test_a_parcel_partly_outside_the_layer_is_judged_by_area_shares():
    # Project parcel A (50 x 100 m) overlaps layer parcel P1 (judged forest in 2019) over
    # 60 % of its area: refused. Parcel B (25 x 40 m) overlaps it over 40 %, the rest of B
    # lies outside the layer: 40 % forest < 50 % but 40 % + 60 % unknown >= 50 %: unchecked.
    from pipeline.eligibility import LandUseData, parcel_eligibility

    layer = gpd.GeoDataFrame(
        {"parcel_id": ["P1"], "land_class": ["forest"]},
        geometry=[box(500_000, 2_999_940, 500_070, 3_000_000)],  # A: 60 of 100 m; B: 10 of 25
        crs="EPSG:32650",
    )
    data = LandUseData(
        parcels=layer, land_use={"2019": {"non_forest_parcels": []}},
        epochs_before_start=("2019",), parcels_epoch="2024", forest_land_classes=("forest",),
    )  # fmt: skip
    table = parcel_eligibility(TWO_PARCELS, CCER, data)
    assert not table["eligible"].iloc[0] and table["eligible"].isna().iloc[1]
    assert table["ineligible_reason"][0] == "forest at 2019 (land-use classifier: 60 % of its area)"
    assert table["ineligible_reason"][1] == (
        "unchecked: land use at 2019 unknown for 60 % of its area (land-use classifier)"
    )


def test_refused_parcels_are_named_by_reason_five_at_most():
    from pipeline.stages.credits import _by_reason

    ids = [f"P{i}" for i in range(8)]
    reasons = ["bamboo"] * 7 + ["fir"]
    text = _by_reason(ids, reasons, np.array([True] * 8))
    assert text == "P0, P1, P2, P3, P4 and 2 more (bamboo); P7 (fir)"
    assert _by_reason(ids, reasons, np.array([False] * 7 + [True])) == "P7 (fir)"


def test_vm0047_leakage_and_buffer_are_the_projects_own_and_a_run_without_them_is_refused():
    # VM0047 has area-based projects quantify leakage with VMD0054 and the buffer with the
    # project's NPRT v4.2 score: the file gives no default (0 % leakage is not allowed)
    assert VM0047.leakage_fraction is None and VM0047.buffer_fraction is None
    assert VM0047.unset() == ["leakage_fraction", "buffer_fraction"]
    sink = _one_parcel_job().sink
    vm = REPO / "configs/methodology/vm0047.yaml"
    with pytest.raises(
        ConfigError, match=r"stages\.credits\.leakage_fraction and stages\.credits\.buffer_fraction"
    ):
        CreditsJob.from_params(
            CreditsParams(methodology=vm), sink, key="stages.credits.methodology"
        )
    with pytest.raises(ConfigError, match=r"--buffer-fraction"):
        CreditsJob.from_params(
            CreditsParams(methodology=vm, leakage_fraction=0.05), sink, key="--methodology"
        )
    job = CreditsJob.from_params(
        CreditsParams(methodology=vm, leakage_fraction=0.05, buffer_fraction=0.2),
        sink,
        key="stages.credits.methodology",
    )
    assert (job.methodology.leakage_fraction, job.methodology.buffer_fraction) == (0.05, 0.2)
    # compared under a run of another methodology: the project's values fill VM0047's gaps
    # (the run's own methodology takes them as its overrides, as before)
    compare = CreditsParams(compare=(vm,), leakage_fraction=0.05, buffer_fraction=0.2)
    job = CreditsJob.from_params(compare, sink, key="stages.credits.methodology")
    ((vm_method, _),) = job.compare
    assert (vm_method.leakage_fraction, vm_method.buffer_fraction) == (0.05, 0.2)
    with pytest.raises(ConfigError, match="vm0047"):
        CreditsJob.from_params(CreditsParams(compare=(vm,)), sink, key="stages.credits.methodology")
    # the credit arithmetic itself refuses a methodology with a gap
    with pytest.raises(ValueError, match="project specific"):
        _steps(VM0047)
