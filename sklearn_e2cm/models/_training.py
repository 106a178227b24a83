"""A small, reproducible supervised training loop for torch classifiers."""

import contextlib
import math
import numbers
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .._backend import all_finite
from .._fitting.training import minibatch_step, run_epochs

__all__ = ["train_classifier"]

_OPTIMIZERS = ("sgd", "adamw")
_SCHEDULES = ("cosine", "onecycle", None)
_DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}


# ----------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------
def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={value!r}.")
    return int(value)


def _check_real(name, value, low, high, *, low_open=False, high_open=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(
            f"{name} must be a real number in {lo}{low}, {high}{hi}; got {name}={value!r}."
        )
    return float(value)


def _module_device(model):
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _module_dtype(model):
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _as_features(X, name, dtype):
    """X (numpy array-like or tensor, ``ndim >= 2``) as a float tensor that is never written to."""
    if isinstance(X, torch.Tensor):
        Xt = X.detach()
        if Xt.is_complex() or Xt.dtype == torch.bool:
            raise ValueError(f"{name} must hold real numbers; got a tensor of dtype {Xt.dtype}.")
    else:
        arr = np.asarray(X)
        if arr.dtype.kind not in "biuf":
            raise ValueError(
                f"{name} must be a numeric array of shape (n_samples, ...), e.g. (N, C, H, W); "
                f"got an array of dtype {arr.dtype}."
            )
        arr = np.ascontiguousarray(arr, dtype=torch.empty((), dtype=dtype).numpy().dtype)
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
            arr = arr.copy()
        Xt = torch.from_numpy(arr)
    if Xt.ndim < 2:
        raise ValueError(
            f"{name} must have shape (n_samples, ...), e.g. (N, C, H, W) for images; "
            f"got shape {tuple(Xt.shape)}."
        )
    if Xt.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {tuple(Xt.shape)}).")
    if Xt.dtype != dtype:
        Xt = Xt.to(dtype)
    if not all_finite(Xt):
        raise ValueError(f"{name} contains NaN or infinity.")
    return Xt


def _as_labels(y, n_samples, name, x_name):
    """y as a CPU int64 tensor of class indices 0..K-1."""
    if y is None:
        raise ValueError(f"{name} is required when {x_name} is an array or a tensor.")
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n_samples,); got shape {y.shape}.")
    if y.shape[0] != n_samples:
        raise ValueError(
            f"{x_name} and {name} have different numbers of samples: "
            f"{x_name} has {n_samples}, {name} has {y.shape[0]}."
        )
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer class indices 0..K-1; got dtype {y.dtype} "
            f"(e.g. {y[:3].tolist()!r}). Encode labels first, e.g. with "
            "sklearn.preprocessing.LabelEncoder."
        )
    y = y.astype(np.int64, copy=True)
    if y.min() < 0:
        raise ValueError(
            f"{name} must hold class indices 0..K-1; got the negative label {y.min()}."
        )
    return torch.from_numpy(y)


def _check_batch_labels(yb, n_outputs, name):
    if yb.dtype.is_floating_point or yb.dtype.is_complex or yb.dtype == torch.bool:
        raise ValueError(
            f"{name} must hold integer class indices; got a batch of dtype {yb.dtype}."
        )
    if yb.ndim != 1:
        raise ValueError(f"{name} batches must be 1-D; got shape {tuple(yb.shape)}.")
    lo, hi = int(yb.min()), int(yb.max())
    if lo < 0 or hi >= n_outputs:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} holds the label {bad}, but the model outputs {n_outputs} class scores: "
            f"labels must be in 0..{n_outputs - 1}."
        )


def _unpack_batch(batch, name):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = f"a {type(batch).__name__}"
        if isinstance(batch, (tuple, list)):
            got += f" of length {len(batch)}"
        raise ValueError(f"{name} must yield (x, y) batches; got {got}.")
    xb, yb = batch
    return torch.as_tensor(xb), torch.as_tensor(yb)


def _batch_bounds(n, batch_size):
    """Batch (start, stop) pairs; a trailing batch of one sample is merged (BatchNorm needs 2)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


class _ArrayData:
    """Mini-batches from in-memory tensors."""

    def __init__(self, X, y, batch_size):
        self.X, self.y, self.batch_size = X, y, batch_size
        self.bounds = _batch_bounds(X.shape[0], batch_size)

    def __len__(self):
        return len(self.bounds)

    def batches(self, order=None):
        """``(x, y)`` batches of the rows in ``order`` (a CPU index tensor; None: as stored)."""
        for start, stop in self.bounds:
            if order is None:
                yield self.X[start:stop], self.y[start:stop]
            else:
                idx = order[start:stop]
                yield self.X[idx.to(self.X.device)], self.y[idx]


class _LoaderData:
    """Mini-batches from a DataLoader (its own sampler decides the order)."""

    def __init__(self, loader, name):
        self.loader, self.name = loader, name

    def __len__(self):
        return len(self.loader)

    def batches(self, order=None):
        """The loader's ``(x, y)`` batches; ``order`` is ignored (the sampler decides)."""
        for batch in self.loader:
            yield _unpack_batch(batch, self.name)


