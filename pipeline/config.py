"""Run configuration: one frozen pydantic model tree, loaded from YAML.

A region's pinned config lives at ``configs/regions/<region>.yaml``. Relative paths in a
config are resolved against the directory the pipeline is run from (the repository
root when run through ``make``), so that a config and its hash are the same on every
machine. Every section forbids unknown keys and is frozen once loaded; stages receive
only their own section (see :mod:`pipeline.stages`), never the whole tree.

The config hash is the sha256 of the canonical JSON form (sorted keys, no whitespace)
of the resolved config, leaving out ``output_dir``: where a run is written does not
change its numbers, so a reproduction into a fresh folder has the same hash.

Run ``forest-carbon run --region nanping`` to load ``configs/regions/nanping.yaml``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

CONFIG_DIR = Path("configs")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Epoch(Section):
    """A named observation epoch and the date window of its satellite season."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    start: dt.date
    end: dt.date
    #: the nominal date of the stock estimate (used for annual rates); mid-window by default
    reference_date: dt.date | None = None

    @model_validator(mode="after")
    def _window(self) -> Epoch:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        if self.reference_date is not None and not self.start <= self.reference_date <= self.end:
            raise ValueError("reference_date must lie between start and end")
        return self

    @property
    def reference(self) -> dt.date:
        """The date the epoch's stock refers to."""
        if self.reference_date is not None:
            return self.reference_date
        return self.start + (self.end - self.start) / 2


class CatalogSource(Section):
    """Where satellite scenes are searched (endpoints and profiles: ``data_catalog/``)."""

    kind: Literal["local", "earth-search", "planetary-computer", "stac-api"] = "local"
    #: the local catalog file (kind ``local``) or the API root URL (kind ``stac-api``)
    location: str | None = None
    collections: tuple[str, ...] = ("sentinel-2-l2a", "landsat-c2-l2")
    #: the DEM collection terrain is derived from (``None``: no terrain layers)
    dem_collection: str | None = "cop-dem-glo-30"
    #: provider profile of the items (asset keys, scale/offset conventions) for kind
    #: ``stac-api``/``local``; ``None`` = the catalog's default in data_catalog/catalogs.yaml
    provider: str | None = None


class Sources(Section):
    """Input data of a region: catalogs, point clouds, field plots, parcels."""

    catalog: CatalogSource = CatalogSource()
    #: glob of LAS/LAZ tiles, relative to the run directory, flown in ``model.lidar_epoch``
    lidar_tiles: str | None = None
    #: the same area flown again: epoch name -> glob of that flight's LAS/LAZ tiles
    #: (docs/lidar.md); each epoch's LiDAR model map then covers that flight's cells
    lidar_repeat: dict[str, str] = Field(default_factory=dict)
    #: CRS of the LiDAR tiles: overrides what their headers say (a warning names each tile
    #: whose header disagrees); without it a tile whose header has no CRS is an error
    lidar_crs: str | None = None
    #: the field tree list: CSV (UTF-8 or GBK) or XLSX (docs/tree_lists.md)
    trees: Path | None = None
    #: the sheet of an XLSX tree list (default: the first)
    trees_sheet: str | None = None
    plot_locations: Path | None = None
    #: the plot samples' designs (GeoPackage, layer ``strata``): one row per sample and
    #: stratum with ``sample``, ``stratum``, ``area_ha`` and the stratum's sampling frame
    #: (MultiPolygon); the plots of ``plot_locations`` name theirs in columns ``sample`` and
    #: ``stratum``
    plot_design: Path | None = None
    parcels: Path | None = None
    project_area: Path | None = None
    #: the parcel layer's own field names: the pipeline's name of a column -> the layer's
    #: field holding it, e.g. ``{parcel_id: 小班号, land_class: 地类, forest_type: 优势树种}``
    #: (docs/parcel_layers.md). Applied to ``parcels`` (which must have every mapped field)
    #: and ``project_area`` (which must have the one mapped to ``parcel_id``)
    parcel_fields: dict[str, str] = Field(default_factory=dict)
    #: invalid polygons (a self-intersecting ring, ...) of the AOI, parcel and project
    #: layers are refused, naming the feature; ``true`` repairs them instead (shapely's
    #: ``make_valid``, polygonal parts kept) wherever they are read, with a warning
    repair_geometry: bool = False

    @field_validator("parcel_fields")
    @classmethod
    def _parcel_fields(cls, value: dict[str, str]) -> dict[str, str]:
        empty = [k for k, v in value.items() if not k.strip() or not str(v).strip()]
        if empty:
            raise ValueError(f"empty name in the mapping of {empty}")
        theirs = list(value.values())
        twice = sorted({v for v in theirs if theirs.count(v) > 1})
        if twice:
            raise ValueError(f"the layer's field(s) {twice} are mapped to more than one name")
        return value

    @field_validator("lidar_crs")
    @classmethod
    def _lidar_crs(cls, value: str | None) -> str | None:
        from pipeline.crs import check_model_crs

        if value is not None:
            check_model_crs(value)
        return value


