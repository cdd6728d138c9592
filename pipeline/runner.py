"""The runner: resolves the config, runs the stages in order, records the manifest.

For each selected stage the runner

1. resolves the stage's input files and takes their checksums;
2. fingerprints the stage: its name, its frozen parameters, its inputs' checksums and
   the code's source hash. If the fingerprint equals the one recorded after the stage's
   last successful run and every recorded output is still on disk with the same bytes,
   the stage is skipped (``--force`` reruns it);
3. loads the inputs, calls the stage function, and writes every returned output
   atomically (temporary name, then rename: see :mod:`pipeline.io`), computing lazy
   rasters block by block on the Dask cluster;
4. records the stage's state (``.state/<stage>.json``), rewrites ``manifest.json`` and
   rebuilds the run's STAC catalog from it (``catalog.json``, :mod:`pipeline.run_catalog`).

A run killed at any point leaves complete files or none under their final names; the
stage that was running has no new state record, so the next call reruns it and skips the
ones before it. A stage's state holds everything the manifest says of it (outputs with
their checksums, STAC items, results), so a run killed after a stage's state was written
but before the manifest was gets the manifest's records back from the state when the
next call skips the stage. Before writing anything the runner claims the run folder
(:func:`pipeline.run_folder.claim`): it refuses system folders and folders that are not
run folders, locks the folder against a second run, and removes the temporaries a killed
run recorded in its journal (and only those).

Stale stages: with ``--stages``, the stages left out are checked too. One whose inputs,
parameters or code changed since it ran, or which reads the outputs of such a stage, is
*stale*: before the run, a selected stage that reads a stale stage's outputs is refused
(add that stage to ``--stages``); after it, every stale stage is marked
``stale: <reason>`` in ``stages`` and its outputs (with their STAC items and results) move
from ``outputs`` to ``stale.<stage>``, so the manifest never lists an output the current
config and inputs did not produce. A later run reruns it (its fingerprint differs) or,
if its inputs are back to what they were, moves its records back.

The manifest (DESIGN §3) holds the resolved config and its hash, the code version, key
package versions, every input with its checksum (STAC items by id and href), every output
with a content checksum (and the sha256 of its bytes), the seed, when the run started and
each stage finished, each stage's wall time and peak memory (of the run's process tree, of
the Dask workers together and of the busiest worker: the last also with ``--scheduler``,
where the workers are not in the run's process tree), the warnings each stage raised, and
the key figures of the stages that declare them (``results``: the survey totals).

The console's lines (the dashboard's address, each stage started, skipped or finished,
the warnings) go also, without colours and also under ``--quiet``, into ``run.log`` in the
run folder, appended per run after a line with the time, the region and the stages; the
lines before the folder is claimed (the input checks' warnings) are kept until it is, and
a run that fails ends its part with the error.

Warnings: the Python warnings raised in this process while a stage loads its inputs, runs
and has its outputs written are caught (:func:`warnings.catch_warnings`), printed on the
console (also under ``--quiet``: they are not chatter) and kept in the stage's state and in
the manifest: the project's own (:class:`~pipeline.errors.PipelineWarning`,
:class:`~models.errors.ModelsWarning`) under
``stages.<stage>.warnings``, every other one (library noise such as distributed's "Sending
large graph") under ``stages.<stage>.library_warnings``. A skipped stage keeps the warnings
of the run that made its outputs. Before each stage the runner writes
``.state/warnings.json``: the warnings of the stages before it in pipeline order, which the
``report`` stage reads as an input (so the report reruns only when they change). Warnings
raised inside Dask tasks on worker processes are printed by the workers, not caught here.
The warnings of the input checks before the run (:meth:`Runner.check_inputs`) join those
of the first selected stage that reads the file they are about. A warning's code and
values (:class:`~models.errors.CodedWarning`, the base of both classes) are recorded beside
its message, in ``stages.<stage>.warning_codes``, so a report in another language can say it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from models.errors import CodedWarning, ModelsWarning
from pipeline import io, run_folder
from pipeline.config import Config
from pipeline.contracts import PINNED_ITEMS_DIR, RunLayout
from pipeline.errors import ConfigError, ForestCarbonError, PipelineWarning
from pipeline.inputs import read_settings
from pipeline.run_catalog import write_catalog
from pipeline.stage import Stage

if TYPE_CHECKING:
    from pipeline.inputs import CheckWarning

#: packages whose versions go into the manifest
KEY_PACKAGES = (
    "forest-carbon",
    "numpy",
    "scipy",
    "pandas",
    "xarray",
    "dask",
    "distributed",
    "rasterio",
    "odc-stac",
    "odc-geo",
    "pystac",
    "pystac-client",
    "laspy",
    "lazrs",
    "geopandas",
    "shapely",
    "pyproj",
    "scikit-learn",
    "exactextract",
    "pydantic",
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to compute (not part of any fingerprint)."""

    stages: tuple[str, ...] | None = None
    force: bool = False
    scheduler: str | None = None
    quiet: bool = False
    #: frozen STAC items to copy to ``pinned/items`` first (``reproduce``: no new search)
    pinned_items: Path | None = None


