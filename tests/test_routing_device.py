"""Routing on the stages' device: hashing where the rows are, few host transfers per batch,
the same predictions on any device, and safe concurrent activation."""

import copy
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from sklearn_e2cm import EarlyExitClassMeans, InternalClassifierEarlyExit  # noqa: E402
from sklearn_e2cm._hashing import assign_rows, row_uniforms  # noqa: E402
from sklearn_e2cm.stages import TorchStages  # noqa: E402

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("shape, dtype", [
    ((40, 7), np.float64), ((33, 1, 8, 8), np.float32), ((9, 3), np.float16),
    ((6, 5), np.int8), ((5, 0), np.float32), ((0, 4), np.float32), ((3, 1, 28, 28), np.float32),
])
@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3, 2**64 - 5])
def test_uniforms_of_a_tensor_equal_numpy_bit_for_bit(shape, dtype, seed):
    rng = np.random.default_rng(seed % 2**32)
    X = (rng.standard_normal(shape) * 100).astype(dtype)
    u_np = row_uniforms(X, seed)
    u_t = row_uniforms(torch.from_numpy(X), seed)
    assert isinstance(u_t, torch.Tensor) and u_t.dtype == torch.float64
    np.testing.assert_array_equal(u_t.numpy(), u_np)
    assert np.all((u_np >= 0) & (u_np < 1))
    w = [0.2, 0.5, 0.3]
    np.testing.assert_array_equal(assign_rows(u_t, w).numpy(), assign_rows(u_np, w))


def test_uniforms_do_not_depend_on_the_batch():
    X = torch.randn(50, 3, 4, 4)
    whole = row_uniforms(X, 3)
    parts = torch.cat([row_uniforms(X[:17], 3), row_uniforms(X[17:], 3)])
    assert torch.equal(whole, parts)
    assert len(np.unique(whole.numpy())) == 50  # distinct rows, distinct draws


class _TransferSpy:
    """Counts device-to-host conversions (``.cpu()``, ``.numpy()``, ``.item()``, ``.tolist()``,
    and the implicit ones: ``bool()``, ``int()``, ``float()`` of a tensor)."""

    NAMES = ("cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def spy(t, *args, _original=original, **kwargs):
                self.count += 1
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, spy)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 10)),
    )


@pytest.fixture(scope="module")
def fitted(digit_images):
    Xtr, ytr, Xte, yte = digit_images
    net = _net()
    est = EarlyExitClassMeans(stages=net, flops_target=0.5, batch_size=100,
                              random_state=0).fit(Xtr, ytr)
    return est, Xte


