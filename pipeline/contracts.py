"""The contracts between stages: the run folder's layout and the jobs stages share.

Stages never import each other (DESIGN §2). What one stage writes and another reads is
agreed here instead: every path of the run folder, relative to its root (a stage keys its
outputs by these paths, the runner writes them under :class:`RunLayout`), and the
resolved parameter objects, input specs and raster openers that more than one stage, the
report package, the commands or the tests use.

The run folder (``outputs/<region>/`` by default)::

    manifest.json, .state/<stage>.json       the runner's records
    catalog.json, stac/<item>.json           the runner: the outputs as a STAC catalog
    items/<epoch>.json, items/terrain.json   acquire: frozen STAC items (terrain: the DEM)
    pinned/items/<epoch>.json                reproduce: the recorded items, never searched
    composites/<epoch>.tif, terrain.tif,     composite
      qa.json
    lidar/dtm.tif, chm.tif, metrics.tif,     lidar (a repeat flight of another epoch:
      qa.json, tiles.csv                       chm_<epoch>.tif, metrics_<epoch>.tif)
    plots/trees.csv, plot_biomass.csv,       plots
      qa.csv
    model/model_card.json,                   model
      plot_features.csv, fold_maps.csv,
      models.pkl
    rasters/<map>_<epoch>.tif                predict (agb, agb_sd, agb_interval, carbon,
                                             carbon_sd, co2e, quality)
    rasters/sink.tif,                        sink
      forest_carbon_index.tif
    parcels/parcel_sink.gpkg, .csv,          parcels
      error_correlogram.json
    credits/credits.csv,                     credits (``credits_<id>.csv``: the
      credits_<methodology id>.csv           methodologies of stages.credits.compare)
    report/report.html,                      report
      report/quicklooks/<name>.png,
      report/tables.xlsx
    rasters/*.qml, parcels/*.qml             styles: QGIS layer styles beside their layers
"""

from __future__ import annotations

import datetime as dt
import hashlib
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import xarray as xr

from models.biomass import BiomassMapper
from models.credits import Methodology, load_methodology
from pipeline import io
from pipeline.config import Config, CreditsParams, SinkParams
from pipeline.errors import ConfigError, InputDataError
from pipeline.features import with_band_names
from pipeline.run_folder import PINNED_ITEMS_ROOT, RUN_LOG_NAME, WARNINGS_NAME, recorded_sha256
from pipeline.sink import years_between

# -- the run folder ---------------------------------------------------------------------

#: frozen STAC items of the acquire stage, one ``<epoch>.json`` each
ITEMS_DIR = "items"
#: where ``reproduce`` puts the original run's frozen items (see :mod:`pipeline.reproduce`)
PINNED_ITEMS_DIR = f"{PINNED_ITEMS_ROOT}/items"
#: key of the DEM items next to the epochs' (``items/terrain.json``)
TERRAIN_KEY = "terrain"

TERRAIN_RELPATH = "composites/terrain.tif"
COMPOSITE_QA_RELPATH = "composites/qa.json"

LIDAR_DTM_RELPATH = "lidar/dtm.tif"
LIDAR_CHM_RELPATH = "lidar/chm.tif"
LIDAR_METRICS_RELPATH = "lidar/metrics.tif"
LIDAR_QA_RELPATH = "lidar/qa.json"
LIDAR_TILES_RELPATH = "lidar/tiles.csv"

TREES_RELPATH = "plots/trees.csv"
PLOT_BIOMASS_RELPATH = "plots/plot_biomass.csv"
PLOTS_QA_RELPATH = "plots/qa.csv"

MODEL_CARD_RELPATH = "model/model_card.json"
PLOT_FEATURES_RELPATH = "model/plot_features.csv"
#: the map and its fold maps at a systematic sample of forest-land cells, per epoch
FOLD_MAPS_RELPATH = "model/fold_maps.csv"
#: prefix of the fold maps' columns of :data:`FOLD_MAPS_RELPATH`
FOLD_MAP_PREFIX = "agb_fold_"
#: the columns of :data:`FOLD_MAPS_RELPATH` before the folds' maps
FOLD_MAP_BASE_COLUMNS = ("epoch", "x_m", "y_m", "model_source", "agb_mg_ha")


