"""Seeded synthetic forest landscape with known AGB, for the biomass-model tests.

Truth follows an ABA-shaped relation with a spatially autocorrelated log-residual field
(the part of biomass no predictor explains, e.g. wood density and stand structure), so
that plots close together share errors, the situation in which random K-fold CV is known
to be optimistic. Predictors: LiDAR metrics (``h_mean``, ``cover_2m`` and a percentile),
satellite-like bands that saturate with cover, and smooth terrain fields that a flexible
model can use as a proxy for location.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class Landscape:
    agb_mg_ha: np.ndarray  # (ny, nx) truth
    features: dict[str, np.ndarray]  # name -> (ny, nx)
    x_m: np.ndarray  # (nx,) cell centres
    y_m: np.ndarray  # (ny,) cell centres, north-up (decreasing)
    cell_m: float


def _field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return (f - f.mean()) / f.std()


def make_landscape(seed: int, *, n: int = 160, cell_m: float = 25.0) -> Landscape:
    rng = np.random.default_rng(seed)
    shape = (n, n)
    height_m = np.clip(17.0 + 7.0 * _field(rng, shape, 6.0), 2.0, 40.0)
    cover = 1.0 / (1.0 + np.exp(-(1.2 + 1.0 * _field(rng, shape, 5.0))))
    resid_log = 0.3 * _field(rng, shape, 8.0)  # autocorrelated, range of a few hundred m
    agb = 2.5 * height_m**1.3 * cover**0.8 * np.exp(resid_log)
    elevation = 400.0 + 150.0 * _field(rng, shape, 15.0)
    feats = {
        "h_mean": height_m + rng.normal(0.0, 1.0, shape),
        "h_p95": 1.3 * height_m + rng.normal(0.0, 1.5, shape),
        "cover_2m": np.clip(cover + rng.normal(0.0, 0.04, shape), 0.01, 1.0),
        "ndvi": 0.85 - 0.5 * np.exp(-3.0 * cover) + rng.normal(0.0, 0.02, shape),
        "nbr": 0.6
        - 0.4 * np.exp(-2.0 * cover)
        + 0.002 * (height_m - 17.0)
        + rng.normal(0.0, 0.03, shape),
        "elevation": elevation,
        "slope_deg": np.clip(15.0 + 8.0 * _field(rng, shape, 10.0), 0.0, 60.0),
    }
    x = (np.arange(n) + 0.5) * cell_m
    y = (np.arange(n)[::-1] + 0.5) * cell_m
    return Landscape(agb, feats, x, y, cell_m)


def sample_plots(
    land: Landscape,
    seed: int,
    *,
    n_clusters: int = 24,
    per_cluster: int = 5,
    spread_px: int = 4,
    rel_error: float = 0.08,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Clustered plots (as field inventories are): features, observed AGB, (row, col)."""
    rng = np.random.default_rng(seed)
    n = land.agb_mg_ha.shape[0]
    centres = rng.integers(spread_px, n - spread_px, size=(n_clusters, 2))
    offsets = rng.integers(-spread_px, spread_px + 1, size=(n_clusters, per_cluster, 2))
    rc = (centres[:, None, :] + offsets).reshape(-1, 2)
    rows, cols = rc[:, 0], rc[:, 1]
    table = pd.DataFrame({k: v[rows, cols] for k, v in land.features.items()})
    table["x_m"] = land.x_m[cols]
    table["y_m"] = land.y_m[rows]
    truth = land.agb_mg_ha[rows, cols]
    observed = truth * (1.0 + rel_error * rng.standard_normal(truth.size))
    return table, observed, np.column_stack([rows, cols])


def pixel_table(land: Landscape) -> pd.DataFrame:
    return pd.DataFrame({k: v.ravel() for k, v in land.features.items()})
