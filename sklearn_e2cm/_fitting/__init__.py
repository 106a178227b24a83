"""Fit passes shared by every early-exit estimator.

* :mod:`.inputs`: validation of fit and prediction input, labels, the
  calibration hold-out, stage costs.
* :mod:`.passes`: the statistics and tuning passes of class-means exits, and
  the per-stage collection every tuning pass uses.
* :mod:`.shared`: one forward pass shared by fits on subsets of its rows.
* :mod:`.operating_point`: the operating point chosen from a tuning table.
"""
