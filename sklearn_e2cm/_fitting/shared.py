"""One forward pass over a data set, shared by fits on subsets of its rows.

When the stages are frozen (a torch network; scikit-learn stages that are all
fitted), a row's stage vectors do not depend on the rows the class means are
fitted on, so the folds of a search and its refit can all read them from one
pass instead of running the stages again.
"""

import contextlib

import numpy as np

from .._backend import nbytes
from .passes import RowCache, forward_source, row_bytes

__all__ = ["SharedStageOutputs", "run_shared_pass"]


class SharedStageOutputs:
    """Stage vectors of every row of a data set, computed in one forward pass.

    Parameters
    ----------
    adapter : StageAdapter
        Fitted on all the rows.
    vectors : list
        ``vectors[j]``: stage ``j``'s vectors of every row (backend arrays, rows
        in the data's order); for a chain ending in a classifier the last entry
        holds the base model's probabilities.
    final : ndarray or None
        The base model's class indices (classifier chains).
    classes : ndarray
        The labels of the data.
    y : ndarray of shape (n_samples,)
    sample_weight : ndarray or None
    """

    def __init__(self, adapter, vectors, final, classes, y, sample_weight):
        self.adapter = adapter
        self.vectors = vectors
        self.final = final
        self.classes = classes
        self.y = np.asarray(y)
        self.sample_weight = sample_weight
        self.n_samples = self.y.shape[0]

    @property
    def nbytes(self):
        """Bytes held by the stage vectors."""
        return int(sum(nbytes(V) for V in self.vectors))

    def context(self):
        """Context for computing on the cached vectors.

        No stage runs, so the network's modes and devices are left alone (folds
        may run in threads); torch work runs under ``inference_mode``
        (thread-local).

        Returns
        -------
        context : context manager
        """
        if self.adapter.backend == "torch":
            import torch

            return torch.inference_mode()
        return contextlib.nullcontext()

    def source(self, rows, y, batch_size):
        """A source serving rows ``rows`` as the batches a forward pass over them would give.

        Parameters
        ----------
        rows : array-like of int
            Row indices into the shared data.
        y : array-like of shape (len(rows),) or None
            Labels to serve with the batches.
        batch_size : int or None

        Returns
        -------
        source : callable
            ``source(n_run=None, final=True)``, as
            :func:`~sklearn_e2cm._fitting.passes.forward_source` returns.
        """
        rows = np.asarray(rows)
        n = rows.shape[0]
        bs = int(batch_size or n or 1)
        adapter = self.adapter
        M = adapter.n_stages

        def items(r, n_run, final):
            for j in range(n_run):
                if self.final is not None and j == M - 1:
                    if final:
                        yield j, adapter.take(self.vectors[j], r), self.final[r]
                    else:
                        yield j, None, None
                else:
                    yield j, adapter.take(self.vectors[j], r), None

        def source(n_run=None, final=True):
            n_run = M if n_run is None else n_run
            for start in range(0, n, bs):
                r = rows[start:start + bs]
                yield (items(r, n_run, final), None if y is None else y[start:start + bs],
                       r.shape[0])

        return source


def run_shared_pass(adapter, X, y, sample_weight, classes, batch_size, cache_size, verbose=0):
    """Run the fitted stages once on every row of ``X``, when it fits in memory.

    Parameters
    ----------
    adapter : StageAdapter
        Fitted on ``X`` and frozen.
    X : validated input (array or tensor)
    y : ndarray of shape (n_samples,)
    sample_weight : ndarray or None
    classes : ndarray
    batch_size : int
    cache_size : float
        Most bytes the stage vectors may take.
    verbose : int, default=0

    Returns
    -------
    shared : SharedStageOutputs or None
    reason : str or None
        Why the pass was not run (``None`` when it was).
    """
    n = len(y)
    need = float(sum(row_bytes(adapter, len(classes)))) * n
    if need > float(cache_size):
        return None, (
            f"the stage vectors of all rows need {need / 2**20:.0f} MiB, above "
            f"{float(cache_size) / 2**20:.0f} MiB (cache_size)")
    caches = [RowCache(n) for _ in range(adapter.n_stages)]
    finals = []
    source = forward_source(adapter, X, None, batch_size, verbose=verbose,
                            desc="E2CM stage outputs (shared)")
    with adapter.activate():
        for items, _, _ in source():
            for j, F, idx in items:
                caches[j].add(F)
                if idx is not None:
                    finals.append(idx)
    vectors = [c.rows() for c in caches]
    final = np.concatenate(finals) if finals else None
    return SharedStageOutputs(adapter, vectors, final, np.asarray(classes), y,
                              sample_weight), None
