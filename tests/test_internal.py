"""InternalClassifierEarlyExit: SDN / BranchyNet / BWDS exits, alone and with E²CM."""

import math
import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_e2cm import InternalClassifierEarlyExit
from sklearn_e2cm.stages._grouped import GroupedStages
from sklearn_e2cm.stages.sklearn import SklearnStages


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def _stages():
    return [StandardScaler(), PCA(32, random_state=0), PCA(16, random_state=0),
            LogisticRegression(max_iter=500)]


def _features(ic, X):
    """Stage outputs of every network stage, by running the fitted steps by hand."""
    steps = ic._adapter.base.fitted_steps_
    out, Z = [], np.asarray(X, dtype=np.float64)
    for s in steps[:-1]:
        Z = s.transform(Z)
        out.append(Z)
    return out, steps[-1]


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _brute_conf(head, F):
    """Per-sample loop: the IC's probabilities, its raw confidence and E²CM's
    (for ``combine="consult"``: whether E²CM's class equals the IC's, 1.0 / 0.0)."""
    P, conf, conf_e = [], [], []
    for x in F:
        v, score = x, None
        if head.e2cm is not None and (head.e2cm_input or head.combine):
            if head.e2cm.metric == "mahalanobis":
                score = head.e2cm.coef @ x + head.e2cm.intercept
            else:
                d = np.sqrt(((head.e2cm.means - x[None, :]) ** 2).sum(1))
                score = -d / head.e2cm.scale
            if head.e2cm_input:
                extra = -score if head.e2cm_mean is None else (
                    (head.e2cm_mean - (score - score.mean())) / head.e2cm_std)
                v = np.concatenate([x, extra])
        p = _softmax((head.W @ v + head.b)[None, :])[0]
        if score is not None:
            conf_e.append(float(np.argmax(score) == np.argmax(p)) if head.combine == "consult"
                          else _softmax(score[None, :])[0].max())
        P.append(p)
        if head.criterion == "max_proba":
            conf.append(p.max())
        elif head.criterion == "entropy":
            conf.append(1 - (-(p * np.log(np.maximum(p, 1e-30))).sum()) / math.log(len(p)))
        else:
            conf.append(_softmax((head.Wd @ v + head.bd)[None, :])[0][1])
    return np.array(P), np.array(conf), np.array(conf_e)


@pytest.mark.parametrize("kw", [
    {"method": "sdn"}, {"method": "branchynet"}, {"method": "bwds"},
    {"class_means": True}, {"combine": "and"}, {"combine": "or"},
    {"method": "bwds", "class_means": True, "combine": "or"},
    {"class_means": True, "combine": "and", "metric": "mahalanobis"},
    {"combine": "consult"}, {"class_means": True, "combine": "consult", "metric": "mahalanobis"},
    {"method": "bwds", "combine": "consult"},
])
def test_routing_matches_brute_force(digits, kw):
    Xtr, Xte, ytr, yte = digits
    T = np.array([0.9, 0.8, 0.85])
    ic = InternalClassifierEarlyExit(_stages(), exit_at=[0, 1, 2], epochs=5, thresholds=T,
                                     random_state=0, **kw).fit(Xtr, ytr)
    feats, clf = _features(ic, Xte)
    n = len(yte)
    pred = np.full(n, -1)
    stage = np.full(n, -1)
    for g in range(3):
        head = ic._heads[g]
        P, conf, conf_e = _brute_conf(head, feats[g])
        if head.combine == "consult":
            conf = np.where(conf_e == 1.0, conf, 0.0)
        elif head.combine:
            qi = np.searchsorted(head.q_ic, conf, side="right") / len(head.q_ic)
            qe = np.searchsorted(head.q_e2cm, conf_e, side="right") / len(head.q_e2cm)
            conf = np.minimum(qi, qe) if head.combine == "and" else np.maximum(qi, qe)
        leave = (stage < 0) & (conf > T[g])
        pred[leave] = ic.classes_[P.argmax(1)][leave]
        stage[leave] = g
    rest = stage < 0
    pred[rest] = clf.predict(feats[-1])[rest]
    stage[rest] = 3
    r = ic.route(Xte)
    assert np.array_equal(r.exit_stage, stage)
    assert np.array_equal(r.y_pred, pred)
    cost = ic.cumulative_cost_[stage]
    np.testing.assert_allclose(r.flops, cost)
    # exit tables give the same decisions
    table = ic.exit_table(Xte, yte)
    assert table.n_samples == n


def test_default_exit_placement_follows_flop_fractions(digits):
    Xtr, _, ytr, _ = digits
    for method, fracs in [("sdn", (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)),
                          ("branchynet", ("first", 1 / 3))]:
        ic = InternalClassifierEarlyExit(_stages(), method=method, epochs=1,
                                         random_state=0).fit(Xtr, ytr)
        base = SklearnStages(_stages()).fit(Xtr, ytr)
        cum = np.cumsum(base.stage_flops_)
        want = set()
        for f in fracs:
            want.add(0 if f == "first" else int(np.argmin(np.abs(cum[:-1] / cum[-1] - f))))
        assert ic.exit_stages_.tolist() == sorted(want) + [3]