def _as_data(X, y, batch_size, dtype, x_name, y_name):
    if isinstance(X, DataLoader):
        if y is not None:
            raise ValueError(
                f"{y_name} must be None when {x_name} is a DataLoader "
                "(the loader yields the labels)."
            )
        return _LoaderData(X, x_name)
    Xt = _as_features(X, x_name, dtype)
    yt = _as_labels(y, Xt.shape[0], y_name, x_name)
    return _ArrayData(Xt, yt, batch_size)


def _seed_from(random_state):
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if not 0 <= random_state < 2**63:
            raise ValueError(
                f"random_state must be in [0, 2**63); got random_state={random_state!r}."
            )
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise ValueError(
        "random_state must be None, an integer, a numpy RandomState or Generator; "
        f"got random_state={random_state!r}."
    )


@contextlib.contextmanager
def _seeded(random_state, device):
    """Seed torch inside a forked RNG state; yield a generator for shuffling (or None)."""
    if random_state is None:
        yield None
        return
    seed = _seed_from(random_state)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def _evaluate(model, data, device, name):
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``data``."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for xb, yb in data.batches():
            out = model(xb.to(device))
            _check_batch_labels(yb, out.shape[1], name)
            yb = yb.to(device, dtype=torch.long)
            loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
            seen += yb.shape[0]
    if seen == 0:
        raise ValueError(f"{name} yielded no samples.")
    return loss_sum / seen, correct / seen


def _check_outputs(out, yb):
    if out.ndim != 2:
        raise ValueError(
            "model must output class scores of shape (batch, n_classes); "
            f"got shape {tuple(out.shape)}."
        )
    _check_batch_labels(yb, out.shape[1], "y")


class _ClassifierStep:
    """One training step per batch (``step(batch)`` for ``run_epochs``) and the epoch's statistics.

    The loss and accuracy of the history are accumulated here, on the device, in float64
    and int64: ``run_epochs``' own epoch mean (float32 sums) is not the history's loss.
    """

    def __init__(self, model, opt, sched, device, dtype, label_smoothing):
        self.model, self.opt, self.sched = model, opt, sched
        self.device, self.dtype, self.label_smoothing = device, dtype, label_smoothing
        self.reset()

    def reset(self):
        """Start an epoch: zero statistics, the clock, the model in train mode."""
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.seen = 0
        self.t0 = time.perf_counter()
        self.model.train()

    def __call__(self, batch):
        xb, yb = batch
        xb = xb.to(self.device, dtype=self.dtype, non_blocking=True)
        kept = {}

        def compute_loss():
            out = self.model(xb)
            _check_outputs(out, yb)
            kept["y"] = target = yb.to(self.device, dtype=torch.long, non_blocking=True)
            kept["out"] = out.detach()
            return F.cross_entropy(out, target, label_smoothing=self.label_smoothing)

        loss = minibatch_step(self.opt, compute_loss, scheduler=self.sched)
        n = kept["y"].shape[0]
        self.loss_sum += loss * n
        self.correct += (kept["out"].argmax(1) == kept["y"]).sum()
        self.seen += n
        return loss, n

    def summary(self):
        """(mean loss, running accuracy) of the epoch so far."""
        if self.seen == 0:
            raise ValueError("X yielded no training samples.")
        return float(self.loss_sum) / self.seen, int(self.correct) / self.seen


def _end_epoch(trainer, val_data, device, history, lr):
    """``end_epoch`` of ``run_epochs``: check the loss, evaluate, record; the summary line."""

    def end_epoch(epoch, _):
        loss, acc = trainer.summary()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} in epoch {epoch} (lr={lr}); "
                "try a lower learning rate."
            )
        record = {
            "epoch": epoch,
            "loss": loss,
            "train_accuracy": acc,
            "lr": float(trainer.opt.param_groups[0]["lr"]),
        }
        summary = {"loss": f"{loss:.4f}", "acc": f"{acc:.4f}"}
        if val_data is not None:
            record["val_loss"], record["val_accuracy"] = _evaluate(
                trainer.model, val_data, device, "validation_data")
            summary["val_acc"] = f"{record['val_accuracy']:.4f}"
        record["time"] = time.perf_counter() - trainer.t0
        if history is not None:
            history.append(record)
        trainer.reset()
        return summary

    return end_epoch


