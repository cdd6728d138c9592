"""Stage ``plots``: field tree lists -> plot AGB/BGB/carbon/CO2e with Monte Carlo error.

A thin wrapper of :func:`models.plot_biomass.plot_biomass` (the science and its data files
live in :mod:`models`): it joins plot areas from the plot layer, maps ``PlotsParams`` to the
model options and turns model errors into :class:`~pipeline.errors.InputDataError` /
:class:`~pipeline.errors.ConfigError`.

Inputs (loaded by the runner): ``trees`` (CSV or a sheet of an XLSX workbook,
``sources.trees_sheet`` -> DataFrame: plot_id, tree_id, species,
dbh_cm, optional epoch (absent: one census, ``stages.plots.tree_epoch`` or the config's only
epoch), height_m, wood_density_g_cm3, age_yr, plot_area_ha) and
``plot_locations`` (GeoPackage -> GeoDataFrame with plot_id and plot_area_ha, or None).
Outputs: ``plots/trees.csv``, ``plots/plot_biomass.csv``, ``plots/qa.csv``.

Command line: ``forest-carbon plots TREES.csv|TREES.xlsx [--sheet NAME] [--plots PLOTS.gpkg]
--out DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from models.errors import AllometryError, PlotDataError, PlotOptionsError
from models.plot_biomass import DEFAULT_EPOCH, PlotBiomassOptions, plot_biomass
from pipeline.config import Config, PlotsParams, StandaloneParams
from pipeline.contracts import PLOT_BIOMASS_RELPATH, PLOTS_QA_RELPATH, TREES_RELPATH, RunLayout
from pipeline.errors import ConfigError, InputDataError
from pipeline.stage import Stage
from pipeline.units import M2_PER_HA


def plot_areas(plot_locations: pd.DataFrame | None) -> pd.Series | None:
    """Plot area (ha) by plot_id from the plot layer (``plot_area_ha`` or polygon area).

    Raises
    ------
    InputDataError
        The layer has no ``plot_id`` column, or neither ``plot_area_ha`` nor projected
        polygons to measure.
    """
    if plot_locations is None:
        return None
    if "plot_id" not in plot_locations.columns:
        raise InputDataError("plot layer: no plot_id column (needed to join plot areas to trees)")
    if "plot_area_ha" in plot_locations.columns:
        area = pd.to_numeric(plot_locations["plot_area_ha"], errors="coerce")
    else:
        crs = getattr(plot_locations, "crs", None)
        if crs is None or not crs.is_projected:
            raise InputDataError(
                "plot layer: no plot_area_ha column and no projected CRS to measure the plot "
                "polygons; add plot_area_ha (ha)"
            )
        area = plot_locations.geometry.area / M2_PER_HA
    return pd.Series(area.to_numpy(), index=plot_locations["plot_id"].to_numpy())


def options_from_params(params: PlotsParams) -> PlotBiomassOptions:
    """The model options of a ``PlotsParams`` section.

    A seed left unset outside a run (where :func:`plots_params` sets the run's) is the
    stand-alone seed of :class:`pipeline.config.StandaloneParams`.
    """
    return PlotBiomassOptions(
        equation=params.equation,
        chave_e=params.chave_e,
        n_draws=params.mc_draws,
        hd_model=params.hd_model,
        dbh_error=params.dbh_error,
        seed=StandaloneParams().seed if params.seed is None else params.seed,
        tree_epoch=DEFAULT_EPOCH if params.tree_epoch is None else params.tree_epoch,
    )


def plots(
    params: PlotsParams, *, trees: pd.DataFrame, plot_locations: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Plot biomass, carbon and CO2e per plot and epoch with their uncertainty.

    Returns
    -------
    dict
        ``plots/trees.csv`` (every input row with equation, heights, wood density,
        agb_kg, bgb_kg, carbon_kg), ``plots/plot_biomass.csv``, ``plots/qa.csv``.

    Raises
    ------
    InputDataError
        Missing columns, a numeric column without a number, a plot without area, or a
        plot/epoch without any usable tree for a reason other than having no measurable
        stem (named in the message; a plot whose rows all have a blank DBH or DBH 0 is a
        zero-biomass plot with a QA row).
    ConfigError
        ``stages.plots.equation`` is not a registered equation, or an eq. 7 equation is
        chosen without ``stages.plots.chave_e``.
    """
    options = options_from_params(params)
    try:
        tree_out, plot_out, qa = plot_biomass(trees, plot_areas(plot_locations), options=options)
    except PlotOptionsError as err:
        raise ConfigError(f"stages.plots: {err}") from None
    except (PlotDataError, AllometryError) as err:
        raise InputDataError(f"tree list: {err}") from None
    return {TREES_RELPATH: tree_out, PLOT_BIOMASS_RELPATH: plot_out, PLOTS_QA_RELPATH: qa}


def plots_params(config: Config) -> PlotsParams:
    """The stage's parameters: ``stages.plots`` with the run seed when it sets none, and
    the config's epoch as the epoch of a tree list without one when the config has one."""
    params = config.stages.plots
    if params.seed is None:
        params = params.model_copy(update={"seed": config.seed})
    if params.tree_epoch is None and len(config.epochs) == 1:
        params = params.model_copy(update={"tree_epoch": config.epochs[0].name})
    return params


def plots_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    """The tree list and, when configured, the plot layer.

    Raises
    ------
    ConfigError
        ``sources.trees`` is not set.
    """
    if config.sources.trees is None:
        raise ConfigError(
            "sources.trees: no tree list configured; the plots stage needs a CSV/XLSX "
            "with plot_id, epoch, tree_id, species, dbh_cm"
        )
    inputs = {"trees": config.sources.trees}
    if config.sources.plot_locations is not None:
        inputs["plot_locations"] = config.sources.plot_locations
    return inputs


STAGE = Stage(name="plots", func=plots, params=plots_params, inputs=plots_inputs)
