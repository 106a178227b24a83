"""The two passes that fit class-means exits, and the per-stage collection they share.

* :func:`forward_source` runs the stages on data, batch after batch; a
  :class:`~sklearn_e2cm._fitting.shared.SharedStageOutputs` serves the same
  batches from one earlier pass. Both are *sources*: a factory
  ``source(n_run=None, final=True)`` of ``(stage_items, y_batch, n_rows)``,
  where ``stage_items`` yields ``(j, F, final_idx)`` stage after stage as
  :func:`~sklearn_e2cm._routing.iter_stages` does.
* :func:`collect_stage_outputs` is the per-stage tuning pass: it applies a
  function to every stage vector of a source and concatenates the results per
  stage. Every estimator computes its exit arrays with it.
* :class:`~sklearn_e2cm._fitting.class_statistics.ClassStatistics` holds the
  statistics pass's result and merges with statistics fitted on other rows.
* :func:`fit_class_means` is the statistics pass (class sums, optionally the
  within-class scatter, a cache of the last stages' vectors) followed by the
  tuning pass (distances or whitened scores, eq. 4 scales, exit arrays);
  :func:`accumulate_statistics`, :func:`heads_from_statistics` and
  :func:`tune_class_means` are its parts, for fits that stream the data in
  several calls (``partial_fit``).
"""

import copy
import time
from dataclasses import dataclass, field

import numpy as np

from .._backend import concat, is_torch, progress, softmax, to_numpy
from ..exits.class_means import ExitHead, normalized_head, whitened_head
from ..exits.statistics import labels_on_device
from .class_statistics import ClassStatistics
from .._memory import HeapGuard
from .._routing import iter_stages
from .inputs import check_n_classes

__all__ = [
    "forward_source",
    "collect_stage_outputs",
    "ClassMeansData",
    "ClassMeansParams",
    "ClassMeansFit",
    "fit_class_means",
    "tuning_pass",
    "accumulate_statistics",
    "heads_from_statistics",
    "tune_class_means",
    "row_bytes",
    "check_covariance_size",
    "RowCache",
]


def forward_source(adapter, X, y, batch_size, *, verbose=0, desc="E2CM pass", max_rows=None):
    """A source of stage vectors computed by running the stages on ``X``.

    Parameters
    ----------
    adapter : StageAdapter
        Fitted.
    X : input accepted by ``adapter.batches``
    y : array-like of shape (n_samples,) or None
    batch_size : int
    verbose : int, default=0
        Progress bar over the batches when positive.
    desc : str
        Label of the progress bar.
    max_rows : int, default=None
        Read only the first ``max_rows`` rows (``DistributedSampler``
        padding is cut off this way).

    Returns
    -------
    source : callable
        ``source(n_run=None, final=True)`` yields ``(stage_items, y_batch,
        n_rows)`` per batch; ``stage_items`` runs stages ``0 .. n_run-1``
        (all by default) one at a time, with the base model's output at the
        end of a classifier chain when ``final``.
    """
    def source(n_run=None, final=True):
        guard = HeapGuard()
        left = max_rows
        for Xb, yb in progress(adapter.batches(X, y, batch_size), verbose, desc):
            if left is not None:
                if left <= 0:
                    break
                if adapter.n_rows(Xb) > left:
                    Xb, yb = Xb[:left], None if yb is None else yb[:left]
                left -= adapter.n_rows(Xb)
            yield iter_stages(adapter, Xb, n_run, final), yb, adapter.n_rows(Xb)
            guard.step()

    return source


