"""Assemble the self-contained HTML report and its PNG quicklooks.

The report is meant for two readers: a forestry bureau (headline numbers with their
uncertainty, maps, a per-parcel table) and a verifier (the credit calculation step by
step with every parameter's source, model diagnostics, the data inventory and the config
hash). Images are base64-embedded, so ``report.html`` is one file that opens offline.
Rendering is deterministic: no timestamps, fixed figure metadata, inputs in input order.
What the report states about the run comes in one frozen :class:`ReportJob` (built from
the config by the ``report`` stage, :mod:`pipeline.stages.report`). Every text is taken
from ``strings.yaml`` in the job's language (:mod:`pipeline.report.words`); the numbers
are the same in every language. The per-parcel table is embedded as JSON and shown a page
at a time with a search box (a few lines of script in the template), so a prefecture's
10^5 parcels keep the report small; the full table is ``parcels/parcel_sink.csv`` and
the ``parcels`` sheet of ``report/tables.xlsx``.
"""

from __future__ import annotations

import base64
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import geopandas as gpd
import jinja2
import markupsafe
import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm

from models.plot_biomass import SPECIES_TABLE_FIELD
from pipeline.contracts import (
    DECLARED_ID,
    PARCEL_SINK_CSV_RELPATH,
    PROJECT_SAMPLE,
    TOTAL_ID,
    CreditsJob,
    SinkJob,
    with_project_sample,
)
from pipeline.errors import PipelineWarning
from pipeline.report import figures
from pipeline.report.words import Language, Words, strings
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
    language: Language
    #: parcel-layer attributes to total by (``stages.report.rollups``)
    rollups: tuple[str, ...]
    #: rows per page of the per-parcel table (``stages.report.parcel_page_rows``)
    parcel_page_rows: int

    @property
    def words(self) -> Words:
        return Words(self.language)

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
    text: figures.FigureText,
    cmap: str = "viridis",
    diverging: bool = False,
) -> bytes:
    """The PNG of a raster's band (or first band), subsampled for the report."""
    values, extent = _thumb(_band_or_first(raster, band, name))
    return figures.map_png(
        values, extent=extent, title=title, units=units, text=text, cmap=cmap, diverging=diverging
    )


def figure_words(language: Language) -> tuple[Words, figures.FigureText]:
    """The words the figures draw (titles, axes, legends) and the fonts to draw them with.

    A language written in a CJK script (``strings.yaml``: ``script``) is drawn with the
    Latin font and the first CJK font of ``fonts`` that is installed; when none is, the
    figures are drawn in English and a warning says so (it reaches the manifest and the
    report's Warnings). The captions under the figures are in the report's language anyway.
    """
    w = Words(language)
    fonts: tuple[str, ...] = ()
    if w.script == "cjk":
        families = strings()["fonts"]
        cjk = figures.installed_font(families["cjk"])
        if cjk is None:
            looked = ", ".join(families["cjk"])
            warnings.warn(
                PipelineWarning(
                    f"report: no CJK font found for the figures of the {language} report "
                    f"(looked for {looked} with matplotlib and fontconfig), so their titles, "
                    "axis labels and legends are in English; install one (Debian: "
                    "fonts-noto-cjk, see scripts/install-report-deps.sh) and rerun "
                    "`forest-carbon run --stages report --force`",
                    code="no_cjk_font",
                    values={"language": language, "fonts": looked},
                ),
                stacklevel=2,
            )
            w = Words("en")
        else:
            fonts = (*families["latin"], cjk)
    texts = w.texts()
    text = figures.FigureText(
        easting=texts["fig_easting"],
        northing=texts["fig_northing"],
        observed=texts["fig_observed"],
        predicted=texts["fig_predicted"],
        no_valid_pixels=texts["fig_no_valid_pixels"],
        fonts=fonts,
    )
    return w, text


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


