"""The embedded demo-region simulator (``forest-carbon simulate``).

Builds, deterministically from a seed, a simulated forest landscape at a real place
(Nanping, Fujian, EPSG:32650 by default) shaped exactly like real inputs: Earth-Search-style
STAC items with COG assets (Sentinel-2 L2A on both sides of processing baseline 04.00,
Landsat 8/9 C2 L2, Copernicus DEM), LAZ tiles with CRS, plot tree lists and parcels as
GeoPackage, with its truth kept apart under ``truth/``. Modules:

- :mod:`~pipeline.simulate.terrain`: analytic hilly DEM;
- :mod:`~pipeline.simulate.parcels`: sub-compartments, roads, disturbances, project;
- :mod:`~pipeline.simulate.stands`: growth curves and the individual trees of each pixel;
- :mod:`~pipeline.simulate.truth`: per-pixel AGB / carbon / canopy-height truth;
- :mod:`~pipeline.simulate.satellite`: reflectance, clouds and shadows, SCL / QA_PIXEL;
- :mod:`~pipeline.simulate.stac_items`: Earth Search v1 shaped items;
- :mod:`~pipeline.simulate.lidar`: crowns, returns, noise, LAZ tiles;
- :mod:`~pipeline.simulate.plots`: permanent plots with measurement and GPS errors;
- :mod:`~pipeline.simulate.sampling`: the plot samples' designs (strata and sampling
  frames, ``plots/design.gpkg``) and the project's AR-TOOL03-sized monitoring plots.

Every coefficient is in ``pipeline/simulate/data/simulation.yaml`` with its source or
marked as an assumption. Run: ``forest-carbon simulate --region nanping --out data/nanping``.
"""

from __future__ import annotations

from pipeline.simulate.region import aoi_frame, aoi_grid, simulate_region

__all__ = ["aoi_frame", "aoi_grid", "simulate_region"]
