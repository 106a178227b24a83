"""Input handling shared by the early-exit estimators' fits and predictions.

Validation of arrays, tensors and DataLoaders, the label index built while
streaming, the calibration (tuning) hold-out, per-stage cost resolution and
the checks on the base model's classes. Every estimator calls these
functions; none of them reaches into another estimator.
"""

import numbers
import sys

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, validate_data

from .._backend import all_finite, warn

__all__ = [
    "LabelIndex",
    "validate_fit_input",
    "validate_predict_input",
    "check_torch_input",
    "calibration_split",
    "calibration_rows",
    "take_rows",
    "n_rows_of",
    "resolve_stage_costs",
    "check_n_classes",
    "fit_adapter",
    "copy_input_attributes",
    "warn_if_base_at_chance",
    "INPUT_ATTRIBUTES",
]

#: Input attributes a fit sets on the estimator (``n_features_in_`` and the like).
INPUT_ATTRIBUTES = ("n_features_in_", "feature_names_in_", "input_shape_")


class LabelIndex:
    """Maps raw labels to class indices; new labels may appear while streaming.

    Parameters
    ----------
    classes : array-like, default=None
        Known labels, in index order. ``None``: discovered from the batches.

    Examples
    --------
    >>> index = LabelIndex()
    >>> index(["b", "a", "b"]).tolist(), index(["c"]).tolist()
    ([1, 0, 1], [2])
    >>> index.sorted_order()[0].tolist()
    ['a', 'b', 'c']
    """

    def __init__(self, classes=None):
        self.labels = [] if classes is None else list(classes)
        self._map = {lab: i for i, lab in enumerate(self.labels)}

    def __call__(self, y):
        """Class indices of the labels ``y`` (new labels get the next indices).

        Parameters
        ----------
        y : array-like of shape (n_samples,)

        Returns
        -------
        indices : ndarray of int, shape (n_samples,)
        """
        y = np.asarray(y)
        uniq, inv = np.unique(y, return_inverse=True)
        idx = np.empty(uniq.shape[0], dtype=np.intp)
        for i, lab in enumerate(uniq.tolist()):  # loop over the distinct labels of a batch only
            if lab not in self._map:
                self._map[lab] = len(self.labels)
                self.labels.append(lab)
            idx[i] = self._map[lab]
        return idx[inv.reshape(-1)]

    def sorted_order(self):
        """The sorted labels and the permutation from discovery order to sorted order.

        Returns
        -------
        classes : ndarray of shape (n_classes,)
        order : ndarray of int, shape (n_classes,)
            ``classes == labels[order]``.
        """
        arr = np.asarray(self.labels)
        order = np.argsort(arr, kind="stable")
        return arr[order], order


def check_n_classes(classes, who="EarlyExitClassMeans"):
    """Raise when fewer than two classes are given.

    Parameters
    ----------
    classes : array-like
    who : str
        Estimator name for the message.
    """
    if len(classes) < 2:
        raise ValueError(
            f"{who} needs at least 2 classes; got 1 class: {np.asarray(classes).tolist()}."
        )


def check_torch_input(est, X, y, reset):
    """Validate the input of torch stages: an array/tensor of samples, or a DataLoader.

    Parameters
    ----------
    est : estimator
        Receives ``input_shape_`` and ``n_features_in_`` when ``reset``; checked
        against them otherwise.
    X : array-like, torch.Tensor or DataLoader of ``(x, y)`` batches
    y : array-like or None
    reset : bool
        Whether this is a fit.

    Returns
    -------
    X : ndarray of float32, torch.Tensor or DataLoader
    y : ndarray or None
    streaming : bool
        Whether ``X`` is a DataLoader.
    """
    from ..stages.torch import is_dataloader

    if is_dataloader(X):
        if y is not None:
            raise ValueError("y must be None when X is a DataLoader of (x, y) batches.")
        return X, None, True
    Xn = None
    if "torch" in sys.modules:
        import torch

        if isinstance(X, torch.Tensor):
            Xn = X
    if Xn is None:
        if hasattr(X, "tocsr") or hasattr(X, "sparse"):  # scipy sparse matrix or sparse frame
            raise ValueError(
                f"X is a sparse {type(X).__name__}; torch stages take dense input. Pass "
                "X.toarray() (or a dense tensor).")
        Xn = np.asarray(X, dtype=np.float32)
    shape = tuple(Xn.shape[1:])
    if Xn.ndim < 2 or Xn.shape[0] < 1:
        raise ValueError(
            f"Expected an array of shape (n_samples, ...) with at least one sample; got shape "
            f"{tuple(Xn.shape)}.")
    if not all_finite(Xn):
        raise ValueError("Input X contains NaN or infinity.")
    if reset:
        est.input_shape_ = shape
        est.n_features_in_ = int(np.prod(shape))
    elif shape != est.input_shape_:
        raise ValueError(
            f"X has samples of shape {shape}, but {type(est).__name__} was fitted on "
            f"samples of shape {est.input_shape_}."
        )
    if y is not None:
        y = np.asarray(y.cpu() if hasattr(y, "cpu") else y)
        if y.shape[0] != Xn.shape[0]:
            raise ValueError(f"X has {Xn.shape[0]} samples but y has {y.shape[0]}.")
    return Xn, y, False