def fold_map_column(fold: int) -> str:
    """The column of :data:`FOLD_MAPS_RELPATH` with fold ``fold``'s map (AGB, Mg/ha)."""
    return f"{FOLD_MAP_PREFIX}{fold}_mg_ha"


MODELS_RELPATH = "model/models.pkl"

SINK_RELPATH = "rasters/sink.tif"
#: per epoch, how many forest-land cells each model mapped and how many have no value
MAP_COVERAGE_RELPATH = "rasters/coverage.json"
INDEX_RELPATH = "rasters/forest_carbon_index.tif"

PARCEL_SINK_GPKG_RELPATH = "parcels/parcel_sink.gpkg"
PARCEL_SINK_CSV_RELPATH = "parcels/parcel_sink.csv"
#: the map-error correlogram the parcels' SDs use (parameters and empirical points)
ERROR_CORRELOGRAM_RELPATH = "parcels/error_correlogram.json"

ESTIMATES_RELPATH = "estimates/totals.csv"
SAMPLE_PLAN_RELPATH = "estimates/sample_plan.csv"
#: the conversion factors' shared error: draws, factors included and not, the maps' share
SYSTEMATIC_RELPATH = "estimates/systematic.json"
#: the plot sample (``sample`` of the plot design) whose stock change the credits take
PROJECT_SAMPLE = "project"

CREDITS_RELPATH = "credits/credits.csv"


def domain_sample(methodology_id: str) -> str:
    """The ``sample`` of ``estimates/totals.csv`` that holds the project sample's estimates
    over the strata a methodology credits (its ``applies_to`` forest types)."""
    return f"{PROJECT_SAMPLE}:{methodology_id}"


def with_project_sample(sample: str) -> str:
    """The ``sample`` of ``estimates/totals.csv`` that holds ``sample``'s estimate outside
    the project's frames plus the project sample's inside them (the union of both)."""
    return f"{sample}+{PROJECT_SAMPLE}"


def compared_credits_relpath(methodology_id: str) -> str:
    """The credit table of a methodology of ``stages.credits.compare``."""
    return f"credits/credits_{methodology_id}.csv"


REPORT_RELPATH = "report/report.html"
#: the run's tables in one workbook, one sheet per table (:mod:`pipeline.report.tables`)
TABLES_XLSX_RELPATH = "report/tables.xlsx"


def items_relpath(epoch: str) -> str:
    """Frozen items of an epoch (``items/terrain.json`` for the DEM, :data:`TERRAIN_KEY`)."""
    return f"{ITEMS_DIR}/{epoch}.json"


def composite_relpath(epoch: str) -> str:
    """Seasonal composite of an epoch."""
    return f"composites/{epoch}.tif"


def lidar_repeat_relpath(name: str, epoch: str) -> str:
    """A raster (``chm``, ``metrics``) of the LiDAR flight of a repeat epoch
    (``sources.lidar_repeat``); the first flight's are ``lidar/<name>.tif``."""
    return f"lidar/{name}_{epoch}.tif"


def map_relpath(name: str, epoch: str) -> str:
    """A map of the ``predict`` stage (``agb``, ``carbon_sd``, ``quality`` ...) of an epoch."""
    return f"rasters/{name}_{epoch}.tif"


def rollup_relpath(attribute: str) -> str:
    """The report's totals by one parcel attribute (:mod:`pipeline.report.rollups`)."""
    return f"report/rollup_{attribute}.csv"


def quicklook_relpath(name: str) -> str:
    """A PNG quicklook of the report."""
    return f"report/quicklooks/{name}.png"


#: suffix of the QGIS layer styles
STYLE_SUFFIX = ".qml"
#: files a style can belong to: rasters and vector layers
STYLED_SUFFIXES = io.RASTER_SUFFIXES | io.VECTOR_SUFFIXES