def _make_optimizer(name, params, lr, weight_decay, momentum):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _make_schedule(name, opt, lr, total_steps):
    if name is None:
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)


# ----------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------
def train_classifier(
    model,
    X,
    y=None,
    *,
    epochs=3,
    batch_size=128,
    lr=None,
    optimizer="sgd",
    schedule="cosine",
    weight_decay=5e-4,
    momentum=0.9,
    label_smoothing=0.0,
    device="cpu",
    random_state=None,
    verbose=0,
    validation_data=None,
    history=None,
):
    """Train a torch classifier in place with cross-entropy.

    A plain mini-batch loop: shuffle, forward, cross-entropy, backward, step,
    with an optional learning-rate schedule stepped after every batch. It is
    meant to produce the "already trained" networks E²CM works on, small enough
    for a CPU.

    Parameters
    ----------
    model : torch.nn.Module
        Network mapping a batch ``(N, ...)`` to class scores ``(N, K)``
        (logits). Trained in place.
    X : array-like, torch.Tensor or torch.utils.data.DataLoader
        Training inputs of shape ``(n_samples, ...)``, e.g. ``(N, C, H, W)``
        images, converted to the model's float dtype (not rescaled); or a
        ``DataLoader`` yielding ``(x, y)`` batches, in which case ``y`` must be
        None and the loader's sampler decides the order.
    y : array-like of shape (n_samples,), default=None
        Integer class indices ``0 .. K-1`` (use
        :class:`sklearn.preprocessing.LabelEncoder` for other labels).
    epochs : int, default=3
        Passes over the training data.
    batch_size : int, default=128
        Mini-batch size for array inputs (and for evaluating array validation
        data). A last batch of a single sample is merged into the previous one.
    lr : float, default=None
        (Peak) learning rate. None: 0.1 for ``"sgd"``, 1e-3 for ``"adamw"``.
    optimizer : {"sgd", "adamw"}, default="sgd"
        SGD with (heavy-ball) momentum, or AdamW.
    schedule : {"cosine", "onecycle"} or None, default="cosine"
        Cosine annealing from ``lr`` to 0, one-cycle (warm-up to ``lr`` then
        annealing), or a constant rate. Stepped once per batch.
    weight_decay : float, default=5e-4
        L2 penalty (SGD) or decoupled weight decay (AdamW).
    momentum : float, default=0.9
        SGD momentum (ignored by AdamW).
    label_smoothing : float, default=0.0
        Label smoothing of the cross-entropy, in ``[0, 1)``.
    device : str or torch.device, default="cpu"
        Where to train. None: the model's current device. The model is moved
        back to the device it came on afterwards.
    random_state : int, numpy RandomState or Generator, default=None
        Seeds torch (initial random state of dropout, DataLoader shuffling,
        ...) and the shuffling of array inputs, for runs that are reproducible
        on CPU. The global torch random state is restored afterwards. None: use
        the global torch random state.
    verbose : int, default=0
        Show a tqdm progress bar per epoch and, after each epoch, a line with
        its loss and running accuracy (and validation accuracy).
    validation_data : tuple (X_val, y_val) or DataLoader, default=None
        Evaluated (in eval mode, under :func:`torch.inference_mode`) after every
        epoch; adds ``val_loss`` and ``val_accuracy`` to the history.
    history : list, default=None
        If given, one dict per epoch is appended to it, with keys ``epoch``
        (1-based), ``loss`` (mean training loss), ``train_accuracy`` (running
        accuracy over the epoch, in train mode), ``lr`` (learning rate at the
        end of the epoch), ``time`` (seconds) and, with validation data,
        ``val_loss`` and ``val_accuracy``.

    Returns
    -------
    model : torch.nn.Module
        The same module, trained, in eval mode, on the device it came on.

    Raises
    ------
    ValueError
        For invalid parameters or data (the message names the bad value), or
        labels outside ``0 .. K-1`` for a model with ``K`` outputs.
    FloatingPointError
        If the training loss becomes NaN or infinite (lower ``lr``).

    See Also
    --------
    resnet_small : A CIFAR-style ResNet to train with this function.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_e2cm.models import resnet_small, train_classifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((64, 1, 8, 8), dtype=np.float32)
    >>> y = rng.integers(0, 3, size=64)
    >>> model = resnet_small(depth=8, width=4, n_classes=3, input_size=8)
    >>> history = []
    >>> model = train_classifier(model, X, y, epochs=1, batch_size=32,
    ...                          random_state=0, history=history)
    >>> model.training
    False
    >>> sorted(history[0])
    ['epoch', 'loss', 'lr', 'time', 'train_accuracy']
    """
    epochs, batch_size, lr, weight_decay, momentum, label_smoothing, verbose = _check_args(
        model, epochs, batch_size, lr, optimizer, schedule, weight_decay, momentum,
        label_smoothing, verbose, history, random_state)
    orig_device = _module_device(model)
    target = _target_device(orig_device, device)
    dtype = _module_dtype(model)
    train_data = _as_data(X, y, batch_size, dtype, "X", "y")
    val_data = _validation(validation_data, batch_size, dtype)
    steps_per_epoch = _steps_per_epoch(train_data, schedule)
    try:
        model.to(target)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters (none requires grad).")
        opt = _make_optimizer(optimizer, params, lr, weight_decay, momentum)
        sched = _make_schedule(schedule, opt, lr, (steps_per_epoch or 0) * epochs)
        trainer = _ClassifierStep(model, opt, sched, target, dtype, label_smoothing)
        with _seeded(random_state, target) as generator:
            # array rows: a permutation per epoch from the seeded generator (or the global
            # torch random state); a DataLoader: its own sampler, no row order here
            arrays = isinstance(train_data, _ArrayData)
            run_epochs(
                train_data.X.shape[0] if arrays else 0, epochs, trainer,
                rng=(generator if generator is not None else torch.default_generator)
                if arrays else None,
                batches=train_data.batches, verbose=verbose, n_batches=steps_per_epoch,
                end_epoch=_end_epoch(trainer, val_data, target, history, lr))
    finally:
        model.eval()
        model.to(orig_device)
    return model


