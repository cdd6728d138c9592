"""Rerun a recorded run from its manifest into another folder and compare its outputs.

1. **Inputs first.** The inputs are read and checked as ``run`` checks them
   (:meth:`pipeline.runner.Runner.check_inputs`, for the recorded stages): an input that
   is invalid now stops the reproduction (exit 2) naming the file and the problem, also
   with ``allow_changed_inputs``. Then every file the manifest pins is compared with its
   recorded sha256: the input files (``inputs.<stage.input>``) and the STAC items the run
   froze (``items/`` of the run folder, which the rerun searches instead of the catalog);
   a file changed or missing is named by its path, and the reproduction stops (exit 2),
   since its outputs could only differ. ``allow_changed_inputs`` reruns anyway and lists
   them beside the verdicts.
2. **From anywhere.** The config's relative paths are resolved against the folder the
   recorded run resolved them against: the folder above the run folder when the run
   folder sits at the config's relative ``output_dir`` (so a moved project still works),
   else the recorded ``working_dir``. The reproduction runs there whatever the caller's
   working directory (inside the run folder included).
3. **Rerun.** The stored config (its hash checked) runs with the STAC items the original
   run froze (copied to ``pinned/items`` of the new folder under its lock, so the acquire
   stage never searches again), every recorded stage forced. The new folder may be new,
   empty or an earlier reproduction (it holds ``pinned/``): a failed attempt does not
   block a retry.
4. **Compare.** Every output's content checksum against the manifest's: identical,
   different or missing.

Exit codes of ``forest-carbon reproduce``: 0 all identical, 3 some different or missing,
2 bad input (manifest, changed inputs, output folder), 1 internal error.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.config import parse_config
from pipeline.contracts import ITEMS_DIR, RunLayout
from pipeline.errors import ConfigError, InputDataError
from pipeline.runner import Runner, RunOptions
from pipeline.stage import Stage


@dataclass(frozen=True)
class Comparison:
    outputs: tuple[tuple[str, str], ...]  # (relpath, identical|different|missing)
    #: input files changed since the recorded run: ``"<path>: changed"`` or ``": missing"``
    changed_inputs: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return all(v == "identical" for _, v in self.outputs)


def recorded_working_dir(run_dir: Path, recorded: Mapping[str, Any]) -> Path:
    """The folder the recorded run resolved its config's relative paths against."""
    output_dir = Path(str(recorded.get("config", {}).get("output_dir", "")))
    if str(output_dir) not in ("", ".") and not output_dir.is_absolute():
        parts = Path(os.path.normpath(output_dir)).parts
        if run_dir.parts[-len(parts) :] == parts:
            return Path(*run_dir.parts[: -len(parts)])
    working_dir = recorded.get("working_dir")
    if working_dir and Path(working_dir).is_dir():
        return Path(working_dir)
    return Path.cwd()


def changed_inputs(recorded: Mapping[str, Any], run_dir: Path) -> list[str]:
    """The recorded input files whose sha256 changed, or that are gone (by path), and the
    frozen STAC items of ``run_dir`` the same (``items/``, recorded as outputs)."""
    changed = []
    for rel, rec in sorted(recorded.get("outputs", {}).items()):
        if Path(rel).parts[0] != ITEMS_DIR or "file_sha256" not in rec:
            continue
        path = run_dir / rel
        if not path.is_file():
            changed.append(f"{path}: missing")
        elif io.file_sha256(path) != rec["file_sha256"]:
            changed.append(f"{path}: changed")
    for rec in recorded.get("inputs", {}).values():
        found = []
        for name, sha in (rec.get("files") or {}).items():
            if not Path(name).is_file():
                found.append(f"{name}: missing")
            elif io.file_sha256(Path(name)) != sha:
                found.append(f"{name}: changed")
        if not found:
            # a file added to an input folder, or a manifest without per-file records
            paths = tuple(Path(p) for p in rec["paths"])
            try:
                now = io.input_checksum(paths if len(paths) > 1 else paths[0])
            except InputDataError:
                now = None
            if now != rec["sha256"]:
                what = "missing" if now is None else "changed"
                found.append(f"{', '.join(rec['paths'])}: {what}")
        changed.extend(found)
    return changed


def _check_out(out: Path, run_dir: Path) -> None:
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {out}: that is the recorded run's own folder; give another")
    if out.exists() and any(out.iterdir()) and not (out / "pinned").is_dir():
        raise ConfigError(
            f"--out {out}: the folder exists and is not an earlier reproduction (it has no "
            "pinned/ folder); give a new folder for the reproduction"
        )


def reproduce(
    manifest_path: Path,
    stages: Sequence[Stage],
    *,
    out: Path,
    scheduler: str | None = None,
    quiet: bool = False,
    allow_changed_inputs: bool = False,
) -> Comparison:
    """Rerun the run recorded in ``manifest_path`` into ``out`` and compare (module
    docstring)."""
    manifest_path = Path(os.path.abspath(manifest_path))
    out = Path(os.path.abspath(out))
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path}: manifest not found")
    try:
        recorded = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputDataError(f"{manifest_path}: not a run manifest (not JSON: {err})") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("config"), dict):
        raise InputDataError(f"{manifest_path}: not a run manifest (it holds no 'config')")
    run_dir = manifest_path.parent
    _check_out(out, run_dir)
    with contextlib.chdir(recorded_working_dir(run_dir, recorded)):
        config = parse_config(
            recorded["config"], source=str(manifest_path), overrides={"output_dir": str(out)}
        )
        if config.sha256 != recorded.get("config_sha256"):
            raise ConfigError(
                f"{manifest_path}: the stored config does not match its recorded hash"
            )
        items = RunLayout(run_dir).path(ITEMS_DIR)
        options = RunOptions(
            stages=tuple(recorded.get("stages", {})) or None,
            force=True,
            scheduler=scheduler,
            quiet=quiet,
            pinned_items=items if items.is_dir() else None,
        )
        runner = Runner(config, stages, options=options)
        runner.check_inputs()
        changed = changed_inputs(recorded, run_dir)
        if changed and not allow_changed_inputs:
            raise InputDataError(
                f"{manifest_path}: input files differ from the recorded run's: "
                f"{'; '.join(changed)}; restore them, or add --allow-changed-inputs to "
                "rerun and compare anyway"
            )
        runner.run()
    verdicts = []
    for rel, rec in sorted(recorded.get("outputs", {}).items()):
        path = out / rel
        if not path.is_file():
            verdicts.append((rel, "missing"))
        else:
            same = io.content_checksum(path) == rec.get("checksum")
            verdicts.append((rel, "identical" if same else "different"))
    return Comparison(outputs=tuple(verdicts), changed_inputs=tuple(changed))
