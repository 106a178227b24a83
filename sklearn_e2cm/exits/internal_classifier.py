"""Exit head of a trained internal classifier, optionally boosted by E²CM.

An internal classifier (IC) is a linear layer on an exit's stage vector (the
pooled stage output), optionally followed by the E²CM distances to the class
means. Its exit confidence is the largest probability, ``1 - H / log K``
(low entropy), or the probability of a trained decision function that
leaving is safe. With ``combine``, E²CM is consulted too. ``"and"`` / ``"or"``:
E²CM's own confidence and the IC's are mapped to their quantiles on the
tuning rows and combined by ``min`` (``"and"``) or ``max`` (``"or"``).
``"consult"`` (the paper's rule, §III-B / Table I): the IC's own confidence
is kept where E²CM's class at that exit (the argmax of its class-means
scores) equals the IC's class and set to 0 elsewhere, so the exit fires when
the IC passes its threshold *and* E²CM agrees with it (a threshold is never
negative, so a confidence of 0 never fires).
"""

import math

import numpy as np

from .._backend import as_backend, concat, is_torch, softmax, xp
from .._backend import nbytes as array_nbytes
from .class_means import head_flops

__all__ = ["InternalClassifierHead", "N_QUANTILES", "whitened_score_moments"]

#: Points of the quantile grid that maps each confidence to [0, 1] for ``combine``.
N_QUANTILES = 1001


def _quantile_map(values, grid):
    """Step CDF of the tuning values on a quantile grid (monotone, in [0, 1]), float64,
    in the array type and device of ``values``."""
    if is_torch(values):
        import torch

        g = torch.as_tensor(grid, dtype=torch.float64, device=values.device)
        k = torch.searchsorted(g, values.to(torch.float64), right=True)
        return k.to(torch.float64) / g.shape[0]
    return np.searchsorted(grid, np.asarray(values, dtype=np.float64), side="right") \
        / grid.shape[0]


def whitened_score_moments(e2cm, class_weights, within_cov):
    """Mean and standard deviation over the fit rows of every centred whitened exit score.

    The whitened scores ``s_k(x) = x·w_k + b_k`` omit the ``-½ xᵀΣ⁻¹x`` term
    shared by all classes (it cancels in the softmax), so their common part
    ``x·w̄`` varies from row to row by orders of magnitude more than the
    stage vectors do (about 10⁴ against 0.5 on a ResNet's pooled ReLU
    outputs, and it grows with any offset of the stage vectors). Appended
    raw to an internal classifier's input they swamp the stage vectors. The
    features appended instead are the centred scores
    ``s_k - mean_j s_j = -½ (d²_k - mean_j d²_j)`` (``d_k`` the Mahalanobis
    distances; the same softmax and argmax as the scores), standardised with
    the moments returned here.

    The centred scores are linear in ``x`` (weights ``w_k - w̄``), so their
    (weighted) mean and variance over the rows the class statistics were
    accumulated on follow from those statistics exactly, with no pass over
    the data: ``mean_k = (w_k - w̄)·μ + b_k - b̄`` and
    ``var_k = (w_k - w̄)ᵀ (Σ_w + Σ_b) (w_k - w̄)``, with ``μ`` the overall
    mean, ``Σ_w`` the pooled within-class covariance and ``Σ_b`` the
    between-class covariance of the class means (all weighted as the rows
    were).

    Parameters
    ----------
    e2cm : ExitHead
        A whitened class-means head (``metric="mahalanobis"``).
    class_weights : array-like of shape (n_classes,)
        Total (sample) weight of every class, in the head's class order.
    within_cov : array-like of shape (n_features, n_features)
        Pooled within-class covariance of the same rows (unshrunk).

    Returns
    -------
    mean, std : ndarray of float64 of shape (n_classes,)
        ``std`` is floored at ``1e-12`` times its largest entry (1 when all
        are 0), so a constant score is not blown up.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_e2cm.exits.class_means import whitened_head
    >>> from sklearn_e2cm.exits.statistics import ClassStatsAccumulator
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.randn(200, 3) + 5, np.repeat([0, 1, 2, 3], 50)
    >>> acc = ClassStatsAccumulator(scatter=True)
    >>> acc.update(X, y)
    >>> head, _ = whitened_head(acc.means(), acc.within_class_covariance(), 0.1)
    >>> mean, std = whitened_score_moments(head, [50] * 4, acc.within_class_covariance())
    >>> S = head.scores(X)
    >>> S = S - S.mean(1, keepdims=True)
    >>> bool(np.allclose(mean, S.mean(0)) and np.allclose(std, S.std(0)))
    True
    """
    W = np.asarray(e2cm.coef, dtype=np.float64)
    b = np.asarray(e2cm.intercept, dtype=np.float64)
    W, b = W - W.mean(0)[None, :], b - b.mean()
    C = np.asarray(e2cm.means, dtype=np.float64)
    pi = np.asarray(class_weights, dtype=np.float64)
    pi = pi / pi.sum()
    mu = pi @ C
    dev = C - mu[None, :]
    total = np.asarray(within_cov, dtype=np.float64) + (dev.T * pi[None, :]) @ dev
    mean = W @ mu + b
    var = np.einsum("kd,kd->k", W @ total, W)
    std = np.sqrt(np.maximum(var, 0.0))
    top = std.max() if std.size else 0.0
    std = np.maximum(std, 1e-12 * top) if top > 0 else np.ones_like(std)
    return mean, std


