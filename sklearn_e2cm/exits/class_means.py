"""Class means: streaming statistics, distances, exit probabilities.

One implementation serves numpy arrays (scikit-learn stages) and torch
tensors (torch stages): the functions below only use operations that both
array types share, and dispatch the few that differ through :func:`xp`.

* :class:`ClassStatsAccumulator` accumulates per-class sums and weights in
  float64 while batches stream by (eq. 2), optionally with the pooled
  within-class scatter for the whitened metric.
* :func:`squared_distances` is eq. 3 as one matrix product per batch.
* :class:`ExitHead` turns a stage vector into exit scores ``-d / s`` (eq. 4)
  or whitened linear scores, and into probabilities (eq. 5, stable softmax).
* :func:`head_flops` is the per-sample FLOP count of exactly what
  :class:`ExitHead` computes.
"""

import warnings

import numpy as np

from .._backend import is_torch, softmax, xp

__all__ = [
    "ClassStatsAccumulator",
    "oas_shrinkage",
    "normalized_head",
    "whitened_head",
    "ExitHead",
    "squared_distances",
    "head_flops",
]


def squared_distances(F, means, means_sqnorm=None):
    """Squared Euclidean distances between rows of ``F`` and rows of ``means``.

    Computed as ``||x||² - 2 x·cᵀ + ||c||²`` with one matrix product and
    clipped at 0 (rounding can make it slightly negative).

    Parameters
    ----------
    F : array of shape (n_samples, n_features)
        numpy array or torch tensor.
    means : array of shape (n_classes, n_features)
        Same array type, dtype and device as ``F``.
    means_sqnorm : array of shape (n_classes,), default=None
        Precomputed ``||c||²``.

    Returns
    -------
    d2 : array of shape (n_samples, n_classes)

    Examples
    --------
    >>> import numpy as np
    >>> squared_distances(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0]]))
    array([[ 0.],
           [25.]])
    """
    if means_sqnorm is None:
        means_sqnorm = (means * means).sum(1)
    if is_torch(F):
        import torch

        x_sq = torch.linalg.vector_norm(F, dim=1).square_()  # one read of F, no F*F temporary
        # (K, n) = C·Fᵀ is about twice as fast as F·Cᵀ for a skinny C on CPU; return its
        # transpose (a view)
        d2 = torch.addmm(means_sqnorm[:, None], means, F.T, beta=1.0, alpha=-2.0)
        d2.add_(x_sq[None, :])
        return d2.clamp_min_(0.0).T
    x_sq = np.einsum("ij,ij->i", F, F)
    d2 = F @ means.T
    d2 *= -2.0
    d2 += x_sq[:, None]
    d2 += means_sqnorm[None, :]
    return np.maximum(d2, 0.0, out=d2)


def head_flops(n_features, n_classes, metric="euclidean", normalize=True):
    """Per-sample FLOPs of one exit head (multiply-add counted as 2).

    Euclidean: ``||x||²`` (2D), ``x·Cᵀ`` (2KD), combining the three terms
    (3K), clipping (K), square root (K), eq. 4 scaling (K, if ``normalize``),
    softmax (max, subtract, exp, sum, divide: 5K) and the exit decision
    (max over K and one comparison: K + 1).

    Mahalanobis: ``x·Wᵀ + b`` (2KD + K), softmax (5K), decision (K + 1).

    Examples
    --------
    >>> head_flops(100, 10)  # D=100, K=10
    2321
    """
    D, K = int(n_features), int(n_classes)
    if metric == "euclidean":
        return 2 * D + 2 * K * D + 3 * K + K + K + (K if normalize else 0) + 5 * K + K + 1
    if metric == "mahalanobis":
        return 2 * K * D + K + 5 * K + K + 1
    raise ValueError(f"metric must be 'euclidean' or 'mahalanobis'; got {metric!r}.")


