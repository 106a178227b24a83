"""Minibatch training with torch optimisers and autograd: one step, one loop.

The fitting layer's training helpers, shared by every estimator that trains
something by minibatches:

* :func:`trainable` turns a batch (a numpy array, or a torch tensor that may
  be an inference tensor computed under :func:`torch.inference_mode`) into an
  ordinary tensor that autograd may use; :func:`grad_mode` is the context in
  which losses are built (``inference_mode(False)`` + ``enable_grad()``), also
  inside a frozen network's inference context.
* :func:`weighted_cross_entropy`: the cross-entropy of a batch, with sample
  weights normalised over the batch (``None``: the plain mean).
* :func:`minibatch_step`: one optimiser step on a minibatch (zero the
  gradients, build the loss, backward, step, optional scheduler step).
* :func:`run_epochs`: the per-epoch loop over shuffled rows (a permutation
  per epoch from a numpy ``RandomState`` / ``Generator`` or a torch
  ``Generator``), with a progress bar per epoch and an optional hook after
  every epoch (evaluation, history, summary line), returning the mean loss of
  every epoch.

Only the parameters handed to the optimiser are trained: the batches are
detached copies, so no gradient reaches a network that produced them.

Torch is imported lazily (:func:`sklearn_e2cm._backend.import_torch`): this
module imports without it, and a function that needs it raises a clear
``ImportError`` naming the feature.

Examples
--------
A logistic regression trained for three epochs on separable data:

>>> import numpy as np
>>> import torch
>>> rng = np.random.RandomState(0)
>>> X = np.r_[rng.randn(50, 2) - 2, rng.randn(50, 2) + 2]
>>> y = np.r_[np.zeros(50, int), np.ones(50, int)]
>>> layer = torch.nn.Linear(2, 2, dtype=torch.float64)
>>> opt = torch.optim.Adam(layer.parameters(), lr=0.1)
>>> def step(rows):
...     Xb, yb = trainable(X[rows]), trainable(y[rows], dtype=torch.long)
...     return minibatch_step(opt, lambda: weighted_cross_entropy(layer(Xb), yb))
>>> losses = run_epochs(len(y), 3, step, rng=rng, batch_size=20)
>>> len(losses), bool(losses[-1] < losses[0])
(3, True)
"""

import contextlib

import numpy as np

from .._backend import LongWorkNotice, import_torch, is_torch, log, progress, to_numpy

__all__ = [
    "EarlyStopping",
    "LinearSoftmaxTrainer",
    "StopTraining",
    "grad_mode",
    "trainable",
    "weighted_cross_entropy",
    "has_weight",
    "minibatch_step",
    "epoch_order",
    "run_epochs",
]


def _torch(what):
    return import_torch(what)


@contextlib.contextmanager
def grad_mode(what="Minibatch training"):
    """Context in which autograd works, also inside ``torch.inference_mode()``.

    ``torch.inference_mode(False)`` and ``torch.enable_grad()``: tensors created
    here are ordinary tensors, and operations on parameters are recorded.
    Leaves the caller's modes as they were on exit.
    """
    torch = _torch(what)
    with torch.inference_mode(False), torch.enable_grad():
        yield


def trainable(a, *, dtype=None, device=None, what="Minibatch training"):
    """An ordinary torch tensor of ``a`` that autograd may use, detached from any graph.

    Parameters
    ----------
    a : ndarray or torch.Tensor
        A batch. A numpy array becomes a tensor on the CPU (``device``
        overrides), float64 for floating input unless ``dtype`` says
        otherwise. A torch tensor is copied (``clone``, outside inference
        mode), so an inference tensor becomes an ordinary one and nothing
        written to it reaches the caller's data.
    dtype : torch.dtype, default=None
        Convert to this dtype (e.g. ``torch.long`` for class indices).
    device : str or torch.device, default=None
        Move there (``None``: where ``a`` is; the CPU for numpy).
    what : str
        What needs torch, for the ImportError when it is missing.

    Returns
    -------
    torch.Tensor
        ``requires_grad`` is False; it shares no memory with ``a``.
    """
    torch = _torch(what)
    with torch.inference_mode(False), torch.no_grad():
        if is_torch(a):
            t = a.detach().clone()
        else:
            arr = np.asarray(a)
            if dtype is None and arr.dtype.kind == "f":
                arr = arr.astype(np.float64)
            t = torch.tensor(arr)
        if dtype is not None or device is not None:
            t = t.to(dtype=dtype, device=device)
    return t


