"""What every early-exit estimator shares once its exit heads are fitted.

:class:`EarlyExitBase` holds the cost model, the operating point, routed
inference and the per-stage outputs. A subclass's ``fit`` builds a stage
adapter and one exit head per stage, computes the tuning rows' exit arrays
and calls :meth:`EarlyExitBase._finish_fit`; a subclass provides the
parameters ``flops_target``, ``thresholds``, ``threshold_search``,
``sweep_resolution`` (and its deprecated name ``n_targets``), ``batch_size``,
``non_finite`` and ``verbose``.

The functions below the class are the documented way for other modules
(the search, the display) to read what a fit produced: the tuning table,
the sweep seed, the per-row time-sharing uniforms, and to serve an
operating point from a sweep they ran.
"""

import functools
import time
from functools import partial

import numpy as np
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from ._backend import progress, renamed_param, to_numpy, warn
from ._fitting.inputs import validate_predict_input
from ._fitting.operating_point import OperatingPointSpec, choose_operating_point
from ._fitting.passes import collect_stage_outputs
from ._routing import batch_uniforms, decide, iter_stages, route
from ._thresholds import ExitTable, cumulative_cost

__all__ = [
    "EarlyExitBase",
    "transactional",
    "tuning_table_of",
    "sweep_seed_of",
    "sweep_resolution_of",
    "routing_uniforms",
    "serve_from_sweep",
    "exit_table_from_source",
]


def _snapshot(est):
    """The estimator's attributes (parameters and fitted state), containers copied one level.

    Fits and operating-point changes rebind attributes; the few dicts and
    lists they fill in place (``_fit_times``) are copied so that restoring
    the snapshot restores their content too.
    """
    state = dict(vars(est))
    for key, value in state.items():
        if type(value) in (dict, list):
            state[key] = type(value)(value)
    return state


def _restore(est, state):
    vars(est).clear()
    vars(est).update(state)


def transactional(method):
    """Make ``method`` all-or-nothing on its estimator.

    The estimator's attributes, parameters and fitted state alike, are
    snapshotted before the call; when the call raises (any exception, also
    ``KeyboardInterrupt``), they are put back exactly (the same objects), so
    a failed ``fit`` or ``set_operating_point`` leaves the estimator as it
    was: its ``classes_``, ``n_features_in_``, heads and thresholds, and
    ``get_params()``. A successful call keeps whatever it set.

    Parameters
    ----------
    method : callable
        A method whose first argument is the estimator.

    Returns
    -------
    wrapped : callable
        Same signature and docstring.

    Examples
    --------
    >>> class Counter:
    ...     n = 0
    ...     @transactional
    ...     def bump(self, fail):
    ...         self.n += 1
    ...         if fail:
    ...             raise ValueError("no")
    >>> c = Counter()
    >>> c.bump(False)
    >>> try:
    ...     c.bump(True)
    ... except ValueError:
    ...     pass
    >>> c.n
    1
    """
    if getattr(method, "_e2cm_transactional", False):
        return method

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        state = _snapshot(self)
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            _restore(self, state)
            raise

    wrapped._e2cm_transactional = True
    return wrapped


