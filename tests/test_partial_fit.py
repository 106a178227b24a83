"""Mergeable class statistics, partial_fit and finalize."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler

from conftest import assert_same_statistics, fitted_digit_steps
from sklearn_e2cm import EarlyExitClassMeans
from sklearn_e2cm._fitting.class_statistics import ClassStatistics
from sklearn_e2cm.exits.statistics import ClassStatsAccumulator

RTOL = 1e-10  # statistics summed in another order: equal up to rounding


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X, y


@pytest.fixture(scope="module")
def fitted_stages(digits):
    """Scaler, PCA, Nystroem and a classifier, all fitted: partial_fit trains nothing."""
    return fitted_digit_steps(*digits)


def _est(stages, metric, **kw):
    kw.setdefault("flops_target", 0.4)
    kw.setdefault("sweep_resolution", 50)
    return EarlyExitClassMeans(stages=stages, metric=metric, random_state=0, **kw)


# ------------------------------------------------------------------ the accumulator
@pytest.mark.parametrize("scatter", [False, True])
def test_accumulator_merge_equals_one_pass(scatter):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(500, 6)) * 3.0 + 1e3  # a large offset: shifts must be exact
    y = rng.randint(0, 4, size=500)
    w = rng.uniform(0.5, 2.0, size=500)
    whole = ClassStatsAccumulator(scatter)
    whole.update(X, y, w)
    a, b = ClassStatsAccumulator(scatter), ClassStatsAccumulator(scatter)
    a.update(X[:200], y[:200], w[:200])
    # b numbers the classes in another order: class_map says where they go
    perm = np.array([2, 0, 3, 1])
    inv = np.argsort(perm)
    b.update(X[200:350], inv[y[200:350]], w[200:350])
    b.update(X[350:], inv[y[350:]], w[350:])
    a.merge(b, class_map=perm)
    assert a.n_seen == 500
    np.testing.assert_allclose(a.weights, whole.weights, rtol=RTOL)
    np.testing.assert_allclose(a.means(), whole.means(), rtol=RTOL)
    if scatter:
        cov = whole.within_class_covariance()
        np.testing.assert_allclose(a.within_class_covariance(), cov, rtol=RTOL,
                                   atol=RTOL * np.abs(cov).max())
        # the pooled within-class covariance, computed directly
        ref = sum(np.cov(X[y == k].T, aweights=w[y == k], bias=True) * w[y == k].sum()
                  for k in range(4)) / w.sum()
        np.testing.assert_allclose(cov, ref, rtol=1e-8, atol=1e-8 * np.abs(ref).max())


def test_accumulator_merge_checks():
    a, b = ClassStatsAccumulator(False), ClassStatsAccumulator(True)
    b.update(np.ones((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="scatter"):
        a.merge(b)
    c = ClassStatsAccumulator(True)
    with pytest.raises(ValueError, match="class_map has 3 entries"):
        c.merge(b, class_map=[0, 1, 2])
    assert c.merge(ClassStatsAccumulator(True)).sums is None  # merging nothing


def test_accumulator_merge_torch_device_sums():
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(1)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    y = rng.randint(0, 3, size=300)
    ref = ClassStatsAccumulator(True)
    ref.update(X.astype(np.float64), y)
    a, b = ClassStatsAccumulator(True), ClassStatsAccumulator(True)
    a.update(torch.from_numpy(X[:100]), y[:100])  # torch path: float64 sums
    b.update(torch.from_numpy(X[100:]), y[100:])
    b = pickle.loads(pickle.dumps(b))  # statistics travel between processes
    a.merge(b)
    np.testing.assert_allclose(a.means(), ref.means(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.within_class_covariance(), ref.within_class_covariance(),
                               rtol=1e-6, atol=1e-6)


# --------------------------------------------------- statistics of shards, merged
@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_shards_merge_into_the_union(digits, fitted_stages, metric):
    X, y = digits
    idx = np.arange(len(y))
    in_a = (idx < 1000) & (y <= 6)  # shard A holds classes 0..6 only
    stages = fitted_stages[:3]  # no classifier: a shard may lack classes
    whole = _est(stages, metric).fit(X, y)
    est_a = _est(stages, metric).fit(X[in_a], y[in_a])
    est_b = _est(stages, metric).fit(X[~in_a], y[~in_a])
    merged = est_a.class_statistics_.copy().merge(est_b.class_statistics_)
    assert_same_statistics(merged, whole.class_statistics_)
    # merged statistics + the same tuning rows: the estimator of one fit on the union
    est_a.class_statistics_ = merged
    est_a.finalize(X, y)
    for ma, mb in zip(est_a.class_means_, whole.class_means_):
        np.testing.assert_allclose(ma, mb, rtol=RTOL, atol=1e-12)
    if metric == "euclidean":
        for sa, sb in zip(est_a.distance_scale_[:-1], whole.distance_scale_[:-1]):
            np.testing.assert_allclose(sa, sb, rtol=RTOL)
    else:
        np.testing.assert_allclose(est_a.shrinkage_, whole.shrinkage_, rtol=1e-8)
    np.testing.assert_array_equal(est_a.predict(X), whole.predict(X))


def test_class_statistics_merge_checks():
    a = ClassStatistics(2, "euclidean", classes=[0, 1])
    with pytest.raises(ValueError, match="metric='mahalanobis'"):
        a.merge(ClassStatistics(2, "mahalanobis"))
    with pytest.raises(ValueError, match="3 stages"):
        a.merge(ClassStatistics(3, "euclidean"))
    with pytest.raises(ValueError, match="metric must be"):
        ClassStatistics(1, "cosine")
    with pytest.raises(ValueError, match="No samples"):
        a.means()


# ------------------------------------------------------------------ partial_fit
@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_partial_fit_chunks_then_finalize_equals_fit(digits, fitted_stages, metric):
    X, y = digits
    whole = _est(fitted_stages, metric, batch_size=100).fit(X, y)
    est = _est(fitted_stages, metric, batch_size=100)
    bounds = list(range(0, len(y), 300)) + [len(y)]  # chunks made of whole batches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "serves the base model until finalize"
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            est.partial_fit(X[lo:hi], y[lo:hi], classes=np.arange(10) if i == 0 else None)
    assert_same_statistics(est.class_statistics_, whole.class_statistics_)
    est.finalize(X, y)
    for ma, mb in zip(est.class_means_, whole.class_means_):
        np.testing.assert_allclose(ma, mb, rtol=RTOL, atol=1e-12)
    if metric == "euclidean":
        for sa, sb in zip(est.distance_scale_[:-1], whole.distance_scale_[:-1]):
            np.testing.assert_allclose(sa, sb, rtol=RTOL)
    np.testing.assert_array_equal(est.mixture_thresholds_, whole.mixture_thresholds_)
    np.testing.assert_array_equal(est.mixture_weights_, whole.mixture_weights_)
    assert est.expected_flops_ == pytest.approx(whole.expected_flops_, abs=1e-12)
    np.testing.assert_array_equal(est.predict(X), whole.predict(X))
    # another operating point from the tuning arrays finalize cached
    est.set_operating_point(flops_target=0.6)
    whole.set_operating_point(flops_target=0.6)
    np.testing.assert_array_equal(est.thresholds_, whole.thresholds_)


@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_partial_fit_uneven_chunks(digits, metric):
    X, y = digits
    whole = _est(None, metric).fit(X, y)
    est = _est(None, metric, flops_target=None)
    for i, rows in enumerate(np.array_split(np.random.RandomState(0).permutation(len(y)), 7)):
        est.partial_fit(X[rows], y[rows], classes=np.arange(10))  # the same classes: allowed
    assert_same_statistics(est.class_statistics_, whole.class_statistics_)


def test_partial_fit_serves_the_base_model_until_finalize(digits, fitted_stages):
    X, y = digits
    est = _est(fitted_stages, "euclidean")
    with pytest.warns(UserWarning, match="serves the base model"):
        est.partial_fit(X[:600], y[:600], classes=np.arange(10))
    Z = X
    for step in fitted_stages[:-1]:
        Z = step.transform(Z)
    np.testing.assert_array_equal(est.predict(X), fitted_stages[-1].predict(Z))
    r = est.route(X)
    assert np.all(r.exit_stage == 3) and np.allclose(r.flops, 1.0)
    assert est.expected_flops_ == pytest.approx(1.0)
    np.testing.assert_array_equal(est.thresholds_, np.ones(3))
    assert est.distance_scale_ == [None] * 4 and est.tradeoff_ is None
    with pytest.raises(RuntimeError, match="finalize"):
        est.set_operating_point(flops_target=0.5)
    est.finalize(X[600:1200], y[600:1200])  # held-out tuning rows
    assert est.expected_flops_ < 0.42  # at most the target (less above the hull)
    assert est.tradeoff_ is not None and est.distance_scale_[0] is not None
    with pytest.warns(UserWarning, match="serves the base model"):
        est.partial_fit(X[1200:], y[1200:])  # more rows: base model again until finalize
    assert est.class_statistics_.n_samples == len(y) - 600
    assert est.expected_flops_ == pytest.approx(1.0)
    est.finalize(X[600:1200], y[600:1200])
    assert est.expected_flops_ < 0.42  # at most the target (less above the hull)
    assert est.score(X, y) > 0.8
    est2 = pickle.loads(pickle.dumps(est))  # statistics pickle with the estimator
    assert_same_statistics(est2.class_statistics_, est.class_statistics_)


def test_partial_fit_unseen_classes(digits):
    X, y = digits
    est = EarlyExitClassMeans()
    with pytest.warns(UserWarning, match=r"Classes \[1, 2, 3, 4, 5, 6, 7, 8, 9\] have no"):
        est.partial_fit(X[y == 0][:1], [0], classes=np.arange(10))  # one row, one class
    est = EarlyExitClassMeans()
    first = y < 5
    with pytest.warns(UserWarning, match=r"Classes \[5, 6, 7, 8, 9\] have no rows"):
        est.partial_fit(X[first], y[first], classes=np.arange(10))
    with pytest.raises(NotFittedError, match="no training rows yet"):
        est.predict(X)
    with pytest.raises(ValueError, match="no training rows yet"):
        est.finalize(X, y)
    est.partial_fit(X[~first], y[~first])
    assert est.score(X, y) > 0.85
    np.testing.assert_array_equal(est.classes_, np.arange(10))


def test_partial_fit_errors_leave_the_estimator_unchanged(digits, fitted_stages):
    X, y = digits
    est = EarlyExitClassMeans(stages=fitted_stages)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        est.partial_fit(X, y)
    # steps that fit would train: no partial_fit (scikit-learn's available_if)
    assert not hasattr(EarlyExitClassMeans(stages=[StandardScaler(), PCA(4)]), "partial_fit")
    assert hasattr(EarlyExitClassMeans(stages=fitted_stages), "partial_fit")
    est.partial_fit(X[:900], y[:900], classes=np.arange(10))
    before = est.class_statistics_.means()
    with pytest.raises(ValueError, match=r"labels \[10\] that are not in classes"):
        est.partial_fit(X[900:], np.where(y[900:] == 3, 10, y[900:]))
    with pytest.raises(ValueError, match="differs from the classes"):
        est.partial_fit(X[900:], y[900:], classes=np.arange(11))
    with pytest.raises(ValueError, match="X has 5 features"):
        est.partial_fit(X[900:, :5], y[900:])
    est.set_params(metric="mahalanobis")
    with pytest.raises(ValueError, match="metric='mahalanobis' differs"):
        est.partial_fit(X[900:], y[900:])
    est.set_params(metric="euclidean")
    assert est.class_statistics_.n_samples == 900
    for a, b in zip(est.class_statistics_.means(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"classes \[42\] that the class statistics"):
        est.finalize(X[:10], np.full(10, 42))
    est.fit(X, y)  # fit starts over, and its statistics can be extended
    assert est.class_statistics_.n_samples == len(y)
    est.partial_fit(X[:100], y[:100])
    assert est.class_statistics_.n_samples == len(y) + 100


# ------------------------------------------------------------------ torch stages
@pytest.fixture(scope="module")
def tiny_torch(digits):
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU()),
              nn.Sequential(nn.Linear(24, 16), nn.ReLU()), nn.Linear(16, 10)]
    X, y = digits
    return stages, (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32), y


@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_torch_dataloader_chunks_and_sampler_padding(tiny_torch, metric):
    """partial_fit on DataLoaders; DistributedSampler shards (padded by repeating rows)
    merge into exactly the statistics of all rows: the padding is not counted."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    stages, X, y = tiny_torch
    # Euclidean class sums and the whitened scatter of a torch batch are products in the
    # stage's dtype (float32 here) before they are added in float64: shards batched
    # differently (the sampler shuffles) agree to float32 rounding.
    rtol = 1e-6
    kw = dict(final_classifier=False, batch_size=128, distributed=False, flops_target=0.95)
    whole = _est(stages, metric, **kw).fit(X, y)
    ds = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    W = 4
    assert len(ds) % W == 1  # ranks 1..3 get one repeated row each
    merged = None
    for r in range(W):
        sampler = DistributedSampler(ds, num_replicas=W, rank=r, shuffle=True, seed=3)
        loader = DataLoader(ds, batch_size=128, sampler=sampler)
        est = _est(stages, metric, **kw).fit(loader)
        assert est.class_statistics_.n_samples == (len(ds) - r + W - 1) // W
        merged = (est.class_statistics_ if merged is None
                  else merged.merge(est.class_statistics_))
    assert_same_statistics(merged, whole.class_statistics_, rtol)

    est = _est(stages, metric, **kw)  # chunks of whole batches: the same sums
    bounds = [0, 512, 1024, len(y)]
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        loader = DataLoader(TensorDataset(torch.from_numpy(X[lo:hi]), torch.from_numpy(y[lo:hi])),
                            batch_size=128)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            est.partial_fit(loader, classes=np.arange(10) if i == 0 else None)
    assert_same_statistics(est.class_statistics_, whole.class_statistics_)
    est.finalize(DataLoader(ds, batch_size=128))  # labels from the batches
    for ma, mb in zip(est.class_means_, whole.class_means_):
        np.testing.assert_allclose(ma, mb, rtol=RTOL, atol=1e-7)
    np.testing.assert_array_equal(est.mixture_thresholds_, whole.mixture_thresholds_)
    np.testing.assert_array_equal(est.predict(X), whole.predict(X))


def test_a_failing_finalize_leaves_the_estimator_as_it_was(digits, fitted_stages, monkeypatch):
    X, y = digits
    est = EarlyExitClassMeans(stages=fitted_stages, flops_target=0.5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est.partial_fit(X, y, classes=np.arange(10))
    est.finalize(X, y)
    assert est.thresholds_.shape == (3,) and np.any(est.thresholds_ > 0)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(est).items()}
    import sklearn_e2cm._incremental as inc

    def broken(*args, **kwargs):  # fails after the estimator's attributes started changing
        est.thresholds_ = np.zeros_like(est.thresholds_)
        est.tradeoff_ = None
        raise RuntimeError("tuning failed")

    monkeypatch.setattr(inc, "tune_class_means", broken)
    with pytest.raises(RuntimeError, match="tuning failed"):
        est.finalize(X, y)
    assert set(vars(est)) == set(before)
    np.testing.assert_array_equal(est.thresholds_, before["thresholds_"])
    assert est.tradeoff_ is before["tradeoff_"]
