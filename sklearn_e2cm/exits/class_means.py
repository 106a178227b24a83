"""Class means: distances, exit heads, exit probabilities.

One implementation serves numpy arrays (scikit-learn stages) and torch
tensors (torch stages): the functions below only use operations that both
array types share, and dispatch the few that differ through :func:`xp`.

* the class statistics the heads are built from stream by in
  :mod:`~sklearn_e2cm.exits.statistics` (eq. 2);
* :func:`squared_distances` is eq. 3 as one matrix product per batch.
* :class:`ExitHead` turns a stage vector into exit scores ``-d / s`` (eq. 4)
  or whitened linear scores, and into probabilities (eq. 5, stable softmax).
* :func:`head_flops` is the per-sample FLOP count of exactly what
  :class:`ExitHead` computes.
"""

import numpy as np

from .._backend import as_backend, is_torch, softmax
from .._backend import nbytes as array_nbytes

__all__ = [
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
    clipped at 0 (rounding can make it slightly negative). The rounding error
    is relative to ``||x||² + ||c||²``, not to the distance: for rows and
    means that share a large offset, subtract a point near them from both
    first (:class:`ExitHead` does).

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


def head_flops(n_features, n_classes, metric="euclidean", normalize=True, centred=False):
    """Per-sample FLOPs of one exit head (multiply-add counted as 2).

    Euclidean: ``||x||²`` (2D), ``x·Cᵀ`` (2KD), combining the three terms
    (3K), clipping (K), square root (K), eq. 4 scaling (K, if ``normalize``),
    softmax (max, subtract, exp, sum, divide: 5K) and the exit decision
    (max over K and one comparison: K + 1).

    Mahalanobis: ``x·Wᵀ + b`` (2KD + K), softmax (5K), decision (K + 1).

    A head whose class means lie far from the origin compared with their
    spread subtracts a centre from every row first (``centred``: D more).

    Examples
    --------
    >>> head_flops(100, 10)  # D=100, K=10
    2321
    """
    D, K = int(n_features), int(n_classes)
    c = D if centred else 0
    if metric == "euclidean":
        return 2 * D + 2 * K * D + 3 * K + K + K + (K if normalize else 0) + 5 * K + K + 1 + c
    if metric == "mahalanobis":
        return 2 * K * D + K + 5 * K + K + 1 + c
    raise ValueError(f"metric must be 'euclidean' or 'mahalanobis'; got {metric!r}.")


def normalized_head(means, distances, normalize=True, sample_weight=None, reduce_sum=None):
    """Euclidean exit head whose eq. 4 scales come from tuning-data distances.

    Parameters
    ----------
    means : ndarray of shape (n_classes, n_features)
    distances : ndarray of shape (n_samples, n_classes)
        Distances of the tuning samples to ``means`` (eq. 3), in the stages'
        compute dtype: the head stores its arrays in that dtype.
    normalize : bool
        Divide by the (weighted) mean distance to each class (eq. 4).
    sample_weight : ndarray of shape (n_samples,), default=None
    reduce_sum : callable, default=None
        Sums an array over the processes holding the other tuning rows
        (``torch.distributed``): the scales are then mean distances over all
        of their rows.

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
        if reduce_sum is None:
            scale = d64.mean(axis=0) if w is None else (w @ d64) / np.sum(w)
        else:  # rows on several processes: sums over all of them
            total = reduce_sum(np.append(d64.sum(axis=0) if w is None else w @ d64,
                                         d64.shape[0] if w is None else np.sum(w)))
            scale = total[:-1] / total[-1]
        scale = np.where(scale > 0, scale, 1.0)
    # the head stores its arrays in the dtype the distances were computed in (the stages')
    dtype = (distances.dtype if isinstance(distances, np.ndarray)
             and np.issubdtype(distances.dtype, np.floating) else None)
    head = ExitHead(means, scale=scale, dtype=dtype)
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

    When the covariance is no larger than the rounding of the statistics
    (every class's samples equal its mean), there is no within-class metric
    to learn: the identity is used (nearest class mean) and the amount is 1.

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
    C = np.asarray(means, dtype=np.float64)
    spread = float(((C - C.mean(axis=0)) ** 2).sum(axis=1).max()) if C.size else 0.0
    if not mu > _SCATTER_FLOOR * spread:  # no within-class scatter (or only rounding)
        cov, mu, a = np.zeros_like(cov), 1.0, 1.0
    shrunk = (1.0 - a) * cov
    shrunk.flat[:: D + 1] += a * mu
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


#: A head centres its arithmetic on one of its class means when their mean lies
#: farther than ``sqrt(_CENTRE_RATIO)`` (256) times their spread from the origin:
#: the expansion's rounding is then relative to the spread, not to the offset.
#: Below, the uncentred rounding stays under ``2 eps 2^16`` of the squared spread
#: (3e-11 in float64, 1.6 % in float32).
_CENTRE_RATIO = 2.0**16

#: A pooled covariance whose mean eigenvalue is below this fraction of the class
#: means' squared spread is rounding of the statistics, not scatter.
_SCATTER_FLOOR = 2.0**10 * np.finfo(np.float64).eps


def _offset_centre(means):
    """Index of the class mean to centre on, or None when the means are not offset.

    The means are offset when the mean of the means is farther from the origin
    than 256 times their largest distance to it (equal means: whenever they
    are not the origin). The centre is the class mean nearest to the mean of
    the means: a stored value, so rows equal to a class mean stay equal to it
    once centred.
    """
    C = np.asarray(means, dtype=np.float64)
    if C.size == 0:
        return None
    m = C.mean(axis=0)
    dist = ((C - m) ** 2).sum(axis=1)
    if not float(m @ m) > _CENTRE_RATIO * float(dist.max()):
        return None
    return int(np.argmin(dist))


def _stored(a, dtype):
    """``a`` as a contiguous, writable array of ``dtype`` (a CPU tensor can then view it)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


class ExitHead:
    """Exit head of one stage: class means turned into exit probabilities.

    The head keeps one copy of what inference reads, in one dtype: the class
    means, their squared norms and the inverse eq. 4 scales (Euclidean), or
    the whitened weights and intercepts (Mahalanobis, with the means), as
    numpy arrays. Everything derived from the means is computed in float64
    from the arrays given, then stored in ``dtype``: the stages' compute
    dtype (float32 for a float32 network), so a batch of stage vectors in
    that dtype is served without any conversion (a CPU tensor reads the
    numpy arrays in place). A batch in another dtype gets a temporary
    conversion; a tensor on another device (a GPU) one copy per device, kept
    and counted by :meth:`nbytes`.

    When the class means share an offset that is large compared with their
    spread (:attr:`centred`), every row is centred on one of the class means
    before the expansion, so that the distances and scores keep their
    precision whatever the offset; the centred arrays are derived from the
    stored ones on first use (they are neither pickled nor saved).

    Parameters
    ----------
    means : ndarray of shape (n_classes, n_features)
        Class means ``c_k``.
    scale : ndarray of shape (n_classes,) or None
        eq. 4 normalisation ``s_k`` (mean distance to class ``k`` on the
        tuning data); ``None`` means no normalisation. Kept in float64.
    metric : {"euclidean", "mahalanobis"}
    coef, intercept : ndarray, optional
        For the whitened metric: ``W = Σ⁻¹ C`` rows and ``b_k = -½ c_kᵀΣ⁻¹c_k``,
        so that the scores are ``x·Wᵀ + b``.
    dtype : numpy dtype, default=None
        Floating dtype of the stored arrays (float64 when None).

    Examples
    --------
    >>> import numpy as np
    >>> head = ExitHead(np.array([[0.0, 0.0], [3.0, 4.0]]), dtype=np.float32)
    >>> head.means.dtype, head.nbytes()  # means (2 x 2) and norms (2), float32
    (dtype('float32'), 24)
    >>> head.proba(np.array([[0.0, 0.1]], dtype=np.float32)).argmax(1)
    array([0])
    """

    def __init__(self, means, scale=None, metric="euclidean", coef=None, intercept=None,
                 dtype=None):
        dtype = np.dtype(np.float64 if dtype is None else dtype)
        means64 = np.asarray(means, dtype=np.float64)
        self.metric = metric
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self.means = _stored(means64, dtype)
        if metric == "mahalanobis":
            self.coef = _stored(coef, dtype)
            self.intercept = _stored(intercept, dtype)
            self._sqnorm = self._inv = None
        else:
            self.coef = self.intercept = None
            self._sqnorm = np.ascontiguousarray((means64**2).sum(1), dtype=dtype)
            self._inv = (None if self.scale is None
                         else np.ascontiguousarray(1.0 / self.scale, dtype=dtype))
        self._cache = {}

    @property
    def dtype(self):
        """dtype of the stored arrays."""
        return self.means.dtype

    @property
    def n_classes(self):
        return self.means.shape[0]

    @property
    def n_features(self):
        return self.means.shape[1]

    def astype(self, dtype):
        """The same head with its arrays stored in ``dtype`` (``self`` if they already are).

        The derived arrays (norms, inverse scales) are recomputed from the
        current means in float64, so a float64 head converted to float32
        holds exactly what a float32 head built from the float64 means holds.

        Parameters
        ----------
        dtype : numpy dtype

        Returns
        -------
        head : ExitHead
        """
        if np.dtype(dtype) == self.dtype:
            return self
        return ExitHead(self.means, self.scale, self.metric, self.coef, self.intercept,
                        dtype=dtype)

    @property
    def centred(self):
        """Whether rows are centred on one of the class means before the arithmetic.

        True when the mean of the class means is farther from the origin than
        256 times their largest distance to it: the rounding of ``||x||² -
        2 x·cᵀ + ||c||²`` (and of ``x·Wᵀ + b``) would then grow with the offset
        the rows and the means share instead of with their spread.
        """
        return bool(self._centring())

    def _centring(self):
        """Host arrays of the centred arithmetic, ``()`` when the head does not centre.

        Derived from the stored arrays on first use and kept in the cache:
        Euclidean ``(e, C - e, ||C - e||²)``, whitened ``(e, b')`` with
        ``b'_k = -½ (c_k - e)ᵀ Σ⁻¹ (c_k - e)``, where ``e`` is the class mean
        chosen by :func:`_offset_centre`. The whitened scores ``(x - e)·Wᵀ + b'``
        differ from ``x·Wᵀ + b`` by a constant per row, which the softmax
        ignores.
        """
        extra = self._cache.get("centring")
        if extra is None:
            extra = self._cache["centring"] = self._centred_arrays()
        return extra

    def _centred_arrays(self):
        k0 = _offset_centre(self.means)
        if k0 is None:
            return ()
        centre = self.means[k0].copy()
        if self.metric == "mahalanobis":
            C = self.means.astype(np.float64) - centre.astype(np.float64)
            W = self.coef.astype(np.float64)
            b = -0.5 * np.einsum("kd,kd->k", C, W - W[k0])  # W_k - W_k0 = Σ⁻¹ (c_k - e)
            return (centre, _stored(b, self.dtype))
        Cc = np.ascontiguousarray(self.means - centre)  # in the stored dtype, as rows are
        C64 = Cc.astype(np.float64)
        return (centre, Cc, _stored(np.einsum("kd,kd->k", C64, C64), self.dtype))

    def _stored(self):
        """The arrays inference reads (the centred ones when :attr:`centred`)."""
        extra = self._centring()
        if self.metric == "mahalanobis":
            return (self.coef, extra[1] if extra else self.intercept)
        if extra:
            return (extra[1], extra[2], self._inv)
        return (self.means, self._sqnorm, self._inv)

    def _centred_rows(self, F):
        """``F`` minus the centre of a :attr:`centred` head (``F`` itself otherwise)."""
        extra = self._centring()
        if not extra:
            return F
        return F - self._converted(F, "centre", extra[:1])[0]

    def _params(self, like):
        """The head's inference arrays in the array type, dtype and device of ``like``.

        The stored arrays themselves for numpy of the stored dtype; zero-copy
        views for a CPU tensor of that dtype; one kept copy per other device;
        a temporary conversion otherwise.
        """
        return self._converted(like, None, self._stored())

    def _converted(self, like, name, stored):
        """``stored`` arrays in the array type, dtype and device of ``like`` (see :meth:`_params`);
        copies on another device are kept under ``name``."""
        if is_torch(like):
            if like.device.type != "cpu":
                key = (str(like.dtype), str(like.device)) + (() if name is None else (name,))
                if key not in self._cache:
                    self._cache[key] = tuple(None if a is None else as_backend(a, like)
                                             for a in stored)
                return self._cache[key]
        elif like.dtype == self.dtype:
            return stored
        # torch.as_tensor shares the numpy memory when the dtype matches
        return tuple(None if a is None else as_backend(a, like) for a in stored)

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
        d2 = squared_distances(self._centred_rows(F), means, sqn)
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
            In ``F``'s array type, dtype and device. The whitened scores of a
            :attr:`centred` head are ``(x - e)·Wᵀ + b'`` (the same up to a
            constant per row).
        """
        if self.metric == "mahalanobis":
            W, b = self._params(F)
            return self._centred_rows(F) @ W.T + b[None, :]
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
        return head_flops(self.n_features, self.n_classes, self.metric, self.scale is not None,
                          self.centred)

    def nbytes(self, itemsize=None):
        """Bytes the head holds (``itemsize=None``), or would hold with ``itemsize``-byte floats.

        Parameters
        ----------
        itemsize : int or None, default=None
            ``None``: the bytes of every array the head holds now, as stored
            (means, norms, scales and inverse scales, or means, whitened
            weights and intercepts), the centred arrays of a :attr:`centred`
            head, and its copies on other devices.
            An int: the size of what inference needs (means or weights,
            norms or intercepts, inverse scales, and the centre of a
            :attr:`centred` head) at that many bytes per float.

        Returns
        -------
        nbytes : int
        """
        K, D = self.means.shape
        if itemsize is not None:
            c = D if self.centred else 0
            if self.metric == "mahalanobis":
                return (K * D + K + c) * itemsize
            return (K * D + K + (K if self.scale is not None else 0) + c) * itemsize
        self._centring()  # counted whether or not a batch was served yet
        held = [self.means, self.scale, self.coef, self.intercept, self._sqnorm, self._inv]
        for copies in self._cache.values():
            held.extend(copies)
        return int(sum(array_nbytes(a) for a in held if a is not None))

    @staticmethod
    def nbytes_for(n_classes, n_features, dtype=np.float32, metric="euclidean",
                   normalize=True):
        """Bytes a head of this size holds on the host (:meth:`nbytes`), without building it.

        For a head that is not :attr:`centred` (class means not far from the
        origin compared with their spread).

        Parameters
        ----------
        n_classes, n_features : int
            ``K`` and ``D``.
        dtype : numpy dtype, default=float32
            The stored dtype.
        metric : {"euclidean", "mahalanobis"}
        normalize : bool, default=True
            Whether a Euclidean head has eq. 4 scales.

        Returns
        -------
        nbytes : int

        Examples
        --------
        >>> ExitHead.nbytes_for(10, 100)  # (1000 means + 10 norms + 10 1/s) * 4 + 10 s * 8
        4160
        """
        K, D, item = int(n_classes), int(n_features), np.dtype(dtype).itemsize
        if metric == "mahalanobis":  # means, W, b
            return (2 * K * D + K) * item
        return (K * D + K + (K if normalize else 0)) * item + (8 * K if normalize else 0)
