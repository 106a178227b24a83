"""The class statistics of a class-means fit, for every stage; mergeable.

:class:`ClassStatistics` holds the statistics pass's result (per stage and
class: sums, weights, counts and, for the whitened metric, the within-class
scatter) with the labels they belong to, and merges with statistics fitted on
other rows (other batches, processes or machines).
"""

import copy

from ..exits.statistics import ClassStatsAccumulator
from .inputs import LabelIndex

__all__ = ["ClassStatistics"]


class ClassStatistics:
    """Class statistics of every stage of a class-means fit; mergeable.

    Per stage and class: the weighted sums of the stage vectors and the
    weights, the number of rows and, for the whitened metric, the
    within-class scatter, all in float64 around a fixed shift (one
    :class:`~sklearn_e2cm.exits.statistics.ClassStatsAccumulator` per stage),
    with the labels they belong to. Statistics fitted on different rows (other
    batches, other processes, other machines) combine with :meth:`merge` into
    the statistics of all the rows; the class means, covariances and exit
    heads only depend on them (:func:`heads_from_statistics`), so an estimator
    fitted on shards and merged equals one fitted on the union, up to
    floating-point rounding of the sums (and once its thresholds are tuned on
    the same rows).

    Parameters
    ----------
    n_stages : int
    metric : {"euclidean", "mahalanobis"}, default="euclidean"
        ``"mahalanobis"`` also accumulates the within-class scatter.
    classes : array-like, default=None
        Known labels, in index order (``None``: discovered as batches arrive).

    Attributes
    ----------
    labels : LabelIndex
        Label of every class index.
    stages : list of ClassStatsAccumulator
        The statistics of each stage.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = ClassStatistics(1, classes=[0, 1]), ClassStatistics(1, classes=[1, 2])
    >>> a.update(0, np.array([[0.0], [2.0]]), a.labels([0, 1]))
    >>> b.update(0, np.array([[4.0], [6.0]]), b.labels([1, 2]))
    >>> merged = a.merge(b)
    >>> merged.classes.tolist(), merged.means()[0].ravel().tolist(), merged.n_samples
    ([0, 1, 2], [0.0, 3.0, 6.0], 4)
    """

    def __init__(self, n_stages, metric="euclidean", classes=None):
        if metric not in ("euclidean", "mahalanobis"):
            raise ValueError(f"metric must be 'euclidean' or 'mahalanobis'; got {metric!r}.")
        self.metric = metric
        self.labels = LabelIndex(classes)
        self.stages = [ClassStatsAccumulator(scatter=metric == "mahalanobis")
                       for _ in range(int(n_stages))]

    def __repr__(self):
        return (f"ClassStatistics(n_stages={self.n_stages}, metric={self.metric!r}, "
                f"n_classes={len(self.labels.labels)}, n_samples={self.n_samples})")

    @property
    def n_stages(self):
        """Number of stages."""
        return len(self.stages)

    @property
    def n_samples(self):
        """Number of rows accumulated."""
        return self.stages[0].n_seen if self.stages else 0

    @property
    def classes(self):
        """Sorted labels (ndarray)."""
        return self.labels.sorted_order()[0]

    def update(self, j, F, y_idx, sample_weight=None, on_device=None):
        """Add a batch of stage ``j``'s vectors.

        Parameters
        ----------
        j : int
            Stage index.
        F : ndarray or torch.Tensor of shape (n, D_j)
        y_idx : ndarray of int of shape (n,)
            Class indices (``self.labels(y)``).
        sample_weight : ndarray of shape (n,), default=None
        on_device : tuple, default=None
            The batch's labels and weights already on ``F``'s device
            (:func:`~sklearn_e2cm.exits.statistics.labels_on_device`), shared
            by the stages of one batch.

        Returns
        -------
        None
        """
        self.stages[j].update(F, y_idx, sample_weight, on_device)

    def merge(self, other):
        """Add the statistics of ``other`` (fitted on other rows) to these.

        Labels are matched by value; labels only ``other`` has are appended.

        Parameters
        ----------
        other : ClassStatistics
            Same number of stages and metric; left unchanged.

        Returns
        -------
        self : ClassStatistics
        """
        if other.n_stages != self.n_stages or other.metric != self.metric:
            raise ValueError(
                f"Cannot merge statistics of {other.n_stages} stages with metric="
                f"{other.metric!r} into statistics of {self.n_stages} stages with metric="
                f"{self.metric!r}."
            )
        class_map = self.labels(other.labels.labels) if other.labels.labels else None
        for mine, theirs in zip(self.stages, other.stages):
            if theirs.sums is not None:
                K = theirs.sums.shape[0]  # classes declared but not seen yet have no row
                mine.merge(theirs, None if class_map is None else class_map[:K])
        return self

    def copy(self):
        """An independent copy (device-resident sums settled on the host).

        Returns
        -------
        stats : ClassStatistics
        """
        return copy.deepcopy(self)  # accumulators settle device sums when copied

    def _grown(self):
        K = len(self.labels.labels)
        for acc in self.stages:
            if acc.sums is not None and acc.weights.shape[0] < K:
                acc.grow(K, acc.sums.shape[1])
        if self.stages and self.stages[0].sums is None:
            raise ValueError("No samples were accumulated.")
        return K

    def means(self):
        """Class means of every stage, rows in sorted label order (:attr:`classes`).

        Returns
        -------
        means : list of ndarray of shape (n_classes, D_j)
            NaN rows for classes without weight.
        """
        self._grown()
        order = self.labels.sorted_order()[1]
        return [acc.means()[order] for acc in self.stages]

    def weights(self):
        """Total weight of every class, in sorted label order.

        Returns
        -------
        weights : ndarray of shape (n_classes,)
        """
        self._grown()
        return self.stages[0].weights[self.labels.sorted_order()[1]].copy()

    def covariances(self):
        """Pooled within-class covariance of every stage (``metric="mahalanobis"``).

        Returns
        -------
        covs : list of ndarray of shape (D_j, D_j)
        """
        self._grown()
        return [acc.within_class_covariance() for acc in self.stages]

