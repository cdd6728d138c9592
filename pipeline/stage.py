"""What a pipeline stage is.

A stage is a pure function of a frozen parameter object and in-memory inputs that
returns its outputs as in-memory objects keyed by their path in the run folder. The
runner (:mod:`pipeline.runner`) alone resolves input files, loads them, calls the
stage, computes lazy results and writes them atomically. Stage modules never import
the runner nor each other: the run folder's paths and what stages share are in
:mod:`pipeline.contracts`.

Loading by the runner, by the suffix of each input path a stage declares:

``.tif``                     lazy ``xarray.DataArray`` (dims ``band, y, x``, Dask chunks)
``.gpkg``, ``.geojson``,     ``geopandas.GeoDataFrame``
``.shp``
``.csv``                     ``pandas.DataFrame``
``.json``                    the parsed JSON value
anything else, a directory,  passed on as the ``Path`` (or tuple of paths); the stage
or a tuple of paths          reads it lazily itself (LAS/LAZ tiles, STAC assets)

Inputs named ``group.key`` are passed as one argument ``group={key: loaded, ...}`` (e.g.
``items.2019`` and ``items.2024`` become ``items={"2019": ..., "2024": ...}``).

Writing by the runner, by the type of each returned object:

``xarray.DataArray`` / ``Dataset``   Cloud Optimized GeoTIFF (``.tif``); a Dataset's
                                     variables, or a DataArray's ``band`` coordinate,
                                     become band descriptions; ``units`` and
                                     ``_FillValue``/``nodata`` attributes are kept
``geopandas.GeoDataFrame``           GeoPackage (``.gpkg``) or GeoJSON
``pandas.DataFrame``                 CSV
``dict`` / ``list``                  JSON (sorted keys)
``str``                              text (HTML, Markdown)
``bytes``                            binary (PNG)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.contracts import RunLayout

InputSpec = Path | tuple[Path, ...]


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes
    ----------
    name
        The stage's name, as used by ``--stages``.
    func
        ``func(params, **inputs) -> {relpath: object}``: pure, no file I/O of its own
        except lazy reads of the raw inputs passed to it as paths.
    params
        Picks the stage's frozen parameter object from the config (a pydantic model or
        frozen dataclass; it is part of the stage's fingerprint).
    inputs
        ``inputs(config, layout) -> {name: path or tuple of paths}``: every file the stage
        reads; their checksums are part of the fingerprint and go into the manifest.
    results
        Optional ``results(outputs) -> JSON-able``: the figures of the stage's outputs that
        the manifest records under ``results.<stage>`` (e.g. the survey totals), so that a
        verifier reads them beside the checksums.
    scratch
        The stage is also called with ``scratch=``: an empty folder in the run folder, that
        every Dask worker sees, for working files its lazy outputs read (the LiDAR stage's
        staged chunks); the runner removes it once the outputs are written
        (:func:`pipeline.run_folder.scratch_folder`).
    """

    name: str
    func: Callable[..., Mapping[str, Any]]
    params: Callable[[Config], Any]
    inputs: Callable[[Config, RunLayout], Mapping[str, InputSpec]]
    results: Callable[[Mapping[str, Any]], Any] | None = None
    scratch: bool = False