@dataclass(frozen=True)
class Fingerprint:
    """A stage's parameters and inputs as they are now, and the hash of them and the code."""

    params: Any
    specs: dict[str, Path | tuple[Path, ...]]
    #: per input, every file with its sha256 (:func:`pipeline.io.input_file_sha256`)
    files: dict[str, dict[Path, str]]
    checksums: dict[str, str]
    value: str


@dataclass
class StageRecord:
    status: str
    wall_s: float
    #: peak resident memory of the run's process tree (MB)
    peak_rss_mb: float | None = None
    #: peak of the Dask workers' summed memory (MB, the scheduler's view)
    peak_cluster_mb: float | None = None
    #: peak resident memory of the busiest Dask worker (MB, the workers' own samples)
    peak_worker_mb: float | None = None
    #: when the stage finished (UTC, ISO 8601): the ``created`` time of its outputs
    finished: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    #: the pipeline's own warnings raised while the stage ran (messages, in order)
    warnings: list[str] = field(default_factory=list)
    #: other warnings (libraries): ``"Category (module file:line): message"``
    library_warnings: list[str] = field(default_factory=list)
    #: the codes of those of ``warnings`` that have one: ``{message: {"code", "values"}}``
    warning_codes: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------- fingerprints


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path | dt.date):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [_jsonable(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj


def canonical(obj: Any) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), default=str)


