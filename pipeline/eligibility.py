"""Which project parcels a methodology may credit, checked on the run's own data.

A methodology file may restrict the land it credits (:mod:`models.credits`):

``eligibility: {rule: not_forest_before_start}`` (afforestation, CCER-14-001-V01)
    a project parcel that was forest at an epoch of the run up to the sink's start epoch
    (the stand-in for the project start) is refused. At the parcel layer's own epoch
    (``model.parcels_epoch``, by default the last) its declared ``land_class`` decides
    (forest land by ``stages.predict.forest_land_classes``: clear-felled forest land is
    forest land); at the other epochs the model stage's land-use classifier does
    (``model/model_card.json``, ``land_use.<epoch>.non_forest_parcels``:
    :mod:`models.landuse`), which judges the layer's forest-land parcels only.
    With a parcel layer that carries the sub-compartment record
    (``docs/parcel_layers.md``), a stand the record dates before the start (its
    ``survey_year`` minus its ``age_yr``) refuses the parcel too: a young plantation is
    not yet forest to the classifier, but its land is not afforestation land.
``applies_to: {forest_types: [...]}`` (bamboo or tree forest management)
    a project parcel whose dominant forest type (the parcel layer's ``forest_type``, or
    the project layer's own column) is not listed is refused.

Project parcels need not be parcels of the layer: each is overlaid on the parcel layer
(:func:`geopandas.overlay`), and the share of its area in parcels judged forest decides by
the classifier's own parcel rule (``land_use.forest_share`` of ``model_rules.yaml``, the
majority): forest when that share reaches it, not forest when even the area of unknown
land use (outside the layer, or in parcels the classifier does not judge) could not bring
it there, and *unchecked* otherwise.

A parcel the data cannot judge (no parcel layer, no land-use classification at an epoch
before the start, no forest type) is ``unchecked``: it stays in the credited total, never
silently: its ``ineligible_reason`` says what is missing and the credits stage warns. A
refused parcel is ``eligible = False`` with its reason and leaves the credited total.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import pandas as pd

from models.credits import Methodology
from models.datafiles import data_yaml
from pipeline.subcompartment import has_record, recorded_stand

#: ``eligible`` of a parcel whose eligibility the data cannot show (``pd.NA`` in the table)
UNCHECKED = None


@dataclass(frozen=True)
class LandUseData:
    """What the run knows of its parcels' land use, for the eligibility checks."""

    #: the parcel layer (``sources.parcels``): ``parcel_id``, ``land_class``, ``forest_type``
    parcels: gpd.GeoDataFrame | None
    #: the model card's ``land_use`` record (``None``: no model card)
    land_use: Mapping[str, Any] | None
    #: the run's epochs up to and including the sink's start epoch, oldest first
    epochs_before_start: tuple[str, ...]
    #: the epoch the parcel layer describes (``model.parcels_epoch`` or the last epoch)
    parcels_epoch: str
    forest_land_classes: tuple[str, ...]
    #: the start epoch's reference date as a decimal year, for the sub-compartment
    #: record's stand ages (``None``: not used)
    start_year: float | None = None