def style_relpath(layer_relpath: str, band: str | None = None) -> str:
    """The QGIS style of a layer, beside it: ``rasters/sink.qml`` (QGIS loads a ``.qml``
    of the layer's name as its default style) or, for a further band of the same layer,
    ``rasters/sink.<band>.qml`` (loaded by hand)."""
    stem = Path(layer_relpath).with_suffix("")
    return f"{stem}{'' if band is None else '.' + band}{STYLE_SUFFIX}"


def styled_layer(style: str, layers: Sequence[str]) -> tuple[str, str | None] | None:
    """The raster or vector layer among ``layers`` that :func:`style_relpath` named
    ``style`` after, and the band (``None`` for the default style); ``None`` when no layer
    matches (``parcels/parcel_sink.qml`` styles the GeoPackage, not the CSV beside it)."""
    path = Path(style)
    name, _, band = path.name.removesuffix(STYLE_SUFFIX).partition(".")
    for layer in layers:
        p = Path(layer)
        if p.suffix.lower() in STYLED_SUFFIXES and p.with_suffix("") == path.parent / name:
            return layer, band or None
    return None


@dataclass(frozen=True)
class RunLayout:
    """Paths of a run folder (``outputs/<region>/`` by default)."""

    root: Path

    def path(self, relpath: str) -> Path:
        """An output's final path from its path relative to the run folder."""
        return self.root / relpath

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def catalog(self) -> Path:
        """The run's STAC catalog, rebuilt from the manifest (:mod:`pipeline.run_catalog`)."""
        return self.root / "catalog.json"

    @property
    def catalog_items_dir(self) -> Path:
        """Where the catalog's items go, one ``<item id>.json`` per output."""
        return self.root / "stac"

    @property
    def state_dir(self) -> Path:
        """Per-stage records of the last successful run (fingerprint and outputs)."""
        return self.root / ".state"

    @property
    def warnings(self) -> Path:
        """The warnings of the stages before the one running (written by the runner)."""
        return self.state_dir / WARNINGS_NAME

    @property
    def run_log(self) -> Path:
        """The console's lines of every run in the folder, appended (written by the runner)."""
        return self.root / RUN_LOG_NAME


# -- the sink's epochs and error model (stages sink, parcels, credits, report) ---------


@dataclass(frozen=True)
class SinkJob:
    """Everything the ``sink`` and ``parcels`` stages need, resolved from the config."""

    epoch_start: str
    epoch_end: str
    reference_start: dt.date
    reference_end: dt.date
    epoch_error_correlation: float | Literal["estimated"]
    min_quality: int
    parcel_error_aggregation: Literal["spatial", "correlated", "independent"]
    interval: float

    @classmethod
    def from_params(
        cls,
        params: SinkParams,
        *,
        epochs: tuple[str, str],
        reference_dates: tuple[dt.date, dt.date],
    ) -> SinkJob:
        """The job comparing ``epochs`` (start, end) dated ``reference_dates``."""
        return cls(
            epoch_start=epochs[0],
            epoch_end=epochs[1],
            reference_start=reference_dates[0],
            reference_end=reference_dates[1],
            epoch_error_correlation=params.epoch_error_correlation,
            min_quality=params.min_quality,
            parcel_error_aggregation=params.parcel_error_aggregation,
            interval=params.interval,
        )

    @property
    def correlation(self) -> float:
        """``epoch_error_correlation`` as a number (see :func:`resolve_correlation`)."""
        if self.epoch_error_correlation == "estimated":
            raise InputDataError(
                "the epochs' error correlation is 'estimated' and was not resolved from the "
                "model card"
            )
        return float(self.epoch_error_correlation)

    @property
    def years(self) -> float:
        """Time between the two epochs' reference dates, years."""
        return years_between(self.reference_start, self.reference_end)