class SimulateParams(Section):
    """Parameters of the demo-region simulator (``forest-carbon simulate``).

    The simulated AOI is a square of ``size_km`` centred on (``center_lon``, ``center_lat``)
    in the region CRS; the simulator writes it to ``<out>/aoi.geojson``. The science
    coefficients live in ``pipeline/simulate/data/simulation.yaml``.
    """

    size_km: float = Field(default=10.0, gt=0)
    #: centre of the AOI, WGS84 degrees (Nanping, Fujian by default)
    center_lon: float = Field(default=118.1, ge=-180, le=180)
    center_lat: float = Field(default=26.6, ge=-80, le=84)
    #: side of the LiDAR block in km (covers part of the AOI)
    lidar_km: float = Field(default=2.0, gt=0)
    #: side of the optional second-epoch LiDAR block in km (0 = none), inside the first
    lidar2_km: float = Field(default=0.0, ge=0)
    n_plots: int = Field(default=80, ge=1)
    #: Sentinel-2 and Landsat scenes per epoch
    n_s2_scenes: int = Field(default=6, ge=1)
    n_landsat_scenes: int = Field(default=3, ge=0)
    #: parcels (sub-compartments) per km2; default that of ``simulation.yaml``. Smaller
    #: parcels make a prefecture-sized parcel table on a small region (report benchmark)
    parcels_per_km2: float | None = Field(default=None, gt=0)


class AcquireParams(Section):
    """Scene search per epoch (``forest-carbon search``; stage ``acquire``)."""

    #: largest scene cloud cover kept, percent (``eo:cloud_cover``)
    max_cloud_cover: float = Field(default=80.0, ge=0, le=100)
    #: most items kept per collection and epoch (least cloudy first)
    max_items: int = Field(default=200, ge=1)
    #: items per page requested from a STAC API
    page_size: int = Field(default=100, ge=1, le=10000)
    #: seconds a STAC API may take to answer one request
    timeout_s: float = Field(default=60.0, gt=0)
    #: retries of a STAC API request after a timeout, a lost connection or HTTP 429/5xx
    retries: int = Field(default=4, ge=0, le=20)


class CompositeParams(Section):
    """Seasonal composites and terrain (``forest-carbon composite``; stage ``composite``)."""

    #: cloud and shadow masks are grown by this many model-grid pixels
    cloud_dilation_px: int = Field(default=2, ge=0)
    method: Literal["median"] = "median"
    #: adjust Landsat OLI reflectance to Sentinel-2 MSI (HLS v2.0 bandpass coefficients)
    harmonise_landsat: bool = True
    #: which Sentinel-2 unit's MSI the Landsat bands are adjusted to
    harmonise_to: Literal["sentinel-2a", "sentinel-2b"] = "sentinel-2a"
    #: resampling of reflectance bands onto the model grid (masks always use nearest)
    resampling: Literal["nearest", "bilinear", "average", "cubic"] = "bilinear"
    #: what a failed dark-object check (suspected wrong BOA offset flag) does
    dark_object_check: Literal["warn", "error", "off"] = "warn"


