"""The pipeline's stages, in the order they run (DESIGN §1).

Each entry binds a pure stage function to the part of the config it takes and to the
files it reads. Stage modules hold the functions; this registry is the only place that
knows the run-folder paths connecting one stage's outputs to the next one's inputs.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.stage import RunLayout, Stage
from pipeline.stages import acquire, composite

#: where ``reproduce`` puts the original run's frozen STAC items
PINNED_ITEMS = "pinned/items"


def _acquire_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    inputs: dict[str, Path] = {"aoi": config.aoi}
    pinned = layout.path(PINNED_ITEMS)
    if pinned.is_dir():  # a reproduction: the recorded items, never a new search
        inputs.update({f"frozen.{p.stem}": p for p in sorted(pinned.glob("*.json"))})
        return inputs
    src = config.sources.catalog
    if src.kind == "local" and src.location:
        inputs["catalog_file"] = Path(src.location)
    return inputs


def _composite_inputs(config: Config, layout: RunLayout) -> dict[str, Path]:
    inputs = {"aoi": config.aoi}
    terrain = acquire.items_relpath(acquire.TERRAIN_KEY)
    if config.sources.catalog.dem_collection:
        inputs["terrain_items"] = layout.path(terrain)
    for e in config.epochs:
        inputs[f"items.{e.name}"] = layout.path(acquire.items_relpath(e.name))
    return inputs


STAGES: tuple[Stage, ...] = (
    Stage("acquire", acquire.acquire, acquire.AcquireJob.from_config, _acquire_inputs),
    Stage("composite", composite.composite, composite.CompositeJob.from_config, _composite_inputs),
)
