"""The parcel layer's sub-compartment (小班) inventory record: its own carbon estimate and
its use as a predictor of the maps.

A bureau's forest management inventory (二类调查) records per sub-compartment the
dominant species, the quadratic mean DBH, the mean height, the stems per ha and the survey
year (``docs/parcel_layers.md``: columns ``dominant_species``, ``mean_dbh_cm``,
``mean_height_m``, ``stems_per_ha``, ``survey_year``, and ``culm_age_yr`` for bamboo).
From them :func:`inventory_estimate` gives each parcel's AGB and carbon density by the
mean-tree method (:mod:`models.stand_inventory`), and :func:`inventory_layer` burns the
AGB density into a predictor band of the maps: optical predictors saturate in dense
stands, the record's stocking does not, and the plots inside the parcels tell the models
how far to trust it (a record is years old and has survey errors). A parcel with an empty
record (not forest at the survey) has density 0.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr

from models.stand_inventory import mean_tree_stand
from pipeline.features import burn_values

#: the record's columns the mean-tree estimate reads; ``culm_age_yr`` is optional
SURVEY_FIELDS = ("dominant_species", "mean_dbh_cm", "mean_height_m", "stems_per_ha")
#: name of the predictor band (Mg/ha AGB of the parcel's record)
INVENTORY_BAND = "parcels:inventory_agb_mg_ha"


def has_record(parcels: gpd.GeoDataFrame | None) -> bool:
    """Whether the parcel layer carries the sub-compartment record."""
    return parcels is not None and set(SURVEY_FIELDS) <= set(parcels.columns)


def recorded_stand(parcels: gpd.GeoDataFrame) -> pd.Series:
    """Per parcel, whether its record describes a stand (names a dominant species)."""
    species = parcels["dominant_species"]
    return species.notna() & (species.astype(str).str.strip() != "")


def inventory_estimate(parcels: gpd.GeoDataFrame) -> pd.DataFrame:
    """Per parcel (index of ``parcels``): ``inventory_agb_mg_ha`` and
    ``inventory_carbon_mg_ha`` by the mean-tree method; 0 where the record is empty (no
    dominant species: not forest at the survey); NaN where a forest record lacks its DBH
    or stems."""
    known = recorded_stand(parcels)
    culm = parcels["culm_age_yr"].to_numpy(dtype=float) if "culm_age_yr" in parcels else None
    agb, carbon = mean_tree_stand(
        parcels["dominant_species"].where(known, "").to_numpy(dtype=object),
        parcels["mean_dbh_cm"].to_numpy(dtype=float),
        parcels["mean_height_m"].to_numpy(dtype=float),
        parcels["stems_per_ha"].to_numpy(dtype=float),
        culm,
    )
    return pd.DataFrame(
        {
            "inventory_agb_mg_ha": np.where(known, agb, 0.0),
            "inventory_carbon_mg_ha": np.where(known, carbon, 0.0),
        },
        index=parcels.index,
    )


def inventory_layer(parcels: gpd.GeoDataFrame, like: xr.DataArray) -> xr.DataArray:
    """The band ``INVENTORY_BAND`` on the grid of ``like``: each cell the record's AGB
    density of the parcel its centre lies in, 0 outside every parcel, NaN in a parcel
    whose forest record cannot be evaluated (the cell then lacks a predictor)."""
    agb = inventory_estimate(parcels)["inventory_agb_mg_ha"].to_numpy(dtype=np.float32)
    grid = burn_values(parcels, like, agb)
    band = like.isel(band=0) if "band" in like.dims else like
    return xr.DataArray(
        grid[np.newaxis],
        dims=("band", "y", "x"),
        coords={"band": [INVENTORY_BAND], "y": band.y, "x": band.x},
    )
