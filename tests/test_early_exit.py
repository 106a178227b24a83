
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_e2cm import EarlyExitClassMeans, FlopBudgetSearchCV
from sklearn_e2cm._thresholds import cumulative_cost


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def _stages():
    return [StandardScaler(), PCA(24, random_state=0), Nystroem(n_components=200, random_state=0),
            LogisticRegression(max_iter=300)]


@pytest.fixture(scope="module")
def fitted(digits):
    Xtr, Xte, ytr, yte = digits
    return EarlyExitClassMeans(stages=_stages(), flops_target=0.3, random_state=0).fit(Xtr, ytr)


@parametrize_with_checks(
    [
        EarlyExitClassMeans(),
        EarlyExitClassMeans(stages=[StandardScaler(), LogisticRegression()], flops_target=0.8,
                            sweep_resolution=50, random_state=0),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ------------------------------------------------------------------ references
def _brute_distances(F, C):
    out = np.empty((F.shape[0], C.shape[0]))
    for i in range(F.shape[0]):
        for k in range(C.shape[0]):
            out[i, k] = np.sqrt(np.sum((F[i] - C[k]) ** 2))
    return out


def _stage_features(clf, X):
    feats, Z = [], np.asarray(X, dtype=np.float64)
    for step in clf._adapter.fitted_steps_:
        if hasattr(step, "transform"):
            Z = step.transform(Z)
            feats.append(Z)
    return feats


def test_per_stage_predictions_equal_nearest_centroid(digits):
    Xtr, Xte, ytr, yte = digits
    clf = EarlyExitClassMeans(stages=_stages(), normalize=False, random_state=0).fit(Xtr, ytr)
    preds = list(clf.staged_predict(Xte))
    for j, (Ftr, Fte) in enumerate(zip(_stage_features(clf, Xtr), _stage_features(clf, Xte))):
        nc = NearestCentroid().fit(Ftr, ytr)
        np.testing.assert_allclose(clf.class_means_[j], nc.centroids_, rtol=1e-10, atol=1e-10)
        assert np.mean(preds[j] == nc.predict(Fte)) == 1.0
    # the last stage is the base classifier's own prediction
    np.testing.assert_array_equal(preds[-1], clf._adapter.fitted_steps_[-1].predict(
        _stage_features(clf, Xte)[-1]))


def test_normalised_predictions_and_probabilities_brute_force(digits):
    Xtr, Xte, ytr, yte = digits
    clf = EarlyExitClassMeans(stages=_stages()[:2], random_state=0).fit(Xtr, ytr)
    probas = list(clf.staged_predict_proba(Xte[:40]))
    preds = list(clf.staged_predict(Xte[:40]))
    for j, (Ftr, Fte) in enumerate(zip(_stage_features(clf, Xtr), _stage_features(clf, Xte[:40]))):
        C = np.array([Ftr[ytr == k].mean(axis=0) for k in clf.classes_])
        s = _brute_distances(Ftr, C).mean(axis=0)  # eq. 4 on all training samples
        np.testing.assert_allclose(clf.distance_scale_[j], s, rtol=1e-9)
        d = _brute_distances(Fte, C) / s
        z = np.exp(-d - (-d).max(axis=1, keepdims=True))
        P = z / z.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probas[j], P, rtol=1e-8, atol=1e-12)
        np.testing.assert_array_equal(preds[j], clf.classes_[np.argmin(d, axis=1)])


def test_distances_equal_brute_force_loop():
    rng = np.random.RandomState(0)
    F = rng.randn(30, 7) * 100 + 50
    C = rng.randn(4, 7) * 100
    from sklearn_e2cm.exits.class_means import ExitHead

    np.testing.assert_allclose(ExitHead(C).distances(F), _brute_distances(F, C), rtol=1e-9)


def test_streaming_means_equal_batch_means_with_weights():
    rng = np.random.RandomState(0)
    X, y = make_blobs(300, 5, centers=3, random_state=0)
    w = rng.rand(300) * 3
    a = EarlyExitClassMeans(batch_size=17).fit(X, y, sample_weight=w)
    for k in range(3):
        ref = (X[y == k] * w[y == k, None]).sum(0) / w[y == k].sum()
        np.testing.assert_allclose(a.class_means_[0][k], ref, rtol=1e-12)


def test_routed_predictions_equal_reference_loop(fitted, digits):
    Xtr, Xte, ytr, yte = digits
    clf = fitted
    res = clf.route(Xte)
    P = list(clf.staged_predict_proba(Xte))
    base = list(clf.staged_predict(Xte))[-1]
    M = clf.n_stages_
    T_rows = clf.mixture_thresholds_[res.component]
    for i in range(Xte.shape[0]):  # per-sample reference
        for j in range(M):
            if j == M - 1:
                exp_pred, exp_stage = base[i], j
                break
            if P[j][i].max() > T_rows[i, j]:
                exp_pred, exp_stage = clf.classes_[P[j][i].argmax()], j
                break
        assert res.exit_stage[i] == exp_stage
        assert res.y_pred[i] == exp_pred
        cost = cumulative_cost(clf.stage_flops_, clf.exit_flops_, T_rows[i] < 1, last_head=False)
        assert res.flops[i] == pytest.approx(cost[exp_stage])
    np.testing.assert_array_equal(clf.predict(Xte), res.y_pred)
    np.testing.assert_allclose(clf.predict_proba(Xte), res.proba)


def test_expected_cost_equals_exact_recomputation(fitted, digits):
    Xtr, Xte, ytr, yte = digits
    clf = fitted
    res = clf.route(Xtr)
    # exact recomputation: per sample, sum the stage FLOPs and head FLOPs it paid
    c, e = clf.stage_flops_, clf.exit_flops_
    paid = np.empty(len(res))
    for i in range(len(res)):
        T = clf.mixture_thresholds_[res.component[i]]
        f = 0.0
        for j in range(res.exit_stage[i] + 1):
            f += c[j]
            if j < clf.n_stages_ - 1 and T[j] < 1:
                f += e[j]
        paid[i] = f / c.sum()
    np.testing.assert_allclose(res.flops, paid)
    # time sharing meets the target in expectation on the tuning (training) set
    assert abs(res.flops.mean() - 0.3) < 0.03


def test_cost_monotone_in_each_threshold(fitted, digits):
    from sklearn_e2cm._thresholds import ExitTable

    rng = np.random.RandomState(0)
    N, M = 500, 5
    conf = rng.rand(N, M)
    table = ExitTable(conf, rng.rand(N, M) > 0.3, [1, 2, 3, 4, 5], [0.1] * 5, last_head=True)
    for _ in range(20):
        T = rng.rand(M - 1) * 0.99
        for j in range(M - 1):
            grid = np.linspace(0, 0.99, 25)
            costs = []
            for t in grid:
                T2 = T.copy()
                T2[j] = t
                costs.append(table.evaluate(T2)[0])
            assert np.all(np.diff(costs) >= -1e-12)


def test_flops_target_none_reproduces_final_classifier(digits):
    Xtr, Xte, ytr, yte = digits
    clf = EarlyExitClassMeans(stages=_stages()).fit(Xtr, ytr)
    pipe = make_pipeline(*[clone(s) for s in _stages()]).fit(Xtr, ytr)
    np.testing.assert_array_equal(clf.predict(Xte), pipe.predict(Xte))
    np.testing.assert_allclose(clf.predict_proba(Xte), pipe.predict_proba(Xte))
    r = clf.route(Xte)
    assert np.all(r.flops == 1.0) and np.all(r.exit_stage == clf.n_stages_ - 1)
    assert clf.expected_flops_ == 1.0


def test_time_sharing_meets_target_on_10k_samples():
    X, y = make_blobs(10000, 8, centers=5, cluster_std=4.0, random_state=0)
    for target in (0.3, 0.45, 0.7):
        clf = EarlyExitClassMeans(
            stages=[StandardScaler(), PCA(6, random_state=0), LogisticRegression()],
            stage_costs=[100.0, 1000.0, 200.0], flops_target=target, sweep_resolution=200,
            random_state=0,
        ).fit(X, y)
        hull = clf.tradeoff_[clf.tradeoff_.on_hull]
        if target <= hull.flops.max():
            assert abs(clf.route(X).flops.mean() - target) < 0.01
            assert abs(clf.expected_flops_ - target) < 1e-9
            assert clf.mixture_thresholds_.shape[0] == 2
        else:  # beyond the best hull vertex, spending more buys nothing: serve the best one
            assert clf.expected_flops_ == pytest.approx(hull.flops.max())
            assert clf.expected_accuracy_ == pytest.approx(clf.tradeoff_.accuracy.max())


def test_hull_attributes(fitted):
    t = fitted.tradeoff_
    assert isinstance(t, pd.DataFrame)
    assert {"target", "flops", "accuracy", "thresholds", "on_hull"} <= set(t.columns)
    hull = t[t.on_hull].sort_values("flops")
    # the upper hull rises; past its top, the base model (cost 1) may follow, scoring lower
    rising = hull if hull.accuracy.is_monotonic_increasing else hull.iloc[:-1]
    assert rising.accuracy.is_monotonic_increasing
    if len(rising) < len(hull):
        assert hull.flops.iloc[-1] == pytest.approx(1.0)
        assert np.all(np.vstack(hull.thresholds.iloc[-1:].to_numpy()) >= 1.0)
    assert fitted.thresholds_.shape == (fitted.n_stages_ - 1,)
    assert fitted.memory_overhead_bytes_ > 0
    assert fitted.mixture_weights_.sum() == pytest.approx(1.0)


def test_gridsearch_pipeline_joblib_pandas_strings(digits, tmp_path):
    Xtr, Xte, ytr, yte = digits
    gs = GridSearchCV(
        EarlyExitClassMeans(stages=[StandardScaler(), PCA(16), LogisticRegression(max_iter=200)],
                            sweep_resolution=100, random_state=0),
        {"flops_target": [0.4, 0.6, 1.0]}, cv=2,
    ).fit(Xtr, ytr)
    assert gs.best_params_["flops_target"] in (0.4, 0.6, 1.0)
    pipe = make_pipeline(StandardScaler(), EarlyExitClassMeans()).fit(Xtr, ytr)
    assert pipe.score(Xte, yte) > 0.8
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    df = pd.DataFrame(Xtr, columns=[f"px{i}" for i in range(Xtr.shape[1])])
    clf = EarlyExitClassMeans(stages=_stages(), flops_target=0.5, random_state=1)
    clf.fit(df, names[ytr])
    assert list(clf.feature_names_in_) == list(df.columns)
    assert set(clf.predict(pd.DataFrame(Xte, columns=df.columns))) <= set(names)
    path = tmp_path / "clf.joblib"
    joblib.dump(clf, path)
    clf2 = joblib.load(path)
    np.testing.assert_array_equal(clf2.predict(Xte), clf.predict(Xte))
    np.testing.assert_array_equal(clf2.route(Xte).flops, clf.route(Xte).flops)


def test_predictions_do_not_depend_on_batch_composition(fitted, digits):
    Xtr, Xte, ytr, yte = digits
    full = fitted.predict(Xte)
    perm = np.random.RandomState(0).permutation(len(Xte))
    np.testing.assert_array_equal(fitted.predict(Xte[perm]), full[perm])
    np.testing.assert_array_equal(fitted.predict(Xte[:7]), full[:7])


def test_bisect_search_single_target(digits):
    Xtr, Xte, ytr, yte = digits
    clf = EarlyExitClassMeans(stages=_stages(), flops_target=0.4, threshold_search="bisect",
                              random_state=0).fit(Xtr, ytr)
    assert abs(clf.expected_flops_ - 0.4) < 1e-3
    assert clf.mixture_thresholds_.shape[0] == 1


def test_explicit_thresholds_and_errors(digits):
    Xtr, Xte, ytr, yte = digits
    clf = EarlyExitClassMeans(stages=_stages(), thresholds=[0.2, 0.3, 0.4]).fit(Xtr, ytr)
    np.testing.assert_array_equal(clf.thresholds_, [0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"shape \(2,\); expected \(3,\)"):
        EarlyExitClassMeans(stages=_stages(), thresholds=[0.2, 0.3]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match=r"\[0, 1\].*1.5"):
        EarlyExitClassMeans(stages=_stages(), thresholds=[0.2, 0.3, 1.5]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="flops_target.*1.5"):
        EarlyExitClassMeans(flops_target=1.5).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="flops_target.*0"):
        EarlyExitClassMeans(flops_target=0.0).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="1 class"):
        EarlyExitClassMeans().fit(Xtr, np.zeros(len(Xtr)))
    Xnan = Xtr.copy()
    Xnan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        EarlyExitClassMeans().fit(Xnan, ytr)
    fitted = EarlyExitClassMeans().fit(Xtr, ytr)
    with pytest.raises(ValueError, match="64 features"):
        fitted.predict(Xte[:, :10])


