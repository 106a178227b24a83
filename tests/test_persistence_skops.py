"""scikit-learn-only estimators through skops.io, trusting the types skops_trusted_types lists."""

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sklearn_e2cm import EarlyExitClassMeans
from sklearn_e2cm._backend import to_numpy
from sklearn_e2cm.persistence import skops_trusted_types

sio = pytest.importorskip("skops.io")
from skops.io.exceptions import UntrustedTypesFoundException  # noqa: E402

try:
    import torch
except ImportError:  # InternalClassifierEarlyExit trains its classifiers with torch
    torch = None


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:900], y[:900]


def _steps(X, y):
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    pca = PCA(16, random_state=0).fit(Z)
    return [scaler, pca, LogisticRegression(max_iter=300).fit(pca.transform(Z), y)]


def _e2cm(X, y, **kw):
    return EarlyExitClassMeans(stages=_steps(X, y), flops_target=0.8, sweep_resolution=100,
                               random_state=0, **kw).fit(X, y)


def _ic(X, y, **kw):
    from sklearn_e2cm import InternalClassifierEarlyExit

    return InternalClassifierEarlyExit(_steps(X, y), epochs=1, exit_at=[0, 1],
                                       sweep_resolution=50, flops_target=0.8, random_state=0,
                                       **kw).fit(X, y)


needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


@pytest.mark.parametrize("make", [
    pytest.param(lambda X, y: _e2cm(X, y), id="e2cm"),
    pytest.param(lambda X, y: _e2cm(X, np.array([f"digit-{k}" for k in y], dtype=object),
                                    metric="mahalanobis"), id="e2cm-whitened-str-labels"),
    pytest.param(lambda X, y: EarlyExitClassMeans(flops_target=None).fit(X, y), id="no-stages"),
    pytest.param(lambda X, y: _ic(X, y, method="sdn"), id="sdn", marks=needs_torch),
    pytest.param(lambda X, y: _ic(X, y, method="sdn", class_means=True, combine="and"),
                 id="sdn-and-e2cm", marks=needs_torch),
])
@pytest.mark.filterwarnings("ignore:flops_target=.* is below the cheapest")
def test_skops_round_trip(digits, make, tmp_path):
    X, y = digits
    est = make(X, y)
    path = tmp_path / "est.skops"
    sio.dump(est, path)
    trusted = skops_trusted_types(path)
    untrusted = sio.get_untrusted_types(file=path)
    # exactly the package's own types, and nothing else is needed for these files
    assert trusted == untrusted
    assert all(t.startswith("sklearn_e2cm.") for t in trusted)
    assert f"{type(est).__module__}.{type(est).__name__}" in trusted
    assert skops_trusted_types(est) == trusted == skops_trusted_types(path.read_bytes())
    with pytest.raises(UntrustedTypesFoundException):
        sio.load(path)
    with pytest.raises(UntrustedTypesFoundException):
        sio.load(path, trusted=trusted[1:])
    loaded = sio.load(path, trusted=trusted)
    assert type(loaded) is type(est)
    ra, rb = est.route(X), loaded.route(X)
    np.testing.assert_array_equal(ra.y_pred, rb.y_pred)
    np.testing.assert_array_equal(ra.exit_stage, rb.exit_stage)
    np.testing.assert_allclose(ra.flops, rb.flops, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(est.predict(X), loaded.predict(X))
    np.testing.assert_array_equal(est.predict_proba(X), loaded.predict_proba(X))
    np.testing.assert_array_equal(est.thresholds_, loaded.thresholds_)
    np.testing.assert_array_equal(est.classes_, loaded.classes_)
    assert est.classes_.dtype == loaded.classes_.dtype
    if est.tradeoff_ is not None:
        assert list(loaded.tradeoff_.columns) == list(est.tradeoff_.columns)
        for col in est.tradeoff_.columns:
            a, b = est.tradeoff_[col].to_numpy(), loaded.tradeoff_[col].to_numpy()
            if col == "thresholds":
                a, b = np.stack(a), np.stack(b)
            np.testing.assert_array_equal(a, b, err_msg=col)
            assert a.dtype == b.dtype, col


def test_other_types_are_left_to_the_user(digits, tmp_path):
    """A function (even one of this package) is never listed: skops still refuses it."""
    X, y = digits
    steps = [FunctionTransformer(to_numpy), *_steps(X, y)]
    est = EarlyExitClassMeans(stages=steps, stage_costs={0: 1.0}, flops_target=None).fit(X, y)
    path = tmp_path / "f.skops"
    sio.dump(est, path)
    trusted = skops_trusted_types(path)
    untrusted = sio.get_untrusted_types(file=path)
    assert "sklearn_e2cm._backend.to_numpy" in untrusted
    assert "sklearn_e2cm._backend.to_numpy" not in trusted
    # the adapter keeps why step 0's cost is unknown (stage_costs= gave it): an error object
    assert "sklearn_e2cm._flops.UnknownCostError" in trusted
    assert trusted == sorted(set(untrusted) - {"sklearn_e2cm._backend.to_numpy"})
    with pytest.raises(UntrustedTypesFoundException, match="to_numpy"):
        sio.load(path, trusted=trusted)
    loaded = sio.load(path, trusted=trusted + ["sklearn_e2cm._backend.to_numpy"])
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    errors = loaded._adapter.cost_errors_
    assert list(errors) == [0] and str(errors[0]) == str(est._adapter.cost_errors_[0])


def test_tuning_arrays_are_not_in_skops_files(digits, tmp_path):
    X, y = digits
    est = _e2cm(X, y)
    path = tmp_path / "t.skops"
    sio.dump(est, path)
    loaded = sio.load(path, trusted=skops_trusted_types(path))
    with pytest.raises(RuntimeError, match="tuning arrays are not available"):
        loaded.set_operating_point(flops_target=0.5)


def test_clear_error_without_skops(monkeypatch):
    monkeypatch.setitem(sys.modules, "skops", None)
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(ImportError, match="pip install skops"):
        skops_trusted_types("whatever.skops")
