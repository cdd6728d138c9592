"""A spatial model of map errors: their correlogram and the variance of a map's area sum.

A parcel total is a weighted sum of pixel estimates, ``T = sum_i w_i c_i``, whose errors
``e_i = s_i z_i`` (``s_i`` the pixel's SD, ``z_i`` a standardised error) are spatially
correlated. Under a stationary correlation ``rho(d)`` of the standardised errors at
distance ``d``,

    Var(T) = sum_i sum_j w_i s_i  w_j s_j  rho(d_ij)                    (1)

(the variance of a linear combination of a spatially correlated field: Cressie 1993,
*Statistics for Spatial Data*, rev. ed., Wiley, §3.2 and the block-kriging variance of
§3.2.1; for biomass maps summed over areas, McRoberts & Westfall 2016,
doi:10.1007/s13595-015-0473-x). ``rho == 1`` gives the fully correlated bound
``(sum w s)^2``, ``rho(d > 0) == 0`` the independent one ``sum (w s)^2``.

The correlation model (:class:`Correlogram`) is the usual nugget + exponential form of
geostatistics (Cressie 1993, §2.3.1; Webster & Oliver 2007, *Geostatistics for
Environmental Scientists*, 2nd ed., Wiley, §4.4) plus a constant part shared by every
pixel pair however far apart, the map model's own error (bias, parameter error) that
does not average out over an area:

    rho(0) = 1,   rho(d > 0) = shared + (1 - nugget - shared) exp(-d / range)    (2)

It is fitted (:func:`fit_correlogram`) by weighted least squares to an empirical
correlogram by distance class, each class weighted by its number of pairs (Cressie
1985, doi:10.1007/BF01035243, with the pair counts as weights). A parcel's variance (1)
involves pairs of pixels *of that parcel* only, and pixels of one forest stand share
more than their distance: species, age and density, hence much of a model's error. The
empirical correlogram can therefore be restricted to pairs within the same group
(``groups``, e.g. the parcel of each cell), which conditions ``rho`` on "same parcel";
its ``shared`` part is then the error share common to a whole parcel (a stand effect
plus the model's own error, the between-group variance component of a nested error
model: Searle, Casella & McCulloch 1992, *Variance Components*, Wiley, ch. 3). The empirical
correlogram (:func:`empirical_correlogram`) of a gridded residual field is computed
over *all* pairs of valid cells in every direction with Fourier transforms (Marcotte
1996, "Fast variogram computation with FFT", Computers & Geosciences 22(10):1175-1186,
doi:10.1016/S0098-3004(96)00026-X). That is why it is written here rather than taken
from scikit-gstat or GSTools: their estimators loop over point pairs (quadratic in the
cells; a LiDAR block of 200 x 200 cells has 8e8 pairs) or, on structured grids, follow
the grid axes only; the fit itself is :func:`scipy.optimize.curve_fit`. The correlogram
is *uncentred* (``E[z_i z_j] / E[z^2]``, the residuals' mean is not removed): a mean
offset of the residuals is the shared part of (2) and shows as a plateau at long lags.

Equation (1) on a parcel's bounding box is one FFT convolution of ``w s`` with the
correlation kernel (:func:`weighted_covariance`), so its cost grows with the box, not
with the square of its cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import curve_fit
from scipy.signal import fftconvolve

from models.errors import ModelDomainError

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Correlogram:
    """Correlation of standardised map errors at a distance, equation (2) of the module.

    Attributes
    ----------
    nugget
        Share of the error variance uncorrelated between any two distinct pixels.
    shared
        Share correlated between every pair of pixels (the model's own error).
    range_m
        Exponential range (m): the spatially structured share falls to 1/e at this
        distance (to 5 % at three times it).
    """

    nugget: float
    shared: float
    range_m: float

    def __post_init__(self) -> None:
        if not (0 <= self.nugget and 0 <= self.shared and self.nugget + self.shared <= 1):
            raise ModelDomainError(
                f"correlogram: nugget {self.nugget} and shared {self.shared} must be "
                "non-negative and add up to at most 1"
            )
        if not self.range_m > 0:
            raise ModelDomainError(f"correlogram: range_m must be positive, got {self.range_m}")

    def __call__(self, distance_m: FloatArray | float) -> FloatArray:
        """``rho(d)`` for distances in metres (1 at distance 0)."""
        d = np.asarray(distance_m, dtype=np.float64)
        structured = 1.0 - self.nugget - self.shared
        rho = self.shared + structured * np.exp(-d / self.range_m)
        return np.where(d > 0, rho, 1.0)

    def kernel(self, shape: tuple[int, int], *, cell_m: float) -> FloatArray:
        """``rho`` of every offset between two cells of a ``shape`` box, as a
        ``(2 ny - 1, 2 nx - 1)`` array centred on offset zero."""
        ny, nx = shape
        dy = np.arange(-(ny - 1), ny, dtype=np.float64)[:, None] * cell_m
        dx = np.arange(-(nx - 1), nx, dtype=np.float64)[None, :] * cell_m
        return self(np.hypot(dy, dx))

    def record(self) -> dict[str, float]:
        """The parameters as a plain mapping (for a JSON file or table attributes)."""
        return asdict(self)


def empirical_correlogram(
    residuals: FloatArray,
    *,
    cell_m: float,
    max_lag_m: float,
    bin_m: float,
    groups: NDArray[np.integer] | None = None,
) -> dict[str, FloatArray]:
    """Uncentred correlogram of a gridded residual field by distance class.

    Parameters
    ----------
    residuals
        ``(ny, nx)`` standardised residuals (error / its SD), NaN where there is none.
    cell_m
        Cell size (m).
    max_lag_m
        Largest distance kept (m).
    bin_m
        Width of the distance classes (m); the first class holds distances in
        ``(0, bin_m]``, and so on.
    groups
        Optional ``(ny, nx)`` integer labels (e.g. the parcel of each cell): only pairs
        of cells with the same positive label count, the correlation of errors *within*
        a group; cells labelled 0 or less drop out.

    Returns
    -------
    dict
        ``lag_m`` (mean pair distance of each class), ``rho`` (``sum z_i z_j`` over the
        class's pairs, over ``n_pairs`` times the mean square ``E[z^2]`` of the cells
        that count) and ``n_pairs`` per non-empty class, and ``mean_square``
        (``E[z^2]``, a 1-element array). Pairs are unordered; every pair of valid cells
        at a distance up to ``max_lag_m`` is counted, in all directions (Marcotte 1996),
        one FFT per group on its bounding box.
    """
    z = np.asarray(residuals, dtype=np.float64)
    valid = np.isfinite(z)
    labels = np.ones(z.shape, dtype=np.int64) if groups is None else np.asarray(groups)
    valid &= labels > 0
    if valid.sum() < 2:
        raise ModelDomainError("correlogram: fewer than two valid residuals")
    mean_square = float(np.mean(z[valid] ** 2))
    if mean_square <= 0:
        raise ModelDomainError("correlogram: the residuals are all zero")
    edges = np.arange(0.0, max_lag_m + bin_m, bin_m)
    n, s, d = (np.zeros(len(edges)) for _ in range(3))
    for label in np.unique(labels[valid]):
        member = valid & (labels == label)
        rows, cols = np.flatnonzero(member.any(axis=1)), np.flatnonzero(member.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        w = member[box].astype(np.float64)
        zf = np.where(member[box], z[box], 0.0)
        # cross-products and pair counts at every offset: autocorrelations by FFT
        prod = fftconvolve(zf, zf[::-1, ::-1])
        count = np.rint(fftconvolve(w, w[::-1, ::-1]))
        ny, nx = w.shape
        dy = np.arange(-(ny - 1), ny)[:, None] * cell_m
        dx = np.arange(-(nx - 1), nx)[None, :] * cell_m
        dist = np.hypot(dy, dx)
        keep = (dist > 0) & (dist <= edges[-1]) & (count > 0)
        cls = np.digitize(dist[keep], edges, right=True)
        n += np.bincount(cls, weights=count[keep], minlength=len(edges))
        s += np.bincount(cls, weights=prod[keep], minlength=len(edges))
        d += np.bincount(cls, weights=dist[keep] * count[keep], minlength=len(edges))
    has = n > 0
    # each unordered pair appears at two opposite offsets: the ratios are unchanged
    return {
        "lag_m": d[has] / n[has],
        "rho": s[has] / n[has] / mean_square,
        "n_pairs": n[has] / 2.0,
        "mean_square": np.array([mean_square]),
    }


def fit_correlogram(empirical: Mapping[str, FloatArray]) -> Correlogram:
    """Weighted least-squares fit of equation (2) to an empirical correlogram.

    ``empirical`` holds ``lag_m``, ``rho`` and ``n_pairs`` (as from
    :func:`empirical_correlogram`); the weight of a class is its number of pairs. The
    range is bounded by the largest lag: a structure longer than the data cannot be told
    from the shared part.
    """
    lag = np.asarray(empirical["lag_m"], dtype=np.float64)
    rho = np.asarray(empirical["rho"], dtype=np.float64)
    n = np.asarray(empirical["n_pairs"], dtype=np.float64)
    if lag.size < 3:
        raise ModelDomainError(f"correlogram: {lag.size} distance classes, at least 3 needed")
    max_lag = float(lag.max())

    # parametrised by the structured share so that nugget + shared <= 1 holds by bounds
    def model(d: FloatArray, structured: float, share: float, range_m: float) -> FloatArray:
        shared = (1.0 - structured) * share
        return shared + structured * np.exp(-d / range_m)

    p0 = (float(np.clip(rho[0], 0.05, 0.95)), 0.1, max_lag / 5)
    bounds = ([0.0, 0.0, float(lag.min()) / 10], [1.0, 1.0, max_lag])
    (structured, share, range_m), _ = curve_fit(
        model, lag, rho, p0=p0, sigma=1.0 / np.sqrt(n), bounds=bounds, maxfev=20000
    )
    shared = (1.0 - structured) * share
    return Correlogram(
        nugget=float(max(0.0, 1.0 - structured - shared)),
        shared=float(shared),
        range_m=float(range_m),
    )


def weighted_covariance(a: FloatArray, b: FloatArray, kernel: FloatArray) -> float:
    """``sum_i sum_j a_i b_j rho(d_ij)``: the covariance of two weighted sums of
    standardised errors (equation (1) when ``a == b == w s``).

    ``a`` and ``b`` are ``(ny, nx)`` arrays on the same box (0 where a cell does not
    count); ``kernel`` is ``rho`` at every offset, ``(2 ny - 1, 2 nx - 1)`` centred on
    offset zero or larger (cropped to the box), as :meth:`Correlogram.kernel`.
    """
    ny, nx = a.shape
    ky, kx = (np.asarray(kernel.shape) - 1) // 2
    if ky < ny - 1 or kx < nx - 1:
        raise ModelDomainError(f"correlogram kernel {kernel.shape} too small for a {a.shape} box")
    k = kernel[ky - (ny - 1) : ky + ny, kx - (nx - 1) : kx + nx]
    # "valid" leaves out[i] = sum_j b_j k(i - j) (k symmetric) on the box
    smoothed = fftconvolve(b, k, mode="valid")
    return float(np.sum(a * smoothed))


def correlogram_record(model: Correlogram, empirical: Mapping[str, FloatArray]) -> dict[str, Any]:
    """The fitted parameters next to the empirical points they were fitted to."""
    return {
        **model.record(),
        "form": "rho(0) = 1; rho(d > 0) = shared + (1 - nugget - shared) exp(-d / range_m)",
        "empirical": {
            "lag_m": [float(x) for x in empirical["lag_m"]],
            "rho": [float(x) for x in empirical["rho"]],
            "n_pairs": [float(x) for x in empirical["n_pairs"]],
            "fitted": [float(x) for x in model(np.asarray(empirical["lag_m"]))],
        },
    }
