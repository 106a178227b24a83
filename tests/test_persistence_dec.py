"""save_exits / load_exits of DEC and DECEarlyExit: their networks stored as arrays, rebuilt."""

import copy
import json
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_digits

from conftest import forbid_code_on_load  # noqa: E402
from conftest import rewrite_saved_file as _rewrite  # noqa: E402
from sklearn_e2cm import DEC, DECEarlyExit, load_exits, save_exits
from sklearn_e2cm.persistence import FORMAT_VERSION

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def X():
    X, _ = load_digits(return_X_y=True)
    return X[:240] / 16.0


_SMALL = dict(hidden=(16, 16, 32), embedding_dim=4, pretrain_epochs=2, max_iter=20, n_init=2,
              update_interval=5, random_state=0)


@pytest.fixture(scope="module")
def fitted(X):
    return DECEarlyExit(n_clusters=4, flops_target=0.6, sweep_resolution=100, **_SMALL).fit(X)


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    return save_exits(fitted, tmp_path_factory.mktemp("dec") / "ee.npz")


def _assert_same_routing(a, b, X):
    ra, rb = a.route(X), b.route(X)
    np.testing.assert_array_equal(ra.y_pred, rb.y_pred)
    np.testing.assert_array_equal(ra.exit_stage, rb.exit_stage)
    np.testing.assert_allclose(ra.flops, rb.flops, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.thresholds_, b.thresholds_)
    np.testing.assert_array_equal(a.mixture_thresholds_, b.mixture_thresholds_)
    np.testing.assert_array_equal(a.mixture_weights_, b.mixture_weights_)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))


def _assert_same_network(a, b):
    assert type(a) is type(b) and len(a) == len(b) and a.training == b.training
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and pa.dtype == pb.dtype and pa.requires_grad == pb.requires_grad
        assert torch.equal(pa, pb)


def _npy(arr):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _member(path, name):
    with np.load(path, allow_pickle=False) as npz:
        return npz[name]


# ------------------------------------------------------------------------------ round trips
def test_dec_early_exit_round_trip(fitted, saved, X):
    original, fitted = fitted, copy.deepcopy(fitted)  # moved to other operating points below
    fitted._tuning_table = original._tuning_table  # dropped by copying, as by pickling
    loaded = load_exits(saved)  # the file holds the networks: no stages
    assert type(loaded) is DECEarlyExit
    assert loaded.get_params() == fitted.get_params()
    assert set(vars(loaded)) == set(vars(fitted))
    _assert_same_routing(fitted, loaded, X)
    _assert_same_network(fitted.dec_.encoder_, loaded.dec_.encoder_)
    for a, b in zip(fitted.exit_encoders_, loaded.exit_encoders_):
        _assert_same_network(a, b)
    np.testing.assert_array_equal(fitted.dec_.labels_, loaded.dec_.labels_)
    assert loaded.dec_.get_params() == fitted.dec_.get_params()
    for key in ("stage_flops_", "exit_flops_", "cumulative_cost_"):
        np.testing.assert_array_equal(getattr(fitted, key), getattr(loaded, key))
    for key in ("stage_flops_", "vector_flops_", "vector_dims_"):
        np.testing.assert_array_equal(getattr(fitted._adapter, key),
                                      getattr(loaded._adapter, key))
    # the same clustering scores, and other operating points from the saved tuning arrays
    y = np.arange(X.shape[0]) % 4
    a, b = fitted.tradeoff_curve(X, y), loaded.tradeoff_curve(X, y)
    np.testing.assert_allclose(a[["flops", "score"]].to_numpy(), b[["flops", "score"]].to_numpy(),
                               rtol=0, atol=1e-12)
    hull = np.unique(fitted.tradeoff_.loc[fitted.tradeoff_["on_hull"], "flops"].to_numpy())
    shared = False
    for target in [0.9, *((hull[:-1] + hull[1:]) / 2)]:
        for est in (fitted, loaded):
            est.set_operating_point(flops_target=float(target))
        _assert_same_routing(fitted, loaded, X)
        shared |= fitted.mixture_thresholds_.shape[0] == 2
    assert shared  # a time-shared operating point was compared too


