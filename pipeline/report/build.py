"""Assemble the self-contained HTML report and its PNG quicklooks.

The report is meant for two readers: a forestry bureau (headline numbers with their
uncertainty, maps, a per-parcel table) and a verifier (the credit calculation step by
step with every parameter's source, model diagnostics, the data inventory and the config
hash). Images are base64-embedded, so ``report.html`` is one file that opens offline.
Rendering is deterministic: no timestamps, fixed figure metadata, inputs in input order.
What the report states about the run comes in one frozen :class:`ReportJob` (built from
the config by the ``report`` stage, :mod:`pipeline.stages.report`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import geopandas as gpd
import jinja2
import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm

from models.plot_biomass import SPECIES_TABLE_FIELD
from pipeline.contracts import TOTAL_ID, CreditsJob, SinkJob
from pipeline.report import figures
from pipeline.sink import as_band, named_band

#: longest side of a map quicklook in pixels (larger maps are subsampled)
MAX_MAP_PX = 600
OBSERVED_NAMES = ("observed", "agb_obs_mg_ha", "observed_agb_mg_ha", "agb_mg_ha")
PREDICTED_NAMES = (
    "predicted",
    "agb_pred_mg_ha",
    "predicted_agb_mg_ha",
    "cv_pred_agb_mg_ha",
    "agb_cv_pred_mg_ha",
    "cv_predicted_agb_mg_ha",
)
X_NAMES = ("x", "x_m", "easting", "easting_m")
Y_NAMES = ("y", "y_m", "northing", "northing_m")


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    caption: str
    png: bytes

    @property
    def b64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class ReportJob:
    """What the report states about the run, resolved from the config."""

    title: str
    region: str
    simulated: bool
    config_sha256: str
    credits: CreditsJob
    rgb_bands: tuple[str, str, str]
    rgb_stretch_percentiles: tuple[float, float]

    @property
    def sink(self) -> SinkJob:
        return self.credits.sink

    @property
    def z_value(self) -> float:
        """Normal quantile of the central interval of the sink tables."""
        return float(norm.ppf(0.5 + self.sink.interval / 2))

    @property
    def interval_pct(self) -> str:
        return f"{100 * self.sink.interval:g}"


def fmt(value: Any, digits: int = 1) -> str:
    """A number with thousands separators; missing values as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    v = float(value)
    if not math.isfinite(v):
        return "–"
    return f"{v:,.{digits}f}"


def _thumb(da: xr.DataArray) -> tuple[np.ndarray, figures.Extent]:
    """A (y, x) raster subsampled to at most MAX_MAP_PX per side, and its extent."""
    ny, nx = da.sizes["y"], da.sizes["x"]
    step = max(1, math.ceil(max(ny, nx) / MAX_MAP_PX))
    small = da.isel(y=slice(None, None, step), x=slice(None, None, step))
    x, y = da["x"].values, da["y"].values
    dx = abs(float(x[1] - x[0])) if nx > 1 else 1.0
    dy = abs(float(y[1] - y[0])) if ny > 1 else 1.0
    extent = (
        float(x.min()) - dx / 2,
        float(x.max()) + dx / 2,
        float(y.min()) - dy / 2,
        float(y.max()) + dy / 2,
    )
    return np.asarray(small.values, dtype=np.float64), extent


def _band_or_first(raster: xr.DataArray | xr.Dataset, name: str | None, source: str):
    if name is not None:
        return as_band(named_band(raster, name, source=source), name=source)
    if isinstance(raster, xr.Dataset):
        raster = raster[next(iter(raster.data_vars))]
    if "band" in raster.dims:
        raster = raster.isel(band=slice(0, 1))
    return as_band(raster, name=source)


def _map(
    name: str,
    raster: xr.DataArray | xr.Dataset,
    *,
    band: str | None,
    title: str,
    units: str,
    caption: str,
    cmap: str = "viridis",
    diverging: bool = False,
) -> Figure:
    values, extent = _thumb(_band_or_first(raster, band, name))
    png = figures.map_png(
        values, extent=extent, title=title, units=units, cmap=cmap, diverging=diverging
    )
    return Figure(name, title, caption, png)