def collect_stage_outputs(batches, stage_fn, n_stages):
    """Apply ``stage_fn`` to every stage vector of every batch; concatenate per stage.

    This is the per-stage tuning pass of every estimator: exit arrays
    (predictions, confidences, distances, ...) of all rows at all stages.

    Parameters
    ----------
    batches : iterable
        ``(stage_items, y_batch, n_rows)`` per batch, as a source yields.
    stage_fn : callable
        ``stage_fn(j, F, final_idx)`` returns a tuple of numpy arrays with one
        row per sample (``final_idx`` is the base model's predicted class
        indices, with ``F`` its probabilities, at the last stage of a chain
        ending in a classifier; ``None`` elsewhere).
    n_stages : int

    Returns
    -------
    outputs : list of tuple of ndarray
        ``outputs[j][k]``: the ``k``-th array returned by ``stage_fn`` at stage
        ``j``, all rows (``None`` for a stage that was not run), as numpy.

    Notes
    -----
    ``stage_fn`` may return tensors on the stages' device: they stay there
    until the pass ends and come back once per stage and array, so the host
    never waits for the device inside the pass.
    """
    parts = [[] for _ in range(n_stages)]
    for items, _, _ in batches:
        for j, F, idx in items:  # one stage output alive at a time
            parts[j].append(stage_fn(j, F, idx))
            del F
    out = []
    for chunks in parts:
        out.append(None if not chunks else tuple(
            to_numpy(concat([c[k] for c in chunks])) for k in range(len(chunks[0]))))
    return out


@dataclass
class ClassMeansData:
    """The data of a class-means fit, as sources of stage vectors.

    Attributes
    ----------
    adapter : StageAdapter
        Fitted; its classes are set once they are known.
    labels : LabelIndex
        Label to class index (grows while streaming when ``streaming``).
    fit_source : callable
        Source of the rows the class means are fitted on (with labels).
    fit_weights : ndarray or None
        Their sample weights.
    n_fit : int or None
        Their number, when known (sizes the stage-vector cache).
    tune_source : callable or None
        Source of held-out tuning rows (without labels); ``None`` tunes on the
        fit rows.
    y_tune, w_tune : ndarray or None
        Labels and weights of the held-out tuning rows.
    streaming : bool
        Whether the labels arrive with the batches (a DataLoader).
    context : callable
        Factory of the context both passes run in (the adapter's
        ``activate`` by default).
    cache_ok : bool
        Whether stage vectors may be cached between the passes.
    statistics : ClassStatistics or None
        Statistics the fit rows are added to (``None``: new ones).
    collective : object or None
        With ``torch.distributed``, the process group's reductions
        (:class:`~sklearn_e2cm._fitting.distributed.ProcessGroupReducer`):
        the statistics are summed over the processes, the eq. 4 scales come
        from every process's tuning rows and the exit arrays of all of them
        are gathered on every process.
    """

    adapter: object
    labels: object
    fit_source: object
    fit_weights: object = None
    n_fit: object = None
    tune_source: object = None
    y_tune: object = None
    w_tune: object = None
    streaming: bool = False
    context: object = None
    cache_ok: bool = True
    statistics: object = None
    collective: object = None


@dataclass
class ClassMeansParams:
    """How class-means exits are fitted (the estimator's parameters).

    Attributes
    ----------
    metric : {"euclidean", "mahalanobis"}
    normalize : bool
        eq. 4 scaling of the Euclidean distances.
    shrinkage : "oas" or float
        Covariance shrinkage of the whitened metric.
    cache_size : float
        Bytes of stage vectors kept between the passes.
    """

    metric: str = "euclidean"
    normalize: bool = True
    shrinkage: object = "oas"
    cache_size: float = 0.0


@dataclass
class ClassMeansFit:
    """Result of :func:`fit_class_means`.

    Attributes
    ----------
    classes : ndarray of shape (n_classes,)
        Sorted labels.
    means : list of ndarray of shape (n_classes, D_j)
    heads : list of ExitHead
    conf, pred : ndarray of shape (n_tune, n_stages)
        Exit confidence and predicted class index of every tuning row at
        every stage (the base model's at the end of a classifier chain).
    correct : ndarray of bool, shape (n_tune, n_stages)
    label_idx : ndarray of int, shape (n_tune,)
        Class index of the label of every tuning row.
    tune_weights : ndarray or None
    shrinkage : list of float or None
        Covariance shrinkage used per stage (whitened metric).
    times : dict
        Seconds spent in each pass.
    statistics : ClassStatistics or None
        The class statistics the heads were built from.
    """

    classes: np.ndarray
    means: list
    heads: list
    conf: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    label_idx: np.ndarray = None
    tune_weights: object = None
    shrinkage: object = None
    times: dict = field(default_factory=dict)
    statistics: object = None