class LidarParams(Section):
    """LiDAR stage settings (see :mod:`pipeline.lidar` for the methods and their sources)."""

    #: CHM and DTM cell size in metres
    resolution_m: float = Field(default=1.0, gt=0)
    #: buffer around each processing chunk in metres (removes seams)
    buffer_m: float = Field(default=20.0, ge=0)
    #: side of the square processing chunks in metres (rounded up to a whole multiple of
    #: the LiDAR and model-grid resolutions); 1000 m matches the usual 1 km tiles
    chunk_size_m: float = Field(default=1000.0, gt=0)
    chm_algorithm: Literal["p2r", "pitfree"] = "p2r"
    #: p2r: the highest return is taken per sub-cell of resolution / ``p2r_subcells``,
    #: empty sub-cells get the mean of their occupied 3 x 3 neighbours (a one-ring form of
    #: lidR's ``p2r(na.fill = knnidw())``, Roussel et al. 2020,
    #: doi:10.1016/j.rse.2020.112061), and each CHM cell takes the highest of its
    #: sub-cells; ``1`` and ``"none"`` give lidR's plain ``p2r()``. At 5 pulses/m2 a
    #: quarter of the 0.5 m sub-cells get no return; on the demo region this halves the
    #: CHM error of canopy cells against the plain 1 m p2r (see :mod:`pipeline.lidar.chm`).
    p2r_subcells: int = Field(default=2, ge=1, le=8)
    p2r_fill: Literal["none", "neighbours"] = "neighbours"
    #: pit-free CHM (Khosravipour et al. 2014): height thresholds of the TIN layers and max
    #: triangle edge of the lowest / other layers (lidR's ``pitfree()`` defaults)
    pitfree_thresholds_m: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 15.0)
    pitfree_max_edge_m: tuple[float, float] = (0.0, 1.0)
    #: a chunk whose core returns are less than this share ground (class 2) is treated as
    #: unclassified and gets the ground filter (classified forest ALS usually has several
    #: per cent ground returns even under dense canopy)
    min_ground_share: float = Field(default=0.01, ge=0, le=1)
    #: negative normalised heights are clamped to 0; the QA counts those within this
    #: tolerance apart from those further below ground (missed low noise, DTM errors)
    negative_tolerance_m: float = Field(default=0.5, ge=0)
    #: ground returns are thinned to the lowest per cell of this side before the TIN
    #: (None: twice the DTM resolution; keeps the triangulation's cost well below the
    #: decoding's at 20 returns/m2 while a TIN of the kept returns stays within a few cm of
    #: a smooth terrain; 0: no thinning, as lidR's ``tin()``)
    dtm_thin_m: float | None = Field(default=None, ge=0)
    #: IDW extrapolation radius outside the ground TIN (lidR ``knnidw(rmax = 50)``)
    idw_rmax_m: float = Field(default=50.0, gt=0)
    #: already height-normalised input: detect from ground returns at 0 m, or force
    normalised_input: Literal["detect", "yes", "no"] = "detect"
    #: statistical outlier filter for unclassified clouds (PDAL ``filters.outlier``
    #: defaults: mean_k 8, multiplier 2), applied to the highest and lowest returns of
    #: 2 m columns (see :mod:`pipeline.lidar.noise`)
    outlier_k: int = Field(default=8, ge=1)
    outlier_multiplier: float = Field(default=2.0, gt=0)
    #: ground filter of clouds without ground class: the simple morphological filter
    #: (SMRF, Pingel et al. 2013, doi:10.1016/j.isprsjprs.2012.12.002) or the cloth
    #: simulation filter (CSF, below)
    ground_algorithm: Literal["smrf", "csf"] = "smrf"
    #: SMRF (PDAL ``filters.smrf`` names): cell 1 m, window 18 m, threshold 0.5 m and
    #: scalar 1.25 are PDAL's defaults.
    #: The slope threshold (rise over run) must exceed the steepest terrain: PDAL's 0.15
    #: suits flat urban scenes; 1.0 (45 degrees) keeps 35-degree forest slopes and ridges
    #: as ground, while crowns metres high and a few metres wide still drop far more than
    #: slope x radius in the opening. ``smrf_low_outlier_m``: a cell this far below the
    #: opening of the inverted minimum surface is a low outlier (assumption: well above
    #: the ground returns' centimetre noise, well below the metres of missed low noise).
    smrf_cell_m: float = Field(default=1.0, gt=0)
    smrf_slope: float = Field(default=1.0, gt=0)
    smrf_window_m: float = Field(default=18.0, gt=0)
    smrf_threshold_m: float = Field(default=0.5, gt=0)
    smrf_scalar: float = Field(default=1.25, ge=0)
    smrf_low_outlier_m: float = Field(default=1.0, gt=0)
    #: cloth simulation filter (``ground_algorithm: csf``; Zhang et al. 2016,
    #: doi:10.3390/rs8060501): a soft cloth (rigidness 1) with slope smoothing is the
    #: authors' setting for steep terrain; resolution near the ground-point spacing. The
    #: filter is fragile on steep forested slopes: on the tiny demo region's narrow
    #: unclassified broadleaf tile this setting gives a DTM RMSE of 3.8 m, while a 1 m
    #: cloth (better there) fails the 35-degree test slope; see the LiDAR issue's notes.
    csf_cloth_resolution_m: float = Field(default=0.5, gt=0)
    csf_rigidness: Literal[1, 2, 3] = 1
    csf_class_threshold_m: float = Field(default=0.5, gt=0)
    csf_time_step: float = Field(default=0.65, gt=0)
    csf_iterations: int = Field(default=500, ge=1)
    csf_slope_smooth: bool = True
    #: area-based metrics: height statistics use first returns with at least this height
    #: (0: all first returns, lidR's ``stdmetrics_z`` on first returns)
    metrics_min_height_m: float = Field(default=0.0, ge=0)
    #: canopy-cover threshold of ``cover_2m`` (share of first returns above it)
    cover_threshold_m: float = Field(default=2.0, ge=0)
    #: points decoded per read (bounds the memory of one decode step)
    points_per_read: int = Field(default=1_000_000, ge=10_000)
    #: a tile that cannot be read or has no usable points fails the run (naming the tile);
    #: ``true`` skips such tiles instead, listed in the log, the manifest and the report
    allow_skipped_tiles: bool = False
    #: a CHM whose 99th percentile exceeds this is implausible and warned about (Z in US
    #: survey feet read as metres gives 3.28 times the height); the tallest measured living
    #: tree is a coast redwood of about 116 m, and no forest canopy reaches 100 m
    max_canopy_height_m: float = Field(default=100.0, gt=0)