def _items_summary(items: Any, w: Words) -> str:
    feats = items.get("features", []) if isinstance(items, Mapping) else []
    by_coll: dict[str, int] = {}
    for f in feats:
        coll = str(f.get("collection", "?"))
        by_coll[coll] = by_coll.get(coll, 0) + 1
    ids = [str(f.get("id")) for f in feats]
    shown = ", ".join(ids[:6]) + (f", ... ({len(ids)})" if len(ids) > 6 else "")
    colls = "; ".join(f"{k}: {v}" for k, v in sorted(by_coll.items()))
    return w("inv_scenes_text", n=len(feats), collections=colls, ids=shown)


def inventory_rows(
    w: Words,
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
        rows.append((w("inv_scenes", epoch=epoch), _items_summary(coll, w)))
    if lidar_tiles is not None:
        name_col = _pick(list(lidar_tiles.columns), ("tile", "name", "path", "file"))
        names = [str(v) for v in lidar_tiles[name_col]] if name_col else []
        shown = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
        rows.append((w("inv_lidar"), w("inv_lidar_text", n=len(lidar_tiles), names=shown)))
    else:
        rows.append((w("inv_lidar"), w("inv_no_lidar")))
    if plot_biomass is not None and "plot_id" in plot_biomass.columns:
        if "epoch" in plot_biomass.columns:
            per = plot_biomass.groupby("epoch", sort=True)["plot_id"].nunique()
            text = "; ".join(w("inv_plots_epoch", epoch=e, n=n) for e, n in per.items())
        else:
            text = w("inv_plots_text", n=plot_biomass["plot_id"].nunique())
        rows.append((w("inv_plots"), text))
    rows.append((w("inv_parcels"), w("inv_parcels_text", n=len(parcels), project=project_rows)))
    if model_card:
        chosen = [
            f"{key}: {model_card[key].get('chosen')}"
            for key in ("satellite_model", "lidar_model")
            if isinstance(model_card.get(key), Mapping) and model_card[key].get("chosen")
        ]
        name = "; ".join(chosen) or model_card.get("selected_model", "see model_card.json")
        rows.append((w("inv_model"), str(name)))
    return rows


def species_table_rows(plots_qa: pd.DataFrame | None, w: Words) -> list[tuple[str, str]]:
    """The plots stage's summary of the trees whose species is outside the species table."""
    if plots_qa is None or "field" not in plots_qa.columns:
        return []
    rows = plots_qa.loc[plots_qa["field"] == SPECIES_TABLE_FIELD, "reason"]
    return [(w("inv_species"), str(text)) for text in rows]


def coverage_rows(map_coverage: Mapping[str, Any] | None, w: Words) -> list[tuple[str, str]]:
    """Per epoch, the share of forest-land cells each model mapped and the share left
    without a value (``rasters/coverage.json`` of the ``predict`` stage)."""
    rows = []
    for epoch, cov in ((map_coverage or {}).get("epochs") or {}).items():
        parts = [
            f"{v['name']} {v['cells']:,} ({fmt(100 * v['share'])} %)"
            for v in cov["by_model_source"].values()
            if v["cells"]
        ]
        rows.append((w("inv_coverage", epoch=epoch), w("inv_coverage_text",
                     cells=f"{cov['cells']:,}", cells_are=cov["cells_are"],
                     parts="; ".join(parts))))  # fmt: skip
    return rows


def warning_rows(
    recorded: Sequence[Mapping[str, Any]] | None, w: Words
) -> tuple[list[tuple[str, str]], bool]:
    """The pipeline's own warnings as ``(stage, message)`` rows, and whether libraries
    raised any others.

    ``recorded`` is the runner's ``.state/warnings.json``: per stage, its ``warnings`` (the
    pipeline's own, all shown: in the report's language when they have a code it has a
    text for, :meth:`Words.warning`, ``warning_codes``) and ``library_warnings`` (library
    noise such as distributed's "Sending large graph", listed in the manifest). The report
    points to those without counting them: which deprecation notices a library raises
    depends on its caches in the process, so their number differs between a first run and
    a reproduction of it in the same process, and the report must not.
    """
    rows: list[tuple[str, str]] = []
    library = False
    for entry in recorded or ():
        codes = entry.get("warning_codes", {})
        rows += [(str(entry["stage"]), w.warning(str(m), codes.get(m)))
                 for m in entry.get("warnings", [])]  # fmt: skip
        library = library or bool(entry.get("library_warnings"))
    return rows, library


def credit_step_list(total: Mapping[str, Any], w: Words) -> list[dict[str, str]]:
    """The project's credit calculation as ordered, labelled steps."""

    def t(key: str) -> str:
        return f"{fmt(total[key])} t CO2e"

    steps = [
        ("step_project", t("project_tco2e"), {"sd": t("project_sd_tco2e"),
         "period": fmt(total["period_yr"], 3), "area": fmt(total["area_ha"], 2)}),
        ("step_baseline", t("baseline_tco2e"),
         {"rate": fmt(total["baseline_rate_tco2e_ha_yr"], 3)}),
        ("step_leakage", t("leakage_tco2e"), {"pct": fmt(100 * total["leakage_fraction"], 1)}),
        ("step_net", t("net_tco2e"), {"sd": t("net_sd_tco2e")}),
        ("step_u", f"{fmt(total['uncertainty_pct'], 2)} %", {"t": fmt(total["t_value"], 4),
         "df": fmt(total["df"], 1), "hw": t("half_width_tco2e"),
         "estimator": total["estimator"]}),
        ("step_deduction", t("uncertainty_deduction_tco2e"),
         {"factor": fmt(total["uncertainty_factor"], 4), "rule": t("rule_deduction_tco2e")}),
        ("step_after", t("after_uncertainty_tco2e"), {}),
        ("step_buffer", t("buffer_tco2e"), {"pct": fmt(100 * total["buffer_fraction"], 1)}),
        ("step_credits", t("credits_tco2e"), {}),
        ("step_reversal", t("reversal_tco2e"), {}),
    ]  # fmt: skip
    # the deduction step says when the run's floor raised the methodology's own deduction
    floored = total["uncertainty_deduction_tco2e"] > total.get("rule_deduction_tco2e", math.inf)
    formula = {"step_deduction": "step_deduction_floor_f" if floored else "step_deduction_f"}
    return [
        {"key": key, "label": w(key), "value": v, "formula": w(formula.get(key, f"{key}_f"), **kw)}
        for key, v, kw in steps
    ]


def _parcel_rows(credits: pd.DataFrame) -> pd.DataFrame:
    """The project parcels' rows of a credit table (not TOTAL nor DECLARED)."""
    return credits.loc[~credits["parcel_id"].astype(str).isin([TOTAL_ID, DECLARED_ID])]


def _verdict(value: Any) -> str:
    """``yes``, ``no`` or ``unchecked`` of an ``eligible`` cell (CSV: True/False/empty)."""
    if value is None or pd.isna(value):
        return "unchecked"
    return "yes" if str(value).lower() in ("true", "1", "1.0") else "no"


def _credited(parcels: pd.DataFrame) -> list[bool]:
    """Per parcel row, whether it is in the credited total (not refused)."""
    if "eligible" not in parcels.columns:
        return [True] * len(parcels)
    return [_verdict(v) != "no" for v in parcels["eligible"]]


def eligibility_step(credits: pd.DataFrame, w: Words) -> dict[str, str] | None:
    """The step that says which project parcels the methodology's land rules refused or
    could not check (:mod:`pipeline.eligibility`); ``None`` without the columns."""
    if "eligible" not in credits.columns:
        return None
    parcels = _parcel_rows(credits)
    listed: dict[str, list[str]] = {"no": [], "unchecked": []}
    for p, v, r in zip(parcels["parcel_id"], parcels["eligible"], parcels["ineligible_reason"],
                       strict=True):  # fmt: skip
        listed.setdefault(_verdict(v), []).append(f"{p} ({r})")
    credited = _credited(parcels)
    area = fmt(parcels.loc[credited, "area_ha"].sum(), 2)
    parts = [w("eligibility_value", area=area)]
    if listed["no"]:
        parts.append(w("eligibility_refused", parcels="; ".join(listed["no"])))
    if listed["unchecked"]:
        parts.append(w("eligibility_unchecked", parcels="; ".join(listed["unchecked"])))
    if listed["no"] and (credits["parcel_id"] == DECLARED_ID).any():
        parts.append(w("eligibility_declared", row=DECLARED_ID))
    if len(parts) == 1:
        parts.append(w("eligibility_all"))
    return {
        "key": "eligibility",
        "label": w("step_eligibility"),
        "value": f"{sum(credited)} / {len(parcels)}",
        "formula": " ".join(parts),
    }


def compared_table(
    compared: Mapping[str, pd.DataFrame], job: ReportJob
) -> tuple[list[str], list[list[str]]]:
    """One row per methodology of ``stages.credits.compare``: its credited TOTAL."""
    w, c = job.words, job.words.column
    files = {m.id: f for m, f in job.credits.compare}
    shown = ("project_tco2e", "baseline_tco2e", "net_tco2e", "uncertainty_pct",
             "uncertainty_deduction_tco2e", "buffer_tco2e", "credits_tco2e")  # fmt: skip
    headers = [c("methodology"), w("file"), c("parcels_credited"), c("area_ha"),
               *(c(n) for n in shown)]  # fmt: skip
    rows = []
    for mid, table in compared.items():
        total = table.loc[table["parcel_id"] == TOTAL_ID].iloc[0]
        parcels = _parcel_rows(table)
        rows.append(
            [mid, files.get(mid, ""), f"{sum(_credited(parcels))} / {len(parcels)}",
             fmt(total["area_ha"], 2),
             *(fmt(total[n], 2 if n == "uncertainty_pct" else 1) for n in shown)]
        )  # fmt: skip
    return headers, rows


def rule_text(job: ReportJob) -> str:
    w = job.words
    rule = job.credits.methodology.uncertainty_rule
    if rule.kind == "discount_table":
        parts = []
        lower = 0.0
        for b in rule.bands:
            upper = (
                "" if b.max_uncertainty is None
                else w("rule_band_upper", upper=f"{100 * b.max_uncertainty:g}")
            )  # fmt: skip
            parts.append(w("rule_band", lower=f"{100 * lower:g}", upper=upper,
                           share=f"{100 * b.share_of_half_width:g}"))  # fmt: skip
            lower = b.max_uncertainty or lower
        return w("rule_table", bands="; ".join(parts), source=rule.source)
    return w("rule_threshold", threshold=f"{100 * (rule.threshold or 0):g}", source=rule.source)


def report_maps(
    job: ReportJob,
    *,
    sink: xr.DataArray | xr.Dataset,
    parcel_sink: gpd.GeoDataFrame,
    composite: xr.DataArray | None,
    chm: xr.DataArray | None,
    agb: xr.DataArray | None,
    carbon: xr.DataArray | None,
    figure: tuple[Words, figures.FigureText],
) -> tuple[list[Figure], list[str]]:
    """The report's maps, and the titles of those left out for lack of an input.

    ``figure`` is :func:`figure_words`: the words and fonts the PNGs are drawn with (the
    report's language unless no font has its glyphs); the headings and captions beside
    them are in the report's language.
    """
    sj, w = job.sink, job.words
    fw, text = figure
    e1, e2 = sj.epoch_start, sj.epoch_end
    per_ha = fw.column("sink_tco2e_ha_yr")
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
            title=fw("fig_rgb", epoch=e2),
            percentiles=job.rgb_stretch_percentiles,
            text=text,
        )
        lo, hi = job.rgb_stretch_percentiles
        caption = w("map_rgb_caption", bands="/".join(job.rgb_bands), lo=f"{lo:g}", hi=f"{hi:g}")
        maps.append(Figure("rgb", w("map_rgb", epoch=e2), caption, png))
    else:
        missing.append(w("map_rgb", epoch=e2))
    optional = [
        ("chm", chm, "m", {}),
        ("agb", agb, "Mg/ha", {"epoch": e2}),
        ("carbon", carbon, "Mg C/ha", {"epoch": e2}),
    ]
    for name, raster, units, kw in optional:
        if raster is None:
            missing.append(w(f"map_{name}", **kw))
            continue
        png = _map(name, raster, band=None, title=fw(f"map_{name}", **kw), units=units,
                   text=text, cmap="YlGn")  # fmt: skip
        maps.append(Figure(name, w(f"map_{name}", **kw), w(f"map_{name}_caption"), png))
    png = _map("sink", sink, band="sink_tco2e_ha_yr", title=fw("map_sink", start=e1, end=e2),
               units=per_ha, text=text, cmap="RdYlGn", diverging=True)  # fmt: skip
    maps.append(Figure("sink", w("map_sink", start=e1, end=e2), w("map_sink_caption"), png))
    png = _map("sink_sd", sink, band="sink_sd_tco2e_ha_yr", title=fw("map_sink_sd"),
               units=per_ha, text=text, cmap="magma")  # fmt: skip
    rho = f"{sj.epoch_error_correlation:g}"
    maps.append(Figure("sink_sd", w("map_sink_sd"), w("map_sink_sd_caption", rho=rho), png))
    png = figures.parcels_png(
        parcel_sink, column="sink_tco2e_ha_yr", title=fw("fig_parcels"), units=per_ha, text=text
    )
    maps.append(Figure("parcels", w("map_parcels"), w("map_parcels_caption"), png))
    return maps, missing


