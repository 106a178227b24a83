"""Stage adapter of a DEC encoder with frozen-prefix exit heads.

:class:`DECStages` presents the networks of
:class:`~sklearn_e2cm.cluster.DECEarlyExit` to the E²CM router: the large
DEC's encoder cut at the exits, each exit's trainable tail as its stage
vector, and the large DEC's Student-t clustering layer as the final
classifier. It also holds the Student-t soft assignment
(:func:`_soft_assign_numpy`, and :func:`_soft_assign` on tensors where they
are) that the clustering layer and the DEC training library share, and the
FLOP counts of the Linear/ReLU networks.

Every network here is a ``torch.nn.Sequential`` of ``Linear`` layers with a
``ReLU`` after each but the last; torch is imported when a method needs it.
This module imports only the stage interface and the bottom layer.
"""

import contextlib

import numpy as np

from .._backend import as_float_tensor, import_torch, resolve_device
from .base import StageAdapter

__all__ = ["DECStages"]


def _soft_assign_numpy(Z, centers, alpha=1.0):
    """Student-t soft assignment ``Q`` of embeddings ``Z`` (numpy, float64).

    ``q_ij ∝ (1 + ||z_i - mu_j||² / alpha) ** (-(alpha + 1) / 2)``, each row
    normalised to sum to one (DEC's clustering layer).

    Parameters
    ----------
    Z : array-like of shape (n_samples, embedding_dim)
        Embeddings.
    centers : array-like of shape (n_clusters, embedding_dim)
        Cluster centres.
    alpha : float, default=1.0
        Degrees of freedom of the Student-t kernel.

    Returns
    -------
    Q : ndarray of float64 of shape (n_samples, n_clusters)

    Examples
    --------
    >>> import numpy as np
    >>> _soft_assign_numpy(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0], [1.0, 0.0]]))
    array([[0.6667, 0.3333]])
    """
    return _soft_assign(np.asarray(Z, dtype=np.float64), np.asarray(centers, dtype=np.float64),
                        alpha)


def _soft_assign(Z, C, alpha=1.0):
    """:func:`_soft_assign_numpy` on float arrays or tensors, computed where they are."""
    d2 = (Z * Z).sum(1)[:, None] - 2.0 * Z @ C.T + (C * C).sum(1)[None, :]
    if isinstance(Z, np.ndarray):
        np.maximum(d2, 0.0, out=d2)
        logits = -(alpha + 1.0) / 2.0 * np.log1p(d2 / alpha)
        logits -= logits.max(axis=1, keepdims=True)
        Q = np.exp(logits)
        return Q / Q.sum(axis=1, keepdims=True)
    logits = -(alpha + 1.0) / 2.0 * (d2.clamp_min_(0.0) / alpha).log1p_()
    return logits.softmax(dim=1)


def _mlp_walk(module):
    """``(flops, out_width)`` of a ``Sequential`` of ``Linear`` / ``ReLU`` modules."""
    torch = import_torch("DEC")
    flops = 0
    width = None
    for m in module:
        if isinstance(m, torch.nn.Linear):
            flops += 2 * m.in_features * m.out_features + m.out_features
            width = m.out_features
        elif isinstance(m, torch.nn.ReLU):
            if width is None:
                raise ValueError("a ReLU before any Linear layer: cannot count its FLOPs")
            flops += width
        else:  # pragma: no cover - the encoders here are Linear/ReLU only
            raise TypeError(f"cannot count the FLOPs of {type(m).__name__}")
    return flops, width


def _mlp_flops(module):
    """Per-sample FLOPs of a ``Sequential`` of ``Linear`` / ``ReLU`` modules.

    A Linear layer costs ``2 * in * out + out`` (multiply-add counted as 2,
    plus the bias), a ReLU one FLOP per element. This is the elementwise
    convention of :func:`sklearn_e2cm.exits.class_means.head_flops`;
    ``torch.utils.flop_counter.FlopCounterMode`` counts only the
    ``2 * in * out`` of each Linear (about 0.1 % less on the paper's
    encoder, and the normalised costs agree to that precision).
    """
    return _mlp_walk(module)[0]


def _clustering_layer_flops(embedding_dim, n_clusters):
    """Per-sample FLOPs of DEC's Student-t clustering layer and its argmax.

    ``||z||²`` (2D), ``z·Cᵀ`` (2KD), combining the squared distances (3K),
    ``1 + d²`` (K), the reciprocal (alpha = 1: K), the normalisation (sum and
    divide: 2K) and the argmax (K).

    Examples
    --------
    >>> _clustering_layer_flops(10, 5)
    160
    """
    D, K = int(embedding_dim), int(n_clusters)
    return 2 * D + 2 * K * D + 8 * K


