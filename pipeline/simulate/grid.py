"""The simulator's view of a north-up grid (the model grid or a finer/coarser one)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from affine import Affine


@dataclass(frozen=True)
class Grid:
    """A north-up grid: ``nx`` x ``ny`` cells of ``res_m`` from (``x0_m``, ``y1_m``) (top-left)."""

    x0_m: float
    y1_m: float
    res_m: float
    nx: int
    ny: int

    @property
    def transform(self) -> Affine:
        return Affine(self.res_m, 0.0, self.x0_m, 0.0, -self.res_m, self.y1_m)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (
            self.x0_m,
            self.y1_m - self.ny * self.res_m,
            self.x0_m + self.nx * self.res_m,
            self.y1_m,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    def centers(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Cell-centre coordinates (x of columns, y of rows)."""
        x = self.x0_m + (np.arange(self.nx) + 0.5) * self.res_m
        y = self.y1_m - (np.arange(self.ny) + 0.5) * self.res_m
        return x.astype(np.float64), y.astype(np.float64)

    def mesh(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        x, y = self.centers()
        gx, gy = np.meshgrid(x, y)
        return gx.astype(np.float64), gy.astype(np.float64)

    def window(self, bounds: tuple[float, float, float, float], res_m: float) -> Grid:
        """A grid of ``res_m`` cells covering ``bounds``."""
        xmin, ymin, xmax, ymax = bounds
        return Grid(xmin, ymax, res_m, round((xmax - xmin) / res_m), round((ymax - ymin) / res_m))
