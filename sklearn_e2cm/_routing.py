"""Routing samples through the stages: the one place where inference saves time.

:func:`route` runs a batch stage by stage; after each stage with an active
exit head the rows whose max exit probability exceeds their threshold leave
and are dropped from the batch (compaction) before the next stage runs.
:func:`iter_stages` runs every stage on every row of a batch, one stage at a time
(fitting, staged outputs).
Both are generic over :class:`~sklearn_e2cm.stages.base.StageAdapter`.
"""

from dataclasses import dataclass, field

import numpy as np

from ._backend import is_torch, to_numpy, warn
from ._hashing import assign_rows, row_uniforms
from ._memory import HeapGuard

__all__ = ["RoutingResult", "route", "decide", "iter_stages", "batch_uniforms", "StageChecks"]


@dataclass(repr=False)
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

    def __repr__(self):
        n = len(self)
        if not n:
            return "RoutingResult(n_samples=0)"
        counts = np.bincount(self.exit_stage).tolist()
        return (f"RoutingResult(n_samples={n}, mean_flops={float(self.flops.mean()):.4f}, "
                f"exits_per_stage={counts})")

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


def _argmax_max(P):
    """(argmax, max) per row of a probability matrix, in its own array type and device."""
    if is_torch(P):
        conf, idx = P.max(dim=1)
        return idx, conf
    return P.argmax(axis=1), P.max(axis=1)


def decide(adapter, head, F):
    """Exit decision inputs of one head on a batch of stage vectors ``F``.

    Parameters
    ----------
    adapter : StageAdapter
    head : exit head (:class:`~sklearn_e2cm.exits.ExitHeadProtocol`)
    F : array of shape (n, D)
        Stage vectors (backend array).

    Returns
    -------
    P : array of shape (n, n_classes)
        The head's class probabilities (backend array).
    idx : ndarray of int, shape (n,)
        Predicted class indices (on the host).
    conf : ndarray of shape (n,)
        The exit confidence compared with the stage's threshold (exit when
        ``conf > T``): the head's own, or the largest probability (eq. 6),
        on the host.
    """
    P, idx, conf = _decide_in_place(head, F)
    return P, to_numpy(idx).astype(np.intp), to_numpy(conf)


def _decide_in_place(head, F):
    """``(P, idx, conf)`` of a head on a batch, all where the batch is (no transfer)."""
    P, conf = head.decide(F)
    idx, pmax = _argmax_max(P)
    return P, idx, (pmax if conf is None else conf)


class _Batch:
    """Per-row results of one routed batch, kept where the batch is (numpy or device)."""

    def __init__(self, Xb, n, seed, thresholds, weights, return_proba):
        self.torch = is_torch(Xb)
        V = thresholds.shape[0]
        if self.torch:
            import torch

            self.lib, dev = torch, Xb.device
            self.alive = torch.arange(n, device=dev)
            self.pred = torch.zeros(n, dtype=torch.long, device=dev)
            self.exit = torch.zeros(n, dtype=torch.long, device=dev)
            self.comp = torch.zeros(n, dtype=torch.long, device=dev)
            T = torch.as_tensor(thresholds, dtype=torch.float64, device=dev)
        else:
            self.lib = np
            self.alive = np.arange(n)
            self.pred = np.zeros(n, dtype=np.intp)
            self.exit = np.zeros(n, dtype=np.intp)
            self.comp = np.zeros(n, dtype=np.intp)
            T = thresholds
        if V > 1:
            self.comp = self.as_index(assign_rows(_uniforms(Xb, seed), weights))
        self.T = T[self.comp]
        self.n = n
        self.proba = None
        self.return_proba = return_proba

    def leave(self, rows, idx, P, j):
        """Rows ``rows`` (positions in the batch) leave at stage ``j`` with classes ``idx``."""
        self.pred[rows] = idx
        self.exit[rows] = j
        if self.return_proba:
            if self.proba is None:
                self.proba = self._zeros((self.n, P.shape[1]))
            self.proba[rows] = self._float64(P)

    def _zeros(self, shape):
        if self.torch:
            return self.lib.zeros(shape, dtype=self.lib.float64, device=self.alive.device)
        return np.zeros(shape, dtype=np.float64)

    def _float64(self, P):
        if self.torch:
            return self.lib.as_tensor(P, device=self.alive.device).to(self.lib.float64)
        return np.asarray(P, dtype=np.float64)

    def as_index(self, idx):
        """Class indices from a head or the base model, in the batch's array type."""
        if self.torch:
            return self.lib.as_tensor(idx, device=self.alive.device).long()
        return np.asarray(idx, dtype=np.intp)

    def to_host(self):
        """``(pred, exit_stage, component, proba)`` as numpy: one transfer (two with proba)."""
        if not self.torch:
            return self.pred, self.exit, self.comp, self.proba
        stacked = _host(self.lib.stack([self.pred, self.exit, self.comp]))
        proba = None if self.proba is None else _host(self.proba)
        return (stacked[0].astype(np.intp), stacked[1].astype(np.intp),
                stacked[2].astype(np.intp), proba)