def test_exit_flops_recomputed(digits):
    Xtr, _, ytr, _ = digits
    ic = InternalClassifierEarlyExit(_stages(), exit_at=[1, 2], epochs=2, method="bwds",
                                     class_means=True, random_state=0).fit(Xtr, ytr)
    K = 10
    for g, D in enumerate([32, 16]):
        D_in = D + K
        f = 2 * K * D_in + K + 5 * K  # linear + softmax
        f += 2 * 2 * D_in + 2 + 10 + 1  # decision function
        f += 2 * D + 2 * K * D + 3 * K + K + K + K + 5 * K + K + 1  # E²CM distances
        assert ic.exit_flops_[g] == pytest.approx(f)
    base = SklearnStages(_stages()).fit(Xtr, ytr)
    sf = base.stage_flops_
    np.testing.assert_allclose(ic.stage_flops_, [sf[0] + sf[1], sf[2], sf[3]])


def test_training_learns_and_class_means_widen_the_input(digits):
    Xtr, Xte, ytr, yte = digits
    ic = InternalClassifierEarlyExit(_stages(), exit_at=[1, 2], epochs=10,
                                     random_state=0).fit(Xtr, ytr)
    assert np.all(ic.train_accuracy_ > 0.8)
    staged = list(ic.staged_predict(Xte))
    assert len(staged) == 3
    assert np.mean(staged[0] == yte) > 0.8
    icm = InternalClassifierEarlyExit(_stages(), exit_at=[1, 2], epochs=10, class_means=True,
                                      random_state=0).fit(Xtr, ytr)
    assert icm._heads[0].W.shape == (10, 32 + 10)
    assert len(icm.class_means_) == 3 and icm.class_means_[0].shape == (10, 32)


def test_budget_and_reproducibility(digits):
    Xtr, Xte, ytr, yte = digits
    kw = dict(exit_at=[0, 1, 2], epochs=5, flops_target=0.6, random_state=3)
    a = InternalClassifierEarlyExit(_stages(), **kw).fit(Xtr, ytr)
    b = InternalClassifierEarlyExit(_stages(), **kw).fit(Xtr, ytr)
    assert a.expected_flops_ == pytest.approx(0.6, abs=1e-6)
    assert np.array_equal(a.predict(Xte), b.predict(Xte))
    r = a.route(Xtr)
    assert r.flops.mean() == pytest.approx(0.6, abs=0.03)
    c = pickle.loads(pickle.dumps(a))
    assert np.array_equal(c.predict(Xte), a.predict(Xte))
    cl = clone(a)
    assert {k: v for k, v in cl.get_params(deep=False).items() if k != "stages"} == {
        k: v for k, v in a.get_params(deep=False).items() if k != "stages"}
    assert not hasattr(cl, "classes_")
    proba = a.predict_proba(Xte)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    # a new operating point without retraining
    a.set_operating_point(flops_target=0.9)
    assert a.expected_flops_ == pytest.approx(0.9, abs=1e-6)


def test_bad_parameters(digits):
    Xtr, _, ytr, _ = digits
    with pytest.raises(ValueError, match="exit_at contains stage 3"):
        InternalClassifierEarlyExit(_stages(), exit_at=[3]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="fractions must lie in"):
        InternalClassifierEarlyExit(_stages(), exit_at=[1.5]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="criterion='entropy'"):
        InternalClassifierEarlyExit(_stages(), method="bwds", criterion="entropy").fit(Xtr, ytr)
    with pytest.raises(ValueError, match="method"):
        InternalClassifierEarlyExit(_stages(), method="nope").fit(Xtr, ytr)


def test_single_stage_is_a_trained_linear_classifier(digits):
    Xtr, Xte, ytr, yte = digits
    ic = InternalClassifierEarlyExit(epochs=30, learning_rate=1e-2,
                                     random_state=0).fit(Xtr, ytr)
    assert ic.n_stages_ == 1
    assert ic.score(Xte, yte) > 0.9
    np.testing.assert_allclose(ic.route(Xte).flops, 1.0)


def test_grouped_stages_run_the_base_stages(digits):
    Xtr, Xte, ytr, _ = digits
    base = SklearnStages(_stages()).fit(Xtr, ytr)
    base.set_classes(np.unique(ytr))
    g = GroupedStages(base, [1])
    assert g.n_stages == 2 and g.final_is_classifier
    Z = g.run_stage(0, Xte)
    feats, _ = _features(type("E", (), {"_adapter": g})(), Xte)
    np.testing.assert_allclose(g.stage_vector(0, Z), feats[1])
    idx, P = g.final_outputs(Z)
    np.testing.assert_array_equal(idx, base.final_outputs(feats[2])[0])
    with pytest.raises(ValueError, match="strictly increasing"):
        GroupedStages(base, [2, 1])


