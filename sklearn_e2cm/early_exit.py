"""EarlyExitClassMeans: E²CM early exits on any staged extractor."""

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Hidden, Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_consistent_length,
    column_or_1d,
    validate_data,
)

from ._exit_estimator import EarlyExitBase
from ._incremental import IncrementalFitMixin
from ._fitting.blockwise import fit_blockwise, is_dask_array
from ._fitting.distributed import process_group, shard_rows
from ._fitting.inputs import (
    LabelIndex,
    calibration_rows,
    check_n_classes,
    copy_input_attributes,
    fit_adapter,
    n_rows_of,
    resolve_stage_costs,
    validate_fit_input,
    warn_if_base_at_chance,
)
from ._fitting.passes import (
    ClassMeansData,
    ClassMeansParams,
    check_covariance_size,
    fit_class_means,
    forward_source,
)
from ._fitting.shared import run_shared_pass
from .stages import is_torch_stages, make_stage_adapter

__all__ = ["EarlyExitClassMeans", "share_stage_outputs", "fit_on_shared_rows"]


class EarlyExitClassMeans(ClassifierMixin, IncrementalFitMixin, EarlyExitBase, BaseEstimator):
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
        then a nearest class-mean classifier with calibrated probabilities:
        the smallest eq. 4-normalised distance, which is
        :class:`~sklearn.neighbors.NearestCentroid` with ``normalize=False``). A
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
    threshold_search : {"hull", "bisect-hull", "bisect"}, default="hull"
        ``"hull"``: trace the accuracy-cost trade-off on the tuning data by
        exact coordinate ascent on accuracy − λ·cost along a path of λ (one
        path serves every budget), keep its upper concave hull and serve
        ``flops_target`` by time sharing between the two hull vertices around
        it. ``"bisect-hull"``: the same hull and time sharing over the
        paper's search (random initialisation + alternating bisection) run
        at each of ``sweep_resolution`` FLOP targets (slower; held-out accuracy is
        lower at almost every budget in ``benchmarks/results/sweep.md``).
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
    sweep_resolution : int, default=1000
        Number of evenly spaced FLOP targets (``1/n, 2/n, ..., 1``) at which
        the threshold sweep keeps its best vector (the rows of
        ``tradeoff_``; one bisection each with
        ``threshold_search="bisect-hull"``); the hull is built on them. Not a
        target itself: ``flops_target`` is the one served.
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
    distributed : "auto" or bool, default="auto"
        Fit under ``torch.distributed``. ``"auto"``: when a process group is
        initialised (``torchrun``, ``init_process_group``) and holds more than
        one process, every process passes its own shard of the data (arrays,
        or a DataLoader with a ``DistributedSampler``, whose padding rows are
        not counted), the class statistics are summed over the processes and
        the tuning arrays gathered, so every process ends with the estimator
        one process would fit on all the shards (without ``calibration``; with
        it, each process holds out part of its own shard). ``True``: require a
        process group; ``False``: fit on the data given only. Needs stages
        that ``fit`` does not train (a torch network, fitted or frozen
        scikit-learn steps).
    non_finite : {"raise", "continue"}, default="raise"
        At prediction, a NaN or infinite stage vector or exit score:
        ``"raise"`` a ``ValueError`` naming the stage; ``"continue"``: the row
        may not exit where its score is not finite and goes on towards the
        base model's classifier (one warning per call with the count); the
        last stage's outputs must be finite either way. Fitting always raises.
    n_targets : int
        Deprecated name of ``sweep_resolution`` (renamed in 0.2.0, removed
        in 0.4.0).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Sorted class labels; class index ``k`` of every exit means ``classes_[k]``.
    n_stages_ : int
        Number of stages ``M``; samples may leave after stages ``0 .. M-2``.
    class_means_ : list of ndarray of shape (n_classes, D_j)
        Mean stage vector of each class at every stage (eq. 2, weighted by
        ``sample_weight``), after ``pooling``; for a chain ending in a
        classifier the last entry holds the means of its class probabilities.
        Accumulated in float64, held in the stages' compute dtype (float64
        for scikit-learn stages, the network's, usually float32, for torch
        stages): the arrays the exit heads use, not a copy.
    distance_scale_ : list of ndarray of shape (n_classes,) or None
        eq. 4 scales: the mean distance of the tuning samples to each class
        mean, per stage (``None`` with ``normalize=False`` or the whitened metric).
    shrinkage_ : list of float
        Covariance shrinkage used at each stage (``metric="mahalanobis"`` only).
    thresholds_ : ndarray of shape (n_stages - 1,)
        Thresholds of the main operating point (the hull vertex with the
        larger time-sharing weight).
    mixture_thresholds_ : ndarray of shape (n_components, n_stages - 1)
        Threshold vectors of the served time-sharing mixture (one or two rows).
    mixture_weights_ : ndarray of shape (n_components,)
        Probability that a sample is routed with each row of
        ``mixture_thresholds_`` (drawn from a hash of the sample, seeded).
    stage_flops_ : ndarray of shape (n_stages,)
        Per-sample FLOPs of each stage (multiply-add counted as 2), after
        ``stage_costs``.
    exit_flops_ : ndarray of shape (n_stages,)
        Per-sample FLOPs of each exit head (pooling included; 0 where the
        base model's classifier decides).
    cumulative_cost_ : ndarray of shape (n_stages,)
        Normalised cost of leaving after each stage with every head active.
    expected_flops_ : float
        Expected normalised cost of the operating point on the tuning data.
    expected_accuracy_ : float
        Expected accuracy of the operating point on the tuning data.
    tradeoff_ : pandas.DataFrame
        Swept operating points (``target``, ``flops``, ``accuracy``,
        ``thresholds``, ``on_hull``), measured on the tuning data.
    memory_overhead_bytes_ : int
        Bytes held for the exits: every exit head's class means, norms and
        scales (or whitened weights) as stored, with their copies on a
        non-CPU device, and the thresholds; active at this operating point or
        not.
    class_statistics_ : ClassStatistics
        The streamed class statistics the exits are built from (per stage and
        class: sums, weights, counts, within-class scatter for the whitened
        metric), mergeable with statistics fitted elsewhere
        (:meth:`ClassStatistics.merge <sklearn_e2cm._fitting.passes.ClassStatistics.merge>`),
        and extended by :meth:`partial_fit`.
    n_features_in_ : int
        Number of features of the input (for torch input: values per sample).
    feature_names_in_ : ndarray of str
        Names of the input's features, when it has string column names.
    input_shape_ : tuple
        Shape of one sample (torch stages only).

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
        "threshold_search": [StrOptions({"hull", "bisect-hull", "bisect"})],
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
        "sweep_resolution": [Interval(numbers.Integral, 2, None, closed="left")],
        "non_finite": [StrOptions({"raise", "continue"})],
        "n_targets": [Interval(numbers.Integral, 2, None, closed="left"),
                      Hidden(StrOptions({"deprecated"}))],
        "final_classifier": [StrOptions({"auto"}), "boolean"],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": "no_validation",
        "cache_size": [Interval(numbers.Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "distributed": [StrOptions({"auto"}), "boolean"],
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
        sweep_resolution=1000,
        final_classifier="auto",
        batch_size=1024,
        device="cpu",
        cache_size=1.5e9,
        random_state=None,
        verbose=0,
        distributed="auto",
        non_finite="raise",
        n_targets="deprecated",
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
        self.sweep_resolution = sweep_resolution
        self.non_finite = non_finite
        self.n_targets = n_targets
        self.final_classifier = final_classifier
        self.batch_size = batch_size
        self.device = device
        self.cache_size = cache_size
        self.random_state = random_state
        self.verbose = verbose
        self.distributed = distributed

    # ------------------------------------------------------------------ tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        torch_backend = is_torch_stages(self.stages)
        tags.input_tags.two_d_array = not torch_backend
        tags.input_tags.allow_nan = False
        tags.classifier_tags.poor_score = True
        tags.non_deterministic = False
        return tags

    # --------------------------------------------------------------- helpers
    def _make_adapter(self):
        return make_stage_adapter(self.stages, pooling=self.pooling, device=self.device,
                                  batch_size=self.batch_size,
                                  final_classifier=self.final_classifier)

    def _class_means_params(self, cache_ok=True):
        return ClassMeansParams(metric=self.metric, normalize=self.normalize,
                                shrinkage=self.shrinkage,
                                cache_size=self.cache_size if cache_ok else 0.0)

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, sample_weight=None):
        """Fit the class means and choose the thresholds.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or for torch stages
            an array/tensor of shape (n_samples, ...) or a DataLoader of
            ``(x, y)`` batches (then ``y=None``). A dask array (scikit-learn
            stages that ``fit`` does not train) is fitted block by block on
            the dask scheduler: each chunk of rows runs through the stages
            where it lies, and only class statistics and per-row exit arrays
            come back.
        y : array-like of shape (n_samples,)
            Labels; ``None`` with a DataLoader.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the class means (eq. 2) and of the tuning scores.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        if is_dask_array(X):
            return self._fit_dask_array(X, y, sample_weight)
        adapter = self._make_adapter()
        rng = check_random_state(self.random_state)
        collective = process_group(self.distributed)
        if collective is not None and not adapter.frozen:
            raise ValueError(
                "Under torch.distributed every process must run the same stages, but some "
                "scikit-learn steps are not fitted (fit would train them on each process's "
                "shard). Fit them first (or wrap them in FrozenEstimator), or pass "
                "distributed=False."
            )
        X, y, sample_weight, streaming = validate_fit_input(self, adapter, X, y, sample_weight)
        max_rows = shard_rows(X) if streaming else None  # DistributedSampler padding cut off
        (X_fit, y_fit, w_fit), tune_rows = calibration_rows(X, y, sample_weight,
                                                             self.calibration, rng, streaming)
        X_tune, y_tune, w_tune = tune_rows or (None, None, None)
        labels = LabelIndex(None if streaming else np.unique(y))
        fit_adapter(self, adapter, X_fit, y_fit, w_fit, labels, streaming, self.final_classifier)
        data = ClassMeansData(
            adapter=adapter, labels=labels,
            fit_source=forward_source(adapter, X_fit, y_fit, self.batch_size,
                                      verbose=self.verbose, desc="E2CM fit (class means)",
                                      max_rows=max_rows),
            fit_weights=w_fit, n_fit=n_rows_of(X_fit) if max_rows is None else max_rows,
            y_tune=y_tune, w_tune=w_tune, streaming=streaming, collective=collective)
        if X_tune is not None:
            data.tune_source = forward_source(adapter, X_tune, None, self.batch_size,
                                              verbose=self.verbose, desc="E2CM fit (tuning pass)")
        return self._fit_class_means(data, rng)

    def _fit_class_means(self, data, rng, run=None):
        """Both passes from ``data``'s sources, then the cost model and operating point.

        ``run(params)``, when given, replaces the two passes (it returns a
        ``ClassMeansFit``): the tuning pass alone for :meth:`finalize`, the
        block-by-block fit of a dask array.
        """
        adapter = data.adapter
        stage_flops = resolve_stage_costs(adapter.stage_flops_, adapter.cost_errors_,
                                          self.stage_costs)
        if self.metric == "mahalanobis":
            check_covariance_size(adapter, self.max_covariance_bytes)
        params = self._class_means_params(data.cache_ok)
        fit = fit_class_means(data, params) if run is None else run(params)
        self.class_statistics_ = fit.statistics
        self._unseen_classes = None
        warn_if_base_at_chance(adapter, fit.correct[:, -1], fit.label_idx, fit.tune_weights)
        self._fit_times = dict(fit.times)
        self.classes_ = fit.classes
        if fit.shrinkage is not None:
            self.shrinkage_ = fit.shrinkage
        self.class_means_ = fit.means
        self.distance_scale_ = [h.scale for h in fit.heads]
        self._finish_fit(adapter, fit.heads, stage_flops, fit.conf, fit.correct,
                         fit.tune_weights, rng)
        return self

    def _fit_dask_array(self, X, y, sample_weight):
        """fit on a dask array: statistics and exit arrays block by block (its chunks)."""
        adapter = self._make_adapter()
        if adapter.backend != "numpy" or not adapter.frozen:
            raise ValueError(
                "A dask array needs scikit-learn stages that fit does not train (fitted or "
                "FrozenEstimator-wrapped steps, or stages=None): its blocks run through the "
                "same stages on the workers. Fit the steps first; for torch stages pass a "
                "DataLoader."
            )
        if self.calibration is not None:
            raise ValueError(
                f"calibration={self.calibration!r} is not supported with a dask array; fit "
                "on the training blocks and call finalize(X_tune, y_tune) on held-out rows."
            )
        if X.ndim != 2:
            raise ValueError(f"Expected a 2-D dask array; got shape {X.shape}.")
        if y is None:
            raise ValueError("requires y to be passed, but the target y is None.")
        y = column_or_1d(np.asarray(y.compute() if hasattr(y, "compute") else y))
        check_consistent_length(np.empty((X.shape[0], 0)), y)
        check_classification_targets(y)
        classes = np.unique(y)
        check_n_classes(classes)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, np.empty((X.shape[0], 0)),
                                                 dtype=np.float64, ensure_non_negative=True)
        rng = check_random_state(self.random_state)
        n_first = int(X.chunks[0][0])
        first = validate_data(self, np.asarray(X[:n_first].compute()), dtype=np.float64,
                              reset=True)  # sets n_features_in_
        labels = LabelIndex(classes)
        fit_adapter(self, adapter, first, y[:n_first],
                    None if sample_weight is None else sample_weight[:n_first], labels,
                    False, self.final_classifier)
        data = ClassMeansData(adapter=adapter, labels=labels, fit_source=None)
        return self._fit_class_means(data, rng, lambda params: fit_blockwise(
            X, y, sample_weight, adapter, classes, params, self.batch_size))


# ------------------------------------------------ one forward pass shared by many fits
def share_stage_outputs(est, X, y, sample_weight=None):
    """Run ``est``'s stages once on every row of ``X`` for fits on subsets of its rows.

    Used by :class:`~sklearn_e2cm.FlopBudgetSearchCV`: when the stages are
    frozen (torch networks; scikit-learn stages that are all fitted, e.g.
    ``FrozenEstimator``), a row's stage vectors do not depend on the rows the
    class means are fitted on, so the folds and the refit all read them from
    this one pass (:func:`fit_on_shared_rows`) instead of running the stages
    again.

    Parameters
    ----------
    est : EarlyExitClassMeans
        Unfitted template; receives the input attributes.
    X, y, sample_weight : fit arguments (all rows)

    Returns
    -------
    shared : SharedStageOutputs or None
    reason : str or None
        Why the pass was not shared: the stages are not frozen, the input is a
        DataLoader or the vectors need more than ``cache_size``.
    """
    adapter = est._make_adapter()
    X, y, sample_weight, streaming = validate_fit_input(est, adapter, X, y, sample_weight)
    if streaming:
        return None, "the input is a DataLoader"
    if not adapter.frozen:
        return None, "some stages are trained by fit (not fitted, not frozen)"
    labels = LabelIndex(np.unique(y))
    fit_adapter(est, adapter, X, y, sample_weight, labels, streaming, est.final_classifier)
    shared, reason = run_shared_pass(adapter, X, y, sample_weight, np.asarray(labels.labels),
                                     est.batch_size, est.cache_size, est.verbose)
    if shared is not None:
        copy_input_attributes(est, shared)
    return shared, reason


def fit_on_shared_rows(est, shared, rows):
    """Fit ``est`` on rows ``rows`` of a shared pass: no stage runs.

    Equivalent to ``est.fit(X[rows], y[rows], sample_weight[rows])`` (same
    random draws, same batches), with the stage vectors read from ``shared``.

    Parameters
    ----------
    est : EarlyExitClassMeans
    shared : SharedStageOutputs
        From :func:`share_stage_outputs`.
    rows : array-like of int
        The rows must hold every class of the shared pass.

    Returns
    -------
    est : EarlyExitClassMeans
        Fitted.
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
    check_n_classes(classes)
    rng = check_random_state(est.random_state)
    (fit_rows, y_fit, w_fit), tune_rows = calibration_rows(rows, y, w, est.calibration, rng,
                                                           False)
    data = ClassMeansData(adapter=shared.adapter, labels=LabelIndex(classes), fit_source=None,
                          context=shared.context, cache_ok=False)
    if tune_rows is not None:
        tune_at, data.y_tune, data.w_tune = tune_rows
        data.tune_source = shared.source(tune_at, None, est.batch_size)
    copy_input_attributes(shared, est)
    data.fit_source = shared.source(fit_rows, y_fit, est.batch_size)
    data.fit_weights, data.n_fit = w_fit, len(fit_rows)
    return est._fit_class_means(data, rng)
