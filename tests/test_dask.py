"""Dask: fits on dask arrays block by block, and FlopBudgetSearchCV's folds on a
dask.distributed cluster (joblib's dask backend); a LocalCluster of 2 worker processes on
the loopback address."""

import logging
import os
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from conftest import fitted_digit_steps  # noqa: E402
from sklearn_e2cm import EarlyExitClassMeans, FlopBudgetSearchCV  # noqa: E402

pytestmark = pytest.mark.slow  # starts two worker processes


@pytest.fixture(scope="module")
def client():
    root = str(Path(__file__).resolve().parents[1])
    old = os.environ.get("PYTHONPATH")
    # the workers unpickle the package's functions: make it importable there too
    os.environ["PYTHONPATH"] = root if not old else root + os.pathsep + old
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, memory_limit="2GiB", silence_logs=logging.ERROR)
    c = distributed.Client(cluster, timeout=60)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def test_search_folds_run_on_the_cluster(client):
    X, y = load_digits(return_X_y=True)
    # unfitted steps: every fold fits its own stages, in a worker process
    est = EarlyExitClassMeans(stages=[StandardScaler(), PCA(16, random_state=0),
                                      LogisticRegression(max_iter=300)], random_state=0)
    kw = dict(flops_targets=50, cv=3, max_flops=0.8, random_state=0, method="bisect")
    local = FlopBudgetSearchCV(clone(est), n_jobs=1, **kw).fit(X, y)
    with distributed.get_task_stream(client) as tasks:
        with joblib.parallel_backend("dask"):
            remote = FlopBudgetSearchCV(clone(est), n_jobs=-1, **kw).fit(X, y)
    workers = {t["worker"] for t in tasks.data}
    assert len(tasks.data) >= 3 and workers  # the folds ran as tasks on the workers
    for key in local.cv_results_:
        if "time" in key or key == "params":
            continue
        np.testing.assert_array_equal(np.asarray(local.cv_results_[key]),
                                      np.asarray(remote.cv_results_[key]), err_msg=key)
    assert local.best_params_ == remote.best_params_
    np.testing.assert_array_equal(local.best_estimator_.mixture_thresholds_,
                                  remote.best_estimator_.mixture_thresholds_)


@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_fit_on_a_dask_array_equals_numpy(client, metric):
    da = pytest.importorskip("dask.array")
    X, y = load_digits(return_X_y=True)
    w = np.random.RandomState(0).uniform(0.5, 2.0, size=len(y))
    stages = fitted_digit_steps(X, y)

    def est():  # not clone: it would unfit the steps
        return EarlyExitClassMeans(stages=stages, metric=metric, flops_target=0.4,
                                   sweep_resolution=50, random_state=0)

    ref = est().fit(X, y, sample_weight=w)
    Xd = da.from_array(X, chunks=(200, 32))  # 9 row blocks (2 merge levels), 2 column chunks
    with distributed.get_task_stream(client) as tasks:
        got = est().fit(Xd, y, sample_weight=w)
    assert len({t["worker"] for t in tasks.data}) >= 1 and len(tasks.data) >= 8
    a, b = got.class_statistics_, ref.class_statistics_
    assert a.n_samples == b.n_samples == len(y)
    for ma, mb in zip(a.means(), b.means()):
        np.testing.assert_allclose(ma, mb, rtol=1e-10, atol=1e-10 * np.abs(mb).max())
    if metric == "mahalanobis":
        for ca, cb in zip(a.covariances(), b.covariances()):
            np.testing.assert_allclose(ca, cb, rtol=1e-10, atol=1e-10 * np.abs(cb).max())
    else:
        for sa, sb in zip(got.distance_scale_[:-1], ref.distance_scale_[:-1]):
            np.testing.assert_allclose(sa, sb, rtol=1e-10)
    # thresholds are tuning rows' confidences: equal up to the rounding of the statistics
    np.testing.assert_allclose(got.mixture_thresholds_, ref.mixture_thresholds_, rtol=1e-12)
    np.testing.assert_allclose(got.mixture_weights_, ref.mixture_weights_, rtol=1e-9)
    assert got.n_features_in_ == 64
    np.testing.assert_array_equal(got.predict(X), ref.predict(X))


def test_dask_array_errors(client):
    da = pytest.importorskip("dask.array")
    X, y = load_digits(return_X_y=True)
    Xd = da.from_array(X, chunks=(500, 64))
    with pytest.raises(ValueError, match="stages that fit does not train"):
        EarlyExitClassMeans(stages=[StandardScaler(), PCA(4)]).fit(Xd, y)
    with pytest.raises(ValueError, match="calibration=0.2 is not supported"):
        EarlyExitClassMeans(calibration=0.2).fit(Xd, y)