def diagnostic_figures(
    model_card: Mapping[str, Any] | None,
    plot_features: pd.DataFrame | None,
    w: Words,
    figure: tuple[Words, figures.FigureText],
) -> list[Figure]:
    """Observed vs predicted AGB and the residual map of the cross-validated plots
    (``figure``: the words and fonts of the PNGs, :func:`figure_words`)."""
    fw, text = figure
    diagnostics: list[Figure] = []
    pairs = observed_predicted(model_card, plot_features)
    if pairs is not None and len(pairs):
        resid = pairs["predicted"] - pairs["observed"]
        rmse = float(np.sqrt(np.mean(resid**2)))
        diagnostics.append(Figure("observed_vs_predicted", w("obs_pred"),
                                  w("obs_pred_caption", n=len(pairs), rmse=f"{rmse:.1f}"),
                                  figures.scatter_png(
                                      pairs["observed"], pairs["predicted"],
                                      title=fw("fig_cv"), units="Mg/ha", text=text)))  # fmt: skip
        if "x" in pairs.columns:
            diagnostics.append(Figure("residuals", w("residual_map"), w("residual_map_caption"),
                                      figures.residual_map_png(
                                          pairs["x"], pairs["y"], resid,
                                          title=fw("fig_residuals"), units="Mg/ha",
                                          text=text)))  # fmt: skip
    return diagnostics


