import numpy as np
import pytest
from sklearn.covariance import oas
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from sklearn_e2cm import EarlyExitClassMeans
from sklearn_e2cm.exits.class_means import (
    ExitHead,
    head_flops,
    oas_shrinkage,
    softmax,
    whitened_head,
)
from sklearn_e2cm.exits.statistics import ClassStatsAccumulator


@pytest.fixture(scope="module")
def balanced_digits():
    X, y = load_digits(return_X_y=True)
    idx = np.concatenate([np.flatnonzero(y == k)[:170] for k in range(10)])
    return X[idx], y[idx]


def test_softmax_is_stable():
    z = np.array([[1000.0, 999.0, -1000.0]])
    p = softmax(z)
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(p[0, :2], np.exp([0, -1]) / np.exp([0, -1]).sum(), rtol=1e-12)


def test_streaming_statistics_equal_batch_computation():
    rng = np.random.RandomState(0)
    X = rng.randn(400, 6) * [1, 2, 3, 1, 1, 5] + 3
    y = rng.randint(0, 4, 400)
    acc = ClassStatsAccumulator(scatter=True)
    for start in range(0, 400, 37):
        acc.update(X[start:start + 37], y[start:start + 37])
    means = np.array([X[y == k].mean(0) for k in range(4)])
    np.testing.assert_allclose(acc.means(), means, rtol=1e-12)
    Z = X - means[y]
    np.testing.assert_allclose(acc.within_class_covariance(), Z.T @ Z / len(X), rtol=1e-10,
                               atol=1e-12)
    # OAS amount equals scikit-learn's on the centred data
    _, a_ref = oas(Z, assume_centered=True)
    assert oas_shrinkage(acc.within_class_covariance(), len(X)) == pytest.approx(a_ref, rel=1e-10)


def test_classes_discovered_while_streaming_grow_the_accumulator():
    acc = ClassStatsAccumulator()
    acc.update(np.ones((2, 3)), np.array([0, 0]))
    acc.update(np.full((1, 3), 5.0), np.array([2]))
    with np.errstate(invalid="ignore"):
        m = acc.means()
    np.testing.assert_array_equal(m[0], 1.0)
    np.testing.assert_array_equal(m[2], 5.0)
    assert acc.weights.tolist() == [2.0, 0.0, 1.0]


@pytest.mark.parametrize("stage", [0, 1])
def test_whitened_exits_equal_lda_with_uniform_priors(balanced_digits, stage):
    X, y = balanced_digits
    clf = EarlyExitClassMeans(
        stages=[StandardScaler(), PCA(20, random_state=0), LogisticRegression(max_iter=500)],
        metric="mahalanobis", random_state=0,
    ).fit(X, y)
    F = StandardScaler().fit_transform(X)
    if stage == 1:
        F = clf._adapter.fitted_steps_[1].transform(F)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=clf.shrinkage_[stage],
                                     priors=np.full(10, 0.1)).fit(F, y)
    P = list(clf.staged_predict_proba(X))[stage]
    np.testing.assert_allclose(P, lda.predict_proba(F), atol=1e-10)
    np.testing.assert_array_equal(list(clf.staged_predict(X))[stage], lda.predict(F))


def test_whitened_head_fixed_shrinkage_and_flops():
    X, y = make_blobs(300, 4, centers=3, random_state=1)
    clf = EarlyExitClassMeans(metric="mahalanobis", shrinkage=0.3).fit(X, y)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.3, priors=np.ones(3) / 3)
    lda.fit(X, y)
    # blobs are balanced: shared covariance equals LDA's
    np.testing.assert_allclose(clf.predict_proba(X), lda.predict_proba(X), atol=1e-10)
    assert clf.shrinkage_ == [0.3]
    assert head_flops(4, 3, "mahalanobis") == 2 * 3 * 4 + 3 + 5 * 3 + 3 + 1


def test_near_singular_covariance_is_stable():
    rng = np.random.RandomState(0)
    X3, y = make_blobs(300, 3, centers=3, cluster_std=2.0, random_state=0)
    ref = EarlyExitClassMeans(metric="mahalanobis", shrinkage=0.0).fit(X3, y)
    # a duplicated column and a near-copy make the covariance (near-)singular
    X = np.hstack([X3, X3[:, :1], X3[:, 1:2] + 1e-9 * rng.randn(300, 1)])
    for shrink in (0.0, 1e-6, "oas"):
        clf = EarlyExitClassMeans(metric="mahalanobis", shrinkage=shrink).fit(X, y)
        P = clf.predict_proba(X)
        assert np.all(np.isfinite(P))
        np.testing.assert_allclose(P.sum(1), 1.0)
        assert clf.score(X, y) >= ref.score(X3, y) - 0.02