def test_unknown_stage_cost_and_override(digits):
    from sklearn.preprocessing import FunctionTransformer

    Xtr, Xte, ytr, yte = digits
    stages = [FunctionTransformer(np.tanh), PCA(8), LogisticRegression(max_iter=200)]
    with pytest.raises(TypeError, match="FunctionTransformer.*stage_costs"):
        EarlyExitClassMeans(stages=stages).fit(Xtr, ytr)
    clf = EarlyExitClassMeans(stages=stages, stage_costs={0: 64.0}).fit(Xtr, ytr)
    assert clf.stage_flops_[0] == 64.0
    with pytest.raises(ValueError, match="stage_costs has shape"):
        EarlyExitClassMeans(stages=stages, stage_costs=[1.0, 2.0]).fit(Xtr, ytr)


def test_unreachable_target_warns_and_uses_cheapest(digits):
    Xtr, Xte, ytr, yte = digits
    clf = EarlyExitClassMeans(stages=_stages(), flops_target=0.0001, random_state=0)
    with pytest.warns(UserWarning, match="below the cheapest reachable cost"):
        clf.fit(Xtr, ytr)
    assert clf.thresholds_[0] == 0.0  # every sample leaves at the first exit
    assert np.all(clf.route(Xte).exit_stage == 0)
    assert clf.expected_flops_ == pytest.approx(clf.cumulative_cost_[0])