def _pick(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _card_parts(card: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The card and its per-model sub-cards (``satellite_model``, ``lidar_model``)."""
    if not card:
        return []
    parts = [card]
    for key in ("satellite_model", "lidar_model"):
        if isinstance(card.get(key), Mapping):
            parts.append(card[key])
    return parts


def observed_predicted(
    card: Mapping[str, Any] | None, features: pd.DataFrame | None
) -> pd.DataFrame | None:
    """Cross-validated observed/predicted pairs (and plot x, y when known), if present.

    Looked for in ``cv_predictions`` (a list of records) of the model card or of its
    ``satellite_model`` / ``lidar_model`` sub-cards, then in the plot feature table
    (columns such as ``agb_mg_ha`` and ``agb_cv_pred_mg_ha``).
    """
    frames = [
        pd.DataFrame(part["cv_predictions"])
        for part in _card_parts(card)
        if isinstance(part.get("cv_predictions"), list) and part["cv_predictions"]
    ]
    if features is not None:
        frames.append(features)
    for df in frames:
        obs = _pick(list(df.columns), OBSERVED_NAMES)
        pred = _pick(list(df.columns), PREDICTED_NAMES)
        if obs and pred and obs != pred:
            out = pd.DataFrame(
                {"observed": df[obs].astype(float), "predicted": df[pred].astype(float)}
            )
            xc, yc = _pick(list(df.columns), X_NAMES), _pick(list(df.columns), Y_NAMES)
            if xc and yc:
                out["x"], out["y"] = df[xc].astype(float), df[yc].astype(float)
            return out.dropna(subset=["observed", "predicted"])
    return None


#: words of a model-card key path that mark it as a diagnostic worth showing
_METRIC_WORDS = ("cv", "rmse", "r2", "bias", "coverage", "chosen", "source", "final_at_plots")


def cv_metric_rows(card: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Scalar diagnostics of the model card (CV metrics, chosen model), flattened, sorted."""
    if not card:
        return []
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, obj: Any, depth: int) -> None:
        if isinstance(obj, Mapping):
            if depth < 5:
                for k in sorted(obj, key=str):
                    walk(f"{prefix}.{k}" if prefix else str(k), obj[k], depth + 1)
            return
        if not any(w in prefix.lower() for w in _METRIC_WORDS):
            return
        if isinstance(obj, bool | str):
            rows.append((prefix, str(obj)))
        elif isinstance(obj, int | float):
            rows.append((prefix, fmt(obj, 3)))

    walk("", card, 0)
    return rows[:80]


def _items_summary(items: Any) -> str:
    feats = items.get("features", []) if isinstance(items, Mapping) else []
    by_coll: dict[str, int] = {}
    for f in feats:
        coll = str(f.get("collection", "?"))
        by_coll[coll] = by_coll.get(coll, 0) + 1
    ids = [str(f.get("id")) for f in feats]
    shown = ", ".join(ids[:6]) + (f", ... ({len(ids)} in all)" if len(ids) > 6 else "")
    colls = "; ".join(f"{k}: {v}" for k, v in sorted(by_coll.items()))
    return f"{len(feats)} scenes ({colls}). {shown}"


def inventory_rows(
    *,
    items: Mapping[str, Any],
    lidar_tiles: pd.DataFrame | None,
    plot_biomass: pd.DataFrame | None,
    parcels: gpd.GeoDataFrame,
    project_rows: int,
    model_card: Mapping[str, Any] | None,
) -> list[tuple[str, str]]:
    rows = []
    for epoch, coll in items.items():
        rows.append((f"satellite scenes, epoch {epoch}", _items_summary(coll)))
    if lidar_tiles is not None:
        name_col = _pick(list(lidar_tiles.columns), ("tile", "name", "path", "file"))
        names = [str(v) for v in lidar_tiles[name_col]] if name_col else []
        shown = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
        rows.append(("LiDAR tiles", f"{len(lidar_tiles)} tiles. {shown}"))
    else:
        rows.append(("LiDAR tiles", "none in this run"))
    if plot_biomass is not None and "plot_id" in plot_biomass.columns:
        if "epoch" in plot_biomass.columns:
            per = plot_biomass.groupby("epoch", sort=True)["plot_id"].nunique()
            text = "; ".join(f"epoch {e}: {n} plots" for e, n in per.items())
        else:
            text = f"{plot_biomass['plot_id'].nunique()} plots"
        rows.append(("field plots", text))
    rows.append(("parcels", f"{len(parcels)} parcels; {project_rows} project parcels credited"))
    if model_card:
        chosen = [
            f"{key}: {model_card[key].get('chosen')}"
            for key in ("satellite_model", "lidar_model")
            if isinstance(model_card.get(key), Mapping) and model_card[key].get("chosen")
        ]
        name = "; ".join(chosen) or model_card.get("selected_model", "see model_card.json")
        rows.append(("biomass model", str(name)))
    return rows


def species_table_rows(plots_qa: pd.DataFrame | None) -> list[tuple[str, str]]:
    """The plots stage's summary of the trees whose species is outside the species table."""
    if plots_qa is None or "field" not in plots_qa.columns:
        return []
    rows = plots_qa.loc[plots_qa["field"] == SPECIES_TABLE_FIELD, "reason"]
    return [("field trees outside the species table", str(text)) for text in rows]


def coverage_rows(map_coverage: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Per epoch, the share of forest-land cells each model mapped and the share left
    without a value (``rasters/coverage.json`` of the ``predict`` stage)."""
    rows = []
    for epoch, cov in ((map_coverage or {}).get("epochs") or {}).items():
        parts = [
            f"{v['name']} {v['cells']:,} ({fmt(100 * v['share'])} %)"
            for v in cov["by_model_source"].values()
            if v["cells"]
        ]
        rows.append(
            (f"map cells by model, epoch {epoch}", f"{cov['cells']:,} {cov['cells_are']} cells: "
             + "; ".join(parts))
        )  # fmt: skip
    return rows


def warning_rows(
    recorded: Sequence[Mapping[str, Any]] | None,
) -> tuple[list[tuple[str, str]], int]:
    """The pipeline's own warnings as ``(stage, message)`` rows, and how many others.

    ``recorded`` is the runner's ``.state/warnings.json``: per stage, its ``warnings`` (the
    pipeline's own, all shown) and ``library_warnings`` (library noise such as distributed's
    "Sending large graph", only counted here; they are listed in the manifest).
    """
    rows: list[tuple[str, str]] = []
    n_library = 0
    for entry in recorded or ():
        rows += [(str(entry["stage"]), str(m)) for m in entry.get("warnings", [])]
        n_library += len(entry.get("library_warnings", []))
    return rows, n_library


def credit_step_list(total: Mapping[str, Any]) -> list[dict[str, str]]:
    """The project's credit calculation as ordered, labelled steps."""

    def t(key: str) -> str:
        return f"{fmt(total[key])} t CO2e"

    period, area = fmt(total["period_yr"], 3), fmt(total["area_ha"], 2)
    rate = fmt(total["baseline_rate_tco2e_ha_yr"], 3)
    steps = [
        ("Project removals P (sink x period)", t("project_tco2e"),
         f"SD {t('project_sd_tco2e')}; period {period} yr; area {area} ha"),
        ("Baseline B (stated rate x area x period)", t("baseline_tco2e"),
         f"{rate} t CO2e/ha/yr (area-weighted)"),
        ("Leakage L", t("leakage_tco2e"),
         f"{fmt(100 * total['leakage_fraction'], 1)} % of max(P - B, 0)"),
        ("Net removals N = P - B - L", t("net_tco2e"), f"SD {t('net_sd_tco2e')}"),
        ("Uncertainty U (CI half-width / N)", f"{fmt(total['uncertainty_pct'], 2)} %",
         f"half-width = t {fmt(total['t_value'], 4)} (df {fmt(total['df'], 1)}) x SD = "
         f"{t('half_width_tco2e')}; {total['estimator']}"),
        ("Uncertainty deduction", t("uncertainty_deduction_tco2e"),
         f"factor {fmt(total['uncertainty_factor'], 4)} (see the rule above)"),
        ("After the uncertainty deduction", t("after_uncertainty_tco2e"), "N - deduction"),
        ("Non-permanence buffer", t("buffer_tco2e"),
         f"{fmt(100 * total['buffer_fraction'], 1)} % of the value after deduction"),
        ("Credits", t("credits_tco2e"), "after deduction - buffer, never below 0"),
        ("Reversal", t("reversal_tco2e"), "-N where net removals are negative, else 0"),
    ]  # fmt: skip
    return [{"label": a, "value": v, "formula": f} for a, v, f in steps]


def rule_text(job: ReportJob) -> str:
    rule = job.credits.methodology.uncertainty_rule
    if rule.kind == "discount_table":
        parts = []
        lower = 0.0
        for b in rule.bands:
            upper = "" if b.max_uncertainty is None else f" to {100 * b.max_uncertainty:g} %"
            parts.append(f"U above {100 * lower:g}%{upper}: {100 * b.share_of_half_width:g} %")
            lower = b.max_uncertainty or lower
        return (
            "deduct a share of the 90 % CI half-width by band of U ("
            + "; ".join(parts)
            + f"). Source: {rule.source}"
        )
    return f"deduct max(0, U - {100 * (rule.threshold or 0):g} %) x N. Source: {rule.source}"


def report_maps(
    job: ReportJob,
    *,
    sink: xr.DataArray | xr.Dataset,
    parcel_sink: gpd.GeoDataFrame,
    composite: xr.DataArray | None,
    chm: xr.DataArray | None,
    agb: xr.DataArray | None,
    carbon: xr.DataArray | None,
) -> tuple[list[Figure], list[str]]:
    """The report's maps, and the titles of those left out for lack of an input."""
    sj = job.sink
    e1, e2 = sj.epoch_start, sj.epoch_end
    maps: list[Figure] = []
    missing: list[str] = []
    if composite is not None:
        bands = [
            as_band(named_band(composite, b, source="composite"), name=b) for b in job.rgb_bands
        ]
        parts = [_thumb(b) for b in bands]
        rgb = np.stack([p[0] for p in parts], axis=-1)
        png = figures.rgb_png(
            rgb,
            extent=parts[0][1],
            title=f"Satellite composite {e2} (true colour)",
            percentiles=job.rgb_stretch_percentiles,
        )
        lo, hi = job.rgb_stretch_percentiles
        caption = f"Seasonal median, bands {'/'.join(job.rgb_bands)}, {lo:g}-{hi:g} % stretch."
        maps.append(Figure("rgb", f"Satellite composite {e2}", caption, png))
    else:
        missing.append("RGB composite")
    optional = [
        ("chm", chm, "Canopy height (LiDAR)", "m", "Canopy height model from LiDAR returns."),
        ("agb", agb, f"Aboveground biomass {e2}", "Mg/ha", "Wall-to-wall AGB prediction."),
        ("carbon", carbon, f"Carbon density {e2}", "Mg C/ha", "AGB + BGB carbon."),
    ]
    for name, raster, title, units, caption in optional:
        if raster is None:
            missing.append(title)
            continue
        maps.append(
            _map(name, raster, band=None, title=title, units=units, caption=caption, cmap="YlGn")
        )
    maps.append(_map("sink", sink, band="sink_tco2e_ha_yr", title=f"Annual sink {e1}-{e2}",
                     units="t CO2e/ha/yr", caption="Stock difference per pixel; masked where "
                     "either epoch is not forest or of poor quality.", cmap="RdYlGn",
                     diverging=True))  # fmt: skip
    maps.append(_map("sink_sd", sink, band="sink_sd_tco2e_ha_yr", title="Sink uncertainty (SD)",
                     units="t CO2e/ha/yr", caption="Standard deviation of the annual sink "
                     f"(epoch error correlation {sj.epoch_error_correlation:g}).",
                     cmap="magma"))  # fmt: skip
    parcels_png = figures.parcels_png(
        parcel_sink, column="sink_tco2e_ha_yr", title="Parcels by sink per forest hectare",
        units="t CO2e/ha/yr",
    )  # fmt: skip
    maps.append(Figure("parcels", "Parcels coloured by sink", "Fractional-coverage zonal sums "
                       "divided by the parcel's forest area.", parcels_png))  # fmt: skip
    return maps, missing


def diagnostic_figures(
    model_card: Mapping[str, Any] | None, plot_features: pd.DataFrame | None
) -> list[Figure]:
    """Observed vs predicted AGB and the residual map of the cross-validated plots."""
    diagnostics: list[Figure] = []
    pairs = observed_predicted(model_card, plot_features)
    if pairs is not None and len(pairs):
        resid = pairs["predicted"] - pairs["observed"]
        rmse = float(np.sqrt(np.mean(resid**2)))
        diagnostics.append(Figure("observed_vs_predicted", "Observed vs predicted AGB",
                                  f"Cross-validated plot predictions (n = {len(pairs)}, RMSE "
                                  f"{rmse:.1f} Mg/ha).", figures.scatter_png(
                                      pairs["observed"], pairs["predicted"],
                                      title="Cross-validated AGB", units="Mg/ha")))  # fmt: skip
        if "x" in pairs.columns:
            diagnostics.append(Figure("residuals", "Residual map",
                                      "Predicted minus observed AGB at the plots.",
                                      figures.residual_map_png(
                                          pairs["x"], pairs["y"], resid,
                                          title="CV residuals", units="Mg/ha")))  # fmt: skip
    return diagnostics


#: how the report names the plot samples of ``estimates/totals.csv``
SAMPLE_LABELS = {"inventory": "forest land (inventory plots)", "project": "project area"}


def survey_rows(estimates: pd.DataFrame | None) -> list[dict[str, str]]:
    """Headline cards of the chosen survey estimates: total, interval, estimator, map sum."""
    if estimates is None or estimates.empty:
        return [{"label": "Survey estimates", "value": "none",
                 "detail": "no plot design (sources.plot_design): the totals below are map "
                           "sums, whose SDs are upper bounds"}]  # fmt: skip
    rows = []
    for r in estimates[estimates["chosen"].astype(bool)].itertuples():
        what = (
            str(r.quantity).replace("stock_", "Carbon stock ").replace("change_", "Stock change ")
        )
        pct = fmt(100 * float(r.confidence), 0)
        rows.append(
            {
                "label": f"{what.replace('_', '-')}, {SAMPLE_LABELS.get(r.sample, r.sample)}",
                "value": f"{fmt(r.total)} ± {fmt(r.half_width)} {r.unit}",
                "detail": f"{pct} % interval {fmt(r.lower)} to {fmt(r.upper)}; {r.estimator} "
                f"estimator, {r.n_plots} plots, efficiency {fmt(r.relative_efficiency, 2)}x "
                f"plot-only; map sum {fmt(r.map_total)}",
            }
        )
    return rows


def headline_rows(
    job: ReportJob, *, parcel_sink: gpd.GeoDataFrame, total: Mapping[str, Any]
) -> list[dict[str, str]]:
    """Headline numbers over all parcels, and the credited project ``total``."""
    sj = job.sink
    e1, e2 = sj.epoch_start, sj.epoch_end
    agg = sj.parcel_error_aggregation
    z = job.z_value
    sink_sum = float(parcel_sink["sink_tco2e_yr"].sum())
    sds = parcel_sink["sink_sd_tco2e_yr"].to_numpy(dtype=float)
    # parcels' errors add up as fully correlated unless pixel errors are independent: a
    # spatial model's shared part and neighbouring parcels' errors are correlated
    sink_sd = float(sds.sum()) if agg != "independent" else float(np.sqrt((sds**2).sum()))
    c_end = float(parcel_sink[f"carbon_{e2}_mg_c"].sum())
    c_sds = parcel_sink[f"carbon_sd_{e2}_mg_c"].to_numpy(dtype=float)
    c_sd = float(c_sds.sum()) if agg != "independent" else float(np.sqrt((c_sds**2).sum()))
    forest_ha = fmt(float(parcel_sink["forest_area_ha"].sum()))
    grid_ha = fmt(float(parcel_sink["area_grid_ha"].sum()))
    lo_txt, hi_txt = fmt(sink_sum - z * sink_sd), fmt(sink_sum + z * sink_sd)
    return [
        {"label": f"Annual sink {e1}-{e2}, all parcels (map sum)",
         "value": f"{fmt(sink_sum)} t CO2e/yr",
         "detail": f"± {fmt(sink_sd)} (SD); {job.interval_pct} % interval {lo_txt} to {hi_txt}"},
        {"label": f"Carbon stock {e2} (map sum)", "value": f"{fmt(c_end)} Mg C",
         "detail": f"± {fmt(c_sd)} (SD); {forest_ha} ha forest of {grid_ha} ha"},
        {"label": "Net removals, project area", "value": f"{fmt(total['net_tco2e'])} t CO2e",
         "detail": f"over {fmt(total['period_yr'], 2)} yr; "
                   f"U = {fmt(total['uncertainty_pct'], 1)} %; {total['estimator']}"},
        {"label": f"Credits ({job.credits.methodology.id})",
         "value": f"{fmt(total['credits_tco2e'])} t CO2e",
         "detail": f"after {fmt(total['uncertainty_deduction_tco2e'])} uncertainty deduction "
                   f"and {fmt(total['buffer_tco2e'])} buffer"},
    ]  # fmt: skip


def parcel_table(
    parcel_sink: gpd.GeoDataFrame, *, epoch_start: str, epoch_end: str
) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted rows of the per-parcel table."""
    e1, e2 = epoch_start, epoch_end
    pcols = [
        ("parcel_id", "parcel", 0), ("forest_type", "forest type", 0),
        ("area_grid_ha", "area (ha)", 2), ("forest_area_ha", "forest (ha)", 2),
        (f"carbon_{e1}_mg_c", f"C {e1} (Mg C)", 0), (f"carbon_{e2}_mg_c", f"C {e2} (Mg C)", 0),
        ("sink_tco2e_yr", "sink (t CO2e/yr)", 1), ("sink_sd_tco2e_yr", "SD", 1),
        ("sink_lo_tco2e_yr", "lower", 1), ("sink_hi_tco2e_yr", "upper", 1),
        ("sink_tco2e_ha_yr", "t CO2e/ha/yr", 2), (f"mean_quality_{e2}", "quality", 2),
        ("lidar_share", "LiDAR share", 2),
    ]  # fmt: skip
    pcols = [c for c in pcols if c[0] in parcel_sink.columns]
    rows = [
        [fmt(r[c], d) if d or not isinstance(r[c], str) else r[c] for c, _, d in pcols]
        for _, r in parcel_sink.iterrows()
    ]
    return [c[1] for c in pcols], rows


def credit_table(credits: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted rows of the credit table (parcels and the total)."""
    ccols = [
        ("parcel_id", "unit", 0), ("scope", "scope", 0), ("area_ha", "area (ha)", 2),
        ("project_tco2e", "P", 1), ("baseline_tco2e", "B", 1), ("leakage_tco2e", "L", 1),
        ("net_tco2e", "N", 1), ("uncertainty_pct", "U (%)", 2),
        ("uncertainty_deduction_tco2e", "deduction", 1), ("buffer_tco2e", "buffer", 1),
        ("credits_tco2e", "credits", 1), ("reversal_tco2e", "reversal", 1),
    ]  # fmt: skip
    rows = [
        [r[c] if c in ("parcel_id", "scope") else fmt(r[c], d) for c, _, d in ccols]
        for _, r in credits.iterrows()
    ]
    return [c[1] for c in ccols], rows


def build_report(
    job: ReportJob,
    *,
    sink: xr.DataArray | xr.Dataset,
    parcel_sink: gpd.GeoDataFrame,
    credits: pd.DataFrame,
    estimates: pd.DataFrame | None = None,
    composite: xr.DataArray | None = None,
    chm: xr.DataArray | None = None,
    agb: xr.DataArray | None = None,
    carbon: xr.DataArray | None = None,
    model_card: Mapping[str, Any] | None = None,
    plot_features: pd.DataFrame | None = None,
    items: Mapping[str, Any] | None = None,
    lidar_tiles: pd.DataFrame | None = None,
    plot_biomass: pd.DataFrame | None = None,
    map_coverage: Mapping[str, Any] | None = None,
    plots_qa: pd.DataFrame | None = None,
    warnings: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[str, dict[str, bytes]]:
    """The report HTML and its quicklooks ``{name: png bytes}``."""
    sj = job.sink
    maps, missing = report_maps(
        job,
        sink=sink,
        parcel_sink=parcel_sink,
        composite=composite,
        chm=chm,
        agb=agb,
        carbon=carbon,
    )
    diagnostics = diagnostic_figures(model_card, plot_features)
    total = credits.loc[credits["parcel_id"] == TOTAL_ID].iloc[0].to_dict()
    parcel_columns, parcel_rows = parcel_table(
        parcel_sink, epoch_start=sj.epoch_start, epoch_end=sj.epoch_end
    )
    credit_columns, credit_rows = credit_table(credits)
    inventory = (
        inventory_rows(
            items=items or {},
            lidar_tiles=lidar_tiles,
            plot_biomass=plot_biomass,
            parcels=parcel_sink,
            project_rows=len(credits) - 1,
            model_card=model_card,
        )
        + species_table_rows(plots_qa)
        + coverage_rows(map_coverage)
    )
    warning_list, n_library_warnings = warning_rows(warnings)
    method = job.credits.methodology
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(
        resources.files("pipeline.report").joinpath("template.html").read_text(encoding="utf-8")
    )
    html = template.render(
        title=job.title,
        simulated=job.simulated,
        region=job.region,
        epoch_start=sj.epoch_start,
        epoch_end=sj.epoch_end,
        reference_start=sj.reference_start.isoformat(),
        reference_end=sj.reference_end.isoformat(),
        years=sj.years,
        config_sha256=job.config_sha256,
        interval_pct=job.interval_pct,
        aggregation=sj.parcel_error_aggregation,
        epoch_error_correlation=sj.epoch_error_correlation,
        headline=[
            *survey_rows(estimates),
            *headline_rows(job, parcel_sink=parcel_sink, total=total),
        ],
        maps=maps,
        missing_maps=missing,
        diagnostics=diagnostics,
        cv_metrics=cv_metric_rows(model_card),
        parcel_columns=parcel_columns,
        parcel_rows=parcel_rows,
        credit_steps=credit_step_list(total),
        credit_columns=credit_columns,
        credit_rows=credit_rows,
        methodology={
            "name": method.name,
            "file": job.credits.methodology_file,
            "rule": rule_text(job),
            "provenance": list(method.provenance),
        },
        inventory=inventory,
        warnings=warning_list,
        n_library_warnings=n_library_warnings,
    )
    quicklooks = {f.name: f.png for f in [*maps, *diagnostics]}
    return html, quicklooks
