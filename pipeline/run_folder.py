"""The run folder's safety: where a run may write, one run at a time, only its own
temporaries cleaned.

:func:`claim` is what the runner enters before it writes anything (user documentation:
``docs/run_folder.md``):

1. **Where.** ``output_dir`` (or ``--out``) is refused when it resolves to the file
   system's root or into a system folder (:data:`SYSTEM_DIRS`), and when it is a relative
   path whose ``..`` parts leave the working directory it is resolved against (an absolute
   path is an explicit choice and may point anywhere else).
2. **What.** A folder that exists, is not empty and is not a run folder (no ``.state/``,
   no ``manifest.json``, no ``pinned/`` of a reproduction) is refused: a run never writes
   into, or cleans, a user's folder.
3. **Who.** ``.state/lock`` is locked with ``flock`` (atomic; the kernel releases it when
   its process dies, however it dies) and holds the holder's PID, host and start time. A
   second run exits 2 naming the holder. A lock file left with a record by a process that
   is gone (same host, PID not running, or a PID that started after the lock) is taken over
   with a log line; a record from another host is refused, since its process cannot be
   checked from here.
4. **Temporaries.** Every temporary a run creates (:mod:`pipeline.io`'s ``journal``
   argument) is appended to ``.state/temporaries`` before it exists. On the next claim the
   temporaries a killed run recorded there, and GDAL's side files named after them, are
   deleted, and nothing else: a recorded path must lie in the run folder and have a
   temporary's name (``.<name>.tmp-<pid>...``), so an edited journal cannot delete other
   files. A run that ends, well or not, clears its own journal.
5. **Nothing left by a failure.** A run that created the folder and fails before any
   stage finished (an input only a stage can judge: a corrupt LiDAR tile, an unreadable
   catalog) removes the folder again, its run log with it, so a failed first run leaves
   nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil

from pipeline import io
from pipeline.errors import InputDataError, RunFolderError

#: folders of the operating system a run never writes into (nor under). ``/var/tmp`` is
#: the one exception under ``/var`` (a temporary folder like ``/tmp``).
SYSTEM_DIRS = tuple(
    Path(p)
    for p in (
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/run",
        "/sbin",
        "/sys",
        "/usr",
        "/var",
    )
)
SYSTEM_DIR_EXCEPTIONS = (Path("/var/tmp"),)

STATE_DIR = ".state"
MANIFEST_NAME = "manifest.json"
#: the folder of a reproduction's pinned STAC items (:data:`pipeline.contracts.PINNED_ITEMS_DIR`)
PINNED_ITEMS_ROOT = "pinned"
LOCK_NAME = "lock"
JOURNAL_NAME = "temporaries"
#: the warnings of the stages before the one running (``RunLayout.warnings``)
WARNINGS_NAME = "warnings.json"
#: the console's lines of every run in the folder, appended (``RunLayout.run_log``)
RUN_LOG_NAME = "run.log"
#: what every temporary of :mod:`pipeline.io` is called: ``.<stem>.tmp-<pid>...``
TEMPORARY_MARK = ".tmp-"


# --------------------------------------------------------------------------- where


def check_output_dir(output_dir: Path, *, cwd: Path | None = None) -> Path:
    """The absolute run folder ``output_dir`` names, or :class:`RunFolderError`.

    Parameters
    ----------
    output_dir
        The config's ``output_dir`` (or ``--out``); a relative path is taken from ``cwd``.
    cwd
        The working directory relative paths are resolved against (default: this
        process's).
    """
    base = Path(os.path.abspath(cwd or Path.cwd()))
    # lexical: a symbolic link inside the working directory (outputs on another disk) is
    # a deliberate choice, a ``..`` that climbs out of it is usually a mistake
    lexical = Path(os.path.normpath(base / output_dir))
    if not output_dir.is_absolute() and not lexical.is_relative_to(base):
        raise RunFolderError(
            f"output_dir {output_dir}: the relative path leaves the working directory {base} "
            f"(it means {lexical}); give an absolute path if you mean a folder outside it"
        )
    resolved = lexical.resolve()
    for system in SYSTEM_DIRS:
        inside = resolved == system or resolved.is_relative_to(system)
        excepted = any(resolved.is_relative_to(e) for e in SYSTEM_DIR_EXCEPTIONS)
        if inside and not excepted:
            raise RunFolderError(
                f"output_dir {output_dir}: resolves to {resolved}, inside the system folder "
                f"{system}; give a folder of your own (e.g. outputs/<region>)"
            )
    if resolved == Path(resolved.anchor):
        raise RunFolderError(
            f"output_dir {output_dir}: resolves to the file system's root; give a folder "
            "of your own (e.g. outputs/<region>)"
        )
    return lexical


def is_run_folder(root: Path) -> bool:
    """Whether ``root`` is a run folder: a run has started in it (``.state/``), recorded
    itself (``manifest.json``) or a reproduction has pinned its items (``pinned/``)."""
    return any((root / name).exists() for name in (STATE_DIR, MANIFEST_NAME, PINNED_ITEMS_ROOT))


def check_usable(root: Path) -> None:
    """Refuse a folder that exists, is not empty and is not a run folder."""
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"output_dir {root}: is a file, not a folder; give a folder")
    if root.is_dir() and any(root.iterdir()) and not is_run_folder(root):
        raise RunFolderError(
            f"output_dir {root}: the folder is not empty and is not a run folder (it has no "
            f"{STATE_DIR}/, no {MANIFEST_NAME}, no {PINNED_ITEMS_ROOT}/); a run writes only "
            "into a new or empty folder or its own run folder: give another output_dir or --out"
        )


# --------------------------------------------------------------------------- who


def _holder_record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder not recorded yet"
    return f"PID {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _read_holder(f: IO[str]) -> dict[str, Any] | None:
    f.seek(0)
    text = f.read().strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": None, "host": None, "started": f"unreadable record {text[:60]!r}"}
    return data if isinstance(data, dict) else None


def _still_running(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder (on this host) is a live process that predates its lock."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or not psutil.pid_exists(pid):
        return False
    try:
        created = datetime.fromtimestamp(psutil.Process(pid).create_time(), UTC)
        started = datetime.fromisoformat(str(holder.get("started")))
    except (psutil.Error, ValueError):
        return True
    # a process created after the lock was taken only reuses the dead holder's PID
    return created <= started


def _in_use(root: Path, path: Path, f: IO[str]) -> RunFolderError:
    return RunFolderError(
        f"{root}: the run folder is in use by another run ({_describe(_read_holder(f))}; "
        f"lock file {path}); wait for it to finish, or give another output_dir or --out"
    )


@contextlib.contextmanager
def _lock(root: Path, *, say: Callable[[str], None]) -> Iterator[None]:
    path = root / STATE_DIR / LOCK_NAME
    with path.open("a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(root, path, f) from None
        previous = _read_holder(f)
        if previous:
            if previous.get("host") != socket.gethostname() or _still_running(previous):
                raise RunFolderError(
                    f"{root}: the lock file {path} records a run ({_describe(previous)}) "
                    "that cannot be checked from here; if no run is going on there, delete "
                    "the lock file and start again"
                )
            say(
                f"run folder {root}: taking over the stale lock of {_describe(previous)} "
                "(that process is no longer running)"
            )
        f.seek(0)
        f.truncate()
        f.write(json.dumps(_holder_record()) + "\n")
        f.flush()
        os.fsync(f.fileno())
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()  # an empty lock file: nobody holds the folder
            f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- temporaries


class Journal:
    """The temporaries a run creates, recorded in ``.state/temporaries`` before they exist."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / STATE_DIR / JOURNAL_NAME

    def __call__(self, tmp: Path) -> None:
        """Record ``tmp`` (a path in the run folder) before it is created."""
        rel = os.path.relpath(os.path.abspath(tmp), os.path.abspath(self.root))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(rel + "\n")
            f.flush()
            os.fsync(f.fileno())

    def clean(self) -> int:
        """Delete the recorded temporaries still on disk, then the journal; returns how many."""
        if not self.path.is_file():
            return 0
        root = self.root.resolve()
        n = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            recorded = (root / line.strip()).resolve()
            name = recorded.name
            if not (
                line.strip()
                and recorded.is_relative_to(root)
                and name.startswith(".")
                and TEMPORARY_MARK in name
                and recorded.parent.is_dir()
            ):
                continue
            for p in recorded.parent.iterdir():
                # GDAL's side files of a temporary: NAME.ovr.tmp, NAME.aux.xml ...
                if (p.name == name or p.name.startswith(name + ".")) and p.is_file():
                    p.unlink()
                    n += 1
                elif p.name == name and p.is_dir():  # a stage's scratch folder
                    shutil.rmtree(p)
                    n += 1
        self.path.unlink()
        return n


@contextlib.contextmanager
def scratch_folder(root: Path, name: str, journal: io.TemporaryJournal | None) -> Iterator[Path]:
    """An empty folder ``.state/.<name>.tmp-<pid>`` of the run folder ``root`` for a
    stage's working files, recorded in ``journal`` before it exists (so a killed run's is
    removed on the next claim) and removed when the block ends."""
    path = root / STATE_DIR / f".{name}{TEMPORARY_MARK}{os.getpid()}"
    if journal is not None:
        journal(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_available(output_dir: Path) -> Path:
    """The run folder ``output_dir`` names, or :class:`RunFolderError` for one that is not
    usable or is held by a live run; writes nothing. The command line asks this before it
    checks the inputs, so that a second run is told the folder is in use whatever its
    inputs; :func:`claim` asks it before it takes the lock."""
    root = check_output_dir(output_dir)
    check_usable(root)
    path = root / STATE_DIR / LOCK_NAME
    if not path.is_file():
        return root
    with path.open("r", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(root, path, f) from None
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return root


@contextlib.contextmanager
def claim(output_dir: Path, *, say: Callable[[str], None]) -> Iterator[Journal]:
    """Check, create and lock a run folder; yields the journal of this run's temporaries.

    ``say`` prints a log line (the take-over of a stale lock, temporaries cleaned).
    """
    root = check_available(output_dir)
    created = not root.exists()
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with _lock(root, say=say):
        journal = Journal(root)
        n = journal.clean()
        if n:
            say(f"run folder {root}: removed {n} temporary file(s) left by a killed run")
        try:
            yield journal
        except BaseException:
            journal.clean()
            if created and _only_bookkeeping(root):
                # a run that failed before any stage finished leaves no folder behind
                # (removed while this run still holds the lock)
                shutil.rmtree(root)
            raise
        finally:
            journal.clean()


#: what a run writes in its folder before a stage has finished: the lock, the journal of
#: temporaries, the warnings of the stages before the first and the run log
BOOKKEEPING = frozenset(
    {
        STATE_DIR,
        RUN_LOG_NAME,
        *(f"{STATE_DIR}/{name}" for name in (LOCK_NAME, JOURNAL_NAME, WARNINGS_NAME)),
    }
)


def _only_bookkeeping(root: Path) -> bool:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} <= BOOKKEEPING


# --------------------------------------------------------------------------- records


def recorded_sha256(path: Path) -> str:
    """The sha256 of ``path`` recorded by the nearest ``manifest.json`` above it.

    The manifest's ``outputs.<path relative to its folder>.file_sha256``, as the runner
    (and :func:`record_outputs`) writes it.

    Raises
    ------
    InputDataError
        No manifest above ``path``, or one that records no checksum of it.
    """
    resolved = path.resolve()
    for root in resolved.parents:
        manifest = root / MANIFEST_NAME
        if not manifest.is_file():
            continue
        rel = resolved.relative_to(root).as_posix()
        try:
            entry = json.loads(manifest.read_text(encoding="utf-8")).get("outputs", {}).get(rel)
        except (json.JSONDecodeError, AttributeError):
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("file_sha256"), str):
            return str(entry["file_sha256"])
        raise InputDataError(
            f"{path}: {manifest} records no checksum of {rel}, so the file cannot be "
            "checked; rerun the stage or command that writes it into this folder"
        )
    raise InputDataError(
        f"{path}: no {MANIFEST_NAME} in the folders above it records its checksum, so the "
        "file cannot be checked; use it where the run or command that wrote it put it"
    )


def record_outputs(root: Path, relpaths: Iterable[str], *, command: str) -> None:
    """Record the sha256 of files a stand-alone command wrote under ``root`` in
    ``root/manifest.json`` (``outputs.<relpath>``, merged into what is there)."""
    manifest = root / MANIFEST_NAME
    data: dict[str, Any] = {}
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
    outputs = data.setdefault("outputs", {})
    for rel in relpaths:
        outputs[rel] = {"stage": command, "file_sha256": io.file_sha256(root / rel)}
    io.write_output(data, manifest)
