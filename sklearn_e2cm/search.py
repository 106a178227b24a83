"""FlopBudgetSearchCV: the whole accuracy–FLOPs curve from one fit per fold.

:class:`~sklearn.model_selection.GridSearchCV` over ``flops_target`` fits the
estimator once per target and fold. The operating points of an early-exit
estimator do not need that: once the class means of a fold are fitted, every
threshold vector is evaluated on cached per-stage arrays
(:class:`~sklearn_e2cm._thresholds.ExitTable`) without running a stage, so
a sweep of a thousand targets costs about as much as one fit.
"""

import numbers
import time
import warnings
from copy import deepcopy
from functools import partial

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import (
    BaseEstimator,
    MetaEstimatorMixin,
    _fit_context,
    clone,
    is_classifier,
)
from sklearn.model_selection import check_cv
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Hidden, Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, indexable

from ._backend import DEPRECATED, log, progress, warn
from ._exit_estimator import serve_from_sweep, sweep_seed_of, transactional
from ._search_folds import (
    evaluation_table,
    fit_estimator,
    format_results,
    operating_points,
    reset_operating_params,
    run_fold,
    scored_sweep,
    serve_targets,
    tuning_grid,
    tuning_table,
)
from ._scoring import check_targets, resolve_scoring
from ._thresholds import SEARCH_METHODS, mixture_values, served_hull, upper_hull
from .early_exit import EarlyExitClassMeans, fit_on_shared_rows, share_stage_outputs

__all__ = ["FlopBudgetSearchCV"]

#: Default threshold search of :class:`FlopBudgetSearchCV`. The coordinate
#: optimiser's held-out hull is better on average (+0.25 to +0.33 points) but
#: not at every single target (worst -0.0013, within noise; see
#: ``benchmarks/results/search.md``), so by the rule "the stronger optimiser
#: becomes the default only if its held-out hull is at least as good
#: everywhere" the paper's bisection stays the default.
DEFAULT_METHOD = "coordinate"


