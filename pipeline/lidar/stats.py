"""Statistics of a raster's finite values, computed block by block in bounded memory.

The LiDAR stage's QA summarises rasters that can be far larger than memory: the CHM's
range and 99th percentile (a canopy implausibly tall), and the DTM difference between
two flights (mean, SD, 1st and 99th percentiles). :func:`summarise` reads a Dask array
twice, one block at a time, and returns the same order statistics as numpy on the whole
array, exactly:

1. every block gives a histogram of its finite values' 32-bit keys (the float32 bit
   pattern mapped to an unsigned integer in the same order) by their upper 16 bits, its
   count and its sum; the histograms are added up in a tree, so the driver holds a few
   of them, whatever the number of blocks. The upper 16 bits of the k-th smallest value
   are the bin in which the histogram's running count passes k.
2. for the few bins that hold a wanted rank, every block gives the histogram of the
   lower 16 bits of its keys in those bins (and its sum of squared deviations from the
   mean), which fixes each wanted value exactly.

Percentiles interpolate linearly between the two values around their rank, as
``numpy.percentile``'s default (``method="linear"``) does, with its arithmetic. The mean
and SD are sums of per-block float64 sums, so they can differ from numpy's pairwise sums
over the whole array in the last bits (about 1e-16 relative).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

#: number of bins of one 16-bit digit of a key
_DIGIT = 1 << 16


@dataclass(frozen=True)
class Summary:
    """Count, range, mean, SD (population, as ``numpy.std``) and percentiles of the
    finite values (None where there is none)."""

    n: int
    min: float | None
    max: float | None
    mean: float | None
    sd: float | None
    percentiles: tuple[float | None, ...]


def _keys(block: np.ndarray) -> np.ndarray:
    """The finite values of ``block`` (cast to float32, which must hold them exactly) as
    uint32 keys that sort like the values."""
    v = np.asarray(block, np.float32).ravel()
    bits = v[np.isfinite(v)].view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000))


def _value(key: int) -> float:
    """The float32 value of a key of :func:`_keys`."""
    bits = key ^ 0x80000000 if key & 0x80000000 else ~key & 0xFFFFFFFF
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def _first_pass(block: np.ndarray) -> tuple[np.ndarray, float]:
    keys = _keys(block)
    hist = np.bincount(keys >> np.uint32(16), minlength=_DIGIT)
    values = np.asarray(block, np.float64).ravel()
    return hist, float(values[np.isfinite(values)].sum())


def _second_pass(block: np.ndarray, bins: tuple[int, ...], mean: float) -> tuple[np.ndarray, float]:
    keys = _keys(block)
    high = keys >> np.uint32(16)
    hists = np.stack(
        [np.bincount(keys[high == b] & np.uint32(0xFFFF), minlength=_DIGIT) for b in bins]
    )
    values = np.asarray(block, np.float64).ravel()
    values = values[np.isfinite(values)]
    return hists, float(((values - mean) ** 2).sum())


def _add(a: tuple[np.ndarray, float], b: tuple[np.ndarray, float]) -> tuple[np.ndarray, float]:
    return a[0] + b[0], a[1] + b[1]


def _tree_sum(blocks: Sequence[Any], func: Callable[..., Any], *args: Any) -> Any:
    """``func(block, *args)`` of every block, added up pairwise as Dask tasks."""
    parts = [dask.delayed(func, pure=True)(b, *args) for b in blocks]
    while len(parts) > 1:
        odd = parts[-1:] if len(parts) % 2 else []
        pairs = zip(parts[0::2], parts[1::2], strict=False)  # the odd one is carried over
        parts = [dask.delayed(_add, pure=True)(a, b) for a, b in pairs] + odd
    return parts[0].compute()


def _locate(cumulative: np.ndarray, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th (0-based) counted item and its rank within it."""
    b = int(np.searchsorted(cumulative, rank, side="right"))
    return b, rank - (int(cumulative[b - 1]) if b else 0)


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation (``numpy.percentile``'s ``_lerp``)."""
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


def summarise(arr: da.Array | np.ndarray, percentiles: Sequence[float] = ()) -> Summary:
    """Count, range, mean, SD and ``percentiles`` (0-100) of the finite values of ``arr``
    (values a float32 holds exactly), reading it block by block (module docstring)."""
    blocks = list(da.asarray(arr).to_delayed().ravel())
    high, total = _tree_sum(blocks, _first_pass)
    n = int(high.sum())
    if n == 0:
        return Summary(0, None, None, None, None, tuple(None for _ in percentiles))
    mean = total / n
    # numpy.percentile: the virtual index (n - 1) * q / 100, between two ranks
    where = [(n - 1) * (q / 100) for q in percentiles]
    ranks = sorted(
        {0, n - 1, *(math.floor(w) for w in where), *(min(math.floor(w) + 1, n - 1) for w in where)}
    )
    cum_high = np.cumsum(high)
    located = {r: _locate(cum_high, r) for r in ranks}
    bins = tuple(sorted({b for b, _ in located.values()}))
    low, squares = _tree_sum(blocks, _second_pass, bins, mean)
    cum_low = {b: np.cumsum(h) for b, h in zip(bins, low, strict=True)}
    value = {}
    for r, (b, within) in located.items():
        digit, _ = _locate(cum_low[b], within)
        value[r] = _value(b << 16 | digit)
    quantiles = []
    for w in where:
        lo = math.floor(w)
        quantiles.append(_lerp(value[lo], value[min(lo + 1, n - 1)], w - lo))
    return Summary(
        n=n,
        min=value[0],
        max=value[n - 1],
        mean=mean,
        sd=math.sqrt(squares / n),
        percentiles=tuple(quantiles),
    )
