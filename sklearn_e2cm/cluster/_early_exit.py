"""Deep embedded clustering with early exits: the :class:`DECEarlyExit` estimator.

The large DEC (:class:`~sklearn_e2cm.cluster.DEC`) and one exit head per exit
are trained by the DEC training library (:mod:`sklearn_e2cm.cluster._training`);
the heads' cluster ids are aligned to the large DEC's, and samples are routed
through a stage adapter (:class:`~sklearn_e2cm.stages._dec.DECStages`): the
large encoder cut at the exits, each exit's tail as its stage vector, and the
large DEC's clustering layer as the final classifier. Thresholds come from
the shared E²CM machinery (:class:`~sklearn_e2cm._exit_estimator.EarlyExitBase`)
with agreement with the large DEC as the label-free quality measure.
"""

import numbers

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Hidden, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._backend import import_torch
from .._fitting.passes import collect_stage_outputs, forward_source
from ..exits.class_means import ExitHead, normalized_head
from .._fitting.operating_point import swept_points
from .._thresholds import mixture_exits, served_hull, time_sharing, upper_hull
from .._exit_estimator import EarlyExitBase, routing_uniforms
from ..metrics import clustering_accuracy
from ..stages._dec import DECStages
from ._dec import DEC, _validate_fitted_X
from ._training import _MAX_SEED, _align_to, _fit_prefix_head

__all__ = ["DECEarlyExit"]

#: Named exits: number of hidden layers of the large encoder an exit shares
#: (copies and freezes). The paper's DEC_small and DEC_middle.
_EXIT_DEPTHS = {"small": 1, "middle": 2}


