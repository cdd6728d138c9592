"""The plot samples' designs as data: strata, sampling frames, and the project's sample.

The field plots are two probability samples, and the simulator ships each one's design as
a real bureau or project developer would. ``plots/design.gpkg`` (layer ``strata``) has one
row per sample and stratum: ``sample``, ``stratum``, ``area_ha`` (the frame's area in the
region CRS) and the stratum's *sampling frame* (MultiPolygon), the area within which that
stratum's plots were placed at random. The frames of a sample do not overlap; their union
is the sample's population. Every plot of ``plots/plots.gpkg`` carries its ``sample`` and
``stratum``.

- ``inventory``: the region's permanent plots (:func:`inventory_sample`). Population: the
  land that was forest at the first epoch (the parcels whose first-epoch type is a forest
  type; the parcel file's ``land_class`` describes the last epoch, when afforested farmland
  is forest too). Strata: ``lidar_block`` (inside the first LiDAR block's bounds) and
  ``outside``, a stratified random sample with the buffer method described below.
- ``project``: the carbon project's monitoring plots. Population: the project parcels,
  one stratum per forest type. The number of plots and their Neyman allocation follow CDM
  AR-TOOL03 (:func:`models.survey.sample_size.ar_tool03_sample_size`) for the target in
  ``simulation.yaml`` (``project_sample``), from each stratum's area and the mean and SD of
  the true carbon density at plot support (:func:`plot_support_mean`): one plan for the
  first-epoch stock and one for the stock change to the last epoch (the credited
  quantity), each stratum taking the larger allocation (``sized_for``). The
  plots are a stratified simple random sample with the *buffer method* of boundary
  correction (Gregoire & Valentine 2008, Sampling Strategies for Natural Resources and the
  Environment, ch. 7, "boundary overlap"): centres uniform over the positions whose plot
  square meets the frame (the frame dilated by the square, :func:`centre_region`), not
  overlapping an earlier plot of the stratum, and the crew tallies only the trees of the
  square that stand inside the frame. A plot that straddles the frame's edge is then a
  plot of the population "plot-support density of the frame's trees over the dilated
  frame", whose total is the frame's total; so the stratum total is the dilated area
  (``centre_area_ha`` of the design) times the mean plot density, without the edge bias of
  keeping only squares that fit inside (measured as +1 to +5 % on a stratum's stock
  change in the estimator benchmark). A frame too small for its allocation of
  non-overlapping squares keeps the plots it holds; that is recorded in
  ``truth/summary.json`` (``project_sample``), with the plan: n, the allocation, the
  densities' means and SDs and the target.

The design layer's ``centre_area_ha`` is the area over which each stratum's plot centres were
drawn: its frame dilated by the plot square, for both samples. (The inventory's plots were
once kept inside single parcels, away from their edges. The maps under-read carbon along
parcel edges, by 8-11 Mg C/ha more than inside, so those plots' residuals missed a fifth of
the frame, and the model-assisted totals came out 2-2.6 % low on every simulated region.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import shapely
from odc.geo.geobox import GeoBox
from rasterio import features
from scipy import ndimage
from shapely.geometry import MultiPolygon, box
from shapely.geometry.base import BaseGeometry

from models.survey.sample_size import MIN_PLOTS_PER_STRATUM, ar_tool03_sample_size
from pipeline.simulate.plots import plot_half_side_m
from pipeline.simulate.science import FOREST_TYPES, coefficients
from pipeline.units import M2_PER_HA

INVENTORY = "inventory"
PROJECT = "project"
LIDAR_BLOCK = "lidar_block"
OUTSIDE = "outside"
#: the quantities a project sample can be sized for (``project_sample.sized_for``)
STOCK = "stock"
CHANGE = "change"
#: random centres tried per plot before a stratum's frame counts as full
_TRIES_PER_PLOT = 1000


@dataclass(frozen=True)
class Stratum:
    """A stratum of a plot sample and its sampling frame (region CRS)."""

    sample: str
    name: str
    frame: MultiPolygon
    #: where the plot centres were drawn (buffer method, :func:`centre_region`), or
    #: ``None`` when the plots were kept inside the frame
    centres: BaseGeometry | None = None

    @property
    def area_ha(self) -> float:
        return float(self.frame.area) / M2_PER_HA

    @property
    def centre_area_ha(self) -> float:
        """Area of the centre region (ha); NaN when the plots were kept inside the frame."""
        return math.nan if self.centres is None else float(self.centres.area) / M2_PER_HA


def inventory_strata(
    parcels: gpd.GeoDataFrame, lidar_bounds: tuple[float, float, float, float]
) -> list[Stratum]:
    """The inventory's strata: first-epoch forest inside and outside the LiDAR block."""
    forest = shapely.union_all(parcels.geometry[parcels["type_0"].isin(FOREST_TYPES)].to_numpy())
    block = box(*lidar_bounds)
    strata = [
        Stratum(INVENTORY, LIDAR_BLOCK, _multipolygon(forest.intersection(block))),
        Stratum(INVENTORY, OUTSIDE, _multipolygon(forest.difference(block))),
    ]
    # a LiDAR block over all the forest (or none of it) leaves one stratum
    return [s for s in strata if not s.frame.is_empty]


