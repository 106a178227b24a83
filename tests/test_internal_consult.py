"""InternalClassifierEarlyExit: the paper's consult rule (``combine="consult"``) and the
whitened class-means features appended to the internal classifiers' input."""

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_e2cm import InternalClassifierEarlyExit
from sklearn_e2cm.exits.class_means import head_flops

pytest.importorskip("torch")

from test_internal import _features, _stages  # noqa: E402  (shared helpers)

METHODS = ["sdn", "branchynet", "bwds"]
METRICS = ["euclidean", "mahalanobis"]


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)



def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _row_rule(head, x, T):
    """One row, by hand: (exit?, IC class) under the consult rule at one exit."""
    e2cm = head.e2cm
    if e2cm.metric == "mahalanobis":
        score = e2cm.coef @ x + e2cm.intercept
    else:
        score = -np.sqrt(((e2cm.means - x) ** 2).sum(1)) / e2cm.scale
    v = x
    if head.e2cm_input:
        extra = -score if head.e2cm_mean is None else (
            (head.e2cm_mean - (score - score.mean())) / head.e2cm_std)
        v = np.concatenate([x, extra])
    p = _softmax(head.W @ v + head.b)
    if head.criterion == "max_proba":
        conf = p.max()
    elif head.criterion == "entropy":
        conf = 1 - (-(p * np.log(np.maximum(p, 1e-30))).sum()) / math.log(len(p))
    else:  # BWDS: the decision function's probability that leaving is safe
        conf = _softmax(head.Wd @ v + head.bd)[1]
    ic_class, e2cm_class = int(np.argmax(p)), int(np.argmax(score))
    return bool(conf > T and ic_class == e2cm_class), ic_class


def _brute_route(ic, X, T):
    """Exit stage and prediction of every row by a Python loop over rows and exits."""
    feats, clf = _features(ic, X)
    final = clf.predict(feats[-1])
    stages, preds = [], []
    for i in range(len(X)):
        for g in range(len(T)):
            leave, k = _row_rule(ic._heads[g], feats[g][i], T[g])
            if leave:
                stages.append(g)
                preds.append(ic.classes_[k])
                break
        else:
            stages.append(len(T))
            preds.append(final[i])
    return np.array(stages), np.array(preds)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("method", METHODS)
def test_consult_routes_as_the_row_by_row_rule(digits, method, metric):
    Xtr, Xte, ytr, yte = digits
    ic = InternalClassifierEarlyExit(_stages(), method=method, exit_at=[0, 1, 2], epochs=3,
                                     learning_rate=1e-2, combine="consult", metric=metric,
                                     random_state=0).fit(Xtr, ytr)
    Xs = Xte[:150]
    feats, _ = _features(ic, Xs)
    # thresholds at the median of every IC's own confidence: about half the rows pass them
    T = np.array([np.median(ic._heads[g].raw(feats[g])[1]) for g in range(3)])
    ic.set_operating_point(thresholds=T)
    stage, pred = _brute_route(ic, Xs, T)
    r = ic.route(Xs)
    np.testing.assert_array_equal(r.exit_stage, stage)
    np.testing.assert_array_equal(r.y_pred, pred)
    np.testing.assert_allclose(r.flops, ic.cumulative_cost_[stage], rtol=1e-12)
    # the rule bites: some rows pass their IC threshold but E²CM disagrees and they go on
    vetoed = 0
    for g in range(3):
        P, conf, _ = ic._heads[g].raw(feats[g])
        vetoed += int(np.sum((conf > T[g]) & (stage > g)))
    assert vetoed > 0
    assert np.any(stage < 3)


def test_consult_with_class_means_input_routes_as_the_row_by_row_rule(digits):
    Xtr, Xte, ytr, _ = digits
    T = np.array([0.6, 0.3, 0.25])
    for metric in METRICS:
        ic = InternalClassifierEarlyExit(_stages(), exit_at=[0, 1, 2], epochs=3,
                                         learning_rate=1e-2,
                                         class_means=True, combine="consult", metric=metric,
                                         thresholds=T, random_state=0).fit(Xtr, ytr)
        assert (ic._heads[0].e2cm_mean is not None) == (metric == "mahalanobis")
        stage, pred = _brute_route(ic, Xte[:150], T)
        r = ic.route(Xte[:150])
        np.testing.assert_array_equal(r.exit_stage, stage)
        np.testing.assert_array_equal(r.y_pred, pred)


@pytest.mark.parametrize("method", METHODS)
def test_consult_without_a_budget_reproduces_the_base_model(digits, method):
    Xtr, Xte, ytr, _ = digits
    kw = dict(method=method, exit_at=[0, 1, 2], epochs=1, combine="consult",
              metric="mahalanobis", random_state=0)
    for extra in ({"flops_target": None}, {"thresholds": [1.0, 1.0, 1.0]}):
        ic = InternalClassifierEarlyExit(_stages(), **kw, **extra).fit(Xtr, ytr)
        feats, clf = _features(ic, Xte)
        r = ic.route(Xte)
        np.testing.assert_array_equal(r.y_pred, clf.predict(feats[-1]))
        assert np.all(r.exit_stage == 3)
        assert np.all(r.flops == 1.0)


