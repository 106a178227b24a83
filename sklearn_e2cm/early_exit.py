"""EarlyExitClassMeans: E²CM early exits on any staged extractor."""

import contextlib
import numbers
import sys
from functools import partial
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from ._backend import concat, is_torch, is_torch_module, nbytes, progress, softmax
from ._class_means import (
    ClassStatsAccumulator,
    ExitHead,
    normalized_head,
    whitened_head,
)
from ._memory import HeapGuard
from ._routing import batch_uniforms, decide, iter_stages, route
from ._thresholds import (
    ExitTable,
    bisection_search,
    sweep,
    time_sharing,
    upper_hull,
    warn_unreachable,
)
from .stages.sklearn import SklearnStages

__all__ = ["EarlyExitClassMeans"]


def _is_torch_stages(stages):
    if stages is None or isinstance(stages, Pipeline):
        return False
    if is_torch_module(stages):
        return True
    if isinstance(stages, (list, tuple)) and stages:
        kinds = [is_torch_module(s) for s in stages]
        if any(kinds) and not all(kinds):
            raise TypeError(
                "stages mixes torch modules and other objects; pass either torch modules "
                "or scikit-learn estimators."
            )
        return all(kinds)
    return False


class _LabelIndex:
    """Maps raw labels to class indices; new labels may appear while streaming."""

    def __init__(self, classes=None):
        self.labels = [] if classes is None else list(classes)
        self._map = {lab: i for i, lab in enumerate(self.labels)}

    def __call__(self, y):
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
        """(sorted classes, permutation from discovery order to sorted order)."""
        arr = np.asarray(self.labels)
        order = np.argsort(arr, kind="stable")
        return arr[order], order