class FlopBudgetSearchCV(MetaEstimatorMixin, BaseEstimator):
    """Accuracy–FLOPs trade-off of an early-exit estimator over many FLOP targets.

    Fits the estimator's class means once per fold and sweeps every FLOP
    target on cached per-stage arrays, so a grid of a thousand targets costs
    about one fit per fold instead of one per target and fold as in
    :class:`~sklearn.model_selection.GridSearchCV` over ``flops_target``.
    For each fold, the thresholds of every target are tuned on the fold's
    training part exactly as the estimator's own ``fit`` would (its tuning
    data: the training data, or its ``calibration`` split), the upper
    concave hull of the swept (cost, score) points is kept, and each target
    is served by time sharing between the two hull vertices around it; that
    operating point is then scored on the held-out part. The per-target rows
    of :attr:`cv_results_` are therefore what
    ``estimator.set_params(flops_target=t)`` would achieve on unseen data.

    Parameters
    ----------
    estimator : early-exit estimator
        An :class:`~sklearn_e2cm.EarlyExitClassMeans` (or another estimator
        with ``exit_table``, ``flops_target`` and ``thresholds``, such as
        :class:`~sklearn_e2cm.DECEarlyExit`). Its ``flops_target`` and
        ``thresholds`` are ignored: the search sets them.
    flops_targets : int or array-like of float in (0, 1], default=1000
        An int: that many targets evenly spaced over (0, 1]
        (``1/n, 2/n, ..., 1``). An array: the targets themselves
        (normalised FLOPs; the base model costs 1).
    cv : None, int, cross-validation generator, iterable or "prefit", default=None
        ``None``: tune and score on the training data, as the paper does
        (no held-out estimate; one fit). An int or a splitter: out-of-fold
        estimates (stratified k-fold for classifiers, as in
        :func:`~sklearn.model_selection.check_cv`). ``"prefit"``: the
        estimator is already fitted (e.g. the class means were fitted
        elsewhere); only the thresholds are tuned, on the data passed to
        :meth:`fit`, which may be unlabelled with ``scoring="agreement"``.
    scoring : None, str or callable, default=None
        ``"accuracy"`` (needs ``y``), ``"agreement"`` (agreement with the
        base model's own prediction: label-free, so thresholds can be
        calibrated on unlabelled data), the name of a scikit-learn scorer of
        predicted labels (``"balanced_accuracy"``, ``"f1_macro"``, ...), a
        scorer made with :func:`~sklearn.metrics.make_scorer`, or a callable
        ``metric(y_true, y_pred) -> float`` (greater is better; e.g.
        :func:`sklearn_e2cm.metrics.clustering_accuracy` for
        :class:`~sklearn_e2cm.DECEarlyExit`). Metrics that are not a mean of
        per-sample terms are evaluated on predictions rebuilt from cached
        per-stage predictions; the threshold search itself optimises
        accuracy (classifiers given ``y``) or agreement. ``None``:
        ``"accuracy"`` for classifiers, ``"agreement"`` otherwise.
    max_flops : float > 0 or None, default=None
        Selection: the best mean score among the targets whose mean
        held-out cost (normalised FLOPs, the base model costs 1) is at most
        ``max_flops`` (ties go to the cheaper one, then to the target closest
        to its served cost). ``None``: the best mean score overall. Not a
        target: every target of ``flops_targets`` is still evaluated.
    method : {"bisect", "coordinate"} or None, default=None
        Threshold search (see :func:`sklearn_e2cm._thresholds.sweep`):
        ``"coordinate"`` is exact coordinate ascent on ``score - λ·cost``
        along a path of ``λ``; ``"bisect"`` is the paper's random start and
        alternating bisection per target. ``None``: the estimator's own
        (``"bisect"`` when its ``threshold_search`` is ``"bisect-hull"`` or
        ``"bisect"``, else ``"coordinate"``); the refitted estimator searches
        the same way.
    refit : bool or callable, default=True
        Fit :attr:`best_estimator_` on the whole data with the selected
        operating point. It is tuned on the whole data's tuning table with
        the same sweep and hull, and serves the selected target exactly (its
        ``expected_flops_`` is that target unless the hull ends below it).
        With ``cv=None`` or ``"prefit"`` the estimator fitted for the search
        is reused: nothing is fitted twice. A callable, as in
        :class:`~sklearn.model_selection.GridSearchCV`, selects the row
        itself: it receives :attr:`cv_results_` and returns the index of the
        chosen row (``max_flops`` must then be ``None``); the estimator is
        refitted at that row.
    n_jobs : int, default=None
        Folds run in parallel with joblib (``None``: 1, ``-1``: all cores).
    verbose : int, default=0
        Progress over the folds (and the sweep with ``cv=None``) when
        positive.
    random_state : int, RandomState instance or None, default=None
        Used when the estimator's own ``random_state`` is None: the folds
        and the refit then all get one seed drawn from this one (as with an
        estimator given an int), so results are reproducible. An estimator
        with its own seed keeps it, and every fold sweeps with the seed its
        own ``fit`` would use. Results do not depend on ``n_jobs``.
    return_train_score : bool, default=False
        Also report the cost and score of each target on the tuning data.
    share_stage_outputs : "auto" or bool, default="auto"
        With ``cv``, run the stages once on all the data and let every fold
        and the refit read their stage vectors from that pass, instead of
        one forward pass per fold. Valid when the stages are frozen (a torch
        network, or scikit-learn stages that are all fitted, e.g. wrapped in
        :class:`~sklearn.frozen.FrozenEstimator`), since a row's stage
        outputs then do not depend on the fold. ``"auto"``: share when the
        stages are frozen, every training fold holds every class and the
        vectors fit in the estimator's ``cache_size`` bytes (otherwise one pass
        per fold, with a note in :attr:`share_reason_`). ``True``: share or
        raise. ``False``: never. Results agree with unshared folds up to
        floating-point rounding of batched products.

    budget : float > 0 or callable
        Deprecated (renamed in 0.2.0, removed in 0.4.0): a float is
        ``max_flops``, a callable is ``refit``.

    Attributes
    ----------
    cv_results_ : dict of ndarray
        One row per FLOP target, with scikit-learn's search conventions
        (``pd.DataFrame(search.cv_results_)`` reads naturally):
        ``param_flops_target``, ``params``, ``split{k}_test_score``,
        ``mean_test_score``, ``std_test_score``, ``rank_test_score``,
        ``split{k}_test_flops``, ``mean_test_flops``, ``std_test_flops``
        (the served operating point's expected normalised cost on the
        held-out part), ``on_pareto_front``, ``mean_fit_time``,
        ``std_fit_time``, ``mean_score_time``, ``std_score_time`` (per fold;
        one fit serves every target, so these are shared by all rows), and
        with ``return_train_score`` the ``*_train_score`` / ``*_train_flops``
        keys. Each fold builds its hull as the estimator's own ``fit``
        does (its ``n_targets`` grid, search and seed) and serves every
        target from it; held-out scores and costs are those of the routed
        predictions the fitted estimator would make (time sharing assigns
        each held-out row to one vertex by the hash of its content, as
        :meth:`route` does). For an estimator with an int ``random_state``
        and accuracy scoring, each row therefore equals what
        :class:`~sklearn.model_selection.GridSearchCV` over ``flops_target``
        reports on the same splits, and a grid that contains
        ``GridSearchCV``'s targets can only select an equal or better
        cross-validated score at a budget. An estimator with
        ``threshold_search="bisect"`` (one search per target, no hull) has
        each target served by its own swept point, which is the point its
        ``fit`` finds. ``cv=None`` and the ``*_train_*`` keys report the
        tuning data's expected values (mixture weights times the
        vertices').
    best_index_ : int
    best_params_ : dict
        ``{"flops_target": t}``.
    best_score_ : float
    best_flops_ : float
        Mean held-out cost of the selected row.
    best_estimator_ : estimator
        Fitted on all the data with the selected operating point (when
        ``refit``).
    pareto_front_ : pandas.DataFrame
        The upper concave hull of the trade-off: with ``cv`` the hull of the
        cross-validated (``mean_test_flops``, ``mean_test_score``) curve,
        one row per hull vertex (a target); with ``cv=None``/``"prefit"`` the
        hull vertices of the tuning data. Columns ``flops_target``,
        ``flops``, ``score`` (and ``accuracy`` when scoring is accuracy),
        ``std_flops``, ``std_score``, ``thresholds`` (the threshold vectors,
        shape (V, n_stages - 1), that the final estimator serves the row
        with; ``None`` without refit under ``cv``) and ``weights`` (their
        time-sharing weights).
    base_flops_, base_score_ : float
        Mean cost and score of the base model (no early exit) on the
        held-out parts (tuning data for ``cv=None``).
    n_splits_ : int
    method_ : str
        The threshold search used (``method``, or the estimator's own).
    shared_stage_outputs_ : bool
        Whether the folds read their stage vectors from one shared forward pass.
    share_reason_ : str or None
        Why the forward pass was not shared (``None`` when it was, or with
        ``cv=None``/``"prefit"``).
    swept_points_ : tuple of ndarray or None
        With ``cv=None`` or ``"prefit"``: ``(flops, score)`` of every swept
        threshold vector on the tuning data (what :meth:`plot` draws as
        points); ``None`` with cross-validation.
    refit_time_ : float
        Seconds to fit and tune :attr:`best_estimator_`.
    scorer_ : str
        Name of the scoring used.

    See Also
    --------
    sklearn_e2cm.TradeoffDisplay : plot the trade-off (:meth:`plot`).
    sklearn.model_selection.GridSearchCV : one fit per target and fold.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.decomposition import PCA
    >>> from sklearn.kernel_approximation import Nystroem
    >>> from sklearn.frozen import FrozenEstimator
    >>> from sklearn.linear_model import RidgeClassifier
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_e2cm import EarlyExitClassMeans, FlopBudgetSearchCV
    >>> X, y = load_digits(return_X_y=True)
    >>> net = make_pipeline(StandardScaler(), PCA(24, random_state=0),  # the trained model
    ...                     Nystroem(n_components=200, random_state=0), RidgeClassifier()).fit(X, y)
    >>> net = FrozenEstimator(net)  # clones keep it trained: only class means are fitted
    >>> search = FlopBudgetSearchCV(EarlyExitClassMeans(stages=net), flops_targets=200,
    ...                             cv=3, max_flops=0.3, random_state=0).fit(X, y)
    >>> len(search.cv_results_["mean_test_score"])
    200
    >>> search.best_flops_ <= 0.3  # mean held-out cost of the selected target
    True
    >>> abs(search.best_estimator_.expected_flops_ - search.best_params_["flops_target"]) < 1e-9
    True
    >>> search.pareto_front_.columns.tolist()[:4]
    ['flops_target', 'flops', 'score', 'accuracy']
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit", "exit_table"])],
        "flops_targets": [Interval(numbers.Integral, 1, None, closed="left"), "array-like"],
        "cv": ["cv_object", StrOptions({"prefit"})],
        "scoring": [StrOptions({"accuracy", "agreement"}), str, callable, None],
        "max_flops": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "method": [StrOptions(set(SEARCH_METHODS)), None],
        "refit": ["boolean", callable],
        "n_jobs": [numbers.Integral, None],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
        "return_train_score": ["boolean"],
        "share_stage_outputs": [StrOptions({"auto"}), "boolean"],
        "budget": [Interval(numbers.Real, 0, None, closed="neither"), callable, None,
                   Hidden(StrOptions({"deprecated"}))],
    }

    def __init__(
        self,
        estimator,
        flops_targets=1000,
        *,
        cv=None,
        scoring=None,
        max_flops=None,
        method=None,
        refit=True,
        n_jobs=None,
        verbose=0,
        random_state=None,
        return_train_score=False,
        share_stage_outputs="auto",
        budget="deprecated",
    ):
        self.estimator = estimator
        self.flops_targets = flops_targets
        self.cv = cv
        self.scoring = scoring
        self.max_flops = max_flops
        self.method = method
        self.refit = refit
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.random_state = random_state
        self.return_train_score = return_train_score
        self.share_stage_outputs = share_stage_outputs
        self.budget = budget

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        sub = self.estimator.__sklearn_tags__()
        tags.estimator_type = sub.estimator_type
        tags.classifier_tags = deepcopy(sub.classifier_tags)
        tags.input_tags = deepcopy(sub.input_tags)
        return tags

    # ------------------------------------------------------------------- fit
    @transactional
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, groups=None, sample_weight=None):
        """Fit the class means per fold and sweep every FLOP target.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,), default=None
            Labels; may be omitted with ``scoring="agreement"`` when the
            estimator can be fitted without them (``cv="prefit"``, or a
            clustering estimator).
        groups : array-like of shape (n_samples,), default=None
            Group labels for group-aware splitters.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to the estimator's ``fit`` and used to weight the tuning
            and held-out scores.

        Returns
        -------
        self : object
        """
        targets = check_targets(self.flops_targets)
        selection = self._selection_rule()  # bad or deprecated arguments: before any fold
        scoring = resolve_scoring(self.scoring, self.estimator)
        if y is None and scoring.needs_y():
            raise ValueError(
                f"scoring={scoring.name!r} needs the labels y; pass y, or use "
                "scoring='agreement' to tune without labels (agreement with the base model)."
            )
        X, y = indexable(X, y)
        w = None
        if sample_weight is not None:
            w = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        rng = check_random_state(self.random_state)
        self.scorer_ = scoring.name
        self._scoring = scoring
        self._targets = targets
        self._selection = selection
        self.shared_stage_outputs_ = False
        self.share_reason_ = None
        self.method_, self._serve_own_points = self._resolve_method()
        if self.cv is None or (isinstance(self.cv, str) and self.cv == "prefit"):
            self._fit_in_sample(X, y, w, targets, scoring, rng)
        else:
            self._fit_cv(X, y, w, groups, targets, scoring, rng)
        return self

    def _resolve_method(self):
        """``(method, points)``: ``method`` or the estimator's own search, and whether
        each target is served by its own point (an estimator that searches one target
        at a time, ``threshold_search="bisect"``) instead of from a hull."""
        own = self.estimator.get_params(deep=False).get("threshold_search")
        points = own == "bisect" and self.method in (None, "bisect")
        if self.method is not None:
            return self.method, points
        return ("bisect" if own in ("bisect-hull", "bisect") else DEFAULT_METHOD), points

    def _seeded_estimator(self, rng):
        """The estimator, with ``random_state`` fixed from the search's when it is None.

        Every fold and the refit then use the same seed, as ``GridSearchCV``
        does with an estimator whose ``random_state`` is an int.
        """
        params = self.estimator.get_params(deep=False)
        if "random_state" not in params or params["random_state"] is not None:
            return self.estimator
        est = clone(self.estimator)
        est.set_params(random_state=int(rng.randint(np.iinfo(np.int32).max)))
        return est

    def _progress(self, total, desc):
        return partial(progress, verbose=self.verbose, desc=desc, total=total)

    def _fit_in_sample(self, X, y, w, targets, scoring, rng):
        """cv=None / "prefit": one table, tuned and scored on the same data."""
        prefit = self.cv is not None
        seed = int(rng.randint(np.iinfo(np.int32).max))
        t0 = time.perf_counter()
        if prefit:
            check_is_fitted(self.estimator)
            est = deepcopy(self.estimator)
            table = evaluation_table(est, X, y, w, scoring)
        else:
            est = clone(self._seeded_estimator(rng))
            reset_operating_params(est)
            fit_estimator(est, X, y, w)
            table = tuning_table(est, X, y, w, scoring)
        tg, T, c, s = scored_sweep(table, tuning_grid(est, targets, self._serve_own_points),
                                    self.method_, sweep_seed_of(est, seed), scoring, y, w,
                                    progress=self._progress(None, f"{self.method_} search"))
        served, mixtures = operating_points(c, s, T, targets, self._serve_own_points)
        hull = served_hull(c, s, T)
        fit_time = time.perf_counter() - t0
        M1 = table.n_stages - 1
        self.base_flops_, base_s = table.evaluate(np.ones(M1))
        self.base_score_ = float(s[-1]) if scoring.kind == "metric" else base_s
        fold = {
            "test_flops": mixture_values(mixtures, c[served]),
            "test_score": mixture_values(mixtures, s[served]),
            "fit_time": fit_time,
            "score_time": 0.0,
        }
        if self.return_train_score:
            fold["train_flops"] = fold["test_flops"]
            fold["train_score"] = fold["test_score"]
        self.n_splits_ = 1
        self.cv_results_ = format_results(targets, [fold], self.return_train_score)
        front = pd.DataFrame(
            {
                "flops_target": c[hull],
                "flops": c[hull],
                "score": s[hull],
                "std_flops": np.nan,
                "std_score": np.nan,
                "thresholds": [T[i][None, :] for i in hull],
                "weights": [np.array([1.0]) for _ in hull],
            }
        )
        self.swept_points_ = (c, s)
        self._select()
        self.pareto_front_ = self._finish_front(front, scoring)
        self.cv_results_["on_pareto_front"] = np.isin(
            np.arange(len(targets)), self._front_rows(self.cv_results_))
        if self.refit:
            self._set_operating_point(est, table, (tg, T, c, s), targets[self.best_index_])
            self.best_estimator_ = est
            self.refit_time_ = time.perf_counter() - t0

    def _fit_cv(self, X, y, w, groups, targets, scoring, rng):
        cv = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        splits = list(cv.split(X, y, groups))
        self.n_splits_ = len(splits)
        estimator = self._seeded_estimator(rng)
        seeds = rng.randint(np.iinfo(np.int32).max, size=len(splits) + 1)
        template, shared = self._shared_pass(estimator, X, y, w, splits)
        if self.verbose:
            how = (f"from one shared forward pass ({shared.nbytes / 2**20:.0f} MiB of stage "
                   "vectors)" if shared is not None
                   else f"{len(splits)} fits in total ({self.share_reason_})")
            log(f"Fitting {len(splits)} folds, each sweeping {len(targets)} FLOP targets "
                f"(method={self.method_!r}): {how}", self.verbose)
        # shared stage vectors are read by threads (no copy); otherwise processes
        parallel = Parallel(n_jobs=self.n_jobs, return_as="generator",
                            prefer="threads" if shared is not None else None)
        gen = parallel(
            delayed(run_fold)(estimator, X, y, w, train, test, targets, self.method_,
                           scoring, int(seeds[k]), self.return_train_score, shared,
                           self._serve_own_points)
            for k, (train, test) in enumerate(splits)
        )
        prog = self._progress(len(splits), "FlopBudgetSearchCV folds")
        folds = list(prog(gen))
        self.cv_results_ = format_results(targets, folds, self.return_train_score)
        bases = np.array([f["base"] for f in folds])
        self.base_flops_, self.base_score_ = (float(v) for v in bases.mean(axis=0))
        front_rows = self._front_rows(self.cv_results_)
        self.cv_results_["on_pareto_front"] = np.isin(np.arange(len(targets)), front_rows)
        self.swept_points_ = None
        self._select()
        front = pd.DataFrame(
            {
                "flops_target": targets[front_rows],
                "flops": self.cv_results_["mean_test_flops"][front_rows],
                "score": self.cv_results_["mean_test_score"][front_rows],
                "std_flops": self.cv_results_["std_test_flops"][front_rows],
                "std_score": self.cv_results_["std_test_score"][front_rows],
                "thresholds": [None] * len(front_rows),
                "weights": [None] * len(front_rows),
            }
        )
        if self.refit:
            t0 = time.perf_counter()
            if shared is not None:
                est = template
                rows = np.arange(shared.n_samples)
                fit_on_shared_rows(est, shared, rows)
                table = tuning_table(est, rows, y, w, scoring, shared)
            else:
                est = clone(estimator)
                reset_operating_params(est)
                fit_estimator(est, X, y, w)
                table = tuning_table(est, X, y, w, scoring)
            sweep_out = scored_sweep(table, tuning_grid(est, targets, self._serve_own_points),
                                      self.method_, sweep_seed_of(est, int(seeds[-1])), scoring,
                                      y, w)
            c, s, T = sweep_out[2], sweep_out[3], sweep_out[1]
            if self._serve_own_points:  # each front row is served by its own target's point
                front["thresholds"] = [T[r][None, :] for r in front_rows]
                front["weights"] = [np.array([1.0]) for _ in front_rows]
            else:
                hull = served_hull(c, s, T)
                mix = serve_targets(c[hull], front["flops_target"].to_numpy())
                front["thresholds"] = [T[hull[v]] for v, _ in mix]
                front["weights"] = [wv for _, wv in mix]
            self._set_operating_point(est, table, sweep_out, targets[self.best_index_])
            self.best_estimator_ = est
            self.refit_time_ = time.perf_counter() - t0
        self.pareto_front_ = self._finish_front(front, scoring)

    def _shared_pass(self, estimator, X, y, w, splits):
        """``(template, shared)``: one forward pass for all folds, or ``(None, None)``."""
        share = self.share_stage_outputs
        reason = None
        if share is False:
            reason = "share_stage_outputs=False"
        elif not isinstance(estimator, EarlyExitClassMeans):
            reason = f"{type(estimator).__name__} cannot fit from shared stage outputs"
        elif y is None:
            reason = "no labels"
        else:
            y_arr = np.asarray(y)
            classes = np.unique(y_arr)
            short = [k for k, (train, _) in enumerate(splits)
                     if np.unique(y_arr[train]).shape[0] != classes.shape[0]]
            if short:
                reason = f"training folds {short} miss some classes"
        shared = template = None
        if reason is None:
            template = clone(estimator)
            reset_operating_params(template)
            template._validate_params()  # what its fit would check first
            t0 = time.perf_counter()
            shared, reason = share_stage_outputs(template, X, y, w)
            self.shared_pass_time_ = time.perf_counter() - t0
        if shared is None and share is True:
            raise ValueError(f"share_stage_outputs=True but the forward pass cannot be "
                             f"shared: {reason}.")
        self.shared_stage_outputs_ = shared is not None
        self.share_reason_ = reason
        return template, shared

    @staticmethod
    def _front_rows(results):
        """Rows on the upper concave hull of the mean (cost, score) curve."""
        return np.sort(upper_hull(results["mean_test_flops"], results["mean_test_score"]))

    def _finish_front(self, front, scoring):
        if scoring.kind == "accuracy":
            front.insert(3, "accuracy", front["score"].to_numpy())
        return front.sort_values("flops", kind="stable").reset_index(drop=True)

    def _set_operating_point(self, est, table, sweep_out, target):
        """Serve ``target`` from a sweep already run on ``est``'s tuning table."""
        params = est.get_params(deep=False)
        new = {"flops_target": float(target)}
        if "thresholds" in params:
            new["thresholds"] = None
        if "threshold_search" in params and not self._serve_own_points:
            # refits then search the same way (a single-target search keeps its own)
            new["threshold_search"] = "hull" if self.method_ == "coordinate" else "bisect-hull"
        est.set_params(**new)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # single-target search: the estimator's own bisection at the target, which the
            # keyed starts make identical to the sweep's point for that target
            serve_from_sweep(est, table, None if self._serve_own_points else sweep_out)

    def _select(self):
        res = self.cv_results_
        scores = res["mean_test_score"]
        costs = res["mean_test_flops"]
        P = scores.shape[0]
        max_flops, rule = self._selection
        if rule is not None:
            idx = rule(res)
            if not isinstance(idx, numbers.Integral) or not 0 <= int(idx) < P:
                raise ValueError(
                    f"The selection callable returned {idx!r}; expected an int index into "
                    f"cv_results_ in [0, {P - 1}]."
                )
            idx = int(idx)
        else:
            ok = np.ones(P, bool) if max_flops is None else costs <= max_flops + 1e-9
            if not ok.any():
                warn(
                    f"No FLOP target meets max_flops={max_flops:g}: the cheapest mean cost is "
                    f"{costs.min():.4f}. Selecting the cheapest target.")
                ok = costs <= costs.min() + 1e-12
            cand = np.flatnonzero(ok)
            best = scores[cand].max()
            cand = cand[scores[cand] >= best - 1e-12]
            cand = cand[costs[cand] <= costs[cand].min() + 1e-12]
            # equal operating points: report the target closest to what is served
            targets = np.asarray(res["param_flops_target"], dtype=np.float64)
            idx = int(cand[np.argmin(np.abs(targets[cand] - costs[cand]))])
        self.best_index_ = idx
        self.best_params_ = dict(res["params"][idx])
        self.best_score_ = float(scores[idx])
        self.best_flops_ = float(costs[idx])

    def _selection_rule(self):
        """``(max_flops, callable or None)``, honouring the deprecated ``budget``."""
        rule = self.refit if callable(self.refit) else None
        if isinstance(self.budget, str) and self.budget == DEPRECATED:
            if rule is not None and self.max_flops is not None:
                raise ValueError(
                    f"refit is a selection callable and max_flops={self.max_flops!r}: the "
                    "callable chooses the row; set max_flops=None or refit=True.")
            return self.max_flops, rule
        if self.max_flops is not None or rule is not None:
            raise ValueError(
                f"FlopBudgetSearchCV got budget={self.budget!r} with max_flops="
                f"{self.max_flops!r} / refit={self.refit!r}; 'budget' is the deprecated name "
                "of max_flops (a float) and of a refit callable: set only those.")
        new = "refit" if callable(self.budget) else "max_flops"
        warn(f"FlopBudgetSearchCV: the parameter 'budget' was renamed in 0.2.0 and will be "
             f"removed in 0.4.0; use {new}={self.budget!r}.", FutureWarning)
        if self.budget is None:
            return None, None
        return (None, self.budget) if callable(self.budget) else (float(self.budget), None)

    # ------------------------------------------------------------- delegation
    def _check_refit(self, name):
        check_is_fitted(self)
        if not self.refit:
            raise AttributeError(
                f"This FlopBudgetSearchCV was fitted with refit=False; {name} is available "
                "only after refitting on the best operating point."
            )

    def predict(self, X):
        """Predictions of :attr:`best_estimator_` (with its early exits).

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        self._check_refit("predict")
        return self.best_estimator_.predict(X)

    def predict_proba(self, X):
        """Probabilities of :attr:`best_estimator_`.

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        self._check_refit("predict_proba")
        return self.best_estimator_.predict_proba(X)

    def route(self, X):
        """Routed pass of :attr:`best_estimator_` (predictions, exits, costs).

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.

        Returns
        -------
        result : RoutingResult
        """
        self._check_refit("route")
        return self.best_estimator_.route(X)

    def score(self, X, y=None):
        """Score of :attr:`best_estimator_` on ``X`` with the search's scoring.

        ``"agreement"`` needs no ``y``: the fraction of samples whose routed
        prediction equals the base model's.

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Input of the kind the estimator was fitted on.
        y : array-like of shape (n_samples,), default=None
            True labels; required unless the scoring is ``"agreement"``.

        Returns
        -------
        score : float
        """
        self._check_refit("score")
        scoring = self._scoring
        est = self.best_estimator_
        if scoring.kind == "agreement":
            stages = list(est.staged_predict(X))
            return float(np.mean(est.predict(X) == stages[-1]))
        if y is None:
            raise ValueError(f"scoring={scoring.name!r} needs y to score.")
        y_pred = est.predict(X)
        if scoring.kind == "accuracy":
            return float(np.mean(y_pred == np.asarray(y)))
        return scoring.metric(y, y_pred)

    @property
    def classes_(self):
        self._check_refit("classes_")
        return self.best_estimator_.classes_

    @property
    def n_features_in_(self):
        self._check_refit("n_features_in_")
        return self.best_estimator_.n_features_in_

    def plot(self, ax=None, *, name=None, **kwargs):
        """Plot the cross-validated trade-off with :class:`~sklearn_e2cm.TradeoffDisplay`.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
        name : str, default=None
        **kwargs
            Passed to :meth:`TradeoffDisplay.plot`.

        Returns
        -------
        display : TradeoffDisplay
        """
        from .plotting import TradeoffDisplay

        return TradeoffDisplay.from_search(self, ax=ax, name=name, **kwargs)