def survey_rows(estimates: pd.DataFrame | None, w: Words) -> list[dict[str, str]]:
    """Headline cards of the chosen survey estimates: total, interval, estimator, map sum."""
    if estimates is None or estimates.empty:
        return [{"key": "survey-none", "label": w("survey_none"),
                 "value": w("survey_none_value"), "detail": w("survey_none_detail")}]  # fmt: skip
    rows = []
    for r in estimates[estimates["chosen"].astype(bool)].itertuples():
        kind, _, rest = str(r.quantity).partition("_")
        what = (
            w("quantity_stock", epoch=rest) if kind == "stock"
            else w("quantity_change", period=rest.replace("_", "-"))
        )  # fmt: skip
        named = ("inventory", PROJECT_SAMPLE, with_project_sample("inventory"))
        sample = w(f"sample_{r.sample}") if r.sample in named else r.sample
        systematic = float(getattr(r, "systematic_sd", np.nan))
        combined = (
            w("survey_combined", sys=fmt(systematic), hw=fmt(r.combined_half_width),
              lower=fmt(r.combined_lower), upper=fmt(r.combined_upper))
            if math.isfinite(systematic) else ""
        )  # fmt: skip
        rows.append(
            {
                "key": f"survey-{r.sample}-{r.quantity}",
                "label": w("survey_label", quantity=what, sample=sample),
                "value": f"{fmt(r.total)} ± {fmt(r.half_width)} {r.unit}",
                "detail": w("survey_detail", pct=fmt(100 * float(r.confidence), 0),
                            lower=fmt(r.lower), upper=fmt(r.upper),
                            estimator=w.estimator(str(r.estimator)), n=r.n_plots,
                            eff=fmt(r.relative_efficiency, 2), map_total=fmt(r.map_total))
                          + combined,
            }
        )  # fmt: skip
    return rows


