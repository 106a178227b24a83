"""``memory_overhead_bytes_`` counts what the exit heads hold: one copy, in the compute dtype."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from sklearn_e2cm import EarlyExitClassMeans
from sklearn_e2cm.exits.class_means import ExitHead


def _held_arrays(obj, seen=None):
    """Every numpy array / torch tensor reachable from ``obj``'s attributes, by memory address
    (views of one buffer count once)."""
    seen = {} if seen is None else seen
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        seen[("np", base.__array_interface__["data"][0])] = base.nbytes
    elif type(obj).__module__.startswith("torch") and hasattr(obj, "untyped_storage"):
        st = obj.untyped_storage()
        seen[(str(obj.device), st.data_ptr())] = st.nbytes()
    elif isinstance(obj, dict):
        for v in obj.values():
            _held_arrays(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _held_arrays(v, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("sklearn_e2cm"):
        for v in vars(obj).values():
            _held_arrays(v, seen)
    return seen


def _heads_bytes(est):
    seen = {}
    for h in est._heads:
        _held_arrays(h, seen)
    return sum(seen.values())


def _check_honest(est):
    thresholds = est.mixture_thresholds_.nbytes + est.mixture_weights_.nbytes
    assert est.memory_overhead_bytes_ == _heads_bytes(est) + thresholds


def test_head_holds_one_copy_and_serves_cpu_tensors_in_place():
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    C = rng.randn(4, 16)
    head = ExitHead(C, scale=np.full(4, 2.0), dtype=np.float32)
    assert head.means.dtype == np.float32 and head._sqnorm.dtype == np.float32
    before = head.nbytes()
    assert before == (4 * 16 + 4 + 4) * 4 + 4 * 8  # means, norms, 1/s (float32), s (float64)
    F = rng.randn(5, 16).astype(np.float32)
    P_np = head.proba(F)
    P_t = head.proba(torch.from_numpy(F))
    np.testing.assert_allclose(P_t.numpy(), P_np, rtol=1e-5, atol=1e-6)
    head.proba(F.astype(np.float64))  # another dtype: a temporary conversion, not kept
    assert head.nbytes() == before == sum(_held_arrays(head).values())
    means_t, _, _ = head._params(torch.from_numpy(F))
    assert means_t.data_ptr() == head.means.__array_interface__["data"][0]  # no copy
    # the float32 head gives what the float64 head computes in float32
    ref = ExitHead(C, scale=np.full(4, 2.0)).proba(F)
    np.testing.assert_allclose(P_np, ref, rtol=1e-5, atol=1e-6)
    assert before == ExitHead.nbytes_for(4, 16, np.float32)
    assert ExitHead(C, dtype=np.float32).nbytes() == ExitHead.nbytes_for(4, 16, normalize=False)
    assert head.astype(np.float32) is head
    h64 = head.astype(np.float64)
    assert h64.means.dtype == np.float64 and h64.nbytes() == (4 * 16 + 4 + 4 + 4) * 8


def test_sklearn_stages_hold_float64_once():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    clf = EarlyExitClassMeans(
        stages=[StandardScaler(), PCA(16, random_state=0), LogisticRegression(max_iter=300)],
        flops_target=0.7, random_state=0,
    ).fit(X, y)
    _check_honest(clf)
    for h, C in zip(clf._heads, clf.class_means_):
        assert h.means is C and C.dtype == np.float64  # the attribute is the head's array
    n = clf.memory_overhead_bytes_
    clf.predict(X[:50])
    clf.staged_predict(X[:20])
    assert clf.memory_overhead_bytes_ == n
    _check_honest(clf)


@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_torch_stages_hold_one_float32_copy(metric, digit_images):
    torch = pytest.importorskip("torch")
    from torch import nn

    Xtr, ytr, Xte, _ = digit_images
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)),
    )
    clf = EarlyExitClassMeans(stages=net, flops_target=0.5, metric=metric, pooling="avg4",
                              batch_size=256, random_state=0).fit(Xtr[:600], ytr[:600])
    _check_honest(clf)
    K = 10
    expected = clf.mixture_thresholds_.nbytes + clf.mixture_weights_.nbytes
    for h, C in zip(clf._heads, clf.class_means_):
        assert h.means is C and C.dtype == np.float32
        D = C.shape[1]
        if metric == "euclidean":  # means, norms, 1/s in float32; s in float64
            expected += (K * D + 2 * K) * 4 + K * 8
        else:  # means, W, b in float32
            expected += (2 * K * D + K) * 4
        assert h.nbytes() == ExitHead.nbytes_for(K, D, np.float32, metric)
    assert clf.memory_overhead_bytes_ == expected
    # float32 heads predict what float64 heads cast to float32 at each batch predicted
    ref_heads = [ExitHead(np.asarray(h.means, np.float64), h.scale, h.metric,
                          None if h.coef is None else np.asarray(h.coef, np.float64),
                          None if h.intercept is None else np.asarray(h.intercept, np.float64))
                 for h in clf._heads]
    y_np = clf.predict(Xte)
    _check_honest(clf)
    assert clf.memory_overhead_bytes_ == expected  # no copy kept by predicting on numpy ...
    y_t = clf.predict(torch.from_numpy(Xte))
    clf.staged_predict_proba(Xte[:30])
    _check_honest(clf)
    assert clf.memory_overhead_bytes_ == expected  # ... nor on tensors
    np.testing.assert_array_equal(y_np, y_t)
    heads = clf._heads
    try:
        clf._heads = ref_heads
        y_ref = clf.predict(Xte)
    finally:
        clf._heads = heads
    assert np.mean(y_ref == y_np) >= 0.99
