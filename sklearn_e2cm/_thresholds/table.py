"""The exit table: per-sample, per-stage arrays cached on the tuning data.

:class:`ExitTable` holds the max exit probability and the correctness of
every sample at every stage, plus the cost model (:func:`cumulative_cost`).
It evaluates threshold vectors (:meth:`ExitTable.evaluate`) and exposes the
cached views the searches read (bit codes of exit patterns, quantized and
sorted probabilities, histogram bins), so that no search runs a stage again.
"""

from functools import cached_property

import numpy as np

__all__ = ["GRID", "COARSE_SHIFT", "ExitTable", "cumulative_cost", "first_exit_stage"]

#: Resolution of the threshold grid used by the bisection: thresholds are
#: multiples of ``1 / GRID`` (the bisection halves [0, 1] at most 16 times).
GRID = 2**16

#: The bisection's coarse histogram has ``GRID >> COARSE_SHIFT`` bins; its
#: last levels use a fine histogram inside one coarse bin.
COARSE_SHIFT = 8


def cumulative_cost(stage_flops, exit_flops, active, last_head=True):
    """Normalised cost of exiting after each stage.

    Exiting after stage ``j`` costs
    ``(Σ_{i≤j} c_i + Σ_{i≤j, head i on} e_i) / Σ_i c_i``.

    Parameters
    ----------
    stage_flops, exit_flops : array of shape (M,)
        Per-sample FLOPs of each stage and of each stage's exit head
        (feature reduction included).
    active : array of bool, shape (M - 1,) or (V, M - 1)
        Which early-exit heads are evaluated (threshold < 1).
    last_head : bool
        Whether the last stage decides with a class-means head (True) or
        with the base model's own classifier (False, no overhead).

    Returns
    -------
    cost : array of shape (M,) or (V, M)
        With a single stage the cost is 1.0 (nothing to exit from).

    Examples
    --------
    >>> cumulative_cost([1.0, 3.0], [0.5, 0.0], [True], last_head=False)
    array([0.375, 1.125])
    """
    c = np.asarray(stage_flops, dtype=np.float64)
    e = np.asarray(exit_flops, dtype=np.float64)
    active = np.asarray(active, dtype=bool)
    M = c.shape[0]
    single = active.ndim == 1
    active = np.atleast_2d(active)
    if M == 1:
        out = np.ones((active.shape[0], 1))
        return out[0] if single else out
    total = np.cumsum(c)[-1]  # summed in cumsum's order: every head off costs exactly 1.0
    if not total > 0:
        raise ValueError(
            f"The stages cost {total} FLOPs in total; costs cannot be normalised. "
            "Pass stage_costs= with positive per-stage FLOPs."
        )
    on = np.concatenate([active, np.full((active.shape[0], 1), bool(last_head))], axis=1)
    out = np.cumsum(c[None, :] + e[None, :] * on, axis=1) / total
    return out[0] if single else out


def first_exit_stage(conf, thresholds):
    """Stage at which each sample exits, vectorised over samples.

    A sample leaves after the first stage ``j`` (``j < M-1``) with
    ``conf[i, j] > thresholds[j]``; otherwise it reaches the last stage.

    Parameters
    ----------
    conf : array of shape (N, M) or (N, M - 1)
        Max exit probability of every sample at every stage.
    thresholds : array of shape (M - 1,) or (N, M - 1)
        One threshold vector, or one per sample (time sharing).

    Returns
    -------
    exits : ndarray of int, shape (N,)
        Exit stage of every sample, in ``[0, M - 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> first_exit_stage(np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.1]]), np.array([0.8, 0.8]))
    array([0, 2])
    """
    T = np.asarray(thresholds, dtype=np.float64)
    M1 = T.shape[-1]
    N = conf.shape[0]
    if M1 == 0:
        return np.zeros(N, dtype=np.intp)
    ex = conf[:, :M1] > (T if T.ndim == 2 else T[None, :])
    out = ex.argmax(axis=1)
    out[~ex.any(axis=1)] = M1
    return out


