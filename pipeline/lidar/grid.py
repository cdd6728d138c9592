"""North-up cell grids in the coordinate frame of a point set (relative metres)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CellGrid:
    """``rows x cols`` cells of side ``res_m``; ``x0_m`` west edge, ``ytop_m`` north edge."""

    x0_m: float
    ytop_m: float
    res_m: float
    rows: int
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates (x of each column, y of each row)."""
        xc = self.x0_m + (np.arange(self.cols) + 0.5) * self.res_m
        yc = self.ytop_m - (np.arange(self.rows) + 0.5) * self.res_m
        return xc, yc

    def cell_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of points (may be out of range).

        Cells are closed-open in both map axes, ``[west, east) x [south, north)``, like the
        chunk cores, so a return on a cell edge belongs to exactly one cell and chunk.
        """
        col = np.floor((x - self.x0_m) / self.res_m).astype(np.int32)
        row = np.ceil((self.ytop_m - y) / self.res_m).astype(np.int32)
        row -= 1
        return row, col

    def flat_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat cell index of points and the mask of points inside the grid."""
        row, col = self.cell_index(x, y)
        inside = (row >= 0) & (row < self.rows) & (col >= 0) & (col < self.cols)
        # int32 halves the memory of a chunk's indices; grids stay far below 2**31 cells
        row *= self.cols
        row += col
        return row, inside

    def flat_index_blocks(
        self, x: np.ndarray, y: np.ndarray, *, block: int = 1_000_000
    ) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """:meth:`flat_index` over slices of ``block`` points: ``(slice, flat, inside)``."""
        n = x.shape[0]
        for start in range(0, n, block):
            sl = slice(start, min(start + block, n))
            flat, inside = self.flat_index(x[sl], y[sl])
            yield sl, flat, inside
