"""Fits under torch.distributed: 2 processes, gloo, loopback; each rank equals one process."""

import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from conftest import assert_same_statistics  # noqa: E402
from sklearn_e2cm import EarlyExitClassMeans  # noqa: E402

pytestmark = pytest.mark.slow  # two fresh interpreters importing torch: ~10 s on 2 cores

WORLD = 2
RTOL = 1e-10

# Shared by the parent (one process, distributed=False) and the ranks (exec'd there).
CASES = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from sklearn_e2cm import EarlyExitClassMeans


    def digits():
        X, y = load_digits(return_X_y=True)
        return X, y


    def torch_stages():
        torch.manual_seed(0)
        return [nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU()),
                nn.Sequential(nn.Linear(24, 16), nn.ReLU()), nn.Linear(16, 10)]


    def sklearn_stages(X):
        """Fitted scaler, PCA and Nystroem: fitted the same way in every process."""
        from sklearn.decomposition import PCA
        from sklearn.kernel_approximation import Nystroem
        from sklearn.preprocessing import StandardScaler

        sc = StandardScaler().fit(X)
        pca = PCA(12, svd_solver="full").fit(sc.transform(X))
        nys = Nystroem(n_components=150, random_state=0).fit(pca.transform(sc.transform(X)))
        return [sc, pca, nys]


    def estimator(stages, metric, flops_target=0.5, **kw):
        return EarlyExitClassMeans(stages=stages, metric=metric, flops_target=flops_target,
                                   sweep_resolution=50, random_state=0, **kw)


    def fits(rank=None, world=1):
        """Fitted estimators: on the whole data (rank None) or on this rank's shard."""
        X, y = digits()
        out = {}
        dist = "auto" if rank is not None else False
        for metric in ("euclidean", "mahalanobis"):
            # array shards: rank 0 the first rows (and only classes 0..6 of them), rank 1 the rest
            if rank is None:
                Xs, ys = X, y
            else:
                first = (np.arange(len(y)) < 900) & (y <= 6)
                keep = first if rank == 0 else ~first
                Xs, ys = X[keep], y[keep]
            out["arrays", metric] = estimator(sklearn_stages(X), metric,
                                              distributed=dist).fit(Xs, ys)
        # a DataLoader over a DistributedSampler: 1797 rows, rank 1's shard is padded by a row
        Xi = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
        ds = TensorDataset(torch.from_numpy(Xi), torch.from_numpy(y))
        if rank is None:
            loader = DataLoader(ds, batch_size=128)
        else:
            loader = DataLoader(ds, batch_size=128,
                                sampler=DistributedSampler(ds, shuffle=True, seed=1))
        out["loader", "mahalanobis"] = estimator(
            torch_stages(), "mahalanobis", flops_target=0.95, final_classifier=False,
            batch_size=128, distributed=dist).fit(loader)
        return out


    def summary(fitted):
        X, y = digits()
        Xi = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
        out = {}
        for key, est in fitted.items():
            Xp = X if key[0] == "arrays" else Xi
            out[key] = dict(
                stats=est.class_statistics_, classes=est.classes_,
                mixture_thresholds=est.mixture_thresholds_,
                mixture_weights=est.mixture_weights_, expected_flops=est.expected_flops_,
                scales=est.distance_scale_, predictions=est.predict(Xp))
        return out
''')

WORKER = textwrap.dedent('''
    import os, pickle, sys
    import torch
    torch.set_num_threads(1)
    import torch.distributed as dist

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        ns = {}
        exec(open(sys.argv[5]).read(), ns)
        res = ns["summary"](ns["fits"](rank, world))
        with open(out, "wb") as f:
            pickle.dump(res, f)
    finally:
        dist.destroy_process_group()
''')


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "cases.py").write_text(CASES)
    (tmp / "worker.py").write_text(WORKER)
    port = _free_port()
    root = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": root, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    procs = [subprocess.Popen([sys.executable, str(tmp / "worker.py"), str(r), str(WORLD),
                               str(port), str(tmp / f"rank{r}.pkl"), str(tmp / "cases.py")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(WORLD)]
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=120)
            logs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r][-4000:]}"
    results = []
    for r in range(WORLD):
        with open(tmp / f"rank{r}.pkl", "rb") as f:
            results.append(pickle.load(f))
    ns = {}
    exec(CASES, ns)
    single = ns["summary"](ns["fits"]())
    return single, results


@pytest.mark.parametrize("key", [("arrays", "euclidean"), ("arrays", "mahalanobis"),
                                 ("loader", "mahalanobis")])
def test_every_rank_equals_one_process(rank_results, key):
    single, ranks = rank_results
    ref = single[key]
    # A network's float32 activations of a row may differ in their last bits with the batch
    # the row runs in (other GEMM blocking), and the ranks' batches hold other rows than the
    # single process's: their statistics agree to float32 rounding. Arrays are float64 end
    # to end and agree to 1e-10.
    rtol = RTOL if key[0] == "arrays" else 1e-6
    for r, res in enumerate(ranks):
        got = res[key]
        assert_same_statistics(got["stats"], ref["stats"], rtol)
        np.testing.assert_array_equal(got["classes"], ref["classes"])
        for sa, sb in zip(got["scales"], ref["scales"]):
            assert (sa is None) == (sb is None)
            if sa is not None:
                np.testing.assert_allclose(sa, sb, rtol=rtol)
        # thresholds are tuning rows' confidences: equal up to the rounding of the sums
        # (float64 for arrays; for a network's float32 activations the whitened scatter is a
        # float32 product per batch, and the ranks' batches hold other rows)
        np.testing.assert_allclose(got["mixture_thresholds"], ref["mixture_thresholds"],
                                   rtol=1e-12 if key[0] == "arrays" else 1e-4)
        np.testing.assert_allclose(got["mixture_weights"], ref["mixture_weights"],
                                   rtol=1e-9)
        assert got["expected_flops"] == pytest.approx(ref["expected_flops"], abs=1e-12)
        np.testing.assert_array_equal(got["predictions"], ref["predictions"])


def test_distributed_true_needs_a_process_group():
    X = np.random.RandomState(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match="distributed=True needs an initialised"):
        EarlyExitClassMeans(distributed=True).fit(X, y)
    EarlyExitClassMeans(distributed="auto").fit(X, y)  # no process group: a local fit
