"""FlopBudgetSearchCV."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.frozen import FrozenEstimator
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import balanced_accuracy_score, make_scorer
from sklearn.model_selection import KFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_e2cm import EarlyExitClassMeans, FlopBudgetSearchCV
from sklearn_e2cm._exit_estimator import exit_table_from_source
from sklearn_e2cm.early_exit import fit_on_shared_rows, share_stage_outputs


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    net = make_pipeline(StandardScaler(), PCA(24, random_state=0),
                        Nystroem(n_components=150, random_state=0), RidgeClassifier())
    net.fit(Xtr, ytr)
    return Xtr, Xte, ytr, yte, FrozenEstimator(net)


def _est(net, **kw):
    return EarlyExitClassMeans(stages=net, random_state=0, **kw)


@pytest.fixture(scope="module")
def search(data):
    Xtr, Xte, ytr, yte, net = data
    return FlopBudgetSearchCV(_est(net), flops_targets=100, cv=3, max_flops=0.3,
                              return_train_score=True, random_state=0).fit(Xtr, ytr)


def test_cv_results_keys_and_shapes(search):
    res = search.cv_results_
    P = 100
    for key in ["mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time",
                "param_flops_target", "params", "mean_test_score", "std_test_score",
                "rank_test_score", "mean_test_flops", "std_test_flops", "on_pareto_front",
                "mean_train_score", "std_train_score", "mean_train_flops"]:
        assert key in res, key
        assert len(res[key]) == P, key
    for k in range(3):
        for key in (f"split{k}_test_score", f"split{k}_test_flops", f"split{k}_train_score"):
            assert res[key].shape == (P,)
    assert isinstance(res["param_flops_target"], np.ma.MaskedArray)
    np.testing.assert_allclose(res["param_flops_target"], np.arange(1, 101) / 100)
    assert res["params"][9] == {"flops_target": pytest.approx(0.1)}
    assert res["rank_test_score"].dtype == np.int32
    assert res["rank_test_score"][np.argmax(res["mean_test_score"])] == 1
    split = np.stack([res[f"split{k}_test_score"] for k in range(3)])
    np.testing.assert_allclose(res["mean_test_score"], split.mean(0))
    np.testing.assert_allclose(res["std_test_score"], split.std(0))
    df = pd.DataFrame(res)
    assert df.shape[0] == P and "mean_test_flops" in df
    assert search.n_splits_ == 3
    # train rows (tuning data) serve the target exactly where the hull reaches it
    targets = np.asarray(res["param_flops_target"])
    for k in range(3):
        tr = res[f"split{k}_train_flops"]
        ok = (targets >= tr.min()) & (targets <= tr.max())
        assert ok.sum() > 10
        np.testing.assert_allclose(tr[ok], targets[ok], atol=1e-9)


def test_selection_and_best_attributes(search):
    res = search.cv_results_
    i = search.best_index_
    assert search.best_params_ == res["params"][i]
    assert search.best_score_ == res["mean_test_score"][i]
    assert search.best_flops_ == res["mean_test_flops"][i] <= 0.3
    feasible = res["mean_test_flops"] <= 0.3
    assert search.best_score_ == res["mean_test_score"][feasible].max()


def test_pareto_front_is_the_hull_of_the_cv_curve(search):
    front = search.pareto_front_
    assert {"flops_target", "flops", "score", "accuracy", "std_flops", "std_score",
            "thresholds", "weights"} <= set(front.columns)
    res = search.cv_results_
    assert front.shape[0] == res["on_pareto_front"].sum()
    assert front.flops.is_monotonic_increasing and front.score.is_monotonic_increasing
    c, s = res["mean_test_flops"], res["mean_test_score"]
    hc, hs = front.flops.to_numpy(), front.score.to_numpy()
    inside = (c >= hc[0]) & (c <= hc[-1])
    assert np.all(s[inside] <= np.interp(c[inside], hc, hs) + 1e-9)
    for T, w in zip(front.thresholds, front.weights):
        assert T.ndim == 2 and T.shape[1] == 3 and T.shape[0] == w.shape[0]
        assert w.sum() == pytest.approx(1.0)


def test_refit_serves_the_selected_target(search, data):
    Xtr, Xte, ytr, yte, net = data
    best = search.best_estimator_
    target = search.best_params_["flops_target"]
    assert best.flops_target == target
    assert best.expected_flops_ == pytest.approx(target, abs=1e-9)
    # the tuning data of the refit is the training data: the target is met there
    assert abs(best.route(Xtr).flops.mean() - target) < 0.02
    np.testing.assert_array_equal(search.predict(Xte), best.predict(Xte))
    assert search.score(Xte, yte) == pytest.approx(np.mean(best.predict(Xte) == yte))
    assert search.score(Xte, yte) > 0.8
    np.testing.assert_array_equal(search.classes_, np.arange(10))
    assert search.refit_time_ > 0


@pytest.mark.slow
def test_same_results_for_n_jobs_1_and_2(data):
    Xtr, Xte, ytr, yte, net = data
    kw = dict(flops_targets=50, cv=3, max_flops=0.4, random_state=0, method="bisect")
    a = FlopBudgetSearchCV(_est(net), n_jobs=1, **kw).fit(Xtr, ytr)
    b = FlopBudgetSearchCV(_est(net), n_jobs=2, **kw).fit(Xtr, ytr)
    for key in a.cv_results_:
        if "time" in key or key == "params":
            continue
        np.testing.assert_array_equal(np.asarray(a.cv_results_[key]),
                                      np.asarray(b.cv_results_[key]), err_msg=key)
    assert a.best_params_ == b.best_params_
    np.testing.assert_array_equal(a.best_estimator_.mixture_thresholds_,
                                  b.best_estimator_.mixture_thresholds_)


def test_cv_none_tunes_on_training_data_once(data):
    Xtr, Xte, ytr, yte, net = data
    s = FlopBudgetSearchCV(_est(net), flops_targets=200, max_flops=0.25).fit(Xtr, ytr)
    assert s.n_splits_ == 1
    res = s.cv_results_
    assert "split0_test_score" in res and "split1_test_score" not in res
    best = s.best_estimator_
    assert s.best_params_["flops_target"] == pytest.approx(0.25)
    assert best.expected_flops_ == pytest.approx(0.25, abs=1e-9)
    assert abs(best.route(Xtr).flops.mean() - 0.25) < 0.02
    assert best.expected_accuracy_ == pytest.approx(s.best_score_, abs=1e-9)
    # the front: the tuning hull, one threshold vector per vertex
    front = s.pareto_front_
    assert all(T.shape == (1, 3) for T in front.thresholds)
    tr = best.tradeoff_
    hull = tr[tr.on_hull].sort_values("flops")
    np.testing.assert_allclose(front.flops, hull.flops)
    np.testing.assert_allclose(front.score, hull.accuracy)


def test_label_free_calibration_with_agreement(data):
    Xtr, Xte, ytr, yte, net = data
    fitted = _est(net).fit(Xtr, ytr)  # class means fitted on labelled data elsewhere
    s = FlopBudgetSearchCV(fitted, flops_targets=100, cv="prefit", scoring="agreement",
                           max_flops=0.3).fit(Xte)  # unlabelled device data
    assert s.scorer_ == "agreement"
    best = s.best_estimator_
    assert best is not fitted and fitted.flops_target is None
    assert s.best_params_["flops_target"] == pytest.approx(0.3)
    # agreement with the base model on the calibration data, as estimated
    routed = best.predict(Xte)
    base = list(best.staged_predict(Xte))[-1]
    assert abs(np.mean(routed == base) - s.best_score_) < 0.03
    assert s.score(Xte) == pytest.approx(np.mean(routed == base))
    assert abs(best.route(Xte).flops.mean() - 0.3) < 0.03
    # the base model agrees with itself
    assert s.base_score_ == 1.0


def test_agreement_with_cv_needs_no_labels_for_scoring(data):
    Xtr, Xte, ytr, yte, net = data
    s = FlopBudgetSearchCV(_est(net), flops_targets=50, cv=3, scoring="agreement",
                           random_state=0).fit(Xtr, ytr)
    assert np.all(s.cv_results_["mean_test_score"] <= 1.0 + 1e-12)  # a mixture of 1.0s
    assert s.cv_results_["mean_test_score"][-1] > 0.95


@pytest.mark.slow
def test_callable_and_named_metrics(data):
    Xtr, Xte, ytr, yte, net = data
    kw = dict(flops_targets=40, cv=KFold(3, shuffle=True, random_state=0), random_state=0)
    est = _est(net, sweep_resolution=100)
    acc = FlopBudgetSearchCV(est, **kw).fit(Xtr, ytr)
    fn = FlopBudgetSearchCV(est, scoring=lambda yt, yp: np.mean(yt == yp), **kw).fit(Xtr, ytr)
    # same operating points, routed the same way: a metric that is accuracy gives accuracy
    np.testing.assert_allclose(fn.cv_results_["mean_test_flops"],
                               acc.cv_results_["mean_test_flops"])
    np.testing.assert_allclose(fn.cv_results_["mean_test_score"],
                               acc.cv_results_["mean_test_score"], atol=1e-12)
    ba = FlopBudgetSearchCV(est, scoring="balanced_accuracy", **kw).fit(Xtr, ytr)
    assert ba.scorer_ == "balanced_accuracy"
    assert ba.score(Xte, yte) == pytest.approx(
        balanced_accuracy_score(yte, ba.predict(Xte)))
    ms = FlopBudgetSearchCV(est, scoring=make_scorer(balanced_accuracy_score),
                            **kw).fit(Xtr, ytr)
    np.testing.assert_allclose(ms.cv_results_["mean_test_score"],
                               ba.cv_results_["mean_test_score"])


@pytest.mark.slow
def test_budget_callable_refit_false_and_errors(data):
    Xtr, Xte, ytr, yte, net = data
    def near_02(res):
        return int(np.argmin(np.abs(res["mean_test_flops"] - 0.2)))

    with pytest.warns(FutureWarning, match="'budget' was renamed.*use refit="):
        s = FlopBudgetSearchCV(_est(net), flops_targets=20, cv=2, refit=False,
                               budget=near_02).fit(Xtr, ytr)
    assert abs(s.best_flops_ - 0.2) < 0.03
    assert s.best_index_ == np.argmin(np.abs(s.cv_results_["mean_test_flops"] - 0.2))
    assert not hasattr(s, "best_estimator_")
    with pytest.raises(AttributeError, match="refit=False"):
        s.predict(Xte)
    assert s.pareto_front_.thresholds.isna().all()
    with pytest.raises(ValueError, match="selection callable returned 'x'"):
        FlopBudgetSearchCV(_est(net), flops_targets=5, cv=2,
                           refit=lambda r: "x").fit(Xtr, ytr)
    # refit=callable selects and refits (GridSearchCV's convention)
    r = FlopBudgetSearchCV(_est(net), flops_targets=20, cv=2, refit=near_02).fit(Xtr, ytr)
    assert r.best_index_ == s.best_index_
    assert abs(r.best_estimator_.expected_flops_ - r.best_params_["flops_target"]) < 1e-9
    with pytest.raises(ValueError, match="max_flops=0.3.*set max_flops=None"):
        FlopBudgetSearchCV(_est(net), refit=near_02, max_flops=0.3).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="budget=0.3 with max_flops=0.2"):
        FlopBudgetSearchCV(_est(net), budget=0.3, max_flops=0.2).fit(Xtr, ytr)
    with pytest.raises(ValueError, match=r"flops_targets must lie in \(0, 1\].*1.5"):
        FlopBudgetSearchCV(_est(net), flops_targets=[0.5, 1.5]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="needs the labels y"):
        FlopBudgetSearchCV(_est(net)).fit(Xtr)
    with pytest.raises(ValueError, match="not a known scorer name"):
        FlopBudgetSearchCV(_est(net), scoring="no_such_metric").fit(Xtr, ytr)
    with pytest.raises(ValueError, match="method"):
        FlopBudgetSearchCV(_est(net), method="newton").fit(Xtr, ytr)
    with pytest.warns(UserWarning, match="No FLOP target meets max_flops=0.001"):
        FlopBudgetSearchCV(_est(net), flops_targets=10, max_flops=0.001).fit(Xtr, ytr)


def test_plot_draws_the_cv_curve(search):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    disp = search.plot(ax=ax)
    assert disp.ax_ is ax and disp.figure_ is fig
    np.testing.assert_allclose(disp.line_.get_xdata(), search.pareto_front_.flops)
    assert disp.operating_point_.get_xdata()[0] == search.best_flops_
    plt.close(fig)


def test_sweep_hull_matches_estimator_own_search(data):
    """cv=None reproduces the estimator's own sweep and hull exactly (same grid and seed)."""
    Xtr, Xte, ytr, yte, net = data
    est = _est(net, flops_target=0.3, sweep_resolution=100).fit(Xtr, ytr)
    s = FlopBudgetSearchCV(_est(net, sweep_resolution=100), flops_targets=37, max_flops=0.3,
                           random_state=0).fit(Xtr, ytr)
    ours, theirs = s.best_estimator_.tradeoff_, est.tradeoff_
    np.testing.assert_array_equal(ours.flops.to_numpy(), theirs.flops.to_numpy())
    np.testing.assert_array_equal(ours.accuracy.to_numpy(), theirs.accuracy.to_numpy())
    np.testing.assert_array_equal(np.vstack(ours.thresholds), np.vstack(theirs.thresholds))
    np.testing.assert_array_equal(ours.on_hull.to_numpy(), theirs.on_hull.to_numpy())


