"""Stage adapter for a chain of scikit-learn transformers (last may be a classifier)."""

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted, has_fit_parameter

from .._backend import softmax
from .._flops import UnknownCostError, sklearn_flops
from .base import StageAdapter

__all__ = ["SklearnStages", "normalize_sklearn_stages"]


def _is_fitted(est):
    try:
        check_is_fitted(est)
        return True
    except (NotFittedError, TypeError, AttributeError):
        return False


def _is_classifier(est):
    """``is_classifier`` that answers False for objects scikit-learn cannot tag."""
    try:
        return is_classifier(est)
    except (AttributeError, TypeError):
        return getattr(est, "_estimator_type", None) == "classifier"


#: What a scikit-learn stage may be, for messages.
_ACCEPTED = (
    "a scikit-learn transformer (fit and transform; fitted ones are used as they are), "
    "'passthrough' or None; the last stage may also be a classifier (fit, predict and "
    "predict_proba or decision_function). stages= takes None, a list of such estimators, a "
    "Pipeline, or torch modules (an nn.Sequential or a list of nn.Module)"
)


def _trained_by_fit(step):
    """Whether fit trains this step (an estimator that is not fitted yet)."""
    return not (step is None or isinstance(step, str) or _is_fitted(step))


def normalize_sklearn_stages(stages):
    """``(names, steps)`` from ``None``, a list of estimators or a Pipeline."""
    if stages is None:
        return ["input"], ["passthrough"]
    if isinstance(stages, Pipeline):
        names = [n for n, _ in stages.steps]
        steps = [s for _, s in stages.steps]
    else:
        steps = list(stages)
        names = [f"{i}:{type(s).__name__}" for i, s in enumerate(steps)]
    if not steps:
        raise ValueError("stages is empty; pass None (the input is the only stage) or a list.")
    for i, s in enumerate(steps[:-1]):
        if s is None or (isinstance(s, str) and s == "passthrough"):
            continue
        if not hasattr(s, "transform"):
            raise TypeError(
                f"Stage {i} ({names[i]!r}, {type(s).__name__}) has no transform(); every stage "
                f"but the last must be a transformer. A stage must be {_ACCEPTED}."
            )
    last = steps[-1]
    if not (last is None or isinstance(last, str) or hasattr(last, "transform")
            or _is_classifier(last)):
        raise TypeError(
            f"Stage {len(steps) - 1} ({names[-1]!r}, {type(last).__name__}), the last stage, "
            f"is neither a transformer nor a classifier. A stage must be {_ACCEPTED}."
        )
    return names, steps