class RowCache:
    """Rows of one stage's vectors, written into one buffer allocated up front.

    One allocation per cached stage instead of one per batch: long-lived
    per-batch chunks between the transient activation buffers fragment the
    heap, and the resident size of a fit then grows by a varying amount. More
    rows than announced are kept as extra chunks.

    Parameters
    ----------
    n_rows : int or None
        Rows announced.
    """

    def __init__(self, n_rows):
        self.n_rows = n_rows
        self.data = None
        self.chunks = []
        self.filled = 0

    def add(self, F):
        """Append the rows of batch ``F`` (numpy or torch).

        Rows go into the buffer allocated on the first call (``n_rows`` rows, of
        ``F``'s dtype and device); past ``n_rows`` they are kept as extra chunks.

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)

        Returns
        -------
        None
        """
        n = F.shape[0]
        if self.data is None and not self.chunks and self.n_rows:
            shape = (self.n_rows, F.shape[1])
            if is_torch(F):
                import torch

                self.data = torch.empty(shape, dtype=F.dtype, device=F.device)
            else:
                self.data = np.empty(shape, dtype=F.dtype)
        if self.data is not None and not self.chunks and self.filled + n <= self.n_rows:
            self.data[self.filled:self.filled + n] = F
        else:
            if self.data is not None and not self.chunks:
                self.chunks.append(self.data[:self.filled])  # more rows than announced
            self.chunks.append(F)
        self.filled += n

    def rows(self):
        """Every row added, as one array.

        Returns
        -------
        rows : ndarray or torch.Tensor of shape (n_added, D)
            A view of the buffer when no extra chunks were needed.
        """
        if not self.chunks:
            return self.data[:self.filled]
        if len(self.chunks) == 1:
            return self.chunks[0]
        return concat(self.chunks, axis=0)


def row_bytes(adapter, n_classes):
    """Bytes per row of every stage's vector (the base model's probabilities last for a
    chain ending in a classifier).

    Parameters
    ----------
    adapter : StageAdapter
        Fitted.
    n_classes : int

    Returns
    -------
    list of int
    """
    widths = [int(d) for d in np.asarray(adapter.vector_dims_)]
    if adapter.final_is_classifier:
        widths[-1] = int(adapter.n_outputs_ or n_classes)
    itemsize = 4 if adapter.backend == "torch" else 8
    return [d * itemsize for d in widths]


def check_covariance_size(adapter, max_bytes):
    """Raise when a whitened exit would hold a covariance above ``max_bytes``.

    Parameters
    ----------
    adapter : StageAdapter
        Fitted (its ``vector_dims_`` are known).
    max_bytes : float
        Largest ``8 * D_j²`` allowed.
    """
    for j, D in enumerate(np.asarray(adapter.vector_dims_)):
        need = 8.0 * float(D) ** 2
        if need > max_bytes:
            raise ValueError(
                f"metric='mahalanobis' at stage {j} needs a {D}x{D} covariance "
                f"({need / 2**20:.0f} MiB), above max_covariance_bytes="
                f"{max_bytes:.0f}. Reduce the stage vectors with pooling "
                "(e.g. pooling='avg4' or ('avg', 2)) or raise max_covariance_bytes."
            )