def inventory_sample(
    rng: np.random.Generator, strata: list[Stratum], n_plots: int
) -> tuple[list[Stratum], npt.NDArray[np.float64], list[str]]:
    """Place the inventory's plots: a stratified simple random sample, buffer method.

    ``lidar_share`` of ``n_plots`` (``simulation.yaml``, ``plots``) go to the LiDAR block's
    stratum and the rest outside, each at random centres over its frame dilated by the plot
    square (:func:`centre_region`, :func:`_place`), like the project's sample: the plots see
    every part of the frame, parcel edges and forest margins included, so the design file
    (``centre_area_ha``) describes how they were drawn. Returns the strata with their
    centre regions, the true centres (n, 2) and each plot's stratum.
    """
    half = plot_half_side_m()
    share = float(coefficients()["plots"]["lidar_share"])
    n_block = round(share * n_plots) if any(s.name == LIDAR_BLOCK for s in strata) else 0
    kept, centers, labels = [], [], []
    for s in strata:
        region = centre_region(s.frame, half)
        kept.append(Stratum(s.sample, s.name, s.frame, region))
        n = n_block if s.name == LIDAR_BLOCK else n_plots - n_block
        xy = _place(rng, region, n)
        centers.append(xy)
        labels.extend([s.name] * len(xy))
    return kept, np.concatenate(centers).reshape(-1, 2), labels


def project_strata(parcels: gpd.GeoDataFrame, project: gpd.GeoDataFrame) -> list[Stratum]:
    """The project's strata: its parcels grouped by forest type (sorted by name)."""
    forest_type = parcels.set_index("parcel_id").loc[project["parcel_id"], "forest_type"]
    geoms = project.geometry.to_numpy()
    return [
        Stratum(PROJECT, t, _multipolygon(shapely.union_all(geoms[forest_type.to_numpy() == t])))
        for t in sorted(set(forest_type))
    ]


def centre_region(frame: BaseGeometry, half_side_m: float) -> BaseGeometry:
    """The plot centres whose axis-parallel square (half side ``half_side_m``) meets ``frame``.

    That is the Minkowski sum of the frame and the square: the frame, and along every edge
    of its rings the convex hull of the squares at the edge's two ends (the square swept
    along the edge), which also fills the holes the square cannot fit in.
    """
    h = half_side_m
    corners = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    ends = []
    for polygon in shapely.get_parts(frame):
        for ring in (polygon.exterior, *polygon.interiors):
            xy = np.asarray(ring.coords)
            ends.append(np.stack([xy[:-1], xy[1:]], axis=1))
    if not ends:
        return frame
    segments = np.concatenate(ends)  # (edges, 2 ends, 2)
    points = (segments[:, :, None, :] + corners[None, None, :, :]).reshape(-1, 8, 2)
    swept = shapely.convex_hull(shapely.multipoints(points))
    return shapely.union_all(np.concatenate([[frame], swept]))


def plot_support_mean(values: npt.NDArray[np.float64], res_m: float) -> npt.NDArray[np.float64]:
    """Mean of ``values`` over the plot square centred on each cell centre.

    Each cell is weighted by its area inside the square (the 0.0667 ha square is 25.8 m
    wide: at 10 m, the centre cell in full and 79 % of each neighbouring row and column),
    taking a cell's value as uniform over the cell; beyond the raster edge the edge cells
    are repeated.
    """
    half = plot_half_side_m()
    k = math.ceil(half / res_m - 0.5)
    edges = (np.arange(-k, k + 2) - 0.5) * res_m
    weights = np.clip(np.minimum(edges[1:], half) - np.maximum(edges[:-1], -half), 0.0, None)
    weights /= weights.sum()
    out = ndimage.correlate1d(values, weights, axis=0, mode="nearest")
    return ndimage.correlate1d(out, weights, axis=1, mode="nearest")