def headline_rows(
    job: ReportJob,
    *,
    aoi: Mapping[str, Any],
    total: Mapping[str, Any],
    map_relative_sd: float | None = None,
) -> list[dict[str, str]]:
    """Headline numbers over all parcels (``aoi``: the all-parcels row of
    :func:`pipeline.report.rollups.rollup_tables`, its SDs by the spatial error model),
    and the credited project ``total``; the map sums with the conversion factors'
    relative systematic SD ``map_relative_sd`` as a separate term when it is known."""
    sj, w = job.sink, job.words
    e1, e2 = sj.epoch_start, sj.epoch_end
    sink_sum, sink_sd = float(aoi["sink_tco2e_yr"]), float(aoi["sink_sd_tco2e_yr"])
    stock_sum = float(aoi[f"carbon_{e2}_mg_c"])

    def systematic(value: float) -> str:
        if map_relative_sd is None:
            return ""
        return w("head_systematic", pct=fmt(100 * map_relative_sd, 1),
                 sd=fmt(map_relative_sd * abs(value)))  # fmt: skip

    return [
        {"key": "map-sink", "label": w("head_sink", start=e1, end=e2),
         "value": f"{fmt(sink_sum)} {w('unit_per_year')}",
         "detail": w("head_sink_detail", sd=fmt(sink_sd), pct=job.interval_pct,
                     lo=fmt(aoi["sink_lo_tco2e_yr"]), hi=fmt(aoi["sink_hi_tco2e_yr"]))
                   + systematic(sink_sum)},
        {"key": "map-stock", "label": w("head_stock", epoch=e2),
         "value": f"{fmt(stock_sum)} Mg C",
         "detail": w("head_stock_detail", sd=fmt(aoi[f"carbon_sd_{e2}_mg_c"]),
                     forest=fmt(aoi["forest_area_ha"]), grid=fmt(aoi["area_grid_ha"]))
                   + systematic(stock_sum)},
        {"key": "net", "label": w("head_net"), "value": f"{fmt(total['net_tco2e'])} t CO2e",
         "detail": w("head_net_detail", period=fmt(total["period_yr"], 2),
                     u=fmt(total["uncertainty_pct"], 1), estimator=total["estimator"])},
        {"key": "credits", "label": w("head_credits", methodology=job.credits.methodology.id),
         "value": f"{fmt(total['credits_tco2e'])} t CO2e",
         "detail": w("head_credits_detail", deduction=fmt(total["uncertainty_deduction_tco2e"]),
                     buffer=fmt(total["buffer_tco2e"]))},
    ]  # fmt: skip