def _statistics_pass(data, params):
    """Pass 1: stream batches, accumulate class sums, cache a suffix of stage vectors.

    Returns ``(stats, cache, y_idx, final_idx, cached_from)``: stages
    ``cached_from ..`` have all their vectors in ``cache`` (a :class:`RowCache`
    each).
    """
    adapter = data.adapter
    M = adapter.n_stages
    w = data.fit_weights
    stats = data.statistics
    if stats is None:
        stats = ClassStatistics(M, params.metric)
        stats.labels = data.labels
    labels = stats.labels
    cache = [None] * M
    y_all, final_all = [], []
    n_seen = 0
    budget = float(params.cache_size) if (data.cache_ok and data.tune_source is None) else 0.0
    cached_from = M  # stages >= cached_from are cached (a suffix)
    for items, yb, n in data.fit_source():
        if yb is None:
            raise ValueError("Training batches must carry labels: (x, y) pairs.")
        y_idx = labels(yb)
        wb = None if w is None else w[n_seen:n_seen + n]
        if n_seen == 0:  # decide which suffix of stages to cache from the first batch
            total = n if data.n_fit is None else data.n_fit
            per_row, used = row_bytes(adapter, len(labels.labels)), 0.0
            for j in range(M - 1, -1, -1):
                if used + per_row[j] * total > budget:
                    break
                used += per_row[j] * total
                cached_from = j
            cache[cached_from:] = [RowCache(total) for _ in range(M - cached_from)]
        on_device = None  # the batch's labels on the stages' device: copied once per batch
        for j, F, idx in items:  # one stage output alive at a time
            if idx is not None:
                final_all.append(idx)
            if on_device is None and is_torch(F):
                on_device = labels_on_device(y_idx, wb, F.device)
            stats.update(j, F, y_idx, wb, on_device)  # NaN/inf activations surface in the means
            if j >= cached_from:
                cache[j].add(F)
            del F
        y_all.append(y_idx)
        n_seen += n
    if n_seen == 0:
        raise ValueError("X contains no samples.")
    final = np.concatenate(final_all) if final_all else None
    return stats, cache, np.concatenate(y_all), final, cached_from


def accumulate_statistics(data, params):
    """Stream the fit rows of ``data`` once and add their class statistics.

    The statistics pass of :func:`fit_class_means` alone: no stage vector is
    kept and nothing is tuned.

    Parameters
    ----------
    data : ClassMeansData
        ``data.statistics`` receives the rows (new statistics when ``None``).
    params : ClassMeansParams

    Returns
    -------
    stats : ClassStatistics
    """
    context = data.context or data.adapter.activate
    data = copy.copy(data)
    data.cache_ok = False
    with context():
        stats = _statistics_pass(data, params)[0]
    return stats


def _sorted_means(stats, data):
    """Classes in sorted order, their means per stage and the index permutation."""
    classes, order = stats.labels.sorted_order()
    adapter = data.adapter
    if data.streaming or data.collective is not None:  # classes known only now
        final_before = adapter.final_is_classifier
        check_n_classes(classes)
        adapter.set_classes(classes)
        if adapter.final_is_classifier != final_before:
            raise ValueError(
                f"The last stage outputs {adapter.n_outputs_} scores but the labels have "
                f"{len(classes)} classes; pass final_classifier=False to decide the last "
                "stage by nearest class mean."
            )
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.shape[0])
    means = stats.means()
    empty = np.flatnonzero(stats.weights() <= 0)
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
    return classes, means, inverse


def _provisional_heads(means, stats, params):
    """Heads usable for the tuning pass: complete whitened heads, or Euclidean heads whose
    eq. 4 scales are still unknown; and the shrinkage used per stage."""
    if params.metric != "mahalanobis":
        return [ExitHead(C, scale=None) for C in means], None
    heads, shrinkage = [], []
    for C, acc in zip(means, stats.stages):
        head, a = whitened_head(C, acc.within_class_covariance(), params.shrinkage,
                                n_samples=acc.n_seen)
        heads.append(head)
        shrinkage.append(a)
    return heads, shrinkage


def heads_from_statistics(stats, data, params):
    """Class means and exit heads from statistics alone, before any tuning pass.

    Whitened heads are complete; Euclidean heads have no eq. 4 scales yet
    (they compare plain distances): the scales are mean distances of tuning
    rows to the final means, which :func:`tune_class_means` computes.

    Parameters
    ----------
    stats : ClassStatistics
    data : ClassMeansData
        Its adapter (and ``streaming``: the adapter learns the classes).
    params : ClassMeansParams

    Returns
    -------
    classes : ndarray of shape (n_classes,)
    means : list of ndarray of shape (n_classes, D_j)
    heads : list of ExitHead
    shrinkage : list of float or None
    """
    classes, means, _ = _sorted_means(stats, data)
    heads, shrinkage = _provisional_heads(means, stats, params)
    return classes, means, heads, shrinkage