def _check_args(model, epochs, batch_size, lr, optimizer, schedule, weight_decay, momentum,
                label_smoothing, verbose, history, random_state):
    """Validate the parameters of :func:`train_classifier`; return the numbers, normalised.

    Returns ``(epochs, batch_size, lr, weight_decay, momentum, label_smoothing, verbose)``,
    ``lr`` resolved from the optimizer's default when None.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}; got optimizer={optimizer!r}.")
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {_SCHEDULES}; got schedule={schedule!r}.")
    if lr is None:
        lr = _DEFAULT_LR[optimizer]
    else:
        lr = _check_real("lr", lr, 0, math.inf, low_open=True, high_open=True)
    weight_decay = _check_real("weight_decay", weight_decay, 0, math.inf, high_open=True)
    momentum = _check_real("momentum", momentum, 0, 1, high_open=True)
    label_smoothing = _check_real("label_smoothing", label_smoothing, 0, 1, high_open=True)
    verbose = _check_int("verbose", verbose, 0)
    if history is not None and not isinstance(history, list):
        raise TypeError(f"history must be None or a list; got {type(history).__name__}.")
    if random_state is not None:
        _seed_from(random_state)  # validate early
    return epochs, batch_size, lr, weight_decay, momentum, label_smoothing, verbose


def _target_device(orig_device, device):
    """The device to train on: ``device``, or the model's own for None."""
    try:
        return orig_device if device is None else torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must name a torch device such as 'cpu' or 'cuda:0'; got device={device!r}."
        ) from exc


def _validation(validation_data, batch_size, dtype):
    """The validation data as batches (``_ArrayData`` or ``_LoaderData``), or None."""
    if validation_data is None:
        return None
    if isinstance(validation_data, DataLoader):
        return _LoaderData(validation_data, "validation_data")
    if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        return _as_data(
            validation_data[0], validation_data[1], batch_size, dtype, "X_val", "y_val"
        )
    raise ValueError(
        "validation_data must be a tuple (X_val, y_val) or a DataLoader; "
        f"got {type(validation_data).__name__}."
    )


def _steps_per_epoch(train_data, schedule):
    """Batches per epoch (None for a loader without a length); errors for none or a schedule."""
    try:
        steps_per_epoch = len(train_data)
    except TypeError:
        steps_per_epoch = None
    if steps_per_epoch == 0:
        raise ValueError("X yielded no training samples (the DataLoader is empty).")
    if schedule is not None and steps_per_epoch is None:
        raise ValueError(
            f"schedule={schedule!r} needs the number of batches per epoch, but the DataLoader "
            "has no length (iterable dataset); pass schedule=None."
        )
    return steps_per_epoch