def _columns(
    table: pd.DataFrame, spec: Sequence[tuple[str, str, int]], w: Words
) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of ``spec``'s columns present in ``table``: (column,
    header, digits); text columns are shown by :meth:`Words.value`."""
    spec = [c for c in spec if c[0] in table.columns]
    numeric = {c: pd.api.types.is_numeric_dtype(table[c]) for c, _, _ in spec}
    rows = [
        [fmt(r[c], d) if numeric[c] else w.value(c, r[c]) for c, _, d in spec]
        for _, r in table.iterrows()
    ]
    return [header for _, header, _ in spec], rows


def parcel_table(
    parcel_sink: gpd.GeoDataFrame, w: Words, *, epoch_start: str, epoch_end: str
) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted rows of the per-parcel table."""
    e1, e2 = epoch_start, epoch_end
    c = w.column
    pcols = [
        ("parcel_id", c("parcel_id"), 0), ("township", c("township"), 0),
        ("village", c("village"), 0), ("compartment", c("compartment"), 0),
        ("forest_type", c("forest_type"), 0), ("area_grid_ha", c("area_grid_ha"), 2),
        ("forest_area_ha", c("forest_area_ha"), 2),
        (f"carbon_{e1}_mg_c", c("carbon_mg_c", epoch=e1), 0),
        (f"carbon_{e2}_mg_c", c("carbon_mg_c", epoch=e2), 0),
        ("sink_tco2e_yr", c("sink_tco2e_yr"), 1), ("sink_sd_tco2e_yr", c("sink_sd_tco2e_yr"), 1),
        ("sink_lo_tco2e_yr", c("sink_lo_tco2e_yr"), 1),
        ("sink_hi_tco2e_yr", c("sink_hi_tco2e_yr"), 1),
        ("sink_tco2e_ha_yr", c("sink_tco2e_ha_yr"), 2),
        (f"mean_quality_{e2}", c("mean_quality"), 2), ("lidar_share", c("lidar_share"), 2),
    ]  # fmt: skip
    return _columns(parcel_sink, pcols, w)