@pytest.mark.parametrize("thresholds", ["mixture", "none_leave", "all_leave"])
def test_routed_pass_makes_few_host_transfers_per_batch(fitted, monkeypatch, thresholds):
    est, X = fitted
    M = est.n_stages_
    if thresholds == "none_leave":  # every head active, (almost) no row leaves early
        est.set_operating_point(thresholds=np.full(M - 1, np.nextafter(1.0, 0.0)))
    elif thresholds == "all_leave":
        est.set_operating_point(thresholds=np.zeros(M - 1))
    else:  # between two hull vertices: time sharing, every row is hashed
        hull = np.sort(est.tradeoff_.loc[est.tradeoff_["on_hull"], "flops"].to_numpy())
        est.set_operating_point(flops_target=float(hull[-2:].mean()))
        assert est.mixture_weights_.shape[0] == 2
    X = torch.from_numpy(X)
    n_batches = -(-X.shape[0] // est.batch_size)
    spy = _TransferSpy(monkeypatch)
    res = est.route(X)
    monkeypatch.undo()
    # per batch at most n_stages + 2, plus one per call: the finiteness check of the input
    assert spy.count <= n_batches * (M + 2) + 1, (spy.count, n_batches, M)
    assert len(res) == X.shape[0]


def test_routing_a_tensor_equals_routing_the_array(fitted):
    est, X = fitted
    hull = np.sort(est.tradeoff_.loc[est.tradeoff_["on_hull"], "flops"].to_numpy())
    est.set_operating_point(flops_target=float(hull[-2:].mean()))
    a = est.route(X)
    b = est.route(torch.from_numpy(X))
    np.testing.assert_array_equal(a.y_pred, b.y_pred)
    np.testing.assert_array_equal(a.exit_stage, b.exit_stage)
    np.testing.assert_array_equal(a.component, b.component)
    np.testing.assert_array_equal(a.proba, b.proba)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_routing_on_cuda_equals_cpu(fitted):
    est, X = fitted
    cpu = est.route(X)
    gpu_est = copy.deepcopy(est)  # its own adapter and network: the fixture stays on the CPU
    gpu_est._adapter.device, gpu_est._adapter.device_ = "cuda", torch.device("cuda")
    gpu = gpu_est.route(torch.from_numpy(X).cuda())
    np.testing.assert_array_equal(cpu.component, gpu.component)
    # float32 convolutions differ in the last bits between devices: a row whose exit
    # confidence sits on its threshold may go the other way
    assert np.mean(cpu.y_pred == gpu.y_pred) > 0.99
    assert np.mean(cpu.exit_stage == gpu.exit_stage) > 0.99


@pytest.mark.parametrize("kw", [{"combine": "and"},
                                {"combine": "consult", "metric": "mahalanobis"}])
def test_internal_classifier_routes_on_the_device(digit_images, monkeypatch, kw):
    Xtr, ytr, Xte, yte = digit_images
    ic = InternalClassifierEarlyExit(_net(), exit_at=[0, 1], epochs=1, class_means=True,
                                     flops_target=0.5, batch_size=100,
                                     random_state=0, **kw).fit(Xtr, ytr)
    a = ic.route(Xte)
    X = torch.from_numpy(Xte)
    spy = _TransferSpy(monkeypatch)
    b = ic.route(X)
    monkeypatch.undo()
    n_batches = -(-X.shape[0] // ic.batch_size)
    assert spy.count <= n_batches * (ic.n_stages_ + 2) + 1  # + 1: the input check, per call
    np.testing.assert_array_equal(a.y_pred, b.y_pred)
    np.testing.assert_array_equal(a.exit_stage, b.exit_stage)


def test_concurrent_predictions_leave_the_network_as_it_was(digit_images):
    Xtr, ytr, Xte, yte = digit_images
    net = _net()
    net[1].train()  # a network left partly in train mode
    modes = [m.training for m in net.modules()]
    est = EarlyExitClassMeans(stages=net, flops_target=0.5, batch_size=64,
                              random_state=0).fit(Xtr, ytr)
    serial = est.predict(Xte)
    out, errors = [None] * 8, []

    def work(k):
        try:
            out[k] = est.predict(Xte)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for o in out:
        np.testing.assert_array_equal(o, serial)
    assert [m.training for m in net.modules()] == modes


def test_activation_does_not_move_modules_in_place(digit_images, monkeypatch):
    Xtr, ytr, _, _ = digit_images
    ad = TorchStages(_net(), device="cpu").fit(torch.from_numpy(Xtr[:10]))
    calls = []
    original = nn.Module.to
    monkeypatch.setattr(nn.Module, "to", lambda m, *a, **k: calls.append(1) or original(m, *a, **k))
    with ad.activate():
        with ad.activate():  # nested: switched once
            pass
    assert calls == []


@pytest.mark.parametrize("scatter", [False, True])
def test_class_statistics_of_tensors_are_read_back_once(scatter, monkeypatch):
    from sklearn_e2cm.exits.statistics import ClassStatsAccumulator

    rng = np.random.default_rng(0)
    F = rng.standard_normal((600, 5)).astype(np.float32) + 3.0
    y = rng.integers(0, 3, 600)
    y[500:] = rng.integers(0, 5, 100)  # classes 3 and 4 appear late (streaming)
    w = rng.random(600)
    ref, acc = ClassStatsAccumulator(scatter=scatter), ClassStatsAccumulator(scatter=scatter)
    spy = _TransferSpy(monkeypatch)
    for s in range(0, 600, 128):
        ref.update(F[s:s + 128], y[s:s + 128], w[s:s + 128])
        acc.update(torch.from_numpy(F[s:s + 128]), y[s:s + 128], w[s:s + 128])
    during = spy.count
    means = acc.means()
    monkeypatch.undo()
    if scatter:
        # accumulated where the batches are (float64 tensors, the device path); only the
        # first batch's mean (the shift) is read back before the end
        assert during <= 2
    # (Euclidean sums of CPU tensors go through a sparse product into host memory: the
    # tensors' .numpy() there is a view, not a transfer)
    np.testing.assert_allclose(means, ref.means(), rtol=1e-6, atol=1e-6)
    if scatter:
        # float32 features: the scatter is a float32 product of class-centred rows
        np.testing.assert_allclose(acc.within_class_covariance(),
                                   ref.within_class_covariance(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_fit_copies_each_batch_labels_to_the_device_once(digit_images, monkeypatch, metric):
    """One copy of a batch's labels (and weights) for all stages, and the shift once per
    stage: on CUDA each copy from pageable host memory would wait for the device."""
    import sklearn_e2cm._fitting.passes as passes
    from sklearn_e2cm.exits.statistics import labels_on_device

    Xtr, ytr, _, _ = digit_images
    calls = []

    def counting(y_idx, w, device):
        calls.append(device)
        return labels_on_device(y_idx, w, device)

    monkeypatch.setattr(passes, "labels_on_device", counting)
    est = EarlyExitClassMeans(stages=_net(), flops_target=0.5, batch_size=100, metric=metric,
                              random_state=0)
    w = np.linspace(0.5, 1.5, len(ytr))
    est.fit(torch.from_numpy(Xtr), ytr, sample_weight=w)
    assert len(calls) == -(-len(ytr) // 100)
    ref = EarlyExitClassMeans(stages=_net(), flops_target=0.5, batch_size=100, metric=metric,
                              random_state=0).fit(Xtr, ytr, sample_weight=w)
    for a, b in zip(est.class_means_, ref.class_means_):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_tuning_pass_reads_exit_arrays_back_once_per_stage(digit_images, monkeypatch, metric):
    """The exits' distances (or scores) of the tuning rows stay on the stages' device until
    the pass ends: one read-back per stage and array, not one per stage and batch."""
    import sklearn_e2cm._fitting.passes as passes

    Xtr, ytr, _, _ = digit_images
    calls = []
    original = passes.to_numpy

    def counting(a):
        calls.append(type(a).__name__)
        return original(a)

    est = EarlyExitClassMeans(stages=_net(), flops_target=0.5, batch_size=50, metric=metric,
                              cache_size=0, random_state=0)  # no cache: the stages run again
    ref = copy.deepcopy(est).fit(torch.from_numpy(Xtr), ytr)
    monkeypatch.setattr(passes, "to_numpy", counting)
    est.fit(torch.from_numpy(Xtr), ytr)
    n_batches, M = -(-len(ytr) // 50), est.n_stages_
    assert n_batches > 2 * M
    assert calls.count("Tensor") <= 2 * M, calls
    np.testing.assert_array_equal(est.mixture_thresholds_, ref.mixture_thresholds_)


def test_accumulator_copies_its_shift_once(monkeypatch):
    from sklearn_e2cm.exits.statistics import ClassStatsAccumulator, labels_on_device

    rng = np.random.default_rng(0)
    F = torch.from_numpy(rng.normal(size=(500, 4)).astype(np.float32))
    y = rng.integers(0, 3, 500)
    acc = ClassStatsAccumulator(scatter=True)
    copies = []
    original = torch.as_tensor

    def spy(*args, **kwargs):
        copies.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", spy)
    for s in range(0, 500, 100):
        acc.update(F[s:s + 100], y[s:s + 100], None,
                   labels_on_device(y[s:s + 100], None, F.device))
    monkeypatch.undo()
    assert len(copies) == 1  # the shift, after the first batch
    acc.rebase(np.zeros(4))  # a new shift is copied again
    acc.update(F[:100], y[:100])
    Z = F.numpy().astype(np.float64)
    Z = np.concatenate([Z, Z[:100]])
    yy = np.concatenate([y, y[:100]])
    means = np.array([Z[yy == k].mean(0) for k in range(3)])
    np.testing.assert_allclose(acc.means(), means, rtol=1e-10, atol=1e-12)


def test_two_adapters_on_one_network_share_the_switch(digit_images):
    Xtr, _, _, _ = digit_images
    net = _net()
    net.train()
    stage_modules = [m for child in net.children() for m in child.modules()]
    x = torch.from_numpy(Xtr[:4])
    a1, a2 = TorchStages(net).fit(x), TorchStages(net).fit(x)
    entered, leave = threading.Event(), threading.Event()

    def first():  # another estimator on the same network, in another thread
        with a1.activate():
            entered.set()
            leave.wait(10)

    t = threading.Thread(target=first)
    t.start()
    entered.wait(10)
    with a2.activate():
        leave.set()
        t.join()  # a1 has left; a2 is still running: still eval mode
        assert not any(m.training for m in stage_modules)
    assert all(m.training for m in stage_modules)  # restored once both left
    assert not torch.is_inference_mode_enabled()


def test_run_stage_outside_activation_is_in_inference_mode_in_every_thread(digit_images):
    Xtr, _, _, _ = digit_images
    ad = TorchStages(_net()).fit(torch.from_numpy(Xtr[:4]))
    inside, done = threading.Event(), threading.Event()

    def hold():
        with ad.activate():
            inside.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(10)
    try:
        z = ad.run_stage(0, torch.from_numpy(Xtr[:3]))
        assert z.is_inference() and not z.requires_grad
    finally:
        done.set()
        t.join()


def test_empty_batches_of_a_loader_route_nothing(fitted):
    est, X = fitted
    Xt = torch.from_numpy(X)

    class Loader:  # a DataLoader-like iterable with an empty batch in the middle
        dataset = Xt
        batch_size = 10

        def __iter__(self):
            return iter([(Xt[:10],), (Xt[:0],), (Xt[10:20],)])

    r = est.route(Loader())
    assert len(r) == 20 and r.proba.shape == (20, 10)
    np.testing.assert_array_equal(r.y_pred, est.predict(X[:20]))


class _Flag(nn.Module):
    """Stage 0: +inf in the rows whose first input is above 5 (an overflowing exit vector)."""

    def forward(self, x):
        return torch.where(x[:, :1] > 5.0, torch.full_like(x, float("inf")), x)


def _clamped_chain():
    torch.manual_seed(0)
    # stage 1 clamps, so the network itself stays finite: only the first exit is undefined
    return nn.Sequential(_Flag(), nn.Sequential(nn.Hardtanh(-4.0, 4.0), nn.Linear(6, 8)),
                         nn.Linear(8, 3))


@pytest.mark.parametrize("array_input", [False, True])
def test_non_finite_continue_lets_undefined_rows_go_on(array_input):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6)).astype(np.float32)
    y = (X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    net = _clamped_chain()
    est = EarlyExitClassMeans(stages=net, flops_target=0.5, stage_costs=[10.0, 100.0, 24.0],
                              random_state=0).fit(X, y)
    Xbad = X.copy()
    Xbad[:40, 0] = 9.0  # rows whose exit vector at stage 0 is infinite
    Xbad_in = torch.from_numpy(Xbad) if not array_input else Xbad
    with pytest.raises(ValueError, match=r"stage 0 .*contains NaN or infinity"):
        est.predict(Xbad_in)
    lenient = EarlyExitClassMeans(**{**est.get_params(), "non_finite": "continue"}).fit(X, y)
    np.testing.assert_array_equal(lenient.predict(X), est.predict(X))  # same when finite
    with pytest.warns(UserWarning, match=r"40 exit decision\(s\).*non_finite='continue'"):
        res = lenient.route(Xbad_in)
    assert (res.exit_stage[:40] >= 1).all()  # never left at the undefined exit
    with torch.inference_mode():
        z = net(torch.from_numpy(Xbad[:40]))
    base = z.argmax(1).numpy()
    last = res.exit_stage[:40] == 2
    np.testing.assert_array_equal(res.y_pred[:40][last], lenient.classes_[base[last]])
    # the other rows are routed exactly as by the strict estimator
    clean = est.route(Xbad[40:] if array_input else torch.from_numpy(Xbad[40:]))
    np.testing.assert_array_equal(res.y_pred[40:], clean.y_pred)
    np.testing.assert_array_equal(res.exit_stage[40:], clean.exit_stage)
    # a non-finite final output still raises
    with pytest.raises(ValueError, match="contains NaN or infinity"):
        lenient.predict(np.full((3, 6), np.nan, np.float32) if array_input else
                        torch.full((3, 6), float("nan")))


class _NaNAbove(nn.Module):
    """NaN in the rows whose first input is above 5 (a stage not defined there)."""

    def forward(self, x):
        return torch.where(x[:, :1] > 5.0, torch.full_like(x, float("nan")), x)


@pytest.mark.parametrize("thresholds, where", [
    ([1.0, 0.6], r"The output of stage 0 \(0\)"),       # the exit after stage 0 cannot fire
    ([0.6, 0.6], r"The stage vector of stage 0 \(0\)"),
])
def test_routing_names_the_first_non_finite_stage(thresholds, where):
    """The routed pass reads only the exit confidences; a failure is located by a rerun."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 6)).astype(np.float32)
    y = (X[:, 1] > 0).astype(int)
    torch.manual_seed(0)
    net = nn.Sequential(_NaNAbove(), nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Linear(8, 2))
    est = EarlyExitClassMeans(stages=net, thresholds=thresholds, stage_costs=[6.0, 100.0, 16.0],
                              random_state=0).fit(X, y)
    X[7, 0] = 9.0
    with pytest.raises(ValueError, match=where + " contains NaN or infinity"):
        est.predict(torch.from_numpy(X))
    est.set_params(non_finite="continue")  # the exit is refused; the last stage's NaN is not
    with pytest.raises(ValueError, match="contains NaN or infinity"):
        est.predict(torch.from_numpy(X))
    np.testing.assert_array_equal(est.predict(torch.from_numpy(X[8:])).shape, (192,))


def test_dec_routing_keeps_the_clustering_layer_on_the_device(monkeypatch):
    """DECEarlyExit's Student-t layer runs where the batch is: few transfers per batch."""
    from sklearn.datasets import make_blobs

    from sklearn_e2cm import DECEarlyExit
    from sklearn_e2cm.stages._dec import _soft_assign, _soft_assign_numpy

    X, _ = make_blobs(n_samples=300, centers=3, n_features=8, random_state=0)
    ee = DECEarlyExit(n_clusters=3, hidden=(16, 16, 32), embedding_dim=3, pretrain_epochs=3,
                      max_iter=30, n_init=2, flops_target=0.6, batch_size=50,
                      sweep_resolution=50, random_state=0).fit(X)
    before = ee.route(X)
    spy = _TransferSpy(monkeypatch)
    res = ee.route(torch.from_numpy(X.astype(np.float32)))
    monkeypatch.undo()
    # per batch: the labels, exit stages, components and proba, and the finiteness flags;
    # plus one conversion per call: DEC validates its input with scikit-learn (numpy)
    assert spy.count <= (300 // 50) * (ee.n_stages_ + 2) + 1, spy.count
    np.testing.assert_array_equal(res.y_pred, before.y_pred)
    np.testing.assert_allclose(res.proba, before.proba, rtol=0, atol=1e-12)
    # the tensor Student-t equals the numpy one (float64, same formula)
    rng = np.random.default_rng(0)
    Z, C = rng.standard_normal((20, 3)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(_soft_assign(torch.from_numpy(Z), torch.from_numpy(C)).numpy(),
                               _soft_assign_numpy(Z, C), rtol=1e-12, atol=1e-15)


def test_lenient_routing_makes_no_more_transfers(fitted, monkeypatch):
    est, X = fitted
    est.set_params(non_finite="continue")
    try:
        X = torch.from_numpy(X)
        n_batches = -(-X.shape[0] // est.batch_size)
        spy = _TransferSpy(monkeypatch)
        res = est.route(X)
        monkeypatch.undo()
    finally:
        est.set_params(non_finite="raise")
    assert spy.count <= n_batches * (est.n_stages_ + 2), spy.count
    np.testing.assert_array_equal(res.y_pred, est.predict(X))
