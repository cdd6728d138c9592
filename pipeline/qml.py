"""QGIS layer styles (``.qml``) for the maps and the parcel layer.

A ``.qml`` file is QGIS's XML for one layer's symbology. Two renderers are written here:

- rasters: a ``singlebandpseudocolor`` renderer on one band, an interpolated colour ramp
  between class limits taken from the data (by default its 2nd and 98th percentiles);
- the parcel layer: a ``graduatedSymbol`` renderer on one attribute, classes of equal
  count (quantile breaks), the outer limits the attribute's minimum and maximum so every
  parcel is drawn.

Colours come from matplotlib's colour maps, the ones the report uses. A *diverging* ramp
puts its middle colour on 0 (sources and sinks look different, no change is neutral):
a value ``v`` takes the ramp's colour at ``0.5 + 0.5 v / m``, ``m`` the larger absolute
class limit, so the limits stay those of the data. The band or attribute a style draws
is named in its ``customproperties`` (``forest_carbon:band``) besides the renderer's
band number, so a style can be checked against its layer.

The XML is built with :mod:`xml.etree.ElementTree` (always well formed, escaped), in
the element layout QGIS 3.28+ writes (``Option`` maps for symbol layers).
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_hex

#: the QGIS version whose style layout is written (any later 3.x reads it)
QGIS_VERSION = "3.28.0"
DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
#: custom property naming the band or attribute a style draws
BAND_PROPERTY = "forest_carbon:band"


@dataclass(frozen=True)
class Ramp:
    """A colour ramp: a matplotlib colour map name, and whether it diverges around 0."""

    cmap: str
    diverging: bool = False

    def colours(self, values: Sequence[float], *, lo: float, hi: float) -> list[str]:
        """``#rrggbb`` of each value on a scale from ``lo`` to ``hi`` (see the module)."""
        if self.diverging:
            m = max(abs(lo), abs(hi)) or 1.0
            norm = Normalize(-m, m)
        else:
            norm = Normalize(lo, hi if hi > lo else lo + 1.0)
        cmap = colormaps[self.cmap]
        return [to_hex(cmap(float(norm(v)))) for v in values]


def _option_map(parent: ET.Element, options: dict[str, str]) -> None:
    root = ET.SubElement(parent, "Option", type="Map")
    for name, value in options.items():
        ET.SubElement(root, "Option", name=name, type="QString", value=value)


def _document(attrs: dict[str, str] | None = None) -> ET.Element:
    return ET.Element(
        "qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology", **(attrs or {})}
    )


def _custom(root: ET.Element, band: str) -> None:
    _option_map(ET.SubElement(root, "customproperties"), {BAND_PROPERTY: band})


def _text(root: ET.Element) -> str:
    ET.indent(root)
    return f"{DOCTYPE}\n{ET.tostring(root, encoding='unicode')}\n"


def _fmt(value: float, precision: int) -> str:
    return f"{value:.{precision}f}"


def raster_style(
    *,
    band_index: int,
    band: str,
    limits: tuple[float, float],
    ramp: Ramp,
    units: str,
    n_stops: int = 7,
    percentiles: tuple[float, float] = (2.0, 98.0),
    precision: int = 2,
) -> str:
    """A pseudocolour style of one raster band.

    Parameters
    ----------
    band_index
        The band's number in the file (1-based, as QGIS counts).
    band
        The band's name (its description in the GeoTIFF).
    limits
        Lowest and highest class limit, in the band's units.
    ramp
        The colour ramp.
    units
        The band's unit, shown in the legend labels.
    n_stops
        Colour stops, evenly spaced from ``limits[0]`` to ``limits[1]``.
    percentiles
        The percentiles ``limits`` are (recorded as QGIS's cumulative cut, so that
        QGIS's own "cumulative count cut" gives the same limits).
    precision
        Decimals of the legend labels.
    """
    lo, hi = limits
    values = [float(v) for v in np.linspace(lo, hi, n_stops)] if hi > lo else [lo]
    root = _document({"hasScaleBasedVisibilityFlag": "0"})
    _custom(root, band)
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        type="singlebandpseudocolor",
        band=str(band_index),
        opacity="1",
        alphaBand="-1",
        classificationMin=repr(float(lo)),
        classificationMax=repr(float(hi)),
        nodataColor="",
    )
    ET.SubElement(renderer, "rasterTransparency")
    origin = ET.SubElement(renderer, "minMaxOrigin")
    for tag, text in (
        ("limits", "None"),
        ("extent", "WholeRaster"),
        ("statAccuracy", "Exact"),
        ("cumulativeCutLower", repr(percentiles[0] / 100)),
        ("cumulativeCutUpper", repr(percentiles[1] / 100)),
        ("stdDevFactor", "2"),
    ):
        ET.SubElement(origin, tag).text = text
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib.update(
        colorRampType="INTERPOLATED",
        classificationMode="1",
        clip="0",
        minimumValue=repr(float(lo)),
        maximumValue=repr(float(hi)),
        labelPrecision=str(precision),
    )
    for value, colour in zip(values, ramp.colours(values, lo=lo, hi=hi), strict=True):
        ET.SubElement(
            shader,
            "item",
            alpha="255",
            value=repr(float(value)),
            label=f"{_fmt(value, precision)} {units}".strip(),
            color=colour,
        )
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return _text(root)


def _rgba(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    return ",".join(str(int(h[i : i + 2], 16)) for i in (0, 2, 4)) + ",255"


def graduated_style(
    *, field: str, breaks: Sequence[float], ramp: Ramp, units: str, precision: int = 1
) -> str:
    """A graduated-colour style of a polygon layer on attribute ``field``.

    ``breaks`` are the class limits in increasing order (``n + 1`` of them for ``n``
    classes); each class is coloured by the ramp at its midpoint.
    """
    edges = [float(b) for b in breaks]
    if len(edges) < 2 or any(b < a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"graduated style of {field}: breaks must be increasing, got {edges}")
    root = _document()
    _custom(root, field)
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        type="graduatedSymbol",
        attr=field,
        graduatedMethod="GraduatedColor",
        symbollevels="0",
        forceraster="0",
        enableorderby="0",
    )
    ranges = ET.SubElement(renderer, "ranges")
    symbols = ET.SubElement(renderer, "symbols")
    mids = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    colours = ramp.colours(mids, lo=edges[0], hi=edges[-1])
    for i, ((a, b), colour) in enumerate(zip(itertools.pairwise(edges), colours, strict=True)):
        ET.SubElement(
            ranges,
            "range",
            symbol=str(i),
            lower=repr(a),
            upper=repr(b),
            label=f"{_fmt(a, precision)} – {_fmt(b, precision)} {units}".strip(),
            render="true",
        )
        symbol = ET.SubElement(
            symbols,
            "symbol",
            type="fill",
            name=str(i),
            alpha="1",
            clip_to_extent="1",
            force_rhr="0",
        )
        layer = ET.SubElement(
            symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"}
        )
        _option_map(
            layer,
            {
                "color": _rgba(colour),
                "outline_color": "35,35,35,255",
                "outline_style": "solid",
                "outline_width": "0.26",
                "outline_width_unit": "MM",
                "style": "solid",
            },
        )
    method = ET.SubElement(renderer, "classificationMethod", id="Quantile")
    ET.SubElement(method, "labelFormat", format="%1 – %2", labelprecision=str(precision))
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygons
    return _text(root)