def sink_job(config: Config) -> SinkJob:
    """Resolve the sink parameters and the compared epochs from a run config.

    Raises
    ------
    ConfigError
        Fewer than two epochs, an unknown epoch in ``stages.sink.epochs``, or epochs out
        of order.
    """
    params = config.stages.sink
    by_name = {e.name: e for e in config.epochs}
    if params.epochs is None:
        if len(config.epochs) < 2:
            raise ConfigError(
                "stages.sink: a sink needs two epochs; the config lists only "
                f"{[e.name for e in config.epochs]} (add a second epoch under 'epochs')"
            )
        first, last = config.epochs[0], config.epochs[-1]
    else:
        missing = [n for n in params.epochs if n not in by_name]
        if missing:
            raise ConfigError(
                f"stages.sink.epochs: unknown epoch(s) {missing}; defined: {sorted(by_name)}"
            )
        first, last = by_name[params.epochs[0]], by_name[params.epochs[1]]
    if last.reference <= first.reference:
        raise ConfigError(
            f"stages.sink.epochs: epoch '{last.name}' ({last.reference}) must come after "
            f"'{first.name}' ({first.reference})"
        )
    return SinkJob.from_params(
        params, epochs=(first.name, last.name), reference_dates=(first.reference, last.reference)
    )


def resolve_correlation(job: SinkJob, model_card: Mapping[str, Any] | None) -> SinkJob:
    """The job with a number for ``epoch_error_correlation``.

    ``"estimated"`` takes the model card's estimate for the compared epochs (written by the
    ``model`` stage from plots measured at both epochs); without one (too few re-measured
    plots) it falls back to 0, the conservative value.
    """
    if job.epoch_error_correlation != "estimated":
        return job
    if model_card is None:
        raise InputDataError(
            "stages.sink.epoch_error_correlation is 'estimated' but there is no model card "
            f"({MODEL_CARD_RELPATH}); run the model stage or give a number"
        )
    key = f"{job.epoch_start}/{job.epoch_end}"
    rho = model_card.get("epoch_error_correlation", {}).get(key, {}).get("rho")
    return replace(job, epoch_error_correlation=0.0 if rho is None else float(rho))


def correlation_input(config: Config, layout: RunLayout) -> dict[str, Path]:
    """The model card, when the sink's epoch correlation is to be taken from it."""
    if config.stages.sink.epoch_error_correlation == "estimated":
        return {"model_card": layout.path(MODEL_CARD_RELPATH)}
    return {}


def epoch_raster_inputs(job: SinkJob, layout: RunLayout) -> dict[str, Path]:
    """The per-epoch carbon, SD and quality maps of the two compared epochs.

    ``carbon_start``/``carbon_end``, ``carbon_sd_start``/``carbon_sd_end`` and
    ``quality_start``/``quality_end``.
    """
    out = {}
    for role, epoch in (("start", job.epoch_start), ("end", job.epoch_end)):
        for name in ("carbon", "carbon_sd", "quality"):
            out[f"{name}_{role}"] = layout.path(map_relpath(name, epoch))
    return out


# -- the credited project (stages credits and report) ----------------------------------

#: ``parcel_id`` of the credited project total's row in ``credits/credits.csv``
TOTAL_ID = "TOTAL"
#: ``parcel_id`` of the project sample's estimate over the declared project area, shown
#: beside a ``TOTAL`` from which parcels were refused (not credited: it covers them too)
DECLARED_ID = "DECLARED"


def _project_values(method: Methodology, params: CreditsParams) -> Methodology:
    """``method`` with the run's leakage and buffer for the parameters its file leaves to
    the project (its own defaults stay where it has them)."""
    unset = method.unset()
    return method.with_overrides(
        leakage_fraction=params.leakage_fraction if "leakage_fraction" in unset else None,
        buffer_fraction=params.buffer_fraction if "buffer_fraction" in unset else None,
    )


