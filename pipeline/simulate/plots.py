"""Permanent field plots: tree lists with measurement errors, plot squares with GPS error.

Square plots of 0.0667 ha (the Chinese national forest inventory plot size) are placed by
:mod:`pipeline.simulate.sampling` (the region's inventory, a share inside the LiDAR block,
and the project's sample) and measured at every epoch; a square straddling its stratum's
frame tallies only the trees inside the frame (the buffer method). The tallied trees are
exactly the simulated trees whose stems fall inside the true square
(:mod:`pipeline.simulate.stands`), so plot AGB from error-free trees equals the truth
raster's biomass there up to the square's partial pixels. Measurement model
(``simulation.yaml``, ``plots``):

* DBH error: normal with sd ``0.0904 + 0.0062 * D`` cm plus 2 % gross errors with sd
  4.64 cm (Chave et al. 2004, Phil. Trans. R. Soc. B 359:409-420,
  doi:10.1098/rstb.2003.1425); recorded to 0.1 cm;
* height measured on a share of trees, with relative plus absolute error (assumption),
  recorded to 0.1 m, empty otherwise;
* bamboo culm age in years recorded exactly (assumption), empty for trees;
* the plot polygon is drawn at the GPS-measured centre, displaced by a normal error of
  ``gps_error_sd_m`` per axis (assumption for handheld GNSS under canopy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely
from odc.geo.geobox import GeoBox
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from pipeline.simulate.science import coefficients
from pipeline.simulate.stands import StandEpoch, Trees, generate_trees
from pipeline.units import M2_PER_HA


def plot_half_side_m() -> float:
    """Half the side of the square plot (m)."""
    return math.sqrt(float(coefficients()["plots"]["plot_area_ha"]) * M2_PER_HA) / 2.0


def plot_trees(
    seed: int,
    grid: GeoBox,
    centers: npt.NDArray[np.float64],
    parcel_idx: npt.NDArray[np.int64],
    stocking: npt.NDArray[np.float64],
    stand: StandEpoch,
    frames: Sequence[BaseGeometry] | None = None,
) -> tuple[Trees, npt.NDArray[np.int64]]:
    """The true trees inside each plot square and the plot index of each tree.

    With ``frames`` (one sampling frame per plot, the buffer method of
    :mod:`pipeline.simulate.sampling`) a plot keeps only the trees of its square that
    stand inside its frame.
    """
    half = plot_half_side_m()
    pix = []
    for x, y in centers:
        c0 = int((x - half - grid.affine.c) // grid.resolution.x)
        c1 = int((x + half - grid.affine.c) // grid.resolution.x)
        r0 = int((grid.affine.f - y - half) // grid.resolution.x)
        r1 = int((grid.affine.f - y + half) // grid.resolution.x)
        # a buffer-method square may reach past the grid, where there are no trees
        rows = np.arange(max(r0, 0), min(r1, grid.height - 1) + 1)
        cols = np.arange(max(c0, 0), min(c1, grid.width - 1) + 1)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        pix.append((rr * grid.width + cc).ravel())
    pixels = np.unique(np.concatenate(pix)) if pix else np.zeros(0, dtype=np.int64)
    trees = generate_trees(
        seed, grid, pixels, parcel_idx.ravel()[pixels], stocking.ravel()[pixels], stand
    )
    which = np.full(len(trees), -1, dtype=np.int64)
    for i, (x, y) in enumerate(centers):
        m = (np.abs(trees.x_m - x) < half) & (np.abs(trees.y_m - y) < half)
        if frames is not None:
            m[m] = shapely.contains_xy(frames[i], trees.x_m[m], trees.y_m[m])
        which[m] = i
    keep = which >= 0
    return trees.subset(keep), which[keep]


def measure(
    rng: np.random.Generator, trees: Trees
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Measured DBH (cm), height (m, NaN if not measured) and culm age (yr, NaN if none)."""
    p = coefficients()["plots"]
    n = len(trees)
    d = trees.dbh_cm
    sd = float(p["dbh_error_a_cm"]) + float(p["dbh_error_b"]) * d
    dm = d + rng.normal(0.0, 1.0, n) * sd
    gross = rng.uniform(size=n) < float(p["gross_error_rate"])
    dm = np.where(gross, dm + rng.normal(0.0, float(p["gross_error_sd_cm"]), n), dm)
    dm = np.round(np.maximum(dm, 0.1), 1).astype(np.float64)
    measured = rng.uniform(size=n) < float(p["height_measured_share"])
    he: npt.NDArray[np.float64] = trees.height_m * (
        1.0 + rng.normal(0.0, float(p["height_error_sd_rel"]), n)
    )
    he = he + rng.normal(0.0, float(p["height_error_sd_m"]), n)
    hm = np.where(measured, np.round(np.maximum(he, 1.3), 1), np.nan)
    return dm, hm, trees.age_yr.copy()


def plot_polygons(
    rng: np.random.Generator, centers: npt.NDArray[np.float64], plot_ids: list[str], crs: str
) -> tuple[gpd.GeoDataFrame, npt.NDArray[np.float64]]:
    """Plot squares at the GPS-measured centres, and those centres."""
    p = coefficients()["plots"]
    half = plot_half_side_m()
    gps = centers + rng.normal(0.0, float(p["gps_error_sd_m"]), centers.shape)
    geoms = [box(x - half, y - half, x + half, y + half) for x, y in gps]
    gdf = gpd.GeoDataFrame(
        {"plot_id": plot_ids, "plot_area_ha": float(p["plot_area_ha"])}, geometry=geoms, crs=crs
    )
    return gdf, gps


def tree_table(
    plot_ids: list[str],
    epoch: str,
    trees: Trees,
    which: npt.NDArray[np.int64],
    dbh_cm: npt.NDArray[np.float64],
    height_m: npt.NDArray[np.float64],
    age_yr: npt.NDArray[np.float64],
    tree_ids: list[str],
) -> pd.DataFrame:
    """The field tree list of one epoch (contract columns)."""
    return pd.DataFrame(
        {
            "plot_id": np.asarray(plot_ids, dtype=object)[which],
            "epoch": epoch,
            "tree_id": tree_ids,
            "species": trees.species,
            "dbh_cm": dbh_cm,
            "height_m": height_m,
            "age_yr": age_yr,
        }
    )


def empty_plot_rows(plot_ids: list[str], epoch: str, which: npt.NDArray[np.int64]) -> pd.DataFrame:
    """The field record of each plot measured at ``epoch`` with no tree in it (a clear-cut,
    land not yet planted): a row with the plot and epoch and neither species nor DBH, which
    the plots stage reads as a zero-biomass plot (:func:`models.plot_biomass.split_empty_plots`)."""
    empty = sorted(set(range(len(plot_ids))) - set(which.tolist()))
    return pd.DataFrame(
        {
            "plot_id": [plot_ids[i] for i in empty],
            "epoch": epoch,
            "tree_id": None,
            "species": None,
            "dbh_cm": np.nan,
            "height_m": np.nan,
            "age_yr": np.nan,
        }
    )
