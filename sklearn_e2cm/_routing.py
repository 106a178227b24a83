"""Routing samples through the stages: the one place where inference saves time.

:func:`route` runs a batch stage by stage; after each stage with an active
exit head the rows whose max exit probability exceeds their threshold leave
and are dropped from the batch (compaction) before the next stage runs.
:func:`forward_all` runs every stage on every row (fitting, staged outputs).
Both are generic over :class:`~sklearn_e2cm.stages.base.StageAdapter`.
"""

from dataclasses import dataclass, field

import numpy as np

from ._memory import HeapGuard
from ._hashing import assign_rows, row_uniforms

__all__ = ["RoutingResult", "route", "decide", "forward_all", "iter_stages"]


@dataclass
class RoutingResult:
    """Result of one routed pass.

    Attributes
    ----------
    y_pred : ndarray of shape (n_samples,)
        Predicted labels.
    exit_stage : ndarray of int, shape (n_samples,)
        0-based stage after which each sample left.
    flops : ndarray of shape (n_samples,)
        Normalised cost paid by each sample (the base model costs 1.0).
    proba : ndarray of shape (n_samples, n_classes) or None
        Probabilities of the deciding exit (class-means head or the base
        model's classifier), when requested.
    component : ndarray of int, shape (n_samples,)
        Index of the time-sharing component (threshold vector) used.
    """

    y_pred: np.ndarray
    exit_stage: np.ndarray
    flops: np.ndarray
    proba: np.ndarray = None
    component: np.ndarray = field(default=None, repr=False)

    def __len__(self):
        return self.y_pred.shape[0]

    def to_frame(self):
        """The per-sample results as a pandas DataFrame.

        Returns
        -------
        frame : pandas.DataFrame
            Columns ``y_pred``, ``exit_stage`` and ``flops``, one row per sample.
        """
        import pandas as pd

        return pd.DataFrame(
            {"y_pred": self.y_pred, "exit_stage": self.exit_stage, "flops": self.flops}
        )

    def exit_counts(self, n_stages=None):
        """Number of samples that left after each stage.

        Parameters
        ----------
        n_stages : int, default=None
            Length of the result; ``None`` uses the last stage any sample left at.

        Returns
        -------
        counts : ndarray of int of shape (n_stages,)
            Entry ``j`` counts the samples with ``exit_stage == j``; longer than
            ``n_stages`` if a sample left at a later stage.
        """
        n = n_stages or (int(self.exit_stage.max()) + 1 if len(self) else 0)
        return np.bincount(self.exit_stage, minlength=n)


def _argmax_max(adapter, P):
    """(argmax, max) per row of a probability matrix, as numpy."""
    if adapter.backend == "torch":
        conf, idx = P.max(dim=1)
        return adapter.to_numpy(idx).astype(np.intp), adapter.to_numpy(conf)
    return P.argmax(axis=1), P.max(axis=1)


def decide(adapter, head, F):
    """Exit decision inputs of one head on a batch of stage vectors ``F``.

    Returns ``(P, idx, conf)``: the head's class probabilities (backend
    array), the predicted class indices and the exit confidence (numpy),
    compared with the stage's threshold by the router (exit when
    ``conf > T``). A head's ``decide(F)`` returns ``(P, conf)``; ``conf``
    ``None`` means the largest probability (E²CM, eq. 6), which every head
    without its own exit criterion uses.
    """
    P, conf = head.decide(F)
    idx, pmax = _argmax_max(adapter, P)
    return P, idx, (pmax if conf is None else np.asarray(conf))