def _route_flops(est, X, y=None):
    return float(est.route(X).flops.mean())


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"calibration": 0.25}, {"threshold_search": "bisect"},
                                {"threshold_search": "bisect-hull"}])
@pytest.mark.parametrize("share", [True, False])
def test_cv_results_equal_gridsearchcv_over_flops_target(data, kw, share):
    """Each row is what GridSearchCV over flops_target measures: same hull, seed and routing."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    Xtr, Xte, ytr, yte, net = data
    targets = [0.2, 0.25, 0.3, 0.45, 0.7]
    cv = StratifiedKFold(3, shuffle=True, random_state=1)
    est = _est(net, sweep_resolution=200, **kw)
    gs = GridSearchCV(est, {"flops_target": targets}, cv=cv, refit=False,
                      scoring={"accuracy": "accuracy", "flops": _route_flops}).fit(Xtr, ytr)
    fb = FlopBudgetSearchCV(est, flops_targets=targets, cv=cv, max_flops=0.3,
                            share_stage_outputs=share).fit(Xtr, ytr)
    assert fb.shared_stage_outputs_ is share
    for k in range(3):
        np.testing.assert_allclose(fb.cv_results_[f"split{k}_test_score"],
                                   gs.cv_results_[f"split{k}_test_accuracy"], atol=1e-12)
        np.testing.assert_allclose(fb.cv_results_[f"split{k}_test_flops"],
                                   gs.cv_results_[f"split{k}_test_flops"], rtol=1e-9)
    # the refit is the estimator fitted at the selected target, searching the same way
    ref = clone_with(est, flops_target=fb.best_params_["flops_target"]).fit(Xtr, ytr)
    assert fb.best_estimator_.get_params() == ref.get_params()
    np.testing.assert_allclose(fb.best_estimator_.mixture_thresholds_, ref.mixture_thresholds_,
                               atol=1e-12)
    # a finer grid that contains GridSearchCV's targets selects an equal or better score
    fine = FlopBudgetSearchCV(est, flops_targets=200, cv=cv, max_flops=0.3,
                              share_stage_outputs=share).fit(Xtr, ytr)
    ok = gs.cv_results_["mean_test_flops"] <= 0.3 + 1e-9
    assert fine.best_score_ >= gs.cv_results_["mean_test_accuracy"][ok].max() - 1e-12
    assert fine.best_flops_ <= 0.3 + 1e-9


def test_search_seeds_an_unseeded_estimator(data):
    Xtr, Xte, ytr, yte, net = data
    est = EarlyExitClassMeans(stages=net, sweep_resolution=100)  # random_state=None
    a = FlopBudgetSearchCV(est, flops_targets=50, cv=3, max_flops=0.3, random_state=4).fit(Xtr, ytr)
    b = FlopBudgetSearchCV(est, flops_targets=50, cv=3, max_flops=0.3, random_state=4).fit(Xtr, ytr)
    seed = a.best_estimator_.random_state
    assert isinstance(seed, int) and seed == b.best_estimator_.random_state
    np.testing.assert_array_equal(a.cv_results_["mean_test_score"],
                                  b.cv_results_["mean_test_score"])
    assert est.random_state is None  # the user's estimator is not modified
    # the refit is what fitting the seeded estimator at the selected target gives
    ref = clone_with(est, random_state=seed, flops_target=a.best_params_["flops_target"])
    ref.fit(Xtr, ytr)
    np.testing.assert_array_equal(ref.mixture_thresholds_, a.best_estimator_.mixture_thresholds_)
    np.testing.assert_array_equal(ref.predict(Xte), a.predict(Xte))


def clone_with(est, **params):
    from sklearn.base import clone

    return clone(est).set_params(**params)


def test_method_none_follows_the_estimator(data):
    Xtr, Xte, ytr, yte, net = data
    s = FlopBudgetSearchCV(_est(net, threshold_search="bisect-hull"), flops_targets=20,
                           max_flops=0.3).fit(Xtr, ytr)
    assert s.method_ == "bisect"
    assert s.best_estimator_.threshold_search == "bisect-hull"
    s = FlopBudgetSearchCV(_est(net), flops_targets=20, max_flops=0.3).fit(Xtr, ytr)
    assert s.method_ == "coordinate" and s.best_estimator_.threshold_search == "hull"


# ----------------------------------------------- one forward pass shared by the folds
class _CountingScaler(StandardScaler):
    """Counts the rows it transforms (fitted outside: a frozen stage)."""

    rows = 0

    def transform(self, X, copy=None):
        type(self).rows += X.shape[0]
        return super().transform(X, copy=copy)


def _frozen_counting_net(Xtr, ytr):
    net = make_pipeline(_CountingScaler(), PCA(24, random_state=0),
                        Nystroem(n_components=150, random_state=0), RidgeClassifier())
    return FrozenEstimator(net.fit(Xtr, ytr))


@pytest.mark.slow
def test_shared_forward_pass_runs_the_stages_once(data):
    Xtr, Xte, ytr, yte, _ = data
    net = _frozen_counting_net(Xtr, ytr)
    _CountingScaler.rows = 0
    costs = {0: 2.0 * Xtr.shape[1]}  # the counting scaler has no cost rule
    s = FlopBudgetSearchCV(_est(net, stage_costs=costs), flops_targets=50, cv=3, max_flops=0.3,
                           random_state=0).fit(Xtr, ytr)
    assert s.shared_stage_outputs_ and s.share_reason_ is None
    # one pass over the data (plus a probe of the widths): folds and refit run no stage
    assert _CountingScaler.rows <= len(Xtr) + 2
    _CountingScaler.rows = 0
    u = FlopBudgetSearchCV(_est(net, stage_costs=costs), flops_targets=50, cv=3, max_flops=0.3,
                           random_state=0,
                           share_stage_outputs=False).fit(Xtr, ytr)
    assert not u.shared_stage_outputs_ and u.share_reason_ == "share_stage_outputs=False"
    assert _CountingScaler.rows >= 3 * len(Xtr)  # a fit and a held-out pass per fold, a refit
    for key in ("mean_test_score", "mean_test_flops", "split0_test_score", "split2_test_flops"):
        np.testing.assert_allclose(s.cv_results_[key], u.cv_results_[key], atol=1e-9)
    assert s.best_params_ == u.best_params_
    np.testing.assert_array_equal(s.predict(Xte), u.predict(Xte))
    np.testing.assert_allclose(s.best_estimator_.mixture_thresholds_,
                               u.best_estimator_.mixture_thresholds_, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"calibration": 0.3}, {"metric": "mahalanobis"}])
def test_fit_shared_equals_fit_on_the_rows(data, kw):
    Xtr, Xte, ytr, yte, net = data
    est = _est(net, flops_target=0.4, **kw)
    template = _est(net, **kw)
    shared, reason = share_stage_outputs(template, Xtr, ytr)
    assert shared is not None and reason is None
    rows = np.random.default_rng(0).permutation(len(ytr))[:700]
    a = fit_on_shared_rows(_est(net, flops_target=0.4, **kw), shared, rows)
    b = est.fit(Xtr[rows], ytr[rows])
    for ca, cb in zip(a.class_means_, b.class_means_):
        np.testing.assert_allclose(ca, cb, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.mixture_thresholds_, b.mixture_thresholds_, atol=1e-9)
    np.testing.assert_array_equal(a.predict(Xte), b.predict(Xte))
    ta = exit_table_from_source(a, shared.source(np.arange(50), None, a.batch_size),
                                shared.context, ytr[:50])
    tb = b.exit_table(Xtr[:50], ytr[:50])
    np.testing.assert_allclose(ta.conf, tb.conf, atol=1e-10)
    np.testing.assert_array_equal(ta.correct, tb.correct)


@pytest.mark.slow
def test_shared_pass_falls_back_or_raises(data):
    Xtr, Xte, ytr, yte, _ = data
    trained_by_fit = make_pipeline(StandardScaler(), PCA(16, random_state=0), RidgeClassifier())
    s = FlopBudgetSearchCV(_est(trained_by_fit), flops_targets=20, cv=3,
                           random_state=0).fit(Xtr, ytr)
    assert not s.shared_stage_outputs_ and "trained by fit" in s.share_reason_
    with pytest.raises(ValueError, match="cannot be shared: some stages are trained"):
        FlopBudgetSearchCV(_est(trained_by_fit), flops_targets=20, cv=3,
                           share_stage_outputs=True).fit(Xtr, ytr)
    _, _, _, _, net = data
    s = FlopBudgetSearchCV(_est(net, cache_size=1000), flops_targets=20, cv=3,
                           random_state=0).fit(Xtr, ytr)
    assert not s.shared_stage_outputs_ and "cache_size" in s.share_reason_
    assert s.best_estimator_.score(Xte, yte) > 0.5
    with pytest.raises(ValueError, match="share_stage_outputs"):
        FlopBudgetSearchCV(_est(net), cv=3, share_stage_outputs="yes").fit(Xtr, ytr)


@pytest.mark.slow
def test_shared_pass_with_n_jobs_2(data):
    Xtr, Xte, ytr, yte, net = data
    a = FlopBudgetSearchCV(_est(net), flops_targets=30, cv=3, random_state=0, n_jobs=1)
    b = FlopBudgetSearchCV(_est(net), flops_targets=30, cv=3, random_state=0, n_jobs=2)
    a.fit(Xtr, ytr)
    b.fit(Xtr, ytr)
    assert a.shared_stage_outputs_ and b.shared_stage_outputs_
    np.testing.assert_array_equal(a.cv_results_["mean_test_score"],
                                  b.cv_results_["mean_test_score"])


def test_shared_pass_validates_the_estimator_parameters(data):
    Xtr, Xte, ytr, yte, net = data
    with pytest.raises(ValueError, match="metric"):
        FlopBudgetSearchCV(_est(net, metric="cosine"), flops_targets=10, cv=3).fit(Xtr, ytr)
