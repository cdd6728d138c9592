"""Airborne LiDAR processing: tiles -> DTM, CHM and area-based metrics.

The science, in processing order (each module cites its sources):

- :mod:`~pipeline.lidar.index`: tile headers (bounds, counts, CRS, format) without points;
  CRS problems (none, conflicting records, feet, geographic) are errors naming the tile.
- :mod:`~pipeline.lidar.read`: streamed, box-filtered decoding (laspy + lazrs).
- :mod:`~pipeline.lidar.noise`: ASPRS noise classes 7/18; statistical outlier filter
  (PDAL ``filters.outlier``) on the extreme returns of unclassified clouds.
- :mod:`~pipeline.lidar.ground`: simple morphological filter (SMRF, Pingel et al. 2013;
  or the cloth simulation filter, Zhang et al. 2016) when a cloud has no ground class.
- :mod:`~pipeline.lidar.dtm`, :mod:`~pipeline.lidar.tin`: TIN DTM of ground returns.
- :mod:`~pipeline.lidar.normalise`: heights above the DTM, negatives clamped and counted.
- :mod:`~pipeline.lidar.chm`: highest return per cell (by default per gap-filled half
  cell), or pit-free (Khosravipour 2014).
- :mod:`~pipeline.lidar.metrics`: area-based metrics on the model grid.
- :mod:`~pipeline.lidar.engine`: buffered chunks as Dask tasks (lidR's catalog engine).

The stage is :func:`pipeline.stages.lidar.lidar`; the command
``forest-carbon lidar TILES... --resolution 1 --out DIR`` runs it on explicit tiles.
"""

from __future__ import annotations

from pipeline.lidar.chm import P2R, PitFree
from pipeline.lidar.ground import CSF, SMRF
from pipeline.lidar.index import TileInfo, index_tiles
from pipeline.lidar.metrics import BAND_NAMES

__all__ = ["BAND_NAMES", "CSF", "P2R", "SMRF", "PitFree", "TileInfo", "index_tiles"]