def rollup_table(
    table: pd.DataFrame, attribute: str, w: Words, *, epoch_end: str
) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted rows of one roll-up (the last row: all parcels)."""
    e2, c = epoch_end, w.column
    spec = [
        (attribute, c(attribute), 0), ("n_parcels", c("n_parcels"), 0),
        ("area_grid_ha", c("area_grid_ha"), 2), ("area_grid_mu", c("area_mu"), 1),
        ("forest_area_ha", c("forest_area_ha"), 2),
        (f"carbon_{e2}_mg_c", c("carbon_mg_c", epoch=e2), 0),
        (f"carbon_sd_{e2}_mg_c", c("carbon_sd_mg_c", epoch=e2), 0),
        ("sink_tco2e_yr", c("sink_tco2e_yr"), 1), ("sink_sd_tco2e_yr", c("sink_sd_tco2e_yr"), 1),
        ("sink_lo_tco2e_yr", c("sink_lo_tco2e_yr"), 1),
        ("sink_hi_tco2e_yr", c("sink_hi_tco2e_yr"), 1),
    ]  # fmt: skip
    headers, rows = _columns(table, spec, w)
    for row, value in zip(rows, table[attribute], strict=True):
        if value == "":
            row[0] = w("no_value")
    rows[-1][0] = w("all_parcels")
    return headers, rows


def credit_table(credits: pd.DataFrame, w: Words) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted rows of the credit table (parcels and the total)."""
    c = w.column
    if "eligible" in credits.columns:
        parcel = credits.index.isin(_parcel_rows(credits).index)
        credits = credits.assign(
            eligible=[w(f"eligible_{_verdict(v)}") if p else "" for v, p in
                      zip(credits["eligible"], parcel, strict=True)],
            ineligible_reason=credits["ineligible_reason"].fillna(""),
        )  # fmt: skip
    ccols = [("parcel_id", c("unit"), 0), ("scope", c("scope"), 0), ("area_ha", c("area_ha"), 2)]
    ccols += [
        (n, c(n), 1) for n in ("project_tco2e", "baseline_tco2e", "leakage_tco2e", "net_tco2e")
    ]
    ccols += [("uncertainty_pct", c("uncertainty_pct"), 2)]
    ccols += [
        (n, c(n), 1)
        for n in ("uncertainty_deduction_tco2e", "buffer_tco2e", "credits_tco2e", "reversal_tco2e")
    ]
    ccols += [("eligible", c("eligible"), 0), ("ineligible_reason", c("ineligible_reason"), 0)]
    return _columns(credits, ccols, w)