@dataclass(frozen=True)
class CreditsJob:
    """The resolved methodology plus the sink's epochs and error aggregation."""

    methodology: Methodology
    methodology_file: str
    sink: SinkJob
    #: the methodologies computed side by side (``stages.credits.compare``): (rules, file)
    compare: tuple[tuple[Methodology, str], ...] = ()
    #: the run's epochs up to the sink's start epoch, oldest first, at which a land rule
    #: (:mod:`pipeline.eligibility`) is checked; empty: the start epoch alone
    epochs_before_start: tuple[str, ...] = ()
    #: the epoch the parcel layer describes (``model.parcels_epoch``; None: the last)
    parcels_epoch: str | None = None
    forest_land_classes: tuple[str, ...] = ("forest",)

    @classmethod
    def from_params(cls, params: CreditsParams, sink: SinkJob, *, key: str) -> CreditsJob:
        """Load the methodology files of ``params`` and apply its overrides to the first.

        Raises
        ------
        ConfigError
            A methodology file is missing or invalid, or two share an id (the message
            names ``key`` and the file).
        """
        compare_key = f"{key.rsplit('.', 1)[0]}.compare"
        try:
            method = load_methodology(params.methodology)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
        try:
            # the run's floor is a policy of the run, so compared files follow it too; a
            # compared file's project-specific values are the project's, from the overrides
            floor = params.at_most_lower_bound
            compare = tuple(
                (
                    _project_values(load_methodology(p), params).with_overrides(
                        at_most_lower_bound=floor
                    ),
                    str(p),
                )
                for p in params.compare
            )
        except ValueError as err:
            raise ConfigError(f"{compare_key}: {err}") from None
        ids = [method.id, *(m.id for m, _ in compare)]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{compare_key}: each methodology may appear once (ids {ids})")
        method = method.with_overrides(
            leakage_fraction=params.leakage_fraction,
            buffer_fraction=params.buffer_fraction,
            at_most_lower_bound=params.at_most_lower_bound,
        )
        for m, path in ((method, str(params.methodology)), *compare):
            unset = m.unset()
            if unset:
                settings = [
                    f"--{u.replace('_', '-')}" if key.startswith("--") else f"{compare_key[:-7]}{u}"
                    for u in unset
                ]
                raise ConfigError(
                    f"{path}: {', '.join(unset)} of methodology {m.id!r} is project specific "
                    f"(the file gives no default; see its source): set "
                    f"{' and '.join(settings)} to the project's own assessment"
                )
        return cls(method, str(params.methodology), sink, compare=compare)

    @property
    def methodologies(self) -> tuple[tuple[Methodology, str], ...]:
        """The run's methodology first, then the compared ones."""
        return ((self.methodology, self.methodology_file), *self.compare)


def credits_job(config: Config) -> CreditsJob:
    """Resolve ``stages.credits`` and the sink's epochs from a run config."""
    sj = sink_job(config)
    job = CreditsJob.from_params(config.stages.credits, sj, key="stages.credits.methodology")
    start = next(e.reference for e in config.epochs if e.name == sj.epoch_start)
    return replace(
        job,
        epochs_before_start=tuple(e.name for e in config.epochs if e.reference <= start),
        parcels_epoch=config.stages.model.parcels_epoch or config.epochs[-1].name,
        forest_land_classes=tuple(config.stages.predict.forest_land_classes),
    )


# -- the fitted models (stage model to stages predict and parcels) ------------------------