@pytest.mark.parametrize("threshold_search", ["hull", "bisect-hull"])
def test_targets_above_the_hull_top_are_met_with_the_base_model(digits, threshold_search):
    """Where tuning accuracy saturates, a budget is still spent: time sharing with the base model."""
    Xtr, Xte, ytr, yte = digits
    stages = [StandardScaler(), PCA(20, random_state=0),
              Nystroem(n_components=300, random_state=0), LogisticRegression(max_iter=500)]
    clf = EarlyExitClassMeans(stages=stages, flops_target=0.6, random_state=0, sweep_resolution=200,
                              threshold_search=threshold_search).fit(Xtr, ytr)
    top = clf.tradeoff_.sort_values("accuracy", kind="stable").iloc[-1]
    assert top["flops"] < 0.6  # the hull tops out below the target on these tuning rows
    cheapest = clf.tradeoff_["flops"].min()
    for target in [0.6, 0.75, 0.9, 1.0]:
        clf.set_operating_point(flops_target=target)
        assert abs(clf.expected_flops_ - target) <= 0.01
        assert abs(clf.route(Xtr).flops.mean() - target) <= 0.03  # rows drawn by time sharing
    assert cheapest < 0.6
    np.testing.assert_array_equal(clf.predict(Xte), clf.route(Xte).y_pred)