def _lowest_set_bit(codes, n_bits, lookup=None):
    """Index of the lowest set bit of each code (``n_bits`` where none is set).

    ``lookup``, when given, is that index for every possible code.
    """
    if lookup is not None:
        return lookup[codes]
    codes = codes.astype(np.int64)
    out = np.frexp((codes & (-codes)).astype(np.float64))[1] - 1
    out[codes == 0] = n_bits
    return out


class ExitTable:
    """Per-sample, per-stage arrays cached on the tuning data.

    Parameters
    ----------
    conf : ndarray of shape (N, M)
        Max exit probability per stage (the last column is never used).
    correct : ndarray of bool, shape (N, M)
        Whether the prediction made at each stage is right (accuracy) or agrees
        with a reference (agreement).
    stage_flops, exit_flops : ndarray of shape (M,)
        Per-sample FLOPs of each stage and of each stage's exit head.
    last_head : bool
        Whether the last stage decides with a class-means head.
    sample_weight : ndarray of shape (N,), default=None
        Weights of the samples in every mean (normalised to sum to 1).
    pred_labels : ndarray of int, shape (N, M), default=None
        Class index predicted at every stage (optional). Needed to rebuild
        routed predictions (:meth:`predict_indices`) for scores that are not
        a mean of per-sample terms.
    classes : ndarray of shape (n_classes,), default=None
        Labels of the class indices of ``pred_labels``.

    Attributes
    ----------
    conf_cols : ndarray of shape (M, N)
        ``conf``, stage-major.
    correct_flat : ndarray of bool, shape (M * N,)
        ``correct``, stage-major and flattened.
    n_samples : int
    weights : ndarray of shape (N,) or None
        Normalised sample weights (None: every sample weighs ``1 / N``).
    full_cost : ndarray of shape (M,)
        :func:`cumulative_cost` with every exit head on.

    Notes
    -----
    Internally the arrays are kept stage-major and the exit pattern of a
    sample under a threshold vector is a bit code (bit ``k`` set when stage
    ``k``'s exit fires); its lowest set bit is the exit stage. This keeps
    every evaluation to a few passes over ``N`` small integers.
    """

    def __init__(self, conf, correct, stage_flops, exit_flops, last_head, sample_weight=None,
                 *, pred_labels=None, classes=None):
        conf = np.asarray(conf)
        correct = np.asarray(correct, dtype=bool)
        N, M = conf.shape
        if correct.shape != (N, M):
            raise ValueError(f"correct has shape {correct.shape}, expected {(N, M)}.")
        if M - 1 > 62:
            raise ValueError(f"At most 63 stages are supported; got {M}.")
        self.conf_cols = np.ascontiguousarray(conf.T)
        self.correct_flat = np.ascontiguousarray(correct.T).ravel()
        self.n_samples = N
        self.stage_flops = np.asarray(stage_flops, dtype=np.float64)
        self.exit_flops = np.asarray(exit_flops, dtype=np.float64)
        self.last_head = bool(last_head)
        if sample_weight is None:
            self.weights = None
        else:
            w = np.asarray(sample_weight, dtype=np.float64)
            self.weights = w / w.sum()
        if pred_labels is not None:
            pred_labels = np.asarray(pred_labels)
            if pred_labels.shape != (N, M):
                raise ValueError(
                    f"pred_labels has shape {pred_labels.shape}, expected {(N, M)}.")
        self.pred_labels = pred_labels
        self.classes = None if classes is None else np.asarray(classes)
        self.full_cost = cumulative_cost(
            self.stage_flops, self.exit_flops, np.ones(M - 1, bool), self.last_head
        )
        M1 = M - 1
        self._code_dtype = np.uint16 if M1 <= 16 else np.int64
        self._lowest_bit = None
        if M1 <= 16:
            codes = np.arange(2**M1, dtype=np.int64)
            self._lowest_bit = _lowest_set_bit(codes, M1).astype(np.intp)
        # correctness of every stage as one bit code per sample
        bits = np.ones(1, dtype=np.int64) << np.arange(M, dtype=np.int64)
        self._correct_codes = (correct.astype(np.int64) * bits[None, :]).sum(axis=1)

    # -- shapes and plain views ---------------------------------------------------------
    def __repr__(self):
        c, s = self.evaluate(np.ones(self.n_stages - 1))
        return (f"ExitTable(n_samples={self.n_samples}, n_stages={self.n_stages}, "
                f"base_cost={c:.4f}, base_score={s:.4f}, "
                f"weighted={self.weights is not None})")

    def to_frame(self):
        """One row per stage: what exiting there costs and how good it is on these rows.

        Returns
        -------
        frame : pandas.DataFrame
            Columns ``stage``, ``cost`` (normalised cost of leaving after the
            stage with every head on), ``exit_flops`` (the stage's exit head,
            per sample), ``score`` (weighted mean correctness of the stage's
            prediction) and ``mean_confidence`` (weighted mean exit
            probability).

        Examples
        --------
        >>> import numpy as np
        >>> conf = np.array([[0.9, 0.2], [0.4, 0.8]])
        >>> table = ExitTable(conf, conf > 0.5, [1.0, 1.0], [0.0, 0.0], last_head=False)
        >>> table.to_frame()[["stage", "cost", "score"]]
           stage  cost  score
        0      0   0.5    0.5
        1      1   1.0    0.5
        """
        import pandas as pd

        w = self.weights
        correct = self.correct.astype(np.float64)
        conf = self.conf.astype(np.float64)
        mean = (lambda a: a.mean(axis=0)) if w is None else (lambda a: w @ a)
        return pd.DataFrame({
            "stage": np.arange(self.n_stages),
            "cost": self.full_cost,
            "exit_flops": self.exit_flops,
            "score": mean(correct),
            "mean_confidence": mean(conf),
        })

    @property
    def n_stages(self):
        """Number of stages ``M``, the last one included."""
        return self.conf_cols.shape[0]

    @property
    def conf(self):
        """Max exit probabilities, shape (N, M) (a view of :attr:`conf_cols`)."""
        return self.conf_cols.T

    @property
    def correct(self):
        """Correctness of every stage's prediction, bool of shape (N, M) (a view)."""
        return self.correct_flat.reshape(self.n_stages, self.n_samples).T

    def weighted_mean(self, values, per_sample=False):
        """Weighted mean of per-sample values, or the per-sample terms of it.

        Parameters
        ----------
        values : ndarray of shape (N,)
            One value per sample.
        per_sample : bool, default=False
            Return the terms (each value times its sample's weight, ``1 / N``
            without weights) instead of their sum.

        Returns
        -------
        mean : float, or ndarray of shape (N,) with ``per_sample=True``
        """
        if per_sample:
            return values * (1.0 / self.n_samples if self.weights is None else self.weights)
        if self.weights is None:
            return float(values.mean())
        return float(self.weights @ values)


    # -- bit codes of exit patterns ---------------------------------------------------
    @property
    def code_dtype(self):
        """Integer type of the exit bit codes.

        ``uint16`` with at most 16 early exits, ``int64`` above.
        """
        return self._code_dtype

    @property
    def lowest_bit_table(self):
        """Exit stage of every possible bit code, or None.

        An ndarray of int of length ``2**(M-1)`` (the lowest set bit of each
        code, ``M - 1`` for code 0) with at most 16 early exits; None above,
        where :meth:`exits_of_codes` computes the bit directly.
        """
        return self._lowest_bit

    @property
    def correct_codes(self):
        """Correctness of every stage as one bit code per sample.

        ndarray of int64, shape (N,): bit ``j`` is set when stage ``j``'s
        prediction is correct.
        """
        return self._correct_codes

    def exit_codes(self, thresholds=None, grid_index=None):
        """Bit code of each sample's exit pattern under one threshold vector.

        Bit ``k`` is set when stage ``k``'s exit fires (``conf > T[k]``).

        Parameters
        ----------
        thresholds : array-like of shape (M - 1,), default=None
            Threshold vector; used when ``grid_index`` is None.
        grid_index : array-like of int, shape (M - 1,), default=None
            Thresholds as indices on the ``1 / GRID`` grid (``T = m / GRID``),
            compared with :attr:`fire_columns`.

        Returns
        -------
        codes : ndarray of shape (N,), of type :attr:`code_dtype`
        """
        M1 = self.n_stages - 1
        dt = self._code_dtype
        codes = np.zeros(self.n_samples, dtype=dt)
        for k in range(M1):
            if grid_index is not None:
                fire = self.fire_columns[k] >= int(grid_index[k])
            else:
                fire = self.conf_cols[k] > thresholds[k]
            codes |= fire.astype(dt) << dt(k)
        return codes

    def exits_of_codes(self, codes):
        """Exit stage of each sample from its exit bit code (its lowest set bit).

        Parameters
        ----------
        codes : ndarray of int, shape (N,)
            As returned by :meth:`exit_codes`.

        Returns
        -------
        exits : ndarray of int, shape (N,)
            ``M - 1`` (the last stage) where no bit is set.
        """
        return _lowest_set_bit(codes, self.n_stages - 1, self._lowest_bit)

    def cost_and_score(self, exits, stage_cost):
        """Expected cost and score of a routing given each sample's exit stage.

        Parameters
        ----------
        exits : ndarray of int, shape (N,)
            Exit stage of every sample.
        stage_cost : ndarray of shape (M,)
            Cost of exiting after each stage (:meth:`costs` of the vector).

        Returns
        -------
        cost, score : float
            Weighted means of the cost and correctness of each sample's exit.
        """
        hit = (self._correct_codes >> exits) & 1
        return self.weighted_mean(stage_cost[exits]), self.weighted_mean(hit)

    # -- cached views read by the searches --------------------------------------------
    @cached_property
    def quantized_columns(self):
        """``q = ceil(conf * GRID) - 1`` per early stage, int32 of shape (M-1, N).

        ``conf > m / GRID`` exactly when ``q >= m``.
        """
        q = np.ceil(self.conf_cols[:-1].astype(np.float64) * GRID) - 1
        return np.ascontiguousarray(q.astype(np.int32))

    @cached_property
    def fire_columns(self):
        """:attr:`quantized_columns` in the narrowest integer type that holds them.

        ``q >= m`` on 16-bit integers reads half the memory; ``q = -1``
        (an exit probability of exactly 0) needs the signed 32-bit copy.
        """
        q = self.quantized_columns
        return q.astype(np.uint16) if q.size and q.min() >= 0 else q

    @cached_property
    def coarse_columns(self):
        """``(q >> COARSE_SHIFT) + 1``: the coarse histogram bin of every sample per stage."""
        return (self.quantized_columns >> COARSE_SHIFT) + 1

    @cached_property
    def coarse_bins(self):
        """Per early stage: the samples sorted by coarse bin and where each bin starts.

        A pair ``(orders, starts)`` of lists of length ``M - 1``: ``orders[j]``
        sorts the samples by :attr:`coarse_columns` ``[j]`` (stably), and the
        samples of coarse bin ``b`` are ``orders[j][starts[j][b]:starts[j][b + 1]]``.
        """
        orders, starts = [], []
        edges = np.arange((GRID >> COARSE_SHIFT) + 3)
        for j in range(self.n_stages - 1):
            qc = self.coarse_columns[j]
            order = np.argsort(qc, kind="stable")
            orders.append(order)
            starts.append(np.searchsorted(qc[order], edges, side="left"))
        return orders, starts

    @cached_property
    def sorted_columns(self):
        """Per early stage: (order, conf in decreasing order, cut penalty).

        ``order`` sorts the samples by decreasing exit probability; the
        penalty (length N + 1) is ``-inf`` at the prefix lengths ``k`` that
        no threshold can produce (ties, ``k = 0`` and an all-zero tail), 0
        elsewhere: the first ``k`` samples of ``order`` are exactly those with
        ``conf > T`` for some ``T`` in [0, 1).
        """
        out = []
        for j in range(self.n_stages - 1):
            c = self.conf_cols[j].astype(np.float64)
            order = np.argsort(-c, kind="stable")
            desc = c[order]
            pen = np.zeros(self.n_samples + 1)
            pen[0] = -np.inf
            pen[1:-1][desc[:-1] == desc[1:]] = -np.inf
            if desc[-1] <= 0:
                pen[-1] = -np.inf
            out.append((order, desc, pen))
        return out

    @cached_property
    def bisection_lookup(self):
        """Per exit bit code: the cost of its exit, and the cost saved by leaving earlier.

        A pair ``(code_cost, saved)``, or None without :attr:`lowest_bit_table`
        (more than 16 early exits). ``code_cost[code]`` is the full-cost
        model's cost of the code's exit; ``saved[j][code]`` is how much
        cheaper leaving at stage ``j`` is than that exit (0 when the exit is
        not after ``j``). Both are per sample: divided by ``N`` without
        weights, to be multiplied by the sample's weight with them.
        """
        if self._lowest_bit is None:
            return None
        scale = 1.0 / self.n_samples if self.weights is None else 1.0
        cost = self.full_cost
        ids = np.arange(self.n_stages)
        code_cost = cost[self._lowest_bit] * scale
        saved = [np.where(ids > j, cost[j] - cost, 0.0)[self._lowest_bit] * scale
                 for j in range(self.n_stages - 1)]
        return code_cost, saved

    # -- evaluation of threshold vectors ----------------------------------------------
    def costs(self, thresholds):
        """Cumulative cost per stage of one or several threshold vectors.

        Parameters
        ----------
        thresholds : array-like of shape (M - 1,) or (V, M - 1)
            A head whose threshold is ``>= 1`` never fires and is not paid.

        Returns
        -------
        cost : ndarray of shape (M,) or (V, M)
        """
        T = np.asarray(thresholds, dtype=np.float64)
        return cumulative_cost(self.stage_flops, self.exit_flops, T < 1.0, self.last_head)

    def evaluate(self, thresholds):
        """Expected normalised cost and score of one threshold vector.

        Parameters
        ----------
        thresholds : array-like of shape (M - 1,)

        Returns
        -------
        cost, score : float
        """
        T = np.asarray(thresholds, dtype=np.float64)
        if self.n_stages == 1:
            return 1.0, self.weighted_mean(self.correct_flat.astype(np.float64))
        exits = self.exits_of_codes(self.exit_codes(thresholds=T))
        return self.cost_and_score(exits, self.costs(T))

    def evaluate_many(self, thresholds):
        """Cost and score of each row of a matrix of threshold vectors.

        Parameters
        ----------
        thresholds : array-like of shape (P, M - 1)

        Returns
        -------
        costs, scores : ndarray of shape (P,)
        """
        T = np.atleast_2d(np.asarray(thresholds, dtype=np.float64))
        out = np.array([self.evaluate(t) for t in T]).reshape(-1, 2)
        return out[:, 0], out[:, 1]

    def exit_stages(self, thresholds):
        """Exit stage of every sample for one threshold vector, or one per sample.

        Parameters
        ----------
        thresholds : array-like of shape (M - 1,) or (N, M - 1)
            One vector for every sample, or one per sample (time sharing:
            each row routed with its own vector).

        Returns
        -------
        exits : ndarray of int, shape (N,)
        """
        T = np.asarray(thresholds, dtype=np.float64)
        if self.n_stages == 1:
            return np.zeros(self.n_samples, dtype=np.intp)
        if T.ndim == 2:
            return first_exit_stage(self.conf, T)
        return self.exits_of_codes(self.exit_codes(thresholds=T))

    def predict_indices(self, thresholds):
        """Class index each sample gets when routed with ``thresholds``.

        Needs ``pred_labels``.

        Parameters
        ----------
        thresholds : array-like of shape (M - 1,) or (N, M - 1)

        Returns
        -------
        indices : ndarray of int, shape (N,)
        """
        if self.pred_labels is None:
            raise ValueError(
                "This ExitTable has no per-stage predictions (pred_labels); build it with "
                "estimator.exit_table(X) to rebuild routed predictions."
            )
        exits = self.exit_stages(thresholds)
        return self.pred_labels[np.arange(self.n_samples), exits]

    def min_cost(self):
        """Cost of the cheapest operating point (every sample leaves at stage 0).

        Returns
        -------
        cost : float
        """
        return float(self.full_cost[0]) if self.n_stages > 1 else 1.0
