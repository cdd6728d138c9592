"""Coordinate reference systems the user gives: checked, and advice that fits the data.

The model grid and the LiDAR tiles need a projected CRS in metres. When a CRS is missing,
geographic or in feet, the advice names the UTM zone of the data's own location (pyproj's
``query_utm_crs_info`` on the WGS84 centre of the data), or says it cannot tell when the
location is unknown (no CRS at all), instead of one region's zone.
"""

from __future__ import annotations

import pyproj
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info

METRE_UNITS = ("metre", "meter", "metres", "meters")

#: what to do when no location is known
GENERIC_ADVICE = (
    "use the UTM zone of the data's location (WGS 84 / UTM: EPSG:326NN north of the "
    "equator, EPSG:327NN south, NN = the zone number)"
)


def label(crs: pyproj.CRS) -> str:
    """``EPSG:n`` when the CRS has an EPSG code, else its WKT."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def horizontal(crs: pyproj.CRS) -> pyproj.CRS:
    """The horizontal part of a compound CRS (the CRS itself otherwise)."""
    if crs.is_compound and crs.sub_crs_list:
        return crs.sub_crs_list[0]
    return crs


def utm_zone(crs: pyproj.CRS, bounds: tuple[float, float, float, float]) -> str | None:
    """``EPSG:n`` of the WGS 84 UTM zone at the centre of ``bounds`` (in ``crs``), or None."""
    try:
        to_wgs84 = pyproj.Transformer.from_crs(horizontal(crs), "EPSG:4326", always_xy=True)
        lon, lat = to_wgs84.transform((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2)
    except pyproj.exceptions.ProjError:
        return None
    if not (-180 <= lon <= 180 and -80 <= lat <= 84):
        return None
    found = query_utm_crs_info(
        datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat)
    )
    return f"EPSG:{found[0].code}" if found else None


def utm_advice(crs: pyproj.CRS | None, bounds: tuple[float, float, float, float]) -> str:
    """What CRS to use instead: the data's UTM zone when its location is known."""
    zone = None if crs is None else utm_zone(crs, bounds)
    if zone is None:
        why = "without a CRS its location is unknown" if crs is None else "location unknown"
        return f"the UTM zone of the data cannot be told ({why}): {GENERIC_ADVICE}"
    return f"the data lies in UTM zone {zone}"


def non_metre_axes(crs: pyproj.CRS) -> list[str]:
    """``"direction (unit)"`` of every axis of ``crs`` not in metres."""
    return [
        f"{a.direction} ({a.unit_name})"
        for a in crs.axis_info
        if a.unit_name.lower() not in METRE_UNITS
    ]


def check_model_crs(text: str) -> None:
    """A config's ``crs``: a CRS pyproj knows, projected, in metres.

    Raises
    ------
    ValueError
        With what is wrong and what to use (pydantic names the key).
    """
    try:
        crs = pyproj.CRS.from_user_input(text)
    except pyproj.exceptions.CRSError:
        raise ValueError(f"{text} is not a CRS known to PROJ; {GENERIC_ADVICE}") from None
    if crs.is_geographic:
        raise ValueError(
            f"{text} is geographic (degrees) while resolution_m and every area are in metres; "
            f"{GENERIC_ADVICE}"
        )
    odd = non_metre_axes(crs)
    if not crs.is_projected or odd:
        raise ValueError(
            f"{text} is not a projected CRS in metres (axes {', '.join(odd) or 'not projected'}); "
            f"{GENERIC_ADVICE}"
        )
