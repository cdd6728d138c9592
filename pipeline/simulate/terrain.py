"""Analytic hilly terrain: ground elevation, slope and aspect at any point.

The ground is a sum of cosine waves with random directions, wavelengths between
``wavelength_min_m`` and ``wavelength_max_m`` and amplitudes proportional to
``wavelength ** spectral_exponent`` (a red-noise spectrum, the usual spectral synthesis of
fractal-like relief; e.g. Saupe 1988, "Algorithms for random fractals", in The Science of
Fractal Images, Springer). Because it is a closed-form function, the same elevation is
returned for a 10 m pixel centre, a 1 m LiDAR DTM cell or an individual LiDAR ground
return, and slope/aspect come from the analytic gradient. The relief is rescaled so that
elevations span ``elevation_min_m``-``elevation_max_m`` over a fixed normalisation extent
around the region centre (so a place has the same elevation whatever region size is
built) and the steepest slope there is at most ``max_slope_deg``. All coefficients are in
``simulation.yaml`` (``terrain``; status: assumption).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.simulate.science import coefficients

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Terrain:
    """A closed-form ground surface ``z(x, y) = base + sum_i a_i cos(k_i . (p - c) + phi_i)``."""

    center_x_m: float
    center_y_m: float
    kx: FloatArray
    ky: FloatArray
    amplitude_m: FloatArray
    phase: FloatArray
    base_m: float

    def elevation(self, x_m: npt.ArrayLike, y_m: npt.ArrayLike) -> FloatArray:
        """Ground elevation (m) at map coordinates (broadcast arrays)."""
        x = np.asarray(x_m, dtype=np.float64) - self.center_x_m
        y = np.asarray(y_m, dtype=np.float64) - self.center_y_m
        z = np.full(np.broadcast(x, y).shape, self.base_m)
        for kx, ky, a, p in zip(self.kx, self.ky, self.amplitude_m, self.phase, strict=True):
            z += a * np.cos(kx * x + ky * y + p)
        return z

    def gradient(self, x_m: npt.ArrayLike, y_m: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(dz/dx, dz/dy) of the ground (m/m; y grows northwards)."""
        x = np.asarray(x_m, dtype=np.float64) - self.center_x_m
        y = np.asarray(y_m, dtype=np.float64) - self.center_y_m
        shape = np.broadcast(x, y).shape
        gx = np.zeros(shape)
        gy = np.zeros(shape)
        for kx, ky, a, p in zip(self.kx, self.ky, self.amplitude_m, self.phase, strict=True):
            s = -a * np.sin(kx * x + ky * y + p)
            gx += s * kx
            gy += s * ky
        return gx, gy

    def slope_aspect_deg(
        self, x_m: npt.ArrayLike, y_m: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        """Slope (deg) and aspect (deg clockwise from north, the downslope direction)."""
        gx, gy = self.gradient(x_m, y_m)
        slope = np.degrees(np.arctan(np.hypot(gx, gy)))
        aspect = np.degrees(np.arctan2(-gx, -gy)) % 360.0
        return slope, aspect


def make_terrain(rng: np.random.Generator, *, center_x_m: float, center_y_m: float) -> Terrain:
    """Draw a terrain and scale it to the configured elevation range and maximum slope."""
    c = coefficients()["terrain"]
    n = int(c["n_waves"])
    wl = np.exp(rng.uniform(np.log(c["wavelength_min_m"]), np.log(c["wavelength_max_m"]), n))
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    k = 2.0 * np.pi / wl
    amp = wl ** float(c["spectral_exponent"])
    amp = amp / amp.sum()
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    unit = Terrain(center_x_m, center_y_m, k * np.cos(theta), k * np.sin(theta), amp, phase, 0.0)
    half = float(c["normalise_extent_m"]) / 2.0
    g = np.linspace(-half, half, 241)
    gx, gy = np.meshgrid(center_x_m + g, center_y_m + g)
    z = unit.elevation(gx, gy)
    zmin, zmax = float(z.min()), float(z.max())
    scale = (c["elevation_max_m"] - c["elevation_min_m"]) / (zmax - zmin)
    sx, sy = unit.gradient(gx, gy)
    max_grad = float(np.hypot(sx, sy).max()) * scale
    limit = float(np.tan(np.radians(c["max_slope_deg"])))
    if max_grad > limit:  # flatten the relief about its mean rather than exceed the slope cap
        scale *= limit / max_grad
    mid = 0.5 * (c["elevation_max_m"] + c["elevation_min_m"])
    base = mid - scale * 0.5 * (zmin + zmax)
    return Terrain(center_x_m, center_y_m, unit.kx, unit.ky, amp * scale, phase, base)
