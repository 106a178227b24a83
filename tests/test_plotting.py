"""TradeoffDisplay (drawn with the Agg backend: no display server)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.kernel_approximation import Nystroem  # noqa: E402
from sklearn.linear_model import RidgeClassifier  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_e2cm import EarlyExitClassMeans, TradeoffDisplay  # noqa: E402
from sklearn_e2cm._thresholds import upper_hull  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    net = make_pipeline(StandardScaler(), PCA(24, random_state=0),
                        Nystroem(n_components=150, random_state=0), RidgeClassifier())
    net = FrozenEstimator(net.fit(Xtr, ytr))
    clf = EarlyExitClassMeans(stages=net, flops_target=0.2, sweep_resolution=200,
                              random_state=0).fit(Xtr, ytr)
    return clf, Xte, yte, net, Xtr, ytr


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_from_estimator_draws_on_given_axes(fitted):
    clf, Xte, yte, *_ = fitted
    fig, ax = plt.subplots()
    disp = TradeoffDisplay.from_estimator(clf, Xte, yte, ax=ax, name="digits")
    assert disp.ax_ is ax and disp.figure_ is fig
    # the estimator's own swept vectors evaluated on the held-out data
    assert disp.flops.shape == (len(clf.tradeoff_),)
    table = clf.exit_table(Xte, yte)
    T = np.vstack(clf.tradeoff_.thresholds.to_numpy())
    c, s = table.evaluate_many(T)
    np.testing.assert_allclose(disp.flops, c)
    np.testing.assert_allclose(disp.score, s)
    np.testing.assert_allclose(disp.line_.get_xdata(), disp.hull_flops)
    assert disp.hull_flops.shape[0] == clf.tradeoff_.on_hull.sum()
    assert disp.points_.get_offsets().shape == (len(c), 2)
    # base model point and the operating point with its time-sharing segment
    assert disp.base_flops == pytest.approx(1.0)
    assert disp.base_score == pytest.approx(np.mean(list(clf.staged_predict(Xte))[-1] == yte))
    r = clf.route(Xte)
    assert abs(disp.operating_flops - r.flops.mean()) < 0.03
    assert disp.segment_ is not None and len(disp.segment_.get_xdata()) == 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "digits (hull)" in labels and "base model" in labels
    assert ax.get_xlabel() == "normalised FLOPs (base model = 1)"
    assert ax.get_ylabel() == "accuracy"


def test_from_estimator_tuned_on_data_is_concave_and_agreement(fitted):
    clf, Xte, yte, *_ = fitted
    disp = TradeoffDisplay.from_estimator(clf, Xte, yte, tune="data", flops_targets=100)
    hull = upper_hull(disp.flops, disp.score)
    np.testing.assert_allclose(disp.hull_flops, disp.flops[hull])
    slopes = np.diff(disp.hull_score) / np.diff(disp.hull_flops)
    assert np.all(np.diff(slopes) <= 1e-9)
    agree = TradeoffDisplay.from_estimator(clf, Xte)  # no labels: agreement with the base
    assert agree.score_name == "agreement"
    assert agree.base_score == 1.0


def test_compare_and_plot_flags(fitted):
    clf, Xte, yte, net, Xtr, ytr = fitted
    other = EarlyExitClassMeans(stages=net, metric="mahalanobis", flops_target=0.2,
                                sweep_resolution=100, random_state=0).fit(Xtr, ytr)
    disp = TradeoffDisplay.from_estimator(clf, Xte, yte, compare={"whitened": other},
                                          name="euclidean")
    assert len(disp.comparisons) == 1 and disp.comparisons[0].name == "whitened"
    assert len(disp.comparison_lines_) >= 1
    labels = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert "whitened (hull)" in labels
    fig, ax = plt.subplots()
    out = disp.plot(ax=ax, show_points=False, show_base=False, color="red")
    assert out is disp and disp.ax_ is ax
    assert disp.points_ is None and disp.base_ is None
    assert matplotlib.colors.same_color(disp.line_.get_color(), "red")


def test_from_predictions(fitted):
    clf, Xte, yte, *_ = fitted
    preds, costs = [], []
    for t in (0.1, 0.2, 0.4):
        est = EarlyExitClassMeans(stages=clf.stages, flops_target=t, sweep_resolution=100,
                                  random_state=0).fit(fitted[4], fitted[5])
        r = est.route(Xte)
        preds.append(r.y_pred)
        costs.append(r.flops)
    disp = TradeoffDisplay.from_predictions(yte, preds, costs, base=(1.0, 0.95), name="budgets")
    np.testing.assert_allclose(disp.flops, [c.mean() for c in costs])
    np.testing.assert_allclose(disp.score, [np.mean(p == yte) for p in preds])
    assert disp.base_.get_xdata()[0] == 1.0
    means = TradeoffDisplay.from_predictions(yte, preds, [0.1, 0.2, 0.4],
                                             scoring=lambda a, b: np.mean(a == b))
    np.testing.assert_allclose(means.score, disp.score)
    with pytest.raises(ValueError, match="y_pred must have shape"):
        TradeoffDisplay.from_predictions(yte, [[0, 1]], [0.5])
    with pytest.raises(ValueError, match="flops has shape"):
        TradeoffDisplay.from_predictions(yte, preds, [0.1, 0.2])
    with pytest.raises(ValueError, match="scoring"):
        TradeoffDisplay.from_predictions(yte, preds, costs, scoring="f1")


def test_constructor_validation_and_errors(fitted):
    clf, Xte, yte, *_ = fitted
    with pytest.raises(ValueError, match="same length"):
        TradeoffDisplay(flops=[0.1, 0.2], score=[0.5])
    with pytest.raises(TypeError, match="no exit_table"):
        TradeoffDisplay.from_estimator(StandardScaler().fit(Xte), Xte, yte)
    with pytest.raises(ValueError, match="tune="):
        TradeoffDisplay.from_estimator(clf, Xte, yte, tune="train")
    base_only = EarlyExitClassMeans(stages=clf.stages).fit(fitted[4], fitted[5])
    with pytest.raises(ValueError, match="tune='estimator' needs"):
        TradeoffDisplay.from_estimator(base_only, Xte, yte, tune="estimator")
    disp = TradeoffDisplay.from_estimator(base_only, Xte, yte, flops_targets=50)  # tuned on X
    assert disp.flops.shape[0] == 52
    assert disp.operating_point_ is None