class EarlyExitBase:
    """Cost model, operating point and routed inference of a fitted early-exit estimator.

    A subclass's ``fit``, ``partial_fit``, ``finalize`` and
    ``set_operating_point`` are made :func:`transactional` when the class is
    defined: a call that raises leaves the estimator exactly as it was.
    """

    #: What the tuning table's score measures (names the ``tradeoff_`` score column).
    _score_name = "accuracy"

    #: Methods of every subclass wrapped by :func:`transactional`.
    _transactional_methods = ("fit", "partial_fit", "set_operating_point", "finalize")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls._transactional_methods:
            method = cls.__dict__.get(name)
            if callable(method):
                setattr(cls, name, transactional(method))

    def _finish_fit(self, adapter, heads, stage_flops, conf, correct, sample_weight, rng):
        """Set the cost model and the operating point from the tuning rows' exit arrays.

        Parameters
        ----------
        adapter : StageAdapter
            Fitted; kept for inference.
        heads : list
            One exit head per stage (``None`` where the base model decides).
        stage_flops : ndarray of shape (n_stages,)
        conf : ndarray of shape (n_tune, n_stages)
            Exit confidence of every tuning row at every stage.
        correct : ndarray of bool, shape (n_tune, n_stages)
        sample_weight : ndarray or None
        rng : RandomState
            Draws the sweep and routing seeds.

        Returns
        -------
        table : ExitTable
            The tuning table.
        """
        conf = np.asarray(conf)
        finite = np.isfinite(conf).all(axis=0)
        if not finite.all():
            j = int(np.argmin(finite))
            raise ValueError(
                f"The exit confidence of stage {j} is NaN or infinite on "
                f"{int((~np.isfinite(conf[:, j])).sum())} tuning rows: its exit head (or a "
                "tuning score) overflows on this data. Check the stage outputs' scale.")
        self._set_exit_heads(adapter, heads, stage_flops)
        table = ExitTable(conf, correct, self.stage_flops_, self.exit_flops_,
                          not adapter.final_is_classifier, sample_weight)
        self._tuning_table = table
        self._warn_if_tuning_rows_look_easy(table)
        if not hasattr(self, "_fit_times"):
            self._fit_times = {}
        # both seeds are drawn before any search, whatever the operating point: a fit at
        # any flops_target (or none) gets the same ones, so a search over targets
        # (FlopBudgetSearchCV) reproduces what each fit would do
        self._sweep_seed, self._routing_seed = (
            int(v) for v in rng.randint(np.iinfo(np.int32).max, size=2))
        t0 = time.perf_counter()
        self._apply_operating_point(table)
        self._fit_times["threshold search"] = time.perf_counter() - t0
        return table

    def _warn_if_tuning_rows_look_easy(self, table, tolerance=0.005, max_cost=0.5):
        """Warn when, on the training rows, a cheap early exit is nearly perfect, as the full model.

        Thresholds tuned on rows the network has fitted then send far too many
        new samples out early; a held-out ``calibration`` fraction avoids it.
        """
        if (getattr(self, "calibration", 0) is not None or self.flops_target is None
                or self.thresholds is not None or self._score_name != "accuracy"
                or table.n_stages < 2):
            return
        correct = table.correct.astype(np.float64)
        acc = (correct.mean(axis=0) if table.weights is None else table.weights @ correct)
        cheap = np.flatnonzero((acc[:-1] >= acc[-1] - tolerance) & (acc[:-1] >= 0.99)
                               & (self.cumulative_cost_[:-1] <= max_cost))
        if cheap.size:
            j = int(cheap[0])
            warn(
                f"On the tuning rows (the training data, calibration=None) the exit after stage "
                f"{j}, at {self.cumulative_cost_[j]:.3f} of the FLOPs, is "
                f"{'more accurate than' if acc[j] > acc[-1] else 'as accurate as'} the full model "
                f"({acc[j]:.4f} against {acc[-1]:.4f}): the exits fit these rows, so "
                "thresholds tuned on them send too many new samples out early. Pass "
                "calibration=0.2 (or a number of rows) to tune them on held-out rows.")

    def _set_exit_heads(self, adapter, heads, stage_flops):
        """Keep the adapter and the exit heads; set the cost model (no operating point)."""
        M = adapter.n_stages
        self.exit_flops_ = np.array([
            0.0 if (j == M - 1 and adapter.final_is_classifier)
            else heads[j].flops() + float(adapter.vector_flops_[j])
            for j in range(M)
        ])
        self.stage_flops_ = np.asarray(stage_flops, dtype=np.float64)
        self.n_stages_ = M
        self._heads = heads
        self._adapter = adapter
        self.cumulative_cost_ = cumulative_cost(self.stage_flops_, self.exit_flops_,
                                                np.ones(M - 1, bool),
                                                not adapter.final_is_classifier)

    def _serve_base_model(self):
        """Operating point of the base model without tuning rows: every head off.

        Used before thresholds can be tuned (``partial_fit`` before ``finalize``):
        every sample runs to the last stage; the tuning-table statistics
        (``expected_accuracy_``, ``tradeoff_``) are unknown (NaN, None).
        """
        M1 = self.n_stages_ - 1
        T = np.ones((1, M1))
        self.mixture_thresholds_ = T
        self.mixture_weights_ = np.array([1.0])
        self.thresholds_ = T[0].copy()
        self._mixture_costs = cumulative_cost(self.stage_flops_, self.exit_flops_, T < 1.0,
                                              not self._adapter.final_is_classifier)
        self.expected_flops_ = float(self._mixture_costs[0, -1])
        self.expected_accuracy_ = float("nan")
        self.tradeoff_ = None
        self._tuning_table = None
        self._sweep_seed = self._routing_seed = 0  # one mixture component: never drawn
        self._update_memory_overhead()

    def _operating_point_spec(self):
        return OperatingPointSpec(
            flops_target=self.flops_target, thresholds=self.thresholds,
            threshold_search=self.threshold_search,
            sweep_resolution=sweep_resolution_of(self),
            sweep_seed=self._sweep_seed, verbose=self.verbose, score_name=self._score_name)

    def _apply_operating_point(self, table, swept=None):
        point = choose_operating_point(table, self._operating_point_spec(), swept)
        self.mixture_thresholds_ = point.mixture_thresholds
        self.mixture_weights_ = point.mixture_weights
        self.thresholds_ = point.thresholds
        self._mixture_costs = point.mixture_costs
        self.expected_flops_ = point.expected_flops
        self.expected_accuracy_ = point.expected_score
        self.tradeoff_ = point.tradeoff
        self._update_memory_overhead()

    @transactional
    def set_operating_point(self, flops_target=None, thresholds=None):
        """Choose a new operating point from the cached tuning arrays (no forward pass).

        Equivalent to ``set_params(flops_target=..., thresholds=...)`` followed
        by a refit, without recomputing the exits or running any stage: only
        the threshold search runs again.

        Parameters
        ----------
        flops_target : float in (0, 1] or None, default=None
            Expected normalised cost; ``None``: the base model.
        thresholds : array-like of shape (n_stages - 1,) or None, default=None
            Explicit thresholds (override ``flops_target``).

        Returns
        -------
        self : object
            The estimator, with the new operating point.
        """
        check_is_fitted(self)
        table = getattr(self, "_tuning_table", None)
        if table is None:
            raise RuntimeError(
                "The tuning arrays are not available (they are not pickled, and partial_fit "
                "drops them until finalize tunes the thresholds again); refit with "
                "set_params(flops_target=...) or call finalize instead."
            )
        self.set_params(flops_target=flops_target, thresholds=thresholds)
        self._validate_params()
        self._apply_operating_point(table)
        return self

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never alter the live estimator
        state.pop("_tuning_table", None)  # per-sample tuning arrays: not needed to predict
        if state.get("tradeoff_") is not None:  # plain columns: skops.io cannot store pandas
            frame = state["tradeoff_"]
            state["tradeoff_"] = {"columns": [str(c) for c in frame.columns], "values": [
                list(frame[c]) if frame[c].dtype == object else frame[c].to_numpy()
                for c in frame.columns]}
        return state

    def __setstate__(self, state):
        state = dict(state)
        if isinstance(state.get("tradeoff_"), dict):  # written by __getstate__ above
            import pandas as pd

            t = state["tradeoff_"]
            state["tradeoff_"] = pd.DataFrame(
                {c: pd.Series(v, dtype=object) if isinstance(v, list) else v
                 for c, v in zip(t["columns"], t["values"])}, columns=list(t["columns"]))
        super().__setstate__(state)

    def _update_memory_overhead(self):
        """Bytes held for the exits: every exit head's arrays as stored, and the thresholds.

        Every head is held whether the operating point uses it or not
        (:meth:`set_operating_point` may use any), so all are counted, with
        their copies on the stages' device.
        """
        total = self.mixture_thresholds_.nbytes + self.mixture_weights_.nbytes
        total += sum(head.nbytes(None) for head in self._heads if head is not None)
        self.memory_overhead_bytes_ = int(total)

    # ------------------------------------------------------------- inference
    def _validate_X(self, X):
        check_is_fitted(self)
        return validate_predict_input(self, self._adapter.backend, X)

    def route(self, X):
        """Route every sample through the stages with early exits (one pass).

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.

        Returns
        -------
        result : RoutingResult
            Per sample: ``y_pred`` (labels), ``exit_stage`` (0-based stage it
            left after), ``flops`` (normalised cost it paid) and ``proba``
            (probabilities of the exit that decided it).
        """
        X = self._validate_X(X)
        return self._route(X, return_proba=True)

    def _route(self, X, return_proba=False):
        adapter = self._adapter
        with adapter.activate():
            res = route(
                adapter, self._heads, self.mixture_thresholds_, self.mixture_weights_,
                self._mixture_costs, X, batch_size=self.batch_size,
                seed=self._routing_seed, return_proba=return_proba,
                progress=partial(progress, verbose=self.verbose > 1, desc="E2CM predict"),
                non_finite=self.non_finite,
            )
        self._update_memory_overhead()  # the heads may now hold copies on the stages' device
        res.y_pred = self.classes_[res.y_pred]
        return res

    def predict(self, X):
        """Predicted class of each sample, with early exits.

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The class chosen by the exit each sample left at.
        """
        X = self._validate_X(X)
        return self._route(X).y_pred

    def predict_proba(self, X):
        """Class probabilities of the exit that decided each sample.

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            The deciding exit head's probabilities (the base model's own at the
            end of a chain ending in a classifier), columns in ``classes_`` order.
        """
        X = self._validate_X(X)
        return self._route(X, return_proba=True).proba

    def _stage_source(self, X):
        adapter = self._adapter

        def source():
            for Xb, _ in adapter.batches(X, None, self.batch_size):
                yield iter_stages(adapter, Xb), None, adapter.n_rows(Xb)

        return source

    def _staged_outputs(self, batches):
        """Per-stage predictions, probabilities and exit confidences of every row."""
        adapter = self._adapter

        def outputs(j, F, idx):
            if idx is not None:  # the base model's own output
                P = to_numpy(F)
                return (np.asarray(idx), np.asarray(P, dtype=np.float64),
                        np.asarray(P.max(axis=1), dtype=np.float64))
            P, idx, conf = decide(adapter, self._heads[j], F)
            return (np.asarray(idx), np.asarray(to_numpy(P), dtype=np.float64),
                    np.asarray(conf, dtype=np.float64))

        per_stage = collect_stage_outputs(batches, outputs, self.n_stages_)
        return tuple([s[k] for s in per_stage] for k in range(3))

    def _staged(self, X):
        with self._adapter.activate():
            out = self._staged_outputs(self._stage_source(X)())
        self._update_memory_overhead()  # the heads may now hold copies on the stages' device
        return out

    def exit_table(self, X, y=None, sample_weight=None):
        """Per-stage exit arrays of this fitted estimator on new data (one forward pass).

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.
        y : array-like of shape (n_samples,) or None, default=None
            True labels: the table's score is accuracy. ``None``: the score is
            agreement with the base model's (final exit's) prediction, which
            needs no labels.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        table : ExitTable
            Cached exit confidence and correctness of every sample at every
            stage, with this estimator's cost model; threshold vectors are
            evaluated and searched on it without running any stage. It also
            keeps the class index predicted at every stage
            (``table.pred_labels``, labels in ``table.classes``) so routed
            predictions can be rebuilt for any threshold vector
            (``table.predict_indices(T)``).
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

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.

        Yields
        ------
        y_pred : ndarray of shape (n_samples,)
            One array per stage, in stage order; the last one is the base
            model's prediction when the model ends in a classifier.
        """
        X = self._validate_X(X)
        preds, _, _ = self._staged(X)
        for p in preds:
            yield self.classes_[p]

    def staged_predict_proba(self, X):
        """Exit probabilities of every stage for every sample (no early exit).

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.

        Yields
        ------
        proba : ndarray of shape (n_samples, n_classes)
            One array per stage, in stage order.
        """
        X = self._validate_X(X)
        _, probas, _ = self._staged(X)
        yield from probas