class DECEarlyExit(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, EarlyExitBase, BaseEstimator
):
    """Deep embedded clustering with early exits (E²CM paper, Sections III-C, IV-D).

    Fitting trains the large DEC (:class:`DEC`, encoder ``n_features -
    hidden... - embedding_dim`` and its clustering layer), then one exit
    head per entry of ``exits``: the first layers of the large encoder,
    copied and frozen, followed by a new Linear layer to a
    ``embedding_dim``-d embedding, pretrained and self-trained by the same
    DEC procedure on the frozen layers' output (the paper's ``DEC_small``,
    500-10, and ``DEC_middle``, 500-500-10). Every head's cluster indices
    are renamed to agree with the large DEC's (Hungarian matching on the
    training assignments), so all exits speak of the same clusters.

    At inference the shared layers run once; after each exit's layers the
    exit embedding is compared with that head's cluster centres exactly as
    E²CM compares a stage output with class means (distances, eq. 4
    normalisation, softmax): a sample whose largest probability exceeds the
    exit's threshold leaves with the most probable cluster, the others go
    on, and a sample that reaches the end gets the large DEC's own cluster.

    Thresholds are chosen without labels: the quality of an operating point
    on the training data is its *agreement* with the large DEC, and the
    threshold search (sweep of FLOP targets, upper concave hull, time sharing
    between the two hull vertices around ``flops_target``) is the one of
    :class:`~sklearn_e2cm.EarlyExitClassMeans`.

    Needs PyTorch (``pip install sklearn-e2cm[torch]``).

    Parameters
    ----------
    n_clusters, hidden, embedding_dim, pretrain_epochs, pretrain_lr, optimizer, \
noise, noise_level, self_train_lr, max_iter, update_interval, tol, batch_size, \
n_init, random_state, device, verbose
        As in :class:`DEC`; the large DEC and every exit head are trained
        with them. ``random_state`` also seeds the threshold search and the
        time-sharing assignment. With the same ``random_state`` the large DEC
        is exactly ``DEC(random_state=...)``.
    exits : tuple of {"small", "middle"} or int, default=("small", "middle")
        Where the exits are: ``"small"`` after the first hidden layer of the
        large encoder, ``"middle"`` after the second, an integer ``k`` after
        the ``k``-th (``1 <= k <= len(hidden)``). Order does not matter.
    flops_target : float in (0, 1] or None, default=None
        Expected cost per sample, normalised so that the large DEC costs 1.
        ``None``: no early exit (every sample gets the large DEC's cluster).
    thresholds : array-like of shape (len(exits),), default=None
        Explicit exit thresholds in [0, 1], in exit order (shallowest
        first); override the search.
    threshold_search : {"hull", "bisect-hull", "bisect"}, default="hull"
        ``"hull"``: trace the trade-off by coordinate ascent, keep the upper
        concave hull of (cost, agreement) on the training data and serve
        ``flops_target`` by time sharing. ``"bisect-hull"``: the same hull
        over the paper's search at ``sweep_resolution`` FLOP targets. ``"bisect"``:
        the paper's search for the single target.
    sweep_resolution : int, default=1000
        Number of evenly spaced FLOP targets (``1/n, 2/n, ..., 1``) at which
        the sweep keeps its best threshold vector; the hull is built on them.
        Not a target itself: ``flops_target`` is the one served.
    non_finite : {"raise", "continue"}, default="raise"
        As for :class:`~sklearn_e2cm.EarlyExitClassMeans`: at prediction, a
        row whose exit embedding or score is NaN or infinite raises
        (``"raise"``) or goes on towards the large DEC (``"continue"``).
    n_targets : int
        Deprecated name of ``sweep_resolution`` (renamed in 0.2.0, removed
        in 0.4.0).
    normalize : bool, default=True
        Divide the distances to an exit's centres by their mean over the
        training data (eq. 4) before the softmax.

    Attributes
    ----------
    dec_ : DEC
        The large DEC.
    labels_ : ndarray of int64 of shape (n_samples,)
        The large DEC's cluster of every training sample (``dec_.labels_``;
        ``fit_predict`` returns it). ``predict`` routes with early exits.
    cluster_centers_ : ndarray of float32 of shape (n_clusters, embedding_dim)
        The large DEC's centres.
    classes_ : ndarray of int64 of shape (n_clusters,)
        ``arange(n_clusters)``: the cluster ids ``predict`` returns.
    exit_depths_ : list of int
        Number of shared (frozen) hidden layers of every exit, increasing.
    exit_encoders_ : list of torch.nn.Sequential
        Every exit head's whole encoder (frozen copy of the shared layers,
        then its trained tail), CPU, eval mode.
    exit_centers_ : list of ndarray of shape (n_clusters, embedding_dim)
        Every exit's cluster centres, aligned to the large DEC's ids.
    exit_labels_ : list of ndarray of int64 of shape (n_samples,)
        Every exit head's own training assignment, aligned.
    exit_alignment_ : list of ndarray of int64 of shape (n_clusters,)
        The permutation applied to every exit's cluster ids.
    exit_agreement_ : ndarray of shape (n_exits,)
        Fraction of training samples whose aligned exit assignment equals
        the large DEC's.
    class_means_ : list of ndarray
        The centres used as class means at every exit, then the large DEC's.
    distance_scale_ : list of ndarray of shape (n_clusters,) or None
        eq. 4 scales of every exit (``None`` with ``normalize=False``).
    n_stages_ : int
        ``len(exits) + 1``.
    stage_flops_ : ndarray of shape (n_stages,)
        Per-sample FLOPs of the shared layers of every stage; the last entry
        includes the large DEC's clustering layer. A Linear layer counts
        ``2 * in * out + out``, a ReLU one per element; see Notes.
    exit_flops_ : ndarray of shape (n_stages,)
        Per-sample FLOPs of every exit: its tail layers plus distances,
        eq. 4, softmax and the decision (0 for the large DEC, whose
        clustering layer is part of the base cost).
    cumulative_cost_ : ndarray of shape (n_stages,)
        Normalised cost of leaving after each stage with every exit active.
    thresholds_ : ndarray of shape (n_stages - 1,)
        Exit thresholds of the operating point, shallowest exit first: the
        threshold vector with the largest weight in the mixture. A sample
        leaves exit ``j`` when its largest probability there exceeds
        ``thresholds_[j]``; 1 switches the exit off.
    mixture_thresholds_ : ndarray of shape (n_vectors, n_stages - 1)
        The threshold vectors the operating point time-shares (one row, or
        the two hull vertices around ``flops_target``).
    mixture_weights_ : ndarray of shape (n_vectors,)
        Probability of routing a sample with each row of
        ``mixture_thresholds_`` (each sample is assigned by a hash of its
        features, so a sample always gets the same row).
    expected_flops_ : float
        Expected normalised cost of the operating point on the training data.
    expected_accuracy_ : float
        Its expected agreement with the large DEC on the training data.
    tradeoff_ : pandas.DataFrame
        Swept operating points on the training data: ``target``, ``flops``,
        ``agreement`` (with the large DEC; fitting never sees labels; the same
        values are in ``accuracy``, kept for compatibility), ``thresholds``,
        ``on_hull``. :meth:`tradeoff_curve` evaluates against true labels.
    memory_overhead_bytes_ : int
        Bytes held for the exits (their centres, norms and eq. 4 scales as
        stored, with copies on a non-CPU device) and for the thresholds.
    n_iter_ : int
        Self-training mini-batches of the large DEC.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of str of shape (n_features_in,)
        Names of features seen during fit, when ``X`` has string feature
        names.

    See Also
    --------
    DEC : The large DEC alone.
    sklearn_e2cm.EarlyExitClassMeans : E²CM for classifiers.

    Notes
    -----
    Cost model. ``1.0`` is one sample through the large DEC: its encoder
    plus its Student-t clustering layer (``2D + 2KD + 8K``). Leaving at exit
    ``j`` costs the shared layers up to it plus the overheads of the exits
    evaluated on the way (each exit's tail Linear layer and its class-means
    head, ``head_flops``), so a sample that passes every exit and reaches
    the end pays slightly more than 1 (``cumulative_cost_[-1]``); with
    ``flops_target=None`` no exit is evaluated and every sample costs
    exactly 1.0. Exits with a threshold of 1 are switched off and cost
    nothing.

    With ``normalize=True`` an exit's prediction is the most probable
    cluster after eq. 4 (Algorithm 1 of the paper), which can differ from
    the head DEC's own nearest-centre assignment (``exit_labels_``) on
    samples between clusters.

    References
    ----------
    A. Görmez, V. R. Dasari and E. Koyuncu, "E²CM: Early Exit via Class
    Means for Efficient Supervised and Unsupervised Learning", IJCNN 2022.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn_e2cm import DECEarlyExit
    >>> from sklearn_e2cm.metrics import clustering_accuracy
    >>> X, y = make_blobs(n_samples=300, centers=3, n_features=8, random_state=0)
    >>> ee = DECEarlyExit(n_clusters=3, hidden=(16, 16, 32), embedding_dim=3,
    ...                   pretrain_epochs=5, max_iter=50, n_init=3, flops_target=0.5,
    ...                   sweep_resolution=100, random_state=0).fit(X)
    >>> ee.n_stages_, ee.exit_depths_
    (3, [1, 2])
    >>> r = ee.route(X)  # easy blobs: the first exit already agrees with the large DEC
    >>> round(float(r.flops.mean()), 1)  # the budget is spent: fraction of the large DEC's FLOPs
    0.5
    >>> int(r.exit_counts(ee.n_stages_)[1])  # rows leave first or, time-shared, at the end
    0
    >>> clustering_accuracy(y, ee.predict(X)), clustering_accuracy(y, ee.labels_)
    (1.0, 1.0)
    """

    _score_name = "agreement"  # the training sweep scores agreement with the large DEC

    _parameter_constraints = {
        **DEC._parameter_constraints,
        "exits": [tuple, list],
        "flops_target": [Interval(numbers.Real, 0, 1, closed="right"), None],
        "thresholds": ["array-like", None],
        "threshold_search": [StrOptions({"hull", "bisect-hull", "bisect"})],
        "sweep_resolution": [Interval(numbers.Integral, 2, None, closed="left")],
        "non_finite": [StrOptions({"raise", "continue"})],
        "n_targets": [Interval(numbers.Integral, 2, None, closed="left"),
                      Hidden(StrOptions({"deprecated"}))],
        "normalize": ["boolean"],
    }

    def __init__(
        self,
        n_clusters=10,
        *,
        hidden=(500, 500, 2000),
        embedding_dim=10,
        exits=("small", "middle"),
        flops_target=None,
        thresholds=None,
        threshold_search="hull",
        sweep_resolution=1000,
        normalize=True,
        pretrain_epochs=200,
        pretrain_lr=1e-3,
        optimizer="adam",
        noise="dropout",
        noise_level=0.2,
        self_train_lr=0.01,
        max_iter=20000,
        update_interval=140,
        tol=1e-3,
        batch_size=256,
        n_init=20,
        random_state=None,
        device="cpu",
        verbose=False,
        non_finite="raise",
        n_targets="deprecated",
    ):
        self.n_clusters = n_clusters
        self.hidden = hidden
        self.embedding_dim = embedding_dim
        self.exits = exits
        self.flops_target = flops_target
        self.thresholds = thresholds
        self.threshold_search = threshold_search
        self.sweep_resolution = sweep_resolution
        self.non_finite = non_finite
        self.n_targets = n_targets
        self.normalize = normalize
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.optimizer = optimizer
        self.noise = noise
        self.noise_level = noise_level
        self.self_train_lr = self_train_lr
        self.max_iter = max_iter
        self.update_interval = update_interval
        self.tol = tol
        self.batch_size = batch_size
        self.n_init = n_init
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # -- validation -------------------------------------------------------

    def _exit_depths(self):
        """The exits as sorted numbers of shared hidden layers; ValueError when invalid."""
        hidden = tuple(self.hidden)
        n_hidden = len(hidden)
        accepted = (
            "'small' (after the first hidden layer), 'middle' (after the second) or an "
            f"integer number of shared hidden layers in [1, {n_hidden}]"
        )
        depths = []
        for e in self.exits:
            if isinstance(e, str):
                if e not in _EXIT_DEPTHS:
                    raise ValueError(f"exits contains {e!r}; each exit must be {accepted}.")
                d = _EXIT_DEPTHS[e]
            elif isinstance(e, numbers.Integral) and not isinstance(e, (bool, np.bool_)):
                d = int(e)
            else:
                raise ValueError(f"exits contains {e!r}; each exit must be {accepted}.")
            if not 1 <= d <= n_hidden:
                raise ValueError(
                    f"exits contains {e!r}, an exit after hidden layer {d}, but hidden="
                    f"{self.hidden!r} has {n_hidden} hidden layer(s); each exit must be "
                    f"{accepted}."
                )
            depths.append(d)
        if not depths:
            raise ValueError(
                f"exits={self.exits!r} names no exit; give at least one of 'small', 'middle' "
                "or a number of shared hidden layers (use DEC for no early exit)."
            )
        if len(set(depths)) != len(depths):
            raise ValueError(
                f"exits={self.exits!r} names the same exit twice (exit depths {depths})."
            )
        return sorted(depths)

    def _dec_params(self):
        return {name: getattr(self, name) for name in DEC().get_params()}

    # -- fitting ----------------------------------------------------------

    def fit(self, X, y=None):
        """Train the large DEC and the exit heads, then choose the thresholds.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : Ignored
            Not used (clustering is unsupervised), present for API consistency.

        Returns
        -------
        self : DECEarlyExit
            The fitted estimator.
        """
        self._validate_params()
        import_torch("DEC")
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        depths = self._exit_depths()
        # one stream of seeds, drawn in this order: the large DEC, then every exit head
        rng = check_random_state(self.random_state)
        dec = DEC(**dict(self._dec_params(), random_state=rng)).fit(X)
        dec.random_state = self.random_state  # exactly DEC(random_state=...) for an int seed
        heads = self._fit_exit_heads(dec, depths, X, rng)
        adapter = self._make_adapter(dec, [enc for enc, _, _, _ in heads], depths)
        exit_heads, conf, correct = self._exit_arrays(adapter, [C for _, C, _, _ in heads], X)
        self._set_fitted_attributes(dec, depths, heads, exit_heads)
        search_rng = (
            rng if isinstance(self.random_state, np.random.RandomState)
            else check_random_state(self.random_state)
        )
        table = self._finish_fit(adapter, exit_heads, adapter.stage_flops_, conf, correct, None,
                                 search_rng)
        self._store_label_free_hull(table)
        return self

    def _fit_exit_heads(self, dec, depths, X, rng):
        """Train one head per exit depth on the frozen prefix of ``dec``'s encoder.

        Returns a list of ``(encoder, centers, labels, mapping)``, one per
        depth, with cluster ids aligned to ``dec.labels_``.
        """
        params = dec._train_params()
        heads = []
        for d in depths:
            p = dict(params, random_state=int(rng.randint(_MAX_SEED)))
            enc, C, lab = _fit_prefix_head(
                dec.encoder_, d, (self.embedding_dim,), X, desc=f"DEC exit @{d}", **p
            )
            C, lab, mapping = _align_to(dec.labels_, lab, C)
            heads.append((enc, C, lab, mapping))
        return heads

    def _make_adapter(self, dec, encoders, depths):
        """The large encoder cut at the exits, with each exit's tail as its stage vector."""
        large = dec.encoder_
        bounds = [0, *depths]
        stages = [large[2 * a : 2 * b] for a, b in zip(bounds[:-1], bounds[1:])]
        tails = [enc[2 * d :] for enc, d in zip(encoders, depths)]
        return DECStages(stages, tails, large[2 * depths[-1] :], dec.cluster_centers_,
                         device=self.device).fit()

    def _exit_arrays(self, adapter, centers, X):
        """Exit heads and the per-stage tuning arrays on the training data.

        One forward pass gives every exit's distances to its centres (from
        which the eq. 4 scales are set) and the large DEC's cluster.

        Returns
        -------
        heads : list
            One :class:`~sklearn_e2cm.exits.class_means.ExitHead` per exit, then
            ``None`` (the last stage is the large DEC's own clustering layer).
        conf : ndarray of shape (n_samples, n_stages)
            Exit confidence (largest probability) of every sample at every
            stage; 1 at the last.
        correct : ndarray of bool of shape (n_samples, n_stages)
            Agreement of every stage's cluster with the large DEC's (no labels).
        """
        raw = [ExitHead(C, scale=None) for C in centers]

        def distances(j, F, idx):  # the last stage gives the large DEC's clusters
            return (raw[j].distances(F),) if idx is None else (idx,)

        with adapter.activate():
            outputs = collect_stage_outputs(
                forward_source(adapter, X, None, self.batch_size)(), distances,
                adapter.n_stages)
        final_idx = outputs[-1][0]
        heads, conf, pred = [], [], []
        for j, C in enumerate(centers):
            head, P = normalized_head(C, outputs[j][0], self.normalize)
            heads.append(head)
            conf.append(P.max(axis=1))
            pred.append(P.argmax(axis=1))
        heads.append(None)
        conf.append(np.ones(X.shape[0]))
        pred.append(final_idx)
        conf, pred = np.column_stack(conf), np.column_stack(pred)
        return heads, conf, pred == final_idx[:, None]

    def _set_fitted_attributes(self, dec, depths, heads, exit_heads):
        """The fitted attributes of the large DEC and the exit heads."""
        encoders, centers, labels, mappings = (list(a) for a in zip(*heads))
        self.dec_ = dec
        self.labels_ = dec.labels_
        self.cluster_centers_ = dec.cluster_centers_
        self.n_iter_ = dec.n_iter_
        self.classes_ = np.arange(self.n_clusters, dtype=np.int64)
        self.exit_depths_ = depths
        self.exit_encoders_ = encoders
        self.exit_centers_ = centers
        self.exit_labels_ = labels
        self.exit_alignment_ = mappings
        self.exit_agreement_ = np.array([np.mean(lab == dec.labels_) for lab in labels])
        self.class_means_ = [h.means for h in exit_heads[:-1]] + [
            np.asarray(dec.cluster_centers_, dtype=np.float64)
        ]
        self.distance_scale_ = [h.scale for h in exit_heads[:-1]]
        self._n_features_out = self.embedding_dim
        self._fit_times = {}

    def _store_label_free_hull(self, table):
        """Keep the (cost, agreement) hull of the training sweep for :meth:`tradeoff_curve`."""
        tr = self.tradeoff_
        if len(tr) > 1:  # the hull search ran: reuse it
            T = np.vstack(tr["thresholds"].to_numpy())
            costs, scores = tr["flops"].to_numpy(), tr["agreement"].to_numpy()
        else:  # a single operating point was chosen: sweep as a hull search would
            _, T, costs, scores = swept_points(table, self._operating_point_spec())
        hull = served_hull(costs, scores, T)
        self._hull_thresholds = T[hull]
        self._hull_costs = np.asarray(costs)[hull]
        self._hull_agreement = np.asarray(scores)[hull]

    # -- inference --------------------------------------------------------

    def _validate_X(self, X):
        return _validate_fitted_X(self, X)

    def transform(self, X):
        """Embed ``X`` with the large DEC's encoder.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        Z : ndarray of float32 of shape (n_samples, embedding_dim)
            The large DEC's embeddings (no early exit).
        """
        return self.dec_._embed(self._validate_X(X))

    def fit_predict(self, X, y=None):
        """Fit and return the large DEC's training clusters (``labels_``).

        Unlike :meth:`predict` after :meth:`fit`, no sample exits early.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        labels : ndarray of int64 of shape (n_samples,)
            The large DEC's cluster of every training sample.
        """
        return self.fit(X).labels_

    def predict(self, X):
        """Cluster of each sample, with early exits (ids of the large DEC).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        labels : ndarray of int64 of shape (n_samples,)
            Cluster ids in ``[0, n_clusters)``, decided by the exit each
            sample leaves at under the operating point.
        """
        return super().predict(X).astype(np.int64)

    @staticmethod
    def _cluster_to_class(y, clusters):
        """Hungarian mapping of cluster ids to classes; reference cluster of each sample.

        Returns an int array with, for every sample, the cluster id mapped to
        its class (``-1`` when no cluster maps to it).
        """
        from scipy.optimize import linear_sum_assignment

        classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
        y_idx = y_idx.reshape(-1)
        K = int(max(clusters.max(initial=-1) + 1, 1))
        table = np.zeros((K, classes.shape[0]))
        np.add.at(table, (clusters, y_idx), 1.0)
        rows, cols = linear_sum_assignment(table, maximize=True)
        cluster_of_class = np.full(classes.shape[0], -1, dtype=np.int64)
        cluster_of_class[cols] = rows
        return cluster_of_class[y_idx]

    def exit_table(self, X, y=None, sample_weight=None):
        """Per-stage exit arrays of this fitted estimator on new data (one forward pass).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.
        y : array-like of shape (n_samples,) or None
            True classes: a prediction is correct when its cluster is the one
            mapped to the sample's class by the Hungarian matching of the large
            DEC's clusters to the classes on ``X`` (so the last stage's score
            is the large DEC's clustering accuracy). ``None``: the score is
            agreement with the large DEC.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples in the table's scores and costs.

        Returns
        -------
        table : ExitTable
            Exit confidence, correctness and cluster id (``pred_labels``) of
            every sample at every stage, with this estimator's cost model.
        """
        X = self._validate_X(X)
        preds, _, confs = self._staged(X)
        if y is not None:  # the cluster standing for each sample's class, or -1
            y = self._cluster_to_class(_check_y_length(y, X), preds[-1])
        return self._table_from_staged(preds, confs, y, sample_weight)

    def tradeoff_curve(self, X, y, *, scoring=None, targets=None):
        """Clustering score against cost on ``(X, y)``, one forward pass.

        Every point is an operating point chosen *without labels*: for each
        FLOP target the time-sharing mixture of the training (cost,
        agreement) hull that :meth:`set_operating_point` would serve. Its
        routed predictions on ``X`` (exactly those of :meth:`predict` after
        ``set_operating_point(flops_target=target)``) are rebuilt from the
        exit table of ``X`` and scored against ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.
        y : array-like of shape (n_samples,)
            True classes.
        scoring : callable, default=None
            ``scoring(y_true, y_pred) -> float`` on cluster ids;
            :func:`~sklearn_e2cm.metrics.clustering_accuracy` when ``None``.
        targets : array-like of float, default=None
            FLOP targets. ``None``: 101 targets evenly spaced from the
            cheapest hull vertex to 1.0, plus the hull vertices.

        Returns
        -------
        curve : pandas.DataFrame
            One row per target, in increasing target order, then one row for
            the large DEC (``target`` NaN): ``target``, ``flops`` (mean
            normalised cost on ``X``), ``score``, ``agreement`` (with the
            large DEC on ``X``) and ``on_hull`` (vertex of the upper concave
            hull of (flops, score) among the rows).
        """
        import pandas as pd

        check_is_fitted(self)
        scoring = clustering_accuracy if scoring is None else scoring
        if not callable(scoring):
            raise ValueError(
                f"scoring must be a callable scoring(y_true, y_pred); got {scoring!r}."
            )
        X = self._validate_X(X)
        y = _check_y_length(y, X)
        hull_c, hull_T = self._hull_costs, self._hull_thresholds
        if targets is None:
            targets = np.union1d(hull_c, np.linspace(hull_c[0], 1.0, 101))
        targets = np.sort(np.asarray(targets, dtype=np.float64).ravel())
        if targets.size == 0 or np.any(~np.isfinite(targets)) or np.any(targets <= 0):
            raise ValueError(f"targets must be finite FLOP targets > 0; got {targets!r}.")
        table = self.exit_table(X)
        pred = table.pred_labels
        final = pred[:, -1]
        rows = np.arange(table.n_samples)
        u = routing_uniforms(self, X)
        cache = {}  # exits and costs of every hull vertex, shared by the targets
        out = []
        for target in targets:
            vertices, weights = time_sharing(hull_c, target)
            exits, cost = mixture_exits(table, hull_T, vertices, weights, u, cache)
            y_pred = pred[rows, exits]
            out.append((target, float(cost.mean()), float(scoring(y, y_pred)),
                        float(np.mean(y_pred == final))))
        out.append((np.nan, 1.0, float(scoring(y, final)), 1.0))
        curve = pd.DataFrame(out, columns=["target", "flops", "score", "agreement"])
        on_hull = np.zeros(len(curve), dtype=bool)
        on_hull[upper_hull(curve["flops"].to_numpy(), curve["score"].to_numpy())] = True
        curve["on_hull"] = on_hull
        return curve

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags


def _check_y_length(y, X):
    """``y`` as a 1-D array with one label per row of ``X``; ValueError otherwise."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must be a 1-D array with one label per sample of X ({X.shape[0]}); got shape "
            f"{y.shape}."
        )
    return y