def test_stages_none_is_nearest_centroid(digits):
    Xtr, Xte, ytr, yte = digits
    clf = EarlyExitClassMeans(normalize=False).fit(Xtr, ytr)
    nc = NearestCentroid().fit(Xtr, ytr)
    np.testing.assert_array_equal(clf.predict(Xte), nc.predict(Xte))
    assert np.all(clf.route(Xte).flops == 1.0)


def test_calibration_holdout(digits):
    Xtr, Xte, ytr, yte = digits
    clf = EarlyExitClassMeans(stages=_stages(), flops_target=0.4, calibration=0.3,
                              random_state=0).fit(Xtr, ytr)
    # tuned on the held-out part: the target is met there unless the best vertex is cheaper
    assert clf.expected_flops_ <= 0.4 + 1e-6
    hull = clf.tradeoff_[clf.tradeoff_.on_hull]
    assert clf.expected_flops_ == pytest.approx(min(0.4, hull.flops.max()))
    assert clf.score(Xte, yte) > 0.8


def test_random_state_reproducible(digits):
    Xtr, Xte, ytr, yte = digits
    a = EarlyExitClassMeans(stages=_stages(), flops_target=0.35, random_state=3).fit(Xtr, ytr)
    b = EarlyExitClassMeans(stages=_stages(), flops_target=0.35, random_state=3).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.mixture_thresholds_, b.mixture_thresholds_)
    np.testing.assert_array_equal(a.predict(Xte), b.predict(Xte))