def test_unreachable_budget_warns_and_serves_the_cheapest_point(digits):
    """On this small chain the E²CM distances cost more than the first stages: with
    ``combine`` no exit is cheaper than the base model, and the estimator says so."""
    Xtr, Xte, ytr, yte = digits
    kw = dict(exit_at=[1, 2], epochs=5, flops_target=0.7, random_state=0)
    with pytest.warns(UserWarning, match="below the cheapest reachable cost"):
        both = InternalClassifierEarlyExit(_stages(), combine="and", **kw).fit(Xtr, ytr)
    assert both.cumulative_cost_[0] > 1.0
    assert both.expected_flops_ == pytest.approx(min(1.0, both.tradeoff_["flops"].min()))
    assert both.score(Xte, yte) > 0.9


@parametrize_with_checks(
    [
        InternalClassifierEarlyExit(epochs=3, sweep_resolution=50, random_state=0),
        InternalClassifierEarlyExit(stages=[StandardScaler(), LogisticRegression()],
                                    exit_at=[0], epochs=3, flops_target=0.8, sweep_resolution=50,
                                    random_state=0),
    ],
    # minibatch training: a weight of 2 scales a row's gradient, a duplicated row changes
    # which rows share a batch, so the two fits differ slightly (as for SGDClassifier)
    expected_failed_checks=lambda est: {} if est.stages is not None else {
        "check_sample_weight_equivalence_on_dense_data":
            "minibatch Adam: weights and duplicated rows give different batches"},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_flop_budget_search_accepts_it(digits):
    Xtr, Xte, ytr, yte = digits
    from sklearn_e2cm import FlopBudgetSearchCV

    est = InternalClassifierEarlyExit(_stages(), exit_at=[0, 1, 2], epochs=3, sweep_resolution=100,
                                      random_state=0)
    search = FlopBudgetSearchCV(est, flops_targets=50, cv=3, max_flops=0.9,
                                random_state=0).fit(Xtr, ytr)
    assert search.best_estimator_.expected_flops_ <= 0.9 + 1e-9
    assert search.best_estimator_.score(Xte, yte) > 0.8


def test_string_labels_calibration_and_weights(digits):
    Xtr, Xte, ytr, yte = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    ic = InternalClassifierEarlyExit(_stages(), exit_at=[1, 2], epochs=5, calibration=0.3,
                                     flops_target=0.95, random_state=0).fit(Xtr, names[ytr])
    assert set(ic.classes_) == set(names)
    assert ic.predict(Xte).dtype.kind in "UO"
    assert np.mean(ic.predict(Xte) == names[yte]) > 0.8
    # tuned on the held-out 30 %: the table has that many rows
    assert ic._tuning_table.n_samples == int(round(0.3 * len(ytr))) or \
        abs(ic._tuning_table.n_samples - 0.3 * len(ytr)) <= 1
    w = np.ones(len(ytr))
    w[ytr == 0] = 0.0  # zero weight: class 0 never drives the training
    a = InternalClassifierEarlyExit(_stages(), exit_at=[1], epochs=5, thresholds=[0.5],
                                    random_state=0).fit(Xtr, ytr, sample_weight=w)
    assert a.predict(Xte).shape == yte.shape


def test_tiny_batches_still_train(digits):
    """Standardisation from a 1-row first batch must not blow the inputs up."""
    Xtr, Xte, ytr, yte = digits
    stages = [StandardScaler(), PCA(32, random_state=0), LogisticRegression(max_iter=500)]
    ic = InternalClassifierEarlyExit(stages, exit_at=[0, 1], epochs=1, batch_size=1,
                                     flops_target=0.6, random_state=0).fit(Xtr[:400], ytr[:400])
    conf = ic._tuning_table.conf_cols[0]
    assert np.mean(conf >= 1.0 - 1e-9) < 0.5  # confidences still separate samples
    assert np.all(np.isfinite(ic._heads[0].W))


class _Square(TransformerMixin, BaseEstimator):
    """A transformer of unknown cost."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return np.asarray(X) ** 2


def test_stage_costs_override_and_no_spurious_warning(digits):
    import warnings

    Xtr, Xte, ytr, yte = digits
    # MinMaxScaler keeps the squares in [0, 1]: squared standardised pixels reach ~10³ and
    # made the logistic regression take ~500 L-BFGS iterations (most of this test's time)
    stages = [MinMaxScaler(), _Square(), LogisticRegression(max_iter=500)]
    with pytest.raises(TypeError, match="stage_costs"):  # UnknownCostError, as for E²CM
        InternalClassifierEarlyExit(stages, exit_at=[0, 1], flops_target=0.5).fit(Xtr, ytr)
    ic = InternalClassifierEarlyExit(stages, exit_at=[0, 1], epochs=5, flops_target=0.5,
                                     stage_costs={1: 128.0}, random_state=0).fit(Xtr, ytr)
    assert ic.stage_flops_[1] == pytest.approx(128.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one good IC: no "barely better than chance" warning
        InternalClassifierEarlyExit(epochs=5, flops_target=0.5, random_state=0).fit(Xtr, ytr)
