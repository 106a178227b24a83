"""Fits on dask arrays: class statistics and exit arrays computed block by block.

Each block of rows (a chunk of the dask array) runs through the stages on the
scheduler's workers (threads, or a ``dask.distributed`` cluster):

1. its class statistics (:class:`~sklearn_e2cm._fitting.class_statistics.ClassStatistics`),
   merged in a tree of at most 8 parts per node;
2. for the Euclidean metric with eq. 4, the sums of its distances to the final
   class means, added up into the scales (they must be known before any
   exit confidence is);
3. its exit arrays (confidence and prediction at every stage), concatenated in
   block order on the client.

The result is the fit of the whole array in memory, up to the rounding of the
sums (the blocks are summed in another order). Only the per-row exit arrays
(a few bytes per row and stage) and the statistics come back to the client.
"""

import numpy as np

from .class_statistics import ClassStatistics
from .passes import (
    ClassMeansData,
    ClassMeansFit,
    tuning_pass,
    accumulate_statistics,
    forward_source,
    heads_from_statistics,
)

__all__ = ["is_dask_array", "fit_blockwise"]

#: Parts merged by one task of the statistics' reduction tree.
FAN_IN = 8


def is_dask_array(X):
    """Whether ``X`` is a dask array (without importing dask)."""
    return (type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks")
            and hasattr(X, "to_delayed"))


def _block_statistics(adapter, Xb, yb, wb, classes, params, batch_size):
    stats = ClassStatistics(adapter.n_stages, params.metric, classes)
    data = ClassMeansData(
        adapter=adapter, labels=stats.labels,
        fit_source=forward_source(adapter, np.asarray(Xb, dtype=np.float64), yb, batch_size),
        fit_weights=wb, statistics=stats, cache_ok=False)
    return accumulate_statistics(data, params)


def _merge(*parts):
    out = parts[0].copy()
    for part in parts[1:]:
        out.merge(part)
    return out


class _Totals:
    """Stands in for a sum over processes: records a block's eq. 4 totals, or serves the
    totals of every block (one call per stage, in stage order)."""

    def __init__(self, totals=None):
        self.totals = totals
        self.seen = []

    def __call__(self, local):
        self.seen.append(local)
        return local if self.totals is None else self.totals[len(self.seen) - 1]


def _block_tuning(adapter, heads, params, Xb, wb, batch_size, totals):
    record = _Totals(totals)
    source = forward_source(adapter, np.asarray(Xb, dtype=np.float64), None, batch_size)
    with adapter.activate():
        heads, conf, pred, final = tuning_pass(adapter, list(heads), params, source, None,
                                                adapter.n_stages, wb, None, reduce_sum=record)
    if final is not None:
        pred[:, -1] = final
    return record.seen, heads, conf, pred


def fit_blockwise(X, y, sample_weight, adapter, classes, params, batch_size):
    """Class-means exits fitted on a dask array, block by block.

    Parameters
    ----------
    X : dask array of shape (n_samples, n_features)
        Chunked along the rows (columns are gathered into one chunk).
    y : ndarray of shape (n_samples,)
    sample_weight : ndarray of shape (n_samples,) or None
    adapter : StageAdapter
        Fitted, frozen (it is sent to the workers).
    classes : ndarray of shape (n_classes,)
        Sorted labels.
    params : ClassMeansParams
    batch_size : int
        Rows per batch inside a block.

    Returns
    -------
    fit : ClassMeansFit
        Tuned on every row (as ``calibration=None``).
    """
    import dask

    X = X.rechunk({1: -1})
    blocks = list(X.to_delayed().ravel())
    bounds = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(np.intp)
    rows = list(zip(bounds[:-1], bounds[1:]))

    def w_of(lo, hi):
        return None if sample_weight is None else sample_weight[lo:hi]

    parts = [dask.delayed(_block_statistics)(adapter, b, y[lo:hi], w_of(lo, hi), classes,
                                             params, batch_size)
             for b, (lo, hi) in zip(blocks, rows)]
    while len(parts) > 1:
        parts = [dask.delayed(_merge)(*parts[i:i + FAN_IN])
                 for i in range(0, len(parts), FAN_IN)]
    (stats,) = dask.compute(parts[0])
    data = ClassMeansData(adapter=adapter, labels=stats.labels, fit_source=None)
    classes, means, heads, shrinkage = heads_from_statistics(stats, data, params)

    def tuning(totals):
        return dask.compute(*[
            dask.delayed(_block_tuning)(adapter, heads, params, b, w_of(lo, hi), batch_size,
                                        totals)
            for b, (lo, hi) in zip(blocks, rows)])

    totals = None
    if params.metric != "mahalanobis" and params.normalize:
        seen = [out[0] for out in tuning(None)]  # eq. 4 totals of every block first
        totals = [np.sum([s[j] for s in seen], axis=0) for j in range(len(seen[0]))]
    out = tuning(totals)
    heads = out[0][1]  # the same in every block: scales from the totals of all blocks
    conf = np.concatenate([o[2] for o in out])
    pred = np.concatenate([o[3] for o in out])
    y_idx = np.searchsorted(classes, y)
    return ClassMeansFit(classes, means, heads, conf, pred, pred == y_idx[:, None], y_idx,
                         sample_weight, shrinkage, {}, stats)
