"""Bad input never crashes inside numpy/torch or misleads; failed calls change nothing.

One table: ``(case id, call, expected exception type, message fragment)``. Each call builds
what it needs from the small fixtures below and must raise that exception with a message that
names the bad value (the regex). A second part checks that failing ``fit`` /
``set_operating_point`` / ``partial_fit`` calls leave every attribute as it was.
"""

import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sklearn_e2cm import EarlyExitClassMeans, FlopBudgetSearchCV

try:
    import torch
    from torch import nn
except ImportError:  # the scikit-learn cases run without torch
    torch = nn = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")

pytestmark = pytest.mark.filterwarnings("ignore:flops_target=.* is below the cheapest")

_X, _Y = load_digits(return_X_y=True)
X, Y = _X[:400], _Y[:400]


def _steps():
    scaler = StandardScaler().fit(X)
    pca = PCA(8, random_state=0).fit(scaler.transform(X))
    clf = LogisticRegression(max_iter=200).fit(pca.transform(scaler.transform(X)), Y)
    return [scaler, pca, clf]


STEPS = _steps()


def ecm(**kw):
    return EarlyExitClassMeans(**{"sweep_resolution": 20, "random_state": 0, **kw})


def fitted(**kw):
    return ecm(stages=STEPS, flops_target=0.8, **kw).fit(X, Y)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    FITTED = fitted()


class _Explode(TransformerMixin, BaseEstimator):
    """A fitted transformer: NaN on rows whose largest value exceeds ``level``; the first
    ``rows`` rows only when ``rows`` is set (a stage that drops rows)."""

    def __init__(self, level=np.inf, rows=None):
        self.level, self.rows = level, rows

    def fit(self, X, y=None):
        return self

    def transform(self, Z):
        Z = np.array(Z, dtype=np.float64)
        Z[Z.max(axis=1) > self.level] = np.nan
        if self.rows is not None:
            Z = Z[: self.rows]
        return Z

    def __sklearn_is_fitted__(self):
        return True


def _nan_after_fit_stages():
    """Finite on the training rows, NaN on rows with a large first value (predict time)."""
    return [_Explode(level=1e6), STEPS[0], STEPS[1], STEPS[2]]


def ecmc(stages, **kw):
    """An estimator on custom stages (no cost rule): every stage costs 1 FLOP."""
    return ecm(stages=stages, stage_costs=[1.0] * len(stages), **kw)


def _first_row_only(Z):
    return Z[:1]


def _nan_scoring(y_true, y_pred):
    return float("nan")