def has_weight(n_rows, sample_weight=None):
    """Whether a batch of ``n_rows`` rows has anything to learn from (rows, positive weight)."""
    if n_rows == 0:
        return False
    if sample_weight is None:
        return True
    total = sample_weight.sum() if is_torch(sample_weight) else np.sum(sample_weight)
    return bool(total > 0)


def weighted_cross_entropy(logits, target, sample_weight=None):
    """Cross-entropy of a batch with sample weights normalised over the batch.

    ``sum_i w_i CE_i / sum_i w_i``, or the mean ``CE`` when ``sample_weight``
    is None (so the weights' scale does not change the step size).

    Parameters
    ----------
    logits : torch.Tensor of shape (n, n_classes)
    target : torch.Tensor of int64 of shape (n,)
        Class indices.
    sample_weight : torch.Tensor of shape (n,), default=None
        Non-negative weights with a positive sum (see :func:`has_weight`).

    Returns
    -------
    loss : torch.Tensor
        A scalar.
    """
    torch = _torch("Minibatch training")
    if sample_weight is None:
        return torch.nn.functional.cross_entropy(logits, target)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    w = sample_weight.to(dtype=ce.dtype, device=ce.device)
    return (ce * w).sum() / w.sum()


def minibatch_step(optimizer, compute_loss, *, scheduler=None):
    """One optimiser step on a minibatch.

    Under :func:`grad_mode`: zero the gradients, build the loss, backward,
    ``optimizer.step()``, then ``scheduler.step()`` when given.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Holds the parameters to train (and only those: the inputs of the
        loss should be :func:`trainable` copies).
    compute_loss : callable
        ``compute_loss() -> loss``, a scalar tensor built from the
        optimiser's parameters, or None to skip the batch (no step is taken,
        the optimiser's state and step count are unchanged).
    scheduler : torch.optim.lr_scheduler.LRScheduler, default=None
        Stepped after every optimiser step.

    Returns
    -------
    loss : torch.Tensor or None
        The detached loss (not synchronised with the device), or None when
        the batch was skipped.
    """
    with grad_mode():
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        if loss is None:
            return None
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return loss.detach()


def epoch_order(n_rows, rng=None):
    """Row order of one epoch: a permutation of ``range(n_rows)`` drawn from ``rng``.

    Parameters
    ----------
    n_rows : int
    rng : numpy RandomState or Generator, torch.Generator, or None
        ``rng.permutation`` (numpy), ``torch.randperm(generator=rng)``
        (torch; the result is a CPU ``int64`` tensor), or no shuffling
        (``None``).

    Returns
    -------
    order : ndarray or torch.Tensor of shape (n_rows,)
    """
    if rng is None:
        return np.arange(n_rows)
    if isinstance(rng, (np.random.RandomState, np.random.Generator)):
        return rng.permutation(n_rows)
    torch = _torch("Minibatch training")
    if isinstance(rng, torch.Generator):
        return torch.randperm(n_rows, generator=rng)
    raise TypeError(
        "rng must be a numpy RandomState or Generator, a torch.Generator or None; "
        f"got {type(rng).__name__}."
    )


def _slices(order, batch_size):
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def run_epochs(n_rows, epochs, step, *, rng=None, batch_size=None, batches=None, verbose=0,
               desc="training", n_batches=None, end_epoch=None):
    """The minibatch loop: ``epochs`` passes over shuffled rows, one step per batch.

    Every epoch draws a row order (:func:`epoch_order`), cuts it into
    batches, and calls ``step`` on each, inside a progress bar labelled
    ``"{desc} (epoch e/E)"`` when ``verbose``; then ``end_epoch``, if given.

    Parameters
    ----------
    n_rows : int
        Rows of the training data.
    epochs : int
        Passes over the data.
    step : callable
        ``step(batch) -> loss``; ``loss`` is None (a skipped batch), a scalar
        (float or tensor: the batch's mean loss, weighted 1) or a pair
        ``(loss, weight)`` (e.g. the batch's rows or total sample weight).
        Tensors are accumulated on their device and read once per epoch.
    rng : numpy RandomState or Generator, torch.Generator, or None
        Source of the row order of every epoch (None: the rows in order).
    batch_size : int, default=None
        Without ``batches``: the batch is ``order[start:start + batch_size]``,
        an index array (or tensor) of at most ``batch_size`` rows.
    batches : callable, default=None
        ``batches(order) -> iterable`` of batches of one epoch, for callers
        that cut the data themselves (e.g. a stage adapter that runs a frozen
        network on the reordered rows batch by batch).
    verbose : int, default=0
    desc : str
        Label of the progress bars.
    n_batches : int, default=None
        Batches per epoch, the length of the progress bars (None: the
        length of the iterable of batches, when it has one).
    end_epoch : callable, default=None
        ``end_epoch(epoch, loss) -> summary``, called after the batches of
        every epoch with the 1-based epoch number and the epoch's mean loss
        (e.g. to evaluate, record a history or stop by raising). A
        ``summary`` that is not None, a dict, is written as one line
        ``"{desc} (epoch e/E): key=value, ..."`` when ``verbose``.

    Returns
    -------
    losses : list of float
        The weighted mean loss of every epoch (NaN for an epoch whose
        batches were all skipped).
    """
    if batches is None:
        if batch_size is None or batch_size < 1:
            raise ValueError(f"run_epochs needs batches= or a batch_size >= 1; got {batch_size!r}.")

        def batches(order):
            return _slices(order, batch_size)

    losses = []
    notice = LongWorkNotice(desc, verbose)
    for epoch in range(1, epochs + 1):
        label = f"{desc} (epoch {epoch}/{epochs})"
        order = epoch_order(n_rows, rng)
        losses.append(_run_epoch(progress(batches(order), verbose, label, total=n_batches), step))
        summary = None if end_epoch is None else end_epoch(epoch, losses[-1])
        if verbose and summary is not None:
            log(f"{label}: " + ", ".join(f"{k}={v}" for k, v in summary.items()), verbose)
        notice.update(epoch, epochs)
    return losses


