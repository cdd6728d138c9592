"""A real STAC API on loopback for tests: stac-fastapi-pgstac on PostgreSQL + PostGIS.

Started once per test session (see ``stac_api`` in tests/test_stac_api.py): a scratch
PostgreSQL cluster (Debian's postgresql-15 + postgis-3, installed by
``scripts/install-sysdeps.sh``) on a free port, migrated and loaded with ``pypgstac``,
then ``uvicorn stac_fastapi.pgstac.app:create_app`` on another free port. Everything
started here is stopped by process id at teardown. Recipe: /work/shared/notes/local-stac-api.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: str) -> list[str]:
    return (
        ["su", "postgres", "-s", "/bin/sh", "-c", cmd] if os.geteuid() == 0 else ["sh", "-c", cmd]
    )


def _run(cmd: list[str], **kw: Any) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stdout[-2000:]} {res.stderr[-2000:]}")


@contextmanager
def stac_api_server(
    collections: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]]
) -> Iterator[str]:
    """Run the API with ``collections`` and ``items`` loaded; yields its root URL."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError("PostgreSQL 15 is missing: run scripts/install-sysdeps.sh")
    root = Path(tempfile.mkdtemp(prefix="fc-pgstac-"))
    pgdata = root / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg_port, api_port = free_port(), free_port()
    api: subprocess.Popen[bytes] | None = None
    started = False
    try:
        _run(
            _as_postgres(
                f"{PG_BIN}/initdb -D {pgdata} -U postgres --auth=trust -E UTF8 --locale=C.UTF-8"
            )
        )
        _run(
            _as_postgres(
                f"{PG_BIN}/pg_ctl -D {pgdata} -l {pgdata}/log -o "
                f"'-p {pg_port} -k {pgdata} -c listen_addresses=127.0.0.1' -w start"
            )
        )
        started = True
        dsn = f"postgresql://postgres@127.0.0.1:{pg_port}/postgis"
        _run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(pg_port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE postgis",
            ]
        )
        _run([str(VENV_BIN / "pypgstac"), "migrate", "--dsn", dsn])
        cfile, ifile = root / "collections.ndjson", root / "items.ndjson"
        cfile.write_text("\n".join(json.dumps(c) for c in collections) + "\n")
        ifile.write_text("\n".join(json.dumps(i) for i in items) + "\n")
        _run(
            [
                str(VENV_BIN / "pypgstac"),
                "load",
                "collections",
                str(cfile),
                "--dsn",
                dsn,
                "--method",
                "upsert",
            ]
        )
        _run(
            [
                str(VENV_BIN / "pypgstac"),
                "load",
                "items",
                str(ifile),
                "--dsn",
                dsn,
                "--method",
                "upsert",
            ]
        )
        env = {
            **os.environ,
            "PGUSER": "postgres",
            "PGPASSWORD": "x",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(pg_port),
            "PGDATABASE": "postgis",
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASS": "x",
            "POSTGRES_HOST_READER": "127.0.0.1",
            "POSTGRES_HOST_WRITER": "127.0.0.1",
            "POSTGRES_PORT": str(pg_port),
            "POSTGRES_DBNAME": "postgis",
        }
        api = subprocess.Popen(
            [
                str(VENV_BIN / "uvicorn"),
                "stac_fastapi.pgstac.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(api_port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(root / "api.log", "wb"),
        )
        url = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"STAC API did not start: {(root / 'api.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield url
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(timeout=10)
            except subprocess.TimeoutExpired:
                api.kill()
        if started:
            subprocess.run(
                _as_postgres(f"{PG_BIN}/pg_ctl -D {pgdata} -m fast -w stop"),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)
