"""Tests of the spatial map-error model (models.spatial_error): the variance of a weighted
sum under a correlogram, the empirical correlogram and its fit."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import ModelDomainError
from models.spatial_error import (
    Correlogram,
    empirical_correlogram,
    fit_correlogram,
    weighted_covariance,
)

CELL_M = 10.0


def brute_force(a: np.ndarray, b: np.ndarray, model: Correlogram) -> float:
    """sum_i sum_j a_i b_j rho(d_ij) by the double sum over all cell pairs."""
    yy, xx = np.indices(a.shape)
    pts = np.column_stack([yy.ravel(), xx.ravel()]) * CELL_M
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    return float(a.ravel() @ model(d) @ b.ravel())


def test_nugget_only_gives_the_independent_sum():
    # n pixels of constant SD s: Var = n s^2, the root-sum-of-squares bound
    n_y, n_x, s = 6, 7, 2.5
    ws = np.full((n_y, n_x), s)
    model = Correlogram(nugget=1.0, shared=0.0, range_m=50.0)
    var = weighted_covariance(ws, ws, model.kernel(ws.shape, cell_m=CELL_M))
    assert var == pytest.approx(n_y * n_x * s**2)


def test_full_correlation_gives_the_correlated_sum():
    # rho == 1 everywhere: Var = (n s)^2, the sum of SDs squared
    n_y, n_x, s = 5, 9, 1.5
    ws = np.full((n_y, n_x), s)
    model = Correlogram(nugget=0.0, shared=1.0, range_m=50.0)
    var = weighted_covariance(ws, ws, model.kernel(ws.shape, cell_m=CELL_M))
    assert var == pytest.approx((n_y * n_x * s) ** 2)


def test_exponential_case_equals_the_double_sum():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 2, (7, 11)) * (rng.uniform(size=(7, 11)) > 0.3)  # cells left out: 0
    b = rng.uniform(0, 2, (7, 11))
    model = Correlogram(nugget=0.2, shared=0.1, range_m=35.0)
    # a kernel larger than the box is cropped to it
    kernel = model.kernel((20, 20), cell_m=CELL_M)
    assert weighted_covariance(a, a, kernel) == pytest.approx(brute_force(a, a, model))
    assert weighted_covariance(a, b, kernel) == pytest.approx(brute_force(a, b, model))


def test_kernel_smaller_than_the_box_is_refused():
    model = Correlogram(nugget=0.2, shared=0.0, range_m=35.0)
    ws = np.ones((6, 6))
    with pytest.raises(ModelDomainError, match="too small"):
        weighted_covariance(ws, ws, model.kernel((4, 6), cell_m=CELL_M))


def test_correlogram_shares_must_add_up_to_at_most_one():
    with pytest.raises(ModelDomainError, match="add up to at most 1"):
        Correlogram(nugget=0.7, shared=0.4, range_m=10.0)
    with pytest.raises(ModelDomainError, match="range_m"):
        Correlogram(nugget=0.1, shared=0.0, range_m=0.0)


def test_empirical_correlogram_equals_the_pairwise_average():
    rng = np.random.default_rng(5)
    z = rng.normal(0.3, 1, (8, 9))
    z[rng.uniform(size=z.shape) < 0.2] = np.nan
    emp = empirical_correlogram(z, cell_m=CELL_M, max_lag_m=45.0, bin_m=15.0)
    # brute force over unordered pairs of valid cells
    yy, xx = np.nonzero(np.isfinite(z))
    vals = z[yy, xx]
    i, j = np.triu_indices(len(vals), k=1)
    d = np.hypot(yy[i] - yy[j], xx[i] - xx[j]) * CELL_M
    ms = np.mean(vals**2)
    cls = np.ceil(d / 15.0).astype(int)  # (0, 15] -> 1, (15, 30] -> 2, ...
    want_rho, want_n, want_lag = [], [], []
    for c in (1, 2, 3):
        m = cls == c
        want_rho.append(np.mean(vals[i[m]] * vals[j[m]]) / ms)
        want_n.append(m.sum())
        want_lag.append(d[m].mean())
    np.testing.assert_allclose(emp["rho"], want_rho, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(emp["n_pairs"], want_n)
    np.testing.assert_allclose(emp["lag_m"], want_lag)
    assert emp["mean_square"][0] == pytest.approx(ms)


def simulated_fields(model: Correlogram, *, side: int, n_fields: int, seed: int) -> np.ndarray:
    """``n_fields`` independent Gaussian random fields with correlation ``model`` (exact,
    by the Cholesky factor of the covariance matrix), side by side in one array and
    separated by NaN gaps wider than any lag the test uses."""
    yy, xx = np.indices((side, side))
    pts = np.column_stack([yy.ravel(), xx.ravel()]) * CELL_M
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    chol = np.linalg.cholesky(model(d))
    rng = np.random.default_rng(seed)
    gap = side  # > the largest lag kept (half a side)
    out = np.full((side, n_fields * (side + gap)), np.nan)
    for k in range(n_fields):
        field = (chol @ rng.standard_normal(side * side)).reshape(side, side)
        out[:, k * (side + gap) : k * (side + gap) + side] = field
    return out


def test_fit_recovers_range_and_nugget_of_a_simulated_field():
    # tolerance: 25 % on the range, 0.08 on the nugget and the shared part, from 12
    # fields of 40 x 40 cells (8 ranges across each)
    truth = Correlogram(nugget=0.3, shared=0.0, range_m=50.0)
    z = simulated_fields(truth, side=40, n_fields=12, seed=11)
    emp = empirical_correlogram(z, cell_m=CELL_M, max_lag_m=200.0, bin_m=CELL_M)
    fit = fit_correlogram(emp)
    assert fit.range_m == pytest.approx(truth.range_m, rel=0.25)
    assert fit.nugget == pytest.approx(truth.nugget, abs=0.08)
    assert fit.shared == pytest.approx(truth.shared, abs=0.08)


def test_a_mean_offset_of_the_residuals_is_the_shared_part():
    # residuals = offset + a unit-variance field: the uncentred correlogram levels off at
    # offset^2 / (1 + offset^2) at long lags
    truth = Correlogram(nugget=0.3, shared=0.0, range_m=30.0)
    offset = 0.6
    z = simulated_fields(truth, side=40, n_fields=12, seed=12) + offset
    emp = empirical_correlogram(z, cell_m=CELL_M, max_lag_m=200.0, bin_m=CELL_M)
    fit = fit_correlogram(emp)
    assert fit.shared == pytest.approx(offset**2 / (1 + offset**2), abs=0.06)


def test_too_few_distance_classes_are_refused():
    z = np.ones((2, 2))
    emp = empirical_correlogram(z, cell_m=CELL_M, max_lag_m=10.0, bin_m=CELL_M)
    with pytest.raises(ModelDomainError, match="at least 3"):
        fit_correlogram(emp)


def test_grouped_correlogram_counts_pairs_within_a_group_only():
    rng = np.random.default_rng(8)
    z = rng.normal(0.2, 1, (9, 10))
    groups = np.zeros(z.shape, dtype=int)
    groups[:, :4], groups[:5, 4:], groups[5:, 4:] = 1, 2, 3
    groups[0, 0] = 0  # left out
    emp = empirical_correlogram(z, cell_m=CELL_M, max_lag_m=30.0, bin_m=15.0, groups=groups)
    yy, xx = np.nonzero(groups > 0)
    vals, lab = z[yy, xx], groups[yy, xx]
    i, j = np.triu_indices(len(vals), k=1)
    same = lab[i] == lab[j]
    i, j = i[same], j[same]
    d = np.hypot(yy[i] - yy[j], xx[i] - xx[j]) * CELL_M
    cls = np.ceil(d / 15.0).astype(int)
    ms = np.mean(vals**2)
    want = [np.mean(vals[i[cls == c]] * vals[j[cls == c]]) / ms for c in (1, 2)]
    np.testing.assert_allclose(emp["rho"], want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(emp["n_pairs"], [(cls == c).sum() for c in (1, 2)])
