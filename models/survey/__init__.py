"""Survey estimators of forest carbon totals: plots are the sample, maps are auxiliary data.

A verifier accepts a project's stock, stock change and credits, or a region's stock and
sink, as *survey estimates* from a probability sample of field plots, not as sums of map
pixels. This package holds that science, as pure functions on numpy arrays:

- :mod:`models.survey.design`: the stratified plot sample as data
  (:class:`~models.survey.design.StratifiedDesign`), the result type
  (:class:`~models.survey.design.Estimate`) and the Student-t interval shared by all
  estimators;
- :mod:`models.survey.stratified`: the design-based stratified estimator of stock and of
  stock change from re-measured plots (CDM AR-TOOL14; Cochran 1977 ch. 5);
- :mod:`models.survey.assisted`: model-assisted estimators with a wall-to-wall map as the
  auxiliary variable (difference, GREG, post-stratification; Särndal et al. 1992 ch. 6-7);
- :mod:`models.survey.crossfit`: the cross-fitted difference estimator for plots that also
  trained the map (double machine learning, Chernozhukov et al. 2018): the fold maps'
  correction of the map's stratum means, from a sample of cells;
- :mod:`models.survey.hybrid`: hybrid inference when LiDAR covers only a sample of the
  area (Ståhl et al. 2016);
- :mod:`models.survey.sample_size`: the number of plots and its allocation to strata
  (CDM AR-TOOL03).

Plot values are per-hectare densities (Mg/ha or t CO2e/ha); a total is the area times
the estimated mean density. Nothing here imports :mod:`pipeline`; malformed input raises
:class:`models.errors.SurveyError` naming the argument to fix.
"""