# ----------------------------------------------------------------------------- the table
# (case id, call, exception type, regex the message must match)
CASES = [
    # -- fit input
    ("fit y None", lambda: ecm().fit(X, None), ValueError, "requires y"),
    ("fit one class", lambda: ecm().fit(X, np.zeros(len(X))), ValueError, "at least 2 classes"),
    ("fit X NaN", lambda: ecm().fit(np.where(X == 0, np.nan, X), Y), ValueError, "NaN"),
    ("fit X inf", lambda: ecm().fit(np.where(X == 0, np.inf, X), Y), ValueError,
     "infinity|inf"),
    ("fit X 1-D", lambda: ecm().fit(X[:, 0], Y), ValueError, "2D array"),
    ("fit X 3-D", lambda: ecm().fit(X[:, :, None], Y), ValueError, "dim 3|3D|3-D"),
    ("fit y length", lambda: ecm().fit(X, Y[:-1]), ValueError, "inconsistent numbers of samples"),
    ("fit y continuous", lambda: ecm().fit(X, Y + 0.5), ValueError, "Unknown label type"),
    ("fit y 2-D", lambda: ecm().fit(X, np.c_[Y, Y]), ValueError, "y should be a 1d array|shape"),
    ("fit one sample", lambda: ecm().fit(X[:1], Y[:1]), ValueError, "minimum of 2|at least 2"),
    ("fit empty", lambda: ecm().fit(X[:0], Y[:0]), ValueError, "0 sample"),
    ("fit object X", lambda: ecm().fit(np.array([["a"] * 3] * 4), [0, 1, 0, 1]), ValueError,
     "could not convert|string"),
    ("negative weight", lambda: ecm().fit(X, Y, sample_weight=np.r_[-1.0, np.ones(len(Y) - 1)]),
     ValueError, "[Nn]egative"),
    ("weight length", lambda: ecm().fit(X, Y, sample_weight=np.ones(3)), ValueError,
     r"sample_weight.shape == \(3,\)|sample_weight"),
    ("weight NaN", lambda: ecm().fit(X, Y, sample_weight=np.r_[np.nan, np.ones(len(Y) - 1)]),
     ValueError, "NaN"),
    # -- parameters
    ("flops_target 0", lambda: ecm(flops_target=0).fit(X, Y), ValueError, "flops_target"),
    ("flops_target 2", lambda: ecm(flops_target=2.0).fit(X, Y), ValueError, "flops_target"),
    ("flops_target -1", lambda: ecm(flops_target=-1).fit(X, Y), ValueError, "flops_target"),
    ("flops_target str", lambda: ecm(flops_target="half").fit(X, Y), ValueError,
     "flops_target"),
    ("threshold_search", lambda: ecm(threshold_search="grid").fit(X, Y), ValueError,
     "threshold_search"),
    ("metric", lambda: ecm(metric="cosine").fit(X, Y), ValueError, "metric"),
    ("shrinkage 2", lambda: ecm(metric="mahalanobis", shrinkage=2.0).fit(X, Y), ValueError,
     "shrinkage"),
    ("shrinkage str", lambda: ecm(metric="mahalanobis", shrinkage="lw").fit(X, Y), ValueError,
     "shrinkage"),
    ("max_covariance_bytes 0", lambda: ecm(max_covariance_bytes=0).fit(X, Y), ValueError,
     "max_covariance_bytes"),
    ("covariance too large", lambda: ecm(metric="mahalanobis", max_covariance_bytes=10).fit(X, Y),
     ValueError, "covariance|max_covariance_bytes"),
    ("calibration 1.5", lambda: ecm(calibration=1.5).fit(X, Y), ValueError, "calibration"),
    ("calibration 0", lambda: ecm(calibration=0).fit(X, Y), ValueError, "calibration"),
    ("calibration too many", lambda: ecm(calibration=5).fit(X, Y), ValueError,
     "calibration=5 cannot hold out"),
    ("sweep_resolution 1", lambda: ecm(sweep_resolution=1).fit(X, Y), ValueError,
     "sweep_resolution"),
    ("n_targets 1 (old name)", lambda: EarlyExitClassMeans(n_targets=1).fit(X, Y), ValueError,
     "n_targets"),
    ("batch_size 0", lambda: ecm(batch_size=0).fit(X, Y), ValueError, "batch_size"),
    ("cache_size -1", lambda: ecm(cache_size=-1).fit(X, Y), ValueError, "cache_size"),
    ("normalize str", lambda: ecm(normalize="yes").fit(X, Y), ValueError, "normalize"),
    ("final_classifier str", lambda: ecm(final_classifier="yes").fit(X, Y), ValueError,
     "final_classifier"),
    ("final_classifier True no clf", lambda: ecm(stages=STEPS[:2], final_classifier=True)
     .fit(X, Y), ValueError, "final_classifier=True but the last stage is not a classifier"),
    ("pooling on sklearn", lambda: ecm(stages=STEPS, pooling="avg4").fit(X, Y), ValueError,
     "pooling='avg4' applies to torch stages"),
    ("thresholds shape", lambda: ecm(stages=STEPS, thresholds=[0.5]).fit(X, Y), ValueError,
     r"thresholds has shape \(1,\); expected \(2,\)"),
    ("thresholds range", lambda: ecm(stages=STEPS, thresholds=[0.5, 1.5]).fit(X, Y), ValueError,
     r"thresholds must lie in \[0, 1\]"),
    ("thresholds NaN", lambda: ecm(stages=STEPS, thresholds=[0.5, np.nan]).fit(X, Y), ValueError,
     "thresholds"),
    ("stage_costs shape", lambda: ecm(stages=STEPS, stage_costs=[1, 2]).fit(X, Y), ValueError,
     r"stage_costs has shape \(2,\); expected \(3,\)"),
    ("stage_costs NaN", lambda: ecm(stages=STEPS, stage_costs=[1, np.nan, 3]).fit(X, Y),
     ValueError, "stage_costs must be finite and >= 0 .*got nan for stage 1"),
    ("stage_costs dict NaN", lambda: ecm(stages=STEPS, stage_costs={1: np.nan}).fit(X, Y),
     ValueError, r"stage_costs\[1\] = nan"),
    ("stage_costs dict negative", lambda: ecm(stages=STEPS, stage_costs={0: -1}).fit(X, Y),
     ValueError, r"stage_costs\[0\] = -1.0"),
    ("stage_costs negative", lambda: ecm(stages=STEPS, stage_costs=[1, -2, 3]).fit(X, Y),
     ValueError, "stage_costs must be finite and >= 0 .*got -2.0 for stage 1"),
    ("stage_costs inf", lambda: ecm(stages=STEPS, stage_costs=[1, np.inf, 3]).fit(X, Y),
     ValueError, "stage_costs must be finite and >= 0 .*got inf for stage 1"),
    ("stage_costs key", lambda: ecm(stages=STEPS, stage_costs={7: 1.0}).fit(X, Y), ValueError,
     "stage_costs key 7 is not a stage index"),
    ("stage_costs all zero", lambda: ecm(stages=STEPS, stage_costs=[0, 0, 0]).fit(X, Y),
     ValueError, "cost 0.0 FLOPs in total|stage_costs"),
    ("random_state str", lambda: ecm(random_state="x").fit(X, Y), ValueError, "random_state"),
    ("verbose str", lambda: ecm(verbose="loud").fit(X, Y), ValueError, "verbose"),
    # -- stages
    ("stages empty", lambda: ecm(stages=[]).fit(X, Y), ValueError, "stages is empty"),
    ("stages not transformer", lambda: ecm(stages=[LogisticRegression(), PCA(2)]).fit(X, Y),
     TypeError, "has no transform"),
    ("stages last object", lambda: ecm(stages=[PCA(2), object()]).fit(X, Y), TypeError,
     r"Stage 1 \('1:object', object\), the last stage, is neither a transformer nor a "
     r"classifier. A stage must be a scikit-learn transformer \(fit and transform"),
    ("stages first object", lambda: ecm(stages=[object(), PCA(2)]).fit(X, Y), TypeError,
     r"Stage 0 \('0:object', object\) has no transform\(\).*A stage must be"),
    ("clf classes mismatch", lambda: ecm(stages=STEPS).fit(X, Y + 100), ValueError,
     "predicts classes"),
    ("stage drops rows", lambda: ecmc([FunctionTransformer(_first_row_only).fit(X)])
     .fit(X, Y), ValueError,
     r"(?i)stage 0 \(0:functiontransformer\) returned 1 rows for a batch of 400"),
    ("stage drops rows mid", lambda: ecmc([STEPS[0], _Explode(rows=5), STEPS[1]])
     .fit(X, Y), ValueError, r"(?i)stage 1 \(1:_explode\) returned 5 rows for a batch of 400"),
    ("stage NaN at fit", lambda: ecmc([STEPS[0], _Explode(level=0.5)]).fit(X, Y),
     ValueError, r"stage vector of stage 1 \(1:_Explode\) contains NaN"),
    ("stage NaN before unfitted step",
     lambda: ecm(stages=[_Explode(level=0.5), PCA(2), LogisticRegression()]).fit(X, Y),
     ValueError, r"output of stage 0 \(0:_Explode\) contains NaN or infinity on finite input, "
     r"and stage 1 \(1:PCA\) would be fitted on it"),
    ("stage NaN mid before unfitted step",
     lambda: ecm(stages=[STEPS[0], _Explode(level=0.5), PCA(2), LogisticRegression()])
     .fit(X, Y), ValueError, r"output of stage 1 \(1:_Explode\) contains NaN.*stage 2 "
     r"\(2:PCA\) would be fitted on it"),
    # -- predict-time input
    ("predict unfitted", lambda: ecm().predict(X), NotFittedError, "not fitted"),
    ("route unfitted", lambda: ecm().route(X), NotFittedError, "not fitted"),
    ("set_operating_point unfitted", lambda: ecm().set_operating_point(0.5), NotFittedError,
     "not fitted"),
    ("predict width", lambda: FITTED.predict(X[:, :10]), ValueError, "10 features"),
    ("predict NaN", lambda: FITTED.predict(np.where(X == 0, np.nan, X)), ValueError, "NaN"),
    ("predict_proba inf", lambda: FITTED.predict_proba(np.where(X == 0, np.inf, X)), ValueError,
     "infinity|inf"),
    ("predict 1-D", lambda: FITTED.predict(X[0]), ValueError, "2D array"),
    ("staged_predict width", lambda: list(FITTED.staged_predict(X[:, :3])), ValueError,
     "3 features"),
    ("exit_table width", lambda: FITTED.exit_table(X[:, :3], Y), ValueError, "3 features"),
    ("stage NaN at predict", lambda: ecmc(_nan_after_fit_stages(), flops_target=0.9)
     .fit(X, Y).predict(X * 1e7), ValueError, r"stage 0 \(0:_Explode\) contains NaN"),
    ("stage NaN at predict_proba", lambda: ecmc(_nan_after_fit_stages())
     .fit(X, Y).predict_proba(X * 1e7), ValueError, r"stage 0 \(0:_Explode\) contains NaN"),
    ("stage NaN staged", lambda: list(ecmc(_nan_after_fit_stages()).fit(X, Y)
                                      .staged_predict(X * 1e7)), ValueError,
     r"stage 0 \(0:_Explode\) contains NaN"),
    # -- operating point
    ("sop flops 2", lambda: clone(FITTED).fit(X, Y).set_operating_point(flops_target=2.0),
     ValueError, "flops_target"),
    ("sop flops 0", lambda: FITTED.__sklearn_clone__().fit(X, Y).set_operating_point(0.0),
     ValueError, "flops_target"),
    ("sop thresholds shape", lambda: fitted().set_operating_point(thresholds=[0.1]), ValueError,
     r"thresholds has shape \(1,\)"),
    ("sop thresholds range", lambda: fitted().set_operating_point(thresholds=[0.1, -1]),
     ValueError, r"thresholds must lie in \[0, 1\]"),
    # -- search
    ("search scoring NaN", lambda: FlopBudgetSearchCV(ecm(stages=STEPS), flops_targets=5, cv=2,
                                                      scoring=_nan_scoring).fit(X, Y),
     ValueError, r"scoring='_nan_scoring' returned nan"),
    ("search scoring name", lambda: FlopBudgetSearchCV(ecm(stages=STEPS), flops_targets=5,
                                                       scoring="not_a_scorer").fit(X, Y),
     ValueError, "not a known scorer name"),
    ("search targets 0", lambda: FlopBudgetSearchCV(ecm(stages=STEPS), flops_targets=[0.0])
     .fit(X, Y), ValueError, "flops_targets|targets"),
    ("search cv 1", lambda: FlopBudgetSearchCV(ecm(stages=STEPS), flops_targets=5, cv=1)
     .fit(X, Y), ValueError, "cv|n_splits"),
    ("search y None", lambda: FlopBudgetSearchCV(ecm(stages=STEPS), flops_targets=5)
     .fit(X, None), ValueError, "needs the labels y"),
]



