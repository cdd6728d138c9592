"""QGIS styles (pipeline.qml, stage ``styles``) on small synthetic rasters and parcels."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import to_hex
from run_folder_checks import check_raster_style, check_vector_style, style_band
from test_report import X0, Y0, raster

from pipeline import io
from pipeline.contracts import PARCEL_SINK_GPKG_RELPATH, SINK_RELPATH, map_relpath
from pipeline.errors import InputDataError
from pipeline.qml import Ramp, graduated_style
from pipeline.stages.styles import StylesJob, styles_stage


def _raster(values: np.ndarray, bands: list[str], units: list[str]) -> xr.DataArray:
    return raster(values, bands).assign_attrs(units=tuple(units))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    for epoch in ("2019", "2024"):
        carbon = rng.gamma(4.0, 20.0, (1, 40, 50))
        carbon[0, :5, :5] = np.nan
        io.write_cog(
            _raster(carbon, ["carbon"], ["Mg C/ha"]), tmp_path / map_relpath("carbon", epoch)
        )
        sd = np.stack([0.3 * carbon[0], 0.1 * carbon[0]])
        io.write_cog(
            _raster(sd, ["carbon_sd", "carbon_sd_support"], ["Mg C/ha"] * 2),
            tmp_path / map_relpath("carbon_sd", epoch),
        )
    sink = rng.normal(1.0, 3.0, (40, 50))  # sources and sinks
    bands = ["sink_mg_c_ha_yr", "sink_sd_mg_c_ha_yr", "sink_tco2e_ha_yr", "sink_sd_tco2e_ha_yr"]
    stack = np.stack([sink, np.abs(sink), sink * 44 / 12, np.abs(sink) * 44 / 12])
    io.write_cog(_raster(stack, bands, ["u"] * 4), tmp_path / SINK_RELPATH)
    polys = [shapely.box(X0 + 50 * i, Y0 - 400, X0 + 40 + 50 * i, Y0 - 360) for i in range(8)]
    parcels = gpd.GeoDataFrame(
        {"parcel_id": [f"P{i}" for i in range(8)], "sink_tco2e_ha_yr": rng.normal(0, 5, 8)},
        geometry=polys,
        crs="EPSG:32650",
    )
    io.write_output(parcels, tmp_path / PARCEL_SINK_GPKG_RELPATH)
    return tmp_path


def _styles(run: Path) -> dict[str, str]:
    read = lambda rel: io.open_raster(run / rel, chunk_px=16)  # noqa: E731 - a Dask-chunked read
    return styles_stage(
        StylesJob(epochs=("2019", "2024")),
        carbon={e: read(map_relpath("carbon", e)) for e in ("2019", "2024")},
        carbon_sd={e: read(map_relpath("carbon_sd", e)) for e in ("2019", "2024")},
        sink=read(SINK_RELPATH),
        parcel_sink=gpd.read_file(run / PARCEL_SINK_GPKG_RELPATH),
    )


def test_styles_are_valid_xml_naming_bands_of_their_layers_within_range(run):
    out = _styles(run)
    assert sorted(out) == [
        "parcels/parcel_sink.qml",
        "rasters/carbon_2019.qml",
        "rasters/carbon_2024.qml",
        "rasters/carbon_sd_2019.qml",
        "rasters/carbon_sd_2024.qml",
        "rasters/sink.qml",
        "rasters/sink.sink_sd_tco2e_ha_yr.qml",
    ]
    for rel, text in out.items():
        (run / rel).write_text(text)
    for epoch in ("2019", "2024"):
        for name in ("carbon", "carbon_sd"):
            check_raster_style(run / f"rasters/{name}_{epoch}.qml", run / map_relpath(name, epoch))
    check_raster_style(run / "rasters/sink.qml", run / SINK_RELPATH)
    check_raster_style(run / "rasters/sink.sink_sd_tco2e_ha_yr.qml", run / SINK_RELPATH)
    check_vector_style(run / "parcels/parcel_sink.qml", run / PARCEL_SINK_GPKG_RELPATH)
    assert style_band(run / "rasters/sink.qml")[0] == "sink_tco2e_ha_yr"


def test_limits_are_the_2nd_and_98th_percentiles_and_the_sink_ramp_centres_on_zero(run):
    out = _styles(run)
    (run / "s.qml").write_text(out["rasters/sink.qml"])
    _, root = style_band(run / "s.qml")
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("band") == "3"
    values = io.open_raster(run / SINK_RELPATH).sel(band="sink_tco2e_ha_yr").values
    lo, hi = np.nanpercentile(values, [2, 98])
    assert float(renderer.get("classificationMin", "")) == pytest.approx(lo, rel=1e-6)
    assert float(renderer.get("classificationMax", "")) == pytest.approx(hi, rel=1e-6)
    assert lo < 0 < hi
    m = max(abs(lo), abs(hi))
    ramp = Ramp("RdYlGn", diverging=True)
    # 0 takes the ramp's middle colour, +-m its ends, whatever the limits' asymmetry
    assert ramp.colours([0.0, -m, m], lo=lo, hi=hi) == [
        to_hex(colormaps["RdYlGn"](x)) for x in (0.5, 0.0, 1.0)
    ]


def test_graduated_style_rejects_decreasing_breaks():
    with pytest.raises(ValueError, match="sink_tco2e_ha_yr: breaks must be increasing"):
        graduated_style(field="sink_tco2e_ha_yr", breaks=[1.0, 0.0], ramp=Ramp("RdYlGn"), units="")


def test_missing_parcel_attribute_is_a_clear_error(run):
    parcels = gpd.read_file(run / PARCEL_SINK_GPKG_RELPATH).drop(columns="sink_tco2e_ha_yr")
    read = lambda rel: io.open_raster(run / rel)  # noqa: E731
    with pytest.raises(InputDataError, match=r"parcel_sink\.gpkg: no attribute 'sink_tco2e_ha_yr'"):
        styles_stage(
            StylesJob(epochs=("2019",)),
            carbon={"2019": read(map_relpath("carbon", "2019"))},
            carbon_sd={"2019": read(map_relpath("carbon_sd", "2019"))},
            sink=read(SINK_RELPATH),
            parcel_sink=parcels,
        )