class ClassStatsAccumulator:
    """Streaming per-class weighted sums (float64), eq. 2.

    Classes are indices ``0 .. n_classes-1``; ``n_classes`` grows when a
    larger index shows up (labels discovered while streaming a DataLoader).
    With ``scatter=True`` the total weighted second moment ``Σ w x xᵀ`` is
    accumulated as well, from which the pooled within-class covariance is
    derived (:meth:`within_class_covariance`).

    Examples
    --------
    >>> import numpy as np
    >>> acc = ClassStatsAccumulator()
    >>> acc.update(np.array([[0.0], [2.0], [10.0]]), np.array([0, 0, 1]))
    >>> acc.means()
    array([[ 1.],
           [10.]])
    """

    def __init__(self, scatter=False):
        self.scatter = scatter
        self.sums = None
        self.weights = None
        self.second = None
        self.shift = None
        self.n_seen = 0
        self._resident = {}

    def grow(self, n_classes, n_features):
        """Make room for ``n_classes`` classes of ``n_features`` features (zeros).

        Allocates the sums on first use; later calls only append zero rows for
        new classes. Raises ``ValueError`` when ``n_features`` changed.

        Parameters
        ----------
        n_classes : int
            Number of classes to hold (never shrinks).
        n_features : int
            Width of the stage vectors.

        Returns
        -------
        None
        """
        if self.sums is None:
            self.sums = np.zeros((n_classes, n_features))
            self.weights = np.zeros(n_classes)
            if self.scatter:
                self.second = np.zeros((n_features, n_features))
            return
        if self.sums.shape[1] != n_features:
            raise ValueError(
                f"Stage features changed width between batches: {self.sums.shape[1]} "
                f"then {n_features}."
            )
        if n_classes > self.sums.shape[0]:
            extra = n_classes - self.sums.shape[0]
            self.sums = np.vstack([self.sums, np.zeros((extra, n_features))])
            self.weights = np.concatenate([self.weights, np.zeros(extra)])

    def update(self, F, y_idx, sample_weight=None):
        """Add a batch: ``F`` (n, D) numpy or torch, ``y_idx`` (n,) int numpy.

        With ``scatter=True`` statistics are taken around a fixed shift (the
        first batch's mean), so that the second moments lose no precision to
        large feature offsets.
        Each batch's class sums are one matrix product, accumulated across
        batches in float64; the product itself is in the features' precision
        for the Euclidean metric and in float64 with ``scatter=True`` (the
        whitened metric amplifies any error in the means or the covariance).

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors of the batch.
        y_idx : array-like of int of shape (n,)
            Class index of every row.
        sample_weight : array-like of shape (n,), default=None
            Row weights (1 when None).

        Returns
        -------
        None
            The statistics are updated in place; an empty batch changes nothing.
        """
        y_idx = np.asarray(y_idx, dtype=np.intp)
        if y_idx.shape[0] == 0:
            return
        n_classes = int(y_idx.max()) + 1
        self.grow(max(n_classes, 0 if self.sums is None else self.sums.shape[0]), F.shape[1])
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        K, n = self.sums.shape[0], F.shape[0]
        if is_torch(F):
            import torch

            if self.shift is None:
                self.shift = (F.double().mean(0).cpu().numpy() if self.scatter
                              else np.zeros(F.shape[1]))
            if self.scatter:  # float64 throughout: whitening amplifies any error in C or Σ
                Fx = F.double()
                Fc = Fx - torch.as_tensor(self.shift, dtype=Fx.dtype, device=F.device)
            else:  # plain sums need no shift (and no copy of the activations)
                Fc = F
            wt = None if w is None else torch.as_tensor(w, dtype=Fc.dtype, device=F.device)
            if F.device.type == "cpu" and not self.scatter:
                self.sums += _class_sums_csr(Fc, y_idx, wt, K).double().numpy()
            else:
                onehot = torch.zeros((K, n), dtype=Fc.dtype, device=F.device)
                onehot[torch.as_tensor(y_idx, device=F.device),
                       torch.arange(n, device=F.device)] = (1.0 if wt is None else wt)
                self._add_resident("sums", (onehot @ Fc).double(), K)
            if self.scatter:
                Fw = Fc if wt is None else Fc * wt[:, None]
                self._add_resident("second", Fc.T @ Fw, None)
        else:
            Fd = np.asarray(F, dtype=np.float64)
            if self.shift is None:
                self.shift = Fd.mean(axis=0)
            Fc = Fd - self.shift
            Fw = Fc if w is None else Fc * w[:, None]
            order = np.argsort(y_idx, kind="stable")
            ys = y_idx[order]
            starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
            self.sums[ys[starts]] += np.add.reduceat(Fw[order], starts, axis=0)
            if self.scatter:
                self.second += Fc.T @ Fw
        self.weights += np.bincount(y_idx, weights=w, minlength=K)[:K]
        self.n_seen += n

    def _add_resident(self, name, value, n_rows):
        """Accumulate a float64 tensor where it was computed (the stages' device).

        Statistics of device batches stay on the device, in float64, and are
        added to the host arrays once, when they are read (:meth:`_settle`): no
        transfer per batch. ``n_rows`` pads a class-sum buffer that grew.
        """
        import torch

        resident = self._resident.get(name)
        if resident is None:
            self._resident[name] = value.clone()
            return
        if n_rows is not None and resident.shape[0] < n_rows:
            pad = torch.zeros((n_rows - resident.shape[0], resident.shape[1]),
                              dtype=resident.dtype, device=resident.device)
            resident = self._resident[name] = torch.cat([resident, pad])
        resident += value

    def _settle(self):
        """Add the device-resident statistics to the host arrays (one transfer each)."""
        for name, resident in self._resident.items():
            host = resident.cpu().numpy()
            target = getattr(self, name)
            target[: host.shape[0]] += host
        self._resident = {}

    def _centred_means(self):
        if self.sums is None:
            raise ValueError("No samples were accumulated.")
        self._settle()
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.weights[:, None]

    def means(self):
        """Weighted class means, shape (n_classes, n_features), float64.

        Returns
        -------
        means : ndarray of float64 of shape (n_classes, n_features)
            NaN rows for classes with zero total weight.
        """
        return self._centred_means() + self.shift

    def within_class_covariance(self):
        """Pooled within-class covariance ``Σ_k Σ_{i∈k} w_i (x_i - c_k)(x_i - c_k)ᵀ / Σ w``.

        Only available with ``scatter=True`` (else ``ValueError``).

        Returns
        -------
        cov : ndarray of float64 of shape (n_features, n_features)
            Symmetric.
        """
        if not self.scatter:
            raise ValueError("Accumulator was created with scatter=False.")
        means = self._centred_means()  # covariance is shift-invariant
        between = (means * self.weights[:, None]).T @ means
        cov = (self.second - between) / self.weights.sum()
        return (cov + cov.T) / 2.0


