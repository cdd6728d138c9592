"""Rerun a recorded run from its manifest into a fresh folder and compare its outputs.

The run is repeated from the resolved config stored in the manifest, with the STAC items
frozen by the original run (copied to ``pinned/items`` in the new folder, so the acquire
stage never searches again). Every output's content checksum is compared with the
manifest's: identical, different or missing. Inputs whose checksums changed since the
recorded run are listed too, since they explain a difference.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import io
from pipeline.config import parse_config
from pipeline.contracts import ITEMS_DIR, PINNED_ITEMS_DIR, RunLayout
from pipeline.errors import ConfigError, InputDataError
from pipeline.runner import Runner, RunOptions
from pipeline.stage import Stage


@dataclass(frozen=True)
class Comparison:
    outputs: tuple[tuple[str, str], ...]  # (relpath, identical|different|missing)
    changed_inputs: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return all(v == "identical" for _, v in self.outputs)


def reproduce(
    manifest_path: Path,
    stages: Sequence[Stage],
    *,
    out: Path,
    scheduler: str | None = None,
    quiet: bool = False,
) -> Comparison:
    """Rerun the run recorded in ``manifest_path`` into ``out`` (a new folder) and compare."""
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path}: manifest not found")
    if out.exists():
        raise ConfigError(f"{out}: folder exists; give a new folder for the reproduction")
    recorded = json.loads(manifest_path.read_text())
    config = parse_config(
        recorded["config"], source=str(manifest_path), overrides={"output_dir": str(out)}
    )
    if config.sha256 != recorded.get("config_sha256"):
        raise ConfigError(f"{manifest_path}: the stored config does not match its recorded hash")
    items = RunLayout(manifest_path.parent).path(ITEMS_DIR)
    if items.is_dir():
        shutil.copytree(items, RunLayout(out).path(PINNED_ITEMS_DIR))
    ran = tuple(recorded.get("stages", {}))
    options = RunOptions(stages=ran or None, force=True, scheduler=scheduler, quiet=quiet)
    Runner(config, stages, options=options).run()

    changed = []
    for name, rec in recorded.get("inputs", {}).items():
        paths = tuple(Path(p) for p in rec["paths"])
        try:
            now = io.input_checksum(paths if len(paths) > 1 else paths[0])
        except InputDataError:
            now = None
        if now != rec["sha256"]:
            changed.append(name)
    verdicts = []
    for rel, rec in sorted(recorded.get("outputs", {}).items()):
        path = out / rel
        if not path.is_file():
            verdicts.append((rel, "missing"))
        else:
            same = io.content_checksum(path) == rec["checksum"]
            verdicts.append((rel, "identical" if same else "different"))
    return Comparison(outputs=tuple(verdicts), changed_inputs=tuple(changed))