class SklearnStages(StageAdapter):
    """A list of scikit-learn transformers, optionally ending in a classifier.

    Parameters
    ----------
    stages : None, list of estimators, or Pipeline
        ``None`` makes the input itself the only stage.
    batch_size : int or None
        Rows per batch when streaming (``None``: one batch).
    """

    backend = "numpy"

    def __init__(self, stages=None, batch_size=None):
        self.names, self.steps = normalize_sklearn_stages(stages)
        self.batch_size = batch_size
        self.fitted_steps_ = None

    @property
    def n_stages(self):
        return len(self.steps)

    @property
    def final_is_classifier(self):
        last = self.steps[-1]
        return not isinstance(last, str) and last is not None and _is_classifier(last)

    @property
    def frozen(self):
        """True when every step is already fitted (or passthrough): fit trains nothing."""
        return not any(_trained_by_fit(step) for step in self.steps)

    def fit(self, X, y, sample_weight=None):
        """Fit the unfitted steps in sequence (fitted ones are used as they are).

        Only the steps before the last unfitted one need the transformed
        training data; the output widths of the rest are read on a few rows.
        Sets ``fitted_steps_``, ``stage_flops_`` (NaN where a step's cost is
        unknown, with the error in ``cost_errors_``), ``vector_flops_`` (zeros) and
        ``vector_dims_`` (0 for a final classifier).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or None
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to the steps whose ``fit`` accepts it.

        Returns
        -------
        self : SklearnStages

        Raises
        ------
        ValueError
            When a step's output that a later step is fitted on holds NaN or
            infinity (the message names the step).
        """
        Z = X
        unfitted = [j for j, step in enumerate(self.steps) if _trained_by_fit(step)]
        last_unfitted = unfitted[-1] if unfitted else -1
        self.cost_errors_ = {}
        fitted = []
        widths = []
        flops = []
        for j, step in enumerate(self.steps):
            name = self.names[j]
            d_in = Z.shape[1]
            if step is None or isinstance(step, str):
                est = "passthrough"
            elif not _trained_by_fit(step):
                est = step
            else:
                est = clone(step)
                kw = {}
                if sample_weight is not None and has_fit_parameter(est, "sample_weight"):
                    kw["sample_weight"] = sample_weight
                est.fit(Z, y, **kw)
            fitted.append(est)
            try:
                flops.append(sklearn_flops(est, d_in, name=name))
            except UnknownCostError as exc:  # raised later unless stage_costs covers it
                flops.append(np.nan)
                self.cost_errors_[j] = exc
            if j < self.n_stages - 1 or not self.final_is_classifier:
                if j >= last_unfitted:
                    Z = Z[:2]  # no later step is trained: its output width is all we need
                Z = self._transform(est, Z)
                if j < last_unfitted and not np.isfinite(Z).all():
                    k = min(i for i in unfitted if i > j)
                    raise ValueError(
                        f"The output of stage {j} ({name}) contains NaN or infinity on finite "
                        f"input, and stage {k} ({self.names[k]}) would be fitted on it: the "
                        "step overflows or is not defined on this data. "
                        "Check the step and the scale of X (every stage must give finite "
                        "outputs).")
                widths.append(Z.shape[1])
            else:
                widths.append(0)
        self.fitted_steps_ = fitted
        self.stage_flops_ = np.asarray(flops, dtype=np.float64)
        self.vector_flops_ = np.zeros(self.n_stages)
        self.vector_dims_ = np.asarray(widths, dtype=np.intp)
        return self

    @staticmethod
    def _transform(est, Z):
        if isinstance(est, str):
            return Z
        out = est.transform(Z)
        if sp.issparse(out):
            out = out.toarray()
        return np.asarray(out, dtype=np.float64)

    def batches(self, X, y=None, batch_size=None):
        """Yield ``(Xb, yb)``: consecutive row slices of ``X`` and ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Sliced as it is (numpy array or sparse matrix).
        y : array-like of shape (n_samples,), default=None
        batch_size : int, default=None
            Rows per batch; falls back to the adapter's ``batch_size``, then to one
            batch of every row.

        Yields
        ------
        Xb : array of shape (n_batch, n_features)
        yb : array of shape (n_batch,) or None
        """
        bs = batch_size or self.batch_size or X.shape[0]
        n = X.shape[0]
        for start in range(0, n, bs):
            sl = slice(start, min(start + bs, n))
            yield X[sl], (None if y is None else y[sl])

    def run_stage(self, j, Z):
        """Output of fitted step ``j`` (``transform``) for its input batch ``Z``.

        Parameters
        ----------
        j : int
            Stage index.
        Z : array of shape (n, d_in)

        Returns
        -------
        Z_out : ndarray of float64 of shape (n, d_out)
            Dense (sparse outputs are densified); ``Z`` itself for a passthrough.
        """
        return self._transform(self.fitted_steps_[j], Z)

    def stage_vector(self, j, Z):
        """Stage ``j``'s output itself: it is already a 2-D feature matrix.

        Parameters
        ----------
        j : int
            Stage index (unused).
        Z : ndarray of shape (n, D_j)
            Stage ``j``'s output batch.

        Returns
        -------
        F : ndarray of shape (n, D_j)
            ``Z`` unchanged.
        """
        return Z

    def final_outputs(self, Z):
        """The final classifier's predictions and probabilities on the last stage's input.

        Probabilities come from ``predict_proba``, else from a softmax of
        ``decision_function``; their columns are placed at the classifier's
        classes among the estimator's ``classes_`` (other columns are 0).

        Parameters
        ----------
        Z : ndarray of shape (n, d)
            Input of the last stage.

        Returns
        -------
        class_index : ndarray of int of shape (n,)
            Indices of the predictions in ``classes_``.
        proba : ndarray of shape (n, n_classes)
        """
        clf = self.fitted_steps_[-1]
        pred = clf.predict(Z)
        idx = np.searchsorted(self.classes_, pred)
        if hasattr(clf, "predict_proba"):
            proba = clf.predict_proba(Z)
        else:
            scores = clf.decision_function(Z)
            if scores.ndim == 1:
                scores = np.column_stack([np.zeros_like(scores), scores])
            proba = softmax(scores)
        cols = np.searchsorted(self.classes_, clf.classes_)
        full = np.zeros((Z.shape[0], len(self.classes_)))
        full[:, cols] = proba
        return idx, full

    def check_classes(self, classes):
        """Ensure the final classifier knows exactly the estimator's classes.

        Parameters
        ----------
        classes : array-like of shape (n_classes,)
            The estimator's training labels.

        Returns
        -------
        None
            Raises ``ValueError`` when the final classifier predicts a class not in
            ``classes``.
        """
        if self.final_is_classifier:
            clf_classes = np.asarray(self.fitted_steps_[-1].classes_)
            missing = np.setdiff1d(clf_classes, classes)
            if missing.size:
                raise ValueError(
                    f"The final classifier ({type(self.fitted_steps_[-1]).__name__}) predicts "
                    f"classes {missing.tolist()[:20]} that are not among the labels given to fit "
                    f"({np.asarray(classes).tolist()[:20]}); its classes are "
                    f"{clf_classes.tolist()[:20]}. Fit with the labels the base model was "
                    "trained on (every class it can predict must be a class of y)."
                )

    def set_classes(self, classes):
        """Tell the adapter the estimator's sorted ``classes_``; check the final classifier's.

        Parameters
        ----------
        classes : array-like of shape (n_classes,)
            Sorted class labels of the estimator.

        Returns
        -------
        self : SklearnStages

        Raises
        ------
        ValueError
            When the final classifier can predict a class that is not in ``classes``
            (e.g. labels shifted or renamed since the base model was trained).
        """
        super().set_classes(classes)
        self.check_classes(self.classes_)
        return self
