"""Fits under ``torch.distributed``: statistics summed, tuning arrays gathered.

Every process of an initialised process group (``torchrun``, or
``torch.distributed.init_process_group`` with any backend) runs the
statistics pass on its own shard of the data. Between the passes
:meth:`ProcessGroupReducer.reduce_statistics` gives every process the class
statistics of all the shards (labels united by value, sums all-reduced in
float64 around a common shift), the eq. 4 scales are mean distances over every
shard's tuning rows (:meth:`ProcessGroupReducer.sum`) and the tuning arrays of
all shards are gathered on every process (:meth:`ProcessGroupReducer.gather_rows`,
in rank order), so each process chooses the same thresholds from the same
table: every rank ends with the estimator one process would fit on all the
rows.

``DistributedSampler`` (``drop_last=False``, its default) pads the shards to
equal length by repeating rows; :func:`shard_rows` says how many rows of this
process's shard are real, and the fit reads only those, so no row counts
twice.

Collectives run on the CPU for gloo (and mpi) and on the current CUDA device for
NCCL (call ``torch.cuda.set_device(local_rank)`` first, as with any NCCL
program).
"""

import math
import sys

import numpy as np

from .._backend import warn
from .inputs import LabelIndex

__all__ = ["process_group", "ProcessGroupReducer", "shard_rows"]


def _dist():
    """``torch.distributed`` when torch is imported and the package is available."""
    torch = sys.modules.get("torch")  # never import torch here: no torch, no process group
    if torch is None:
        return None
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available():
        return None
    return dist


def process_group(distributed):
    """The reductions of the default process group, or ``None`` for a local fit.

    Parameters
    ----------
    distributed : "auto" or bool
        ``"auto"``: use the default process group when one is initialised and
        holds more than one process. ``True``: require one. ``False``: never.

    Returns
    -------
    reducer : ProcessGroupReducer or None
    """
    if distributed is False:
        return None
    dist = _dist()
    if dist is None or not dist.is_initialized():
        if distributed is True:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group "
                "(torch.distributed.init_process_group, e.g. under torchrun); none is "
                "initialised. Use distributed='auto' or False for a local fit."
            )
        return None
    if dist.get_world_size() == 1:
        return None
    return ProcessGroupReducer(dist)


class ProcessGroupReducer:
    """Collectives of one process group, on numpy arrays.

    Parameters
    ----------
    dist : module
        ``torch.distributed`` (initialised).
    group : ProcessGroup, default=None
        ``None``: the default group.
    """

    def __init__(self, dist, group=None):
        import torch

        self.dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        self.device = (torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend
                       else torch.device("cpu"))

    def _tensor(self, a):
        import torch

        return torch.as_tensor(np.ascontiguousarray(a)).to(self.device).clone()

    def sum(self, a):
        """Element-wise sum of ``a`` over the processes (float64).

        Parameters
        ----------
        a : array-like

        Returns
        -------
        total : ndarray of float64, same shape
        """
        t = self._tensor(np.asarray(a, dtype=np.float64))
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, group=self.group)
        return t.cpu().numpy()

    def broadcast(self, a, src=0):
        """Rank ``src``'s ``a`` on every process (float64, same shape everywhere)."""
        t = self._tensor(np.asarray(a, dtype=np.float64))
        self.dist.broadcast(t, src=src, group=self.group)
        return t.cpu().numpy()

    def gather_objects(self, obj):
        """Every process's ``obj`` (picklable), in rank order."""
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather_rows(self, a):
        """Every process's rows of ``a``, concatenated in rank order, on every process.

        Parameters
        ----------
        a : ndarray of shape (n, ...)
            Float, int or bool; ``n`` may differ between processes.

        Returns
        -------
        rows : ndarray of shape (n_total, ...), ``a``'s dtype
        """
        a = np.asarray(a)
        counts = np.zeros(self.world_size)
        counts[self.rank] = a.shape[0]
        counts = self.sum(counts).astype(np.int64)
        wire = np.float64 if np.issubdtype(a.dtype, np.floating) else np.int64
        padded = np.zeros((int(counts.max()),) + a.shape[1:], dtype=wire)
        padded[: a.shape[0]] = a
        t = self._tensor(padded)
        parts = [t.new_empty(t.shape) for _ in range(self.world_size)]
        self.dist.all_gather(parts, t, group=self.group)
        return np.concatenate([p.cpu().numpy()[:c] for p, c in zip(parts, counts)]).astype(
            a.dtype, copy=False)

    def reduce_statistics(self, stats):
        """Replace ``stats`` by the statistics of every process's rows (in place).

        Labels are united by value in rank order of discovery (every process
        gets the same class indices); each stage's sums are re-expressed around
        rank 0's shift and summed: one all-reduce per stage.

        Parameters
        ----------
        stats : ClassStatistics
            This process's statistics (every stage must have seen rows).

        Returns
        -------
        stats : ClassStatistics
        """
        labels = LabelIndex()
        for theirs in self.gather_objects(list(stats.labels.labels)):
            labels(np.asarray(theirs, dtype=object) if theirs else [])
        common = type(stats)(stats.n_stages, stats.metric, classes=labels.labels)
        common.merge(stats)  # this process's sums, in the common class order
        K = len(labels.labels)
        for j, acc in enumerate(common.stages):
            if acc.sums is None:
                raise ValueError(f"Process {self.rank} has no rows to fit on.")
            D = acc.sums.shape[1]
            acc.grow(K, D)
            acc.rebase(self.broadcast(acc.shift))
            parts = [acc.sums.ravel(), acc.weights, np.array([acc.n_seen], float)]
            if acc.second is not None:
                parts.append(acc.second.ravel())
            total = self.sum(np.concatenate(parts))
            acc.sums = total[: K * D].reshape(K, D)
            acc.weights = total[K * D: K * D + K]
            acc.n_seen = int(round(total[K * D + K]))
            if acc.second is not None:
                acc.second = total[K * D + K + 1:].reshape(D, D)
        stats.labels, stats.stages = common.labels, common.stages
        return stats


def shard_rows(X):
    """Rows of this process's shard that are not ``DistributedSampler`` padding.

    ``DistributedSampler(drop_last=False)`` repeats the first rows of its
    (shuffled) index list so that every process gets ``ceil(N / W)`` rows:
    positions ``>= N`` of the padded list are repeats, and process ``r`` reads
    positions ``r, r + W, ...``, so its real rows are its first
    ``ceil((N - r) / W)``.

    Parameters
    ----------
    X : DataLoader or other input

    Returns
    -------
    n_rows : int or None
        ``None`` when ``X`` is not a DataLoader over a ``DistributedSampler``
        (every row is real).
    """
    dist = _dist()
    if dist is None:
        return None
    from torch.utils.data.distributed import DistributedSampler

    sampler = getattr(X, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(getattr(X, "batch_sampler", None), "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        return None
    N, W, r = len(sampler.dataset), sampler.num_replicas, sampler.rank
    if sampler.drop_last:
        if N % W:
            warn(f"DistributedSampler(drop_last=True) leaves {N % W} of the {N} rows out of "
                 "every shard, so they are not fitted; use drop_last=False (its padding is "
                 "detected and not counted).")
        return None
    return max(0, math.ceil((N - r) / W))