def _class_sums_csr(F, y_idx, w, K):
    """Per-class (weighted) row sums of a CPU tensor as a sparse (K, n) × dense product.

    The class-membership matrix in CSR form makes the product one read of
    ``F`` (row additions), about twice as fast on CPU as the dense one-hot
    product, which packs ``F`` for a GEMM with only K output rows.
    """
    import torch

    n = F.shape[0]
    y = torch.as_tensor(y_idx, dtype=torch.long)
    order = torch.argsort(y, stable=True)
    crow = torch.zeros(K + 1, dtype=torch.long)
    crow[1:] = torch.bincount(y, minlength=K).cumsum(0)
    values = torch.ones(n, dtype=F.dtype) if w is None else w[order]
    with warnings.catch_warnings():  # CSR support is flagged beta; the product is plain
        warnings.simplefilter("ignore", UserWarning)
        member = torch.sparse_csr_tensor(crow, order, values, size=(K, n))
        return torch.sparse.mm(member, F)


def normalized_head(means, distances, normalize=True, sample_weight=None):
    """Euclidean exit head whose eq. 4 scales come from tuning-data distances.

    Parameters
    ----------
    means : ndarray of shape (n_classes, n_features)
    distances : ndarray of shape (n_samples, n_classes)
        Distances of the tuning samples to ``means`` (eq. 3).
    normalize : bool
        Divide by the (weighted) mean distance to each class (eq. 4).
    sample_weight : ndarray of shape (n_samples,), default=None

    Returns
    -------
    head : ExitHead
    proba : ndarray of shape (n_samples, n_classes)
        The tuning samples' exit probabilities, computed as the head computes
        them at inference.
    """
    scale = None
    if normalize:
        d64 = np.asarray(distances, dtype=np.float64)
        w = sample_weight
        scale = d64.mean(axis=0) if w is None else (w @ d64) / np.sum(w)
        scale = np.where(scale > 0, scale, 1.0)
    head = ExitHead(means, scale=scale)
    return head, head.proba_from_distances(distances)