# -- every parameter of every estimator: one invalid value each, named in the message
def _ic(**kw):
    from sklearn_e2cm import InternalClassifierEarlyExit

    return InternalClassifierEarlyExit(STEPS, **{"epochs": 1, "sweep_resolution": 10,
                                                 "random_state": 0, **kw})


def _dec(**kw):
    from sklearn_e2cm import DEC

    return DEC(**{"n_clusters": 3, "hidden": (8,), "embedding_dim": 2, "pretrain_epochs": 1,
                  "max_iter": 1, "random_state": 0, **kw})


def _dec_ee(**kw):
    from sklearn_e2cm import DECEarlyExit

    return DECEarlyExit(**{"n_clusters": 3, "hidden": (8, 8, 8), "embedding_dim": 2,
                           "pretrain_epochs": 1, "max_iter": 1, "random_state": 0, **kw})


def _search(**kw):
    kw.setdefault("flops_targets", 5)
    return FlopBudgetSearchCV(ecm(stages=STEPS), **kw)


XS = X[:60] / 16.0
PARAM_CASES = [
    # (estimator factory, parameter, invalid value)
    (_ic, "method", "deep"), (_ic, "criterion", "margin"), (_ic, "epochs", 0),
    (_ic, "learning_rate", 0.0), (_ic, "learning_rate", -1.0), (_ic, "class_means", "yes"),
    (_ic, "combine", "xor"), (_ic, "metric", "cosine"), (_ic, "flops_target", 1.5),
    (_ic, "threshold_search", "grid"), (_ic, "sweep_resolution", 1), (_ic, "n_targets", 1),
    (_ic, "calibration", 1.0),
    (_ic, "final_classifier", "maybe"), (_ic, "batch_size", 0), (_ic, "random_state", "x"),
    (_ic, "verbose", "loud"),
    (_dec, "n_clusters", 0), (_dec, "hidden", 5), (_dec, "embedding_dim", 0),
    (_dec, "pretrain_epochs", -1), (_dec, "pretrain_lr", 0.0), (_dec, "optimizer", "rmsprop"),
    (_dec, "noise", "salt"), (_dec, "noise_level", -0.1), (_dec, "self_train_lr", 0.0),
    (_dec, "max_iter", -1), (_dec, "update_interval", 0), (_dec, "tol", 2.0),
    (_dec, "batch_size", 0), (_dec, "n_init", 0), (_dec, "random_state", "x"),
    (_dec_ee, "exits", 3), (_dec_ee, "flops_target", 0.0), (_dec_ee, "threshold_search", "x"),
    (_dec_ee, "sweep_resolution", 0), (_dec_ee, "n_targets", 0), (_dec_ee, "normalize", "no"), (_dec_ee, "n_clusters", -2),
    (_search, "flops_targets", 0), (_search, "cv", "loo"), (_search, "budget", -0.5),
    (_search, "method", "random"), (_search, "refit", "yes"), (_search, "n_jobs", 1.5),
    (_search, "return_train_score", "yes"), (_search, "share_stage_outputs", "always"),
    (_search, "random_state", "x"),
]


