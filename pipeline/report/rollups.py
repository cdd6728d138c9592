"""Totals by parcel attribute (township 乡镇, village 村, compartment 林班, forest type,
owner ...), each with its interval, for the report and the bureau's tables.

A group of parcels is one area: its total is the fractional-coverage zonal sum over the
union of its parcels, and its SD the spatial error model's over every pair of the
group's pixels, ``Var = sum_i sum_j w_i s_i w_j s_j rho(d_ij)``, covariances between
different parcels of the group included. This is the parcels stage's computation
(:func:`pipeline.stages.parcels.parcel_sink_table`, the same correlogram from
``parcels/error_correlogram.json``) run on the dissolved groups, so a group of one parcel
has that parcel's figures, and a group's SD is neither the sum of its parcels' SDs (the
fully correlated bound) nor their root sum of squares. The correlogram was fitted to
pairs of pixels *within* a parcel (its shared part includes the stand's own error), so
applied to pairs in different parcels of a group it errs on the wide side. Without a
fitted correlogram the SDs are the parcels stage's fallback (sum of pixel SDs).

Each table ends with the row of all parcels (attribute value :data:`TOTAL_ID`): the
groups of an attribute partition the parcels, so their totals add up to it (within
the rounding of the coverage fractions of dissolved outlines); their SDs do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import geopandas as gpd
import pandas as pd
import xarray as xr

from models.spatial_error import Correlogram
from pipeline.contracts import TOTAL_ID, SinkJob
from pipeline.errors import ConfigError
from pipeline.parcel_sums import parcel_sink_table
from pipeline.units import with_mu_areas

#: columns of the parcel table that are not sums over an area (left out of roll-ups)
NOT_SUMS = (
    "mean_quality_",
    "lidar_share",
    "sink_tco2e_ha_yr",
    "mapped_share_",
    "sink_mapped_share",
)


def correlogram_from_record(record: Mapping[str, Any] | None) -> Correlogram | None:
    """The correlogram of ``parcels/error_correlogram.json`` (``None`` when it says
    none was fitted)."""
    if not record or "nugget" not in record:
        return None
    return Correlogram(
        nugget=float(record["nugget"]),
        shared=float(record["shared"]),
        range_m=float(record["range_m"]),
    )


def rollup_tables(
    job: SinkJob,
    attributes: Sequence[str],
    *,
    parcel_sink: gpd.GeoDataFrame,
    rasters: Mapping[str, xr.DataArray],
    correlogram: Correlogram | None,
    sink_correlogram: Correlogram | None = None,
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """The all-parcels totals (one row as a dict) and, per attribute, its groups' table.

    ``rasters`` are the parcels stage's six epoch rasters (``carbon_start`` ...
    ``quality_end``); ``job`` is the sink job with the epochs' error correlation resolved;
    ``sink_correlogram``: the sink's own, when the parcels stage measured one.
    Group rows are in the order of their attribute values; missing values form a group
    of their own (empty attribute cell).
    """
    geometry = parcel_sink.geometry.name
    missing = [a for a in attributes if a not in parcel_sink.columns]
    if missing:
        have = [
            str(c)
            for c in parcel_sink.columns
            if c != geometry and not pd.api.types.is_numeric_dtype(parcel_sink[c])
        ]
        raise ConfigError(
            f"stages.report.rollups: {missing} are not columns of the parcel layer "
            f"(sources.parcels); its text columns are {have}"
        )
    frames, counts = [], {}
    for attr in attributes:
        keyed = parcel_sink[[attr, geometry]].copy()
        keyed[attr] = keyed[attr].astype(object).where(keyed[attr].notna(), "")
        groups = keyed.dissolve(by=attr, sort=True).reset_index()
        counts[attr] = keyed.groupby(attr, sort=True).size().to_numpy()
        groups["parcel_id"] = [f"{attr}\x1f{v}" for v in groups[attr]]
        frames.append(groups[["parcel_id", geometry]])
    whole = gpd.GeoDataFrame(
        {"parcel_id": [TOTAL_ID]}, geometry=[parcel_sink.geometry.union_all()], crs=parcel_sink.crs
    )
    areas = gpd.GeoDataFrame(pd.concat([*frames, whole], ignore_index=True), crs=parcel_sink.crs)
    table = pd.DataFrame(
        parcel_sink_table(
            job,
            parcels=areas,
            correlogram=correlogram,
            sink_correlogram=sink_correlogram,
            **rasters,
        ).drop(columns=geometry)
    )
    keep = [c for c in table.columns if c != "parcel_id" and not c.startswith(NOT_SUMS)]
    total = table.iloc[-1][keep].to_dict()
    total["n_parcels"] = len(parcel_sink)
    out: dict[str, pd.DataFrame] = {}
    for attr in attributes:
        rows = table[table["parcel_id"].str.startswith(f"{attr}\x1f")]
        frame = pd.DataFrame({attr: rows["parcel_id"].str.split("\x1f", n=1).str[1]})
        frame["n_parcels"] = counts[attr]
        frame = pd.concat([frame, rows[keep]], axis=1).reset_index(drop=True)
        frame.loc[len(frame)] = {attr: TOTAL_ID, **total}
        out[attr] = with_mu_areas(frame.astype({"n_parcels": "int64"}))
    return total, out