def _host(t):
    """A tensor on the host as numpy (no copy for a CPU tensor)."""
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


def _uniforms(Xb, seed):
    """Time-sharing uniforms of a batch where it is: a CPU tensor is hashed through its
    numpy view (no copy), a device tensor on its device (no transfer)."""
    if is_torch(Xb) and Xb.device.type == "cpu":
        return row_uniforms(_host(Xb), seed)
    return row_uniforms(Xb, seed)


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
    non_finite="raise",
):
    """One routed pass over ``X``.

    Activations, exit scores, the comparison with the thresholds and the
    compaction stay where the batch is (the stages' device for torch); each
    batch's labels, exit stages and components come back to the host once at
    its end (its probabilities once more when asked for).

    Parameters
    ----------
    adapter : StageAdapter
    heads : list of exit heads or None
        One per stage (``None`` where the base model's classifier decides).
    thresholds : ndarray of shape (V, n_stages - 1)
        Threshold vectors of the time-sharing mixture (V = 1 without mixing).
    weights : ndarray of shape (V,)
        Mixing probabilities.
    costs : ndarray of shape (V, n_stages)
        Normalised cost of exiting after each stage, per component.
    X : input accepted by ``adapter.batches``
    batch_size : int, default=None
    seed : int, default=0
        Seed of the per-row component assignment (a hash of the row).
    return_proba : bool, default=False
    progress : callable, default=None
        Wraps the iterable of batches (e.g. a progress bar).
    non_finite : {"raise", "continue"}, default="raise"
        A NaN or infinite stage vector or exit confidence: ``"raise"`` a
        ``ValueError`` naming the stage; ``"continue"``: at an exit before the
        last stage the row may not leave there (it goes on towards the base
        model's classifier), with one warning per call giving the count.
        Non-finite outputs of the last stage always raise.

    Returns
    -------
    result : RoutingResult
        ``y_pred`` holds class *indices*; the estimator maps them to labels.
    """
    M = adapter.n_stages
    thresholds = np.atleast_2d(np.asarray(thresholds, dtype=np.float64))
    # a stage whose threshold is >= 1 in every component can never fire: skip its head
    active = (thresholds < 1.0).any(axis=0) if M > 1 else np.zeros(0, bool)
    out = []
    batches = adapter.batches(X, None, batch_size)
    if progress is not None:
        batches = progress(batches)
    guard = HeapGuard()  # keep resident memory flat over long streams
    skipped = 0
    for Xb, _ in batches:
        if adapter.n_rows(Xb) == 0:
            continue  # an empty batch (a DataLoader's) routes nothing
        batch_out, n_bad = _route_batch(adapter, heads, thresholds, weights, active, Xb, seed,
                                        return_proba, non_finite)
        out.append(batch_out)
        skipped += n_bad
        guard.step()  # after the batch: its working set is part of the reference
    if skipped:
        warn(f"{skipped} exit decision(s) before the last stage met a NaN or infinite stage "
             "vector or exit score; with non_finite='continue' those rows did not exit there "
             "and went on towards the base model's classifier.")
    if not out:
        return RoutingResult(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0), None,
                             np.zeros(0, np.intp))
    y_idx, exit_stage, comp = (np.concatenate([o[k] for o in out]) for k in range(3))
    flops = np.asarray(costs)[comp, exit_stage]
    proba = np.concatenate([o[3] for o in out]) if return_proba else None
    return RoutingResult(y_idx, exit_stage, flops, proba, comp)


def _stage_label(adapter, j):
    """``"stage j (name)"`` for messages."""
    names = getattr(adapter, "stage_names_", None) or getattr(adapter, "names", None)
    try:
        name = names[j]
    except (TypeError, IndexError, KeyError):
        name = None
    return f"stage {j}" if name is None else f"stage {j} ({name})"


class NonFiniteError(ValueError):
    """A stage output, stage vector or exit score holds NaN or infinity (names the stage)."""