def test_consult_staged_outputs_agree_with_route(digits):
    Xtr, Xte, ytr, _ = digits
    ic = InternalClassifierEarlyExit(_stages(), exit_at=[0, 1, 2], epochs=3,
                                     learning_rate=1e-2, combine="consult", class_means=True,
                                     metric="mahalanobis", flops_target=0.8,
                                     random_state=0).fit(Xtr, ytr)
    r = ic.route(Xte)
    staged = np.column_stack(list(ic.staged_predict(Xte)))
    np.testing.assert_array_equal(r.y_pred, staged[np.arange(len(Xte)), r.exit_stage])
    # the exit table's confidence is the IC's own where E²CM agrees, 0 where it does not
    table = ic.exit_table(Xte)
    feats, _ = _features(ic, Xte)
    for g in range(3):
        h = ic._heads[g]
        P, conf, _ = h.raw(feats[g])
        agree = P.argmax(1) == h.e2cm.scores(feats[g]).argmax(1)
        np.testing.assert_allclose(table.conf[:, g], np.where(agree, conf, 0.0),
                                   rtol=1e-6, atol=1e-7)
        assert 0 < agree.mean() < 1
    # the operating point meets the budget on the tuning data, with some early exits
    assert ic.expected_flops_ <= 0.8 + 1e-9
    assert np.any(r.exit_stage < 3)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("class_means", [False, True])
def test_consult_flops_recomputed(digits, metric, class_means):
    Xtr, _, ytr, _ = digits
    ic = InternalClassifierEarlyExit(_stages(), exit_at=[1, 2], epochs=1, method="sdn",
                                     class_means=class_means, combine="consult", metric=metric,
                                     random_state=0).fit(Xtr, ytr)
    K = 10
    for g, D in enumerate([32, 16]):
        D_in = D + (K if class_means else 0)
        f = 2 * K * D_in + K + 5 * K + K + 1  # linear layer, softmax, max_proba
        if metric == "euclidean":  # eq. 3-5 of the class-means head, as for "and"
            f += 2 * D + 2 * K * D + 3 * K + K + K + K + 5 * K + K + 1
        else:
            f += 2 * K * D + K + 5 * K + K + 1
            if class_means:
                f += 4 * K  # centring + standardising the appended scores
        f += K + 2  # the IC's argmax, the class comparison, the masking
        assert ic.exit_flops_[g] == pytest.approx(f, rel=0, abs=0)
        assert head_flops(D, K, metric) <= f
    # "and" pays the same class-means head, plus its quantile look-ups instead
    both = InternalClassifierEarlyExit(_stages(), exit_at=[1, 2], epochs=1,
                                       class_means=class_means, combine="and", metric=metric,
                                       random_state=0).fit(Xtr, ytr)
    np.testing.assert_allclose(both.exit_flops_[:2] - ic.exit_flops_[:2],
                               2 * 10 + 1 - (K + 2), rtol=0, atol=0)


def test_bad_combine_lists_consult(digits):
    Xtr, _, ytr, _ = digits
    with pytest.raises(InvalidParameterError, match="consult"):
        InternalClassifierEarlyExit(_stages(), combine="xor").fit(Xtr, ytr)


# ------------------------------------------------ whitened class means on the IC's input
def _offset_stages():
    # pixels mapped to [3, 4]: stage vectors with an offset, as a network's ReLU outputs have;
    # raw whitened scores appended to them are ~1e4 times larger and drowned them
    return [MinMaxScaler(feature_range=(3, 4)), PCA(16, random_state=0),
            LogisticRegression(max_iter=500)]


def test_whitened_class_means_input_is_no_worse_than_none(digits):
    Xtr, Xte, ytr, yte = digits
    acc = {}
    for cm in (False, True):
        ic = InternalClassifierEarlyExit(_offset_stages(), exit_at=[0, 1], epochs=1,
                                         class_means=cm, metric="mahalanobis", batch_size=64,
                                         random_state=0).fit(Xtr, ytr)
        acc[cm] = np.array([np.mean(p == yte) for p in ic.staged_predict(Xte)][:2])
    # unstandardised, the first exit fell to 0.15 (against 0.86 without class means)
    assert np.all(acc[True] >= acc[False] - 0.02), acc


def test_appended_scores_are_standardised_on_the_fit_rows(digits):
    Xtr, _, ytr, _ = digits
    w = np.random.RandomState(0).uniform(0.5, 2.0, len(ytr))
    ic = InternalClassifierEarlyExit(_offset_stages(), exit_at=[0, 1], epochs=1,
                                     class_means=True, metric="mahalanobis",
                                     random_state=0).fit(Xtr, ytr, sample_weight=w)
    steps = ic._adapter.base.fitted_steps_
    Z = np.asarray(Xtr, dtype=np.float64)
    for g in range(2):
        Z = steps[g].transform(Z)
        h = ic._heads[g]
        S = h.e2cm.scores(Z)
        S = S - S.mean(1, keepdims=True)
        mean = np.average(S, axis=0, weights=w)
        std = np.sqrt(np.average((S - mean) ** 2, axis=0, weights=w))
        np.testing.assert_allclose(h.e2cm_mean, mean, rtol=1e-6, atol=1e-6 * np.abs(S).max())
        np.testing.assert_allclose(h.e2cm_std, std, rtol=1e-6)
        V = h.inputs(Z)
        np.testing.assert_allclose(np.average(V[:, -10:], axis=0, weights=w), 0.0, atol=1e-6)
