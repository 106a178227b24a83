"""Array backends: the few operations that differ between numpy and torch.

Every layer of the package computes on numpy arrays (scikit-learn stages) or
torch tensors (torch stages) with one implementation; the helpers here are the
only places that look at which one they hold. Torch is imported lazily: the
scikit-learn path never imports it.

This module imports nothing of the package (it is the bottom layer).
"""

import logging
import sys

import numpy as np

__all__ = [
    "is_torch",
    "is_torch_module",
    "import_torch",
    "xp",
    "softmax",
    "to_numpy",
    "concat",
    "nbytes",
    "as_backend",
    "zeros_like_backend",
    "as_float_tensor",
    "resolve_device",
    "progress",
    "LongWorkNotice",
    "LOGGER",
    "log",
    "warn",
]

#: What to tell a user whose environment has no torch.
TORCH_INSTALL_HINT = (
    "Install it with `pip install 'sklearn-e2cm[torch]'`; for the CPU-only build, "
    "`pip install torch --index-url https://download.pytorch.org/whl/cpu`; for a CUDA build see "
    "https://pytorch.org/get-started/locally/."
)


def is_torch(a):
    """Whether ``a`` is a torch object (tensor), without importing torch."""
    return type(a).__module__.split(".")[0] == "torch"


def is_torch_module(obj):
    """Whether ``obj`` is a ``torch.nn.Module`` (False when torch was never imported)."""
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(obj, torch.nn.Module)