def _run_epoch(batches, step):
    """``step`` on every batch; the weighted mean of the losses it returns.

    See :func:`run_epochs` for what ``step`` may return.
    """
    total, weight = 0.0, 0.0
    for batch in batches:
        out = step(batch)
        if out is None:
            continue
        loss, w = out if isinstance(out, tuple) else (out, 1.0)
        if loss is None:
            continue
        if is_torch(loss):
            loss = loss.detach()
        total = total + loss * w
        weight += float(w)
    return float(total) / weight if weight > 0 else float("nan")


class LinearSoftmaxTrainer:
    """Multinomial logistic regression trained by minibatch Adam (torch autograd).

    One implementation for both backends: a batch of stage vectors (a numpy
    array, taken as a float64 CPU tensor, or a torch tensor, kept on its
    device and dtype) is copied out of inference mode
    (:func:`~sklearn_e2cm._fitting.training.trainable`), so gradients reach
    only this layer's parameters, never the network that computed the batch.
    Inputs are standardised with the mean and standard deviation of the first
    non-empty batch it sees, so one learning rate suits stage outputs of any
    scale; the layer starts at zero and minimises the cross-entropy with the
    sample weights normalised over each batch (:mod:`torch.optim.Adam`).
    """

    def __init__(self, n_out, learning_rate, beta1=0.9, beta2=0.999, eps=1e-8):
        self.n_out = n_out
        self.lr = learning_rate
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.layer = None
        self.last_loss = None

    def _init(self, V):
        """Standardisation from the first batch (a trainable tensor); the zero layer; Adam."""
        torch = import_torch("InternalClassifierEarlyExit")
        with torch.inference_mode(False), torch.no_grad():
            rms = (V * V).mean(0).sqrt()
            if V.shape[0] >= 2:  # a noisy centre beats none (ReLU / pooled outputs are >= 0)
                mu = V.mean(0)
                sd = ((V - mu[None, :]) ** 2).mean(0).sqrt()
            else:  # one row has no spread (batch_size=1): scale only
                mu, sd = torch.zeros_like(rms), rms
            # floor on the typical magnitude: a feature constant on the first batch must not
            # blow up later
            sd = sd.clamp_min(0.1 * float(rms.mean()) + 1e-12)
            self.mu, self.inv_sd = mu, 1.0 / sd
            self.layer = torch.nn.Linear(V.shape[1], self.n_out, dtype=V.dtype, device=V.device)
            torch.nn.init.zeros_(self.layer.weight)
            torch.nn.init.zeros_(self.layer.bias)
        self.opt = torch.optim.Adam(self.layer.parameters(), lr=self.lr,
                                    betas=(self.beta1, self.beta2), eps=self.eps)

    def standardize(self, V):
        return (V - self.mu[None, :]) * self.inv_sd[None, :]

    def partial_fit(self, V, y_idx, sample_weight=None):
        """One Adam step on the cross-entropy of a batch (class indices ``y_idx``).

        Empty batches and batches of zero total weight are skipped (no step;
        an empty batch does not set the standardisation either). The batch's
        loss, a detached scalar tensor, is kept in ``last_loss`` (None when
        skipped).
        """
        self.last_loss = None
        if V.shape[0] == 0:
            return self
        what = "InternalClassifierEarlyExit"
        Vt = trainable(V, what=what)
        if self.layer is None:
            self._init(Vt)
        if not has_weight(Vt.shape[0], sample_weight):
            return self  # nothing to learn from this batch
        device = Vt.device
        yt = trainable(np.asarray(y_idx), dtype=import_torch(what).long, device=device,
                       what=what)
        wt = None if sample_weight is None else trainable(
            np.asarray(sample_weight, dtype=np.float64), dtype=Vt.dtype, device=device,
            what=what)
        self.last_loss = minibatch_step(
            self.opt, lambda: weighted_cross_entropy(self.layer(self.standardize(Vt)), yt, wt))
        return self

    def loss(self, V, y_idx, sample_weight=None):
        """Cross-entropy of the current layer on ``V`` (no step); NaN before any step.

        Parameters
        ----------
        V : ndarray or torch.Tensor of shape (n, d)
        y_idx : array-like of int of shape (n,)
        sample_weight : array-like of shape (n,), default=None

        Returns
        -------
        loss : float
        """
        if self.layer is None or V.shape[0] == 0:
            return float("nan")
        what = "InternalClassifierEarlyExit"
        torch = import_torch(what)
        Vt = trainable(V, what=what)
        yt = trainable(np.asarray(y_idx), dtype=torch.long, device=Vt.device, what=what)
        wt = None if sample_weight is None else trainable(
            np.asarray(sample_weight, dtype=np.float64), dtype=Vt.dtype, device=Vt.device,
            what=what)
        with torch.inference_mode(False), torch.no_grad():
            return float(weighted_cross_entropy(self.layer(self.standardize(Vt)), yt, wt))

    def state(self):
        """A copy of the layer's parameters (None before any step)."""
        if self.layer is None:
            return None
        return [p.detach().clone() for p in self.layer.parameters()]

    def load_state(self, state):
        """Put back parameters returned by :meth:`state`."""
        torch = import_torch("InternalClassifierEarlyExit")
        with torch.inference_mode(False), torch.no_grad():
            for p, v in zip(self.layer.parameters(), state):
                p.copy_(v)

    def export(self):
        """``(W, b)`` of the layer on standardised-free inputs, as float64 numpy."""
        inv_sd = to_numpy(self.inv_sd).astype(np.float64)
        W = to_numpy(self.layer.weight).astype(np.float64) * inv_sd
        b = to_numpy(self.layer.bias).astype(np.float64) - W @ to_numpy(self.mu).astype(
            np.float64)
        return W, b


