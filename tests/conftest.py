"""Fixtures shared by the torch test modules (8×8 digit images, a tiny trained ResNet) and
the thread settings of the test session.

Threads: by default the session runs BLAS, OpenMP and torch with one thread each
(``E2CM_TEST_THREADS=1``). The tests use small arrays, for which waking worker threads
costs more than it saves: on a 2-core VM the suite took 200-280 s with the libraries'
default thread counts and ~45 s with one. Results must not depend on this: every float comparison
between different code paths carries a tolerance that holds for any thread count. To run
the suite with N threads everywhere, set ``E2CM_TEST_THREADS=N``; with
``E2CM_TEST_THREADS=0`` the session leaves the libraries alone (their defaults, or
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` as set).
"""

import os
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits


def _test_threads():
    return int(os.environ.get("E2CM_TEST_THREADS", "1"))


def _limit_loaded_libraries(config, n):
    from threadpoolctl import threadpool_limits

    config._e2cm_thread_limits = threadpool_limits(limits=n)  # BLAS and OpenMP runtimes
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def pytest_configure(config):
    n = _test_threads()
    if n > 0:
        # read by the libraries loaded later and by subprocesses
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)
        _limit_loaded_libraries(config, n)


def pytest_collection_finish(session):
    n = _test_threads()
    if n > 0:  # the test modules imported torch (which caps OMP_NUM_THREADS at the cores)
        _limit_loaded_libraries(session.config, n)


@pytest.fixture(scope="module")
def digit_images():
    """(X_train, y_train, X_test, y_test): digits as (n, 1, 8, 8) float32 images in [0, 1]."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    return X[:1200], y[:1200], X[1200:], y[1200:]


@pytest.fixture(scope="module")
def tiny_resnet(digit_images):
    """A depth-8, width-8 ResNet trained for 2 epochs on ``digit_images`` (one per module:
    tests may switch its train/eval mode)."""
    torch = pytest.importorskip("torch")
    from sklearn_e2cm.models import resnet_small, train_classifier

    Xtr, ytr, _, _ = digit_images
    torch.manual_seed(0)
    model = resnet_small(depth=8, width=8, in_channels=1, n_classes=10, input_size=8)
    train_classifier(model, Xtr, ytr, epochs=2, batch_size=64, random_state=0)
    return model


def forbid_code_on_load(monkeypatch, torch=None):
    """Make pickle, ``eval``/``exec`` (and ``torch.load``) raise; record every import.

    For the "loading runs no code from the file" tests: returns the list the
    names of the modules imported from now on are appended to.
    """
    import builtins
    import pickle

    def refuse(name):
        def f(*args, **kwargs):
            raise AssertionError(f"{name} called while loading")
        return f

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse(f"pickle.{name}"))
    monkeypatch.setattr(builtins, "eval", refuse("eval"))
    monkeypatch.setattr(builtins, "exec", refuse("exec"))
    if torch is not None:
        monkeypatch.setattr(torch, "load", refuse("torch.load"))
    real_import = builtins.__import__
    imported = []

    def recording_import(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", recording_import)
    return imported


def fitted_digit_steps(X, y):
    """StandardScaler, PCA(12), Nystroem(150) and a LogisticRegression, all fitted on ``X, y``."""
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(X)
    Z = sc.transform(X)
    pca = PCA(12, random_state=0).fit(Z)
    Z = pca.transform(Z)
    nys = Nystroem(n_components=150, random_state=0).fit(Z)
    clf = LogisticRegression(max_iter=300).fit(nys.transform(Z), y)
    return [sc, pca, nys, clf]


def assert_same_statistics(a, b, rtol=1e-10):
    """Two ``ClassStatistics`` agree: counts and labels exactly, class weights to 1e-10, means
    and covariances to ``rtol`` (relative to each array's largest entry)."""
    assert a.n_samples == b.n_samples
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.weights(), b.weights(), rtol=1e-10)
    for ma, mb in zip(a.means(), b.means()):
        np.testing.assert_allclose(ma, mb, rtol=rtol, atol=rtol * np.abs(mb).max())
    if a.metric == "mahalanobis":
        for ca, cb in zip(a.covariances(), b.covariances()):
            np.testing.assert_allclose(ca, cb, rtol=rtol, atol=rtol * np.abs(cb).max())


def rewrite_saved_file(path, out, edit_meta=None, replace=None, drop=()):
    """Copy a file written by ``save_exits``, editing its metadata, replacing or dropping
    members (the refused-file tests of the persistence suites); returns ``out``."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    if edit_meta is not None:
        meta = json.loads(members["metadata.json"])
        edit_meta(meta)
        members["metadata.json"] = json.dumps(meta).encode()
    members.update(replace or {})
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in members.items():
            if n not in drop:
                zf.writestr(n, data)
    return out
