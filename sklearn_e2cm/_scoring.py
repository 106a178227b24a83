"""Scoring of operating points: resolution of ``scoring=``, metric scores, target checks.

An operating point (a threshold vector, or a time-sharing mixture of them) is
scored either per sample (accuracy against labels, agreement with the base
model's prediction) or by any metric of the routed predictions, which are
rebuilt from an exit table's cached per-stage predictions.

This module imports nothing of the package (it is the bottom layer); the exit
tables it reads are passed in.
"""

import numbers

import numpy as np
from sklearn.base import is_classifier
from sklearn.metrics import get_scorer

__all__ = ["Scoring", "resolve_scoring", "metric_scores", "metric_of", "check_targets"]


class Scoring:
    """How a routed operating point is scored.

    ``kind`` is ``"accuracy"`` (per-sample correctness against ``y``),
    ``"agreement"`` (per-sample agreement with the base model's prediction,
    no labels needed) or ``"metric"`` (any ``metric(y_true, y_pred)``: the
    search optimises the per-sample surrogate -- accuracy for classifiers
    given ``y``, agreement otherwise -- and every distinct threshold vector
    is then rescored with the metric on rebuilt predictions).
    """

    def __init__(self, kind, name, func=None, sign=1.0, kwargs=None):
        self.kind = kind
        self.name = name
        self.func = func
        self.sign = sign
        self.kwargs = kwargs or {}

    def metric(self, y_true, y_pred, sample_weight=None):
        """The metric of predictions ``y_pred`` (greater is better).

        Parameters
        ----------
        y_true, y_pred : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        kwargs = dict(self.kwargs)
        if sample_weight is not None:
            kwargs["sample_weight"] = sample_weight
        value = self.sign * float(self.func(y_true, y_pred, **kwargs))
        if not np.isfinite(value):
            raise ValueError(
                f"scoring={self.name!r} returned {value} on {len(y_pred)} predictions; a score "
                "must be a finite number (greater is better).")
        return value

    def needs_y(self):
        """Whether scoring needs the true labels (everything but agreement).

        Returns
        -------
        needs_y : bool
        """
        return self.kind != "agreement"


def resolve_scoring(scoring, estimator):
    """A :class:`Scoring` from a ``scoring=`` parameter.

    Parameters
    ----------
    scoring : None, str or callable
        ``"accuracy"``, ``"agreement"``, a scikit-learn scorer name of
        predicted labels, a scorer made with ``make_scorer``, or a callable
        ``metric(y_true, y_pred)``. ``None``: accuracy for classifiers,
        agreement otherwise.
    estimator : estimator
        The estimator scored (decides the default).

    Returns
    -------
    scoring : Scoring
    """
    if scoring is None:
        scoring = "accuracy" if is_classifier(estimator) else "agreement"
    if scoring in ("accuracy", "agreement"):
        return Scoring(scoring, scoring)
    if isinstance(scoring, str):
        try:
            scorer = get_scorer(scoring)
        except ValueError as exc:
            raise ValueError(
                f"scoring={scoring!r} is not a known scorer name. Use 'accuracy', 'agreement', a "
                "scikit-learn scorer name that scores predictions (e.g. 'balanced_accuracy', "
                "'f1_macro') or a callable metric(y_true, y_pred)."
            ) from exc
        return _unwrap_scorer(scorer, scoring)
    if hasattr(scoring, "_score_func"):  # a scorer made with make_scorer
        return _unwrap_scorer(scoring, repr(scoring))
    name = getattr(scoring, "__name__", type(scoring).__name__)
    return Scoring("metric", name, scoring)


def _unwrap_scorer(scorer, name):
    response = getattr(scorer, "_response_method", "predict")
    if response != "predict" and response != ("predict",):
        raise ValueError(
            f"scoring={name!r} needs {response!r} outputs; FlopBudgetSearchCV scores routed "
            "predictions only. Use a metric of the predicted labels."
        )
    return Scoring("metric", name, scorer._score_func, getattr(scorer, "_sign", 1.0),
                    getattr(scorer, "_kwargs", {}))


def metric_scores(table, T, y, scoring, sample_weight=None):
    """Metric of the rebuilt routed predictions of every threshold vector in ``T``.

    Parameters
    ----------
    table : ExitTable
        With per-stage predictions (``predict_indices``).
    T : ndarray of shape (P, n_stages - 1)
        Threshold vectors; duplicates are scored once.
    y : array-like of shape (n_samples,)
    scoring : Scoring
    sample_weight : array-like of shape (n_samples,), default=None

    Returns
    -------
    scores : ndarray of shape (P,)
    """
    T = np.atleast_2d(T)
    uniq, inverse = np.unique(T, axis=0, return_inverse=True)
    vals = np.array([metric_of(table, table.predict_indices(t), y, scoring, sample_weight)
                     for t in uniq])
    return vals[inverse.reshape(-1)]


def metric_of(table, idx, y, scoring, sample_weight=None):
    """Metric of the class indices ``idx`` (mapped to ``table.classes``) against ``y``.

    Parameters
    ----------
    table : ExitTable
    idx : ndarray of int, shape (n_samples,)
    y : array-like of shape (n_samples,)
    scoring : Scoring
    sample_weight : array-like of shape (n_samples,), default=None

    Returns
    -------
    score : float
    """
    y_pred = table.classes[idx] if table.classes is not None else idx
    return scoring.metric(y, y_pred, sample_weight)


def check_targets(flops_targets):
    """FLOP targets from a grid size or an array of targets in (0, 1].

    Parameters
    ----------
    flops_targets : int or array-like of float
        An int ``n``: ``1/n, 2/n, ..., 1``. An array: the targets (sorted,
        duplicates removed).

    Returns
    -------
    targets : ndarray of float64

    Examples
    --------
    >>> check_targets(4).tolist()
    [0.25, 0.5, 0.75, 1.0]
    """
    if isinstance(flops_targets, numbers.Integral) and not isinstance(flops_targets, bool):
        return np.linspace(0.0, 1.0, int(flops_targets) + 1)[1:]
    t = np.asarray(flops_targets, dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise ValueError("flops_targets is empty; pass a grid size or an array of targets.")
    bad = t[~((t > 0) & (t <= 1))]
    if bad.size:
        raise ValueError(
            f"flops_targets must lie in (0, 1] (normalised FLOPs, the base model costs 1); "
            f"got {bad[:5].tolist()}."
        )
    return np.unique(t)