class PlotsParams(Section):
    #: allometric equation name, or ``species`` for the registry's default per species
    equation: str = "species"
    #: environmental stress index E for Chave et al. 2014 eq. 7
    chave_e: float | None = None
    mc_draws: int = Field(default=1000, ge=10)
    #: H-D model form; ``best`` = lowest RSE (BIOMASS modelHD comparison), ``loglog`` = log1
    hd_model: Literal["best", "loglog", "log2", "michaelis", "weibull"] = "best"
    dbh_error: Literal["chave2004", "none"] = "chave2004"
    #: seed of the Monte Carlo propagation; ``None`` = the run's top-level ``seed``
    seed: int | None = Field(default=None, ge=0)
    #: epoch of a tree list without an ``epoch`` column (a single census); ``None`` = the
    #: config's only epoch, or ``single`` outside a run
    tree_epoch: str | None = Field(default=None, min_length=1)


class ModelParams(Section):
    """Biomass models (``model`` stage; science in :mod:`models.biomass`)."""

    #: ``log_linear`` is opt-in: on the demo it wins the spatial CV (41.8 against 51.1
    #: Mg/ha) and brings the AOI totals within 3 % of the truth, but its parcel sink
    #: intervals over-cover (95.5 % at 90 % nominal) when the parcels sum pixel SDs as
    #: fully correlated (``sink.parcel_error_aggregation: correlated``), an upper bound
    #: that gets looser as the map's stand-level error shrinks. That was measured before
    #: the ``spatial`` aggregation existed; measure it again before adding it here.
    candidates: tuple[
        Literal["powerlaw", "random_forest", "gradient_boosting", "log_linear"], ...
    ] = ("powerlaw", "random_forest", "gradient_boosting")
    #: side of the square spatial blocks of the cross-validation, metres
    cv_block_m: float = Field(default=1000.0, gt=0)
    cv_folds: int = Field(default=5, ge=2)
    #: nominal coverage of the per-pixel prediction interval
    interval: float = Field(default=0.9, gt=0, lt=1)
    #: LiDAR height metric (m) and canopy cover (0-1) of the power-law ABA model
    powerlaw_height: str = "h_mean"
    powerlaw_cover: str = "cover_2m"
    #: LiDAR predictors of the RF/GB candidates (empty = every h_* and cover* band)
    lidar_features: tuple[str, ...] = ()
    #: epoch ``sources.lidar_tiles`` was flown in; default: the first epoch
    lidar_epoch: str | None = None
    #: a cell/plot counts as inside the LiDAR cover from this coverage fraction on
    lidar_min_fraction: float = Field(default=0.95, gt=0, le=1)
    #: fewer LiDAR plots than this: no LiDAR model, satellite model straight from plots
    min_lidar_plots: int = Field(default=20, ge=10)
    #: spacing of the thinned sample of the LiDAR-model map (satellite training), metres
    upscale_spacing_m: float = Field(default=50.0, gt=0)
    upscale_max_samples: int = Field(default=3000, ge=30)
    #: what trains the satellite model: field plots, the LiDAR-map sample, both, or
    #: "auto" (the plots alone unless the source with the lowest spatial-CV RMSE at
    #: held-out field plots beats them by more than one standard error)
    satellite_training: Literal["auto", "plots", "lidar_upscaled", "plots+lidar_upscaled"] = "auto"
    #: share of the training weight of the LiDAR-map sample when trained with the plots
    upscale_share: float = Field(default=0.5, gt=0, lt=1)
    #: add to each epoch's satellite map the mean held-out residual of that epoch's plots
    #: (model-assisted bias correction, see ``models.biomass.epoch_corrections``)
    epoch_bias_correction: bool = True
    #: categorical column of ``sources.parcels`` (the bureau's sub-compartment map) whose
    #: classes become satellite-model predictors: per class, the share of the plot or
    #: the plot-sized window in parcels of that class (``pipeline.features.class_layers``).
    #: Optical reflectance saturates in dense forest; the forest type tells stands of
    #: the same greenness apart. null, or no parcel layer: not used
    parcel_class_column: str | None = "forest_type"
    #: when the parcel layer carries the sub-compartment (小班) inventory record
    #: (``docs/parcel_layers.md``), make its mean-tree AGB density of each parcel a
    #: satellite-model predictor (``pipeline.subcompartment``). Off by default: on the
    #: demo region it made the parcel totals worse and the spatial CV optimistic (a
    #: parcel-constant predictor leaks across CV blocks; docs/parcel_layers.md)
    parcel_inventory: bool = False
    #: judge, at the epochs other than the parcel layer's, whether each forest-land
    #: parcel was forest then (``models.landuse``); parcels that were not (farmland
    #: afforested since) get no estimate at that epoch, so no false loss of carbon.
    #: Needs a parcel layer with forest and other land
    land_use_change: bool = True
    #: epoch the parcel layer describes (default: the last epoch)
    parcels_epoch: str | None = None
    #: spacing of the systematic cell samples that train the land-use classifier
    #: (per kind of land, at most ``upscale_max_samples`` each) and judge the parcels
    land_use_spacing_m: float = Field(default=30.0, gt=0)
    #: most bins of plot AGB in which the cell-vs-window deviations of the per-cell
    #: uncertainty are described (``models.biomass.granularity_cell_support``)
    cell_support_bins: int = Field(default=10, ge=1)
    #: cells of the grid in the systematic sample (seeded random start) on which the
    #: stage writes the map and its fold maps at every epoch
    #: (``model/fold_maps.csv``, its forest-land cells; only with
    #: ``stages.estimate.cross_fit: true``): the estimate stage's population
    #: correction of the cross-fitted inventory estimate (``models.survey.crossfit``)
    fold_map_cells: int = Field(default=40000, ge=100)
    rf_n_estimators: int = Field(default=300, ge=10)
    rf_min_samples_leaf: int = Field(default=3, ge=1)
    gb_max_iter: int = Field(default=200, ge=10)
    gb_learning_rate: float = Field(default=0.05, gt=0, le=1)
    gb_min_samples_leaf: int = Field(default=5, ge=1)
    #: ridge penalty of the ``log_linear`` candidate, on standardised predictors
    ridge_alpha: float = Field(default=1.0, gt=0)