class _EarlyExitBase:
    """Exit-head routing shared by the early-exit estimators.

    A subclass's ``fit`` builds a stage adapter and one :class:`ExitHead` per
    stage, then calls :meth:`_finish_fit` with the per-stage arrays on the
    tuning data; everything after that (threshold choice, routing, staged
    outputs, exit tables) lives here. Subclasses provide ``_validate_X`` and
    the parameters ``flops_target``, ``thresholds`` and, optionally,
    ``threshold_search``, ``n_targets``, ``batch_size`` and ``verbose``.
    """

    def _finish_fit(self, adapter, heads, stage_flops, conf, correct, sample_weight, rng):
        """Set the cost model and the operating point from the tuning arrays."""
        M = adapter.n_stages
        exit_flops = np.array(
            [
                0.0 if (j == M - 1 and adapter.final_is_classifier)
                else heads[j].flops() + float(adapter.vector_flops_[j])
                for j in range(M)
            ]
        )
        self.stage_flops_ = np.asarray(stage_flops, dtype=np.float64)
        self.exit_flops_ = exit_flops
        self.n_stages_ = M
        self._heads = heads
        self._adapter = adapter
        last_head = not adapter.final_is_classifier
        table = ExitTable(conf, correct, self.stage_flops_, exit_flops, last_head, sample_weight)
        self.cumulative_cost_ = table.full_cost
        self._tuning_table = table
        if not hasattr(self, "_fit_times"):
            self._fit_times = {}
        # both seeds are drawn before any search, whatever the operating point:
        # a fit at any flops_target (or none) gets the same ones, so a search
        # over targets (FlopBudgetSearchCV) reproduces what each fit would do
        self._sweep_seed, self._routing_seed = (
            int(v) for v in rng.randint(np.iinfo(np.int32).max, size=2))
        t0 = time.perf_counter()
        self._choose_operating_point(table)
        self._fit_times["threshold search"] = time.perf_counter() - t0
        return table

    def set_operating_point(self, flops_target=None, thresholds=None):
        """Choose a new operating point from the cached tuning arrays (no forward pass).

        Equivalent to ``set_params(flops_target=..., thresholds=...)`` followed
        by a refit, without recomputing class means or running any stage:
        only the threshold search runs again.

        Parameters
        ----------
        flops_target : float in (0, 1] or None
        thresholds : array-like of shape (n_stages - 1,) or None

        Returns
        -------
        self : object
        """
        check_is_fitted(self)
        table = getattr(self, "_tuning_table", None)
        if table is None:
            raise RuntimeError(
                "The tuning arrays are not available (they are not pickled); refit with "
                "set_params(flops_target=...) instead."
            )
        self.set_params(flops_target=flops_target, thresholds=thresholds)
        if hasattr(self, "_validate_params"):
            self._validate_params()
        self._choose_operating_point(table)
        return self

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never alter the live estimator
        state.pop("_tuning_table", None)  # per-sample tuning arrays: not needed to predict
        return state

    def _choose_operating_point(self, table, precomputed=None):
        """Set the operating point (mixture of threshold vectors) from ``table``.

        ``precomputed``: a sweep already run on ``table`` (used by
        :class:`~sklearn_e2cm.FlopBudgetSearchCV`), a tuple ``(targets,
        thresholds, costs, scores)`` that includes the two extremes (all
        zeros, all ones); the hull branch then uses it instead of sweeping,
        and the scores may come from any scoring.
        """
        M = table.n_stages
        M1 = M - 1
        base_cost, base_acc = table.evaluate(np.ones(M1))
        rows = []
        mix_eval = None  # (costs, scores) of the mixture's vectors when already known
        if self.thresholds is not None:
            T = np.asarray(self.thresholds, dtype=np.float64)
            if T.shape != (M1,):
                raise ValueError(
                    f"thresholds has shape {T.shape}; expected ({M1},) for {M} stages "
                    "(one threshold per stage but the last)."
                )
            if not np.all((T >= 0) & (T <= 1)):
                raise ValueError(f"thresholds must lie in [0, 1]; got {T.tolist()}.")
            mix_T, mix_w = T[None, :], np.array([1.0])
            c, a = table.evaluate(T)
            rows.append((np.nan, c, a, T, True))
        elif self.flops_target is None or M == 1:
            mix_T, mix_w = np.ones((1, M1)), np.array([1.0])
            rows.append((np.nan if self.flops_target is None else self.flops_target,
                         base_cost, base_acc, np.ones(M1), True))
        elif getattr(self, "threshold_search", "hull") == "bisect" and precomputed is None:
            target = float(self.flops_target)
            if target < table.min_cost():
                warn_unreachable(target, table.min_cost())
            T, _ = bisection_search(table, target, self._sweep_seed)
            mix_T, mix_w = T[None, :], np.array([1.0])
            c, a = table.evaluate(T)
            rows.append((target, c, a, T, True))
        else:
            if precomputed is not None:
                tg, T, costs, accs = (np.asarray(a) for a in precomputed)
            else:
                targets = np.linspace(0, 1, getattr(self, "n_targets", 1000) + 1)[1:]
                method = ("coordinate"
                          if getattr(self, "threshold_search", "hull") == "coordinate"
                          else "bisect")
                T, costs, accs = sweep(
                    table, targets, method=method, random_state=self._sweep_seed,
                    progress=partial(progress, verbose=getattr(self, "verbose", 0),
                                     desc="E2CM threshold sweep",
                                     total=len(targets) if method == "bisect" else None),
                )
                # the extremes: everything at the first exit, and the base model
                T = np.vstack([T, np.zeros(M1), np.ones(M1)])
                c0, a0 = table.evaluate(np.zeros(M1))
                costs = np.append(costs, [c0, base_cost])
                accs = np.append(accs, [a0, base_acc])
                tg = np.append(targets, [np.nan, np.nan])
            hull = upper_hull(costs, accs)
            on_hull = np.zeros(costs.shape[0], bool)
            on_hull[hull] = True
            target = float(self.flops_target)
            if target < costs[hull[0]] - 1e-12:
                warn_unreachable(target, costs[hull[0]])
            verts, mix_w = time_sharing(costs[hull], target)
            mix_T = T[hull[verts]]
            mix_eval = costs[hull[verts]], accs[hull[verts]]
            rows = list(zip(tg, costs, accs, list(T), on_hull))
        self.mixture_thresholds_ = mix_T
        self.mixture_weights_ = mix_w
        self.thresholds_ = mix_T[int(np.argmax(mix_w))].copy()
        self._mixture_costs = table.costs(mix_T)
        cs, acc_ = table.evaluate_many(mix_T) if mix_eval is None else mix_eval
        self.expected_flops_ = float(mix_w @ cs)
        self.expected_accuracy_ = float(mix_w @ acc_)
        self.tradeoff_ = pd.DataFrame(
            {
                "target": [r[0] for r in rows],
                "flops": [r[1] for r in rows],
                "accuracy": [r[2] for r in rows],
                "thresholds": [np.asarray(r[3]) for r in rows],
                "on_hull": [bool(r[4]) for r in rows],
            }
        )
        self._update_memory_overhead()

    def _update_memory_overhead(self):
        """Bytes stored for the exits that the operating point can use (heads + thresholds)."""
        M = self.n_stages_
        itemsize = 4 if self._adapter.backend == "torch" else 8
        used = set(np.flatnonzero(self.mixture_thresholds_.min(axis=0) < 1.0).tolist())
        if not self._adapter.final_is_classifier:
            used.add(M - 1)
        self.memory_overhead_bytes_ = int(
            sum(self._heads[j].nbytes(itemsize) for j in used) + 8 * (M - 1)
        )

    # ------------------------------------------------------------- inference
    def _validate_X(self, X):
        check_is_fitted(self)
        if self._adapter.backend == "torch":
            X, _, _ = self._check_torch_input(X, None, reset=False)
            return X
        return validate_data(self, X, dtype=np.float64, reset=False)

    def route(self, X):
        """Route every sample through the stages with early exits (one pass).

        Returns
        -------
        result : RoutingResult
            ``y_pred`` (labels), ``exit_stage`` (0-based) and ``flops``
            (normalised cost) per sample, and ``proba``.
        """
        X = self._validate_X(X)
        return self._route(X, return_proba=True)

    def _route(self, X, return_proba=False):
        adapter = self._adapter
        with _activated(adapter):
            res = route(
                adapter, self._heads, self.mixture_thresholds_, self.mixture_weights_,
                self._mixture_costs, X, batch_size=getattr(self, "batch_size", None),
                seed=self._routing_seed,
                return_proba=return_proba,
                progress=partial(progress, verbose=getattr(self, "verbose", 0) > 1,
                                 desc="E2CM predict"),
            )
        res.y_pred = self.classes_[res.y_pred]
        return res

    def _time_sharing_uniforms(self, X):
        """The uniform that :meth:`route` draws for each row of ``X`` (a hash of the row).

        Time sharing sends a row to the mixture's threshold vector
        ``assign_rows(u, mixture_weights_)``; callers that rebuild routed
        results from exit tables use this to reproduce the same assignment.
        """
        X = self._validate_X(X)
        adapter = self._adapter
        parts = [batch_uniforms(adapter, Xb, self._routing_seed)
                 for Xb, _ in adapter.batches(X, None, getattr(self, "batch_size", None))]
        return np.concatenate(parts) if parts else np.zeros(0)

    def predict(self, X):
        """Predicted class of each sample, with early exits."""
        X = self._validate_X(X)
        return self._route(X).y_pred

    def predict_proba(self, X):
        """Probabilities of the exit that decided each sample."""
        X = self._validate_X(X)
        return self._route(X, return_proba=True).proba

    def _staged(self, X):
        adapter = self._adapter
        batch_size = getattr(self, "batch_size", None)

        def source():
            for Xb, _ in adapter.batches(X, None, batch_size):
                yield iter_stages(adapter, Xb), None, adapter.n_rows(Xb)

        with _activated(adapter):
            return self._staged_from(source())

    def _staged_from(self, batches):
        """Per-stage predictions, probabilities and exit confidences of every row of ``batches``."""
        adapter = self._adapter
        M = self.n_stages_
        preds = [[] for _ in range(M)]
        probas = [[] for _ in range(M)]
        confs = [[] for _ in range(M)]
        for items, _, _ in batches:
            for j, F, idx in items:
                if idx is not None:  # the base model's own output
                    P = adapter.to_numpy(F)
                    conf = P.max(axis=1)
                else:
                    P, idx, conf = decide(adapter, self._heads[j], F)
                    P = adapter.to_numpy(P)
                preds[j].append(np.asarray(idx))
                probas[j].append(np.asarray(P, dtype=np.float64))
                confs[j].append(np.asarray(conf, dtype=np.float64))
        return ([np.concatenate(p) for p in preds], [np.concatenate(p) for p in probas],
                [np.concatenate(c) for c in confs])

    def exit_table(self, X, y=None, sample_weight=None):
        """Per-stage exit arrays of this fitted estimator on new data (one forward pass).

        Parameters
        ----------
        X : input accepted by :meth:`predict`
        y : array-like of shape (n_samples,) or None
            True labels: the table's score is accuracy. ``None``: the score is
            agreement with the base model's (final exit's) prediction, which
            needs no labels.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        table : ExitTable
            Cached max exit probability and correctness of every sample at
            every stage, with this estimator's cost model; threshold vectors
            are evaluated and searched on it without running any stage. It
            also keeps the class index predicted at every stage
            (``table.pred_labels``, shape (n_samples, n_stages), labels in
            ``table.classes``) so that routed predictions can be rebuilt for
            any threshold vector (``table.predict_indices(T)``).
        """
        X = self._validate_X(X)
        preds, _, confs = self._staged(X)
        return self._table_from_staged(preds, confs, y, sample_weight)

    def _table_from_staged(self, preds, confs, y, sample_weight):
        conf = np.column_stack(confs)  # each head's exit confidence (E²CM: max probability)
        pred = np.column_stack(preds)
        if y is None:
            ref = pred[:, -1]
        else:
            y = np.asarray(y)
            ref = np.searchsorted(self.classes_, y)
            ref = np.where(ref < len(self.classes_), ref, -1)
            ref[self.classes_[np.clip(ref, 0, len(self.classes_) - 1)] != y] = -1
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, conf, dtype=np.float64)
        return ExitTable(conf, pred == ref[:, None], self.stage_flops_, self.exit_flops_,
                         not self._adapter.final_is_classifier, sample_weight,
                         pred_labels=pred, classes=self.classes_)

    def staged_predict(self, X):
        """Prediction of every stage for every sample (no early exit).

        Yields one array of shape (n_samples,) per stage, in stage order; the
        last one is the base model's prediction when it ends in a classifier.
        """
        X = self._validate_X(X)
        preds, _, _ = self._staged(X)
        for p in preds:
            yield self.classes_[p]

    def staged_predict_proba(self, X):
        """Exit probabilities of every stage for every sample (no early exit)."""
        X = self._validate_X(X)
        _, probas, _ = self._staged(X)
        yield from probas