def import_torch(what="This feature"):
    """Import torch, or raise an ImportError saying how to install it.

    Parameters
    ----------
    what : str
        What needs torch, for the message (e.g. ``"DEC"``).

    Returns
    -------
    torch : module
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what} needs PyTorch, which is not installed. {TORCH_INSTALL_HINT}") \
            from exc
    return torch


class _NumpyOps:
    @staticmethod
    def sqrt(a):
        return np.sqrt(a)

    @staticmethod
    def clip_min(a, v):
        return np.maximum(a, v)

    @staticmethod
    def exp(a):
        return np.exp(a)

    @staticmethod
    def log(a):
        return np.log(a)

    @staticmethod
    def rowmax(a):
        return a.max(axis=1, keepdims=True)

    @staticmethod
    def rowsum(a):
        return a.sum(axis=1, keepdims=True)

    @staticmethod
    def asarray_like(arr, like):
        return np.asarray(arr, dtype=like.dtype)


class _TorchOps:
    @staticmethod
    def sqrt(a):
        return a.sqrt()

    @staticmethod
    def clip_min(a, v):
        return a.clamp_min(v)

    @staticmethod
    def exp(a):
        return a.exp()

    @staticmethod
    def log(a):
        return a.log()

    @staticmethod
    def rowmax(a):
        return a.amax(dim=1, keepdim=True)

    @staticmethod
    def rowsum(a):
        return a.sum(dim=1, keepdim=True)

    @staticmethod
    def asarray_like(arr, like):
        import torch

        return torch.as_tensor(np.asarray(arr), dtype=like.dtype, device=like.device)


def xp(a):
    """The operations namespace (``sqrt``, ``clip_min``, ``exp``, ``log``, ``rowmax``,
    ``rowsum``, ``asarray_like``) for the array type of ``a``."""
    return _TorchOps if is_torch(a) else _NumpyOps


def softmax(scores):
    """Row-wise numerically stable softmax of a numpy array or torch tensor.

    Parameters
    ----------
    scores : array of shape (n_samples, n_classes)

    Returns
    -------
    proba : array of shape (n_samples, n_classes)
        Same array type, dtype and device as ``scores``.

    Examples
    --------
    >>> import numpy as np
    >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3)
    array([[0.5, 0.5],
           [1. , 0. ]])
    """
    ops = xp(scores)
    e = ops.exp(scores - ops.rowmax(scores))
    return e / ops.rowsum(e)


def to_numpy(a):
    """A numpy view or copy of an array or tensor (detached, on the host)."""
    if is_torch(a):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def concat(parts, axis=0):
    """Concatenate numpy arrays or torch tensors (all of one kind) along ``axis``."""
    if is_torch(parts[0]):
        import torch

        return torch.cat(list(parts), dim=axis)
    return np.concatenate(parts, axis=axis)


def nbytes(a):
    """Bytes held by the elements of an array or tensor."""
    return a.element_size() * a.nelement() if hasattr(a, "element_size") else a.nbytes


def all_finite(a):
    """Whether every value of a numpy array or torch tensor is finite.

    A floating tensor is checked with one ``aminmax`` reduction on its
    device (min and max propagate NaN and hold any infinity; no mask is
    allocated, about 10x faster on CPU than ``isfinite().all()``), read back
    as one flag. Integer and boolean values are always finite.
    """
    if is_torch(a):
        if a.is_complex():
            return bool(a.isfinite().all())
        if not a.is_floating_point() or a.numel() == 0:
            return True
        lo, hi = a.aminmax()
        return bool((lo.isfinite() & hi.isfinite()).item())
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return True
    return bool(np.isfinite(a).all())


def as_backend(arr, like):
    """``arr`` as an array of the kind, dtype and device of ``like``."""
    return xp(like).asarray_like(arr, like)


def zeros_like_backend(shape, like):
    """Zeros of ``shape`` with the kind, dtype and device of ``like``."""
    if is_torch(like):
        import torch

        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return np.zeros(shape, dtype=like.dtype)


def as_float_tensor(X, device):
    """A float32 torch tensor of ``X`` on ``device`` (numpy input is copied)."""
    torch = import_torch()
    if isinstance(X, torch.Tensor):
        return X.to(device=device, dtype=torch.float32)
    return torch.tensor(np.asarray(X), dtype=torch.float32, device=device)


def float32_matmul_is_exact(device):
    """Whether float32 matrix products on ``device`` are computed in IEEE float32.

    False where torch may substitute TF32 or bfloat16 products (the user set
    ``torch.set_float32_matmul_precision("high")`` / ``"medium"`` or a
    backend's ``fp32_precision``), or where the setting cannot be read: the
    caller then keeps its float64 products. Never changes the settings.
    """
    torch = import_torch()
    kind = getattr(device, "type", str(device))
    backends = getattr(torch, "backends", None)
    try:
        backend = {"cuda": backends.cuda.matmul, "cpu": backends.mkldnn.matmul}.get(kind)
        own = getattr(backend, "fp32_precision", None) if backend is not None else None
        if own == "ieee":
            return True
        if own not in (None, "none"):
            return False
        overall = getattr(backends, "fp32_precision", None)
        if overall not in (None, "none", "ieee"):
            return False
        return torch.get_float32_matmul_precision() == "highest"
    except Exception:  # settings mixed between the legacy and the new API, or unknown
        return False


_DEVICE_HELP = "use 'cpu', 'cuda', 'cuda:0', 'auto' or a torch.device"


def resolve_device(device):
    """A ``torch.device`` from ``None`` (CPU), ``"auto"``, a string or a device.

    Raises
    ------
    ValueError
        When ``device`` names no torch device, or asks for CUDA where it is
        not available.
    """
    torch = import_torch("A torch device")
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device.strip().lower() == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"device={device!r} is not a torch device; {_DEVICE_HELP}.") \
                from exc
    else:
        raise ValueError(f"device={device!r} is not a torch device; {_DEVICE_HELP}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asks for CUDA, which is not available here; use device='cpu' "
            "or device='auto'."
        )
    return dev


def progress(iterable, verbose, desc, total=None):
    """``iterable`` wrapped in a tqdm progress bar when ``verbose``, else unchanged.

    Parameters
    ----------
    iterable : iterable
    verbose : bool or int
    desc : str
        Label of the bar.
    total : int, default=None
        Length, for iterables without ``len``.

    Returns
    -------
    iterable
    """
    if not verbose:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


#: The package's logger: verbose messages go to it (INFO), as do quiet ones (DEBUG).
LOGGER = logging.getLogger("sklearn_e2cm")
LOGGER.addHandler(logging.NullHandler())


def _logging_configured():
    """Whether a handler other than a NullHandler would receive the package's records."""
    logger = LOGGER
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def log(message, verbose):
    """Log ``message`` (INFO when ``verbose``, else DEBUG) through :data:`LOGGER`.

    With ``verbose`` and no logging configured by the application, the message
    is also written to stderr, above any progress bar, so that ``verbose=1``
    shows it without setting up :mod:`logging`.

    Parameters
    ----------
    message : str
    verbose : bool or int
    """
    if not verbose:
        LOGGER.debug(message)
        return
    LOGGER.info(message)
    if not _logging_configured():
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


#: Work run without progress bars that is expected to go on longer than this (seconds)
#: gets one warning saying how long (:class:`LongWorkNotice`).
LONG_WORK_SECONDS = 60.0


class LongWorkNotice:
    """One warning when work running without progress bars turns out to be long.

    With ``verbose`` off, :meth:`update` projects the remaining time from the
    time taken so far; the first time it exceeds :data:`LONG_WORK_SECONDS`,
    a warning says how long the work will take and how to see its progress.

    Parameters
    ----------
    desc : str
        What runs (e.g. ``"DEC pretraining"``).
    verbose : bool or int
        Progress bars are shown: no notice.
    unit : str, default="epoch"
        What ``completed`` and ``total`` count.
    """

    def __init__(self, desc, verbose, unit="epoch"):
        import time

        self.desc, self.quiet, self.unit = desc, not verbose, unit
        self._clock = time.perf_counter
        self._start = self._clock()
        self.warned = False

    def update(self, completed, total):
        """Project the remaining time after ``completed`` of ``total`` units."""
        if not self.quiet or self.warned or completed <= 0 or completed >= total:
            return
        elapsed = self._clock() - self._start
        remaining = elapsed / completed * (total - completed)
        if remaining > LONG_WORK_SECONDS:
            self.warned = True
            left = (f"{remaining / 60:.0f} minutes" if remaining < 5400
                    else f"{remaining / 3600:.1f} hours")
            warn(f"{self.desc}: {completed} of {total} {self.unit}s took {elapsed:.0f} s, so "
                 f"about {left} remain at most. Pass verbose=1 to see progress bars.")


#: Default value of a renamed parameter's old name (scikit-learn's deprecation pattern).
DEPRECATED = "deprecated"


def renamed_param(est, old, new, new_default, since="0.2.0", removed="0.4.0"):
    """The value of parameter ``new``, honouring its deprecated old name ``old``.

    scikit-learn's pattern for a renamed parameter: the old name stays in
    ``__init__`` with the default ``"deprecated"``; a value given under it
    is used with a ``FutureWarning`` that names the new parameter, and giving
    both names raises.

    Parameters
    ----------
    est : estimator
    old, new : str
        The deprecated and the current parameter names.
    new_default : scalar
        ``new``'s default (giving ``old`` and a non-default ``new`` raises).
    since, removed : str
        The versions the warning names.

    Returns
    -------
    value : object
    """
    value = getattr(est, old)
    if isinstance(value, str) and value == DEPRECATED:
        return getattr(est, new)
    current = getattr(est, new)
    if current != new_default:
        raise ValueError(
            f"{type(est).__name__} got both {old}={value!r} and {new}={current!r}; "
            f"{old!r} is the deprecated name of {new!r}: set only {new}.")
    warn(f"{type(est).__name__}: the parameter {old!r} was renamed {new!r} in {since} and "
         f"will be removed in {removed}; use {new}={value!r}.", FutureWarning)
    return value


#: Modules whose frames a warning skips to reach the caller's line.
_INTERNAL = ("sklearn_e2cm", "sklearn.", "joblib", "contextlib", "functools")


def warn(message, category=UserWarning):
    """``warnings.warn`` pointing at the first frame outside this package (the caller's line).

    Frames of the package and of the libraries that wrap its methods
    (scikit-learn's validation decorators, joblib) are skipped, so the warning
    names the user's ``fit`` or ``predict`` call, not a line in here.

    Parameters
    ----------
    message : str
    category : type of Warning, default=UserWarning
    """
    import warnings

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