class PredictParams(Section):
    """Wall-to-wall maps (``predict`` stage)."""

    #: relative error (SD / AGB) below which a pixel's quality flag is good (GEDI L4B spirit)
    good_relative_error: float = Field(default=0.2, gt=0)
    #: land classes of ``sources.parcels`` (column ``land_class``) that are forest land.
    #: The maps cover them only: the models were trained and calibrated on forest plots
    #: and say nothing of farmland, water or settlements (no value there, as in the
    #: bureau's sub-compartment map, which defines forest). No parcel layer: no mask.
    forest_land_classes: tuple[str, ...] = ("forest",)


class SinkParams(Section):
    """Stock-change sink and its aggregation to parcels (stages ``sink`` and ``parcels``).

    ``epoch_error_correlation`` is the correlation rho of the two epochs' per-pixel carbon
    errors in Var(C2 - C1) = s1^2 + s2^2 - 2 rho s1 s2. Both epochs are mapped by the same
    model from the same kind of predictors, so their errors are positively correlated
    (0 <= rho <= 1); for rho in [0, 1] the sink SD is largest at rho = 0. By default rho
    is estimated from the held-out residuals of the plots measured at both epochs (the
    ``model`` stage writes it to the model card); a number given here overrides it, and
    0 gives the conservative (largest) sink SD. See :mod:`pipeline.sink`.
    """

    #: correlation of the two epochs' errors used in the sink SD: a number (0 =
    #: independent), or "estimated": from the plots measured at both epochs (the model
    #: card's ``epoch_error_correlation``; 0 when too few plots were re-measured)
    epoch_error_correlation: Annotated[float, Field(ge=-1, le=1)] | Literal["estimated"] = (
        "estimated"
    )
    #: the two epochs compared (start, end); default: the first and the last epoch
    epochs: tuple[str, str] | None = None
    #: pixels whose quality flag is below this value in either epoch are masked. 0 by
    #: default: the flag marks a relative SD under 20% (GEDI L4B spirit), which 10 m
    #: pixels rarely reach; masking the others would drop real stock from parcel totals
    min_quality: int = Field(default=0, ge=0)
    #: how pixel errors add up inside a parcel: ``spatial`` (default: with the error
    #: correlogram fitted to the satellite map's residuals against the LiDAR map inside
    #: the LiDAR cover, :mod:`pipeline.map_errors`; the correlated bound where there is
    #: no LiDAR to fit it), ``correlated`` (sum of SDs, upper bound) or ``independent``
    #: (root sum of squares, lower bound); both bounds are reported alongside in any case
    parcel_error_aggregation: Literal["spatial", "correlated", "independent"] = "spatial"
    #: central coverage of the intervals reported per parcel
    interval: float = Field(default=0.9, gt=0, lt=1)