def test_set_operating_point_without_refit(fitted, digits):
    Xtr, Xte, ytr, yte = digits
    clf = clone(fitted).fit(Xtr, ytr)
    ref = clone(fitted).set_params(flops_target=0.5).fit(Xtr, ytr)
    clf.set_operating_point(flops_target=0.5)
    assert clf.flops_target == 0.5
    assert clf.expected_flops_ == pytest.approx(ref.expected_flops_, abs=2e-3)
    clf.set_operating_point(thresholds=[0.5, 0.5, 0.5])
    np.testing.assert_array_equal(clf.thresholds_, [0.5, 0.5, 0.5])
    import pickle

    loaded = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(loaded.predict(Xte), clf.predict(Xte))
    with pytest.raises(RuntimeError, match="refit"):
        loaded.set_operating_point(flops_target=0.4)


def _prefitted_chain():
    from sklearn.frozen import FrozenEstimator

    X, y = load_digits(return_X_y=True)
    net = make_pipeline(StandardScaler(), PCA(16, random_state=0),
                        LogisticRegression(max_iter=300)).fit(X, y)
    return X, y, FrozenEstimator(net)


def test_labels_the_prefitted_classifier_cannot_predict_are_rejected():
    X, y, net = _prefitted_chain()
    with pytest.raises(ValueError, match=r"predicts classes \[0, 1, 2.*not among the labels"):
        EarlyExitClassMeans(stages=net).fit(X, y + 100)  # shifted labels: silent 0.10 before
    keep = y < 5  # a subset of the base model's classes: it may predict the others
    with pytest.raises(ValueError, match=r"predicts classes \[5, 6, 7, 8, 9\]"):
        EarlyExitClassMeans(stages=net).fit(X[keep], y[keep])


def test_labels_beyond_the_prefitted_classifier_are_accepted():
    X, y, net = _prefitted_chain()
    keep = y < 5
    small = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X[keep],
                                                                                  y[keep])
    from sklearn.frozen import FrozenEstimator

    clf = EarlyExitClassMeans(stages=FrozenEstimator(small), random_state=0).fit(X, y)
    assert clf.classes_.tolist() == list(range(10))  # classes 5..9 are never the base's answer
    assert set(np.unique(clf.predict(X))) <= set(range(5))


@pytest.mark.parametrize("make", [
    lambda: EarlyExitClassMeans(stages=[StandardScaler(), LogisticRegression(max_iter=200)]),
    lambda: FlopBudgetSearchCV(EarlyExitClassMeans(stages=[StandardScaler()]), flops_targets=5),
])
def test_negative_sample_weights_are_rejected(make):
    X, y = load_digits(return_X_y=True)
    w = np.ones(len(y))
    w[3] = -1.0
    with pytest.raises(ValueError, match="[Nn]egative values.*sample_weight"):
        make().fit(X, y, sample_weight=w)


def test_frozen_steps_cost_what_the_step_inside_costs():
    from sklearn.frozen import FrozenEstimator

    from sklearn_e2cm._flops import sklearn_flops

    X, y = load_digits(return_X_y=True)
    pca = PCA(10, random_state=0).fit(X)
    lr = LogisticRegression(max_iter=2000).fit(pca.transform(X), y)
    assert sklearn_flops(FrozenEstimator(pca), 64) == sklearn_flops(pca, 64)
    plain = EarlyExitClassMeans(stages=[pca, lr]).fit(X, y)
    frozen = EarlyExitClassMeans(stages=[FrozenEstimator(pca), FrozenEstimator(lr)]).fit(X, y)
    np.testing.assert_allclose(frozen.stage_flops_, plain.stage_flops_, rtol=0, atol=0)