def test_dec_round_trip_and_feature_names(X, tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X[:, :20], columns=[f"px{i}" for i in range(20)])
    dec = DEC(n_clusters=3, **_SMALL).fit(frame)
    path = save_exits(dec, tmp_path / "dec.npz")
    loaded = load_exits(path)
    assert type(loaded) is DEC and loaded.get_params() == dec.get_params()
    assert set(vars(loaded)) == set(vars(dec))
    _assert_same_network(dec.encoder_, loaded.encoder_)
    np.testing.assert_array_equal(loaded.predict(frame), dec.predict(frame))
    np.testing.assert_array_equal(loaded.transform(frame), dec.transform(frame))
    np.testing.assert_array_equal(loaded.soft_assign(frame), dec.soft_assign(frame))
    np.testing.assert_array_equal(loaded.feature_names_in_, dec.feature_names_in_)
    assert loaded.pretrain_loss_curve_ == dec.pretrain_loss_curve_
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(frame.rename(columns={"px0": "other"}))


def test_overrides_reach_the_large_dec_and_rng_is_untouched(fitted, saved, X):
    state = torch.get_rng_state()
    loaded = load_exits(saved, batch_size=7)
    assert torch.equal(torch.get_rng_state(), state)  # rebuilding drew no global random numbers
    assert loaded.batch_size == loaded.dec_.batch_size == 7
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))


def test_unstorable_parameter_is_asked_for(X, tmp_path):
    dec = DEC(n_clusters=3, **dict(_SMALL, random_state=np.random.RandomState(0))).fit(X)
    path = save_exits(dec, tmp_path / "rs.npz")
    with pytest.raises(ValueError, match=r"parameters \['random_state'\] were not stored"):
        load_exits(path)
    loaded = load_exits(path, random_state=0)
    np.testing.assert_array_equal(loaded.predict(X), dec.predict(X))


def test_without_tuning_arrays(fitted, X, tmp_path):
    path = save_exits(fitted, tmp_path / "small.npz", include_tuning=False)
    loaded = load_exits(path)
    _assert_same_routing(fitted, loaded, X)
    with pytest.raises(RuntimeError, match="tuning arrays are not available"):
        loaded.set_operating_point(flops_target=0.5)


def test_file_holds_plain_data_and_version_2(saved):
    with zipfile.ZipFile(saved) as zf:
        meta = json.loads(zf.read("metadata.json"))
        names = zf.namelist()
    assert meta["format_version"] == 2 == FORMAT_VERSION
    assert all(n == "metadata.json" or n.endswith(".npy") for n in names)
    enc = dict(meta["dec"]["attributes"])["encoder_"]["__mlp__"]
    assert enc["dims"] == [64, 16, 16, 32, 4]
    assert len(enc["weights"]) == 4 and enc["training"] is False
    exits = dict(meta["attributes"])["exit_encoders_"]
    assert [e["__mlp__"]["requires_grad"] for e in exits] == [[False, True],
                                                             [False, False, True]]
    assert _member(saved, "dec.encoder_.weight0").shape == (16, 64)


# ------------------------------------------------------------------------ refused files
def _version(v):
    return lambda meta: meta.update(format_version=v)


def _dec_attr(name, edit):
    def f(meta):
        for entry in meta["dec"]["attributes"]:
            if entry[0] == name:
                edit(entry[1])
    return f


def _exit_attr(edit):
    def f(meta):
        for entry in meta["attributes"]:
            if entry[0] == "exit_encoders_":
                edit(entry[1])
    return f


def _hidden(both):
    def f(meta):
        for params in [meta["params"]] + ([meta["dec"]["params"]] if both else []):
            params.update(hidden={"__tuple__": [16, 16, 33]})
    return f


def _set_dims(dims):
    return lambda v: v["__mlp__"].update(dims=dims)


