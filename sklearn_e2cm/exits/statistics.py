"""Streaming class statistics: per-class sums and weights (eq. 2), mergeable.

:class:`ClassStatsAccumulator` accumulates per-class sums and weights in
float64 while batches stream by, optionally with the pooled within-class
scatter the whitened metric needs, on the batches' device; accumulators of
different rows merge exactly. It serves numpy arrays and torch tensors alike.
"""

import warnings

import numpy as np

from .._backend import float32_matmul_is_exact, is_torch

__all__ = ["ClassStatsAccumulator", "labels_on_device"]


class ClassStatsAccumulator:
    """Streaming per-class weighted sums (float64), eq. 2; mergeable.

    Classes are indices ``0 .. n_classes-1``; ``n_classes`` grows when a
    larger index shows up (labels discovered while streaming a DataLoader).
    With ``scatter=True`` the total weighted second moment ``Σ w x xᵀ`` is
    accumulated as well, from which the pooled within-class covariance is
    derived (:meth:`within_class_covariance`).

    All statistics are sums taken around a fixed ``shift`` (``sums[k] =
    Σ_{i∈k} w_i (x_i - shift)``, ``second = Σ_i w_i (x_i - shift)(x_i -
    shift)ᵀ``), so accumulators fitted on different rows combine exactly:
    :meth:`merge` re-expresses the other accumulator's sums around this one's
    shift (:meth:`rebase`, an exact change of origin) and adds them; the
    merged statistics are those of one accumulator fed every row, up to
    floating-point rounding of the sums.

    The second moment of float32 torch features is computed as a float32
    product of the rows centred on their class (see :meth:`update`). On
    trained networks its rounding moved the covariances by about 2e-8
    (relative), a thousand times less than leaving out one training row
    does (``benchmarks/results/scatter.md``). Set the class attribute
    ``ClassStatsAccumulator.float32_products = False`` to keep float64
    products for them too (about twice the time of the product on CPU, much
    more on GPUs with slow float64).

    Examples
    --------
    >>> import numpy as np
    >>> acc = ClassStatsAccumulator()
    >>> acc.update(np.array([[0.0], [2.0], [10.0]]), np.array([0, 0, 1]))
    >>> acc.means()
    array([[ 1.],
           [10.]])
    >>> other = ClassStatsAccumulator()
    >>> other.update(np.array([[4.0]]), np.array([0]))
    >>> acc.merge(other).means()  # the statistics of the four rows
    array([[ 2.],
           [10.]])
    """

    #: Whether float32 torch features get float32 scatter products (see :meth:`update`).
    float32_products = True

    def __init__(self, scatter=False):
        self.scatter = scatter
        self.sums = None
        self.weights = None
        self.second = None
        self.shift = None
        self.n_seen = 0
        self._resident = {}
        self._shift_cache = None

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

    def update(self, F, y_idx, sample_weight=None, on_device=None):
        """Add a batch: ``F`` (n, D) numpy or torch, ``y_idx`` (n,) int numpy.

        With ``scatter=True`` statistics are taken around a fixed shift (the
        first batch's mean), so that the second moments lose no precision to
        large feature offsets.
        Each batch's class sums are one matrix product, accumulated across
        batches in float64; the product itself is in the features' precision
        for the Euclidean metric and in float64 with ``scatter=True`` (the
        whitened metric amplifies any error in the means or the covariance).
        The second moment of float32 (or narrower) torch features is one
        float32 product of the rows centred on their class's mean in the
        batch, plus the batch's between-class part in float64 (exact algebra:
        ``Σ w (x-s)(x-s)ᵀ = Σ w r rᵀ + Σ_k W_k a_k a_kᵀ`` with ``a_k`` the
        class mean around the shift and ``r`` the residual), so its rounding
        is relative to the within-class scatter alone; float64 products are
        kept for float64 features, where torch may use TF32 or bfloat16
        for float32 products (:func:`~sklearn_e2cm._backend.float32_matmul_is_exact`)
        and when the class attribute ``float32_products`` is False.

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors of the batch.
        y_idx : array-like of int of shape (n,)
            Class index of every row.
        sample_weight : array-like of shape (n,), default=None
            Row weights (1 when None).
        on_device : tuple, default=None
            ``labels_on_device(y_idx, sample_weight, F.device)``, when the
            caller updates several accumulators with one batch's labels:
            they are then copied to the device once, not once per stage
            (on CUDA each copy from pageable memory waits for the device).

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
            if on_device is None or on_device[0].device != F.device:
                on_device = labels_on_device(y_idx, w, F.device)
            self._update_torch(F, y_idx, on_device, K)
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

    def _update_torch(self, F, y_idx, on_device, K):
        """:meth:`update` for a torch batch, on its device (float32 on MPS, no float64 there)."""
        import torch

        dev, n = F.device, F.shape[0]
        y, w_dev = on_device
        acc = torch.float32 if dev.type == "mps" else torch.float64
        if self.shift is None:
            self.shift = (F.to(acc).mean(0).cpu().numpy().astype(np.float64) if self.scatter
                          else np.zeros(F.shape[1]))
        if self.scatter:  # float64: whitening amplifies any error in the means or in C
            Fc = F.to(acc) - self._shift_on(dev, acc)
        else:  # plain sums need no shift (and no copy of the activations)
            Fc = F
        wt = None if w_dev is None else w_dev.to(Fc.dtype)
        if dev.type == "cpu" and not self.scatter:
            self.sums += _class_sums_csr(Fc, y_idx, wt, K).double().numpy()
            return
        onehot = torch.zeros((K, n), dtype=Fc.dtype, device=dev)
        onehot[y, torch.arange(n, device=dev)] = 1.0 if wt is None else wt
        sums = (onehot @ Fc).to(acc)
        self._add_resident("sums", sums, K)
        if not self.scatter:
            return
        if F.dtype == torch.float64 or not (dev.type == "mps" or (
                self.float32_products and float32_matmul_is_exact(dev))):
            self._add_resident("second", _gram(Fc, Fc if wt is None else Fc * wt[:, None]), None)
            return
        # float32 product of the within-class residuals, between-class part in float64
        Wb = onehot.sum(1, keepdim=True)
        M = torch.where(Wb > 0, sums / Wb.clamp_min(torch.finfo(acc).tiny), 0.0)
        R = (Fc - M[y]).float()
        second = _gram(R, R if wt is None else R * wt.float()[:, None]).to(acc)
        self._add_resident("second", second.addmm_((M * Wb).T, M), None)

    def _shift_on(self, device, dtype):
        """The shift as a tensor on ``device``, copied once (again only when it changed)."""
        import torch

        cached = self._shift_cache
        if cached is None or cached[0] is not self.shift or cached[1].device != device \
                or cached[1].dtype != dtype:
            tensor = torch.as_tensor(self.shift, dtype=dtype, device=device)
            cached = self._shift_cache = (self.shift, tensor)
        return cached[1]

    def _add_resident(self, name, value, n_rows):
        """Accumulate a float64 tensor where it was computed (the stages' device).

        Statistics of device batches stay on the device, in float64, and are
        added to the host arrays once, when they are read (:meth:`_settle`): no
        transfer per batch. ``n_rows`` pads a class-sum buffer that grew.
        """
        import torch

        if value.device.type == "mps":  # no float64 there: add to the host arrays now
            getattr(self, name)[: value.shape[0]] += value.cpu().numpy()
            return
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

    def __getstate__(self):
        self._settle()  # host arrays only: a pickle never holds device tensors
        state = self.__dict__.copy()
        state["_shift_cache"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_resident", {})
        self.__dict__.setdefault("_shift_cache", None)

    def rebase(self, shift):
        """Re-express the statistics around another ``shift`` (in place, exact algebra).

        With ``δ = old_shift - shift``: ``sums[k] += W_k δ`` and
        ``second += δ Tᵀ + T δᵀ + W δ δᵀ``, where ``T = Σ_k sums[k]`` and ``W``
        the total weight (before the update). Means and covariance do not
        change (up to rounding).

        Parameters
        ----------
        shift : ndarray of shape (n_features,)

        Returns
        -------
        self : ClassStatsAccumulator
        """
        shift = np.asarray(shift, dtype=np.float64)
        if self.sums is None:
            self.shift = shift.copy()
            return self
        self._settle()
        delta = self.shift - shift
        if self.second is not None:
            T = self.sums.sum(axis=0)
            outer = np.outer(delta, T)
            self.second += outer + outer.T + self.weights.sum() * np.outer(delta, delta)
        self.sums += self.weights[:, None] * delta[None, :]
        self.shift = shift.copy()
        return self

    def merge(self, other, class_map=None):
        """Add the statistics of ``other`` (rows seen elsewhere) to this accumulator.

        The result equals the statistics of one accumulator that saw both
        sets of rows (sums in another order: equal up to rounding).

        Parameters
        ----------
        other : ClassStatsAccumulator
            Same ``scatter`` and feature width; left unchanged.
        class_map : array-like of int of shape (other_n_classes,), default=None
            Class index in this accumulator of each of ``other``'s class
            indices (``None``: the same indices).

        Returns
        -------
        self : ClassStatsAccumulator
        """
        if bool(other.scatter) != bool(self.scatter):
            raise ValueError(
                f"Cannot merge statistics with scatter={other.scatter} into statistics "
                f"with scatter={self.scatter}: both must be fitted with the same metric."
            )
        other._settle()
        self._settle()
        if other.sums is None:
            return self
        K_o, D = other.sums.shape
        idx = (np.arange(K_o) if class_map is None
               else np.asarray(class_map, dtype=np.intp).reshape(-1))
        if idx.shape[0] != K_o:
            raise ValueError(
                f"class_map has {idx.shape[0]} entries; the merged statistics hold {K_o} "
                "classes."
            )
        K = int(idx.max()) + 1 if K_o else 0
        self.grow(max(K, 0 if self.sums is None else self.sums.shape[0]), D)
        if self.shift is None:
            self.shift = other.shift.copy()
        theirs = ClassStatsAccumulator(self.scatter)  # other's sums around our shift
        theirs.sums, theirs.weights, theirs.shift = (
            other.sums.copy(), other.weights.copy(), other.shift)
        theirs.second = None if other.second is None else other.second.copy()
        theirs.rebase(self.shift)
        np.add.at(self.sums, idx, theirs.sums)
        np.add.at(self.weights, idx, theirs.weights)
        if self.scatter:
            self.second += theirs.second
        self.n_seen += other.n_seen
        return self

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


def labels_on_device(y_idx, sample_weight, device):
    """A batch's class indices (int64) and weights (float64, or None) on ``device``.

    One copy each; on CUDA through pinned memory and without blocking, so
    the host does not wait for the device's queued work (a copy from
    pageable memory would).

    Parameters
    ----------
    y_idx : ndarray of int of shape (n,)
    sample_weight : ndarray of shape (n,) or None
    device : torch.device

    Returns
    -------
    y : torch.Tensor of int64
    w : torch.Tensor of float64 (float32 on MPS, which has no float64) or None
    """
    import torch

    kind = getattr(device, "type", device)

    def copy(a, dtype):
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))
        if kind == "cuda":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    w_dtype = np.float32 if kind == "mps" else np.float64
    return (copy(y_idx, np.int64),
            None if sample_weight is None else copy(sample_weight, w_dtype))


def _gram(A, B):
    """``Aᵀ B`` for a symmetric result (``B`` is ``A`` with rows scaled), upper blocks only.

    Wide products are computed as three of the four column blocks, the
    fourth being the transpose of the off-diagonal one (a quarter fewer
    multiplications than one full product).
    """
    import torch

    D = A.shape[1]
    if D < _GRAM_BLOCKS_FROM:
        return A.T @ B
    h = D // 2
    out = torch.empty((D, D), dtype=A.dtype, device=A.device)
    out[:h, :h] = A[:, :h].T @ B[:, :h]
    upper = A[:, :h].T @ B[:, h:]
    out[:h, h:] = upper
    out[h:, :h] = upper.T
    out[h:, h:] = A[:, h:].T @ B[:, h:]
    return out


#: Feature width from which :func:`_gram` splits the product into blocks.
_GRAM_BLOCKS_FROM = 384


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

