"""Fitting class-means exits in several calls: ``partial_fit`` and ``finalize``.

:class:`IncrementalFitMixin` gives :class:`~sklearn_e2cm.EarlyExitClassMeans`
its streamed fit: ``partial_fit`` adds rows to the class statistics (sums
over rows, so any split of the data gives the statistics of one ``fit``) and
serves the base model meanwhile; ``finalize`` runs ``fit``'s tuning pass and
threshold search on tuning rows.
"""

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._available_if import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ._backend import warn
from ._exit_estimator import transactional
from ._fitting.class_statistics import ClassStatistics
from ._fitting.distributed import shard_rows
from ._fitting.inputs import (
    LabelIndex,
    check_n_classes,
    check_torch_input,
    fit_adapter,
    resolve_stage_costs,
    warn_final_width,
)
from ._fitting.passes import (
    ClassMeansData,
    accumulate_statistics,
    check_covariance_size,
    forward_source,
    heads_from_statistics,
    tune_class_means,
)
from .stages import is_torch_stages

__all__ = ["IncrementalFitMixin"]


class IncrementalFitMixin:
    """``partial_fit`` / ``finalize`` of an estimator that fits class-means exits.

    The estimator provides ``_make_adapter``, ``_class_means_params``,
    ``_fit_class_means`` and the routing base's ``_set_exit_heads`` and
    ``_serve_base_model``.
    """

    # ---------------------------------------------------------- streamed fit
    def _stages_are_frozen(self):
        """Whether fit trains nothing (partial_fit is offered only then)."""
        return is_torch_stages(self.stages) or self._make_adapter().frozen

    @available_if(_stages_are_frozen)  # a descriptor: made transactional here
    @transactional
    def partial_fit(self, X, y=None, classes=None, sample_weight=None):
        """Add a batch of training rows to the class statistics.

        The class statistics (per stage and class: sums, weights and, for the
        whitened metric, the within-class scatter) are sums over the rows, so
        streaming the data in any number of calls gives the statistics of one
        :meth:`fit` on all of it. After each call the estimator serves the
        **base model** on the current class means: every exit head is off
        (``thresholds_`` all 1, ``expected_flops_`` = 1), so every sample runs
        to the last stage, where a chain ending in a classifier gives its own
        prediction and otherwise the nearest class mean decides (plain
        Euclidean distance, or the whitened score). Early exits need tuned
        thresholds and, for the Euclidean metric, eq. 4 scales, which are
        statistics of every tuning row's distances to the *final* class means:
        call :meth:`finalize` with tuning rows once the statistics are
        complete (a warning says so when ``flops_target`` or ``thresholds`` is
        set). A later ``partial_fit`` serves the base model again until the
        next :meth:`finalize`.

        The stages are not trained: they must be a torch network, or fitted
        (or frozen) scikit-learn steps (``None``, the input itself, is);
        with scikit-learn steps that ``fit`` would train, the estimator has no
        ``partial_fit``.

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Rows of the kind :meth:`fit` accepts (a DataLoader of ``(x, y)``
            batches for torch stages, then ``y=None``).
        y : array-like of shape (n_samples,)
            Labels; ``None`` with a DataLoader.
        classes : array-like of shape (n_classes,), default=None
            Every label the data may hold. Required on the first call (the
            scikit-learn convention); later calls may omit it or must repeat
            the same labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the class means (eq. 2).

        Returns
        -------
        self : object
            The estimator, serving the base model on the updated class means.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn.datasets import load_digits
        >>> from sklearn_e2cm import EarlyExitClassMeans
        >>> X, y = load_digits(return_X_y=True)
        >>> clf = EarlyExitClassMeans(flops_target=None)
        >>> for rows in np.array_split(np.arange(len(y)), 4):
        ...     clf = clf.partial_fit(X[rows], y[rows], classes=np.arange(10))
        >>> clf.class_statistics_.n_samples
        1797
        >>> clf = clf.finalize(X, y)  # eq. 4 scales and thresholds from tuning rows
        >>> bool(clf.score(X, y) > 0.85)
        True
        """
        first = not hasattr(self, "class_statistics_")
        if first:
            if classes is None:
                raise ValueError(
                    "classes must be passed on the first call to partial_fit (every label "
                    "the data may hold); got classes=None."
                )
            self._validate_params()
            adapter = self._make_adapter()
            X, y, sample_weight, streaming = self._validate_rows(adapter.backend, X, y,
                                                                 sample_weight, reset=True)
            classes = np.unique(np.asarray(classes))
            check_n_classes(classes)
            fit_adapter(self, adapter, X, y, sample_weight, LabelIndex(classes), streaming,
                        self.final_classifier)
            if streaming:  # fit_adapter learns a DataLoader's classes from its batches
                adapter.set_classes(classes)
                warn_final_width(adapter, len(classes), self.final_classifier)
            stats = ClassStatistics(adapter.n_stages, self.metric, classes)
        else:
            check_is_fitted(self, "class_statistics_")
            adapter, stats = self._adapter, self.class_statistics_
            known = stats.classes
            if classes is not None and not np.array_equal(np.unique(np.asarray(classes)), known):
                raise ValueError(
                    f"classes={np.asarray(classes).tolist()[:20]} differs from the classes of "
                    f"the first partial_fit call, {known.tolist()[:20]}."
                )
            if stats.metric != self.metric:
                raise ValueError(
                    f"metric={self.metric!r} differs from the metric of the statistics "
                    f"accumulated so far ({stats.metric!r}); call fit to start over."
                )
            X, y, sample_weight, streaming = self._validate_rows(adapter.backend, X, y,
                                                                 sample_weight)
        K = len(stats.labels.labels)
        if y is not None:
            unknown = np.setdiff1d(np.unique(y), stats.classes)
            if unknown.size:
                raise ValueError(
                    f"y holds labels {unknown.tolist()[:20]} that are not in classes="
                    f"{stats.classes.tolist()[:20]}."
                )
        stage_flops = resolve_stage_costs(adapter.stage_flops_, adapter.cost_errors_,
                                          self.stage_costs)
        if self.metric == "mahalanobis":
            check_covariance_size(adapter, self.max_covariance_bytes)
        params = self._class_means_params(cache_ok=False)
        # the new rows go into a copy: a failing call leaves the estimator as it was
        work = stats.copy()
        data = ClassMeansData(
            adapter=adapter, labels=work.labels,
            fit_source=forward_source(adapter, X, y, self.batch_size, verbose=self.verbose,
                                      desc="E2CM partial_fit",
                                      max_rows=shard_rows(X) if streaming else None),
            fit_weights=sample_weight, statistics=work, cache_ok=False)
        accumulate_statistics(data, params)
        if len(work.labels.labels) > K:
            raise ValueError(
                f"The batches hold labels {work.labels.labels[K:][:20]} that are not in "
                f"classes={stats.classes.tolist()[:20]}."
            )
        self.class_statistics_ = work
        self._adapter = adapter
        unseen = work.classes[work.weights() <= 0]
        if unseen.size:
            self._unseen_classes = unseen
            warn(f"Classes {unseen.tolist()[:20]} have no rows with positive weight yet: the "
                 "estimator cannot predict until partial_fit has seen every class.")
            return self
        self._unseen_classes = None
        self.classes_, self.class_means_, heads, shrinkage = heads_from_statistics(
            work, data, params)
        if shrinkage is not None:
            self.shrinkage_ = shrinkage
        self.distance_scale_ = [None] * len(heads)
        self._set_exit_heads(adapter, heads, stage_flops)
        self._serve_base_model()
        if self.flops_target is not None or self.thresholds is not None:
            warn("partial_fit serves the base model (no early exit) until finalize(X_tune, "
                 "y_tune) computes the eq. 4 scales and tunes the thresholds on tuning rows.")
        return self

    @transactional
    def finalize(self, X, y=None, sample_weight=None):
        """Tune the exits on rows, from the class statistics accumulated so far.

        Runs :meth:`fit`'s tuning pass on ``X``: eq. 4 scales (the mean
        distance of these rows to each final class mean), every row's exit
        confidence at every stage, then the threshold search for
        ``flops_target`` (or the explicit ``thresholds``), seeded by
        ``random_state`` as :meth:`fit` is. ``partial_fit`` over the chunks
        of ``X`` followed by ``finalize(X, y)`` therefore gives what
        ``fit(X, y)`` gives (class statistics equal up to the rounding of
        their sums). Held-out rows (a validation stream) give thresholds that
        are not tuned on the rows the means were fitted on, as ``calibration``
        does. The statistics are kept: ``partial_fit`` may continue, and
        ``finalize`` may be called again.

        Parameters
        ----------
        X : array-like, tensor or DataLoader
            Tuning rows (a DataLoader of ``(x, y)`` batches, then ``y=None``).
        y : array-like of shape (n_samples,)
            Their labels (every label must be one of ``classes_``).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the eq. 4 scales and of the tuning scores.

        Returns
        -------
        self : object
            The fitted estimator, at the operating point its parameters ask for.
        """
        check_is_fitted(self, "class_statistics_")
        if self._unseen_classes is not None:
            raise ValueError(
                f"Classes {self._unseen_classes.tolist()[:20]} have no training rows yet; "
                "partial_fit rows of every class before finalize."
            )
        self._validate_params()
        X, y, sample_weight, streaming = self._validate_rows(self._adapter.backend, X, y,
                                                             sample_weight)
        adapter = self._adapter
        stats = self.class_statistics_
        data = ClassMeansData(
            adapter=adapter, labels=stats.labels, fit_source=None,
            tune_source=forward_source(adapter, X, None, self.batch_size,
                                       verbose=self.verbose, desc="E2CM finalize",
                                       max_rows=shard_rows(X) if streaming else None),
            y_tune=y, w_tune=sample_weight, cache_ok=False)
        return self._fit_class_means(data, check_random_state(self.random_state),
                                     lambda params: tune_class_means(stats, data, params))

    def _validate_rows(self, backend, X, y, sample_weight, reset=False):
        """Checked rows of one call; ``reset`` sets the input attributes (first call).

        Unlike :meth:`fit`'s validation, a batch may hold one class or one row.
        """
        if backend == "torch":
            from .stages.torch import is_dataloader

            X = check_torch_input(self, X, None, reset)[0]
            if is_dataloader(X):
                if y is not None:
                    raise ValueError("y must be None when X is a DataLoader of (x, y) batches.")
                if sample_weight is not None:
                    raise ValueError("sample_weight is not supported with a DataLoader input.")
                return X, None, None, True
        else:
            X = validate_data(self, X, dtype=np.float64, reset=reset)
        if y is None:
            raise ValueError("requires y to be passed, but the target y is None.")
        y = np.asarray(y.cpu() if hasattr(y, "cpu") else y)
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        check_classification_targets(y)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                 ensure_non_negative=True)
        return X, y, sample_weight, False

    def _validate_X(self, X):
        unseen = getattr(self, "_unseen_classes", None)
        if unseen is not None:
            raise NotFittedError(
                f"Classes {unseen.tolist()[:20]} have no training rows yet: call partial_fit "
                "with rows of every class before predicting."
            )
        return super()._validate_X(X)