def test_warnings_point_at_the_callers_line():
    X, y = load_digits(return_X_y=True)
    clf = EarlyExitClassMeans(stages=[StandardScaler(), PCA(8, random_state=0),
                                      LogisticRegression(max_iter=500)], random_state=0)
    with pytest.warns(UserWarning, match="below the cheapest reachable cost") as record:
        clf.set_params(flops_target=0.01).fit(X, y)
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="below the cheapest reachable cost") as record:
        clf.set_operating_point(flops_target=0.01)
    assert record[0].filename == __file__


def test_results_and_tables_print_a_summary():
    X, y = load_digits(return_X_y=True)
    clf = EarlyExitClassMeans(stages=[StandardScaler(), Nystroem(n_components=200, random_state=0),
                                      LogisticRegression(max_iter=500)],
                              flops_target=0.5, random_state=0).fit(X, y)
    r = clf.route(X)
    text = repr(r)
    assert text.startswith("RoutingResult(n_samples=1797, mean_flops=")
    assert f"exits_per_stage={np.bincount(r.exit_stage).tolist()}" in text
    assert len(text) < 200  # a summary, not the arrays
    t = repr(clf.exit_table(X, y))
    assert t.startswith("ExitTable(n_samples=1797, n_stages=3, base_cost=") and len(t) < 200


def test_warns_when_training_rows_make_an_early_exit_look_perfect():
    X, y = make_blobs(n_samples=400, centers=3, n_features=20, cluster_std=0.5, random_state=0)
    stages = [StandardScaler(), Nystroem(n_components=200, random_state=0),
              LogisticRegression(max_iter=300)]
    with pytest.warns(UserWarning, match=r"the exit after stage 0, at 0\.\d+ of the FLOPs, is as "
                                         r"accurate as the full model \(1\.0000 against 1\.0000\)"):
        EarlyExitClassMeans(stages=stages, flops_target=0.5, random_state=0).fit(X, y)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EarlyExitClassMeans(stages=stages, flops_target=0.5, calibration=0.25,
                            random_state=0).fit(X, y)
        EarlyExitClassMeans(stages=stages, random_state=0).fit(X, y)  # no budget asked


def test_renamed_sweep_resolution_keeps_the_old_name_with_a_future_warning():
    X, y = load_digits(return_X_y=True)
    steps = [StandardScaler(), PCA(16, random_state=0), LogisticRegression(max_iter=500)]
    new = EarlyExitClassMeans(stages=steps, flops_target=0.8, sweep_resolution=50,
                              random_state=0).fit(X, y)
    with pytest.warns(FutureWarning, match="'n_targets' was renamed 'sweep_resolution'"):
        old = EarlyExitClassMeans(stages=steps, flops_target=0.8, n_targets=50,
                                  random_state=0).fit(X, y)
    assert len(old.tradeoff_) == len(new.tradeoff_)
    np.testing.assert_array_equal(old.mixture_thresholds_, new.mixture_thresholds_)
    with pytest.raises(ValueError, match="both n_targets=50 and sweep_resolution=60"):
        EarlyExitClassMeans(stages=steps, flops_target=0.8, n_targets=50,
                            sweep_resolution=60).fit(X, y)
    assert clone(old).get_params()["n_targets"] == 50


def test_warns_when_an_early_exit_looks_as_accurate_as_the_full_model():
    X, y = make_blobs(n_samples=400, centers=3, n_features=20, cluster_std=0.5, random_state=0)
    steps = [StandardScaler(), PCA(10, random_state=0), Nystroem(n_components=100, random_state=0),
             LogisticRegression(max_iter=500)]
    with pytest.warns(UserWarning, match=r"exit after stage 0, at 0\.\d+ of the FLOPs, is (as "
                                         r"accurate as|more accurate than) the full model.*"
                                         r"calibration=0\.2"):
        EarlyExitClassMeans(stages=steps, flops_target=0.5, random_state=0).fit(X, y)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        EarlyExitClassMeans(stages=steps, flops_target=0.5, calibration=0.2,
                            random_state=0).fit(X, y)