class DECStages(StageAdapter):
    """Stage adapter of a DEC encoder with frozen-prefix exit heads.

    The shared layers of the large encoder are cut at the exits: stage ``j <
    M-1`` is the block of Linear/ReLU pairs between exit ``j-1`` and exit
    ``j`` (run once per sample, shared by every head); its stage vector is
    exit ``j``'s trainable tail applied to that activation, i.e. the exit's
    own embedding. The last stage is the rest of the large encoder followed
    by the large DEC's Student-t clustering layer: it is the base model's
    classifier (``final_is_classifier``), so a sample that reaches the end
    gets exactly the large DEC's cluster.

    Parameters
    ----------
    stages : list of torch.nn.Sequential
        The ``M - 1`` shared blocks (views of the large encoder's modules).
    tails : list of torch.nn.Sequential
        The ``M - 1`` exit tails (shared activation -> exit embedding).
    final : torch.nn.Sequential
        The large encoder after the last exit.
    centers : ndarray of shape (n_clusters, embedding_dim)
        The large DEC's cluster centres.
    device : torch.device or str, default="cpu"
        Where the modules run inside :meth:`activate`.

    Attributes
    ----------
    stage_flops_ : ndarray of shape (M,)
        Per-sample FLOPs of every shared block; the last entry is the rest of
        the encoder plus the clustering layer.
    vector_flops_ : ndarray of shape (M,)
        Per-sample FLOPs of every exit tail (0 for the last stage).
    vector_dims_ : ndarray of int64 of shape (M,)
        Embedding size of every exit (0 for the last stage).
    """

    backend = "torch"

    def __init__(self, stages, tails, final, centers, device="cpu"):
        self.stages = list(stages)
        self.tails = list(tails)
        self.final = final
        self.centers = np.asarray(centers)
        self.device = device

    @property
    def n_stages(self):
        return len(self.stages) + 1

    @property
    def final_is_classifier(self):
        return True

    def _modules(self):
        return [*self.stages, *self.tails, self.final]

    def fit(self, X=None, y=None, sample_weight=None):
        """Count the per-sample FLOPs of every stage (nothing is trained).

        Parameters
        ----------
        X, y, sample_weight : Ignored
            Present for the :class:`~sklearn_e2cm.stages.base.StageAdapter`
            interface.

        Returns
        -------
        self : DECStages
        """
        K, D = self.centers.shape
        self.stage_flops_ = np.array(
            [_mlp_flops(s) for s in self.stages]
            + [_mlp_flops(self.final) + _clustering_layer_flops(D, K)],
            dtype=np.float64,
        )
        walks = [_mlp_walk(t) for t in self.tails]
        self.vector_flops_ = np.array([f for f, _ in walks] + [0], dtype=np.float64)
        self.vector_dims_ = np.array([w for _, w in walks] + [0], dtype=np.int64)
        return self

    @contextlib.contextmanager
    def activate(self):
        """Modules on ``device``, in eval mode, under ``torch.inference_mode``.

        A context manager: on exit every module's mode and device are restored
        (the fitted modules live on the CPU). Nested and concurrent uses share
        one switch (the first switches, the last restores).

        Yields
        ------
        self : DECStages
        """
        import_torch("DEC")
        from ._torch_utils import _unique_modules, network_inference

        device = resolve_device(self.device)
        stages = self._modules()
        with network_inference(stages, _unique_modules(stages), device):
            yield self

    def batches(self, X, y=None, batch_size=None):
        """Yield ``(Xb, yb)``: float32 tensors on ``device`` of ``batch_size`` rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
        batch_size : int, default=None
            Rows per batch; ``None`` (or 0) gives one batch of every row.

        Yields
        ------
        Xb : torch.Tensor of shape (n_batch, n_features)
            float32, on ``device``.
        yb : ndarray of shape (n_batch,) or None
        """
        device = resolve_device(self.device)
        n = X.shape[0]
        step = n if not batch_size else int(batch_size)
        for start in range(0, n, max(step, 1)):
            xb = as_float_tensor(X[start : start + step], device)
            yield xb, (None if y is None else np.asarray(y[start : start + step]))

    def run_stage(self, j, Z):
        """Output of shared block ``j`` for its input batch ``Z``.

        Parameters
        ----------
        j : int
            Stage index, ``0 .. M-2``.
        Z : torch.Tensor of shape (n, d_in)

        Returns
        -------
        Z_out : torch.Tensor of shape (n, d_out)
            Same device as ``Z``.
        """
        return self.stages[j](Z)

    def stage_vector(self, j, Z):
        """Exit ``j``'s embedding: its trainable tail applied to block ``j``'s output.

        Parameters
        ----------
        j : int
            Stage index, ``0 .. M-2``.
        Z : torch.Tensor of shape (n, d)
            Block ``j``'s output.

        Returns
        -------
        F : torch.Tensor of shape (n, vector_dims_[j])
            Same device as ``Z``.
        """
        return self.tails[j](Z)

    def final_outputs(self, Z):
        """The large DEC's cluster (argmax of its Student-t assignment) and ``Q``.

        Parameters
        ----------
        Z : torch.Tensor of shape (n, d)
            Input of the last stage (output of the last shared block).

        Returns
        -------
        class_index : torch.Tensor of int64 of shape (n,)
            Cluster of every row.
        Q : torch.Tensor of shape (n, n_clusters)
            Student-t soft assignment, on ``Z``'s device, in float64 (float32
            on a device without float64, such as MPS).
        """
        import torch

        E = self.final(Z)
        dtype = torch.float32 if E.device.type == "mps" else torch.float64
        C = torch.as_tensor(self.centers, dtype=dtype, device=E.device)  # K x D: tiny
        Q = _soft_assign(E.to(dtype), C)
        return Q.argmax(dim=1), Q

    def take(self, Z, keep):
        """Rows of ``Z`` selected by a boolean mask or row indices (numpy or tensor).

        Parameters
        ----------
        Z : torch.Tensor of shape (n, ...)
        keep : ndarray or torch.Tensor of shape (n,) of bool, or of int

        Returns
        -------
        Z_kept : torch.Tensor
            On ``Z``'s device.
        """
        torch = import_torch("DEC")
        keep = torch.as_tensor(np.asarray(keep) if not isinstance(keep, torch.Tensor) else keep)
        return Z[keep.to(Z.device)]