def source_sha256() -> str:
    """Hash of the code and science data that produce the numbers."""
    h = hashlib.sha256()
    for pkg in ("pipeline", "models", "data_catalog"):
        base = PROJECT_ROOT / pkg
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix in {".py", ".yaml", ".yml", ".csv", ".json", ".html"}:
                h.update(str(p.relative_to(PROJECT_ROOT)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def code_version() -> dict[str, Any]:
    info: dict[str, Any] = {
        "package": metadata.version("forest-carbon"),
        "source_sha256": source_sha256(),
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def package_versions() -> dict[str, str]:
    out = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def group_inputs(loaded: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs named ``group.key`` become one argument ``group={key: value, ...}``."""
    out: dict[str, Any] = {}
    for name, value in loaded.items():
        group, dot, key = name.partition(".")
        if dot:
            out.setdefault(group, {})[key] = value
        else:
            out[name] = value
    return out


def sort_warnings(
    caught: Sequence[warnings.WarningMessage],
) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """The pipeline's own warnings and the others (libraries), each message once, in order,
    and the codes of the own ones that have one, by message (:class:`CodedWarning`)."""
    own: list[str] = []
    other: list[str] = []
    codes: dict[str, dict[str, Any]] = {}
    for w in caught:
        if issubclass(w.category, PipelineWarning | ModelsWarning):
            message, into = str(w.message), own
            coded = w.message.coded() if isinstance(w.message, CodedWarning) else None
            if coded is not None:
                codes[message] = coded
        else:
            where = "/".join(Path(w.filename).parts[-2:])
            message, into = f"{w.category.__name__} ({where}:{w.lineno}): {w.message}", other
        if message not in into:
            into.append(message)
    return own, other, codes


# --------------------------------------------------------------------------- memory


#: seconds between two samples of the run's memory
RSS_INTERVAL_S = 0.1
#: seconds between two walks of the process tree for its processes (a walk reads every
#: process of the machine; the tree changes only when a local cluster's worker process
#: starts or restarts)
TREE_INTERVAL_S = 2.0


@contextmanager
def peak_rss() -> Iterator[list[float]]:
    """Sample this process tree's resident memory; yields a one-element list of the peak (MB).

    Every :data:`RSS_INTERVAL_S` the sampler reads the memory of the processes it knows
    (``/proc/<pid>/statm``, microseconds each), and every :data:`TREE_INTERVAL_S` it walks
    the tree for them again: a walk at every sample cost 3.1 to 3.3 % of a tiny run's
    CPU time, this costs 0.5 to 0.6 % (docs/performance.md).
    """
    peak = [0.0]
    stop = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        procs: list[psutil.Process] = []
        walk_at = 0.0
        while True:
            if time.monotonic() >= walk_at:
                procs = [me, *me.children(recursive=True)]
                walk_at = time.monotonic() + TREE_INTERVAL_S
            rss = 0
            for proc in procs:
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    continue
            peak[0] = max(peak[0], rss / 2**20)
            if stop.wait(RSS_INTERVAL_S):
                return

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


def _monitor_count(dask_worker: Any) -> int:
    """How many samples a worker's system monitor has taken."""
    count: int = dask_worker.monitor.count
    return count


def _monitor_peak(since: Mapping[str, int], dask_worker: Any) -> float:
    """A worker's peak resident memory (bytes) in its monitor's samples after ``since``,
    or its latest sample if it took none since."""
    monitor = dask_worker.monitor
    samples = monitor.range_query(since.get(dask_worker.address, 0))["memory"]
    return max((m for m in samples if m is not None), default=monitor.quantities["memory"][-1])


@contextmanager
def peak_worker_rss(client: Any) -> Iterator[list[float | None]]:
    """The peak resident memory (MB) of the busiest Dask worker while the block runs;
    yields a one-element list, filled on exit.

    Read from the samples every worker's own system monitor takes anyway
    (``distributed.admin.system-monitor``: every 0.5 s, the last 7,200 kept, one hour),
    so it costs two calls to the workers and no sampling of its own; of a stage longer
    than an hour it is the peak of the last hour. A worker that cannot answer (it died or
    is restarting) is left out rather than failing the stage.
    """
    peak: list[float | None] = [None]
    since = client.run(_monitor_count, on_error="ignore")
    yield peak
    peaks = client.run(_monitor_peak, since, on_error="ignore")
    peak[0] = max(peaks.values()) / 2**20 if peaks else None


# --------------------------------------------------------------------------- the run


class Runner:
    """Runs ``stages`` for ``config`` into ``layout`` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        stages: Sequence[Stage],
        *,
        options: RunOptions = RunOptions(),
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.stages = list(stages)
        self.options = options
        self.layout = RunLayout(Path(config.output_dir))
        self.console = console or Console(stderr=True, quiet=options.quiet)
        #: warnings are printed also under --quiet
        self.alerts = Console(stderr=True) if self.console.quiet else self.console
        #: every line of :meth:`say`, plain, also under --quiet, until appended to the run
        #: log (lines said before the run folder is claimed wait here for it)
        self.log = Console(file=StringIO(), color_system=None, soft_wrap=True)
        #: records the temporaries of the run in progress (:mod:`pipeline.run_folder`)
        self.journal: io.TemporaryJournal | None = None
        #: the warnings of :meth:`check_inputs`, by the stage whose record they join
        self.checked: dict[str, list[CheckWarning]] = {}
        known = [s.name for s in self.stages]
        if options.stages is not None:
            unknown = [s for s in options.stages if s not in known]
            if unknown:
                raise ConfigError(
                    f"--stages: unknown stage(s) {', '.join(unknown)} (known: {', '.join(known)})"
                )
        names = ", ".join(s.name for s in self.selected())
        self.log.print(f"── {utc_now()} region {config.region}, stages {names}", markup=False)

    def selected(self) -> list[Stage]:
        if self.options.stages is None:
            return self.stages
        return [s for s in self.stages if s.name in self.options.stages]

    # state ---------------------------------------------------------------------------

    def _state_path(self, stage: Stage) -> Path:
        return self.layout.state_dir / f"{stage.name}.json"

    def _load_state(self, stage: Stage) -> dict[str, Any] | None:
        p = self._state_path(stage)
        if not p.is_file():
            return None
        try:
            data: dict[str, Any] = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None
        return data

    def _is_current(self, stage: Stage, fingerprint: str) -> bool:
        state = self._load_state(stage)
        if state is None or state.get("fingerprint") != fingerprint:
            return False
        for rel, sha in state.get("file_sha256", {}).items():
            p = self.layout.path(rel)
            if not p.is_file() or io.file_sha256(p) != sha:
                return False
        return True

    def _write_warnings_before(self, stage: Stage) -> None:
        """``.state/warnings.json``: the recorded warnings of the stages before ``stage``."""
        before = []
        for s in self.stages[: self.stages.index(stage)]:
            record = (self._load_state(s) or {}).get("record", {})
            own, other = record.get("warnings", []), record.get("library_warnings", [])
            if own or other:
                entry = {"stage": s.name, "warnings": own, "library_warnings": other}
                if record.get("warning_codes"):
                    entry["warning_codes"] = record["warning_codes"]
                before.append(entry)
        with io.atomic_path(self.layout.warnings, journal=self.journal) as tmp:
            tmp.write_text(json.dumps(before, indent=2) + "\n")

    def _print_warnings(self, stage: Stage, record: Mapping[str, Any]) -> None:
        said = {c.message for checked in self.checked.values() for c in checked}
        for message in record.get("warnings", []):
            if message in said:
                continue  # printed by check_inputs before the run
            # most of the pipeline's messages already start with their stage's name
            named = message.startswith(f"{stage.name}:")
            text = escape(message if named else f"{stage.name}: {message}")
            self.say(f"[yellow]⚠[/] {text}", alert=True)
        for message in record.get("library_warnings", []):
            self.say(f"[dim]⚠ {stage.name} (library): {escape(message)}[/]", alert=True)

    # input checks --------------------------------------------------------------------

    def check_inputs(self) -> None:
        """Read and check the selected stages' inputs, before the run folder is touched
        (:func:`pipeline.inputs.check_inputs`; a bad input raises).

        Each warning is printed now and joins the warnings of the first selected stage
        that reads one of its files, when that stage runs: so it is in the stage's state,
        ``stages.<stage>.warnings`` of the manifest and the report, and stays there while
        the stage is skipped, like the stage's own. A warning about a file no selected
        stage reads (``--stages``) is printed only.
        """
        from pipeline.inputs import check_inputs

        selected = self.selected()
        reads: dict[str, list[Path]] = {}
        for stage in selected:
            try:
                specs = stage.inputs(self.config, self.layout).values()
            except ForestCarbonError:
                continue  # the stage itself reports it when it runs
            paths = [p for spec in specs for p in (spec if isinstance(spec, tuple) else (spec,))]
            reads[stage.name] = [p.resolve() for p in paths]
        for found in check_inputs(self.config, [s.name for s in selected]):
            self.say(f"[yellow]⚠[/] {escape(found.message)}", alert=True)
            files = [f.resolve() for f in found.files]
            owner = next(
                (
                    name
                    for name, paths in reads.items()
                    if any(p == f or p in f.parents for p in paths for f in files)
                ),
                None,
            )
            if owner is not None:
                self.checked.setdefault(owner, []).append(found)

    # manifest ------------------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        if self.layout.manifest.is_file():
            data: dict[str, Any] = json.loads(self.layout.manifest.read_text())
            return data
        return {}

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        """Write the manifest, then the catalog rebuilt from it (both atomically)."""
        with io.atomic_path(self.layout.manifest, journal=self.journal) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        write_catalog(manifest, self.layout, journal=self.journal)

    # run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the selected stages in the claimed run folder; returns the manifest."""
        with run_folder.claim(self.layout.root, say=self._log) as journal:
            self.journal = journal
            try:
                return self._run()
            except Exception as err:
                self.log.print(f"failed: {type(err).__name__}: {err}", markup=False)
                raise
            finally:
                self._append_log()
                self.journal = None

    def _log(self, message: str) -> None:
        """A line about the run folder, printed also under --quiet."""
        self.say(f"[dim]{escape(message)}[/]", alert=True)

    def say(self, text: str, *, alert: bool = False) -> None:
        """Print a line (rich markup) on the console, an ``alert`` also under --quiet, and
        into the run log."""
        (self.alerts if alert else self.console).print(text, highlight=False if alert else None)
        self.log.print(text, highlight=False)

    def _append_log(self) -> None:
        """Append the lines said since the last call to the run folder's ``run.log``.

        A log that cannot be written (a full disk) does not stop the run nor hide its
        error: its lines wait for the next call."""
        buffer = self.log.file
        assert isinstance(buffer, StringIO)
        try:
            with self.layout.run_log.open("a", encoding="utf-8") as f:
                f.write(buffer.getvalue())
        except OSError as err:
            self.alerts.print(
                f"[dim]{escape(f'run log {self.layout.run_log}: not written ({err})')}[/]"
            )
            return
        buffer.seek(0)
        buffer.truncate()

    def _run(self) -> dict[str, Any]:
        from pipeline.cluster import dashboard_link, dask_client

        if self.options.pinned_items is not None:
            pinned = self.layout.path(PINNED_ITEMS_DIR)
            shutil.rmtree(pinned, ignore_errors=True)
            shutil.copytree(self.options.pinned_items, pinned)
        code = code_version()
        self._refuse_stale_inputs(code["source_sha256"])
        manifest = self._manifest()
        manifest.update(
            {
                "region": self.config.region,
                "simulated": self.config.simulated,
                "config": self.config.model_dump(mode="json"),
                "config_sha256": self.config.sha256,
                "code_version": code,
                "packages": package_versions(),
                "seeds": {"seed": self.config.seed},
                "run_datetime": utc_now(),
                # what the config's relative paths are resolved against (``reproduce``)
                "working_dir": str(Path.cwd()),
            }
        )
        manifest.setdefault("inputs", {})
        manifest.setdefault("outputs", {})
        manifest.setdefault("stages", {})
        manifest.setdefault("stac_items", {})
        shared = (Path(self.config.data_dir), self.layout.root)
        with dask_client(
            self.config.dask, scheduler=self.options.scheduler, shared=shared
        ) as client:
            nthreads = client.nthreads()  # type: ignore[attr-defined]
            manifest["cluster"] = {
                "scheduler": client.scheduler.address,  # type: ignore[attr-defined]
                "workers": len(nthreads),
                "threads": sum(nthreads.values()),
            }
            dashboard = dashboard_link(client, self.config.dask, scheduler=self.options.scheduler)
            if dashboard:
                self.say(f"Dask dashboard: {dashboard}")
            for stage in self.selected():
                self._append_log()
                self._run_stage(stage, client, code["source_sha256"], manifest)
                self._write_manifest(manifest)
        if self.options.stages is not None:
            self._mark_stale(self._stale(code["source_sha256"]), manifest)
            self._write_manifest(manifest)
        return manifest

    # stale stages ----------------------------------------------------------------------

    def _fingerprint(self, stage: Stage, source_hash: str) -> Fingerprint:
        """The stage's parameters and inputs now, and their fingerprint."""
        params = stage.params(self.config)
        specs = dict(stage.inputs(self.config, self.layout))
        files = {name: io.input_file_sha256(spec) for name, spec in specs.items()}
        checksums = {
            name: io.input_checksum(spec, files=files[name]) for name, spec in specs.items()
        }
        value = hashlib.sha256(
            canonical([stage.name, params, checksums, source_hash]).encode()
        ).hexdigest()
        return Fingerprint(params, specs, files, checksums, value)

    def _reads(
        self, specs: Mapping[str, Path | tuple[Path, ...]], owners: Mapping[str, str]
    ) -> set[str]:
        """The stages among ``owners`` (output relpath -> stage) whose outputs ``specs`` read."""
        paths = [
            p for spec in specs.values() for p in (spec if isinstance(spec, tuple) else (spec,))
        ]
        return {
            owner
            for rel, owner in owners.items()
            for p in paths
            if self.layout.path(rel) == p or p in self.layout.path(rel).parents
        }

    def _stale(self, source_hash: str) -> dict[str, str]:
        """The stages left out of ``--stages`` whose recorded outputs no longer follow from
        the config, inputs and code: ``{stage: reason}``, in pipeline order."""
        selected = {s.name for s in self.selected()}
        stale: dict[str, str] = {}
        owners: dict[str, str] = {}  # outputs of stale stages -> their stage
        for stage in self.stages:
            state = self._load_state(stage)
            if stage.name in selected or state is None:
                continue
            try:
                now = self._fingerprint(stage, source_hash)
            except ForestCarbonError as err:
                reason = f"its inputs cannot be read now ({err})"
            else:
                upstream = self._reads(now.specs, owners)
                if upstream:
                    reason = f"it reads outputs of stale stage(s) {', '.join(sorted(upstream))}"
                elif self._is_current(stage, now.value):
                    continue
                else:
                    recorded = state.get("input_checksums", {})
                    changed = [n for n, c in now.checksums.items() if recorded.get(n) != c]
                    reason = (
                        f"input(s) {', '.join(changed)} changed since it ran"
                        if changed and recorded
                        else "its inputs, parameters or code changed since it ran"
                    )
            stale[stage.name] = reason
            owners.update(dict.fromkeys(state.get("file_sha256", {}), stage.name))
        return stale

    def _refuse_stale_inputs(self, source_hash: str) -> None:
        """Refuse a ``--stages`` run whose stages would read outputs of a stale stage."""
        if self.options.stages is None:
            return
        stale = self._stale(source_hash)
        owners = {
            rel: s.name
            for s in self.stages
            if s.name in stale
            for rel in (self._load_state(s) or {}).get("file_sha256", {})
        }
        for stage in self.selected():
            try:
                specs = dict(stage.inputs(self.config, self.layout))
            except ForestCarbonError:
                continue  # the stage itself reports it when it runs
            upstream = sorted(self._reads(specs, owners))
            if upstream:
                reasons = "; ".join(f"{u}: {stale[u]}" for u in upstream)
                raise ConfigError(
                    f"--stages: stage {stage.name} reads outputs of stale stage(s) "
                    f"{', '.join(upstream)} ({reasons}); add them to --stages, or run all stages"
                )

    def _mark_stale(self, stale: Mapping[str, str], manifest: dict[str, Any]) -> None:
        """Move the records of stale stages out of ``outputs``, ``stac_items`` and
        ``results`` into ``stale.<stage>``, and say so."""
        for stage in self.stages:
            if stage.name not in stale:
                if stage.name not in {s.name for s in self.selected()}:
                    self._restore(stage, manifest)
                continue
            state = self._load_state(stage) or {}
            held = manifest.setdefault("stale", {}).setdefault(
                stage.name, {"outputs": {}, "stac_items": {}, "results": None}
            )
            for rel in state.get("file_sha256", {}):
                if rel in manifest["outputs"]:
                    held["outputs"][rel] = manifest["outputs"].pop(rel)
                if rel in manifest["stac_items"]:
                    held["stac_items"][rel] = manifest["stac_items"].pop(rel)
            if stage.name in manifest.get("results", {}):
                held["results"] = manifest["results"].pop(stage.name)
            held["reason"] = stale[stage.name]
            manifest["stages"][stage.name] = {
                **state.get("record", {}),
                "status": f"stale: {stale[stage.name]}",
            }
            self.say(
                f"[yellow]⚠[/] {stage.name}: stale, {escape(stale[stage.name])}: its outputs "
                "are no longer in the manifest; `run` without --stages redoes it",
                alert=True,
            )

    def _restore(self, stage: Stage, manifest: dict[str, Any]) -> None:
        """Move the records a stage had when it was marked stale back (it is current)."""
        held = manifest.get("stale", {}).pop(stage.name, None)
        if held is None:
            return
        manifest["outputs"].update(held["outputs"])
        manifest["stac_items"].update(held["stac_items"])
        if held["results"] is not None:
            manifest.setdefault("results", {})[stage.name] = held["results"]
        state = self._load_state(stage) or {}
        manifest["stages"][stage.name] = {
            **state.get("record", {}),
            "status": "skipped (unchanged)",
        }

    @staticmethod
    def _records_from_state(stage: Stage, state: dict[str, Any], manifest: dict[str, Any]) -> None:
        """The manifest's records of a skipped stage's outputs, STAC items and results,
        from its state (the manifest may be older than the state: a run killed between
        writing the two)."""
        checksums = state.get("record", {}).get("outputs", {})
        for rel, sha in state.get("file_sha256", {}).items():
            entry = manifest["outputs"].setdefault(rel, {"stage": stage.name})
            entry["file_sha256"] = sha
            if rel in checksums:
                entry["checksum"] = checksums[rel]
        manifest["stac_items"].update(state.get("stac_items", {}))
        if state.get("results") is not None:
            manifest.setdefault("results", {})[stage.name] = state["results"]

    def _run_stage(
        self, stage: Stage, client: Any, source_hash: str, manifest: dict[str, Any]
    ) -> None:
        t0 = time.perf_counter()
        self._write_warnings_before(stage)
        now = self._fingerprint(stage, source_hash)
        if not self.options.force and self._is_current(stage, now.value):
            self._restore(stage, manifest)
            state = self._load_state(stage) or {}
            manifest["stages"][stage.name] = {
                **state.get("record", {}),
                "status": "skipped (unchanged)",
            }
            self._records_from_state(stage, state, manifest)
            self.say(f"[dim]↷ {stage.name:<10} skipped: inputs and parameters unchanged[/]")
            self._print_warnings(stage, manifest["stages"][stage.name])
            return
        self.say(f"▶ {stage.name:<10} running")
        # raw inputs (outside the run folder) are recorded with their checksums, and each
        # of their files with its own (``reproduce`` names a changed file)
        root = self.layout.root.resolve()
        for name, spec in now.specs.items():
            paths = spec if isinstance(spec, tuple) else (spec,)
            if not any(root in p.resolve().parents for p in paths):
                manifest["inputs"][f"{stage.name}.{name}"] = {
                    "paths": [str(p) for p in paths],
                    "sha256": now.checksums[name],
                    "files": {str(p): sha for p, sha in now.files[name].items()},
                }
        from distributed.diagnostics import MemorySampler

        sampler = MemorySampler()
        caught: list[warnings.WarningMessage] = []
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                peak_rss() as rss,
                peak_worker_rss(client) as worker_rss,
                sampler.sample(stage.name, client=client, measure="process"),
                contextlib.ExitStack() as scratch,
            ):
                # every warning is recorded each time it is raised (the record keeps each
                # message once): with Python's default "once per location" filter a library
                # warning already raised earlier in this process (an earlier run, or the
                # tasks of the in-process Dask worker) would go unrecorded, and the
                # manifest and report would depend on the process's history
                warnings.simplefilter("always")
                loaded = {
                    name: io.read_input(
                        spec,
                        chunk_px=self.config.dask.chunk_px,
                        **read_settings(self.config.sources, spec),
                    )
                    for name, spec in now.specs.items()
                }
                if stage.scratch:
                    loaded["scratch"] = scratch.enter_context(
                        run_folder.scratch_folder(self.layout.root, stage.name, self.journal)
                    )
                outputs = dict(stage.func(now.params, **group_inputs(loaded)))
                with Progress(
                    TextColumn("  {task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=self.console,
                    transient=True,
                ) as bar:
                    advance: dict[Path, io.ProgressCallback] = {}
                    for rel in outputs:
                        task = bar.add_task(rel, total=None)

                        def step(done: int, total: int, task: TaskID = task) -> None:
                            bar.update(task, completed=done, total=total)

                        advance[self.layout.path(rel)] = step
                    io.write_outputs(
                        {self.layout.path(rel): obj for rel, obj in outputs.items()},
                        client=client,
                        progress=advance,
                        journal=self.journal,
                    )
        except Exception:
            # a failed stage records nothing, but what it warned may explain the failure
            own, other, _ = sort_warnings(caught)
            self._print_warnings(stage, {"warnings": own, "library_warnings": other})
            raise
        cluster_peak = sampler.to_pandas().max().max() if sampler.samples.get(stage.name) else None
        record = StageRecord(
            status="ran",
            wall_s=round(time.perf_counter() - t0, 3),
            peak_rss_mb=round(rss[0], 1),
            peak_cluster_mb=None if cluster_peak is None else round(float(cluster_peak) / 2**20, 1),
            peak_worker_mb=None if worker_rss[0] is None else round(worker_rss[0], 1),
            finished=utc_now(),
        )
        own, record.library_warnings, codes = sort_warnings(caught)
        # the input checks' warnings about this stage's inputs first, each message once
        checked = self.checked.get(stage.name, [])
        record.warnings = list(dict.fromkeys([*(c.message for c in checked), *own]))
        record.warning_codes = {c.message: c.code for c in checked if c.code is not None}
        record.warning_codes.update(codes)
        file_sha256 = {rel: io.file_sha256(self.layout.path(rel)) for rel in outputs}
        for rel in outputs:
            checksum = io.content_checksum(self.layout.path(rel))
            record.outputs[rel] = checksum
            manifest["outputs"][rel] = {
                "stage": stage.name,
                "checksum": checksum,
                "file_sha256": file_sha256[rel],
            }
            obj = outputs[rel]
            if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
                manifest["stac_items"][rel] = [
                    {
                        "id": f.get("id"),
                        "collection": f.get("collection"),
                        "hrefs": sorted(a.get("href", "") for a in f.get("assets", {}).values()),
                    }
                    for f in obj.get("features", [])
                ]
        if stage.results is not None:
            manifest.setdefault("results", {})[stage.name] = stage.results(outputs)
        manifest["stages"][stage.name] = dataclasses.asdict(record)
        manifest.get("stale", {}).pop(stage.name, None)
        state = {
            "fingerprint": now.value,
            "record": dataclasses.asdict(record),
            "file_sha256": file_sha256,
            "input_checksums": now.checksums,
            "stac_items": {
                r: manifest["stac_items"][r] for r in outputs if r in manifest["stac_items"]
            },
            "results": manifest.get("results", {}).get(stage.name) if stage.results else None,
        }
        with io.atomic_path(self._state_path(stage), journal=self.journal) as tmp:
            tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str))
        self._print_warnings(stage, manifest["stages"][stage.name])
        peak = f", peak {record.peak_rss_mb:.0f} MB" if record.peak_rss_mb else ""
        if record.peak_worker_mb:
            peak += f", busiest worker {record.peak_worker_mb:.0f} MB"
        self.say(f"[green]✓[/] {stage.name:<10} {record.wall_s:8.1f} s{peak}")