@pytest.mark.parametrize("case, make, match", [
    ("newer version", lambda p, o: _rewrite(p, o, _version(FORMAT_VERSION + 1)),
     rf"format version {FORMAT_VERSION + 1} .* reads versions up to {FORMAT_VERSION}\."),
    ("claims version 1", lambda p, o: _rewrite(p, o, _version(1)),
     "networks are stored from version 2"),
    ("truncated", lambda p, o: o.write_bytes(open(p, "rb").read()[:300]) and o,
     "truncated/corrupt"),
    ("pickle file", lambda p, o: o.write_bytes(pickle.dumps({"x": 1})) and o,
     "holds pickled Python objects"),
    ("weight of another shape", lambda p, o: _rewrite(
        p, o, replace={"dec.encoder_.weight1.npy": _npy(np.zeros((16, 15), np.float32))}),
     r"layer 1's weight has shape \(16, 15\)"),
    ("non-finite weight", lambda p, o: _rewrite(
        p, o, replace={"dec.encoder_.bias0.npy": _npy(np.full(16, np.nan, np.float32))}),
     "layer 0's bias holds non-finite values"),
    ("weight of another dtype", lambda p, o: _rewrite(
        p, o, replace={"dec.encoder_.weight0.npy": _npy(np.zeros((16, 64), np.float64))}),
     "one float dtype for every layer"),
    ("layer sizes of another network", lambda p, o: _rewrite(
        p, o, _dec_attr("encoder_", _set_dims([64, 16, 16, 32]))),
     "does not hold 3 weight and bias arrays"),
    ("layer sizes against the parameters", lambda p, o: _rewrite(p, o, _hidden(True)),
     r"the encoder has layer sizes \(64, 16, 16, 32, 4\); .* give \(64, 16, 16, 33, 4\)"),
    ("large DEC of other parameters", lambda p, o: _rewrite(p, o, _hidden(False)),
     r"the large DEC has hidden=\(16, 16, 32\); the estimator hidden=\(16, 16, 33\)"),
    ("exit prefix edited", lambda p, o: _rewrite(
        p, o, replace={"attr.exit_encoders_.1.weight0.npy": _npy(
            _member(p, "attr.exit_encoders_.1.weight0") + 1)}),
     r"exit encoder 1's first 2 layer\(s\) differ from the large encoder's"),
    ("bad layer sizes", lambda p, o: _rewrite(p, o, _exit_attr(
        lambda v: v[0]["__mlp__"].update(dims=[64, -1, 4]))), "at least two positive integers"),
    ("stage costs edited", lambda p, o: _rewrite(p, o, replace={
        "attr.stage_flops_.npy": _npy(_member(p, "attr.stage_flops_") * 2)}),
     "the stored networks cost"),
    ("network where none belongs", lambda p, o: _rewrite(
        p, o, lambda m: m["attributes"].append(["dec_", None])),
     "attribute name 'dec_' is not a fitted attribute"),
    ("malformed network", lambda p, o: _rewrite(p, o, _dec_attr(
        "encoder_", lambda v: v.update(__mlp__=[1, 2]))), "malformed network description"),
])
def test_tampered_dec_files_refused(saved, tmp_path, case, make, match):
    bad = make(saved, tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=match):
        load_exits(bad)


def test_stages_refused_and_subclasses(saved, fitted, tmp_path):
    with pytest.raises(ValueError, match="trains its own networks; the file holds them"):
        load_exits(saved, [torch.nn.Identity()])

    class Mine(DECEarlyExit):
        pass

    mine = Mine()
    vars(mine).update(vars(fitted))
    with pytest.raises(NotImplementedError, match="does not support Mine, a subclass"):
        save_exits(mine, tmp_path / "m.npz")
    assert not os.listdir(tmp_path)


def test_loading_runs_no_pickle_eval_or_new_import(saved, fitted, X, monkeypatch):
    load_exits(saved)  # warm: every module the loader needs is imported
    imported = forbid_code_on_load(monkeypatch, torch)
    loaded = load_exits(saved)
    monkeypatch.undo()
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert all(name.split(".")[0] in sys.modules for name in imported)  # nothing new