def _json_script(data: Any) -> markupsafe.Markup:
    """``data`` as JSON safe inside a ``<script type="application/json">`` element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(ch, esc)
    return markupsafe.Markup(text)


def build_report(
    job: ReportJob,
    *,
    sink: xr.DataArray | xr.Dataset,
    parcel_sink: gpd.GeoDataFrame,
    credits: pd.DataFrame,
    aoi: Mapping[str, Any],
    rollups: Mapping[str, pd.DataFrame],
    rollup_files: Sequence[str] = (),
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
    compared: Mapping[str, pd.DataFrame] | None = None,
    systematic: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, bytes]]:
    """The report HTML and its quicklooks ``{name: png bytes}``.

    ``aoi`` and ``rollups`` are the all-parcels row and the per-attribute tables of
    :func:`pipeline.report.rollups.rollup_tables`; ``rollup_files`` the run-folder paths
    of the roll-up CSVs, named in the report; ``compared`` the credit tables of the
    methodologies of ``stages.credits.compare`` by id; ``systematic`` the estimate stage's
    record of the conversion factors' shared error (``estimates/systematic.json``).
    """
    sj, w = job.sink, job.words
    figure = figure_words(job.language)
    map_relative_sd = None if systematic is None else systematic.get("map_relative_sd")
    maps, missing = report_maps(
        job,
        sink=sink,
        parcel_sink=parcel_sink,
        composite=composite,
        chm=chm,
        agb=agb,
        carbon=carbon,
        figure=figure,
    )
    diagnostics = diagnostic_figures(model_card, plot_features, w, figure)
    total = credits.loc[credits["parcel_id"] == TOTAL_ID].iloc[0].to_dict()
    parcel_columns, parcel_rows = parcel_table(
        parcel_sink, w, epoch_start=sj.epoch_start, epoch_end=sj.epoch_end
    )
    credit_columns, credit_rows = credit_table(credits, w)
    compared_columns, compared_rows = compared_table(compared or {}, job)
    eligibility = eligibility_step(credits, w)
    inventory = (
        inventory_rows(
            w,
            items=items or {},
            lidar_tiles=lidar_tiles,
            plot_biomass=plot_biomass,
            parcels=parcel_sink,
            project_rows=sum(_credited(_parcel_rows(credits))),
            model_card=model_card,
        )
        + species_table_rows(plots_qa, w)
        + coverage_rows(map_coverage, w)
    )
    warning_list, any_library_warnings = warning_rows(warnings, w)
    method = job.credits.methodology
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(
        resources.files("pipeline.report").joinpath("template.html").read_text(encoding="utf-8")
    )
    agg = sj.parcel_error_aggregation
    fonts = strings()["fonts"]
    html = template.render(
        t=w.texts(),
        # the page's font stack, every script's fonts (the names are strings.yaml's own)
        font_stack=markupsafe.Markup(", ".join(f'"{f}"' for f in fonts["latin"] + fonts["cjk"])),
        title=job.title,
        simulated=job.simulated,
        run_line=w("run_line", region=job.region, start=sj.epoch_start, end=sj.epoch_end,
                   ref_start=sj.reference_start.isoformat(),
                   ref_end=sj.reference_end.isoformat(), years=f"{sj.years:.3f}"),
        config_sha256=job.config_sha256,
        interval_note=w("interval_note", pct=job.interval_pct, aggregation=agg,
                        how=w(f"aggregation_{agg}"), rho=sj.epoch_error_correlation)
                      + (w("systematic_note", draws=systematic["draws"])
                         if map_relative_sd is not None and systematic else ""),
        headline=[*survey_rows(estimates, w),
                  *headline_rows(job, aoi=aoi, total=total, map_relative_sd=map_relative_sd)],
        maps=maps,
        missing_maps=w("not_available", what=", ".join(missing)) if missing else "",
        diagnostics=diagnostics,
        cv_metrics=cv_metric_rows(model_card),
        rollups=[
            (w("rollup_by", attribute=w.column(attr)),
             *rollup_table(table, attr, w, epoch_end=sj.epoch_end))
            for attr, table in rollups.items()
        ],
        rollups_note=w("rollups_note", files=", ".join(rollup_files)),
        parcel_columns=parcel_columns,
        parcel_rows=parcel_rows[: job.parcel_page_rows],
        parcel_data=_json_script(parcel_rows),
        parcel_pages=w("parcel_pages", shown="{shown}", n=len(parcel_rows),
                       file=PARCEL_SINK_CSV_RELPATH),
        page_rows=job.parcel_page_rows,
        credit_steps=[*([eligibility] if eligibility else []), *credit_step_list(total, w)],
        compared_columns=compared_columns,
        compared_rows=compared_rows,
        credit_columns=credit_columns,
        credit_rows=credit_rows,
        methodology_line=w("methodology_line", name=method.name,
                           file=job.credits.methodology_file, rule=rule_text(job)),
        methodology_name=method.name,
        provenance=list(method.provenance),
        inventory=inventory,
        warnings=warning_list,
        library_warnings=w("library_warnings"),
        any_library_warnings=any_library_warnings,
    )  # fmt: skip
    quicklooks = {f.name: f.png for f in [*maps, *diagnostics]}
    return html, quicklooks
