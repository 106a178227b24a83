"""Tests for sklearn_e2cm.metrics."""

from itertools import permutations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.model_selection import cross_val_score

from sklearn_e2cm.metrics import (
    align_labels,
    clustering_accuracy,
    clustering_accuracy_scorer,
)


def _brute_force_accuracy(y_true, y_pred):
    """Best accuracy over every one-to-one cluster -> class mapping."""
    classes = np.unique(y_true)
    clusters = np.unique(y_pred)
    m = max(len(classes), len(clusters))
    true_idx = np.searchsorted(classes, y_true)
    pred_idx = np.searchsorted(clusters, y_pred)
    best = 0.0
    for perm in permutations(range(m)):
        mapped = np.asarray(perm)[pred_idx]  # class index (>= len(classes): no class)
        best = max(best, float(np.mean(mapped == true_idx)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_clustering_accuracy_matches_brute_force(seed):
    rng = np.random.RandomState(seed)
    n_classes = rng.randint(1, 5)
    n_clusters = rng.randint(1, 5)
    n = rng.randint(1, 30)
    y_true = rng.randint(n_classes, size=n)
    y_pred = rng.randint(n_clusters, size=n) + 10  # arbitrary cluster ids
    assert clustering_accuracy(y_true, y_pred) == pytest.approx(
        _brute_force_accuracy(y_true, y_pred)
    )


def test_clustering_accuracy_permutation_invariant():
    y = np.repeat(np.arange(4), 5)
    assert clustering_accuracy(y, (y + 1) % 4) == 1.0
    assert clustering_accuracy(y, np.array(list("dcba"))[y]) == 1.0


def test_clustering_accuracy_different_numbers_of_clusters_and_classes():
    y_true = ["a", "a", "a", "b", "b", "b"]
    # more clusters than classes: one cluster cannot be mapped
    assert clustering_accuracy(y_true, [0, 0, 1, 2, 2, 2]) == pytest.approx(5 / 6)
    # fewer clusters than classes
    assert clustering_accuracy(y_true, [7, 7, 7, 7, 7, 7]) == pytest.approx(0.5)
    # single sample
    assert clustering_accuracy([3], [9]) == 1.0


def test_clustering_accuracy_sample_weight_equals_repetition():
    rng = np.random.RandomState(0)
    y_true = rng.randint(3, size=20)
    y_pred = rng.randint(4, size=20)
    w = rng.randint(1, 4, size=20)
    expected = clustering_accuracy(np.repeat(y_true, w), np.repeat(y_pred, w))
    assert clustering_accuracy(y_true, y_pred, sample_weight=w) == pytest.approx(expected)


def test_clustering_accuracy_errors():
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clustering_accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="length 0"):
        clustering_accuracy([], [])
    with pytest.raises(ValueError, match="non-zero|positive sum"):
        clustering_accuracy([0, 1], [0, 1], sample_weight=[0, 0])
    with pytest.raises(ValueError):
        clustering_accuracy(np.zeros((3, 2)), [0, 1, 2])


def test_scorer_with_a_clusterer():
    X, y = make_blobs(n_samples=120, centers=3, cluster_std=0.5, random_state=0)
    scores = cross_val_score(
        KMeans(3, n_init=3, random_state=0), X, y, cv=3, scoring=clustering_accuracy_scorer
    )
    assert scores.shape == (3,)
    assert np.all(scores > 0.95)
    km = KMeans(3, n_init=3, random_state=0).fit(X)
    assert clustering_accuracy_scorer(km, X, y) == clustering_accuracy(y, km.predict(X))


def test_align_labels_recovers_a_permutation():
    rng = np.random.RandomState(0)
    reference = rng.randint(5, size=100)
    perm = rng.permutation(5)
    labels = perm[reference]  # labels' cluster perm[k] is reference's cluster k
    mapping = align_labels(reference, labels, n_clusters=5)
    np.testing.assert_array_equal(mapping[labels], reference)
    np.testing.assert_array_equal(mapping[perm], np.arange(5))


@pytest.mark.parametrize("seed", range(5))
def test_align_labels_is_optimal(seed):
    rng = np.random.RandomState(seed)
    k = 4
    reference = rng.randint(k, size=40)
    labels = np.where(rng.rand(40) < 0.7, rng.permutation(k)[reference], rng.randint(k, size=40))
    mapping = align_labels(reference, labels, n_clusters=k)
    assert sorted(mapping) == list(range(k))
    agreement = np.mean(mapping[labels] == reference)
    best = max(np.mean(np.asarray(p)[labels] == reference) for p in permutations(range(k)))
    assert agreement == pytest.approx(best)
    assert agreement == pytest.approx(clustering_accuracy(reference, labels))


def test_align_labels_unseen_ids_and_default_n_clusters():
    mapping = align_labels([0, 0, 1], [2, 2, 0], n_clusters=4)
    assert sorted(mapping) == [0, 1, 2, 3]
    assert mapping[2] == 0 and mapping[0] == 1
    assert align_labels([0, 1], [1, 0]).tolist() == [1, 0]
    # float labels holding integers are accepted
    assert align_labels([0.0, 1.0], [1.0, 0.0]).tolist() == [1, 0]


def test_align_labels_errors():
    with pytest.raises(ValueError, match=r"cluster ids in \[0, 2\)"):
        align_labels([0, 1, 2], [0, 1, 1], n_clusters=2)
    with pytest.raises(ValueError, match=r"cluster ids in \[0, 3\)"):
        align_labels([0, 1, 2], [0, -1, 1], n_clusters=3)
    with pytest.raises(ValueError, match="integer cluster ids.*'a'"):
        align_labels(["a", "b"], [0, 1])
    with pytest.raises(ValueError, match="integer cluster ids"):
        align_labels([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="n_clusters must be a positive integer; got 0"):
        align_labels([0], [0], n_clusters=0)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        align_labels([0, 1], [0])