def oas_shrinkage(cov, n_samples):
    """Oracle Approximating Shrinkage amount for a covariance estimate.

    The same formula as :func:`sklearn.covariance.oas`, which needs only the
    covariance and the number of samples, so it works on streamed statistics.
    """
    D = cov.shape[0]
    if D == 1:
        return 0.0
    alpha = np.mean(cov**2)
    mu = np.trace(cov) / D
    num = alpha + mu**2
    den = (n_samples + 1) * (alpha - mu**2 / D)
    return 1.0 if den == 0 else float(min(num / den, 1.0))


def whitened_head(means, cov, shrinkage="oas", n_samples=None):
    """Exit head with the shared-covariance (Mahalanobis) metric.

    The covariance is shrunk towards ``mu * I`` (``mu`` its mean eigenvalue)
    by ``shrinkage`` (a float in [0, 1], or ``"oas"``), then
    ``W = Σ⁻¹ C`` and ``b_k = -½ c_kᵀ Σ⁻¹ c_k`` are precomputed so that the
    exit scores ``x·Wᵀ + b`` cost one matrix product: the
    ``-½ xᵀ Σ⁻¹ x`` term is the same for every class and cancels in the
    softmax.

    Returns
    -------
    head : ExitHead
    shrinkage : float
        The amount used.
    """
    from scipy import linalg

    cov = np.asarray(cov, dtype=np.float64)
    D = cov.shape[0]
    if isinstance(shrinkage, str):
        if shrinkage != "oas":
            raise ValueError(f"shrinkage must be 'oas' or a float in [0, 1]; got {shrinkage!r}.")
        a = oas_shrinkage(cov, n_samples)
    else:
        a = float(shrinkage)
    mu = np.trace(cov) / D
    shrunk = (1.0 - a) * cov
    shrunk.flat[:: D + 1] += a * mu
    C = np.asarray(means, dtype=np.float64)
    try:
        W = linalg.solve(shrunk, C.T, assume_a="pos", check_finite=False).T
        if not np.all(np.isfinite(W)):
            raise linalg.LinAlgError("non-finite solution")
    except (linalg.LinAlgError, ValueError):
        # singular covariance (no shrinkage, collinear features): least squares, as
        # LinearDiscriminantAnalysis(solver="lsqr") does
        W = linalg.lstsq(shrunk, C.T, check_finite=False)[0].T
    b = -0.5 * np.einsum("kd,kd->k", C, W)
    return ExitHead(C, metric="mahalanobis", coef=W, intercept=b), a


