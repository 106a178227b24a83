"""save_exits / load_exits: plain-data round trips, checks against the stages, refused files."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from conftest import forbid_code_on_load  # noqa: E402
from conftest import rewrite_saved_file as _rewrite  # noqa: E402
from sklearn_e2cm import EarlyExitClassMeans, load_exits, save_exits
from sklearn_e2cm.persistence import FORMAT_VERSION

try:
    import torch
    from torch import nn
except ImportError:  # save_exits / load_exits work without torch on scikit-learn stages
    torch = nn = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X, y


def _fitted_steps(X, y, n_components=16):
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    pca = PCA(n_components, random_state=0).fit(Z)
    clf = LogisticRegression(max_iter=300).fit(pca.transform(Z), y)
    return [scaler, pca, clf]


@pytest.fixture(scope="module")
def steps(digits):
    return _fitted_steps(*digits)


def _assert_same_head(ha, hb):
    assert (ha is None) == (hb is None)
    if ha is None:
        return
    assert type(ha) is type(hb)
    assert set(vars(ha)) == set(vars(hb))
    for key, va in vars(ha).items():
        vb = getattr(hb, key)
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=key)
            assert va.dtype == vb.dtype, key
        elif hasattr(va, "__dict__"):  # a nested head (E²CM inside an internal classifier)
            _assert_same_head(va, vb)
        elif key != "_cache":
            assert va == vb, key


def _assert_same_fitted_state(a, b, tuning=True):
    names, names_b = set(vars(a)), set(vars(b))
    if not tuning:
        names.discard("_tuning_table")
        names_b.discard("_tuning_table")
    assert names == names_b
    assert len(a._heads) == len(b._heads)
    for ha, hb in zip(a._heads, b._heads):
        _assert_same_head(ha, hb)
    if hasattr(a, "class_statistics_"):
        sa, sb = a.class_statistics_, b.class_statistics_
        assert sa.labels.labels == sb.labels.labels and sa.metric == sb.metric
        for acc_a, acc_b in zip(sa.stages, sb.stages):
            assert acc_a.n_seen == acc_b.n_seen and acc_a.scatter == acc_b.scatter
            for key in ("sums", "weights", "second", "shift"):
                va, vb = getattr(acc_a, key), getattr(acc_b, key)
                assert (va is None) == (vb is None), key
                if va is not None:
                    np.testing.assert_array_equal(va, vb, err_msg=key)
    skip = {"_adapter", "_heads", "_tuning_table", "tradeoff_", "_fit_times", "class_statistics_",
            "stages", "pooling"}
    for key in sorted(names - skip):
        va, vb = getattr(a, key), getattr(b, key)
        if isinstance(va, tuple):
            assert va == vb and type(vb) is tuple, key
        elif isinstance(va, list):
            assert len(va) == len(vb), key
            for x, z in zip(va, vb):
                if x is None:
                    assert z is None, key
                else:
                    np.testing.assert_array_equal(x, z, err_msg=key)
        else:
            np.testing.assert_array_equal(va, vb, err_msg=key)
            assert np.asarray(va).dtype == np.asarray(vb).dtype, key
    assert a.get_params(deep=False).keys() == b.get_params(deep=False).keys()
    for col in [] if a.tradeoff_ is None else a.tradeoff_.columns:
        if col == "thresholds":
            np.testing.assert_array_equal(np.stack(a.tradeoff_[col]), np.stack(b.tradeoff_[col]))
        else:
            np.testing.assert_array_equal(a.tradeoff_[col].to_numpy(), b.tradeoff_[col].to_numpy())
    if a.tradeoff_ is None:
        assert b.tradeoff_ is None
    else:
        assert list(a.tradeoff_.columns) == list(b.tradeoff_.columns)
    if tuning:
        ta, tb = a._tuning_table, b._tuning_table
        np.testing.assert_array_equal(ta.conf, tb.conf)
        np.testing.assert_array_equal(ta.correct, tb.correct)
        np.testing.assert_array_equal(ta.full_cost, tb.full_cost)
        if ta.weights is None:
            assert tb.weights is None
        else:
            np.testing.assert_array_equal(ta.weights, tb.weights)


def _time_share(est, required=True):
    """Move ``est`` to a target between its two cheapest hull vertices (two threshold vectors)."""
    hull = np.unique(est.tradeoff_.loc[est.tradeoff_["on_hull"], "flops"].to_numpy())
    for lo, hi in zip(hull[:-1], hull[1:]):
        est.set_operating_point(flops_target=float((lo + hi) / 2))
        if est.mixture_thresholds_.shape[0] == 2:
            return
    if required:
        raise AssertionError(f"no time sharing between the hull vertices {hull}")


def _assert_same_predictions(a, b, X):
    ra, rb = a.route(X), b.route(X)
    np.testing.assert_array_equal(ra.y_pred, rb.y_pred)
    assert ra.y_pred.dtype == rb.y_pred.dtype
    np.testing.assert_array_equal(ra.exit_stage, rb.exit_stage)
    np.testing.assert_array_equal(ra.flops, rb.flops)
    np.testing.assert_array_equal(ra.component, rb.component)
    np.testing.assert_array_equal(ra.proba, rb.proba)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


# --------------------------------------------------------------- scikit-learn stages
@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
@pytest.mark.parametrize("labels", ["int", "str", "float", "object_str"])
def test_round_trip_sklearn_stages(digits, metric, labels, tmp_path):
    X, y = digits
    relabel = {
        "int": lambda v: v,
        "str": lambda v: np.array([f"digit-{k}" for k in v]),
        "float": lambda v: v * 2.0 - 3.0,  # integral floats: a classification target
        "object_str": lambda v: np.array([f"d{k}" for k in v], dtype=object),
    }[labels]
    ys = relabel(y)
    # fitted scikit-learn steps whose final classifier knows the relabelled classes
    steps = _fitted_steps(X, ys)
    # a target between two hull vertices: time sharing serves it with two threshold vectors
    est = EarlyExitClassMeans(stages=steps, metric=metric, flops_target=1.0,
                              sweep_resolution=100, random_state=0).fit(X, ys)
    _time_share(est)
    path = save_exits(est, tmp_path / "exits.npz")
    loaded = load_exits(path, steps)
    assert type(loaded) is EarlyExitClassMeans
    _assert_same_fitted_state(est, loaded)
    _assert_same_predictions(est, loaded, X)
    assert loaded.classes_.dtype == est.classes_.dtype
    assert loaded.get_params(deep=False) == {**est.get_params(deep=False)}
    # another operating point from the saved tuning arrays: the same as the original's
    est.set_operating_point(flops_target=0.9)
    loaded.set_operating_point(flops_target=0.9)
    _assert_same_predictions(est, loaded, X)
    np.testing.assert_array_equal(est.mixture_thresholds_, loaded.mixture_thresholds_)


def test_round_trip_no_stages_weights_dataframe(digits, tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = digits
    frame = pd.DataFrame(X[:, :20], columns=[f"px{i}" for i in range(20)])
    w = np.random.RandomState(0).uniform(0.5, 2.0, len(y))
    est = EarlyExitClassMeans(flops_target=None).fit(frame, y, sample_weight=w)
    loaded = load_exits(save_exits(est, tmp_path / "e.npz"))
    _assert_same_fitted_state(est, loaded)
    _assert_same_predictions(est, loaded, frame)
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(frame.rename(columns={"px0": "other"}))


def test_without_tuning_arrays_predicts_but_cannot_move(digits, steps, tmp_path):
    X, y = digits
    est = EarlyExitClassMeans(stages=steps, flops_target=0.8, sweep_resolution=100,
                              random_state=0).fit(X, y)
    small = save_exits(est, tmp_path / "small.npz", include_tuning=False)
    full = save_exits(est, tmp_path / "full.npz")
    assert os.path.getsize(small) < os.path.getsize(full)
    loaded = load_exits(small, steps)
    _assert_same_fitted_state(est, loaded, tuning=False)
    _assert_same_predictions(est, loaded, X)
    with pytest.raises(RuntimeError, match="tuning arrays are not available"):
        loaded.set_operating_point(flops_target=0.5)


def test_file_is_plain_json_and_arrays(digits, steps, tmp_path):
    X, y = digits
    est = EarlyExitClassMeans(stages=steps, flops_target=0.8, sweep_resolution=50,
                              random_state=0).fit(X, y)
    path = save_exits(est, tmp_path / "e.npz")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        meta = json.loads(zf.read("metadata.json"))
    assert all(n == "metadata.json" or n.endswith(".npy") for n in names)
    assert meta["format"] == "sklearn-e2cm-exits"
    # exits on stages the user passes back keep the version-1 layout (older releases read them)
    assert meta["format_version"] == 1 < FORMAT_VERSION
    assert meta["package_version"]
    with np.load(path, allow_pickle=False) as npz:  # every array loads without pickle
        for key in npz.files:
            if key != "metadata.json":
                assert npz[key].dtype.kind in "biufU"


# --------------------------------------------------------------- refused or mismatched
def _npy(arr, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.fixture(scope="module")
def saved(digits, steps, tmp_path_factory):
    X, y = digits
    est = EarlyExitClassMeans(stages=steps, flops_target=0.8, sweep_resolution=50,
                              random_state=0).fit(X, y)
    return est, save_exits(est, tmp_path_factory.mktemp("saved") / "e.npz")


_EXECUTED = []


class _Payload:
    """Pickling this records a call when (and only when) the pickle is loaded."""

    def __reduce__(self):
        return (_EXECUTED.append, ("ran",))


def _rename_head(meta, name):
    for key, value in meta["attributes"]:
        if key == "_heads":
            value[0]["__head__"] = name


def _version(v):
    def edit(meta):
        meta["format_version"] = v
    return edit


@pytest.mark.parametrize("case, make, match", [
    ("newer version", lambda p, o: _rewrite(p, o, _version(FORMAT_VERSION + 1)),
     rf"format version {FORMAT_VERSION + 1} .* reads versions up to {FORMAT_VERSION}\."),
    ("bad version", lambda p, o: _rewrite(p, o, _version("1")), "invalid format version"),
    ("other format", lambda p, o: _rewrite(p, o, lambda m: m.update(format="x")),
     "not a saved-exits file"),
    ("unknown estimator", lambda p, o: _rewrite(p, o, lambda m: m.update(estimator="os.system")),
     "unknown estimator 'os.system'"),
    ("no metadata", lambda p, o: _rewrite(p, o, drop=("metadata.json",)), "no metadata.json"),
    ("missing array", lambda p, o: _rewrite(p, o, drop=("attr._heads.0.means.npy",)),
     "array 'attr._heads.0.means' is missing"),
    ("wrong shape", lambda p, o: _rewrite(
        p, o, replace={"attr._heads.0.means.npy": _npy(np.zeros((3, 2)))}),
     r"exit head's array '_sqnorm' has shape \(10,\) and dtype float64; expected \(3,\)"),
    ("pickled array", lambda p, o: _rewrite(p, o, replace={
        "attr._heads.0.means.npy": _npy(np.array([_Payload()], dtype=object), allow_pickle=True)}),
     "pickled Python objects"),
    ("pickle file", lambda p, o: o.write_bytes(pickle.dumps(_Payload())) and o,
     "holds pickled Python objects"),
    ("npy pickle", lambda p, o: o.write_bytes(_npy(np.array([_Payload()], dtype=object),
                                                   allow_pickle=True)) and o,
     "holds pickled Python objects"),
    ("plain npy", lambda p, o: o.write_bytes(_npy(np.zeros(3))) and o, "holds a single array"),
    ("truncated", lambda p, o: o.write_bytes(open(p, "rb").read()[:200]) and o,
     "truncated/corrupt"),
    ("thresholds out of range", lambda p, o: _rewrite(p, o, replace={
        "attr.thresholds_.npy": _npy(np.full(2, 7.0))}),
     r"thresholds_ has values outside \[0, 1\]"),
    ("bad metadata value", lambda p, o: _rewrite(
        p, o, lambda m: m["params"].update(pooling={"__reduce__": "os.system"})),
     "unexpected value"),
    ("attribute shadows a method", lambda p, o: _rewrite(
        p, o, lambda m: m["attributes"].append(["predict", "x"])),
     "attribute name 'predict' is not a fitted attribute"),
    ("attribute is a parameter", lambda p, o: _rewrite(
        p, o, lambda m: m["attributes"].append(["_validate_params", 1])),
     "attribute name '_validate_params' is not a fitted attribute"),
    ("unknown head class", lambda p, o: _rewrite(
        p, o, lambda m: _rename_head(m, "os.system")), "unknown exit head 'os.system'"),
    ("malformed metadata", lambda p, o: _rewrite(p, o, lambda m: m.pop("attributes")),
     "metadata is incomplete or malformed"),
])
def test_tampered_files_refused(saved, steps, tmp_path, case, make, match):
    _, path = saved
    bad = make(path, tmp_path / "bad.npz")
    del _EXECUTED[:]
    with pytest.raises(ValueError, match=match):
        load_exits(bad, steps)
    assert _EXECUTED == []  # nothing from the file ran


def test_corrupt_member_bytes_refused(saved, steps, tmp_path):
    _, path = saved
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("attr._heads.0.means.npy")
    # flip bytes inside the (compressed) member: its CRC no longer matches
    start = info.header_offset + 30 + len(info.filename) + 10
    data[start:start + 8] = bytes(8)
    bad = tmp_path / "crc.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_exits(bad, steps)


def test_mismatched_sklearn_stages(digits, saved, steps):
    X, y = digits
    _, path = saved
    with pytest.raises(ValueError, match="fitted on 3 stages; the stages given have 2"):
        load_exits(path, steps[:1] + steps[2:])
    other = _fitted_steps(X, y, n_components=12)
    with pytest.raises(ValueError,
                       match="stage vectors of width 12; the exits were fitted on width 16"):
        load_exits(path, [steps[0], other[1], steps[2]])
    with pytest.raises(ValueError, match="is not fitted"):
        load_exits(path, [StandardScaler(), steps[1], steps[2]])
    with pytest.raises(ValueError,
                       match="Stage 0 is a passthrough; the exits were fitted on a StandardScaler"):
        load_exits(path, ["passthrough", steps[1], steps[2]])
    with pytest.raises(TypeError, match="unknown parameters"):
        load_exits(path, steps, not_a_param=1)


def test_steps_fitted_by_the_estimator_cannot_be_saved(digits, tmp_path):
    X, y = digits
    est = EarlyExitClassMeans(stages=[StandardScaler(), PCA(8), LogisticRegression(max_iter=200)],
                              random_state=0).fit(X, y)
    with pytest.raises(ValueError, match=r"Stage 0 \(0:StandardScaler\) was fitted by"):
        save_exits(est, tmp_path / "e.npz")
    assert not os.listdir(tmp_path)


def test_unfitted_and_unsupported(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        save_exits(EarlyExitClassMeans(), tmp_path / "e.npz")
    with pytest.raises(TypeError, match="needs a fitted early-exit estimator"):
        save_exits(LogisticRegression(), tmp_path / "e.npz")


@needs_torch
@pytest.mark.parametrize("kw", [
    dict(method="sdn"),
    dict(method="bwds"),
    dict(method="sdn", class_means=True, combine="and"),
    dict(method="branchynet", class_means=True, metric="mahalanobis", combine="or"),
])
@pytest.mark.filterwarnings("ignore:flops_target=.* is below the cheapest")
def test_round_trip_internal_classifiers(digits, kw, tmp_path):
    from sklearn_e2cm import InternalClassifierEarlyExit

    X, y = digits
    X, y = X[:600], y[:600]
    steps = _fitted_steps(X, y)
    ic = InternalClassifierEarlyExit(steps, epochs=1, sweep_resolution=50, exit_at=[0, 1],
                                     flops_target=1.0, random_state=0, **kw).fit(X, y)
    _time_share(ic, required="combine" not in kw)
    loaded = load_exits(save_exits(ic, tmp_path / "ic.npz"), steps)
    assert type(loaded) is InternalClassifierEarlyExit
    _assert_same_fitted_state(ic, loaded)
    _assert_same_predictions(ic, loaded, X)
    ic.set_operating_point(flops_target=0.9)
    loaded.set_operating_point(flops_target=0.9)
    _assert_same_predictions(ic, loaded, X)


def test_renamed_parameter_keeps_its_stored_name(digits, saved, steps, tmp_path):
    """sweep_resolution is stored as n_targets, the name version-1 files use, without warnings."""
    import warnings

    X, y = digits
    _, path = saved
    with zipfile.ZipFile(path) as zf:
        params = json.loads(zf.read("metadata.json"))["params"]
    assert params["n_targets"] == 50 and "sweep_resolution" not in params
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        loaded = load_exits(path, steps)
        loaded.set_operating_point(flops_target=0.7)
    assert loaded.get_params()["sweep_resolution"] == 50
    assert loaded.get_params()["n_targets"] == "deprecated"
    # an estimator given the deprecated name: its value is stored, and loaded under the new one
    with pytest.warns(FutureWarning, match="renamed 'sweep_resolution'"):
        old = EarlyExitClassMeans(stages=steps, flops_target=0.8, n_targets=30,
                                  random_state=0).fit(X, y)
    again = load_exits(save_exits(old, tmp_path / "old.npz"), steps)
    assert again.get_params()["sweep_resolution"] == 30
    _assert_same_predictions(old, again, X)


def test_networks_refused_in_version_1_files(saved, steps, tmp_path):
    _, path = saved

    def add_network(meta):
        meta["attributes"].append(["extra_", {"__mlp__": {"dims": [2, 2]}}])

    bad = _rewrite(path, tmp_path / "v1net.npz", add_network)
    with pytest.raises(ValueError, match="a network in a format-version 1 file"):
        load_exits(bad, steps)


def test_write_is_atomic(saved, monkeypatch, tmp_path):
    est, path = saved
    target = tmp_path / "keep.npz"
    original = open(path, "rb").read()
    target.write_bytes(original)
    calls = []
    real = np.lib.format.write_array

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        save_exits(est, target)
    assert target.read_bytes() == original  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["keep.npz"]  # no temporary file left


# --------------------------------------------------------------------------- torch stages
if nn is not None:
    class _Block(nn.Module):
        """A network class defined in this test module (pickle would need it importable)."""

        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
            self.bn = nn.BatchNorm2d(c_out)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))


    def _make_net(seed):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        return nn.Sequential(_Block(1, 8, 1), _Block(8, 16, 2), head)


@pytest.fixture(scope="module")
def images(digit_images):
    return digit_images


@needs_torch
@pytest.mark.parametrize("metric, pooling", [("euclidean", None), ("mahalanobis", "avg2")])
def test_round_trip_torch_module_defined_here(images, metric, pooling, tmp_path):
    Xtr, ytr, Xte, _ = images
    net = _make_net(0)
    net[0].bn.running_mean.add_(0.1)  # buffers are part of the weights' digest
    est = EarlyExitClassMeans(stages=net, metric=metric, pooling=pooling, final_classifier=False,
                              flops_target=0.6, sweep_resolution=100, batch_size=100,
                              random_state=0).fit(Xtr, ytr)
    path = save_exits(est, tmp_path / "net.npz")
    # the user rebuilds the network their usual way (here: its class + its state_dict)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fresh = _make_net(1)
    fresh.load_state_dict(state)
    loaded = load_exits(path, fresh)
    _assert_same_fitted_state(est, loaded)
    _assert_same_predictions(est, loaded, Xte)
    est.set_operating_point(flops_target=0.5)
    loaded.set_operating_point(flops_target=0.5)
    _assert_same_predictions(est, loaded, Xte)
    # another network of the same shape: warned, or refused with check_weights="raise"
    with pytest.warns(UserWarning, match=r"weights of stage 0 \(0\), stage 1 \(1\), stage 2"):
        load_exits(path, _make_net(2))
    with pytest.raises(ValueError, match="weights of stage 0"):
        load_exits(path, _make_net(2), check_weights="raise")


@needs_torch
def test_round_trip_tiny_resnet_time_sharing(images, tiny_resnet, tmp_path):
    from sklearn_e2cm.stages import split_into_stages

    Xtr, ytr, Xte, _ = images
    stages = split_into_stages(tiny_resnet)
    est = EarlyExitClassMeans(stages=stages, flops_target=0.5, batch_size=128,
                              sweep_resolution=200, random_state=0).fit(Xtr, ytr)
    loaded = load_exits(save_exits(est, tmp_path / "r.npz"), stages)
    _assert_same_fitted_state(est, loaded)
    _assert_same_predictions(est, loaded, Xte)
    # the unsplit model is split the same way at load time
    loaded2 = load_exits(tmp_path / "r.npz", tiny_resnet)
    _assert_same_predictions(est, loaded2, Xte)


@needs_torch
def test_torch_mismatches_and_callable_pooling(images, tmp_path):
    Xtr, ytr, Xte, _ = images
    net = _make_net(0)

    def pool(z):
        return z.amax(dim=1) if z.dim() == 4 else z

    est = EarlyExitClassMeans(stages=net, pooling=pool, flops_target=0.6, sweep_resolution=50,
                              final_classifier=False,
                              batch_size=200, random_state=0).fit(Xtr, ytr)
    path = save_exits(est, tmp_path / "p.npz")
    with pytest.raises(ValueError, match=r"parameters \['pooling'\] were not stored"):
        load_exits(path, net)
    _assert_same_predictions(est, load_exits(path, net, pooling=pool), Xte)
    with pytest.raises(ValueError, match="width 512; the exits were fitted on width 64"):
        load_exits(path, net, pooling=None)
    wider = nn.Sequential(_Block(1, 4, 1), *list(net)[1:])
    with pytest.raises(ValueError, match="fail on an input of per-sample shape"):
        load_exits(path, wider, pooling=pool)
    with pytest.raises(ValueError, match="fitted on 3 stages; the stages given have 2"):
        load_exits(path, nn.Sequential(net[0], net[1]), pooling=pool)
    with pytest.raises(ValueError, match="fitted on torch stages; the stages given are numpy"):
        load_exits(path, None, pooling=pool)


def test_partial_fit_continues_after_loading(digits, steps, tmp_path):
    X, y = digits
    est = EarlyExitClassMeans(stages=steps, random_state=0).fit(X[:1000], y[:1000])
    loaded = load_exits(save_exits(est, tmp_path / "s.npz"), steps)
    for e in (est, loaded):
        e.partial_fit(X[1000:], y[1000:])
    _assert_same_fitted_state(est, loaded, tuning=False)
    _assert_same_predictions(est, loaded, X)
    # an estimator that only saw partial_fit (no tuning rows yet) round-trips too
    again = load_exits(save_exits(loaded, tmp_path / "t.npz"), steps)
    _assert_same_fitted_state(loaded, again, tuning=False)
    _assert_same_predictions(loaded, again, X)


@needs_torch
def test_round_trip_internal_classifiers_torch(images, tmp_path):
    from sklearn_e2cm import InternalClassifierEarlyExit

    Xtr, ytr, Xte, _ = images
    net = _make_net(0)
    ic = InternalClassifierEarlyExit(net, method="sdn", exit_at=[0, 1], epochs=1,
                                     pooling="avg2", class_means=True, combine="or",
                                     final_classifier=False, sweep_resolution=50, batch_size=200,
                                     flops_target=0.7, random_state=0).fit(Xtr, ytr)
    fresh = _make_net(3)
    fresh.load_state_dict(net.state_dict())
    loaded = load_exits(save_exits(ic, tmp_path / "ic.npz"), fresh)
    _assert_same_fitted_state(ic, loaded)
    _assert_same_predictions(ic, loaded, Xte)


def test_loading_uses_no_pickle_eval_or_import(saved, steps, monkeypatch):
    est, path = saved
    load_exits(path, steps)  # warm: every module the loader needs is imported
    imported = forbid_code_on_load(monkeypatch)
    loaded = load_exits(path, steps)
    monkeypatch.undo()
    X, _ = load_digits(return_X_y=True)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    import sys

    assert all(name.split(".")[0] in sys.modules for name in imported)  # nothing new
