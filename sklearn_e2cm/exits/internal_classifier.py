"""Exit head of a trained internal classifier, optionally boosted by E²CM.

An internal classifier (IC) is a linear layer on an exit's stage vector (the
pooled stage output), optionally followed by the E²CM distances to the class
means. Its exit confidence is the largest probability, ``1 - H / log K``
(low entropy), or the probability of a trained decision function that
leaving is safe. With ``combine``, E²CM's own confidence is consulted too:
both are mapped to their quantiles on the tuning rows and combined by ``min``
(``"and"``) or ``max`` (``"or"``).
"""

import math

import numpy as np

from .._backend import as_backend, concat, is_torch, softmax, xp
from .class_means import head_flops

__all__ = ["InternalClassifierHead", "N_QUANTILES"]

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


class InternalClassifierHead:
    """Exit head of one exit: an internal classifier, optionally boosted by E²CM.

    ``W``, ``b``: the linear layer on the head's input (the stage vector,
    followed by the E²CM distances ``d / s`` when ``e2cm_input``);
    ``criterion``: ``"max_proba"``, ``"entropy"`` or ``"decision"`` (with
    ``Wd``, ``bd`` the decision function); ``e2cm``: the stage's class-means
    :class:`~sklearn_e2cm.exits.class_means.ExitHead` (for the input distances
    and/or ``combine``).
    """

    def __init__(self, W, b, criterion, e2cm=None, e2cm_input=False, Wd=None, bd=None,
                 combine=None):
        self.W, self.b = W, b
        self.criterion = criterion
        self.e2cm = e2cm
        self.e2cm_input = e2cm_input
        self.Wd, self.bd = Wd, bd
        self.combine = combine
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
        scores for the whitened one.

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
        return concat([F, -S], axis=1)

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
            E²CM's largest exit probability, only with ``combine``.
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
        if self.combine:
            conf_e = softmax(S).max(1)
            conf_e = conf_e.values if hasattr(conf_e, "values") else conf_e
        conf = conf.double() if is_torch(conf) else np.asarray(conf, dtype=np.float64)
        return P, conf, conf_e

    def combined(self, conf, conf_e):
        """The exit confidence compared with the threshold.

        Without ``combine`` it is ``conf``; with it, the quantiles of ``conf`` and
        ``conf_e`` on the tuning rows combined by ``min`` (``"and"``) or ``max``
        (``"or"``).

        Parameters
        ----------
        conf : array of shape (n,)
            The IC's confidence (numpy or torch).
        conf_e : array of shape (n,) or None
            E²CM's confidence, of the same array type.

        Returns
        -------
        conf : array of shape (n,)
            In the array type and device of ``conf``.
        """
        if not self.combine:
            return conf
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
            Sets ``q_ic`` and ``q_e2cm`` (``N_QUANTILES`` points each).
        """
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
        or ``combine``) and the quantile look-ups of ``combine``.

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
                            self.e2cm.scale is not None)
        if self.combine:
            f += 2 * int(math.ceil(math.log2(N_QUANTILES))) + 1
        return float(f)

    def nbytes(self, itemsize=8):
        """Bytes the head stores for inference.

        The linear layer(s), the class-means head when used, and the quantile
        grids of ``combine`` (always 8-byte floats).

        Parameters
        ----------
        itemsize : int, default=8
            Bytes per stored float.

        Returns
        -------
        nbytes : int
        """
        n = self.W.size + self.b.size
        if self.Wd is not None:
            n += self.Wd.size + self.bd.size
        b = n * itemsize
        if self.e2cm is not None and (self.e2cm_input or self.combine):
            b += self.e2cm.nbytes(itemsize)
        if self.combine:
            b += 2 * N_QUANTILES * 8
        return int(b)