class ExitHead:
    """Exit head of one stage: class means turned into exit probabilities.

    Parameters
    ----------
    means : ndarray of shape (n_classes, n_features)
        Class means ``c_k`` (float64).
    scale : ndarray of shape (n_classes,) or None
        eq. 4 normalisation ``s_k`` (mean distance to class ``k`` on the
        tuning data); ``None`` means no normalisation.
    metric : {"euclidean", "mahalanobis"}
    coef, intercept : ndarray, optional
        For the whitened metric: ``W = Σ⁻¹ C`` rows and ``b_k = -½ c_kᵀΣ⁻¹c_k``,
        so that the scores are ``x·Wᵀ + b``.
    """

    def __init__(self, means, scale=None, metric="euclidean", coef=None, intercept=None):
        self.means = np.asarray(means, dtype=np.float64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self.metric = metric
        self.coef = coef
        self.intercept = intercept
        self._cache = {}

    @property
    def n_classes(self):
        return self.means.shape[0]

    @property
    def n_features(self):
        return self.means.shape[1]

    def _params(self, like):
        """The head's arrays in the dtype/device of ``like`` (cached)."""
        if is_torch(like):
            key = ("torch", str(like.dtype), str(like.device))
        else:
            key = ("numpy", str(like.dtype))
        if key not in self._cache:
            ops = xp(like)
            if self.metric == "mahalanobis":
                p = (ops.asarray_like(self.coef, like), ops.asarray_like(self.intercept, like))
            else:
                inv = None if self.scale is None else ops.asarray_like(1.0 / self.scale, like)
                p = (
                    ops.asarray_like(self.means, like),
                    ops.asarray_like((self.means**2).sum(1), like),
                    inv,
                )
            self._cache[key] = p
        return self._cache[key]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def distances(self, F):
        """Euclidean distances ``d_k`` (eq. 3), shape (n, K).

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors.

        Returns
        -------
        d : array of shape (n, K)
            Distance of every row to every class mean, in ``F``'s array type,
            dtype and device.
        """
        means, sqn, _ = self._params(F)
        d2 = squared_distances(F, means, sqn)
        return d2.sqrt_() if is_torch(d2) else np.sqrt(d2, out=d2)

    def scores(self, F):
        """Exit logits: ``-d / s`` (Euclidean) or ``x·Wᵀ + b`` (Mahalanobis).

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors.

        Returns
        -------
        S : array of shape (n, K)
            In ``F``'s array type, dtype and device.
        """
        if self.metric == "mahalanobis":
            W, b = self._params(F)
            return F @ W.T + b[None, :]
        return self.scores_from_distances(self.distances(F))

    def scores_from_distances(self, d):
        """``-d / s`` computed in the dtype of ``d`` (eq. 4; Euclidean only).

        Parameters
        ----------
        d : ndarray or torch.Tensor of shape (n, K)
            Distances from :meth:`distances`.

        Returns
        -------
        S : array of shape (n, K)
            ``-d`` when the head has no ``scale``.
        """
        _, _, inv = self._params(d)
        return -d if inv is None else -(d * inv[None, :])

    def decide(self, F):
        """Exit probabilities of a batch and its exit confidence.

        Parameters
        ----------
        F : array of shape (n, D)
            Stage vectors (numpy or torch).

        Returns
        -------
        P : array of shape (n, K)
            Exit probabilities (eq. 5).
        conf : None
            The confidence is the largest probability (eq. 6).
        """
        return self.proba(F), None

    def proba(self, F):
        """Exit probabilities (eq. 5), shape (n, K).

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors.

        Returns
        -------
        P : array of shape (n, K)
            Softmax of :meth:`scores`, in ``F``'s array type and device.
        """
        return softmax(self.scores(F))

    def proba_from_distances(self, d):
        """Exit probabilities from precomputed distances (same arithmetic as :meth:`proba`).

        Parameters
        ----------
        d : ndarray or torch.Tensor of shape (n, K)
            Distances from :meth:`distances`.

        Returns
        -------
        P : array of shape (n, K)
        """
        return softmax(self.scores_from_distances(d))

    def flops(self):
        """Per-sample FLOPs of :meth:`proba` plus the exit decision.

        Returns
        -------
        flops : number
            See :func:`head_flops`.
        """
        return head_flops(self.n_features, self.n_classes, self.metric, self.scale is not None)

    def nbytes(self, itemsize=8):
        """Bytes the head stores for inference (means or W, norms/intercepts, scales).

        Parameters
        ----------
        itemsize : int, default=8
            Bytes per stored float.

        Returns
        -------
        nbytes : int
        """
        K, D = self.means.shape
        if self.metric == "mahalanobis":
            return (K * D + K) * itemsize
        return (K * D + K + (K if self.scale is not None else 0)) * itemsize
