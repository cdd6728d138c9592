"""Forest sub-compartments (parcels), roads, disturbances and the carbon project area.

Parcels are the Voronoi cells of random seed points clipped to the AOI (a common stand-in
for compartment maps; assumption), a few per km2. Low, gentle parcels become non-forest
(farmland, settlement, water); the others get a forest type by the regional composition
in ``simulation.yaml`` (``landscape``). Roads are smooth random polylines across the AOI,
``road_width_m`` wide, burnt into the land-cover raster (no trees on them). Parcels are
rasterised to the model grid by the cell-centre rule; that raster defines the stands, so
parcel truth is the sum of its pixels.

Between the epochs a share of forest parcels is clear-cut and replanted, a share thinned
(``thinning_removal_fraction`` of stems removed), and a share of farmland afforested with
Chinese fir. The carbon project is a share of the forest parcels (those nearest a random
centre), leaving out parcels clear-cut in the period (forest management projects commit
to no clear-cutting in the project area; assumption), with a stated baseline removal
rate per parcel: ``baseline_factor`` times the parcel's true sink with multiplicative
noise (assumption; a methodology would derive it from a business-as-usual scenario).

Each forest parcel also carries its sub-compartment (小班) inventory record
(:func:`survey_record`), as a bureau's forest management inventory holds it.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely
from odc.geo.geobox import GeoBox
from rasterio import features
from shapely.geometry import LineString, box

from models.datafiles import data_csv
from pipeline.simulate.science import FOREST_TYPES, NON_FOREST, coefficients
from pipeline.simulate.terrain import Terrain
from pipeline.simulate.truth import StandTally

#: columns of the sub-compartment record in the parcel layer
SURVEY_COLUMNS = (
    "dominant_species", "origin", "survey_year", "age_yr", "culm_age_yr",
    "mean_dbh_cm", "mean_height_m", "stems_per_ha",
)  # fmt: skip


def make_parcels(
    rng: np.random.Generator,
    grid: GeoBox,
    terrain: Terrain,
    *,
    crs: str,
    epoch_years: list[float],
    parcels_per_km2: float | None = None,
) -> gpd.GeoDataFrame:
    """Parcels with their type, age, disturbances, per-epoch stand descriptors and
    administrative units; ``parcels_per_km2`` overrides ``simulation.yaml``'s density."""
    c = coefficients()
    land = c["landscape"]
    xmin, ymin, xmax, ymax = grid.boundingbox
    area_km2 = (xmax - xmin) * (ymax - ymin) / 1e6
    density = float(land["parcels_per_km2"]) if parcels_per_km2 is None else parcels_per_km2
    n = max(int(land["min_parcels"]), round(area_km2 * density))
    pts = np.column_stack([rng.uniform(xmin, xmax, n), rng.uniform(ymin, ymax, n)])
    aoi = box(xmin, ymin, xmax, ymax)
    cells = shapely.voronoi_polygons(shapely.MultiPoint(pts), extend_to=aoi)
    polys = [g.intersection(aoi) for g in shapely.get_parts(cells)]
    polys = [p for p in polys if not p.is_empty and p.area > 1.0]
    # deterministic order: north to south, west to east by representative point
    rep = np.array([[p.representative_point().x, p.representative_point().y] for p in polys])
    order = np.lexsort((rep[:, 0], -rep[:, 1]))
    polys = [polys[i] for i in order]
    rep = rep[order]
    n = len(polys)
    elev = terrain.elevation(rep[:, 0], rep[:, 1])
    slope, _ = terrain.slope_aspect_deg(rep[:, 0], rep[:, 1])
    low = elev <= np.quantile(elev, float(land["nonforest_low_quantile"]))
    nonforest = low & (slope < float(land["nonforest_max_slope_deg"]))
    nf_names = list(land["nonforest_types"])
    nf_p = np.array(list(land["nonforest_types"].values()), dtype=np.float64)
    f_names = list(land["forest_types"])
    f_p = np.array(list(land["forest_types"].values()), dtype=np.float64)
    use = np.where(
        nonforest,
        np.asarray(nf_names, dtype=object)[rng.choice(len(nf_names), n, p=nf_p / nf_p.sum())],
        np.asarray(f_names, dtype=object)[rng.choice(len(f_names), n, p=f_p / f_p.sum())],
    )
    ftc = c["forest_types"]
    age0 = np.zeros(n)
    for t in FOREST_TYPES:
        m = use == t
        lo, hi = ftc[t]["age_range_yr"]
        age0[m] = rng.integers(int(lo), int(hi) + 1, m.sum())
    site = np.exp(rng.normal(0.0, float(c["site_index_sd"]), n))
    y1, y2 = epoch_years[0], epoch_years[-1]
    u = rng.uniform(size=n)
    is_forest = np.isin(use, FOREST_TYPES)
    candidates = is_forest & np.isin(use, ("chinese_fir", "masson_pine")) & (age0 >= 18)
    p_cut = min(1.0, float(land["clearcut_share"]) * is_forest.sum() / max(candidates.sum(), 1))
    clearcut = candidates & (u < p_cut)
    thinned = is_forest & ~clearcut & (use != "moso_bamboo")
    thinned &= rng.uniform(size=n) < float(land["thinning_share"])
    afforested = (use == "farmland") & (rng.uniform(size=n) < float(land["afforestation_share"]))
    event_year = np.where(
        clearcut | thinned | afforested, np.floor(rng.uniform(y1 + 1, y2 - 1, n)), np.nan
    )
    df = pd.DataFrame({"use": use, "site_index": site, "event_year": event_year})
    df["disturbance"] = np.select(
        [clearcut, thinned, afforested], ["clearcut", "thinning", "afforestation"], "none"
    )
    removal = float(land["thinning_removal_fraction"])
    for i, year in enumerate(epoch_years):
        after = year > np.nan_to_num(event_year, nan=np.inf)
        t_i = np.where(afforested & ~after, use, np.where(afforested, "chinese_fir", use))
        age_i = age0 + (year - y1)
        age_i = np.where((clearcut | afforested) & after, year - event_year, age_i)
        cohort = np.where((clearcut | afforested) & after, 1, 0)
        cohort = np.where(use == "moso_bamboo", i, cohort)  # culm renewal between epochs
        df[f"type_{i}"] = t_i
        df[f"age_{i}"] = np.where(np.isin(t_i, FOREST_TYPES), age_i, 0.0)
        df[f"cohort_{i}"] = cohort
        df[f"density_factor_{i}"] = np.where(thinned & after, 1.0 - removal, 1.0)
    last = df[f"type_{len(epoch_years) - 1}"].to_numpy()
    df["forest_type"] = np.where(np.isin(last, FOREST_TYPES), last, NON_FOREST)
    df["land_class"] = np.where(np.isin(last, FOREST_TYPES), "forest", last)
    df.insert(0, "parcel_id", [f"NP{i + 1:04d}" for i in range(n)])
    for i, (column, values) in enumerate(admin_units(rep, land).items()):
        df.insert(1 + i, column, values)
    return gpd.GeoDataFrame(df, geometry=polys, crs=crs)