def tuning_pass(adapter, heads, params, source, cache, cached_from, w_tune, final_cached,
                 reduce_sum=None):
    """Pass 2: exit scores of the tuning rows; eq. 4 scales; confidences and predictions.

    Euclidean heads need the mean distance of the tuning rows to every class
    mean before they give probabilities, so the distances are collected and
    turned into probabilities at the end; whitened heads are complete after
    pass 1 and their scores are collected.

    Parameters
    ----------
    adapter : StageAdapter
    heads : list of ExitHead
        Provisional heads (class means, no eq. 4 scale yet); replaced.
    params : ClassMeansParams
    source : callable
        A source of the tuning rows (:func:`forward_source`).
    cache : list of RowCache or None
        Stage vectors of the last stages kept by the statistics pass.
    cached_from : int
        First stage served from ``cache`` (the stages before it run).
    w_tune : ndarray or None
        Weights of the tuning rows (eq. 4 means).
    final_cached : ndarray or None
        The base model's class indices on the tuning rows, when known.
    reduce_sum : callable, default=None
        Sums the eq. 4 statistics across processes (torch.distributed).

    Returns
    -------
    heads : list of ExitHead
    conf, pred : ndarray of shape (n_tune, n_stages)
        Largest exit probability and predicted class index per stage.
    final_idx : ndarray or None
    """
    M = adapter.n_stages
    whitened = params.metric == "mahalanobis"

    def values(j, F, idx):  # left on the stages' device until the pass ends
        v = (heads[j].scores if whitened else heads[j].distances)(F)
        return (v,) if idx is None else (v, np.asarray(idx))

    n_run = cached_from if cache is not None else M
    outputs = [None] * M
    if n_run > 0:
        outputs = collect_stage_outputs(source(n_run, final=n_run == M), values, M)
    for j in range(n_run, M):  # the cached suffix: no stage runs
        outputs[j] = collect_stage_outputs([([(j, cache[j].rows(), None)], None, 0)],
                                           values, M)[j]
        cache[j] = None  # free as we go
    final_idx = final_cached
    if final_idx is None and len(outputs[M - 1]) > 1:
        final_idx = outputs[M - 1][1]
    conf, pred = [], []
    for j in range(M):
        vals = outputs[j][0]
        outputs[j] = None
        if whitened:  # stored from now on in the dtype the stages compute in
            heads[j] = heads[j].astype(vals.dtype)
            P = softmax(vals)
        else:
            heads[j], P = normalized_head(heads[j].means, vals, params.normalize, w_tune,
                                          reduce_sum=reduce_sum)
        conf.append(P.max(axis=1))
        pred.append(P.argmax(axis=1))
    return heads, np.column_stack(conf), np.column_stack(pred), final_idx


def _label_positions(classes, y):
    """Index of every label of ``y`` in the sorted ``classes``; error on unknown labels."""
    y = np.asarray(y)
    pos = np.searchsorted(classes, y)
    inside = pos < classes.shape[0]
    known = inside.copy()
    known[inside] = classes[pos[inside]] == y[inside]
    if not known.all():
        unknown = np.unique(y[~known])
        raise ValueError(
            f"The tuning labels hold classes {unknown.tolist()[:20]} that the class "
            f"statistics do not have ({classes.tolist()[:20]})."
        )
    return pos


def _labelled(source, sink):
    """The source, recording the label batches it serves in ``sink``."""
    def wrapped(n_run=None, final=True):
        for items, yb, n in source(n_run, final):
            if yb is None:
                raise ValueError("Tuning batches must carry labels: (x, y) pairs.")
            sink.append(np.asarray(yb.cpu() if hasattr(yb, "cpu") else yb))
            yield items, yb, n

    return wrapped


