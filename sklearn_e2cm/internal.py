"""InternalClassifierEarlyExit: trained internal classifiers (SDN, BranchyNet, BWDS), alone
or combined with E²CM (paper §III-B).

Internal classifiers (ICs) are small trained heads placed after a few stages of
a frozen network: a feature reduction (the ``pooling`` of the stage output) and
one linear layer, trained by minibatch Adam on the network's stage outputs
while the network itself stays untouched. Three baselines of the paper are
offered through ``method``:

* ``"sdn"`` (Shallow-Deep Networks, Kaya et al. 2019): ICs after the stages at
  15, 30, 45, 60, 75 and 90 % of the network's FLOPs; a sample exits when the
  IC's largest class probability exceeds the exit's threshold.
* ``"branchynet"`` (Teerapittayanon et al. 2016): exits after the first stage
  and at a third of the FLOPs; a sample exits when the entropy of the IC's
  prediction is low (its confidence ``1 - H / log K`` exceeds the threshold).
  Unlike the original, the branches are linear heads trained on the frozen
  network, not convolutional branches trained jointly with it.
* ``"bwds"`` (Bolukbasi, Wang, Dekel & Saligrama 2017): as SDN, plus a
  decision function per exit (a binary linear classifier on the same input,
  trained separately after the ICs) that predicts whether leaving is safe:
  the IC is right, or the base model is wrong too (for a network that does
  not end in a classifier: the IC is right). A sample exits when that
  probability exceeds the threshold.

E²CM boosts any of them (paper §III-B): ``class_means=True`` concatenates the
normalised distances to the class means (eq. 3-4) to the IC's input, and
``combine`` consults E²CM at every exit:

* ``"consult"`` (the paper's rule, §III-B and Table I): a sample leaves when
  the IC's own confidence passes the exit's threshold *and* E²CM's class at
  that exit (the argmax of its class-means scores) equals the IC's class;
  when E²CM disagrees, the sample goes on. One threshold per exit, the IC's.
* ``"and"`` lets a sample leave only when the IC wants to exit *and* E²CM's
  own exit rule fires too; ``"or"`` lets it leave when either does, with the
  IC's prediction. To compare the two confidences on one threshold per exit,
  each is first mapped to its quantile on the tuning data (a 1001-point grid
  kept with the head); the combined confidence is the smaller (``"and"``) or
  the larger (``"or"``) of the two quantiles.

Every rule pays the class-means head at every exit it evaluates (its FLOPs
are counted in ``exit_flops_``).

Thresholds are chosen exactly as for :class:`~sklearn_e2cm.EarlyExitClassMeans`
(paper §IV-A search, convex hull, time sharing) on cached per-exit arrays, and
inference uses the same router with compaction.
"""

import numbers
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Hidden, Interval, StrOptions

from ._backend import as_backend, concat, softmax, to_numpy, warn, zeros_like_backend
from ._exit_estimator import EarlyExitBase
from ._fitting.inputs import (
    LabelIndex,
    calibration_rows,
    fit_adapter,
    resolve_stage_costs,
    take_rows,
    validate_fit_input,
)
from ._fitting.passes import (
    ClassMeansData,
    ClassMeansParams,
    check_covariance_size,
    collect_stage_outputs,
    fit_class_means,
    forward_source,
)
from ._fitting.training import EarlyStopping, LinearSoftmaxTrainer, StopTraining, run_epochs
from ._routing import iter_stages
from .stages import is_torch_stages, make_stage_adapter
from .exits.internal_classifier import InternalClassifierHead, whitened_score_moments
from .stages._grouped import GroupedStages

__all__ = ["InternalClassifierEarlyExit"]

#: Default exit placement of each method: fractions of the network's FLOPs.
_DEFAULT_EXITS = {
    "sdn": (0.15, 0.30, 0.45, 0.60, 0.75, 0.90),
    "bwds": (0.15, 0.30, 0.45, 0.60, 0.75, 0.90),
    "branchynet": ("first", 1.0 / 3.0),
}
_DEFAULT_CRITERION = {"sdn": "max_proba", "branchynet": "entropy", "bwds": "decision"}