def _fit_with(factory, param, value):
    est = factory(**{param: value})
    from sklearn_e2cm import DEC, DECEarlyExit

    if isinstance(est, (DEC, DECEarlyExit)):
        return est.fit(XS)
    return est.fit(X, Y)


CASES += [(f"{factory.__name__.strip('_')} {param}={value!r}",
           lambda f=factory, p=param, v=value: _fit_with(f, p, v), ValueError,
           rf"\b{param}\b")
          for factory, param, value in PARAM_CASES]

# -- other estimators' data, methods and helpers
CASES += [
    ("ic X NaN", lambda: _ic().fit(np.where(X == 0, np.nan, X), Y), ValueError, "NaN"),
    ("ic y None", lambda: _ic().fit(X, None), ValueError, "requires y"),
    ("ic one class", lambda: _ic().fit(X, np.zeros(len(X))), ValueError, "at least 2 classes"),
    ("ic exit_at out of range", lambda: _ic(exit_at=[5]).fit(X, Y), ValueError,
     "exit_at contains stage 5"),
    ("ic exit_at fraction", lambda: _ic(exit_at=[1.5]).fit(X, Y), ValueError,
     r"exit_at fractions must lie in \(0, 1\)"),
    ("ic exit_at str", lambda: _ic(exit_at=["a"]).fit(X, Y), ValueError, "exit_at"),
    ("ic bwds criterion", lambda: _ic(method="bwds", criterion="entropy").fit(X, Y), ValueError,
     "criterion='entropy' applies to 'sdn' and 'branchynet'"),
    ("ic negative weight", lambda: _ic().fit(X, Y, sample_weight=-np.ones(len(Y))), ValueError,
     "[Nn]egative"),
    ("ic predict unfitted", lambda: _ic().predict(X), NotFittedError, "not fitted"),
    ("ic stage drops rows", lambda: _ic_on([_Explode(rows=3)]).fit(X, Y), ValueError,
     "returned 3 rows for a batch"),
    ("dec X NaN", lambda: _dec().fit(np.where(XS == 0, np.nan, XS)), ValueError, "NaN"),
    ("dec X 1-D", lambda: _dec().fit(XS[:, 0]), ValueError, "2D array"),
    ("dec predict unfitted", lambda: _dec().predict(XS), NotFittedError, "not fitted"),
    ("dec_ee predict unfitted", lambda: _dec_ee().predict(XS), NotFittedError, "not fitted"),
    ("dec_ee X NaN", lambda: _dec_ee().fit(np.where(XS == 0, np.nan, XS)), ValueError, "NaN"),
    ("search estimator", lambda: FlopBudgetSearchCV(LogisticRegression()).fit(X, Y), ValueError,
     "estimator"),
    ("search predict unfitted", lambda: _search().predict(X), NotFittedError, "not fitted"),
    ("search scoring proba", lambda: _search(scoring="neg_log_loss").fit(X, Y), ValueError,
     "scoring='neg_log_loss' needs"),
    ("search targets > 1", lambda: _search(flops_targets=[0.5, 1.5]).fit(X, Y), ValueError,
     "flops_targets|targets"),
    ("clustering_accuracy lengths", lambda: _clustering_accuracy([0, 1], [0]), ValueError,
     "length|samples|shape"),
    ("train_classifier epochs", lambda: _train(epochs=0), ValueError, "epochs"),
    ("train_classifier batch_size", lambda: _train(batch_size=0), ValueError, "batch_size"),
    ("train_classifier y length", lambda: _train(y=np.zeros(3, int)), ValueError,
     "3|samples|length"),
    ("resnet depth", lambda: _resnet(depth=7), ValueError, "depth"),
    ("resnet width", lambda: _resnet(width=0), ValueError, "width"),
    ("resnet n_classes", lambda: _resnet(n_classes=0), ValueError, "n_classes"),
    ("dataset subset", lambda: _dataset(subset="validation"), ValueError, "subset"),
]