@dataclass(frozen=True)
class ProjectSample:
    """The project's monitoring plot sample."""

    #: the strata, each with its centre region
    strata: list[Stratum]
    #: true plot centres (n, 2), region CRS
    centers: npt.NDArray[np.float64]
    #: the stratum of each plot
    labels: list[str]
    #: the ``project_sample`` entry of ``truth/summary.json``: target, densities, plan
    record: dict[str, Any]


def project_sample(
    rng: np.random.Generator,
    strata: list[Stratum],
    grid: GeoBox,
    carbon_mg_ha: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
) -> ProjectSample:
    """Size the project sample by AR-TOOL03 and place it as a stratified random sample.

    A real developer sizes the sample from a pilot survey or a prior map; the simulator
    plays that role with the true carbon density (``carbon_mg_ha``: first and last epoch,
    Mg C/ha on ``grid``) at plot support. Each quantity of ``sized_for`` in
    ``simulation.yaml`` (the first-epoch stock, the stock change from the first to the last
    epoch) gets its own AR-TOOL03 plan with Neyman allocation, and each stratum takes the
    larger of its allocations, so that the sample meets the target for every quantity. A
    change whose mean is not positive has no relative precision and is not sized for (the
    record says so); a plan other than the stock's (AR-TOOL03's own) is capped at
    ``max_sampling_fraction`` of the possible plots, so a change near zero cannot ask for an
    unbounded sample. Sampling error alone is sized for: the simulated measurement errors are small
    beside the spread of plot densities. A frame too small for its allocation (a random
    packing of non-overlapping squares fills little more than half of an area) gets the
    plots it holds, and the shortfall is recorded.
    """
    target = coefficients()["project_sample"]
    plot_area_ha = float(coefficients()["plots"]["plot_area_ha"])
    half = plot_half_side_m()
    regions = [centre_region(s.frame, half) for s in strata]
    kept = [Stratum(s.sample, s.name, s.frame, r) for s, r in zip(strata, regions, strict=True)]
    record: dict[str, Any] = {
        "method": (
            "CDM AR-TOOL03 v02.1.0 Eq. 1, Neyman allocation, at least 2 plots a stratum; "
            "one plan per quantity of sized_for, each stratum the larger allocation"
        ),
        "density": (
            "true carbon density (Mg C/ha) of the frame's cells, mean over the plot square "
            "centred on each model-grid cell of the stratum's centre region (cells weighted "
            "by their area in the square; cells outside the frame as 0): the first epoch's "
            "for the stock, the last minus the first for the change"
        ),
        "boundary": "buffer method: centres over the frame dilated by the plot square",
        "relative_error": float(target["relative_error"]),
        "confidence": float(target["confidence"]),
        "sized_for": list(target["sized_for"]),
        "max_sampling_fraction": float(target["max_sampling_fraction"]),
        "plot_area_ha": plot_area_ha,
        "plans": {},
        "not_sized_for": {},
        "capped": {},
        "short_strata": {},
        "strata": {},
        "n_plots": 0,
        "n_placed": 0,
    }
    if not kept:
        return ProjectSample([], np.zeros((0, 2)), [], record)

    def cells(geom: BaseGeometry) -> npt.NDArray[np.bool_]:
        return features.rasterize(
            [(geom, 1)], out_shape=grid.shape, transform=grid.affine, fill=0, dtype="uint8"
        ).astype(bool)

    first, last = carbon_mg_ha
    res = grid.resolution.x
    densities = {STOCK: first, CHANGE: last - first}
    masks = [(cells(s.frame), cells(r)) for s, r in zip(kept, regions, strict=True)]
    areas = [s.centre_area_ha for s in kept]
    plots = np.zeros(len(kept), dtype=np.intp)
    most = record["max_sampling_fraction"] * sum(areas) / plot_area_ha
    for quantity in record["sized_for"]:
        stats = [
            _mean_sd(plot_support_mean(np.where(frame, densities[quantity], 0.0), res)[centres])
            for frame, centres in masks
        ]
        mean, sd = (np.array(v) for v in zip(*stats, strict=True))
        for s, m, d in zip(kept, mean, sd, strict=True):
            record["strata"].setdefault(s.name, {})[quantity] = {
                "mean_mg_c_ha": round(float(m), 4),
                "sd_mg_c_ha": round(float(d), 4),
            }
        weighted_mean = float(np.dot(areas, mean) / sum(areas))
        if weighted_mean <= 0.0:
            record["not_sized_for"][quantity] = (
                f"the area-weighted mean is {weighted_mean:.4f} Mg C/ha, not positive: no "
                "relative precision exists"
            )
            continue
        plan = ar_tool03_sample_size(
            areas,
            sd,
            mean,
            relative_error=record["relative_error"],
            confidence=record["confidence"],
            plot_area_ha=plot_area_ha,
        )
        record["plans"][quantity] = {
            "n_plots": plan.n_plots,
            "n_required": round(plan.n_required, 4),
            "t_value": round(plan.t_value, 6),
            "df": None if math.isinf(plan.df) else plan.df,
            "allowable_error_mg_c_ha": round(plan.allowable_error, 4),
            "plots": {s.name: int(n) for s, n in zip(kept, plan.plots, strict=True)},
        }
        wanted = plan.plots
        if quantity != STOCK and plan.n_plots > most:
            record["capped"][quantity] = (
                f"{plan.n_plots} plots planned, scaled down to at most {most:.1f}"
            )
            wanted = _capped(wanted, most)
        plots = np.maximum(plots, wanted)
    if not record["plans"]:  # nothing to size for: the minimum of the design
        plots = np.full(len(kept), MIN_PLOTS_PER_STRATUM, dtype=np.intp)
    centers: list[npt.NDArray[np.float64]] = []
    labels: list[str] = []
    for s, region, n in zip(kept, regions, plots, strict=True):
        xy = _place(rng, region, int(n))
        centers.append(xy)
        labels.extend([s.name] * len(xy))
        record["strata"][s.name].update(
            {
                "area_ha": round(s.area_ha, 4),
                "centre_area_ha": round(s.centre_area_ha, 4),
                "n_plots": int(n),
                "n_placed": len(xy),
            }
        )
        if len(xy) < n:
            record["short_strata"][s.name] = (
                f"the centre region ({s.centre_area_ha:.4f} ha) took {len(xy)} of the {int(n)} "
                "plots at random without overlap"
            )
    record.update({"n_plots": int(plots.sum()), "n_placed": len(labels)})
    return ProjectSample(kept, np.concatenate(centers), labels, record)


