"""Metrics for clustering with early exits.

* :func:`clustering_accuracy`: unsupervised clustering accuracy (the best
  one-to-one mapping between clusters and classes, Hungarian algorithm), the
  measure of Xie et al. (2016) used by the E²CM paper for DEC.
* :data:`clustering_accuracy_scorer`: the same as a scikit-learn scorer, for
  ``scoring=`` in :func:`~sklearn.model_selection.cross_val_score` or
  :class:`~sklearn.model_selection.GridSearchCV` with clusterers that have a
  ``predict`` method.
* :func:`align_labels`: the permutation of cluster ids that makes one
  clustering agree best with another (used to align the cluster indices of
  the exits of :class:`~sklearn_e2cm.DECEarlyExit` with its final head).
"""

import numbers

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import make_scorer
from sklearn.utils.validation import (
    _check_sample_weight,
    check_consistent_length,
    column_or_1d,
)

__all__ = ["align_labels", "clustering_accuracy", "clustering_accuracy_scorer"]


def _weighted_contingency(a, b, sample_weight=None):
    """Contingency table of two label vectors, with the unique labels of each.

    Returns ``(table, a_values, b_values)`` where ``table[i, j]`` is the
    (weighted) number of samples with ``a == a_values[i]`` and
    ``b == b_values[j]``.
    """
    a_values, a_idx = np.unique(a, return_inverse=True)
    b_values, b_idx = np.unique(b, return_inverse=True)
    n_a, n_b = len(a_values), len(b_values)
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
    table = np.bincount(
        a_idx.ravel() * n_b + b_idx.ravel(), weights=weights, minlength=n_a * n_b
    ).reshape(n_a, n_b)
    return table, a_values, b_values


def _as_cluster_ids(arr, name):
    """``arr`` as int64 cluster ids, or a ValueError naming ``name``."""
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)):
        ids = arr.astype(np.int64)
        if np.array_equal(ids, arr):
            return ids
    raise ValueError(
        f"{name} must contain integer cluster ids; got values such as {arr[:3].tolist()!r} "
        f"(dtype {arr.dtype})."
    )


def clustering_accuracy(y_true, y_pred, *, sample_weight=None):
    """Unsupervised clustering accuracy.

    The fraction of samples whose cluster is mapped to their class under the
    best one-to-one mapping between clusters and classes::

        ACC = max_m  sum_i 1{y_true_i = m(y_pred_i)} / n

    The mapping ``m`` is found with the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`) on the contingency matrix,
    as in Xie, Girshick & Farhadi (2016). Labels on either side may be
    arbitrary (integers, strings), and the numbers of clusters and classes
    may differ: surplus clusters are left unmapped and their samples count
    as errors.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels (any hashable, sortable values, e.g. cluster ids).
    sample_weight : array-like of shape (n_samples,), default=None
        Sample weights; the accuracy is then the matched weight over the
        total weight.

    Returns
    -------
    accuracy : float
        In ``[0, 1]``; 1.0 when the clustering equals the classes up to a
        renaming of the clusters.

    Raises
    ------
    ValueError
        When the inputs are empty, not 1-D, or of different lengths.

    See Also
    --------
    align_labels : The mapping itself, as a permutation of cluster ids.
    sklearn.metrics.adjusted_rand_score : A chance-corrected alternative.

    Examples
    --------
    >>> from sklearn_e2cm.metrics import clustering_accuracy
    >>> clustering_accuracy([0, 0, 1, 1, 2, 2], [1, 1, 0, 0, 2, 2])
    1.0
    >>> clustering_accuracy(["a", "a", "b", "b"], [5, 5, 5, 7])
    0.75
    """
    y_true = column_or_1d(y_true, warn=True)
    y_pred = column_or_1d(y_pred, warn=True)
    check_consistent_length(y_true, y_pred)
    if y_true.shape[0] == 0:
        raise ValueError(
            "clustering_accuracy needs at least one sample; got y_true and "
            "y_pred of length 0."
        )
    if sample_weight is not None:
        sample_weight = _check_sample_weight(sample_weight, y_true)
        total = float(sample_weight.sum())
        if total <= 0:
            raise ValueError(
                f"sample_weight must have a positive sum; got {total!r}."
            )
    else:
        total = float(y_true.shape[0])
    table, _, _ = _weighted_contingency(y_true, y_pred, sample_weight)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / total)


#: :func:`clustering_accuracy` as a scorer (greater is better). It calls the
#: clusterer's ``predict`` (cluster ids) and compares with ``y``, e.g.
#: ``cross_val_score(DEC(), X, y, scoring=clustering_accuracy_scorer)``.
clustering_accuracy_scorer = make_scorer(clustering_accuracy)


def align_labels(reference, labels, n_clusters=None):
    """Permutation of cluster ids that aligns ``labels`` with ``reference``.

    Finds the one-to-one mapping of cluster ids that maximises the number of
    samples on which the two clusterings agree (Hungarian algorithm on the
    contingency matrix). ``mapping[labels]`` is then ``labels`` renamed to
    the ids of ``reference``.

    Parameters
    ----------
    reference : array-like of int of shape (n_samples,)
        Cluster ids to align to, in ``[0, n_clusters)``.
    labels : array-like of int of shape (n_samples,)
        Cluster ids to rename, in ``[0, n_clusters)``.
    n_clusters : int, default=None
        Number of cluster ids on each side. ``None`` means one more than the
        largest id in either input. Ids that never occur are still mapped,
        so the result is always a full permutation.

    Returns
    -------
    mapping : ndarray of int of shape (n_clusters,)
        A permutation of ``range(n_clusters)``: cluster ``i`` of ``labels``
        becomes cluster ``mapping[i]`` of ``reference``.

    Raises
    ------
    ValueError
        When the inputs have different lengths, or contain ids that are not
        integers in ``[0, n_clusters)``.

    Examples
    --------
    >>> from sklearn_e2cm.metrics import align_labels
    >>> reference = [0, 0, 1, 1, 2, 2]
    >>> labels = [2, 2, 0, 0, 1, 1]
    >>> mapping = align_labels(reference, labels, n_clusters=3)
    >>> mapping
    array([1, 2, 0])
    >>> mapping[labels]
    array([0, 0, 1, 1, 2, 2])
    """
    reference = column_or_1d(reference, warn=True)
    labels = column_or_1d(labels, warn=True)
    check_consistent_length(reference, labels)
    reference = _as_cluster_ids(reference, "reference")
    labels = _as_cluster_ids(labels, "labels")
    if n_clusters is None:
        n_clusters = int(max(reference.max(initial=-1), labels.max(initial=-1)) + 1)
    elif not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer; got {n_clusters!r}.")
    n_clusters = int(n_clusters)
    for name, arr in (("reference", reference), ("labels", labels)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_clusters):
            raise ValueError(
                f"{name} must contain cluster ids in [0, {n_clusters}); got ids from "
                f"{arr.min()} to {arr.max()}."
            )
    table = np.bincount(
        labels * n_clusters + reference, minlength=n_clusters * n_clusters
    ).reshape(n_clusters, n_clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = np.empty(n_clusters, dtype=np.int64)
    mapping[rows] = cols
    return mapping