class EstimateParams(Section):
    """Survey estimates of totals from the plot samples (stage ``estimate``).

    Each probability sample of plots declared in ``sources.plot_design`` (the region's
    inventory, a project's monitoring plots) gives the stock at every epoch and the stock
    change, by every estimator of :mod:`models.survey.totals`; the one named here is marked
    as chosen for the report (a project's credits use the methodology file's estimator).
    """

    #: the estimator of the stocks: ``difference`` (exactly design-unbiased for a map not
    #: fitted to the sample; for the sample that trained it, see ``cross_fit``), ``greg``,
    #: ``stratified`` (plot-only, AR-TOOL14) or ``most_precise`` (the smallest standard
    #: error of the three)
    estimator: Literal["most_precise", "stratified", "difference", "greg"] = "difference"
    #: whether the sample that trained the map (the region's inventory) may take its
    #: cross-fitted model-assisted estimate of the stocks (``estimator``, with the fold maps'
    #: population correction, ``models.survey.crossfit``); off, its rows are written with a
    #: note and the plot-only estimate is chosen. On by default: in repeated sampling it
    #: is unbiased within 2 % with 87-92 % coverage of its 90 % intervals and about half
    #: the plot-only RMSE, and on four simulated regions it came within 2 % of the truth
    #: on three (the demo's plots sit where the fold models over-read: -13 %, a draw about
    #: 2.5 of its SEs out; docs/estimation.md)
    cross_fit: bool = True
    #: the estimator of a stock change (a project's comes from its methodology file):
    #: ``stratified``, AR-TOOL14's direct estimation from the re-measured plots, because
    #: the map difference is a weak auxiliary of plot-level change (docs/estimation.md)
    change_estimator: Literal["most_precise", "stratified", "difference", "greg"] = "stratified"
    #: two-sided confidence level of the intervals (AR-TOOL14: 90 %)
    confidence: float = Field(default=0.9, gt=0, lt=1)
    #: target precision of a sample's stock estimate: half-width of the interval over the
    #: estimate (CDM AR-TOOL03: ±10 % at 90 % confidence); the plan of
    #: ``estimates/sample_plan.csv`` sizes each sample for it
    target_relative_half_width: float = Field(default=0.10, gt=0, lt=1)
    #: Monte Carlo draws of the conversion factors' shared error (carbon fraction,
    #: root-to-shoot ratio: one draw for every plot and epoch, seeded with the run's
    #: ``seed``): the totals' systematic SD beside their sampling SE
    #: (``models.shared_errors``, docs/estimation.md)
    systematic_draws: int = Field(default=200, ge=2)


