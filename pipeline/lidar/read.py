"""Streamed reading of LAS/LAZ tiles: only the points inside a box, in bounded memory.

Tiles are decoded with laspy (LAZ through lazrs) in chunks of ``points_per_chunk`` points
(``laspy.open(...).chunk_iterator``); each chunk is filtered to the requested box at once,
so memory holds one decoded chunk plus the kept points. For LAS 1.4 point formats 6-10 the
layered LAZ compression lets us decode only the fields the algorithms use (XY and return
numbers, Z, classification) and skip intensity, GPS time, scan angle, colour and the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np

from pipeline.errors import InputDataError
from pipeline.lidar.points import HIGH_NOISE, LOW_NOISE, PointSet

Box = tuple[float, float, float, float]

#: the LAZ layers the pipeline needs (the rest are skipped when the format allows it)
SELECTION = (
    laspy.DecompressionSelection.XY_RETURNS_CHANNEL
    | laspy.DecompressionSelection.Z
    | laspy.DecompressionSelection.CLASSIFICATION
)


class PointSink:
    """Preallocated columns filled chunk by chunk (no concatenation copies)."""

    def __init__(self, capacity: int) -> None:
        self.n = 0
        #: noise returns dropped while reading (inside the target's count box)
        self.n_noise = 0
        self.x = np.empty(capacity, np.float32)
        self.y = np.empty(capacity, np.float32)
        self.z = np.empty(capacity, np.float32)
        self.c = np.empty(capacity, np.uint8)
        self.rn = np.empty(capacity, np.uint8)
        self.nr = np.empty(capacity, np.uint8)

    def add(
        self,
        x: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        c: np.ndarray,
        rn: np.ndarray,
        nr: np.ndarray,
    ) -> None:
        k = x.shape[0]
        s = slice(self.n, self.n + k)
        self.x[s], self.y[s], self.z[s] = x, y, z
        self.c[s], self.rn[s], self.nr[s] = c, rn, nr
        self.n += k

    def add_points(self, p: PointSet) -> None:
        """Append a point set (already relative to the sink's origin)."""
        self.add(p.x_m, p.y_m, p.z_m, p.classification, p.return_number, p.number_of_returns)

    def points(self, origin: tuple[float, float]) -> PointSet:
        s = slice(0, self.n)
        if self.n >= 0.8 * self.x.shape[0]:  # little over-allocation: keep the buffers
            return PointSet(
                self.x[s], self.y[s], self.z[s], self.c[s], self.rn[s], self.nr[s], origin
            )
        # copies trim a large over-allocation so the capacity is released
        return PointSet(
            self.x[s].copy(),
            self.y[s].copy(),
            self.z[s].copy(),
            self.c[s].copy(),
            self.rn[s].copy(),
            self.nr[s].copy(),
            origin,
        )


def _contains(box: Box, inner: Box) -> bool:
    """Whether the closed-open ``box`` holds every point of the closed ``inner`` box."""
    return box[0] <= inner[0] and inner[2] < box[2] and box[1] <= inner[1] and inner[3] < box[3]


def _boxes_mask(x: np.ndarray, y: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    mask = np.zeros(x.shape[0], bool)
    for b in boxes:
        mask |= (x >= b[0]) & (x < b[2]) & (y >= b[1]) & (y < b[3])
    return mask


@dataclass(frozen=True)
class Target:
    """Where the points inside ``boxes`` (and outside ``exclude``) of a tile go.

    Boxes are ``(xmin, ymin, xmax, ymax)`` in map coordinates, closed-open; the points are
    appended to ``sink`` relative to ``origin``. Membership is decided in float64 map
    coordinates, so a return exactly on a chunk edge lands in exactly one chunk.
    """

    boxes: tuple[Box, ...]
    origin: tuple[float, float]
    sink: PointSink
    exclude: Box | None = None
    #: drop ASPRS noise (classes 7 and 18) while reading, counting those inside count_box
    drop_noise: bool = True
    count_box: Box | None = None


def read_targets(
    path: Path, targets: Sequence[Target], *, points_per_chunk: int = 1_000_000
) -> None:
    """Decode ``path`` once, streaming, and append its points to every matching target.

    Raises
    ------
    InputDataError
        The file cannot be decoded (corrupt or truncated); the message names the tile.
    """
    try:
        # one decoding thread per task: Dask runs tasks in parallel, one per core
        with laspy.open(
            path, laz_backend=laspy.LazBackend.Lazrs, decompression_selection=SELECTION
        ) as reader:
            h = reader.header
            sx, sy, sz = (float(v) for v in h.scales)
            ox, oy, oz = (float(v) for v in h.offsets)
            # targets whose boxes hold the whole tile need no per-point box test
            tile = (float(h.mins[0]), float(h.mins[1]), float(h.maxs[0]), float(h.maxs[1]))
            whole = [
                t.exclude is None and any(_contains(b, tile) for b in t.boxes) for t in targets
            ]
            for chunk in reader.chunk_iterator(points_per_chunk):
                x = np.asarray(chunk.X, np.float64) * sx + ox
                y = np.asarray(chunk.Y, np.float64) * sy + oy
                cols: tuple[np.ndarray, ...] | None = None
                noise: np.ndarray | None = None
                for t, is_whole in zip(targets, whole, strict=True):
                    if is_whole:
                        mask = np.ones(x.shape[0], bool)
                    else:
                        mask = _boxes_mask(x, y, t.boxes)
                    if t.exclude is not None:
                        mask &= ~_boxes_mask(x, y, [t.exclude])
                    if t.drop_noise:
                        if noise is None:
                            c = np.asarray(chunk.classification, np.uint8)
                            noise = (c == LOW_NOISE) | (c == HIGH_NOISE)
                        if t.count_box is not None:
                            if _contains(t.count_box, tile):
                                t.sink.n_noise += int(np.count_nonzero(noise))
                            else:
                                in_box = _boxes_mask(x, y, [t.count_box])
                                t.sink.n_noise += int(np.count_nonzero(noise & in_box))
                        mask &= ~noise
                    if not mask.any():
                        continue
                    if cols is None:  # decode the other fields once, only if needed
                        cols = (
                            np.asarray(chunk.Z, np.float64) * sz + oz,
                            np.asarray(chunk.classification, np.uint8),
                            np.asarray(chunk.return_number, np.uint8),
                            np.asarray(chunk.number_of_returns, np.uint8),
                        )
                    z, cls, rn, nr = cols
                    t.sink.add(
                        x[mask] - t.origin[0],
                        y[mask] - t.origin[1],
                        z[mask],
                        cls[mask],
                        rn[mask],
                        nr[mask],
                    )
    except InputDataError:
        raise
    except Exception as err:  # lazrs/laspy raise several types on corrupt data
        raise InputDataError(
            f"{path.name}: cannot decode the point records ({type(err).__name__}: {err}); "
            "the file is corrupt or truncated: re-download or re-export it"
        ) from None
