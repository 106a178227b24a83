"""InternalClassifierEarlyExit on torch stages (tiny ResNet on 8x8 digits)."""

import joblib
import numpy as np
import pytest

torch = pytest.importorskip("torch")


from sklearn_e2cm import InternalClassifierEarlyExit  # noqa: E402
from sklearn_e2cm.stages import split_into_stages  # noqa: E402


@pytest.fixture(scope="module")
def data(digit_images):
    return digit_images


@pytest.fixture(scope="module")
def net(tiny_resnet):
    return tiny_resnet


def _staged_outputs(net, X):
    stages = list(split_into_stages(net).children())
    out, z = [], torch.from_numpy(X)
    with torch.inference_mode():
        for s in stages:
            z = s(z)
            out.append(z.reshape(len(X), -1).double().numpy())
    return out


@pytest.mark.parametrize("kw", [{"method": "sdn"}, {"method": "branchynet"},
                                {"method": "bwds", "class_means": True, "combine": "and"},
                                {"method": "sdn", "class_means": True, "combine": "consult",
                                 "metric": "mahalanobis"},
                                {"method": "branchynet", "combine": "consult"}])
def test_torch_routing_matches_brute_force_and_leaves_net_untouched(net, data, kw):
    Xtr, ytr, Xte, yte = data
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    stages = split_into_stages(net)
    M = len(stages)
    T = np.array([0.6, 0.7])
    ic = InternalClassifierEarlyExit(stages, exit_at=[0, M // 2], epochs=3, batch_size=128,
                                     thresholds=T, random_state=0, **kw).fit(Xtr, ytr)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])
    net.eval()
    feats = _staged_outputs(net, Xte)
    r = ic.route(Xte)
    stage = np.full(len(yte), 2)
    pred = feats[-1].argmax(1)
    for g in (1, 0):  # the earlier exit overrides
        h = ic._heads[g]
        F = feats[ic.exit_stages_[g]]
        P, conf, conf_e = h.raw(torch.from_numpy(F).float())
        conf = h.combined(conf, conf_e)
        leave = conf > T[g]
        stage = np.where(leave, g, stage)
        pred = np.where(leave, P.argmax(1).numpy(), pred)
    # float32 rounding of a confidence sitting on a threshold can flip a decision
    assert np.mean(r.exit_stage == stage) > 0.99
    assert np.mean(r.y_pred == pred) > 0.99


def test_torch_budget_joblib_round_trip(net, data, tmp_path):
    Xtr, ytr, Xte, yte = data
    ic = InternalClassifierEarlyExit(split_into_stages(net), epochs=3, batch_size=128,
                                     flops_target=0.5, random_state=0).fit(Xtr, ytr)
    # the hull never pays for less accuracy: at most the target
    assert ic.expected_flops_ <= 0.5 + 1e-9
    assert np.all(ic.train_accuracy_[:-1] > 0.3)
    path = tmp_path / "ic.joblib"
    joblib.dump(ic, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict(Xte), ic.predict(Xte))
    r = ic.route(torch.from_numpy(Xte))
    assert r.flops.mean() < 0.8
    assert np.mean(r.y_pred == yte) > 0.5