def _ic_on(stages):
    from sklearn_e2cm import InternalClassifierEarlyExit

    return InternalClassifierEarlyExit(stages, epochs=1, sweep_resolution=10, random_state=0,
                                       stage_costs=[1.0] * len(stages), exit_at=[])


def _clustering_accuracy(a, b):
    from sklearn_e2cm.metrics import clustering_accuracy

    return clustering_accuracy(a, b)


def _train(epochs=1, batch_size=32, y=None):
    from sklearn_e2cm.models import resnet_small, train_classifier

    net = resnet_small(depth=8, width=4, in_channels=1, n_classes=10, input_size=8)
    Xi = (X[:40] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    return train_classifier(net, Xi, Y[:40] if y is None else y, epochs=epochs,
                            batch_size=batch_size)


def _resnet(**kw):
    from sklearn_e2cm.models import resnet_small

    return resnet_small(**{"depth": 8, "width": 4, "input_size": 8, **kw})


def _dataset(**kw):
    import tempfile

    from sklearn_e2cm.datasets import load_fashion_mnist

    return load_fashion_mnist(data_home=tempfile.mkdtemp(), **kw)


_TORCH_PREFIXES = ("ic ", "dec ", "dec_ee ", "train_classifier ", "resnet ")


def _table(cases):
    """Parametrize rows; IC, DEC and the model helpers need torch."""
    return [pytest.param(*c, id=c[0], marks=[needs_torch] if c[0].startswith(_TORCH_PREFIXES)
                         else []) for c in cases]


@pytest.mark.parametrize("case, call, exc, match", _table(CASES))
def test_bad_input_raises_clearly(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_table_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------- transactions
def _state(est):
    return dict(vars(est))


def _assert_unchanged(est, before):
    after = vars(est)
    assert after.keys() == before.keys()
    for key, value in before.items():
        now = after[key]
        if isinstance(value, (dict, list)):  # restored as a copy of the container
            assert type(now) is type(value) and len(now) == len(value), key
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                assert now[k] is v, (key, k)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            assert now == value, key
        else:
            assert now is value, key  # the very same object


def _no_prep(est):
    return None


@pytest.mark.parametrize("case, prepare, fail", [
    # refits that fail after the input was validated (classes_, n_features_in_ recomputed)
    ("refit new features and classes, NaN stage",
     lambda e: e.set_params(stages=[_Explode(level=0.5)], stage_costs=[1.0]),
     lambda e: e.fit(np.c_[X, X], Y + 100)),
    ("refit NaN stage late",
     lambda e: e.set_params(stages=[STEPS[0], _Explode(level=0.5)], stage_costs=[1.0, 1.0]),
     lambda e: e.fit(X, Y)),
    ("refit dropped rows", lambda e: e.set_params(stages=[_Explode(rows=3)], stage_costs=[1.0]),
     lambda e: e.fit(X, Y)),
    ("refit unknown cost", lambda e: e.set_params(stages=[_Explode()], stage_costs=None),
     lambda e: e.fit(X, Y)),
    ("refit covariance too large", lambda e: e.set_params(metric="mahalanobis",
                                                         max_covariance_bytes=10),
     lambda e: e.fit(X, Y)),
    ("sop flops 2", _no_prep, lambda e: e.set_operating_point(flops_target=2.0)),
    ("sop flops 0", _no_prep, lambda e: e.set_operating_point(flops_target=0.0)),
    ("sop thresholds shape", _no_prep, lambda e: e.set_operating_point(thresholds=[0.3])),
    ("sop thresholds range", _no_prep, lambda e: e.set_operating_point(thresholds=[0.3, 7.0])),
    ("partial_fit unknown label", _no_prep, lambda e: e.partial_fit(X[:20], Y[:20] + 50)),
])
def test_failed_calls_leave_estimator_unchanged(case, prepare, fail):
    est = fitted()
    pred = est.predict(X)
    prepare(est)  # the user's own set_params, if any
    before = _state(est)
    with pytest.raises(Exception):  # noqa: B017 - what is checked is the state afterwards
        fail(est)
    _assert_unchanged(est, before)
    np.testing.assert_array_equal(est.predict(X), pred)
    if prepare is _no_prep:
        clone(est).fit(X, Y)  # the parameters are still valid


def test_failed_set_operating_point_keeps_params():
    est = fitted()
    with pytest.raises(ValueError, match="flops_target"):
        est.set_operating_point(flops_target=2.0)
    assert est.get_params()["flops_target"] == 0.8
    assert clone(est).fit(X, Y).flops_target == 0.8


def test_failed_refit_keeps_classes_and_features():
    est = fitted()
    classes, n_features = est.classes_, est.n_features_in_
    bad = _Explode(level=0.5)
    est.set_params(stages=[bad], stage_costs=[1.0])
    with pytest.raises(ValueError, match="contains NaN"):
        est.fit(np.c_[X, X], Y + 100)
    assert est.classes_ is classes and est.n_features_in_ == n_features


@pytest.mark.parametrize("case, make, prepare, fail", [
    ("dec refit too many clusters", lambda: _dec().fit(XS),
     lambda e: e.set_params(n_clusters=100), lambda e: e.fit(np.c_[XS, XS])),
    ("dec_ee refit too many clusters", lambda: _dec_ee().fit(XS),
     lambda e: e.set_params(n_clusters=100), lambda e: e.fit(np.c_[XS, XS])),
    ("dec_ee set_operating_point", lambda: _dec_ee().fit(XS), _no_prep,
     lambda e: e.set_operating_point(flops_target=3.0)),
    ("ic refit dropped rows", lambda: _ic().fit(X, Y),
     lambda e: e.set_params(stages=[_Explode(rows=3)], stage_costs=[1.0], exit_at=[]),
     lambda e: e.fit(np.c_[X, X], Y + 1)),
    ("ic set_operating_point", lambda: _ic().fit(X, Y), _no_prep,
     lambda e: e.set_operating_point(thresholds=[2.0] * 2)),
])
@needs_torch
def test_failed_calls_leave_other_estimators_unchanged(case, make, prepare, fail):
    est = make()
    prepare(est)
    before = _state(est)
    with pytest.raises(ValueError):
        fail(est)
    _assert_unchanged(est, before)


def test_failed_search_fit_leaves_it_unchanged():
    search = FlopBudgetSearchCV(ecm(stages=STEPS), flops_targets=5, cv=2).fit(X, Y)
    search.set_params(scoring=_nan_scoring)
    before = _state(search)
    with pytest.raises(ValueError, match="returned nan"):
        search.fit(X, Y)
    _assert_unchanged(search, before)


# ------------------------------------------------------------------------- torch stages
if nn is not None:
    class _Merge(nn.Module):
        """Merges the rows of a batch of more than one row (the 1-row probe passes)."""

        def forward(self, x):
            return x.reshape(1, -1) if x.shape[0] > 1 else x.reshape(x.shape[0], -1)


    class _NaNAbove(nn.Module):
        """NaN where the input exceeds ``level`` (finite on the training images)."""

        def __init__(self, level):
            super().__init__()
            self.level = level

        def forward(self, x):
            return torch.where(x > self.level, torch.full_like(x, float("nan")), x)


def _sparse_images():
    import scipy.sparse as sp

    return sp.csr_matrix(_X[:200])


def _loader(with_labels=True):
    from torch.utils.data import DataLoader, TensorDataset

    Xi, yi = _images()
    ds = (TensorDataset(torch.from_numpy(Xi), torch.from_numpy(yi)) if with_labels
          else TensorDataset(torch.from_numpy(Xi)))
    return DataLoader(ds, batch_size=50)


if nn is not None:
    class _Pair(nn.Module):
        def forward(self, x):
            return x, x


def _images():
    return (_X[:200] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32), _Y[:200]


def _torch_ecm(stages, **kw):
    return ecm(stages=stages, batch_size=64, final_classifier=False, **kw)


def _conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())


TORCH_CASES = [
    ("torch stage merges rows",
     lambda: _torch_ecm(nn.Sequential(nn.Sequential(_conv(), _Merge()), nn.Flatten()))
     .fit(*_images()), ValueError, r"[Ss]tage 0 \(0\) returned 1 rows for a batch of 64"),
    ("torch pooling drops rows",
     lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()), pooling=lambda z: z[:1])
     .fit(*_images()), ValueError,
     r"[Ss]tage 0 \(0\) \(after pooling\) gave stage vectors of 1 rows"),
    ("torch pooling too large",
     lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()), pooling=nn.MaxPool2d(16))
     .fit(*_images()), ValueError, r"pooling=MaxPool2d\(.*\) fails on the output of stage 0 of "
     r"per-sample shape \(4, 8, 8\)"),
    ("torch empty X", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()))
     .fit(_images()[0][:0], _images()[1][:0]), ValueError, "at least one sample"),
    ("torch sparse X", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()))
     .fit(_sparse_images(), _images()[1]), ValueError,
     "sparse csr_matrix; torch stages take dense"),
    ("torch predict shape", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()))
     .fit(*_images()).predict(_images()[0][:, :, :4]), ValueError,
     r"samples of shape \(1, 4, 8\), but .* fitted on samples of shape \(1, 8, 8\)"),
    ("torch stage_costs NaN", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()),
                                                 stage_costs=[1, np.nan]).fit(*_images()),
     ValueError, "got nan for stage 1"),
    ("torch X overflow", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()))
     .fit(_images()[0] * 1e30, _images()[1]), ValueError, "stage 0 .*(NaN|infinite|overflow)"),
    ("torch loader without labels", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()))
     .fit(_loader(with_labels=False)), ValueError, r"must carry labels: \(x, y\)"),
    ("torch loader and y", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()))
     .fit(_loader(), _images()[1]), ValueError, "y must be None when X is a DataLoader"),
    ("torch loader (y, x) batches", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()))
     .fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
         torch.from_numpy(_images()[1]), torch.from_numpy(_images()[0])), batch_size=50)),
     ValueError, r"batches must be \(inputs, labels\) pairs .*element 0: shape \(50,\), "
     r"dtype torch.int64; element 1: shape \(50, 1, 8, 8\), dtype torch.float32\); the "
     r"labels seem to come first"),
    ("torch predict loader (y, x) batches",
     lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten())).fit(*_images())
     .predict(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
         torch.from_numpy(_images()[1]), torch.from_numpy(_images()[0])), batch_size=50)),
     ValueError, r"batches must be \(inputs, labels\) pairs .*labels seem to come first"),
    ("torch pooling bad string", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()),
                                                    pooling="bogus").fit(*_images()),
     ValueError, "Invalid pooling spec 'bogus'"),
    ("torch device bogus", lambda: _torch_ecm(nn.Sequential(_conv(), nn.Flatten()),
                                              device="tpu").fit(*_images()),
     ValueError, "device='tpu' is not a torch device"),
    ("torch mixed stages", lambda: ecm(stages=[_conv(), PCA(2)]).fit(*_images()), TypeError,
     "mixes torch modules and other objects"),
    ("torch stage returns tuple", lambda: _torch_ecm(nn.Sequential(_Pair(), nn.Flatten()))
     .fit(*_images()), ValueError, "returned tuple; every stage must return a single tensor"),
    ("torch final_classifier True", lambda: _torch_ecm(nn.Sequential(_conv()))
     .set_params(final_classifier=True).fit(*_images()), ValueError,
     "final_classifier=True but the last stage"),
    ("torch NaN stage at fit",
     lambda: _torch_ecm(nn.Sequential(_conv(), _NaNAbove(0.5), nn.Flatten())).fit(*_images()),
     ValueError, r"stage vector of stage 1 \(1\) contains NaN"),
    ("torch NaN stage at predict",
     lambda: _torch_ecm(nn.Sequential(_conv(), _NaNAbove(1e3), nn.Flatten()))
     .fit(*_images()).predict(_images()[0] * 1e6), ValueError,
     r"stage 1 \(1\) contains NaN"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@needs_torch
@pytest.mark.parametrize("case, call, exc, match", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_bad_torch_input_raises_clearly(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()