class CreditsParams(Section):
    """Credit calculation (stage ``credits``); the rules sit in the methodology file."""

    methodology: Path = Path("configs/methodology/ccer.yaml")
    #: overrides the methodology's default leakage fraction (share of net removals)
    leakage_fraction: float | None = Field(default=None, ge=0, le=1)
    #: overrides the methodology's default non-permanence buffer (e.g. the project's own
    #: VCS AFOLU Non-Permanence Risk Tool result)
    buffer_fraction: float | None = Field(default=None, ge=0, le=1)
    #: deduct at least the whole half-width of the net removals' interval, whatever the
    #: methodology's uncertainty rule allows, so that credits never exceed the interval's
    #: lower end (docs/methodologies.md: a discount table alone over-credits a precise
    #: sample); false follows the methodology's rule alone
    at_most_lower_bound: bool = True
    #: further methodology files computed side by side on the same run, each written to
    #: ``credits/credits_<methodology id>.csv`` and shown in the report (the overrides
    #: above apply to ``methodology`` only: each compared file keeps its own values)
    compare: tuple[Path, ...] = ()


class ReportParams(Section):
    """The HTML report (stage ``report``)."""

    title: str | None = None
    #: composite bands shown as the RGB quicklook
    rgb_bands: tuple[str, str, str] = ("red", "green", "blue")
    #: percentiles of the reflectance stretch of the RGB quicklook
    rgb_stretch_percentiles: tuple[float, float] = (2.0, 98.0)
    #: language of the report; unset: that of the region's ``country``
    #: (``pipeline/report/strings.yaml``: CN -> zh), else en
    language: Literal["zh", "en"] | None = None
    #: parcel-layer attributes to total by, each group with its interval (e.g.
    #: ``[township, village, compartment, forest_type, owner]``)
    rollups: tuple[str, ...] = ()
    #: rows per page of the report's per-parcel table
    parcel_page_rows: int = Field(default=50, ge=1)


class StageParams(Section):
    acquire: AcquireParams = AcquireParams()
    composite: CompositeParams = CompositeParams()
    lidar: LidarParams = LidarParams()
    plots: PlotsParams = PlotsParams()
    model: ModelParams = ModelParams()
    predict: PredictParams = PredictParams()
    sink: SinkParams = SinkParams()
    estimate: EstimateParams = EstimateParams()
    credits: CreditsParams = CreditsParams()
    report: ReportParams = ReportParams()


class DaskSettings(Section):
    """Sizing of the default ``distributed.LocalCluster`` (``None`` = sized to the machine)."""

    n_workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)
    #: worker processes of their own (``True``), or one worker in the run's own process
    #: running a thread per core (``False``, the default: measured cheaper, see
    #: docs/performance.md). Left out of the config hash and the manifest like
    #: ``dashboard_address``: the outputs are the same bit for bit either way.
    processes: bool = Field(default=False, exclude=True)
    #: per-worker memory limit, e.g. ``"4GiB"``
    memory_limit: str | None = None
    #: raster chunk side in pixels
    chunk_px: int = Field(default=1024, ge=64)
    #: where the local cluster's dashboard listens, ``HOST:PORT`` (port 0: a free one).
    #: This machine only by default: the dashboard has no login, and ``:PORT`` or
    #: ``0.0.0.0:PORT`` (all interfaces) shows the run to the network; the workers' own
    #: HTTP servers listen on the same host (:mod:`pipeline.cluster`). Left out of the
    #: config hash and the manifest (how to watch a run, not what it computes).
    dashboard_address: str = Field(default="127.0.0.1:0", min_length=1, exclude=True)


class StandaloneParams(Section):
    """What a run takes from its region config and a stand-alone command has no config for.

    The stand-alone commands (``forest-carbon composite | lidar | plots | fit | predict |
    sink``) use these defaults; a run uses the config's ``resolution_m``, ``seed`` and the
    sink's ``epoch_error_correlation`` instead. Not part of :class:`Config`.
    """

    #: model-grid cell, metres (a run: the config's ``resolution_m``)
    resolution_m: float = Field(default=10.0, gt=0)
    #: random seed of the model fits and the Monte Carlo draws (a run: the config's ``seed``)
    seed: int = Field(default=0, ge=0)
    #: correlation of the two epochs' errors in the sink SD: without a model card to
    #: estimate it from, 0, the conservative (largest) sink SD (see :class:`SinkParams`)
    epoch_error_correlation: float = Field(default=0.0, ge=-1, le=1)