class StageChecks:
    """Checks of what the stages and exit heads return on one batch.

    Row counts are compared at once (shapes only, no transfer): a stage,
    pooling or final classifier that merges, drops or adds rows raises a
    ``ValueError`` naming it before any indexed or sparse operation uses its
    output. Finiteness is checked with one vectorised reduction per array:
    numpy arrays at once, tensors on their device, the flags of a batch read
    back together by :meth:`settle` (one transfer per batch).

    Parameters
    ----------
    adapter : StageAdapter
        Names the stages in the messages.
    """

    def __init__(self, adapter):
        self.adapter = adapter
        self._flags = []
        self._skipped = []
        self.n_skipped = 0

    def skip_non_finite(self, conf):
        """Finite-confidence mask of an intermediate exit (rows not finite may not exit there).

        Used with ``non_finite="continue"``: the count of rows refused is
        kept on the device and read back by :meth:`settle`.
        """
        if is_torch(conf):
            ok = conf.isfinite()
            self._skipped.append((~ok).sum())
        else:
            ok = np.isfinite(conf)
            self.n_skipped += int((~ok).sum())
        return ok

    def rows(self, j, A, n, what="returned"):
        """Raise unless ``A`` has ``n`` rows (``A`` is what ``what`` of stage ``j`` gave)."""
        m = int(A.shape[0]) if getattr(A, "ndim", 1) > 0 else None
        if m != n:
            got = f"{m} rows" if m is not None else f"shape {tuple(getattr(A, 'shape', ()))}"
            raise ValueError(
                f"{_stage_label(self.adapter, j).capitalize()} {what} {got} for a batch of "
                f"{n} rows: every stage, pooling and classifier must return one output row "
                "per input row, batch dimension first (never merge, drop or add rows, e.g. "
                "by reshaping to (1, -1) or indexing z[:1]).")

    def finite(self, j, A, what):
        """Raise (numpy) or record (tensors) whether every value of ``A`` is finite."""
        if is_torch(A):
            if A.is_floating_point() and A.numel():
                # min and max propagate NaN and hold any ±inf: one reduction pass, no
                # temporary (isfinite().all() allocates a mask and is ~15x slower on CPU)
                lo, hi = A.aminmax()
                self._flags.append((j, what, lo, hi))
        elif not np.isfinite(A).all():
            self._raise(j, what)

    def settle(self):
        """Read the recorded tensor flags (and skipped-row counts) back in one transfer;
        raise on the first non-finite flag."""
        if not self._flags and not self._skipped:
            return
        import torch

        flags, self._flags = self._flags, []
        skipped, self._skipped = self._skipped, []
        # one stack and one transfer for the whole batch (float64: a dtype of its own per
        # flag would make torch.stack promote; min/max and counts are exact in it)
        values = [b.to(torch.float64) for _, _, lo, hi in flags for b in (lo, hi)]
        if skipped:
            values.append(torch.stack(skipped).sum().to(torch.float64))
        host = torch.stack(values).cpu().numpy()
        if skipped:
            self.n_skipped += int(host[-1])
            host = host[:-1]
        ok = np.isfinite(host).reshape(-1, 2).all(axis=1)
        if not ok.all():
            j, what, _, _ = flags[int(np.argmin(ok))]
            self._raise(j, what)

    def _raise(self, j, what):
        raise NonFiniteError(
            f"{what[:1].upper()}{what[1:]} of {_stage_label(self.adapter, j)} contains NaN or "
            "infinity on finite input: the stage (or its pooling or exit head) overflows or "
            "is not defined on this data. Check the stage and the scale of X (exits need "
            "finite stage outputs).")


def _route_batch(adapter, heads, thresholds, weights, active, Xb, seed, return_proba,
                 non_finite="raise"):
    """Route one batch; returns ``((pred, exit_stage, component, proba), n_skipped)``.

    The arrays are on the host; ``n_skipped`` counts the rows refused an exit
    for a non-finite score (``non_finite="continue"``).
    """
    lenient = non_finite == "continue"
    try:
        return _route_batch_checked(adapter, heads, thresholds, weights, active, Xb, seed,
                                    return_proba, lenient)
    except NonFiniteError:
        if not lenient:
            _locate_non_finite(adapter, heads, active, Xb)
        raise