class EarlyExitClassMeans(ClassifierMixin, _EarlyExitBase, BaseEstimator):
    """Early Exit Class Means (E²CM) on a trained staged model.

    After every stage of a trained model the stage output is compared with the
    mean output of each class; a sample whose exit probability (softmax of the
    negative, normalised distances to the class means) exceeds the stage's
    threshold leaves there with the nearest class as its prediction. The
    model is never modified and nothing is trained by gradient descent:
    fitting is one pass over the training data to get the class means, plus a
    threshold search on cached per-stage arrays.

    Parameters
    ----------
    stages : None, list, Pipeline or torch module, default=None
        The staged model. ``None``: the input itself is the only stage (E²CM is
        then a nearest-centroid classifier with calibrated probabilities). A
        list of scikit-learn transformers, optionally ending in a classifier,
        or a :class:`~sklearn.pipeline.Pipeline` (unfitted steps are fitted
        in sequence on the training data, fitted ones are used as they are).
        A torch ``nn.Sequential`` (each child a stage), a list of torch
        modules, or a torch model split with
        :func:`sklearn_e2cm.stages.split_into_stages`.
    flops_target : float in (0, 1] or None, default=None
        Expected cost per sample, normalised so that the base model costs 1.
        ``None``: no early exit (the base model's own predictions).
    thresholds : array-like of shape (n_stages - 1,), default=None
        Explicit exit thresholds in [0, 1]; override the search.
    threshold_search : {"hull", "coordinate", "bisect"}, default="hull"
        ``"hull"``: sweep ``n_targets`` FLOP targets with the paper's search
        (random initialisation + alternating bisection), keep the upper
        concave hull of (cost, accuracy) on the tuning data and serve
        ``flops_target`` by time sharing between the two hull vertices around
        it. ``"coordinate"``: the same hull and time sharing, with thresholds
        found by exact coordinate ascent on accuracy − λ·cost (slightly better
        held-out hulls in our benchmarks, see ``benchmarks/results/search.md``).
        ``"bisect"``: the paper's single-target search, no hull.
    metric : {"euclidean", "mahalanobis"}, default="euclidean"
        Distance to the class means.
    pooling : None, int, tuple, str, list or callable, default=None
        Feature reduction of torch stage outputs before the class means
        (e.g. ``("max", (8, 2, 2))``, ``("avg", 4)``, ``"avg4"``).
    normalize : bool, default=True
        Divide distances by their mean over the tuning data (eq. 4).
        Euclidean metric only.
    shrinkage : "oas" or float in [0, 1], default="oas"
        Shrinkage of the shared within-class covariance towards a scaled
        identity (``metric="mahalanobis"`` only): the Oracle Approximating
        Shrinkage amount computed from the streamed covariance, or a fixed
        amount.
    max_covariance_bytes : float, default=2**28
        Largest covariance (``8 * D_j²`` bytes) a whitened exit may hold;
        a larger stage vector raises an error that suggests pooling.
    calibration : None, float in (0, 1) or int, default=None
        ``None``: tune thresholds (and eq. 4 scales) on the training data, as
        the paper does. A fraction or a count: hold out that part of the
        training data (stratified) for tuning.
    stage_costs : array-like of shape (n_stages,) or dict, default=None
        Per-sample FLOPs of each stage overriding the cost model; a dict maps
        stage indices to FLOPs and leaves the other stages counted.
    n_targets : int, default=1000
        Size of the FLOP-target grid swept by ``threshold_search="hull"``.
    final_classifier : "auto" or bool, default="auto"
        Whether the last stage outputs the base model's class scores (then a
        sample reaching the end gets the base model's prediction).
    batch_size : int, default=1024
        Rows per batch when streaming through the stages.
    device : str, default="cpu"
        Torch device for torch stages.
    cache_size : float, default=1.5e9
        Bytes of stage vectors kept in memory while fitting so that the
        tuning pass does not run those stages again (the last stages first:
        they hold the fewest values per FLOP). Also the most that
        :class:`~sklearn_e2cm.FlopBudgetSearchCV` may hold to run frozen
        stages once for all its folds.
    random_state : int, RandomState instance or None, default=None
        Seeds the threshold initialisation and the time-sharing assignment
        (and the ``calibration`` split). Both seeds are drawn at the start
        of the threshold search whatever ``flops_target`` is, and the
        bisection start for a target is a hash of the seed and the target,
        so with an int seed every ``flops_target`` is served exactly as a
        sweep over many targets (:class:`~sklearn_e2cm.FlopBudgetSearchCV`)
        serves it.
    verbose : int, default=0
        Progress bars when positive.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_stages_ : int
    class_means_ : list of ndarray of shape (n_classes, D_j)
    distance_scale_ : list of ndarray of shape (n_classes,) or None
        eq. 4 scales (Euclidean metric with ``normalize=True``).
    shrinkage_ : list of float
        Covariance shrinkage used at each stage (``metric="mahalanobis"``).
    thresholds_ : ndarray of shape (n_stages - 1,)
        Thresholds of the main operating point (the hull vertex with the
        larger time-sharing weight).
    mixture_thresholds_ : ndarray of shape (n_components, n_stages - 1)
    mixture_weights_ : ndarray of shape (n_components,)
    stage_flops_ : ndarray of shape (n_stages,)
    exit_flops_ : ndarray of shape (n_stages,)
        Per-sample FLOPs of each exit head (pooling included; 0 where the
        base model's classifier decides).
    cumulative_cost_ : ndarray of shape (n_stages,)
        Normalised cost of leaving after each stage with every head active.
    expected_flops_ : float
        Expected normalised cost of the operating point on the tuning data.
    expected_accuracy_ : float
    tradeoff_ : pandas.DataFrame
        Swept operating points (``target``, ``flops``, ``accuracy``,
        ``thresholds``, ``on_hull``).
    memory_overhead_bytes_ : int
        Bytes of class means, norms and scales stored for the active exits.
    n_features_in_ : int
    feature_names_in_ : ndarray of str

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.decomposition import PCA
    >>> from sklearn.kernel_approximation import Nystroem
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = EarlyExitClassMeans(
    ...     stages=[StandardScaler(), PCA(16), Nystroem(n_components=300, random_state=0),
    ...             LogisticRegression(max_iter=300)],
    ...     flops_target=0.3, random_state=0).fit(X, y)
    >>> clf.n_stages_
    4
    >>> round(clf.expected_flops_, 3)
    0.3
    >>> r = clf.route(X)  # predictions, exit stage and cost of every sample
    >>> bool(abs(r.flops.mean() - 0.3) < 0.01)
    True
    """

    _parameter_constraints = {
        "stages": "no_validation",
        "flops_target": [Interval(numbers.Real, 0, 1, closed="right"), None],
        "thresholds": ["array-like", None],
        "threshold_search": [StrOptions({"hull", "coordinate", "bisect"})],
        "metric": [StrOptions({"euclidean", "mahalanobis"})],
        "pooling": "no_validation",
        "normalize": ["boolean"],
        "shrinkage": [StrOptions({"oas"}), Interval(numbers.Real, 0, 1, closed="both")],
        "max_covariance_bytes": [Interval(numbers.Real, 0, None, closed="neither")],
        "calibration": [
            Interval(numbers.Real, 0, 1, closed="neither"),
            Interval(numbers.Integral, 1, None, closed="left"),
            None,
        ],
        "stage_costs": ["array-like", dict, None],
        "n_targets": [Interval(numbers.Integral, 2, None, closed="left")],
        "final_classifier": [StrOptions({"auto"}), "boolean"],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": "no_validation",
        "cache_size": [Interval(numbers.Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        stages=None,
        *,
        flops_target=None,
        thresholds=None,
        threshold_search="hull",
        metric="euclidean",
        pooling=None,
        normalize=True,
        shrinkage="oas",
        max_covariance_bytes=2**28,
        calibration=None,
        stage_costs=None,
        n_targets=1000,
        final_classifier="auto",
        batch_size=1024,
        device="cpu",
        cache_size=1.5e9,
        random_state=None,
        verbose=0,
    ):
        self.stages = stages
        self.flops_target = flops_target
        self.thresholds = thresholds
        self.threshold_search = threshold_search
        self.metric = metric
        self.pooling = pooling
        self.normalize = normalize
        self.shrinkage = shrinkage
        self.max_covariance_bytes = max_covariance_bytes
        self.calibration = calibration
        self.stage_costs = stage_costs
        self.n_targets = n_targets
        self.final_classifier = final_classifier
        self.batch_size = batch_size
        self.device = device
        self.cache_size = cache_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        torch_backend = _is_torch_stages(self.stages)
        tags.input_tags.two_d_array = not torch_backend
        tags.input_tags.allow_nan = False
        tags.classifier_tags.poor_score = True
        tags.non_deterministic = False
        return tags

    # --------------------------------------------------------------- helpers
    def _make_adapter(self):
        if _is_torch_stages(self.stages):
            from .stages.torch import TorchStages

            return TorchStages(
                self.stages,
                pooling=self.pooling,
                device=self.device,
                batch_size=self.batch_size,
                final_classifier=self.final_classifier,
            )
        if self.pooling is not None and not callable(self.pooling):
            raise ValueError(
                f"pooling={self.pooling!r} applies to torch stages (image-shaped outputs); "
                "scikit-learn stages output 2-D features. Use pooling=None."
            )
        adapter = SklearnStages(self.stages, batch_size=self.batch_size)
        if self.final_classifier is True and not adapter.final_is_classifier:
            raise ValueError(
                "final_classifier=True but the last stage is not a classifier "
                f"({type(adapter._steps[-1]).__name__})."
            )
        return adapter

    def _resolve_stage_costs(self, measured, errors):
        costs = np.asarray(measured, dtype=np.float64).copy()
        M = costs.shape[0]
        sc = self.stage_costs
        if isinstance(sc, dict):
            for k, v in sc.items():
                if not isinstance(k, numbers.Integral) or not -M <= k < M:
                    raise ValueError(
                        f"stage_costs key {k!r} is not a stage index in [0, {M - 1}]."
                    )
                costs[k] = float(v)
        elif sc is not None:
            arr = np.asarray(sc, dtype=np.float64)
            if arr.shape != (M,):
                raise ValueError(
                    f"stage_costs has shape {arr.shape}; expected ({M},), one entry per stage."
                )
            costs = arr.copy()
        unknown = np.flatnonzero(np.isnan(costs))
        if unknown.size:
            j = int(unknown[0])
            raise errors[j] if j in errors else ValueError(
                f"The FLOPs of stage {j} are unknown; pass stage_costs=.")
        if np.any(~np.isfinite(costs)) or np.any(costs < 0):
            raise ValueError(f"stage_costs must be finite and >= 0; got {costs.tolist()}.")
        return costs

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, sample_weight=None):
        """Fit the class means and choose the thresholds.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or for torch stages
            an array/tensor of shape (n_samples, ...) or a DataLoader of
            ``(x, y)`` batches (then ``y=None``).
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        adapter = self._make_adapter()
        rng = check_random_state(self.random_state)
        X, y, sample_weight, streaming = self._validate_fit_input(adapter, X, y, sample_weight)

        # ---- split off the calibration (tuning) part
        fit_idx, tune_idx = self._calibration_split(y, rng, streaming)
        X_fit, y_fit, w_fit = X, y, sample_weight
        X_tune = y_tune = w_tune = None
        if tune_idx is not None:
            X_fit, y_fit = self._take(X, fit_idx), y[fit_idx]
            X_tune, y_tune = self._take(X, tune_idx), y[tune_idx]
            if sample_weight is not None:
                w_fit, w_tune = sample_weight[fit_idx], sample_weight[tune_idx]

        labels = _LabelIndex(None if streaming else np.unique(y))
        self._fit_adapter(adapter, X_fit, y_fit, w_fit, labels, streaming)
        fit_src = self._forward_source(adapter, X_fit, y_fit, "E2CM fit (class means)")
        tune_src = None
        if X_tune is not None:
            tune_src = self._forward_source(adapter, X_tune, None, "E2CM fit (tuning pass)")
        n_total = self._n_total(X_fit)
        return self._fit_from_sources(adapter, labels, streaming, fit_src, w_fit, tune_src,
                                      y_tune, w_tune, n_total, rng, cache_ok=True)

    def _validate_fit_input(self, adapter, X, y, sample_weight):
        """Checked ``(X, y, sample_weight, streaming)``; sets the input attributes."""
        torch_backend = adapter.backend == "torch"
        streaming = False
        if torch_backend:
            X, y, streaming = self._check_torch_input(X, y, reset=True)
        if not streaming:
            if y is None:
                raise ValueError(
                    "requires y to be passed, but the target y is None (labels are needed for "
                    "the class means)."
                )
            if not torch_backend:
                X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
            check_classification_targets(y)
            classes = np.unique(y)
            self._check_n_classes(classes)
            if sample_weight is not None:
                sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        elif sample_weight is not None:
            raise ValueError("sample_weight is not supported with a DataLoader input.")
        return X, y, sample_weight, streaming

    def _calibration_split(self, y, rng, streaming):
        """Row indices ``(fit, tune)`` of the calibration hold-out, or ``(None, None)``."""
        if self.calibration is None:
            return None, None
        if streaming:
            raise ValueError(
                "calibration= needs array input to hold data out; got a DataLoader. "
                "Hold out the tuning data yourself or use calibration=None."
            )
        idx = np.arange(len(y))
        try:
            return train_test_split(
                idx, test_size=self.calibration, stratify=y,
                random_state=rng.randint(np.iinfo(np.int32).max),
            )
        except ValueError as exc:
            raise ValueError(
                f"calibration={self.calibration!r} cannot hold out a stratified tuning set "
                f"from {len(y)} samples: {exc}"
            ) from exc

    def _fit_adapter(self, adapter, X_fit, y_fit, w_fit, labels, streaming):
        if adapter.backend == "torch":
            adapter.fit(X_fit)
            if streaming:
                self.input_shape_ = tuple(adapter.input_shape_)
                self.n_features_in_ = int(np.prod(self.input_shape_))
        else:
            adapter.fit(X_fit, y_fit, w_fit)
        if not streaming:
            adapter.set_classes(np.asarray(labels.labels))
            self._warn_final_width(adapter, len(labels.labels))

    def _forward_source(self, adapter, X, y, desc):
        """Batches of stage vectors computed by running the stages on ``X``.

        Returns ``source(n_run=None, final=True)``, a generator factory
        yielding ``(stage_items, y_batch, n_rows)`` batch after batch, where
        ``stage_items`` yields ``(j, F, final_idx)`` stage after stage as
        :func:`iter_stages` computes them (one stage output alive at a time).
        """
        def source(n_run=None, final=True):
            guard = HeapGuard()
            for Xb, yb in self._batches(adapter, X, y, desc):
                yield iter_stages(adapter, Xb, n_run, final), yb, adapter.n_rows(Xb)
                guard.step()

        return source

    def _fit_from_sources(self, adapter, labels, streaming, fit_src, w_fit, tune_src, y_tune,
                          w_tune, n_total, rng, cache_ok, context=None):
        """Both passes of fit, reading stage vectors from sources (forward or cached).

        ``context``: a factory of the context the passes run in; by default the
        adapter's inference context (eval mode, device, inference_mode).
        """
        context = context or (lambda: _activated(adapter))
        final_in_pass1 = adapter.final_is_classifier
        stage_flops = self._resolve_stage_costs(
            adapter.stage_flops_, getattr(adapter, "cost_errors_", {}))
        M = adapter.n_stages
        if self.metric == "mahalanobis":
            self._check_covariance_size(adapter)

        # ---- pass 1: class statistics (and cached stage vectors)
        self._fit_times = {}
        t0 = time.perf_counter()
        same_tuning = tune_src is None
        with context():
            stats, cache, final_fit, n_cached_from = self._pass_statistics(
                adapter, fit_src, w_fit, labels, n_total, same_tuning and cache_ok
            )
        self._fit_times["class statistics pass"] = time.perf_counter() - t0
        classes, order = labels.sorted_order()
        if streaming:
            self._check_n_classes(classes)
            adapter.set_classes(classes)
            if adapter.final_is_classifier != final_in_pass1:
                raise ValueError(
                    f"The last stage outputs {adapter.n_outputs_} scores but the labels have "
                    f"{len(classes)} classes; pass final_classifier=False to decide the last "
                    "stage by nearest class mean."
                )
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.shape[0])
        self.classes_ = classes
        K = classes.shape[0]
        for acc in stats:
            if acc.weights.shape[0] < K:
                acc._grow(K, acc.sums.shape[1])
        means = [acc.means()[order] for acc in stats]
        weights_per_class = stats[0].weights[order]
        empty = np.flatnonzero(weights_per_class <= 0)
        if empty.size:
            raise ValueError(
                f"Classes {classes[empty].tolist()} have no training samples with positive "
                "weight; every class needs samples to have a class mean."
            )
        for j, C in enumerate(means):
            if not np.all(np.isfinite(C)):
                raise ValueError(
                    f"The class means of stage {j} contain NaN or inf: stage {j} produced "
                    "non-finite activations on the training data."
                )

        # ---- pass 2: distances, eq. 4 scales, per-stage exit arrays on the tuning data
        if same_tuning:
            y_tune_idx, w_tune = final_fit["y_idx"], w_fit
            y_tune_idx = inverse[y_tune_idx]
            final_tune = final_fit["final"]
            scores_src = (fit_src, cache, n_cached_from)
        else:
            y_tune_idx = inverse[labels(y_tune)]
            final_tune = None
            scores_src = (tune_src, None, M)
        t0 = time.perf_counter()
        with context():
            heads, conf, pred, final_idx = self._pass_tuning(
                adapter, means, stats, scores_src, w_tune, final_tune
            )
        self._fit_times["tuning pass"] = time.perf_counter() - t0
        if final_idx is not None:
            pred[:, -1] = final_idx
        correct = pred == y_tune_idx[:, None]
        del cache

        self.class_means_ = means
        self.distance_scale_ = [h.scale for h in heads]
        self._finish_fit(adapter, heads, stage_flops, conf, correct, w_tune, rng)
        return self

    # ------------------------------------------- one forward pass shared by many fits
    def _share_stage_outputs(self, X, y, sample_weight=None):
        """Run the stages once on every row of ``X`` for fits on subsets of its rows.

        Used by :class:`~sklearn_e2cm.FlopBudgetSearchCV`: when the stages
        are frozen (torch networks; scikit-learn stages that are all fitted,
        e.g. ``FrozenEstimator``), a row's stage vectors do not depend on the
        rows the class means are fitted on, so the folds and the refit all
        read them from this one pass (:meth:`_fit_shared`,
        :meth:`_exit_table_shared`) instead of running the stages again.

        Sets this estimator's input attributes (it is the refit template).
        Returns a :class:`_SharedStageOutputs`, or ``None`` (with the reason
        in ``self._share_reason``) when the stages are not frozen, the
        input is a DataLoader or the vectors need more than ``cache_size``.
        """
        adapter = self._make_adapter()
        X, y, sample_weight, streaming = self._validate_fit_input(adapter, X, y, sample_weight)
        if streaming:
            self._share_reason = "the input is a DataLoader"
            return None
        if not adapter.frozen:
            self._share_reason = "some stages are trained by fit (not fitted, not frozen)"
            return None
        labels = _LabelIndex(np.unique(y))
        self._fit_adapter(adapter, X, y, sample_weight, labels, streaming)
        n = len(y)
        need = float(sum(_row_bytes(adapter, len(labels.labels)))) * n
        if need > float(self.cache_size):
            self._share_reason = (
                f"the stage vectors of all rows need {need / 2**20:.0f} MiB, above "
                f"{float(self.cache_size) / 2**20:.0f} MiB (cache_size)")
            return None
        vectors = [[] for _ in range(adapter.n_stages)]  # one preallocated buffer per stage
        finals = []
        n_seen = 0
        with _activated(adapter):
            for items, _, nb in self._forward_source(
                    adapter, X, None, "E2CM stage outputs (shared)")():
                for j, F, idx in items:
                    _cache_rows(vectors, j, F, n_seen, n)
                    if idx is not None:
                        finals.append(idx)
                n_seen += nb
        vectors = [_all_rows(v, n_seen) for v in vectors]
        final = np.concatenate(finals) if finals else None
        self._share_reason = None
        shared = _SharedStageOutputs(adapter, vectors, final, np.asarray(labels.labels), y,
                                     sample_weight)
        _copy_input_attrs(self, shared)
        return shared

    def _fit_shared(self, shared, rows):
        """Fit on rows ``rows`` of a :meth:`_share_stage_outputs` pass: no stage runs.

        Equivalent to ``fit(X[rows], y[rows], sample_weight[rows])`` (same
        random draws, same batches), with the stage vectors read from
        ``shared``. The rows' labels must cover the shared classes.
        """
        rows = np.asarray(rows)
        y = shared.y[rows]
        w = None if shared.sample_weight is None else shared.sample_weight[rows]
        classes = np.unique(y)
        if not np.array_equal(classes, shared.classes):
            raise ValueError(
                f"The rows hold classes {classes.tolist()[:20]}, not the shared pass's "
                f"{shared.classes.tolist()[:20]}."
            )
        self._check_n_classes(classes)
        rng = check_random_state(self.random_state)
        fit_idx, tune_idx = self._calibration_split(y, rng, False)
        fit_rows, y_fit, w_fit = rows, y, w
        tune_src = y_tune = w_tune = None
        if tune_idx is not None:
            fit_rows, y_fit = rows[fit_idx], y[fit_idx]
            y_tune = y[tune_idx]
            if w is not None:
                w_fit, w_tune = w[fit_idx], w[tune_idx]
            tune_src = shared.source(rows[tune_idx], None, self.batch_size)
        _copy_input_attrs(shared, self)
        labels = _LabelIndex(classes)
        fit_src = shared.source(fit_rows, y_fit, self.batch_size)
        return self._fit_from_sources(shared.adapter, labels, False, fit_src, w_fit, tune_src,
                                      y_tune, w_tune, len(fit_rows), rng, cache_ok=False,
                                      context=shared.context)

    def _exit_table_shared(self, shared, rows, y=None, sample_weight=None):
        """:meth:`exit_table` of rows ``rows`` of a shared pass (no stage runs)."""
        check_is_fitted(self)
        with shared.context():
            preds, _, confs = self._staged_from(
                shared.source(np.asarray(rows), None, self.batch_size)())
        return self._table_from_staged(preds, confs, y, sample_weight)

    def _check_covariance_size(self, adapter):
        for j, D in enumerate(np.asarray(adapter.vector_dims_)):
            need = 8.0 * float(D) ** 2
            if need > self.max_covariance_bytes:
                raise ValueError(
                    f"metric='mahalanobis' at stage {j} needs a {D}x{D} covariance "
                    f"({need / 2**20:.0f} MiB), above max_covariance_bytes="
                    f"{self.max_covariance_bytes:.0f}. Reduce the stage vectors with pooling "
                    "(e.g. pooling='avg4' or ('avg', 2)) or raise max_covariance_bytes."
                )

    def _warn_final_width(self, adapter, n_classes):
        width = getattr(adapter, "n_outputs_", None)
        if self.final_classifier == "auto" and width is not None and width != n_classes:
            warnings.warn(
                f"The last stage outputs {width} scores but y has {n_classes} classes, so it is "
                "not used as the base model's classifier: the last stage decides by nearest "
                "class mean. Pass final_classifier=False to silence this, or check the labels.",
                UserWarning, stacklevel=3,
            )

    def _check_n_classes(self, classes):
        if len(classes) < 2:
            raise ValueError(
                f"EarlyExitClassMeans needs at least 2 classes; got 1 class: "
                f"{np.asarray(classes).tolist()}."
            )

    @staticmethod
    def _take(X, idx):
        if hasattr(X, "iloc"):
            return X.iloc[idx]
        return X[idx]

    def _check_torch_input(self, X, y, reset):
        """Validate torch-stage input: arrays/tensors or a DataLoader."""
        from .stages.torch import is_dataloader

        if is_dataloader(X):
            if y is not None:
                raise ValueError("y must be None when X is a DataLoader of (x, y) batches.")
            return X, None, True
        if "torch" in sys.modules:
            import torch

            if isinstance(X, torch.Tensor):
                Xn = X
            else:
                Xn = np.asarray(X, dtype=np.float32)
        else:
            Xn = np.asarray(X, dtype=np.float32)
        shape = tuple(Xn.shape[1:])
        if Xn.ndim < 2 or Xn.shape[0] < 1:
            raise ValueError(f"Expected an array of shape (n_samples, ...); got {tuple(Xn.shape)}.")
        finite = bool(np.isfinite(Xn).all()) if isinstance(Xn, np.ndarray) else bool(
            Xn.isfinite().all())
        if not finite:
            raise ValueError("Input X contains NaN or infinity.")
        if reset:
            self.input_shape_ = shape
            self.n_features_in_ = int(np.prod(shape))
        elif shape != self.input_shape_:
            raise ValueError(
                f"X has samples of shape {shape}, but {type(self).__name__} was fitted on "
                f"samples of shape {self.input_shape_}."
            )
        if y is not None:
            y = np.asarray(y.cpu() if hasattr(y, "cpu") else y)
            if y.shape[0] != Xn.shape[0]:
                raise ValueError(f"X has {Xn.shape[0]} samples but y has {y.shape[0]}.")
        return Xn, y, False

    def _batches(self, adapter, X, y, desc):
        it = adapter.batches(X, y, self.batch_size)
        return progress(it, self.verbose, desc)

    def _pass_statistics(self, adapter, source, w, labels, n_total, cache_ok):
        """Pass 1: stream batches, accumulate class sums, cache a suffix of stage vectors."""
        M = adapter.n_stages
        stats = [ClassStatsAccumulator(scatter=self.metric == "mahalanobis") for _ in range(M)]
        cache = [[] for _ in range(M)]
        y_all, final_all = [], []
        n_seen = 0
        budget = float(self.cache_size) if cache_ok else 0.0
        cached_from = M  # stages >= cached_from are cached (a suffix)
        used = 0.0
        for items, yb, n in source():
            if yb is None:
                raise ValueError("Training batches must carry labels: (x, y) pairs.")
            y_idx = labels(yb)
            wb = None if w is None else w[n_seen:n_seen + n]
            if n_seen == 0:  # decide which suffix of stages to cache from the first batch
                per_row = _row_bytes(adapter, len(labels.labels))
                total = n if n_total is None else n_total
                for j in range(M - 1, -1, -1):
                    need = per_row[j] * total
                    if used + need > budget:
                        break
                    used += need
                    cached_from = j
            for j, F, idx in items:  # one stage output alive at a time
                if idx is not None:
                    final_all.append(idx)
                stats[j].update(F, y_idx, wb)  # NaN/inf activations surface in the means
                if j >= cached_from:
                    _cache_rows(cache, j, F, n_seen, total)
                del F
            y_all.append(y_idx)
            n_seen += n
        if n_seen == 0:
            raise ValueError("X contains no samples.")
        for j in range(cached_from, M):
            cache[j] = [_all_rows(cache[j], n_seen)]
        final = np.concatenate(final_all) if final_all else None
        return stats, cache, {"y_idx": np.concatenate(y_all), "final": final}, cached_from

    @staticmethod
    def _n_total(X):
        """Number of rows of an array or of a DataLoader's dataset (None if unknown)."""
        try:
            return len(X.dataset)
        except (AttributeError, TypeError):
            pass
        try:
            return len(X)
        except TypeError:
            return None

    def _pass_tuning(self, adapter, means, stats, source, w, final_cached):
        """Pass 2 on the tuning data: heads (eq. 4 scales or whitening), exit arrays.

        Euclidean heads need the mean distance of the tuning samples to every
        class mean before they can give probabilities, so the distances are
        kept (n × K per stage) and turned into probabilities at the end.
        Whitened heads are complete after pass 1; their scores are kept.
        """
        batches, cache, cached_from = source
        M = adapter.n_stages
        whitened = self.metric == "mahalanobis"
        if whitened:
            heads, self.shrinkage_ = [], []
            for j in range(M):
                head, a = whitened_head(
                    means[j], stats[j].within_class_covariance(), self.shrinkage,
                    n_samples=stats[j].n_seen,
                )
                heads.append(head)
                self.shrinkage_.append(a)
        else:
            heads = [ExitHead(C, scale=None) for C in means]
        out = [[] for _ in range(M)]
        final_all = []

        def add(j, F):
            f = heads[j].scores if whitened else heads[j].distances
            out[j].append(adapter.to_numpy(f(F)))

        if cached_from > 0 or cache is None:
            n_run = M if cache is None else cached_from
            for items, _, _ in batches(n_run, final=n_run == M):
                for j, F, idx in items:
                    if idx is not None:
                        final_all.append(idx)
                    add(j, F)
                    del F
        if cache is not None:
            for j in range(cached_from, M):
                for F in cache[j]:
                    add(j, F)
                cache[j] = None  # free as we go
        if final_cached is not None:
            final_idx = final_cached
        else:
            final_idx = np.concatenate(final_all) if final_all else None
        conf, pred = [], []
        for j in range(M):
            values = np.concatenate(out[j])
            out[j] = None
            if whitened:
                P = softmax(values)
            else:
                heads[j], P = normalized_head(means[j], values, self.normalize, w)
            conf.append(P.max(axis=1))
            pred.append(P.argmax(axis=1))
        return heads, np.column_stack(conf), np.column_stack(pred), final_idx

class _SharedStageOutputs:
    """Stage vectors of every row of a data set, computed in one forward pass.

    ``vectors[j]`` holds stage ``j``'s vectors (backend arrays, rows in the
    data's order); for a chain ending in a classifier the last entry holds
    the base model's probabilities and ``final`` its class indices.
    :meth:`source` serves any subset of rows as the batches a forward pass
    over those rows would have produced.
    """

    def __init__(self, adapter, vectors, final, classes, y, sample_weight):
        self.adapter = adapter
        self.vectors = vectors
        self.final = final
        self.classes = classes
        self.y = np.asarray(y)
        self.sample_weight = sample_weight
        self.n_samples = self.y.shape[0]

    @property
    def nbytes(self):
        return int(sum(nbytes(V) for V in self.vectors))

    def context(self):
        """Context for computing on the cached vectors: no stage runs, so the network's
        modes and devices are left alone (folds may run in threads); torch work runs under
        ``inference_mode`` (thread-local)."""
        if self.adapter.backend == "torch":
            import torch

            return torch.inference_mode()
        return contextlib.nullcontext()

    def source(self, rows, y, batch_size):
        """Generator factory over ``rows`` in batches of ``batch_size`` (see ``_forward_source``)."""
        rows = np.asarray(rows)
        n = rows.shape[0]
        bs = int(batch_size or n or 1)
        adapter = self.adapter
        M = adapter.n_stages

        def items(r, n_run, final):
            for j in range(n_run):
                if self.final is not None and j == M - 1:
                    if final:
                        yield j, adapter.take(self.vectors[j], r), self.final[r]
                    else:
                        yield j, None, None
                else:
                    yield j, adapter.take(self.vectors[j], r), None

        def source(n_run=None, final=True):
            n_run = M if n_run is None else n_run
            for start in range(0, n, bs):
                r = rows[start:start + bs]
                yield (items(r, n_run, final), None if y is None else y[start:start + bs],
                       r.shape[0])

        return source


class _RowBuffer:
    """Rows of a stage's vectors written into one buffer allocated up front.

    One allocation per cached stage instead of one per batch: long-lived
    per-batch chunks between the transient activation buffers fragment the
    heap, and the resident size of a fit then grows by a varying amount.
    """

    def __init__(self, like, n_rows):
        shape = (n_rows, like.shape[1])
        if is_torch(like):
            import torch

            self.data = torch.empty(shape, dtype=like.dtype, device=like.device)
        else:
            self.data = np.empty(shape, dtype=like.dtype)
        self.n_rows = n_rows

    def rows(self, n):
        return self.data[:n]


def _cache_rows(cache, j, F, start, total):
    """Store batch ``F`` (rows ``start:``) of stage ``j`` in the pass-1 cache."""
    n = F.shape[0]
    entry = cache[j]
    if isinstance(entry, list) and not entry and start == 0:
        entry = cache[j] = _RowBuffer(F, total)
    if isinstance(entry, _RowBuffer):
        if start + n <= entry.n_rows:
            entry.data[start:start + n] = F
            return
        entry = cache[j] = [entry.rows(start)]  # more rows than announced: chunks from here
    entry.append(F)


def _all_rows(entry, n):
    """The first ``n`` rows stored by :func:`_cache_rows` as one array."""
    if isinstance(entry, _RowBuffer):
        return entry.rows(n)
    if len(entry) == 1:
        return entry[0]
    return concat(entry, axis=0)


def _row_bytes(adapter, n_classes):
    """Bytes per row of every stage's vector (the base model's probabilities last for a
    chain ending in a classifier)."""
    widths = [int(d) for d in np.asarray(adapter.vector_dims_)]
    if adapter.final_is_classifier:
        widths[-1] = int(getattr(adapter, "n_outputs_", None) or n_classes)
    itemsize = 4 if adapter.backend == "torch" else 8
    return [d * itemsize for d in widths]


#: Input attributes a fit sets (copied between a shared pass and the fits it serves).
_INPUT_ATTRS = ("n_features_in_", "feature_names_in_", "input_shape_")


def _copy_input_attrs(src, dst):
    for name in _INPUT_ATTRS:
        if hasattr(src, name):
            setattr(dst, name, getattr(src, name))


def _activated(adapter):
    """The adapter's inference context (eval mode, device, inference_mode) if it has one."""
    ctx = getattr(adapter, "activate", None)
    return ctx() if ctx is not None else contextlib.nullcontext()
