"""The scaled demo configs and the prefecture arithmetic of ``benchmarks/scale.py``.

The configs are checked against figures worked by hand from ``configs/regions/nanping.yaml``
(a 10 km side, a 2 km LiDAR block flown 1 km again, 80 plots), the extrapolation against a
made-up run whose costs are easy to carry to 26,300 km2 by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.scale import (
    Copy,
    Design,
    StageCost,
    prefecture_cpu_s,
    prefecture_memory_mb,
    scaled_config,
)
from pipeline.config import load_config
from pipeline.simulate.region import aoi_grid


def test_design_keeps_the_demo_where_the_smallest_copy_allows() -> None:
    # 0.25 x 10 km squared: a 5 km side, 20 plots at 0.8 per km2, a 1 km LiDAR block
    demo = Design.for_factors([0.25, 1.0, 4.0], base_km=10.0)
    assert demo.plots_per_km2 == pytest.approx(0.8)
    assert demo.lidar_side_share == pytest.approx(0.2)
    # a 1.25 km side: 20 plots on 1.5625 km2 (12.8 per km2), a 0.4 km block (0.32 of it)
    small = Design.for_factors([0.25, 1.0, 4.0], base_km=2.5)
    assert small.plots_per_km2 == pytest.approx(12.8)
    assert small.lidar_side_share == pytest.approx(0.32)


def test_design_splits_the_smallest_copy_into_chunks() -> None:
    # 0.25 x 10 km squared: a 500-cell side at 10 m, halved is 250: 128-cell chunks; its
    # 1 km LiDAR block in two 500 m chunks
    assert Design.for_factors([0.25, 1.0, 4.0], base_km=10.0).chunk_px is None  # the demo's
    demo = Design.for_factors([0.25, 1.0, 4.0], base_km=10.0, split_chunks=True)
    assert demo.chunk_px == 128
    assert demo.lidar_chunk_m == pytest.approx(500.0)
    # a 125-cell side halved is 62.5: the settings' floor of 64; a 0.4 km block in 200 m
    small = Design.for_factors([0.25, 1.0, 4.0], base_km=2.5, split_chunks=True)
    assert small.chunk_px == 64
    assert small.lidar_chunk_m == pytest.approx(200.0)


def test_scaled_config_scales_the_area_and_keeps_the_design(tmp_path: Path) -> None:
    design = Design(
        base_km=2.5, plots_per_km2=12.8, lidar_side_share=0.32, chunk_px=64, lidar_chunk_m=200
    )
    config = load_config(scaled_config(tmp_path, 4.0, design))
    assert config.dask.chunk_px == 64
    assert config.stages.lidar.chunk_size_m == 200
    sim = config.simulate
    assert sim.size_km == pytest.approx(5.0)
    assert sim.lidar_km == pytest.approx(1.6)
    assert sim.lidar2_km == pytest.approx(0.8)  # the demo flies half the block's side again
    assert sim.n_plots == 320
    # everything else is the demo's
    assert (sim.n_s2_scenes, sim.n_landsat_scenes) == (6, 3)
    assert config.epochs == load_config(Path("configs/regions/nanping.yaml")).epochs
    # centred on a corner of the model's 1 km cross-validation blocks (to the 60 m the
    # simulator snaps its AOI to), so the LiDAR block, at the centre, lies in four of them
    left, bottom, right, top = aoi_grid(config).boundingbox
    for centre_m in ((left + right) / 2, (bottom + top) / 2):
        assert abs(centre_m - round(centre_m / 1000) * 1000) <= 30
    # and reads and writes under the temporary folder only
    assert config.aoi == tmp_path / "data" / "aoi.geojson"
    assert config.sources.parcels == tmp_path / "data" / "parcels" / "parcels.gpkg"
    assert config.output_dir == tmp_path / "run"


def _copy(factor: float, *, predict_mb: float, lidar_mb: float = 2000.0) -> Copy:
    """A run of ``factor`` x 10 km2 with 1 km2 flown and 8 plots per 10 km2 and 9 scenes
    per season."""
    return Copy(
        factor=factor,
        area_km2=10.0 * factor,
        flown_km2=1.0 * factor,
        n_plots=round(8 * factor),
        scenes_per_season=9.0,
        stages={
            "composite": StageCost(cpu_s=20.0 * factor, wall_s=1.0, peak_mb=1000.0),
            "lidar": StageCost(cpu_s=50.0 * factor, wall_s=1.0, peak_mb=lidar_mb),
            "plots": StageCost(cpu_s=16.0 * factor, wall_s=1.0, peak_mb=1000.0),
            "predict": StageCost(cpu_s=30.0 * factor, wall_s=1.0, peak_mb=predict_mb),
        },
    )


def test_prefecture_cpu_by_area_flown_area_plots_and_scenes() -> None:
    top = _copy(4.0, predict_mb=0.0)
    cpu = prefecture_cpu_s(top, scenes_per_season=90.0, plots_per_km2=0.8)
    # composite: 2 CPU-s per km2 for 9 scenes, 20 for 90, over 26,300 km2
    assert cpu["composite"] == pytest.approx(20.0 * 26_300)
    # lidar: 50 CPU-s per km2 flown, over 2,630 km2
    assert cpu["lidar"] == pytest.approx(50.0 * 2_630)
    # plots: 64 CPU-s for 32 plots, 2 a plot, for 0.8 x 26,300 = 21,040 plots
    assert cpu["plots"] == pytest.approx(2.0 * 21_040)
    # predict: 3 CPU-s per km2, wall to wall
    assert cpu["predict"] == pytest.approx(3.0 * 26_300)


def test_prefecture_memory_carries_the_growth_beyond_the_goal() -> None:
    # predict grows 300 MB (20 %) from 10 to 40 km2: 10 MB per km2, 26,260 km2 more to come
    one = _copy(1.0, predict_mb=1500.0, lidar_mb=2000.0)
    top = _copy(4.0, predict_mb=1800.0, lidar_mb=2200.0)
    memory = prefecture_memory_mb(one, top)
    assert memory["predict"] == pytest.approx(1800.0 + 10.0 * 26_260)
    # lidar grew 10 %, within the goal: flat at its peak; composite did not grow
    assert memory["lidar"] == pytest.approx(2200.0)
    assert memory["composite"] == pytest.approx(1000.0)
    # lidar's growth is by the km2 flown: 600 MB from 1 to 4 km2, 2,626 km2 more to fly
    flown = prefecture_memory_mb(one, _copy(4.0, predict_mb=1800.0, lidar_mb=2600.0))
    assert flown["lidar"] == pytest.approx(2600.0 + 200.0 * 2_626)
    # a peak that fell is not extrapolated downwards
    fell = prefecture_memory_mb(_copy(1.0, predict_mb=1800.0), _copy(4.0, predict_mb=1500.0))
    assert fell["predict"] == pytest.approx(1500.0)