def validate_fit_input(est, adapter, X, y, sample_weight):
    """Checked fit input; sets the estimator's input attributes.

    Parameters
    ----------
    est : estimator
    adapter : StageAdapter
        Decides between array validation (scikit-learn stages) and torch input.
    X, y, sample_weight : fit arguments

    Returns
    -------
    X, y, sample_weight : validated
    streaming : bool
        Whether ``X`` is a DataLoader (labels come with its batches).
    """
    torch_backend = adapter.backend == "torch"
    streaming = False
    if torch_backend:
        X, y, streaming = check_torch_input(est, X, y, reset=True)
    if not streaming:
        if y is None:
            raise ValueError(
                "requires y to be passed, but the target y is None (labels are needed for "
                "the class means)."
            )
        if not torch_backend:
            X, y = validate_data(est, X, y, dtype=np.float64, ensure_min_samples=2)
        check_classification_targets(y)
        check_n_classes(np.unique(y))
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                 ensure_non_negative=True)
    elif sample_weight is not None:
        raise ValueError("sample_weight is not supported with a DataLoader input.")
    return X, y, sample_weight, streaming


def validate_predict_input(est, backend, X):
    """Checked prediction input against what ``est`` was fitted on.

    Parameters
    ----------
    est : fitted estimator
    backend : {"numpy", "torch"}
        The stages' backend.
    X : array-like, torch.Tensor or DataLoader

    Returns
    -------
    X : validated input
    """
    if backend == "torch":
        return check_torch_input(est, X, None, reset=False)[0]
    return validate_data(est, X, dtype=np.float64, reset=False)


def calibration_split(y, calibration, rng, streaming):
    """Row indices ``(fit, tune)`` of a stratified tuning hold-out, or ``(None, None)``.

    Parameters
    ----------
    y : ndarray of shape (n_samples,)
    calibration : None, float in (0, 1) or int
        Fraction or count held out for tuning.
    rng : RandomState
    streaming : bool
        Whether the input is a DataLoader (no hold-out possible).

    Returns
    -------
    fit_idx, tune_idx : ndarray of int or None
    """
    if calibration is None:
        return None, None
    if streaming:
        raise ValueError(
            "calibration= needs array input to hold data out; got a DataLoader. "
            "Hold out the tuning data yourself or use calibration=None."
        )
    idx = np.arange(len(y))
    try:
        return train_test_split(
            idx, test_size=calibration, stratify=y,
            random_state=rng.randint(np.iinfo(np.int32).max),
        )
    except ValueError as exc:
        raise ValueError(
            f"calibration={calibration!r} cannot hold out a stratified tuning set "
            f"from {len(y)} samples: {exc}"
        ) from exc


def calibration_rows(X, y, sample_weight, calibration, rng, streaming):
    """The fit rows and the held-out tuning rows of a calibration split.

    Parameters
    ----------
    X, y, sample_weight : validated fit input (``X`` may be row indices)
    calibration : None, float in (0, 1) or int
    rng : RandomState
    streaming : bool

    Returns
    -------
    fit_rows : tuple ``(X, y, sample_weight)``
    tune_rows : tuple ``(X, y, sample_weight)`` or None
        ``None`` without calibration (the thresholds are tuned on the fit rows).
    """
    fit_idx, tune_idx = calibration_split(y, calibration, rng, streaming)
    if tune_idx is None:
        return (X, y, sample_weight), None

    def part(idx):
        return take_rows(X, idx), y[idx], None if sample_weight is None else sample_weight[idx]

    return part(fit_idx), part(tune_idx)


def take_rows(X, idx):
    """Rows ``idx`` of an array, tensor or DataFrame."""
    if hasattr(X, "iloc"):
        return X.iloc[idx]
    return X[idx]


def n_rows_of(X):
    """Number of rows of an array or of a DataLoader's dataset (None if unknown)."""
    try:
        return len(X.dataset)
    except (AttributeError, TypeError):
        pass
    try:
        return len(X)
    except TypeError:
        return None


