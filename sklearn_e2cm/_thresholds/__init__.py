"""Threshold vectors: evaluation, search, sweep, hull and time sharing.

Everything here works on an :class:`ExitTable`, the per-stage arrays cached
once on the tuning data (max exit probability and correctness of every
sample at every stage, plus the cost model). Evaluating or searching
thresholds never runs a stage again.

Exit rule: a sample leaves after stage ``j`` (``j < M-1``) if
``conf[i, j] > T[j]``; the last stage always exits. A threshold ``>= 1`` can
never fire, so that exit head is switched off and its overhead is not paid.

Cost model: exiting after stage ``j`` costs
``(Σ_{i≤j} c_i + Σ_{i≤j, head i on} e_i) / Σ_i c_i``.

Two searches share one entry point, :func:`sweep`:

* ``method="bisect"`` -- the paper's search (Görmez et al., §IV-A,
  :func:`bisection_search`): for each FLOP target, random initial
  thresholds, then alternating bisection of one threshold at a time until
  the expected cost meets the target.
* ``method="coordinate"`` -- exact coordinate ascent on
  ``score - λ·cost`` (:func:`coordinate_path`): each 1-D step maximises the
  Lagrangian exactly over every candidate threshold of one stage (the
  sorted exit probabilities of the samples that reach it), with the head
  switched off as one more candidate; ``λ`` is swept from 0 (best score)
  upwards, warm-starting each ``λ`` from the previous solution. Each target
  is then served by the best path point whose cost does not exceed it.

Modules, each importing only those listed before it (and the package's
bottom layer, ``_hashing``):

* :mod:`.table` -- :class:`ExitTable`, the cost model, the exit rule;
* :mod:`.hull` -- upper hull, time sharing and mixtures of threshold vectors;
* :mod:`.bisection` -- the paper's search;
* :mod:`.coordinate` -- the coordinate-ascent path (uses the hull);
* :mod:`.sweep` -- both searches over many targets.
"""

from .bisection import bisection_search, random_starts
from .coordinate import coordinate_path
from .hull import (
    evaluate_mixtures,
    mixture_exits,
    mixture_values,
    served_hull,
    time_sharing,
    upper_hull,
    warn_unreachable,
)
from .sweep import SEARCH_METHODS, sweep, sweep_with_extremes
from .table import GRID, ExitTable, cumulative_cost, first_exit_stage

__all__ = [
    "ExitTable",
    "GRID",
    "SEARCH_METHODS",
    "cumulative_cost",
    "first_exit_stage",
    "bisection_search",
    "coordinate_path",
    "sweep",
    "sweep_with_extremes",
    "upper_hull",
    "served_hull",
    "time_sharing",
    "random_starts",
    "mixture_exits",
    "mixture_values",
    "evaluate_mixtures",
    "warn_unreachable",
]