def _route_batch_checked(adapter, heads, thresholds, weights, active, Xb, seed, return_proba,
                         lenient):
    """The routed pass of :func:`_route_batch`, with the cheap finiteness checks.

    Only what every row's decision reads is checked on the way: each exit's
    confidences (``n`` values; a NaN or infinity in a stage vector reaches
    them through the distances or the classifier's product) and the last
    stage's output. The stage outputs of exits that cannot fire and the
    stage vectors are not read (on a light network that read costs as much
    as an exit head); when a check fails, :func:`_locate_non_finite` runs the
    batch again to name the first stage where the values stop being finite.
    scikit-learn stages are checked at every stage on the way: the next step
    would otherwise reject the values with its own message.
    """
    M = adapter.n_stages
    b = _Batch(Xb, adapter.n_rows(Xb), seed, thresholds, weights, return_proba)
    checks = StageChecks(adapter)
    every = not is_torch(Xb)
    Z = Xb
    for j in range(M):
        last = j == M - 1
        n = b.alive.shape[0]
        if last and adapter.final_is_classifier:
            idx, P = adapter.final_outputs(Z)
            checks.rows(j, P, n, "(the base model's classifier) returned probabilities of")
            checks.finite(j, P, "the base model's probabilities")
            b.leave(b.alive, b.as_index(idx), P, j)
            break
        Z = adapter.run_stage(j, Z)
        checks.rows(j, Z, n)
        if not last and not active[j]:
            if every and not lenient:
                checks.finite(j, Z, "the output")
            continue
        F = adapter.stage_vector(j, Z)
        checks.rows(j, F, n, "(after pooling) gave stage vectors of")
        if every and not lenient:
            checks.finite(j, F, "the stage vector")
        P, idx, conf = _decide_in_place(heads[j], F)
        if last or not lenient:
            checks.finite(j, conf, "the exit confidence")
        if last:
            b.leave(b.alive, idx, P, j)
            break
        leave = conf > b.T[b.alive, j]
        if lenient:
            leave &= checks.skip_non_finite(conf)
        gone = _positions(leave)
        if gone.shape[0]:
            b.leave(b.alive[gone], idx[gone], P[gone], j)
        if gone.shape[0] == b.alive.shape[0]:
            break  # every row has left
        if gone.shape[0]:
            stay = _positions(~leave)
            Z = adapter.take(Z, stay)
            b.alive = b.alive[stay]
    checks.settle()
    return b.to_host(), checks.n_skipped


def _locate_non_finite(adapter, heads, active, Xb):
    """Run a batch through every stage with every check; raise at the first non-finite value.

    The failure path of :func:`_route_batch`: the stage outputs of exits that
    cannot fire, then each exit's stage vector and confidences, in stage
    order, so the error names the stage where NaN or infinity first appears
    (as the passes of ``fit`` do). Returns without raising only if the
    values are finite this time (the caller then raises what it found).
    """
    M = adapter.n_stages
    checks = StageChecks(adapter)
    Z = Xb
    for j in range(M):
        if j == M - 1 and adapter.final_is_classifier:
            checks.finite(j, adapter.final_outputs(Z)[1], "the base model's probabilities")
            break
        Z = adapter.run_stage(j, Z)
        if j < M - 1 and not active[j]:
            checks.finite(j, Z, "the output")
        else:
            F = adapter.stage_vector(j, Z)
            checks.finite(j, F, "the stage vector")
            checks.settle()
            checks.finite(j, _decide_in_place(heads[j], F)[2], "the exit confidence")
        checks.settle()


def _positions(mask):
    """Positions of the True entries of a boolean mask, in its array type and device."""
    if is_torch(mask):
        return mask.nonzero().reshape(-1)
    return np.flatnonzero(mask)


def batch_uniforms(adapter, Xb, seed):
    """Time-sharing uniform of every row of a batch (a hash of the row), as numpy.

    Parameters
    ----------
    adapter : StageAdapter
    Xb : batch in the backend's form
    seed : int

    Returns
    -------
    u : ndarray of float64, shape (n,)
    """
    return to_numpy(_uniforms(Xb, seed))


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
    checks = StageChecks(adapter)
    n = adapter.n_rows(Zb)
    Z = Zb
    for j in range(n_run):
        if j == M - 1 and adapter.final_is_classifier:
            if final:
                idx, P = adapter.final_outputs(Z)
                checks.rows(j, P, n, "(the base model's classifier) returned probabilities of")
                checks.finite(j, P, "the base model's probabilities")
                yield j, P, to_numpy(idx).astype(np.intp, copy=False)
            else:
                yield j, None, None
            break
        Z = adapter.run_stage(j, Z)
        checks.rows(j, Z, n)
        F = adapter.stage_vector(j, Z)
        checks.rows(j, F, n, "(after pooling) gave stage vectors of")
        checks.finite(j, F, "the stage vector")
        yield j, F, None
    checks.settle()  # one transfer per batch for device tensors