class InternalClassifierHead:
    """Exit head of one exit: an internal classifier, optionally boosted by E²CM.

    ``W``, ``b``: the linear layer on the head's input (the stage vector,
    followed by the E²CM distances ``d / s`` when ``e2cm_input``);
    ``criterion``: ``"max_proba"``, ``"entropy"`` or ``"decision"`` (with
    ``Wd``, ``bd`` the decision function); ``e2cm``: the stage's class-means
    :class:`~sklearn_e2cm.exits.class_means.ExitHead` (for the input distances
    and/or ``combine``); ``e2cm_mean``, ``e2cm_std``: when given, the fit
    rows' mean and standard deviation of the centred class-means scores
    ``S - mean_k S`` (see :func:`whitened_score_moments`), and the appended
    E²CM features are those centred scores negated and standardised,
    ``(e2cm_mean - (S - mean_k S)) / e2cm_std``.
    """

    e2cm_mean = e2cm_std = None  # heads pickled before the standardisation had none

    def __init__(self, W, b, criterion, e2cm=None, e2cm_input=False, Wd=None, bd=None,
                 combine=None, e2cm_mean=None, e2cm_std=None):
        self.W, self.b = W, b
        self.criterion = criterion
        self.e2cm = e2cm
        self.e2cm_input = e2cm_input
        self.Wd, self.bd = Wd, bd
        self.combine = combine
        self.e2cm_mean = None if e2cm_mean is None else np.asarray(e2cm_mean, np.float64)
        self.e2cm_std = None if e2cm_std is None else np.asarray(e2cm_std, np.float64)
        self.q_ic = self.q_e2cm = None
        self._cache = {}

    @property
    def n_classes(self):
        return self.W.shape[0]

    @property
    def n_features(self):
        return self.W.shape[1] - (self.n_classes if self.e2cm_input else 0)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def _params(self, like):
        key = (type(like).__module__, str(like.dtype), str(getattr(like, "device", "")))
        if key not in self._cache:
            p = [as_backend(self.W, like), as_backend(self.b, like)]
            if self.Wd is not None:
                p += [as_backend(self.Wd, like), as_backend(self.bd, like)]
            self._cache[key] = p
        return self._cache[key]

    def inputs(self, F, S=None):
        """The IC's input: the stage vector, then the E²CM distances when ``e2cm_input``.

        The distances are ``-scores`` of the class-means head: ``d / s``
        (eq. 3-4) for the Euclidean metric, the negated linear-discriminant
        scores for the whitened one; centred over the classes and
        standardised with ``e2cm_mean`` and ``e2cm_std`` when the head has
        them.

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors.
        S : array of shape (n, K), default=None
            Precomputed class-means scores of ``F``; computed when needed and None.

        Returns
        -------
        V : array of shape (n, D) or (n, D + K)
            ``F`` itself without ``e2cm_input``; same array type as ``F``.
        """
        if not self.e2cm_input:
            return F
        if S is None:
            S = self.e2cm.scores(F)
        if self.e2cm_mean is None:
            return concat([F, -S], axis=1)
        key = ("standardise", type(S).__module__, str(S.dtype), str(getattr(S, "device", "")))
        if key not in self._cache:
            self._cache[key] = (as_backend(self.e2cm_mean, S),
                                as_backend(-1.0 / self.e2cm_std, S))
        mean, neg_inv_std = self._cache[key]
        centred = S - S.mean(1)[:, None]
        return concat([F, (centred - mean[None, :]) * neg_inv_std[None, :]], axis=1)

    def raw(self, F):
        """``(P, IC confidence, E²CM confidence or None)`` before any combination.

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors.

        Returns
        -------
        P : array of shape (n, K)
            The IC's class probabilities, in ``F``'s array type and device.
        conf : array of float64 of shape (n,)
            The IC's confidence under ``criterion``, in ``F``'s array type and
            device.
        conf_e : array of shape (n,) or None
            Only with ``combine``: E²CM's largest exit probability (``"and"``,
            ``"or"``), or, for ``"consult"``, whether E²CM's class (the argmax
            of its scores) equals the IC's (1.0 or 0.0, float64); in ``F``'s
            array type and device.
        """
        params = self._params(F)
        W, b = params[0], params[1]
        S = self.e2cm.scores(F) if (self.e2cm_input or self.combine) else None
        V = self.inputs(F, S)
        P = softmax(V @ W.T + b[None, :])
        if self.criterion == "max_proba":
            conf = P.max(1)
            conf = conf.values if hasattr(conf, "values") else conf
        elif self.criterion == "entropy":
            ops = xp(P)
            logp = ops.clip_min(P, 1e-30)
            logp = logp.log() if is_torch(logp) else np.log(logp)
            H = -(P * logp).sum(1)
            conf = 1.0 - H / math.log(self.n_classes)
        else:  # "decision": probability that leaving here is safe
            Wd, bd = params[2], params[3]
            conf = softmax(V @ Wd.T + bd[None, :])[:, 1]
        conf_e = None
        if self.combine == "consult":
            agree = P.argmax(1) == S.argmax(1)
            conf_e = agree.double() if is_torch(agree) else agree.astype(np.float64)
        elif self.combine:
            conf_e = softmax(S).max(1)
            conf_e = conf_e.values if hasattr(conf_e, "values") else conf_e
        conf = conf.double() if is_torch(conf) else np.asarray(conf, dtype=np.float64)
        return P, conf, conf_e

    def combined(self, conf, conf_e):
        """The exit confidence compared with the threshold.

        Without ``combine`` it is ``conf``; with ``"and"`` / ``"or"``, the
        quantiles of ``conf`` and ``conf_e`` on the tuning rows combined by
        ``min`` / ``max``; with ``"consult"``, ``conf`` where E²CM agrees with
        the IC (``conf_e`` is 1) and 0 where it does not.

        Parameters
        ----------
        conf : array of shape (n,)
            The IC's confidence (numpy or torch).
        conf_e : array of shape (n,) or None
            E²CM's confidence (the agreement for ``"consult"``), of the same
            array type, as :meth:`raw` returns it.

        Returns
        -------
        conf : array of shape (n,)
            In the array type and device of ``conf``.
        """
        if not self.combine:
            return conf
        if self.combine == "consult":
            return conf * conf_e
        grid_ic, grid_e2cm = self._grids(conf)
        qi = _quantile_map(conf, grid_ic)
        qe = _quantile_map(conf_e, grid_e2cm)
        if is_torch(qi):
            return qi.minimum(qe) if self.combine == "and" else qi.maximum(qe)
        return np.minimum(qi, qe) if self.combine == "and" else np.maximum(qi, qe)

    def _grids(self, like):
        """The two quantile grids in the array type and device of ``like`` (cached)."""
        if not is_torch(like):
            return self.q_ic, self.q_e2cm
        key = ("grids", str(like.device))
        if key not in self._cache:
            import torch

            self._cache[key] = tuple(torch.as_tensor(g, dtype=torch.float64, device=like.device)
                                     for g in (self.q_ic, self.q_e2cm))
        return self._cache[key]

    def set_quantiles(self, conf, conf_e):
        """Record the quantile grids of both confidences on the tuning rows (for ``combine``).

        Parameters
        ----------
        conf : array-like of shape (n,)
            The IC's confidences on the tuning rows.
        conf_e : array-like of shape (n,)
            E²CM's confidences on the same rows.

        Returns
        -------
        None
            Sets ``q_ic`` and ``q_e2cm`` (``N_QUANTILES`` points each); nothing
            for ``"consult"``, which compares the IC's own confidence with the
            threshold.
        """
        if self.combine == "consult":
            return
        levels = np.linspace(0.0, 1.0, N_QUANTILES)
        self._cache = {}  # device copies of the old grids
        self.q_ic = np.quantile(conf, levels)
        self.q_e2cm = np.quantile(np.asarray(conf_e, dtype=np.float64), levels)

    def decide(self, F):
        """Class probabilities of a batch and its exit confidence.

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors.

        Returns
        -------
        P : array of shape (n, K)
            The IC's class probabilities, in ``F``'s array type and device.
        conf : array of float64 of shape (n,)
            The (combined) confidence compared with the threshold, in ``F``'s
            array type and device.
        """
        P, conf, conf_e = self.raw(F)
        return P, self.combined(conf, conf_e)

    def proba(self, F):
        """The IC's class probabilities of a batch.

        Parameters
        ----------
        F : ndarray or torch.Tensor of shape (n, D)
            Stage vectors.

        Returns
        -------
        P : array of shape (n, K)
        """
        return self.raw(F)[0]

    def flops(self):
        """Per-sample FLOPs of the head (multiply-add = 2) and of its exit decision.

        Includes the class-means head when its scores are used (``e2cm_input``
        or ``combine``, counted by :func:`head_flops` whatever the rule), the
        centring and standardisation of the appended scores when
        ``e2cm_mean`` is set (row mean ``K``, then ``(S - row mean - mean) ·
        (-1 / std)``: ``3K``; ``4K`` in all), the quantile look-ups of
        ``"and"`` / ``"or"`` (two binary searches and a min / max), and for
        ``"consult"`` the IC's argmax (``K``), the class comparison and the
        masking of the confidence (2).

        Returns
        -------
        flops : float
        """
        K, D_in = self.W.shape
        f = 2 * K * D_in + K + 5 * K  # linear layer, softmax
        f += {"max_proba": K + 1, "entropy": 3 * K + 3}.get(self.criterion, 0)
        if self.criterion == "decision":
            f += 2 * 2 * D_in + 2 + 10 + 1
        if self.e2cm is not None and (self.e2cm_input or self.combine):
            f += head_flops(self.e2cm.n_features, K, self.e2cm.metric,
                            self.e2cm.scale is not None, self.e2cm.centred)
        if self.e2cm_input and self.e2cm_mean is not None:
            f += 4 * K
        if self.combine == "consult":
            f += K + 2
        elif self.combine:
            f += 2 * int(math.ceil(math.log2(N_QUANTILES))) + 1
        return float(f)

    def nbytes(self, itemsize=None):
        """Bytes the head holds (``itemsize=None``) or stores for inference at ``itemsize``.

        The linear layer(s), the class-means head when used, the
        standardisation of its scores, and the quantile grids of ``"and"`` /
        ``"or"`` (always 8-byte floats).

        Parameters
        ----------
        itemsize : int or None, default=None
            ``None``: every array the head holds, as stored, with its copies
            on the stages' device. An int: bytes per stored float.

        Returns
        -------
        nbytes : int
        """
        if itemsize is None:
            held = [self.W, self.b, self.Wd, self.bd, self.q_ic, self.q_e2cm,
                    self.e2cm_mean, self.e2cm_std]
            for copies in self._cache.values():
                held.extend(copies)
            b = sum(array_nbytes(a) for a in held if a is not None)
            return int(b + (0 if self.e2cm is None else self.e2cm.nbytes(None)))
        n = self.W.size + self.b.size
        if self.e2cm_mean is not None:
            n += self.e2cm_mean.size + self.e2cm_std.size
        if self.Wd is not None:
            n += self.Wd.size + self.bd.size
        b = n * itemsize
        if self.e2cm is not None and (self.e2cm_input or self.combine):
            b += self.e2cm.nbytes(itemsize)
        if self.combine in ("and", "or"):
            b += 2 * N_QUANTILES * 8
        return int(b)
