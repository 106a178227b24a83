"""TradeoffDisplay: the accuracy–FLOPs trade-off of early-exit models.

Follows scikit-learn's Display API (:class:`~sklearn.metrics.RocCurveDisplay`):
``from_estimator`` / ``from_predictions`` compute what is plotted, ``plot``
draws it and stores the matplotlib handles, and matplotlib is imported only
when something is drawn.
"""

import numpy as np

from ._scoring import check_targets, metric_scores, resolve_scoring
from ._thresholds import SEARCH_METHODS, sweep_with_extremes, upper_hull

__all__ = ["TradeoffDisplay"]


def _check_matplotlib():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TradeoffDisplay needs matplotlib, which is not installed. Install it with "
            "`pip install 'sklearn-e2cm[plot]'` or `pip install matplotlib`."
        ) from exc
    return plt


def _as_1d(a, name):
    arr = np.asarray(a, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


class TradeoffDisplay:
    """Accuracy–FLOPs trade-off visualisation.

    Shows the operating points of an early-exit model (normalised FLOPs on
    the x axis, the base model costs 1; a score on the y axis), the upper
    concave hull of those points, whose edges are the time-sharing segments
    (any cost between two hull vertices is served by sending each sample to
    one of the two threshold vectors at random), the base model's own point,
    the model's current operating point, and optionally the curves of other
    models on the same axes.

    It is recommended to create one with :meth:`from_estimator`,
    :meth:`from_predictions` or :meth:`FlopBudgetSearchCV.plot
    <sklearn_e2cm.FlopBudgetSearchCV.plot>`; the constructor only stores the
    values to draw.

    Parameters
    ----------
    flops : array-like of shape (n_points,)
        Expected normalised cost of each operating point.
    score : array-like of shape (n_points,)
        Score of each operating point.
    hull_flops, hull_score : array-like of shape (n_vertices,), default=None
        Vertices of the served trade-off, in increasing cost; consecutive
        vertices are joined by time-sharing segments. ``None``: the upper
        concave hull of the points.
    base_flops, base_score : float, default=None
        The base model (no early exit).
    operating_flops, operating_score : float, default=None
        The model's current operating point.
    operating_segment : tuple of two (flops, score) pairs, default=None
        The two vertices the current operating point time-shares between.
    name : str, default=None
        Label of the model in the legend.
    score_name : str, default="accuracy"
        Label of the y axis.
    comparisons : list of TradeoffDisplay, default=None
        Other models drawn on the same axes (their hulls and base points).

    Attributes
    ----------
    points_ : matplotlib PathCollection or None
        The operating points.
    line_ : matplotlib Line2D or None
        The hull (the time-sharing segments), with a marker at each vertex.
    base_ : matplotlib Line2D or None
    operating_point_ : matplotlib Line2D or None
    segment_ : matplotlib Line2D or None
        The time-sharing segment of the current operating point.
    comparison_lines_ : list of Line2D
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    See Also
    --------
    sklearn_e2cm.FlopBudgetSearchCV : cross-validated trade-off, with ``plot``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.decomposition import PCA
    >>> from sklearn.kernel_approximation import Nystroem
    >>> from sklearn.linear_model import RidgeClassifier
    >>> from sklearn.model_selection import train_test_split
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_e2cm import EarlyExitClassMeans, TradeoffDisplay
    >>> X, y = load_digits(return_X_y=True)
    >>> X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    >>> from sklearn.pipeline import make_pipeline
    >>> net = make_pipeline(StandardScaler(), PCA(24, random_state=0),  # the trained model
    ...                     Nystroem(n_components=200, random_state=0), RidgeClassifier())
    >>> net = net.fit(X_train, y_train)
    >>> clf = EarlyExitClassMeans(stages=net, flops_target=0.3, sweep_resolution=200,
    ...                           random_state=0).fit(X_train, y_train)
    >>> disp = TradeoffDisplay.from_estimator(clf, X_test, y_test)
    >>> disp.ax_.get_xlabel()
    'normalised FLOPs (base model = 1)'
    >>> bool(disp.hull_score[-1] >= disp.hull_score[0])
    True
    """

    def __init__(
        self,
        *,
        flops,
        score,
        hull_flops=None,
        hull_score=None,
        base_flops=None,
        base_score=None,
        operating_flops=None,
        operating_score=None,
        operating_segment=None,
        name=None,
        score_name="accuracy",
        comparisons=None,
    ):
        self.flops = _as_1d(flops, "flops")
        self.score = _as_1d(score, "score")
        if self.flops.shape != self.score.shape:
            raise ValueError(
                f"flops and score must have the same length; got {self.flops.shape[0]} and "
                f"{self.score.shape[0]}."
            )
        if hull_flops is None:
            if self.flops.size:
                h = upper_hull(self.flops, self.score)
                hull_flops, hull_score = self.flops[h], self.score[h]
            else:
                hull_flops, hull_score = np.zeros(0), np.zeros(0)
        self.hull_flops = _as_1d(hull_flops, "hull_flops")
        self.hull_score = _as_1d(hull_score, "hull_score")
        self.base_flops = base_flops
        self.base_score = base_score
        self.operating_flops = operating_flops
        self.operating_score = operating_score
        self.operating_segment = operating_segment
        self.name = name
        self.score_name = score_name
        self.comparisons = list(comparisons) if comparisons else []

    # ------------------------------------------------------------------ plot
    def plot(
        self,
        ax=None,
        *,
        name=None,
        show_points=True,
        show_hull=True,
        show_base=True,
        show_operating_point=True,
        points_kwargs=None,
        base_kwargs=None,
        operating_kwargs=None,
        **kwargs,
    ):
        """Draw the trade-off.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; ``None`` creates a figure and axes.
        name : str, default=None
            Legend label of this model (overrides the stored ``name``).
        show_points, show_hull, show_base, show_operating_point : bool, default=True
            Which elements to draw.
        points_kwargs, base_kwargs, operating_kwargs : dict, default=None
            Passed to the matplotlib calls of the points (``scatter``), the
            base model's marker and the operating point's marker.
        **kwargs
            Passed to the hull line (``ax.plot``).

        Returns
        -------
        display : TradeoffDisplay
            ``self``, with ``ax_``, ``figure_`` and the artists set.
        """
        plt = _check_matplotlib()
        if ax is None:
            _, ax = plt.subplots()
        name = self.name if name is None else name
        label = name or "E²CM"
        self.points_ = self.line_ = self.base_ = None
        self.operating_point_ = self.segment_ = None
        self.comparison_lines_ = []

        line_kw = {"marker": "o", "markersize": 4, "label": f"{label} (hull)"}
        line_kw.update(kwargs)
        color = line_kw.get("color", line_kw.get("c"))
        if show_hull and self.hull_flops.size:
            (self.line_,) = ax.plot(self.hull_flops, self.hull_score, **line_kw)
            color = self.line_.get_color()
        if show_points and self.flops.size:
            pk = {"s": 8, "alpha": 0.35, "label": f"{label} (swept points)", "linewidths": 0}
            if color is not None:
                pk["color"] = color
            pk.update(points_kwargs or {})
            self.points_ = ax.scatter(self.flops, self.score, **pk)
        if show_operating_point and self.operating_segment is not None:
            (a, b) = self.operating_segment
            (self.segment_,) = ax.plot([a[0], b[0]], [a[1], b[1]], linewidth=3, alpha=0.5,
                                       color=color, label=f"{label} (time sharing)")
        if show_operating_point and self.operating_flops is not None:
            ok = {"marker": "D", "markersize": 8, "linestyle": "none", "color": color,
                  "markeredgecolor": "black", "label": f"{label} (operating point)"}
            ok.update(operating_kwargs or {})
            (self.operating_point_,) = ax.plot([self.operating_flops], [self.operating_score],
                                               **ok)
        if show_base and self.base_flops is not None:
            # one legend entry for the base model when several models share the axes
            drawn = {ln.get_label() for ln in ax.get_lines()}
            bk = {"marker": "*", "markersize": 12, "linestyle": "none", "color": "black",
                  "label": "_base model" if "base model" in drawn else "base model"}
            bk.update(base_kwargs or {})
            (self.base_,) = ax.plot([self.base_flops], [self.base_score], **bk)
        for other in self.comparisons:
            olabel = other.name or "other"
            if other.hull_flops.size:
                (ln,) = ax.plot(other.hull_flops, other.hull_score, marker="s", markersize=3,
                                linestyle="--", label=f"{olabel} (hull)")
                self.comparison_lines_.append(ln)
            if show_base and other.base_flops is not None and not (
                self.base_flops is not None
                and np.isclose(other.base_flops, self.base_flops)
                and np.isclose(other.base_score, self.base_score)
            ):
                (ln,) = ax.plot([other.base_flops], [other.base_score], marker="*",
                                markersize=10, linestyle="none", label=f"{olabel} (base)")
                self.comparison_lines_.append(ln)
        ax.set_xlabel("normalised FLOPs (base model = 1)")
        ax.set_ylabel(self.score_name)
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
        self.ax_ = ax
        self.figure_ = ax.figure
        return self

    # ------------------------------------------------------------- builders
    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y=None,
        *,
        scoring=None,
        flops_targets=1000,
        method="coordinate",
        tune="auto",
        sample_weight=None,
        random_state=None,
        name=None,
        ax=None,
        compare=None,
        **kwargs,
    ):
        """Trade-off of a fitted early-exit estimator on ``(X, y)``, drawn.

        One forward pass over ``X`` (``estimator.exit_table``) caches the
        per-stage arrays; every operating point is evaluated on them.

        Parameters
        ----------
        estimator : fitted early-exit estimator or FlopBudgetSearchCV
            Anything with ``exit_table`` (a search contributes its
            ``best_estimator_``).
        X : array-like
        y : array-like of shape (n_samples,), default=None
            Labels; ``None`` scores agreement with the base model.
        scoring : None, "accuracy", "agreement" or callable, default=None
            As in :class:`~sklearn_e2cm.FlopBudgetSearchCV`; ``None`` is
            accuracy with ``y`` (classifiers), agreement without.
        flops_targets : int or array-like, default=1000
            Targets swept when the thresholds are tuned on ``X``.
        method : {"coordinate", "bisect"}, default="coordinate"
            Threshold search when the thresholds are tuned on ``X``: the
            coordinate-ascent path (what ``threshold_search="hull"`` uses) or
            the paper's bisection at every target.
        tune : {"auto", "estimator", "data"}, default="auto"
            Where the plotted threshold vectors come from. ``"estimator"``:
            the vectors the estimator swept while fitting
            (``estimator.tradeoff_``, tuned on its own tuning data) are
            evaluated on ``X`` -- an honest held-out picture when ``X`` is
            new data, and the hull drawn is the estimator's own hull (what it
            actually serves for any ``flops_target``), which need not be
            concave on ``X``. ``"data"``: the targets are swept on ``X``
            itself (optimistic on the data it is tuned on). ``"auto"``:
            ``"estimator"`` when the estimator swept targets while fitting,
            ``"data"`` otherwise.
        sample_weight : array-like of shape (n_samples,), default=None
        random_state : int or None, default=None
            Random starts of ``method="bisect"``.
        name : str, default=None
            Legend label (default: the estimator's class name).
        ax : matplotlib Axes, default=None
        compare : estimator, list or dict, default=None
            Other fitted estimators drawn on the same axes (their hulls and
            base points on the same ``X``, ``y``): a list of estimators or of
            ``(name, estimator)`` pairs, or a dict name -> estimator.
        **kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        display : TradeoffDisplay
        """
        disp = cls._compute(estimator, X, y, scoring=scoring, flops_targets=flops_targets,
                            method=method, tune=tune, sample_weight=sample_weight,
                            random_state=random_state, name=name)
        for cname, other in _named(compare):
            disp.comparisons.append(cls._compute(
                other, X, y, scoring=scoring, flops_targets=flops_targets, method=method,
                tune=tune, sample_weight=sample_weight, random_state=random_state,
                name=cname))
        return disp.plot(ax=ax, **kwargs)

    @classmethod
    def _compute(cls, estimator, X, y, *, scoring, flops_targets, method, tune, sample_weight,
                 random_state, name):
        if not hasattr(estimator, "exit_table") and hasattr(estimator, "cv_results_"):
            estimator = estimator.best_estimator_  # a fitted search
        if not hasattr(estimator, "exit_table"):
            raise TypeError(
                f"{type(estimator).__name__} has no exit_table method; TradeoffDisplay."
                "from_estimator needs a fitted early-exit estimator (e.g. EarlyExitClassMeans)."
            )
        if method not in SEARCH_METHODS:
            raise ValueError(f"method={method!r} is not one of {list(SEARCH_METHODS)}.")
        if tune not in ("auto", "estimator", "data"):
            raise ValueError(f"tune={tune!r} is not one of 'auto', 'estimator', 'data'.")
        sc = resolve_scoring(scoring if (scoring is not None or y is not None) else "agreement",
                              estimator)
        if y is None and sc.needs_y():
            raise ValueError(f"scoring={sc.name!r} needs y; pass y or scoring='agreement'.")
        # per-sample correctness against y for accuracy; agreement otherwise (a metric is
        # computed on predictions rebuilt from the table)
        table = estimator.exit_table(X, y if sc.kind == "accuracy" else None,
                                     sample_weight=sample_weight)
        M1 = table.n_stages - 1
        tradeoff = getattr(estimator, "tradeoff_", None)
        swept = tradeoff is not None and len(tradeoff) > 2
        if tune == "estimator" and not swept:
            raise ValueError(
                "tune='estimator' needs an estimator that swept FLOP targets while fitting "
                "(tradeoff_ with more than the base model); use tune='data'."
            )
        use_est = tune == "estimator" or (tune == "auto" and swept)

        def score_of(T):
            if sc.kind == "metric":
                return metric_scores(table, T, y, sc, sample_weight)
            return table.evaluate_many(T)[1]

        if use_est:
            T = np.vstack(tradeoff["thresholds"].to_numpy())
            flops, _ = table.evaluate_many(T)
            score = score_of(T)
            on = tradeoff["on_hull"].to_numpy(bool)
            order = np.argsort(tradeoff["flops"].to_numpy()[on], kind="stable")
            hull_idx = np.flatnonzero(on)[order]
            hull_flops, hull_score = flops[hull_idx], score[hull_idx]
        else:
            _, T, flops, _ = sweep_with_extremes(table, check_targets(flops_targets),
                                                 method=method, random_state=random_state)
            score = score_of(T)
            h = upper_hull(flops, score)
            hull_flops, hull_score = flops[h], score[h]
        base_flops = float(table.evaluate(np.ones(M1))[0])
        base_score = float(score_of(np.ones((1, M1)))[0])
        op_flops = op_score = segment = None
        mix_T = getattr(estimator, "mixture_thresholds_", None)
        if mix_T is not None and getattr(estimator, "flops_target", None) is not None:
            mix_w = np.asarray(estimator.mixture_weights_)
            mc, _ = table.evaluate_many(mix_T)
            ms = score_of(mix_T)
            op_flops, op_score = float(mix_w @ mc), float(mix_w @ ms)
            if len(mix_w) == 2:
                segment = ((mc[0], ms[0]), (mc[1], ms[1]))
        if name is None:
            name = type(estimator).__name__
        return cls(
            flops=flops, score=score, hull_flops=hull_flops, hull_score=hull_score,
            base_flops=base_flops, base_score=base_score, operating_flops=op_flops,
            operating_score=op_score, operating_segment=segment, name=name,
            score_name=sc.name if sc.kind != "metric" else sc.name.replace("_", " "),
        )

    @classmethod
    def from_predictions(
        cls,
        y_true,
        y_pred,
        flops,
        *,
        scoring=None,
        sample_weight=None,
        base=None,
        name=None,
        ax=None,
        **kwargs,
    ):
        """Trade-off from the predictions of several operating points, drawn.

        For any early-exit model, including ones outside this package: each
        operating point is given by its predictions and its per-sample (or
        mean) cost, e.g. ``route(X).y_pred`` and ``route(X).flops`` of an
        estimator at several budgets, or the outputs of several models.

        Parameters
        ----------
        y_true : array-like of shape (n_samples,)
        y_pred : array-like of shape (n_points, n_samples)
            Predictions of each operating point (a 1-D array is one point).
        flops : array-like of shape (n_points, n_samples) or (n_points,)
            Normalised cost paid by each sample at each point, or the mean
            cost of each point.
        scoring : None, "accuracy" or callable, default=None
            ``metric(y_true, y_pred)``; ``None`` is accuracy.
        sample_weight : array-like of shape (n_samples,), default=None
        base : tuple (flops, score), default=None
            The base model's point, drawn as a star.
        name : str, default=None
        ax : matplotlib Axes, default=None
        **kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        display : TradeoffDisplay

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> y = np.array([0, 1, 1, 0])
        >>> preds = [[0, 0, 1, 0], [0, 1, 1, 0]]
        >>> disp = TradeoffDisplay.from_predictions(y, preds, [0.3, 1.0], base=(1.0, 1.0))
        >>> disp.score.tolist()
        [0.75, 1.0]
        """
        y_true = np.asarray(y_true)
        P = np.asarray(y_pred)
        if P.ndim == 1:
            P = P[None, :]
        if P.ndim != 2 or P.shape[1] != y_true.shape[0]:
            raise ValueError(
                f"y_pred must have shape (n_points, n_samples) with n_samples="
                f"{y_true.shape[0]}; got {P.shape}."
            )
        F = np.asarray(flops, dtype=np.float64)
        if F.ndim == 2:
            if F.shape != P.shape:
                raise ValueError(
                    f"flops has shape {F.shape}; expected {P.shape} (per-sample costs) or "
                    f"({P.shape[0]},) (mean costs)."
                )
            F = F.mean(axis=1) if sample_weight is None else (
                F @ np.asarray(sample_weight, dtype=np.float64) / np.sum(sample_weight))
        elif F.ndim == 1 and F.shape[0] == P.shape[0]:
            pass
        elif F.ndim == 0 and P.shape[0] == 1:
            F = F.reshape(1)
        else:
            raise ValueError(
                f"flops has shape {F.shape}; expected {P.shape} or ({P.shape[0]},).")
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if scoring is None or scoring == "accuracy":
            if w is None:
                score = np.array([np.mean(p == y_true) for p in P])
            else:
                score = np.array([np.average(p == y_true, weights=w) for p in P])
            score_name = "accuracy"
        elif callable(scoring):
            score = np.array([float(scoring(y_true, p)) if w is None
                              else float(scoring(y_true, p, sample_weight=w)) for p in P])
            score_name = getattr(scoring, "__name__", "score").replace("_", " ")
        else:
            raise ValueError(
                f"scoring={scoring!r}: from_predictions accepts None, 'accuracy' or a callable "
                "metric(y_true, y_pred)."
            )
        bf, bs = (None, None) if base is None else (float(base[0]), float(base[1]))
        disp = cls(flops=F, score=score, base_flops=bf, base_score=bs, name=name,
                   score_name=score_name)
        return disp.plot(ax=ax, **kwargs)

    @classmethod
    def from_search(cls, search, *, ax=None, name=None, **kwargs):
        """Cross-validated trade-off of a fitted :class:`~sklearn_e2cm.FlopBudgetSearchCV`.

        The points are the served operating points of every target (mean
        held-out cost and score), the hull is :attr:`pareto_front_`, the
        operating point is the selected target, and the base model's point is
        its mean held-out cost and score. With ``cv=None`` the swept points
        of the tuning data are drawn instead.

        Parameters
        ----------
        search : FlopBudgetSearchCV
            A fitted search.
        ax : matplotlib Axes, default=None
        name : str, default=None
            Legend label; the searched estimator's class name by default.
        **kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        display : TradeoffDisplay
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(search, "cv_results_")
        res = search.cv_results_
        pts = getattr(search, "swept_points_", None)
        if pts is not None:
            flops, score = pts
        else:
            flops, score = res["mean_test_flops"], res["mean_test_score"]
        front = search.pareto_front_
        i = search.best_index_
        disp = cls(
            flops=flops, score=score, hull_flops=front["flops"].to_numpy(),
            hull_score=front["score"].to_numpy(), base_flops=search.base_flops_,
            base_score=search.base_score_, operating_flops=res["mean_test_flops"][i],
            operating_score=res["mean_test_score"][i],
            name=name or type(search.estimator).__name__,
            score_name=search.scorer_.replace("_", " "),
        )
        return disp.plot(ax=ax, **kwargs)


def _named(compare):
    if compare is None:
        return []
    if isinstance(compare, dict):
        return list(compare.items())
    if not isinstance(compare, (list, tuple)):
        compare = [compare]
    out = []
    for item in compare:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(item)
        else:
            out.append((type(item).__name__, item))
    return out