class Config(Section):
    """A region's resolved run configuration."""

    region: str = Field(min_length=1, pattern=r"^[a-z0-9_\-]+$")
    #: inputs are simulated (the demo region); stated in the manifest and the report
    simulated: bool = False
    #: country of the region, ISO 3166-1 alpha-2 (e.g. CN); sets the report's language
    #: unless ``stages.report.language`` does
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    aoi: Path
    crs: str = Field(pattern=r"^EPSG:\d+$")
    resolution_m: float = Field(gt=0)
    epochs: tuple[Epoch, ...] = Field(min_length=1)
    data_dir: Path
    output_dir: Path
    seed: int = Field(ge=0)
    sources: Sources = Sources()
    simulate: SimulateParams = SimulateParams()
    stages: StageParams = StageParams()
    dask: DaskSettings = DaskSettings()

    @field_validator("crs")
    @classmethod
    def _projected_metres(cls, value: str) -> str:
        from pipeline.crs import check_model_crs  # pyproj: only once a config is validated

        check_model_crs(value)
        return value

    @model_validator(mode="after")
    def _epochs(self) -> Config:
        names = [e.name for e in self.epochs]
        if len(set(names)) != len(names):
            raise ValueError(f"epoch names must be unique, got {names}")
        if any(b.start <= a.start for a, b in zip(self.epochs, self.epochs[1:], strict=False)):
            raise ValueError("epochs must be in chronological order of their start dates")
        return self

    @model_validator(mode="after")
    def _lidar_epochs(self) -> Config:
        names = [e.name for e in self.epochs]
        first = self.stages.model.lidar_epoch or names[0]
        if self.stages.model.lidar_epoch is not None and first not in names:
            raise ValueError(f"stages.model.lidar_epoch {first!r} is not one of the epochs {names}")
        repeat = self.sources.lidar_repeat
        if repeat and self.sources.lidar_tiles is None:
            raise ValueError(
                "sources.lidar_repeat needs sources.lidar_tiles (the first flight, whose "
                "plots fit the LiDAR model)"
            )
        unknown = sorted(set(repeat) - set(names))
        if unknown:
            raise ValueError(f"sources.lidar_repeat: {unknown} are not epochs of the run {names}")
        if first in repeat:
            raise ValueError(
                f"sources.lidar_repeat: epoch {first!r} is the epoch of sources.lidar_tiles "
                "(stages.model.lidar_epoch); a repeat flight belongs to another epoch"
            )
        return self

    def canonical_json(self) -> str:
        """The canonical form the hash is taken over (sorted keys, no ``output_dir``)."""
        data = self.model_dump(mode="json", exclude={"output_dir"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def region_config_path(region: str) -> Path:
    """The pinned config file of a region."""
    return CONFIG_DIR / "regions" / f"{region}.yaml"


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config section a key path ends in (``None`` if the path leaves the model tree)."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = field.annotation
        # tuple[Epoch, ...] and Optional sections: find the section class among the args
        candidates = [inner, *getattr(inner, "__args__", ())]
        sections = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not sections:
            return None
        model = sections[0]
    return model


def _format_validation(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # model validators report at the level of the object they check
        loc = tuple(p for p in e["loc"] if p not in ("function-after",))
        msg = e["msg"].removeprefix("Value error, ")
        allowed = ""
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            section = _section_at(loc[:-1])
            if section is not None:
                allowed = f" (allowed: {', '.join(section.model_fields)})"
        if e["type"] == "literal_error" and "expected" in (e.get("ctx") or {}):
            allowed = f" (allowed: {e['ctx']['expected']})"
        lines.append(f"{source}: {_key_path(loc)}: {msg}{allowed}")
    return "\n".join(lines)


def parse_config(data: Any, *, source: str, overrides: dict[str, Any] | None = None) -> Config:
    """Validate a mapping as a :class:`Config`; errors name ``source`` and the key path."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: (top level): expected a mapping of keys, got {type(data).__name__}"
        )
    if overrides:
        data = {**data, **overrides}
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(source, err)) from None


def load_config(path: Path, *, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config file.

    Raises
    ------
    ConfigError
        The file is missing or not YAML, or a value is invalid; the message names the
        file, the key path (e.g. ``epochs[1].end``) and what is allowed.
    """
    if not path.is_file():
        raise ConfigError(
            f"{path}: config file not found "
            "(a region's config lives at configs/regions/<region>.yaml)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, source=str(path), overrides=overrides)