class StopTraining(Exception):
    """Raised by an ``end_epoch`` callback to end :func:`run_epochs` early."""


class EarlyStopping:
    """End-of-epoch callback of :func:`run_epochs` that stops on a validation loss.

    After every epoch each model's loss on held-out rows is read; a model
    improves when its loss falls by more than ``tol`` below its best so far,
    and its parameters are then copied. Training stops (:class:`StopTraining`)
    once no model has improved for ``patience`` epochs; :meth:`restore` puts
    every model back to its best parameters.

    Parameters
    ----------
    models : list
        Objects with ``state()`` and ``load_state(state)`` (e.g.
        :class:`LinearSoftmaxTrainer`).
    losses : callable
        ``losses() -> list of float``, each model's validation loss now.
    patience : int
        Epochs without improvement before stopping.
    tol : float, default=1e-4
        Smallest decrease of the loss that counts as an improvement.

    Attributes
    ----------
    epochs_run : int
        Epochs completed so far.
    history : list of float
        The training loss of every completed epoch.
    best_losses : list of float
    """

    def __init__(self, models, losses, patience, tol=1e-4):
        self.models, self.losses, self.patience, self.tol = models, losses, patience, tol
        self.best_losses = [np.inf] * len(models)
        self._best = [None] * len(models)
        self._since = [0] * len(models)
        self.epochs_run = 0
        self.history = []

    def __call__(self, epoch, loss):
        self.epochs_run = epoch
        self.history.append(loss)
        current = self.losses()
        for g, value in enumerate(current):
            if value < self.best_losses[g] - self.tol:
                self.best_losses[g], self._since[g] = value, 0
                self._best[g] = self.models[g].state()
            else:
                self._since[g] += 1
        if all(n >= self.patience for n in self._since):
            raise StopTraining(epoch)
        return {"validation loss": float(np.nansum(current))}

    def restore(self):
        """Load every model's best parameters (those that improved at least once)."""
        for model, state in zip(self.models, self._best):
            if state is not None:
                model.load_state(state)
