"""Benchmark of the report at a prefecture's parcel count: its size and load time.

A bureau's parcel layer has 10^4-10^5 sub-compartments (小班). This builds the tiny
region with ``simulate.parcels_per_km2`` raised so that it has about ``N_PARCELS``
parcels (the area and every other input as the tiny region: only the parcel layer is
larger, so the parcels are far smaller than real ones; the report's size and load time
depend on the number of parcels, not on their size), runs the whole pipeline on it into a
temporary folder, and prints the parcel count, the size of ``report/report.html`` and
its load time in headless Chromium (the page's own ``performance.now()`` at its load
event, and the wall time of a Chromium that loads it and exits, minus that of an empty
page). Issue #20's targets: under 10 MB, loaded in under 3 s.

Run: ``.venv/bin/python benchmarks/bench_report.py`` (``make bench`` runs every benchmark;
this one takes a few minutes: the pipeline runs on the region).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import yaml

from pipeline.cli import main as cli_main
from pipeline.config import load_config, region_config_path
from pipeline.contracts import PARCEL_SINK_GPKG_RELPATH, REPORT_RELPATH
from pipeline.simulate import simulate_region

N_PARCELS = 20_000
ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "<script>window.addEventListener('load', () => { const d = document.createElement('pre');"
    " d.id = 'load-ms'; d.textContent = performance.now().toFixed(0);"
    " document.body.appendChild(d); });</script>"
)


def _chromium_s(chromium: str, page: Path, profile: Path) -> tuple[float, str]:
    """Wall time (s) of a headless Chromium that loads ``page``, dumps its DOM and exits
    (Chromium run as the report tests run it)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import CHROMIUM_FLAGS

    t0 = time.perf_counter()
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    return time.perf_counter() - t0, dom


def main() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is missing: run scripts/install-report-deps.sh")
    base = load_config(region_config_path("tiny"))
    area_km2 = base.simulate.size_km**2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, run = root / "data", root / "run"
        data.mkdir()
        raw = yaml.safe_load(region_config_path("tiny").read_text())
        text = json.dumps(raw, default=str).replace("data/tiny", str(data))
        cfg = json.loads(text.replace("outputs/tiny", str(run)))
        cfg["simulate"]["parcels_per_km2"] = N_PARCELS / area_km2
        cfg_path = root / "bench.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        config = load_config(cfg_path)
        simulate_region(config, data, final_dir=data, seed=config.seed)
        t0 = time.perf_counter()
        if cli_main(["run", "--config", str(cfg_path), "--quiet"]) != 0:
            raise SystemExit("the pipeline run failed")
        run_s = time.perf_counter() - t0
        manifest = json.loads((run / "manifest.json").read_text())
        n_parcels = len(gpd.read_file(run / PARCEL_SINK_GPKG_RELPATH))
        report = run / REPORT_RELPATH
        probed = root / "probed.html"
        probed.write_text(
            report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
            encoding="utf-8",
        )
        empty = root / "empty.html"
        empty.write_text("<!DOCTYPE html><html><body></body></html>")
        _chromium_s(chromium, empty, root / "profile")  # warm the profile and caches
        empty_s, _ = _chromium_s(chromium, empty, root / "profile")
        page_s, dom = _chromium_s(chromium, probed, root / "profile")
        load_ms = float(dom.split('<pre id="load-ms">')[1].split("</pre>")[0])
        print(
            json.dumps(
                {
                    "n_parcels": n_parcels,
                    "report_mb": round(report.stat().st_size / 1e6, 2),
                    "load_event_s": round(load_ms / 1000, 2),
                    "chromium_wall_s_over_empty_page": round(page_s - empty_s, 2),
                    "report_stage_s": manifest["stages"]["report"].get("wall_s"),
                    "pipeline_run_s": round(run_s, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
