"""Benchmark of the report at a prefecture's parcel count: its size and load time.

A bureau's parcel layer has 10^4-10^5 sub-compartments (小班). This simulates the tiny
region and runs the whole pipeline on it into a temporary folder, then simulates the same
region again with ``simulate.parcels_per_km2`` raised to give about ``N_PARCELS`` parcels,
points ``sources.parcels`` at that layer and runs again (the stages that read the parcel
layer rerun, from ``model`` on; the others are current)
(the simulator's plot samples are drawn from its parcels and do not survive parcels far
smaller than a pixel, so the first run keeps the ordinary layer). The maps are the tiny
region's and the parcels far smaller than real ones: the report's size and load time
depend on the number of parcels, not on their size. It prints the parcel count, the size
of ``report/report.html``, its load time in headless Chromium (the page's own
``performance.now()`` at its load event, and the wall time of a Chromium that loads it
and exits, minus that of an empty page) and the stages' wall times. Issue #20's targets:
under 10 MB, loaded in under 3 s.

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
        data, many, run = root / "data", root / "many", root / "run"
        raw = yaml.safe_load(region_config_path("tiny").read_text())
        text = json.dumps(raw, default=str).replace("data/tiny", str(data))
        cfg = json.loads(text.replace("outputs/tiny", str(run)))
        paths = {}
        for name, folder, density in (("base", data, None), ("many", many, N_PARCELS / area_km2)):
            folder.mkdir()
            cfg["simulate"]["parcels_per_km2"] = density
            paths[name] = root / f"{name}.yaml"
            paths[name].write_text(yaml.safe_dump(cfg, allow_unicode=True))
            config = load_config(paths[name])
            simulate_region(config, folder, seed=config.seed)
        # the run's config differs from the first only in its parcel layer
        cfg["simulate"]["parcels_per_km2"] = None
        cfg["sources"]["parcels"] = str(many / "parcels" / "parcels.gpkg")
        paths["many"].write_text(yaml.safe_dump(cfg, allow_unicode=True))
        t0 = time.perf_counter()
        if cli_main(["run", "--config", str(paths["base"]), "--quiet"]) != 0:
            raise SystemExit("the pipeline run failed")
        t1 = time.perf_counter()
        # every stage that reads the parcel layer reruns (the model stage does: parcel
        # classes and land use); the others are skipped as current
        if cli_main(["run", "--config", str(paths["many"]), "--quiet"]) != 0:
            raise SystemExit("the run on the large parcel layer failed")
        rerun_s = time.perf_counter() - t1
        run_s = t1 - t0
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
                    "parcels_stage_s": manifest["stages"]["parcels"].get("wall_s"),
                    "report_stage_s": manifest["stages"]["report"].get("wall_s"),
                    "pipeline_run_s": round(run_s, 1),
                    "rerun_with_the_large_layer_s": round(rerun_s, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