# ----------------------------------------------------------------- seams for other modules
def sweep_resolution_of(est):
    """The FLOP-target grid size an estimator's sweep uses, or ``None``.

    ``sweep_resolution``, or the value given under its deprecated name
    ``n_targets`` (with a ``FutureWarning``); ``None`` for an estimator that
    has neither parameter.

    Parameters
    ----------
    est : estimator

    Returns
    -------
    n : int or None
    """
    params = est.get_params(deep=False)
    if "sweep_resolution" not in params:
        return None
    if "n_targets" not in params:
        return int(params["sweep_resolution"])
    return int(renamed_param(est, "n_targets", "sweep_resolution", 1000))


def tuning_table_of(est):
    """The exit table a fitted early-exit estimator tuned its thresholds on.

    Parameters
    ----------
    est : estimator

    Returns
    -------
    table : ExitTable or None
        ``None`` for an estimator that is not an :class:`EarlyExitBase`, or
        whose tuning arrays were dropped (by pickling).
    """
    return getattr(est, "_tuning_table", None) if isinstance(est, EarlyExitBase) else None


def sweep_seed_of(est, default):
    """The seed a fitted early-exit estimator's own sweep used, else ``default``.

    Parameters
    ----------
    est : estimator
    default : int

    Returns
    -------
    seed : int
    """
    if isinstance(est, EarlyExitBase) and hasattr(est, "_sweep_seed"):
        return int(est._sweep_seed)
    return default


