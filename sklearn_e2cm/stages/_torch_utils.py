"""Small torch helpers of the torch stage adapters: dtype, device and mode handling."""

import contextlib
import threading

import numpy as np
import torch

__all__ = ["network_inference"]


def _floating_dtype(modules, default=torch.float32):
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                return t.dtype
    return default


def _module_device(module):
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _device_matches(actual, target):
    """Whether a tensor on ``actual`` is on ``target`` (``cuda`` means the current CUDA device)."""
    if actual.type != target.type:
        return False
    if actual.index is None or target.index is None:
        if actual.type != "cuda":
            return True
        current = torch.cuda.current_device()
        return (actual.index if actual.index is not None else current) == (
            target.index if target.index is not None else current)
    return actual.index == target.index


def _unique_modules(stages):
    seen, out = set(), []
    for s in stages:
        for m in s.modules():
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def _record_devices(modules):
    """Every parameter and buffer's device, per owning module."""
    rec = []
    for m in modules:
        for name, p in m._parameters.items():
            if p is not None:
                rec.append((m, "p", name, p.device))
        for name, b in m._buffers.items():
            if b is not None:
                rec.append((m, "b", name, b.device))
    return rec


def _restore_devices(rec):
    for m, kind, name, dev in rec:
        if kind == "p":
            p = m._parameters[name] if name in m._parameters else None  # no .get: TorchScript
            if p is not None and p.device != dev:
                p.data = p.data.to(dev)
                if p.grad is not None:
                    p.grad = p.grad.to(dev)
        else:
            b = m._buffers[name] if name in m._buffers else None
            if b is not None and b.device != dev:
                m._buffers[name] = b.to(dev)


@contextlib.contextmanager
def _eval_mode(modules):
    """Put modules (and submodules) in eval mode; restore every training flag on exit."""
    mods = _unique_modules(modules)
    flags = [(m, m.training) for m in mods]
    try:
        for m in mods:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _to_tensor(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


def _labels_to_numpy(y, n=None):
    if y is None:
        return None
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        if n is not None and y.size == n:
            y = y.reshape(-1)
        else:
            raise ValueError(f"Labels must be 1-D; got an array of shape {y.shape}.")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"A batch has {n} samples but {y.shape[0]} labels.")
    return y


#: Activation state per network (the set of its modules): several adapters, estimators or
#: threads may use one network at once; the first switches it to inference, the last restores it.
_ACTIVATION_LOCK = threading.RLock()
_ACTIVE_NETWORKS = {}


def _switch_to_inference(stages, mods, device):
    """Eval mode everywhere and the stages on ``device`` (moved only if needed).

    Returns what :func:`_restore` needs; on failure, restores what was switched.
    """
    flags = [(m, m.training) for m in mods]
    devices = _record_devices(mods)
    try:
        for m in mods:
            m.training = False
        if any(not _device_matches(rec[3], device) for rec in devices):
            for stage in stages:
                stage.to(device)
    except BaseException:
        _restore(flags, devices)
        raise
    return flags, devices


@contextlib.contextmanager
def network_inference(stages, mods, device):
    """Run a network's stages for inference: eval mode, on ``device``, ``inference_mode``.

    Nested and concurrent uses of one network (the set ``mods`` of its
    modules; from any adapters and threads) share one switch: the first
    switches every module to eval mode and moves the stages to ``device``
    (only when they are elsewhere), the last restores every training flag and
    parameter/buffer device, also when the body raises.

    Parameters
    ----------
    stages : list of torch.nn.Module
        Moved with ``.to(device)`` when needed.
    mods : list of torch.nn.Module
        Every module of the stages, once.
    device : torch.device

    Yields
    ------
    None
    """
    key = frozenset(id(m) for m in mods)
    with _ACTIVATION_LOCK:
        state = _ACTIVE_NETWORKS.get(key)
        if state is None:
            saved = _switch_to_inference(stages, mods, device)
            state = _ACTIVE_NETWORKS[key] = {"count": 0, "saved": saved}
        state["count"] += 1
    try:
        with torch.inference_mode():
            yield
    finally:
        with _ACTIVATION_LOCK:
            state["count"] -= 1
            if state["count"] == 0:
                del _ACTIVE_NETWORKS[key]
                _restore(*state["saved"])


def _restore(flags, devices):
    """Every training flag and parameter/buffer device as recorded."""
    for m, flag in flags:
        m.training = flag
    _restore_devices(devices)