def test_covariance_budget_error_suggests_pooling():
    X, y = make_blobs(100, 50, centers=2, random_state=0)
    with pytest.raises(ValueError, match="50x50.*pooling"):
        EarlyExitClassMeans(metric="mahalanobis", max_covariance_bytes=1000).fit(X, y)


def test_exit_head_memory_and_flops_follow_metric():
    C = np.zeros((3, 8))
    assert ExitHead(C).nbytes(4) == (3 * 8 + 3) * 4
    assert ExitHead(C, scale=np.ones(3)).nbytes(8) == (3 * 8 + 6) * 8
    head, _ = whitened_head(C + np.arange(3)[:, None], np.eye(8), shrinkage=0.0)
    assert head.nbytes(4) == (3 * 8 + 3) * 4
    assert head.flops() == head_flops(8, 3, "mahalanobis")
    assert ExitHead(C).flops() == head_flops(8, 3, "euclidean", normalize=False)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_class_sums_match_a_loop_over_rows(weighted, dtype):
    torch = pytest.importorskip("torch")
    from sklearn_e2cm.exits.statistics import _class_sums_csr

    rng = np.random.default_rng(0)
    n, D, K = 37, 9, 5
    F = torch.as_tensor(rng.normal(size=(D, n)), dtype=getattr(torch, dtype)).T  # non-contiguous
    y = rng.integers(0, K - 1, n)  # the last class gets no row
    w = torch.as_tensor(rng.random(n), dtype=F.dtype) if weighted else None
    got = _class_sums_csr(F, y, w, K).numpy()
    ref = np.zeros((K, D))
    for i in range(n):  # brute force
        ref[y[i]] += F[i].numpy() * (1.0 if w is None else float(w[i]))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    acc = ClassStatsAccumulator()
    acc.update(F, y, None if w is None else w.numpy())
    np.testing.assert_allclose(acc.sums[:K - 1], ref[:K - 1], rtol=1e-5, atol=1e-5)


def _within_scatter_loop(X, y, w):
    """Brute-force pooled within-class covariance in float64 (one row at a time)."""
    K, D = int(y.max()) + 1, X.shape[1]
    means = np.array([np.average(X[y == k], axis=0, weights=w[y == k]) for k in range(K)])
    S = np.zeros((D, D))
    for i in range(X.shape[0]):
        r = X[i] - means[y[i]]
        S += w[i] * np.outer(r, r)
    return S / w.sum()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("D", [7, 400])  # 400: the product is split into column blocks
def test_float32_scatter_products_are_relative_to_the_within_class_scatter(weighted, D):
    """Classes 1e3 apart with unit spread: float32 products of class-centred rows keep the
    covariance to float32 rounding of the *within*-class scatter, as float64 products do to
    1e-10; a product around one global shift would lose it to the between-class part."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    n, K = 900, 4
    y = rng.integers(0, K, n)
    X = (rng.normal(size=(n, D)) + 1e3 * rng.normal(size=(K, D))[y]).astype(np.float32)
    w = rng.random(n) if weighted else np.ones(n)
    ref = _within_scatter_loop(X.astype(np.float64), y, w)
    got = {}
    for products in (True, False):
        acc = ClassStatsAccumulator(scatter=True)
        acc.float32_products = products
        for s in range(0, n, 256):
            acc.update(torch.from_numpy(X[s:s + 256]), y[s:s + 256],
                       w[s:s + 256] if weighted else None)
        got[products] = acc.within_class_covariance()
    scale = np.abs(np.diag(ref)).max()
    np.testing.assert_allclose(got[False], ref, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(got[True], ref, rtol=0, atol=2e-5 * scale)


def test_float32_scatter_falls_back_to_float64_when_torch_may_use_tf32():
    torch = pytest.importorskip("torch")
    from sklearn_e2cm._backend import float32_matmul_is_exact

    rng = np.random.default_rng(2)
    X = torch.from_numpy(rng.normal(size=(300, 6)).astype(np.float32))
    y = rng.integers(0, 3, 300)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert not float32_matmul_is_exact(torch.device("cpu"))
        acc = ClassStatsAccumulator(scatter=True)
        acc.update(X, y)
        got = acc.within_class_covariance()
    finally:
        torch.set_float32_matmul_precision(before)
    ref = _within_scatter_loop(X.numpy().astype(np.float64), y, np.ones(300))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