def route(
    adapter,
    heads,
    thresholds,
    weights,
    costs,
    X,
    *,
    batch_size=None,
    seed=0,
    return_proba=False,
    progress=None,
):
    """One routed pass over ``X``.

    Parameters
    ----------
    adapter : StageAdapter
    heads : list of ExitHead or None
        One per stage (``None`` for a stage without a class-means head).
    thresholds : ndarray of shape (V, n_stages - 1)
        Threshold vectors of the time-sharing mixture (V = 1 without mixing).
    weights : ndarray of shape (V,)
        Mixing probabilities.
    costs : ndarray of shape (V, n_stages)
        Normalised cost of exiting after each stage, per component.
    X : input accepted by ``adapter.batches``
    seed : int
        Seed of the per-row component assignment (a hash of the row).
    return_proba : bool

    Returns
    -------
    result : RoutingResult
        ``y_pred`` holds class *indices*; the estimator maps them to labels.
    """
    M = adapter.n_stages
    thresholds = np.atleast_2d(np.asarray(thresholds, dtype=np.float64))
    V = thresholds.shape[0]
    out_idx, out_exit, out_comp, out_proba = [], [], [], []
    batches = adapter.batches(X, None, batch_size)
    if progress is not None:
        batches = progress(batches)
    guard = HeapGuard(slack=None)  # keep resident memory flat over long streams
    for Xb, _ in batches:
        guard.step()
        n = adapter.n_rows(Xb)
        comp = np.zeros(n, dtype=np.intp)
        if V > 1:
            comp = assign_rows(batch_uniforms(adapter, Xb, seed), weights)
        T = thresholds[comp]
        pred = np.empty(n, dtype=np.intp)
        exit_stage = np.empty(n, dtype=np.intp)
        proba = None
        alive = np.arange(n)
        Z = Xb
        for j in range(M):
            last = j == M - 1
            if last and adapter.final_is_classifier:
                idx, P = adapter.final_outputs(Z)
                pred[alive] = idx
                exit_stage[alive] = j
                if return_proba:
                    proba = _store(proba, alive, adapter.to_numpy(P), n)
                break
            Z = adapter.run_stage(j, Z)
            Tj = None if last else T[alive, j]
            if not last and np.all(Tj >= 1.0):
                continue  # no threshold below 1: this head can never fire, skip it
            P, idx, conf = decide(adapter, heads[j], adapter.stage_vector(j, Z))
            leave = np.ones(alive.shape[0], bool) if last else conf > Tj
            rows = alive[leave]
            pred[rows] = idx[leave]
            exit_stage[rows] = j
            if return_proba:
                Pn = adapter.to_numpy(P)
                proba = _store(proba, rows, Pn[leave], n)
            if last:
                break
            stay = ~leave
            if not stay.any():
                break
            if leave.any():
                Z = adapter.take(Z, stay)
                alive = alive[stay]
        out_idx.append(pred)
        out_exit.append(exit_stage)
        out_comp.append(comp)
        if return_proba:
            out_proba.append(proba)
    y_idx = np.concatenate(out_idx) if out_idx else np.zeros(0, np.intp)
    exit_stage = np.concatenate(out_exit) if out_exit else np.zeros(0, np.intp)
    comp = np.concatenate(out_comp) if out_comp else np.zeros(0, np.intp)
    flops = np.asarray(costs)[comp, exit_stage] if y_idx.shape[0] else np.zeros(0)
    proba = np.concatenate(out_proba) if (return_proba and out_proba) else None
    return RoutingResult(y_idx, exit_stage, flops, proba, comp)


def batch_uniforms(adapter, Xb, seed):
    """Time-sharing uniform of every row of a batch: a hash of the row's content."""
    return row_uniforms(adapter.to_numpy(Xb), seed)


def _store(buf, rows, values, n):
    if buf is None:
        buf = np.zeros((n, values.shape[1]), dtype=np.float64)
    buf[rows] = values
    return buf


def iter_stages(adapter, Zb, n_stages=None, final=True):
    """Run stages ``0 .. n_stages-1`` on every row of a batch, one stage at a time.

    Yields ``(j, F, final_idx)`` per stage: ``F`` is stage ``j``'s vector
    (backend array) and ``final_idx`` is None, except for the last stage of
    a chain ending in a classifier, where ``F`` is the base model's class
    probabilities and ``final_idx`` its predicted class indices
    (``adapter.final_outputs``), or both are None when ``final`` is False.
    Only the running activation is kept between stages: a consumer that
    drops ``F`` after use holds one stage's output at a time.
    """
    M = adapter.n_stages
    n_run = M if n_stages is None else n_stages
    Z = Zb
    for j in range(n_run):
        if j == M - 1 and adapter.final_is_classifier:
            if final:
                idx, P = adapter.final_outputs(Z)
                yield j, P, np.asarray(idx)
            else:
                yield j, None, None
            return
        Z = adapter.run_stage(j, Z)
        yield j, adapter.stage_vector(j, Z), None


def forward_all(adapter, Zb, n_stages=None, final=True):
    """Run stages ``0 .. n_stages-1`` on every row of a batch (all outputs at once).

    Returns
    -------
    vectors : list
        Stage vector of every stage run (backend arrays); for the last stage of
        a classifier chain, ``None``.
    final : tuple or None
        ``adapter.final_outputs`` of the last stage's input when the chain
        ends in a classifier, all stages run and ``final`` is True.
    """
    vectors, fin = [], None
    for _, F, idx in iter_stages(adapter, Zb, n_stages, final):
        if idx is not None:
            fin = (idx, F)
            F = None
        vectors.append(F)
    return vectors, fin