class InternalClassifierEarlyExit(ClassifierMixin, EarlyExitBase, BaseEstimator):
    """Early exits by trained internal classifiers (SDN / BranchyNet / BWDS), optionally
    combined with E²CM.

    The network is frozen: only the internal classifiers (a linear layer on
    each exit's pooled stage output) and, for BWDS, the decision functions are
    trained, by minibatch Adam (``torch.optim``, autograd on the heads only)
    for ``epochs`` passes over the training data. With ``class_means=True``
    and/or ``combine``, the class means of every exit are fitted first (one
    pass, as :class:`EarlyExitClassMeans`).

    Needs PyTorch, also with scikit-learn stages (their stage vectors are
    trained on as float64 CPU tensors).

    Parameters
    ----------
    stages : list, Pipeline or torch module
        The staged model, as for :class:`EarlyExitClassMeans`.
    method : {"sdn", "branchynet", "bwds"}, default="sdn"
        Baseline; sets the default exit placement and exit criterion (see the
        module docstring).
    exit_at : None or sequence of int or float, default=None
        Where the exits go: stage indices (ints in ``[0, n_stages - 2]``) or
        fractions of the network's FLOPs (floats in (0, 1); each goes to the
        stage whose cumulative cost is closest), or ``"first"`` (after the
        first stage). ``None``: the method's default placement.
    criterion : {"max_proba", "entropy"} or None, default=None
        Exit criterion of the ICs (``None``: the method's own; BWDS always
        uses its decision functions).
    epochs : int, default=1
        Passes over the training data to train the ICs (and, for BWDS, as
        many again for the decision functions); the most with
        ``early_stopping``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training rows (not used to
        train the classifiers), read every classifier's cross-entropy on them
        after each epoch, stop once none has improved (by more than 1e-4)
        for ``n_iter_no_change`` epochs, and keep each classifier's best
        epoch: training to convergence, as the paper's unlimited budget.
        The held-out rows still count for the class means and the
        thresholds.
    validation_fraction : float in (0, 1), default=0.1
        Share of the training rows held out by ``early_stopping``.
    n_iter_no_change : int, default=3
        Epochs without improvement before ``early_stopping`` stops.
    learning_rate : float, default=1e-3
        Adam step size (inputs are standardised per feature).
    class_means : bool, default=False
        Concatenate the normalised distances to the class means (eq. 3-4) to
        every IC's input (paper §III-B). With ``metric="mahalanobis"`` the
        appended whitened scores are centred over the classes (``-½`` the
        Mahalanobis distances minus their mean) and standardised with their
        mean and standard deviation over the fit rows (derived exactly from
        the class statistics, no extra pass; ``4K`` FLOPs per exit): raw,
        their common part is orders of magnitude larger than the stage
        vectors and drowns them.
    combine : {None, "consult", "and", "or"}, default=None
        Consult E²CM at every exit (see the module docstring):
        ``"consult"`` exits when the IC's confidence passes the threshold and
        E²CM's class at that exit equals the IC's (the paper's rule);
        ``"and"`` / ``"or"`` combine the quantiles of the two confidences by
        min / max.
    metric : {"euclidean", "mahalanobis"}, default="euclidean"
        Distance of the class-means exits used by ``class_means`` and
        ``combine``, as for :class:`EarlyExitClassMeans` (``"mahalanobis"``
        wants pooled stage outputs).
    flops_target, thresholds, threshold_search, sweep_resolution :
        As for :class:`EarlyExitClassMeans`; thresholds are in [0, 1] (the
        criterion's confidence, or a quantile with ``"and"`` / ``"or"``).
    pooling : as for :class:`EarlyExitClassMeans`, default=None
        Feature reduction of the stage outputs before the ICs (and the
        class means).
    calibration : None, float or int, default=None
        Tune thresholds on the training data (``None``, as the paper) or on
        a held-out part of it.
    stage_costs : array-like of shape (n_stages,) or dict, default=None
        Per-sample FLOPs of the network's stages overriding the cost model,
        as for :class:`EarlyExitClassMeans` (needed for steps of unknown cost).
    final_classifier : "auto" or bool, default="auto"
    batch_size : int, default=256
    device : str, default="cpu"
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling of the training data, the threshold search and
        time sharing.
    verbose : int, default=0
    non_finite : {"raise", "continue"}, default="raise"
        As for :class:`EarlyExitClassMeans`: what a NaN or infinite stage
        vector or exit score does at prediction.
    n_targets : int
        Deprecated name of ``sweep_resolution`` (renamed in 0.2.0, removed
        in 0.4.0).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    exit_stages_ : ndarray of int
        Stage indices (of the network) after which an exit is placed; the
        last entry is the network's last stage.
    n_stages_ : int
        Number of exits, the final one included (the routing stages).
    thresholds_, mixture_thresholds_, mixture_weights_, stage_flops_,
    exit_flops_, cumulative_cost_, expected_flops_, expected_accuracy_,
    tradeoff_, memory_overhead_bytes_ :
        As for :class:`EarlyExitClassMeans`, per exit (``stage_flops_`` sums
        the network's stages between two exits).
    class_means_ : list of ndarray or None
        Class means per exit when E²CM is used.
    train_accuracy_ : ndarray of shape (n_exits,)
        Accuracy of every exit's classifier on the tuning data (the base
        model's at the end when it is a classifier).
    n_epochs_ : dict
        Epochs run per training phase (``"IC training"``, and ``"BWDS
        decision functions"``): ``epochs`` unless ``early_stopping`` ended
        it sooner.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.kernel_approximation import Nystroem
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_digits(return_X_y=True)
    >>> stages = [StandardScaler(), Nystroem(n_components=300, random_state=0),
    ...           LogisticRegression(max_iter=500)]
    >>> ic = InternalClassifierEarlyExit(stages, exit_at=[0, 1], epochs=10,
    ...                                  flops_target=0.5, random_state=0).fit(X, y)
    >>> ic.exit_stages_.tolist()  # an IC after stages 0 and 1, the base model at the end
    [0, 1, 2]
    >>> r = ic.route(X)
    >>> bool(abs(r.flops.mean() - 0.5) < 0.01)
    True

    The paper's rule: an IC's exit fires only where E²CM's class agrees with it.

    >>> both = InternalClassifierEarlyExit(stages, exit_at=[0, 1], epochs=10, combine="consult",
    ...                                    flops_target=0.5, random_state=0).fit(X, y)
    >>> bool(abs(both.route(X).flops.mean() - 0.5) < 0.01)
    True
    """

    _parameter_constraints = {
        "stages": "no_validation",
        "method": [StrOptions({"sdn", "branchynet", "bwds"})],
        "exit_at": ["array-like", None],
        "criterion": [StrOptions({"max_proba", "entropy"}), None],
        "epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "class_means": ["boolean"],
        "combine": [StrOptions({"consult", "and", "or"}), None],
        "metric": [StrOptions({"euclidean", "mahalanobis"})],
        "flops_target": [Interval(numbers.Real, 0, 1, closed="right"), None],
        "thresholds": ["array-like", None],
        "threshold_search": [StrOptions({"hull", "bisect-hull", "bisect"})],
        "sweep_resolution": [Interval(numbers.Integral, 2, None, closed="left")],
        "non_finite": [StrOptions({"raise", "continue"})],
        "n_targets": [Interval(numbers.Integral, 2, None, closed="left"),
                      Hidden(StrOptions({"deprecated"}))],
        "pooling": "no_validation",
        "calibration": [
            Interval(numbers.Real, 0, 1, closed="neither"),
            Interval(numbers.Integral, 1, None, closed="left"),
            None,
        ],
        "stage_costs": ["array-like", dict, None],
        "final_classifier": [StrOptions({"auto"}), "boolean"],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": "no_validation",
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        stages=None,
        *,
        method="sdn",
        exit_at=None,
        criterion=None,
        epochs=1,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        learning_rate=1e-3,
        class_means=False,
        combine=None,
        metric="euclidean",
        flops_target=None,
        thresholds=None,
        threshold_search="hull",
        sweep_resolution=1000,
        pooling=None,
        calibration=None,
        stage_costs=None,
        final_classifier="auto",
        batch_size=256,
        device="cpu",
        random_state=None,
        verbose=0,
        non_finite="raise",
        n_targets="deprecated",
    ):
        self.stages = stages
        self.method = method
        self.exit_at = exit_at
        self.criterion = criterion
        self.epochs = epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.learning_rate = learning_rate
        self.class_means = class_means
        self.combine = combine
        self.metric = metric
        self.flops_target = flops_target
        self.thresholds = thresholds
        self.threshold_search = threshold_search
        self.sweep_resolution = sweep_resolution
        self.non_finite = non_finite
        self.n_targets = n_targets
        self.pooling = pooling
        self.calibration = calibration
        self.stage_costs = stage_costs
        self.final_classifier = final_classifier
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = not is_torch_stages(self.stages)
        tags.input_tags.allow_nan = False
        tags.classifier_tags.poor_score = True
        return tags

    # --------------------------------------------------------------- helpers
    def _resolve_exits(self, base, stage_flops):
        """Sorted unique base-stage indices of the exits (the final stage excluded)."""
        M = base.n_stages
        spec = self.exit_at
        if M == 1 and spec is None:
            return []  # the input is the only stage: one classifier, nothing to exit from
        if spec is None:
            spec = _DEFAULT_EXITS[self.method]
        cum = np.cumsum(np.asarray(stage_flops, dtype=np.float64))
        total = cum[-1] if cum[-1] > 0 else 1.0
        out = []
        for s in list(spec):
            if isinstance(s, str) and s == "first":
                j = 0
            elif isinstance(s, (numbers.Integral, np.integer)) and not isinstance(s, bool):
                j = int(s)
                if not 0 <= j <= M - 2:
                    raise ValueError(
                        f"exit_at contains stage {j}; exits go after stages 0 .. {M - 2} "
                        f"(the network has {M} stages and always exits at the last)."
                    )
            elif isinstance(s, (numbers.Real, np.floating)) and not isinstance(s, bool):
                if not 0 < float(s) < 1:
                    raise ValueError(
                        f"exit_at fractions must lie in (0, 1) (a share of the network's "
                        f"FLOPs); got {s!r}."
                    )
                j = int(np.argmin(np.abs(cum[:-1] / total - float(s)))) if M > 1 else 0
            else:
                raise ValueError(
                    f"exit_at entries must be stage indices (int) or FLOP fractions (float); "
                    f"got {s!r}."
                )
            out.append(j)
        return sorted(set(out))

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, sample_weight=None):
        """Train the internal classifiers on the frozen network and choose the thresholds.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or torch tensor
            Training input (a DataLoader is not supported: rows are shuffled
            every epoch).
        y : array-like of shape (n_samples,)
            Labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the training loss, the class means and the tuning scores.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        rng = check_random_state(self.random_state)
        rng.randint(np.iinfo(np.int32).max)  # kept: the seed stream of earlier versions
        base = make_stage_adapter(self.stages, pooling=self.pooling, device=self.device,
                                  batch_size=self.batch_size,
                                  final_classifier=self.final_classifier)
        X, y, sample_weight, streaming = validate_fit_input(self, base, X, y, sample_weight)
        if streaming:
            raise ValueError(
                "InternalClassifierEarlyExit trains on array or tensor input (it shuffles the "
                "rows every epoch); a DataLoader is not supported."
            )
        if self.method == "bwds" and self.criterion is not None:
            raise ValueError(
                f"method='bwds' exits by its decision functions; criterion={self.criterion!r} "
                "applies to 'sdn' and 'branchynet' only (leave it None)."
            )
        fit_rows, tune_rows = calibration_rows(X, y, sample_weight, self.calibration, rng, False)
        tune_rows = tune_rows or fit_rows
        classes = np.unique(y)
        fit_adapter(self, base, *fit_rows, LabelIndex(classes), False, self.final_classifier)
        self.classes_ = classes
        stage_flops = resolve_stage_costs(base.stage_flops_, base.cost_errors_,
                                          self.stage_costs)
        grouped = GroupedStages(base, self._resolve_exits(base, stage_flops),
                                stage_flops=stage_flops)
        self.exit_stages_ = np.asarray(grouped.ends)
        self._fit_times = {}
        e2cm_heads, moments = self._fit_class_means(grouped, fit_rows, rng)
        heads = self._train_heads(grouped, fit_rows, e2cm_heads, moments, rng)
        conf, correct, tune_w = self._tuning_arrays(grouped, heads, tune_rows)
        self._finish_fit(grouped, heads, grouped.stage_flops_, conf, correct, tune_w, rng)
        return self

    def _n_ics(self, grouped):
        """Number of exits with an internal classifier (all but a base-model classifier)."""
        return grouped.n_stages - 1 if grouped.final_is_classifier else grouped.n_stages

    def _fit_class_means(self, grouped, fit_rows, rng):
        """Class-means heads of every exit when E²CM is used (``class_means`` or ``combine``).

        Returns the heads and, per exit, the fit rows' ``(mean, std)`` of the
        whitened scores appended to the ICs' input (``None`` where they are
        appended unstandardised or not at all).
        """
        self.class_means_ = None
        if not (self.class_means or self.combine):
            return [None] * grouped.n_stages, [None] * grouped.n_stages
        rng.randint(np.iinfo(np.int32).max)  # kept: the seed stream of earlier versions
        t0 = time.perf_counter()
        X_fit, y_fit, w_fit = fit_rows
        if self.metric == "mahalanobis":
            check_covariance_size(grouped, 2**28)
        data = ClassMeansData(
            adapter=grouped, labels=LabelIndex(self.classes_),
            fit_source=forward_source(grouped, X_fit, y_fit, self.batch_size,
                                      verbose=self.verbose, desc="IC fit (class means)"),
            fit_weights=w_fit, n_fit=len(y_fit))
        fit = fit_class_means(data, ClassMeansParams(metric=self.metric, cache_size=1.5e9))
        self.class_means_ = fit.means
        moments = [None] * grouped.n_stages
        if self.class_means and self.metric == "mahalanobis":
            weights = fit.statistics.weights()
            moments = [whitened_score_moments(h, weights, cov)
                       for h, cov in zip(fit.heads, fit.statistics.covariances())]
        self._fit_times["class means"] = time.perf_counter() - t0
        return list(fit.heads), moments

    def _train_heads(self, grouped, fit_rows, e2cm_heads, moments, rng):
        """Train the internal classifiers, then (BWDS) the decision functions.

        Every epoch draws a row order from ``rng``, runs the frozen network on
        the reordered rows batch by batch (under its inference context) and
        takes one Adam step per head and batch
        (:func:`~sklearn_e2cm._fitting.training.run_epochs`); the mean training
        loss of every epoch, summed over the heads, is kept in
        ``_fit_losses``.
        """
        X_fit, y_fit, w_fit = fit_rows
        G, n_ic, K = grouped.n_stages, self._n_ics(grouped), len(self.classes_)
        held_out = None
        if self.early_stopping:
            X_fit, y_fit, w_fit, held_out = self._validation_split(X_fit, y_fit, w_fit, rng)
        criterion = "decision" if self.method == "bwds" else (
            self.criterion or _DEFAULT_CRITERION[self.method])
        y_fit_idx = np.searchsorted(self.classes_, y_fit)
        e2cm_input = bool(self.class_means)
        heads = []
        for g in range(n_ic):
            mean, std = (None, None) if moments[g] is None else moments[g]
            heads.append(InternalClassifierHead(None, None, criterion, e2cm_heads[g], e2cm_input,
                                                combine=self.combine, e2cm_mean=mean,
                                                e2cm_std=std))
        self._fit_losses, self.n_epochs_ = {}, {}
        t0 = time.perf_counter()
        validation = None if held_out is None else self._validation_features(
            grouped, heads, held_out, n_ic)

        def epoch_batches(order):
            """``(Xb, yb, wb)`` of one epoch: the network's input batches in ``order``."""
            Xe, ye = take_rows(X_fit, order), y_fit_idx[order]
            we = None if w_fit is None else w_fit[order]
            start = 0
            for Xb, _ in grouped.batches(Xe, None, self.batch_size):
                n = grouped.n_rows(Xb)
                yield Xb, ye[start:start + n], None if we is None else we[start:start + n]
                start += n

        def train(models, target, desc):
            need_final = target is not None and grouped.final_is_classifier

            def step(batch):
                Xb, yb, wb = batch
                feats, final_idx = [], None
                for g, F, idx in iter_stages(grouped, Xb, G if need_final else n_ic):
                    if idx is not None:
                        final_idx = idx
                    elif g < n_ic:
                        feats.append(heads[g].inputs(F))
                losses = []
                for g, V in enumerate(feats):
                    t = yb if target is None else target(g, V, yb, final_idx)
                    loss = models[g].partial_fit(V, t, wb).last_loss
                    if loss is not None:
                        losses.append(loss)
                return sum(losses) if losses else None

            stopper = None
            if validation is not None:
                V, yv, wv, final_v = validation

                def losses():
                    return [m.loss(V[g], yv if target is None else target(g, V[g], yv, final_v),
                                   wv) for g, m in enumerate(models)]

                stopper = EarlyStopping(models, losses, self.n_iter_no_change)
            with grouped.activate():
                try:
                    self._fit_losses[desc] = run_epochs(
                        len(y_fit_idx), self.epochs, step, rng=rng, batches=epoch_batches,
                        verbose=self.verbose, desc=desc, end_epoch=stopper)
                except StopTraining:
                    self._fit_losses[desc] = stopper.history
            self.n_epochs_[desc] = self.epochs if stopper is None else stopper.epochs_run
            if stopper is not None:
                stopper.restore()  # every classifier at its best epoch

        ics = [LinearSoftmaxTrainer(K, self.learning_rate) for _ in range(n_ic)]
        train(ics, None, "IC training")
        for g, m in enumerate(ics):
            heads[g].W, heads[g].b = m.export()
        if criterion == "decision":
            decisions = [LinearSoftmaxTrainer(2, self.learning_rate) for _ in range(n_ic)]

            def safe(g, V, yb, final_idx):
                P = softmax(V @ as_backend(heads[g].W, V).T + as_backend(heads[g].b, V)[None, :])
                ok = to_numpy(P.argmax(1)) == yb
                if final_idx is not None:
                    ok |= np.asarray(final_idx) != yb  # the base model is wrong too
                return ok.astype(np.intp)

            train(decisions, safe, "BWDS decision functions")
            for g, m in enumerate(decisions):
                heads[g].Wd, heads[g].bd = m.export()
        self._fit_times["training"] = time.perf_counter() - t0
        return heads + [None] * (G - n_ic)  # the base model's own classifier decides last

    def _validation_split(self, X, y, w, rng):
        """Training rows and the held-out rows of ``early_stopping`` (a seeded split)."""
        n = len(y)
        n_val = int(round(self.validation_fraction * n))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves {n_val} of the {n} "
                "training rows for early stopping and "
                f"{n - n_val} for training; both need at least one row."
            )
        order = rng.permutation(n)
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        y_idx = np.searchsorted(self.classes_, y)
        pick = (lambda a, rows: None if a is None else a[rows])
        return (take_rows(X, train), y[train], pick(w, train),
                (take_rows(X, val), y_idx[val], pick(w, val)))

    def _validation_features(self, grouped, heads, held_out, n_ic):
        """Every IC's input on the held-out rows, and the base model's classes there.

        Computed once: the network is frozen and so are the heads' inputs.
        """
        X_val, y_val, w_val = held_out
        per_ic, finals = [[] for _ in range(n_ic)], []
        with grouped.activate():
            for Xb, _ in grouped.batches(X_val, None, self.batch_size):
                for g, F, idx in iter_stages(grouped, Xb, grouped.n_stages
                                             if grouped.final_is_classifier else n_ic):
                    if idx is not None:
                        finals.append(idx)
                    elif g < n_ic:
                        per_ic[g].append(heads[g].inputs(F))
        final = np.concatenate(finals) if finals else None
        return [concat(p) for p in per_ic], y_val, w_val, final

    def _tuning_arrays(self, grouped, heads, tune_rows):
        """Every exit's confidence and correctness on the tuning rows; combined quantiles."""
        X_tune, y_tune, w_tune = tune_rows
        t0 = time.perf_counter()

        def outputs(g, F, idx):  # exits' arrays left on the device until the pass ends
            if idx is not None:  # the base model's classifier
                return idx, to_numpy(F).max(axis=1), np.zeros(len(idx))
            P, c, ce = heads[g].raw(F)
            return P.argmax(1), c, (zeros_like_backend(c.shape, c) if ce is None else ce)

        source = forward_source(grouped, X_tune, None, self.batch_size)
        with grouped.activate():
            per_exit = collect_stage_outputs(source(), outputs, grouped.n_stages)
        pred, conf, conf_e = (np.column_stack([p[k] for p in per_exit]) for k in range(3))
        conf = conf.astype(np.float64)
        if self.combine:
            for g in range(self._n_ics(grouped)):
                heads[g].set_quantiles(conf[:, g], conf_e[:, g])
                conf[:, g] = heads[g].combined(conf[:, g], conf_e[:, g])
        self._fit_times["tuning pass"] = time.perf_counter() - t0
        correct = pred == np.searchsorted(self.classes_, y_tune)[:, None]
        self.train_accuracy_ = correct.mean(axis=0)
        ic_acc = self.train_accuracy_[:self._n_ics(grouped)]
        K = len(self.classes_)
        if self.flops_target is not None and ic_acc.size and np.all(ic_acc < 1.0 / K + 0.05):
            warn(
                "The internal classifiers are barely better than chance on the tuning data "
                f"(accuracy {np.round(ic_acc, 3).tolist()}); train them for "
                "more epochs or with another learning_rate.")
        return conf, correct, w_tune
