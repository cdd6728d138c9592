"""Deterministic random numbers for the simulator.

Two tools, both pure functions of a seed:

* :func:`hash_uniform` - counter-based uniform numbers (the SplitMix64 finaliser of
  Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators", OOPSLA,
  doi:10.1145/2660193.2660195) keyed by integers such as (pixel, cohort, slot, field).
  Own code because numpy's generators are stream-based: a tree must get the same
  numbers whether it is generated for the whole region, a LiDAR tile or a single plot.
* :func:`gaussian_field` - a smooth, stationary Gaussian random field on a grid (white
  noise filtered with a Gaussian kernel in the Fourier domain), standardised to mean 0
  and standard deviation 1.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.special import ndtri

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, *keys: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Uniform numbers in (0, 1), one per broadcast element of the integer ``keys``."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed % 2**64) * _GOLDEN
        out = np.asarray(_mix(np.asarray(x + _GOLDEN, dtype=np.uint64)))
        for k in keys:
            kk = np.asarray(k).astype(np.int64).astype(np.uint64)
            out = _mix(out ^ (kk * _GOLDEN + _GOLDEN))
    # 53 random bits -> (0, 1) exclusive of both ends
    return ((out >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)


def hash_normal(seed: int, *keys: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Standard normal numbers keyed like :func:`hash_uniform`."""
    return np.asarray(ndtri(hash_uniform(seed, *keys)), dtype=np.float64)


def gaussian_field(
    rng: np.random.Generator, shape: tuple[int, int], *, length_px: float
) -> npt.NDArray[np.float64]:
    """A smooth Gaussian random field (mean 0, sd 1) with correlation length ``length_px``."""
    ny, nx = shape
    white = rng.standard_normal((ny, nx))
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    kernel = np.exp(-2.0 * (np.pi * length_px) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(ny, nx))
    sd = field.std()
    return (field - field.mean()) / (sd if sd > 0 else 1.0)