def _mean_sd(values: npt.NDArray[np.float64]) -> tuple[float, float]:
    return float(values.mean()), float(values.std())


def _capped(plots: npt.NDArray[np.intp], most: float) -> npt.NDArray[np.intp]:
    """``plots`` scaled down in proportion to at most ``most`` in all (at least 2 a stratum)."""
    scaled = np.floor(plots * most / plots.sum()).astype(np.intp)
    return np.maximum(scaled, MIN_PLOTS_PER_STRATUM)


def _place(rng: np.random.Generator, centres: BaseGeometry, n: int) -> npt.NDArray[np.float64]:
    """Up to ``n`` simple random plot centres (k, 2) in the region ``centres``.

    Centres are drawn uniformly over the region's bounding box and kept when the region
    contains them and their square overlaps none kept before; after ``n`` times
    ``_TRIES_PER_PLOT`` draws the region counts as full.
    """
    half = plot_half_side_m()
    shapely.prepare(centres)
    xmin, ymin, xmax, ymax = centres.bounds
    chosen: list[tuple[float, float]] = []
    for _ in range(n * _TRIES_PER_PLOT):
        if len(chosen) == n:
            break
        x, y = float(rng.uniform(xmin, xmax)), float(rng.uniform(ymin, ymax))
        if shapely.contains_xy(centres, x, y) and all(
            max(abs(x - a), abs(y - b)) >= 2.0 * half for a, b in chosen
        ):
            chosen.append((x, y))
    return np.array(chosen, dtype=np.float64).reshape(-1, 2)


def design_table(strata: list[Stratum], crs: str) -> gpd.GeoDataFrame:
    """The ``strata`` layer of ``plots/design.gpkg``."""
    return gpd.GeoDataFrame(
        {
            "sample": [s.sample for s in strata],
            "stratum": [s.name for s in strata],
            "area_ha": [s.area_ha for s in strata],
            "centre_area_ha": [s.centre_area_ha for s in strata],
        },
        geometry=[s.frame for s in strata],
        crs=crs,
    )


def _multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """The polygonal parts of ``geom`` (dropping the lines and points of a clip's edges)."""
    parts = [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon"]
    return MultiPolygon(parts)