def _block_rank(xy: npt.NDArray[np.float64], side_m: float) -> npt.NDArray[np.int64]:
    """0-based rank of each point's ``side_m`` block (aligned on the CRS origin), blocks
    ordered north to south, then west to east."""
    ix, iy = np.floor(xy[:, 0] / side_m), np.floor(xy[:, 1] / side_m)
    _, rank = np.unique(np.column_stack([-iy, ix]), axis=0, return_inverse=True)
    return rank.reshape(-1).astype(np.int64)


def admin_units(rep: npt.NDArray[np.float64], land: dict) -> dict[str, list[str]]:
    """Township (乡镇), village (村) and compartment (林班) labels of parcels by their
    representative points (``landscape`` of ``simulation.yaml``): ``township`` a name of
    ``township_names`` (numbered past the list's end), ``village`` the township's name and
    the village's number in it, ``compartment`` a three-digit number unique in the AOI."""
    names = list(land["township_names"])
    town = _block_rank(rep, 1000 * float(land["township_km"]))
    village = _block_rank(rep, 1000 * float(land["village_km"]))
    comp = _block_rank(rep, 1000 * float(land["compartment_km"]))
    town_names = [
        names[t % len(names)] + (str(t // len(names) + 1) if t >= len(names) else "") for t in town
    ]
    # a village's number within its township, in block order
    number: dict[tuple[int, int], int] = {}
    for t, v in sorted(set(zip(town.tolist(), village.tolist(), strict=True)), key=lambda k: k[1]):
        number[(t, v)] = sum(1 for key in number if key[0] == t) + 1
    villages = [
        f"{town_names[i]}{number[(t, v)]}村"
        for i, (t, v) in enumerate(zip(town.tolist(), village.tolist(), strict=True))
    ]
    return {
        "township": town_names,
        "village": villages,
        "compartment": [f"{c + 1:03d}" for c in comp],
    }


def make_roads(rng: np.random.Generator, grid: GeoBox) -> list[LineString]:
    """Smooth random roads crossing the AOI from west to east."""
    land = coefficients()["landscape"]
    xmin, ymin, xmax, ymax = grid.boundingbox
    n = max(1, round(float(land["n_roads_per_10km"]) * (xmax - xmin) / 10_000.0))
    roads = []
    t = np.linspace(0.0, 1.0, 200)
    for _ in range(n):
        y0 = rng.uniform(ymin + 0.1 * (ymax - ymin), ymax - 0.1 * (ymax - ymin))
        amp = rng.uniform(0.02, 0.08) * (ymax - ymin)
        waves = rng.uniform(0.5, 2.5)
        ph = rng.uniform(0, 2 * np.pi)
        x = xmin + t * (xmax - xmin)
        y = np.clip(y0 + amp * np.sin(2 * np.pi * waves * t + ph), ymin, ymax)
        roads.append(LineString(np.column_stack([x, y])))
    return roads


def rasterise(
    parcels: gpd.GeoDataFrame, roads: list[LineString], grid: GeoBox
) -> npt.NDArray[np.int64]:
    """Parcel row per model-grid pixel (cell-centre rule); -1 on roads."""
    shapes = ((geom, i) for i, geom in enumerate(parcels.geometry))
    idx = features.rasterize(
        shapes, out_shape=grid.shape, transform=grid.affine, fill=-2, dtype="int32"
    ).astype(np.int64)
    width = float(coefficients()["landscape"]["road_width_m"])
    if roads:
        road = features.rasterize(
            ((r.buffer(width / 2.0), 1) for r in roads),
            out_shape=grid.shape,
            transform=grid.affine,
            fill=0,
            dtype="uint8",
            all_touched=False,
        )
        idx[road == 1] = -1
    # a pixel whose centre falls on no polygon (numerical slivers) joins its west neighbour
    missing = idx == -2
    if missing.any():
        rows, cols = np.nonzero(missing)
        idx[rows, cols] = idx[rows, np.maximum(cols - 1, 0)]
        idx[idx == -2] = 0
    return idx


def choose_project(
    rng: np.random.Generator, parcels: gpd.GeoDataFrame, sink_tco2e_ha_yr: npt.ArrayLike
) -> gpd.GeoDataFrame:
    """The carbon project's parcels with their stated baseline (tCO2e/ha/yr)."""
    p = coefficients()["project"]
    forest = parcels[parcels["forest_type"] != NON_FOREST]
    n = max(1, round(float(p["parcel_share"]) * len(forest)))
    forest = forest[forest["disturbance"] != "clearcut"]
    rp = forest.geometry.representative_point()
    center = rp.iloc[int(rng.integers(len(forest)))]
    d = rp.distance(center).to_numpy()
    chosen = forest.iloc[np.argsort(d, kind="stable")[:n]].sort_values("parcel_id")
    sink = np.asarray(sink_tco2e_ha_yr, dtype=np.float64)[chosen.index.to_numpy()]
    noise = np.exp(rng.normal(0.0, float(p["baseline_noise_sd"]), len(chosen)))
    baseline = np.round(np.maximum(sink, 0.0) * float(p["baseline_factor"]) * noise, 2)
    return gpd.GeoDataFrame(
        {"parcel_id": chosen["parcel_id"].to_numpy(), "baseline_tco2e_ha_yr": baseline},
        geometry=chosen.geometry.to_numpy(),
        crs=parcels.crs,
    )


def survey_record(
    parcels: pd.DataFrame,
    tally: StandTally,
    stand_area_ha: npt.NDArray[np.float64],
    years: list[float],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The sub-compartment (小班) inventory record of each parcel (``SURVEY_COLUMNS``).

    Describes the first epoch's stand (``tally``: its trees >= the DBH threshold; dated to
    that epoch's year), as measured with the errors of ``simulation.yaml`` (``xiaoban``):
    the dominant species by its Chinese name (the type's most common species), origin,
    stand age (years; empty for bamboo, whose stands are uneven-aged: their mean culm age
    is recorded instead), quadratic mean DBH, Lorey's mean height and stems per ha.
    ``stand_area_ha`` is each parcel's area on the grid (its cells), over which ``tally``
    counted. Non-forest parcels have an empty record.
    """
    p = coefficients()["xiaoban"]
    ftypes = coefficients()["forest_types"]
    names = data_csv("species_names.csv")
    chinese = dict(zip(names.loc[names["language"] == "zh", "species"],
                       names.loc[names["language"] == "zh", "name"], strict=True))  # fmt: skip
    n = len(parcels)
    kind = parcels["type_0"].to_numpy()
    forest = np.isin(kind, FOREST_TYPES) & (tally.stems > 0)
    bamboo = np.asarray([bool(ftypes.get(k, {}).get("culm_age_max_yr")) for k in kind])
    z = rng.standard_normal((4, n))

    def noisy(true: np.ndarray, sd_rel: float, row: int, digits: int) -> np.ndarray:
        val = true * np.exp(sd_rel * z[row] - 0.5 * sd_rel**2)
        return np.where(forest, np.round(val, digits), np.nan)

    age = np.round(parcels["age_0"].to_numpy(dtype=np.float64) + p["age_error_sd_yr"] * z[3])
    culm_age = tally.culm_age_yr / np.maximum(tally.stems, 1.0)
    dominant = [
        chinese[max(ftypes[k]["species"], key=ftypes[k]["species"].get)] if f else None
        for k, f in zip(kind, forest, strict=True)
    ]
    return pd.DataFrame(
        {
            "dominant_species": dominant,
            "origin": [p["origin"][k] if f else None for k, f in zip(kind, forest, strict=True)],
            "survey_year": np.where(forest, np.floor(years[0]), np.nan),
            "age_yr": np.where(forest & ~bamboo, np.maximum(age, 1.0), np.nan),
            "culm_age_yr": np.where(forest & bamboo, np.round(culm_age, 1), np.nan),
            "mean_dbh_cm": noisy(tally.quadratic_mean_dbh_cm(), p["dbh_error_sd_rel"], 0, 1),
            "mean_height_m": noisy(tally.lorey_height_m(), p["height_error_sd_rel"], 1, 1),
            "stems_per_ha": noisy(
                tally.stems / np.maximum(stand_area_ha, 1e-9), p["stems_error_sd_rel"], 2, 0
            ),
        },
        index=parcels.index,
    )[list(SURVEY_COLUMNS)]