def _tune(stats, data, params, times, fit_rows=None):
    """Heads from ``stats``, then the tuning pass on the fit rows or ``data.tune_source``."""
    adapter = data.adapter
    context = data.context or adapter.activate
    collective = data.collective
    classes, means, inverse = _sorted_means(stats, data)
    heads, shrinkage = _provisional_heads(means, stats, params)
    sink = None
    if fit_rows is not None and data.tune_source is None:
        cache, cached_from, y_fit_idx, final_tune = fit_rows
        y_tune_idx, w_tune, source = inverse[y_fit_idx], data.fit_weights, data.fit_source
    else:
        cache, cached_from, final_tune, w_tune = None, adapter.n_stages, None, data.w_tune
        source = data.tune_source
        if data.y_tune is None:  # labels come with the batches (a DataLoader)
            sink = []
            source = _labelled(source, sink)
        else:
            y_tune_idx = _label_positions(classes, data.y_tune)
    t0 = time.perf_counter()
    with context():
        heads, conf, pred, final_idx = tuning_pass(
            adapter, heads, params, source, cache, cached_from, w_tune, final_tune,
            reduce_sum=None if collective is None else collective.sum)
    times["tuning pass"] = time.perf_counter() - t0
    if sink is not None:
        y_tune_idx = _label_positions(classes, np.concatenate(sink) if sink else [])
    if final_idx is not None:
        pred[:, -1] = final_idx
    if collective is not None:  # every process gets every process's tuning rows
        conf, pred, y_tune_idx = (collective.gather_rows(a) for a in (conf, pred, y_tune_idx))
        if w_tune is not None:
            w_tune = collective.gather_rows(np.asarray(w_tune, dtype=np.float64))
    # the means the heads hold (one copy, in the stages' compute dtype)
    return ClassMeansFit(classes, [h.means for h in heads], heads, conf, pred,
                         pred == y_tune_idx[:, None], y_tune_idx, w_tune, shrinkage, times,
                         stats)


def fit_class_means(data, params):
    """Fit class-means exit heads and compute their exit arrays on the tuning rows.

    Pass 1 streams the fit rows once: per-class sums (eq. 2) in float64, the
    within-class scatter for the whitened metric, and a cache of the last
    stages' vectors within ``params.cache_size``. Pass 2 reads the tuning rows
    (the cache, or the stages again for the stages not cached, or a held-out
    source): distances to the means and their eq. 4 scales, or whitened
    scores; then every row's exit confidence and prediction at every stage.
    With ``data.collective`` (``torch.distributed``) the statistics are summed
    over the processes between the passes and the tuning arrays gathered.

    Parameters
    ----------
    data : ClassMeansData
    params : ClassMeansParams

    Returns
    -------
    fit : ClassMeansFit
    """
    adapter = data.adapter
    context = data.context or adapter.activate
    times = {}
    t0 = time.perf_counter()
    with context():
        stats, cache, y_fit_idx, final_fit, cached_from = _statistics_pass(data, params)
    if data.collective is not None:
        local = list(stats.labels.labels)
        data.collective.reduce_statistics(stats)
        y_fit_idx = stats.labels(local)[y_fit_idx]  # local class index -> common index
    times["class statistics pass"] = time.perf_counter() - t0
    return _tune(stats, data, params, times, (cache, cached_from, y_fit_idx, final_fit))


def tune_class_means(stats, data, params):
    """The tuning pass alone: heads from ``stats``, exit arrays of held-out rows.

    Parameters
    ----------
    stats : ClassStatistics
        Statistics of the fit rows (streamed earlier, merged, ...).
    data : ClassMeansData
        ``tune_source`` serves the tuning rows; their labels are ``y_tune``,
        or come with the batches when ``y_tune`` is ``None`` (a DataLoader).
    params : ClassMeansParams

    Returns
    -------
    fit : ClassMeansFit
    """
    if data.tune_source is None:
        raise ValueError("tune_class_means needs a tuning source (data.tune_source).")
    return _tune(stats, data, params, {})