def _pieces(project: gpd.GeoDataFrame, layer: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The intersections of the project parcels with the layer's parcels: the layer's
    columns, the project parcel's row (``_row``) and the piece's area (``_area``)."""
    proj = project[["geometry"]].reset_index(drop=True).assign(_row=lambda d: d.index)
    parts = gpd.overlay(proj, layer.to_crs(project.crs), how="intersection", keep_geom_type=True)
    return parts.assign(_area=parts.geometry.area)


def _shares(project: gpd.GeoDataFrame, layer: gpd.GeoDataFrame, flag: pd.Series) -> pd.DataFrame:
    """Per project parcel (in order), the area shares in layer parcels where ``flag`` is
    True (``forest``) and where it is NA or outside the layer (``unknown``)."""
    parts = _pieces(project, layer[["geometry"]].assign(_flag=flag.to_numpy()))
    index = pd.RangeIndex(len(project))
    total = project.geometry.area.to_numpy()
    forest = parts.loc[parts["_flag"].eq(True).fillna(False)].groupby("_row")["_area"].sum()
    known = parts.loc[parts["_flag"].notna()].groupby("_row")["_area"].sum()
    f = forest.reindex(index, fill_value=0.0).to_numpy() / total
    k = known.reindex(index, fill_value=0.0).to_numpy() / total
    return pd.DataFrame({"forest": f, "unknown": (1.0 - k).clip(min=0.0)})


def _forest_flags(
    layer: gpd.GeoDataFrame, data: LandUseData, epoch: str
) -> tuple[pd.Series | None, str]:
    """Per parcel of the layer, forest at ``epoch`` (True/False/NA), or ``None`` with
    the reason no judgement exists."""
    forest_land = layer["land_class"].astype(str).isin(data.forest_land_classes)
    if epoch == data.parcels_epoch:
        return forest_land.astype("boolean"), "declared land class"
    record = data.land_use or {}
    judged = record.get(epoch)
    if not isinstance(judged, Mapping) or "non_forest_parcels" not in judged:
        if data.land_use is None:
            why = "no model card"
        else:
            why = str(record.get("skipped") or f"the classifier did not judge epoch {epoch}")
        return None, f"no land-use classification at epoch {epoch} ({why})"
    not_forest = layer["parcel_id"].astype(str).isin([str(p) for p in judged["non_forest_parcels"]])
    # the classifier judges forest-land parcels only; the others' past is unknown
    flags = pd.Series(pd.NA, index=layer.index, dtype="boolean")
    flags[forest_land.to_numpy()] = ~not_forest[forest_land.to_numpy()]
    return flags, "land-use classifier"


def _recorded_stand_before(layer: gpd.GeoDataFrame, start_year: float) -> pd.Series:
    """Per parcel of the layer, whether its sub-compartment record shows a stand before
    ``start_year`` (True), or cannot say (NA; never False: a record is evidence of a
    stand, its absence is not evidence of none).

    A stand of ``age_yr`` years surveyed in ``survey_year`` was established in
    ``survey_year - age_yr``; a stand recorded without an age (bamboo) existed at its
    survey. A young plantation that the land-use classifier cannot yet see as forest is
    caught here.
    """
    stand = recorded_stand(layer)
    if "survey_year" not in layer.columns:
        return pd.Series(pd.NA, index=layer.index, dtype="boolean")
    survey = pd.to_numeric(layer["survey_year"], errors="coerce")
    age = pd.to_numeric(layer.get("age_yr", pd.Series(0.0, index=layer.index)), errors="coerce")
    established = survey - age.fillna(0.0)
    before = stand & (established < start_year)
    return before.astype("boolean").where(before, pd.NA)


def _not_forest_before_start(
    project: gpd.GeoDataFrame, data: LandUseData, share: float
) -> list[tuple[bool | None, str]]:
    layer = data.parcels
    if layer is None:
        return [(UNCHECKED, "unchecked: no parcel layer (sources.parcels)")] * len(project)
    missing = {"parcel_id", "land_class"} - set(layer.columns)
    if missing:
        why = f"unchecked: the parcel layer has no {sorted(missing)} column"
        return [(UNCHECKED, why)] * len(project)
    forest_at: list[list[str]] = [[] for _ in range(len(project))]
    unknown_at: list[list[str]] = [[] for _ in range(len(project))]
    for epoch in data.epochs_before_start:
        flags, how = _forest_flags(layer, data, epoch)
        if flags is None:
            for lst in unknown_at:
                lst.append(how)
            continue
        shares = _shares(project, layer, flags)
        for i, (f, u) in enumerate(zip(shares["forest"], shares["unknown"], strict=True)):
            if f >= share:
                forest_at[i].append(f"forest at {epoch} ({how}: {100 * f:.0f} % of its area)")
            elif f + u >= share:
                unknown_at[i].append(
                    f"land use at {epoch} unknown for {100 * u:.0f} % of its area ({how})"
                )
    if data.start_year is not None and has_record(layer):
        shares = _shares(project, layer, _recorded_stand_before(layer, data.start_year))
        for i, f in enumerate(shares["forest"]):
            if f >= share:
                forest_at[i].append(
                    "a stand established before the start by the sub-compartment record "
                    f"({100 * f:.0f} % of its area)"
                )
    out: list[tuple[bool | None, str]] = []
    for forest, unknown in zip(forest_at, unknown_at, strict=True):
        if forest:
            out.append((False, "; ".join(forest)))
        elif unknown:
            out.append((UNCHECKED, "unchecked: " + "; ".join(unknown)))
        else:
            out.append((True, ""))
    return out


def _forest_types(project: gpd.GeoDataFrame, layer: gpd.GeoDataFrame | None) -> list[str | None]:
    """The dominant forest type of each project parcel (its own column, else by area in
    the parcel layer), ``None`` where unknown."""
    if "forest_type" in project.columns:
        return [None if pd.isna(v) else str(v) for v in project["forest_type"]]
    if layer is None or "forest_type" not in layer.columns:
        return [None] * len(project)
    parts = _pieces(project, layer[["forest_type", "geometry"]])
    by_type = parts.groupby(["_row", "forest_type"])["_area"].sum().reset_index()
    top = by_type.sort_values("_area").groupby("_row")["forest_type"].last()
    return [None if i not in top.index else str(top[i]) for i in range(len(project))]


def parcel_eligibility(
    project: gpd.GeoDataFrame, method: Methodology, data: LandUseData
) -> pd.DataFrame:
    """``eligible`` (True, False, or NA = unchecked) and ``ineligible_reason`` per project
    parcel (in order) under ``method``'s land rules; all True without rules."""
    n = len(project)
    verdicts: list[list[tuple[bool | None, str]]] = []
    if method.eligibility is not None:
        share = float(data_yaml("model_rules.yaml")["land_use"]["forest_share"])
        verdicts.append(_not_forest_before_start(project, data, share))
    if method.applies_to is not None:
        allowed = method.applies_to.forest_types
        kinds = _forest_types(project, data.parcels)
        verdicts.append(
            [
                (UNCHECKED, "unchecked: no forest_type in the project or parcel layer")
                if kind is None
                else (True, "")
                if kind in allowed
                else (False, f"forest type {kind}: '{method.id}' credits only {list(allowed)}")
                for kind in kinds
            ]
        )
    eligible: list[bool | None] = []
    reasons: list[str] = []
    for i in range(n):
        checks = [v[i] for v in verdicts]
        refused = [r for ok, r in checks if ok is False]
        unchecked = [r for ok, r in checks if ok is UNCHECKED]
        eligible.append(False if refused else UNCHECKED if unchecked else True)
        reasons.append("; ".join(refused or unchecked))
    return pd.DataFrame(
        {"eligible": pd.array(eligible, dtype="boolean"), "ineligible_reason": reasons}
    )