def resolve_stage_costs(measured, errors, stage_costs):
    """Per-stage FLOPs: the measured ones, overridden by ``stage_costs``.

    Parameters
    ----------
    measured : array-like of shape (n_stages,)
        Counted FLOPs, NaN where unknown.
    errors : dict
        Stage index -> the error explaining an unknown cost (raised when the
        cost stays unknown).
    stage_costs : None, array-like of shape (n_stages,) or dict
        User override: every stage, or a dict of stage index -> FLOPs.

    Returns
    -------
    costs : ndarray of float64, shape (n_stages,)
    """
    costs = np.asarray(measured, dtype=np.float64).copy()
    M = costs.shape[0]
    sc = stage_costs
    if isinstance(sc, dict):
        for k, v in sc.items():
            if not isinstance(k, numbers.Integral) or not -M <= k < M:
                raise ValueError(
                    f"stage_costs key {k!r} is not a stage index in [0, {M - 1}]."
                )
            v = float(v)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(
                    f"stage_costs[{k}] = {v}; per-sample FLOPs must be finite and >= 0.")
            costs[k] = v
    elif sc is not None:
        arr = np.asarray(sc, dtype=np.float64)
        if arr.shape != (M,):
            raise ValueError(
                f"stage_costs has shape {arr.shape}; expected ({M},), one entry per stage."
            )
        bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
        if bad.size:
            raise ValueError(
                f"stage_costs must be finite and >= 0 (per-sample FLOPs); got {arr[bad[0]]} "
                f"for stage {int(bad[0])} in {arr.tolist()}.")
        costs = arr.copy()
    unknown = np.flatnonzero(np.isnan(costs))
    if unknown.size:
        j = int(unknown[0])
        raise errors[j] if j in errors else ValueError(
            f"The FLOPs of stage {j} are unknown; pass stage_costs=.")
    if np.any(~np.isfinite(costs)) or np.any(costs < 0):
        raise ValueError(f"stage_costs must be finite and >= 0; got {costs.tolist()}.")
    return costs


def fit_adapter(est, adapter, X_fit, y_fit, w_fit, labels, streaming, final_classifier):
    """Fit the stage adapter on the fit rows and tell it the classes.

    Parameters
    ----------
    est : estimator
        Receives the input attributes of a streamed (DataLoader) input.
    adapter : StageAdapter
    X_fit, y_fit, w_fit : fit rows
    labels : LabelIndex
    streaming : bool
    final_classifier : "auto" or bool
        The estimator's parameter (for the width warning).
    """
    if adapter.backend == "torch":
        adapter.fit(X_fit)
        if streaming:
            est.input_shape_ = tuple(adapter.input_shape_)
            est.n_features_in_ = int(np.prod(est.input_shape_))
    else:
        adapter.fit(X_fit, y_fit, w_fit)
    if not streaming:
        adapter.set_classes(np.asarray(labels.labels))
        warn_final_width(adapter, len(labels.labels), final_classifier)


def warn_final_width(adapter, n_classes, final_classifier):
    """Warn when the last stage's width differs from the number of classes."""
    width = adapter.n_outputs_
    if final_classifier == "auto" and width is not None and width != n_classes:
        warn(
            f"The last stage outputs {width} scores but y has {n_classes} classes, so it is "
            "not used as the base model's classifier: the last stage decides by nearest "
            "class mean. Pass final_classifier=False to silence this, or check the labels.")


def warn_if_base_at_chance(adapter, correct_last, y_idx, sample_weight=None):
    """Warn when a network's own predictions agree with the labels no better than chance.

    A network's output ``k`` is read as the ``k``-th sorted label
    (``classes_[k]``): labels in another order (strings sorted differently
    from the network's classes, shifted integers) make the base model look
    wrong on every row, and every exit learns from a wrong reference.

    Parameters
    ----------
    adapter : StageAdapter
        Checked only for torch stages ending in a classifier (scikit-learn
        classifiers carry their labels).
    correct_last : ndarray of bool, shape (n,)
        Whether the base model's prediction equals the label, per tuning row.
    y_idx : ndarray of int, shape (n,)
        Class index of every tuning row.
    sample_weight : ndarray or None
    """
    if adapter.backend != "torch" or not adapter.final_is_classifier or not len(y_idx):
        return
    w = np.ones(len(y_idx)) if sample_weight is None else np.asarray(sample_weight, float)
    if not w.sum() > 0:
        return
    agree = float(w @ correct_last) / w.sum()
    chance = float(np.bincount(y_idx, weights=w).max()) / w.sum()  # always the majority class
    if agree <= chance + 0.02:
        warn(
            f"The network's own predictions agree with y on {agree:.3f} of the tuning rows, no "
            f"better than always predicting the majority class ({chance:.3f}). Output k of the "
            "network is read as the k-th sorted label (classes_[k]): check that the labels are "
            "in that order.")


def copy_input_attributes(src, dst):
    """Copy the input attributes (:data:`INPUT_ATTRIBUTES`) that ``src`` has to ``dst``."""
    for name in INPUT_ATTRIBUTES:
        if hasattr(src, name):
            setattr(dst, name, getattr(src, name))
