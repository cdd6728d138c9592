"""Report figures as PNG bytes, rendered deterministically with matplotlib (Agg).

Figures are bare ``matplotlib.figure.Figure`` objects (no pyplot state, so thread-safe).

Every figure is written with ``metadata={"Software": None}`` (no version stamp) and no
timestamps, so the same inputs give the same bytes; ``svg.hashsalt`` is fixed too in
case a caller asks for SVG.

The words a figure draws (title, axis labels, legends) are the caller's, in the report's
language (:class:`FigureText`); for Chinese they are drawn with a list of fonts, Latin
text in matplotlib's own DejaVu Sans and the rest in a CJK font found on the system
(:func:`installed_font`), glyph by glyph (matplotlib's font fallback).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import geopandas as gpd
import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure

#: fixed style so that figures do not depend on a user's matplotlibrc
_STYLE: dict[str, Any] = {
    "svg.hashsalt": "forest-carbon",
    "font.size": 9,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "image.interpolation": "nearest",
}
Extent = tuple[float, float, float, float]


@dataclass(frozen=True)
class FigureText:
    """What a figure writes besides its title, in one language, and the fonts for it."""

    easting: str
    northing: str
    #: axis labels of the scatter plot, with ``{units}``
    observed: str
    predicted: str
    no_valid_pixels: str
    #: font families in order of preference, matplotlib falling back from one to the next
    #: for a glyph the first lacks; empty: matplotlib's default (DejaVu Sans)
    fonts: tuple[str, ...] = ()


def installed_font(families: Sequence[str]) -> str | None:
    """The first of ``families`` matplotlib can draw with, or None.

    matplotlib knows the fonts of its font cache. A font installed after the cache was
    built (``fonts-noto-cjk`` installed after matplotlib) is looked up with fontconfig,
    as the report's browser test does (``fc-list``), and added to matplotlib's font
    manager for this process.
    """
    for family in families:
        props = font_manager.FontProperties(family=family)
        try:
            font_manager.findfont(props, fallback_to_default=False)
            return family
        except ValueError:
            pass
        fc_list = shutil.which("fc-list")
        if fc_list is None:
            continue
        listed = subprocess.run(
            [fc_list, f":family={family}", "file"], capture_output=True, text=True, check=False
        ).stdout
        for line in listed.splitlines():
            font_manager.fontManager.addfont(line.rstrip().rstrip(":"))
        try:
            font_manager.findfont(props, fallback_to_default=False)
            return family
        except ValueError:
            continue
    return None


@contextmanager
def _figure(text: FigureText, width_in: float = 6.0, height_in: float = 5.0) -> Iterator[Figure]:
    style = {**_STYLE, "font.family": list(text.fonts)} if text.fonts else _STYLE
    with matplotlib.rc_context(cast(Any, style)):
        # a bare Figure (no pyplot): no global figure registry, no GUI backend
        yield Figure(figsize=(width_in, height_in))


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def map_png(
    values: np.ndarray,
    *,
    extent: Extent,
    title: str,
    units: str,
    text: FigureText,
    cmap: str = "viridis",
    diverging: bool = False,
) -> bytes:
    """A single-band map with a colour bar; NaN pixels are transparent."""
    finite = values[np.isfinite(values)]
    with _figure(text) as fig:
        ax = fig.add_subplot()
        if finite.size:
            lo, hi = np.percentile(finite, [2, 98])
            if diverging:
                m = max(abs(lo), abs(hi)) or 1.0
                lo, hi = -m, m
            if hi <= lo:
                hi = lo + 1.0
            im = ax.imshow(values, extent=extent, cmap=cmap, vmin=lo, vmax=hi, origin="upper")
            fig.colorbar(im, ax=ax, shrink=0.8, label=units)
        else:
            ax.text(
                0.5, 0.5, text.no_valid_pixels, ha="center", va="center", transform=ax.transAxes
            )
        ax.set_title(title)
        ax.set_xlabel(text.easting)
        ax.set_ylabel(text.northing)
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(axis="x", labelrotation=30)
        return _png(fig)


def rgb_png(
    rgb: np.ndarray,
    *,
    extent: Extent,
    title: str,
    percentiles: tuple[float, float],
    text: FigureText,
) -> bytes:
    """A true-colour composite (bands last) with a percentile stretch per band."""
    out = np.zeros(rgb.shape, dtype=np.float64)
    for i in range(3):
        band = rgb[..., i]
        finite = band[np.isfinite(band)]
        if finite.size:
            lo, hi = np.percentile(finite, percentiles)
            out[..., i] = np.clip((band - lo) / ((hi - lo) or 1.0), 0, 1)
    out = np.nan_to_num(out, nan=0.0)
    with _figure(text) as fig:
        ax = fig.add_subplot()
        ax.imshow(out, extent=extent, origin="upper")
        ax.set_title(title)
        ax.set_xlabel(text.easting)
        ax.set_ylabel(text.northing)
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(axis="x", labelrotation=30)
        return _png(fig)


def parcels_png(
    parcels: gpd.GeoDataFrame, *, column: str, title: str, units: str, text: FigureText
) -> bytes:
    """Parcels coloured by a column (diverging around zero)."""
    values = parcels[column].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    m = float(np.max(np.abs(finite))) if finite.size else 1.0
    with _figure(text) as fig:
        ax = fig.add_subplot()
        parcels.plot(
            ax=ax,
            column=column,
            cmap="RdYlGn",
            vmin=-m or -1.0,
            vmax=m or 1.0,
            edgecolor="black",
            linewidth=0.3,
            legend=True,
            legend_kwds={"label": units, "shrink": 0.8},
            missing_kwds={"color": "lightgrey"},
        )
        ax.set_title(title)
        ax.set_xlabel(text.easting)
        ax.set_ylabel(text.northing)
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(axis="x", labelrotation=30)
        return _png(fig)


def scatter_png(
    observed: Sequence[float],
    predicted: Sequence[float],
    *,
    title: str,
    units: str,
    text: FigureText,
) -> bytes:
    """Observed vs predicted with the 1:1 line."""
    obs, pred = np.asarray(observed, float), np.asarray(predicted, float)
    with _figure(text, 5.0, 5.0) as fig:
        ax = fig.add_subplot()
        ax.scatter(obs, pred, s=14, alpha=0.7, color="tab:green", edgecolor="none")
        both = np.concatenate([obs, pred])
        lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="1:1")
        ax.set_xlabel(text.observed.format(units=units))
        ax.set_ylabel(text.predicted.format(units=units))
        ax.set_title(title)
        ax.legend(loc="upper left")
        return _png(fig)


def residual_map_png(
    x_m: Sequence[float],
    y_m: Sequence[float],
    residual: Sequence[float],
    *,
    title: str,
    units: str,
    text: FigureText,
) -> bytes:
    """Residuals at plot locations, diverging colours."""
    r = np.asarray(residual, float)
    m = float(np.nanmax(np.abs(r))) if r.size else 1.0
    with _figure(text) as fig:
        ax = fig.add_subplot()
        sc = ax.scatter(x_m, y_m, c=r, cmap="RdBu", vmin=-m, vmax=m, s=30, edgecolor="black")
        fig.colorbar(sc, ax=ax, shrink=0.8, label=units)
        ax.set_title(title)
        ax.set_xlabel(text.easting)
        ax.set_ylabel(text.northing)
        ax.set_aspect("equal")
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(axis="x", labelrotation=30)
        return _png(fig)
