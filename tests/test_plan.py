"""``forest-carbon plan`` and :func:`models.survey.sample_size.prior_from_map` against
closed-form values and an independent AR-TOOL03 computation."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from shapely.geometry import box

from models.allometry import co2_per_c
from models.errors import SurveyError
from models.survey.sample_size import ar_tool03_sample_size, prior_from_map
from pipeline.cli import main
from pipeline.commands.plan import plan_table
from pipeline.io import write_outputs

X0, Y1, RES, N = 500_000.0, 3_000_000.0, 10.0, 20


def test_prior_from_map_is_the_law_of_total_variance() -> None:
    # predictions 40 and 60 in equal shares (variance 100), error SD 10 everywhere:
    # plot SD = sqrt(100 + 100); weights count cells; NaN cells are left out
    pred = np.array([40.0, 60.0, 40.0, 60.0, np.nan])
    mean, sd = prior_from_map(pred, np.full(5, 10.0))
    assert mean == pytest.approx(50.0) and sd == pytest.approx(math.sqrt(200.0))
    mean, sd = prior_from_map([40.0, 60.0], [0.0, 0.0], weight=[3.0, 1.0])
    assert mean == pytest.approx(45.0) and sd == pytest.approx(math.sqrt(75.0))
    with pytest.raises(SurveyError, match="no mapped cell"):
        prior_from_map([np.nan], [1.0])


def _raster(values: np.ndarray) -> xr.DataArray:
    y = Y1 - RES * (np.arange(N) + 0.5)
    x = X0 + RES * (np.arange(N) + 0.5)
    da = xr.DataArray(values, dims=("y", "x"), coords={"y": y, "x": x})
    return da.rio.write_crs("EPSG:32650")


def _scene() -> tuple[tuple[xr.DataArray, ...], tuple[xr.DataArray, ...], gpd.GeoDataFrame]:
    # west half: stock 40/60 in a checkerboard, grows by 5 everywhere; east: stock 100, grows
    # by 10 or 20 by rows; SDs 10 (2019) and 12 (2024) everywhere
    checker = np.indices((N, N)).sum(axis=0) % 2
    c0 = np.where(np.arange(N)[None, :] < 10, 40.0 + 20.0 * checker, 100.0)
    growth = np.where(np.arange(N)[None, :] < 10, 5.0, 10.0 + 10.0 * (np.arange(N)[:, None] % 2))
    c1 = c0 + growth
    strata = gpd.GeoDataFrame(
        {"forest_type": ["west", "east", "east"]},
        geometry=[box(X0, Y1 - 200, X0 + 100, Y1), box(X0 + 100, Y1 - 100, X0 + 200, Y1),
                  box(X0 + 100, Y1 - 200, X0 + 200, Y1 - 100)],
        crs="EPSG:32650",
    )  # fmt: skip
    sd = (_raster(np.full((N, N), 10.0)), _raster(np.full((N, N), 12.0)))
    return (_raster(c0), _raster(c1)), sd, strata


def test_plan_is_ar_tool03_on_the_maps_moments() -> None:
    carbon, sd, strata = _scene()
    table = plan_table(
        carbon, sd, strata, field="forest_type", correlation=0.5, target=0.1,
        confidence=0.9, plot_area_ha=0.04, where="strata",
    )  # fmt: skip
    # by hand, strata in the dissolved order (east, west), 2 ha each
    k = co2_per_c()
    change_sd = math.sqrt(10.0**2 + 12.0**2 - 2 * 0.5 * 10.0 * 12.0) * k
    expected = {
        # the stock at the last epoch: east 100 + 10 or 20 (variance 25), west 40/60 + 5
        "stock": ([115.0, 55.0], [math.sqrt(25.0 + 144.0), math.sqrt(100.0 + 144.0)]),
        "change": ([15.0 * k, 5.0 * k], [math.sqrt(25.0 * k * k + change_sd**2), change_sd]),
    }
    plots = np.zeros(2, dtype=int)
    for quantity, (mean, spread) in expected.items():
        rows = table[table["quantity"] == quantity].set_index("stratum").loc[["east", "west"]]
        assert rows["mean_per_ha"].to_numpy() == pytest.approx(mean)
        assert rows["sd_per_ha"].to_numpy() == pytest.approx(spread)
        assert rows["area_ha"].to_numpy() == pytest.approx([2.0, 2.0])
        plan = ar_tool03_sample_size([2.0, 2.0], spread, mean, plot_area_ha=0.04)
        assert list(rows["plots_for_quantity"]) == list(plan.plots)
        plots = np.maximum(plots, plan.plots)
    per_stratum = table.drop_duplicates("stratum").set_index("stratum")["plots"]
    assert list(per_stratum.loc[["east", "west"]]) == list(plots)


def test_plan_command_names_a_missing_stratum_field(tmp_path: Path, capsys) -> None:
    carbon, sd, strata = _scene()
    paths = {}
    for name, r in (("c0", carbon[0]), ("c1", carbon[1]), ("s0", sd[0]), ("s1", sd[1])):
        band = "carbon" if name.startswith("c") else "carbon_sd"
        write_outputs({tmp_path / f"{name}.tif": r.expand_dims(band=[band])})
        paths[name] = str(tmp_path / f"{name}.tif")
    strata.to_file(tmp_path / "strata.gpkg")
    args = ["plan", "--carbon", paths["c0"], paths["c1"], "--sd", paths["s0"], paths["s1"],
            "--strata", str(tmp_path / "strata.gpkg")]  # fmt: skip
    assert main([*args, "--stratum-field", "type"]) == 2
    err = capsys.readouterr().err
    assert "no field 'type' (--stratum-field)" in err and "forest_type" in err
    out = tmp_path / "plan.csv"
    assert main([*args, "--stratum-field", "forest_type", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM, for Excel