def routing_uniforms(est, X):
    """The time-sharing uniform that ``est.route`` draws for each row of ``X``.

    Time sharing sends a row to the mixture's threshold vector
    ``assign_rows(u, mixture_weights_)``; callers that rebuild routed results
    from exit tables use this to reproduce the same assignment.

    Parameters
    ----------
    est : fitted estimator
    X : input of ``est.predict``

    Returns
    -------
    u : ndarray of shape (n_samples,) or None
        ``None`` for an estimator that is not an :class:`EarlyExitBase`.
    """
    if not isinstance(est, EarlyExitBase):
        return None
    X = est._validate_X(X)
    adapter = est._adapter
    parts = [batch_uniforms(adapter, Xb, est._routing_seed)
             for Xb, _ in adapter.batches(X, None, est.batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0)


def serve_from_sweep(est, table, swept):
    """Set a fitted estimator's operating point from a sweep run on its tuning table.

    Parameters
    ----------
    est : EarlyExitBase
        Fitted, with the wanted ``flops_target`` set.
    table : ExitTable
        Its tuning table.
    swept : tuple or None
        ``(targets, thresholds, costs, scores)`` as
        :func:`~sklearn_e2cm._thresholds.sweep_with_extremes` returns; ``None``
        runs the estimator's own search.
    """
    est._apply_operating_point(table, swept)


def exit_table_from_source(est, source, context, y=None, sample_weight=None):
    """:meth:`EarlyExitBase.exit_table` of the rows a source serves (no validation).

    Parameters
    ----------
    est : EarlyExitBase
        Fitted.
    source : callable
        A source of stage vectors (e.g.
        :meth:`SharedStageOutputs.source <sklearn_e2cm._fitting.shared.SharedStageOutputs.source>`).
    context : callable
        Factory of the context to compute in.
    y, sample_weight : as for :meth:`EarlyExitBase.exit_table`

    Returns
    -------
    table : ExitTable
    """
    check_is_fitted(est)
    with context():
        preds, _, confs = est._staged_outputs(source())
    return est._table_from_staged(preds, confs, y, sample_weight)