def load_models(models: Path | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The ``{"mapper", "conversion", "support_px"}`` bundle of ``model/models.pkl``.

    Unpickling runs code, so a file is unpickled only when its bytes have the sha256 the
    manifest of its folder recorded when the model stage (or ``fit``) wrote it
    (:func:`pipeline.run_folder.recorded_sha256`): a pickle changed or swapped after the
    run is refused. The check cannot tell a malicious run folder from a genuine one (its
    sender writes the manifest too): only load run folders you trust. ``bytes`` are the
    model stage's own output in this process.

    Raises
    ------
    InputDataError
        The file is not the one recorded, no manifest records it, or it is not a models
        file.
    """
    if isinstance(models, Mapping):
        return dict(models)
    if isinstance(models, bytes):
        blob = models
    else:
        path = Path(models)
        blob = path.read_bytes()
        recorded = recorded_sha256(path)
        actual = hashlib.sha256(blob).hexdigest()
        if actual != recorded:
            raise InputDataError(
                f"{path}: its sha256 ({actual[:16]}...) is not the one the manifest recorded "
                f"when it was written ({recorded[:16]}...): the file was changed after the run "
                "and is not loaded (unpickling runs code); rerun the model stage or `fit`"
            )
    bundle = pickle.loads(blob)
    if not isinstance(bundle, dict) or not isinstance(bundle.get("mapper"), BiomassMapper):
        raise InputDataError(f"{MODELS_RELPATH}: not a models file of the model stage; rerun `fit`")
    return bundle


# -- predictor rasters (stages model and predict) --------------------------------------


def predictor_inputs(
    config: Config, layout: RunLayout, *, repeat_flights: bool = True
) -> dict[str, Path]:
    """The predictor rasters: each epoch's composite (``composites.<epoch>``), the
    terrain and, when LiDAR tiles are configured, the LiDAR metrics, with those of each
    repeat flight (``lidar_repeat.<epoch>``) unless ``repeat_flights`` is false."""
    inputs = {f"composites.{e.name}": layout.path(composite_relpath(e.name)) for e in config.epochs}
    inputs["terrain"] = layout.path(TERRAIN_RELPATH)
    if config.sources.lidar_tiles is not None:
        inputs["lidar_metrics"] = layout.path(LIDAR_METRICS_RELPATH)
        for epoch in config.sources.lidar_repeat if repeat_flights else ():
            inputs[f"lidar_repeat.{epoch}"] = layout.path(lidar_repeat_relpath("metrics", epoch))
    return inputs


def open_raster(obj: xr.DataArray | Path | str) -> xr.DataArray:
    """A lazy DataArray from a DataArray or a GeoTIFF path (band names from descriptions)."""
    if isinstance(obj, xr.DataArray):
        return obj
    return io.open_raster(Path(obj))


def composites_by_epoch(
    composites: Mapping[str, Any] | Sequence[Any], epochs: Sequence[str]
) -> dict[str, xr.DataArray]:
    """Composites keyed by epoch name (a mapping, or a sequence in ``epochs`` order)."""
    if isinstance(composites, Mapping):
        missing = [e for e in epochs if e not in composites]
        if missing:
            raise InputDataError(f"composites missing for epoch(s) {missing}")
        return {e: open_raster(composites[e]) for e in epochs}
    items = list(composites)
    if len(items) != len(epochs):
        raise InputDataError(f"got {len(items)} composites for {len(epochs)} epochs {list(epochs)}")
    return {e: open_raster(c) for e, c in zip(epochs, items, strict=True)}


def lidar_by_epoch(
    lidar_metrics: xr.DataArray | Path | str,
    lidar_repeat: Mapping[str, xr.DataArray | Path | str] | None,
    *,
    epochs: Sequence[str],
    lidar_epoch: str | None,
) -> dict[str, xr.DataArray]:
    """The LiDAR metrics of each epoch that has a flight, with their band names: the first
    flight's (``lidar/metrics.tif``) at ``lidar_epoch`` (default: the first epoch), each
    repeat flight's at its own epoch.

    Raises
    ------
    InputDataError
        ``lidar_epoch`` or a repeat's epoch is not one of ``epochs``.
    """
    first = lidar_epoch or epochs[0]
    repeat = dict(lidar_repeat or {})
    unknown = [e for e in (first, *repeat) if e not in epochs]
    if unknown:
        raise InputDataError(f"LiDAR epoch(s) {unknown} are not epochs of the run {list(epochs)}")
    out = {first: with_band_names(open_raster(lidar_metrics), source=LIDAR_METRICS_RELPATH)}
    for epoch, metrics in repeat.items():
        source = lidar_repeat_relpath("metrics", epoch)
        out[epoch] = with_band_names(open_raster(metrics), source=source)
    return {e: out[e] for e in epochs if e in out}
