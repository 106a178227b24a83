"""Feature reduction of torch stage outputs before the class means.

:func:`make_pooling` turns a ``pooling=`` specification into one reduction per
stage. A reduction maps a stage output batch ``(n, C, *spatial)`` to a smaller
tensor, which the adapter then flattens into the stage vector.

Accepted specifications
-----------------------
``None`` (or ``"flatten"``, ``"none"``)
    No reduction: the stage output is flattened as it is.
``k`` (int)
    ``k x k`` max pooling over space (stride ``k``), channels untouched.
``(c, h, w)`` (tuple of ints)
    Max pooling with a ``c x h x w`` kernel over (channels, height, width),
    stride = kernel, as in the paper (14x14x80 -> 7x7x10 with ``(8, 2, 2)``).
    ``(c, l)`` is the same for 3-D outputs ``(n, C, L)``.
``("max", size)`` / ``("avg", size)``
    Adaptive max / average pooling of the spatial dimensions to an output grid
    ``size`` (an int, or ``(h, w)``; ``(l,)`` for 3-D outputs), channels
    untouched. A 3-tuple ``size`` is a kernel instead, as above:
    ``("max", (8, 2, 2))`` is the paper's reduction and ``("avg", (c, h, w))``
    its average-pooling counterpart.
``"avgN"`` / ``"maxN"`` (e.g. ``"avg1"``, ``"avg4"``, ``"max2"``)
    Shorthand for ``("avg", N)`` / ``("max", N)``.
callable
    A function (or ``nn.Module``) mapping the output batch to a tensor. Torch
    pooling modules (``nn.MaxPool1d/2d/3d``, ``nn.AvgPool1d/2d/3d``,
    ``nn.AdaptiveMaxPool*``, ``nn.AdaptiveAvgPool*``) get the exact count
    below; any other callable is counted by ``FlopCounterMode``, which gives
    0 for pooling and other elementwise work (see :mod:`sklearn_e2cm._torch_flops`).
list
    One of the above per stage: ``n_stages`` entries, or ``n_stages - 1``
    (the last stage is then flattened as it is).

Edge handling: kernels and output grids larger than the stage output are
clipped to its size (one spec then fits every stage of a network whose
feature maps shrink); kernel pooling uses ``ceil_mode`` so that no border
element is dropped (partial windows at the border). 2-D stage outputs
``(n, D)`` are never pooled (only a callable is applied to them): they are
already vectors. Outputs with more spatial dimensions than a spec supports
raise a ``ValueError`` naming the stage, its shape and the spec.

FLOPs (per sample, exact)
-------------------------
Max pooling counts ``size - 1`` comparisons per window, average pooling
``size`` (``size - 1`` additions and one multiplication by ``1/size``), where
``size`` is the number of input elements the window covers (border windows of
``ceil_mode`` and the uneven windows of adaptive pooling are counted with
their true size; torch's adaptive window ``i`` of ``Out`` over ``In`` covers
``floor(i*In/Out) .. ceil((i+1)*In/Out) - 1``). Summed over every output
element. Flattening costs 0.
"""

import numbers
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["make_pooling", "window_sizes", "adaptive_window_sizes", "pooling_flops"]

ACCEPTED = (
    "None (flatten), an int k (k x k spatial max pooling), a tuple of ints (c, h, w) "
    "(max-pooling kernel over channels, height, width), ('max', size) or ('avg', size) "
    "(adaptive pooling to a size or (h, w) grid; a 3-tuple size is a (c, h, w) kernel), a string "
    "'avgN' / 'maxN' (e.g. 'avg4'), a callable tensor -> tensor, or a list of these, one per stage"
)

_PRESET = re.compile(r"^(avg|max)(\d+)$")


# ----------------------------------------------------------------- window sizes
def window_sizes(n_in, kernel, stride=None, padding=0, dilation=1, n_out=None, ceil_mode=True):
    """Number of input elements covered by each window of a 1-D kernel pooling.

    Parameters
    ----------
    n_in : int
        Input length.
    kernel, stride, padding, dilation : int
        As in ``torch.nn.MaxPool1d`` (``stride=None`` means ``kernel``).
    n_out : int, optional
        Number of windows (default: torch's output-size rule).
    ceil_mode : bool, default=True

    Returns
    -------
    sizes : ndarray of int, one entry per window

    Examples
    --------
    >>> from sklearn_e2cm.stages._pooling import window_sizes
    >>> window_sizes(7, 2).tolist()
    [2, 2, 2, 1]
    """
    stride = kernel if stride is None else stride
    if n_out is None:
        span = n_in + 2 * padding - dilation * (kernel - 1) - 1
        n_out = (-(-span // stride) if ceil_mode else span // stride) + 1
        if ceil_mode and (n_out - 1) * stride >= n_in + padding:
            n_out -= 1
    starts = np.arange(n_out)[:, None] * stride - padding
    pos = starts + np.arange(kernel)[None, :] * dilation
    return ((pos >= 0) & (pos < n_in)).sum(axis=1)


def adaptive_window_sizes(n_in, n_out):
    """Window sizes of torch's adaptive pooling from ``n_in`` to ``n_out``.

    Window ``i`` covers ``floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1``.

    Examples
    --------
    >>> from sklearn_e2cm.stages._pooling import adaptive_window_sizes
    >>> adaptive_window_sizes(7, 4).tolist()
    [2, 3, 3, 2]
    """
    i = np.arange(n_out)
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    return end - start


def pooling_flops(mode, sizes_per_dim, n_unpooled=1):
    """Exact FLOPs of a separable pooling from its per-dimension window sizes.

    Parameters
    ----------
    mode : {"max", "avg"}
    sizes_per_dim : list of 1-D arrays
        Window sizes along each pooled dimension; the windows are their
        Cartesian product.
    n_unpooled : int
        Product of the dimensions that are not pooled (e.g. channels).

    Returns
    -------
    flops : int
        ``sum(size - 1)`` over windows for max, ``sum(size)`` for avg.

    Examples
    --------
    >>> from sklearn_e2cm.stages._pooling import pooling_flops
    >>> pooling_flops("max", [[2, 2], [2, 2]], n_unpooled=3)  # 4x4 -> 2x2: 4 windows of 4
    36
    """
    total = 1  # sum over windows of prod(sizes) = prod over dims of sum(sizes)
    n_windows = 1
    for s in sizes_per_dim:
        s = np.asarray(s, dtype=np.int64)
        total *= int(s.sum())
        n_windows *= int(s.shape[0])
    per_group = total - n_windows if mode == "max" else total
    return int(per_group) * int(n_unpooled)


# ------------------------------------------------------------------- reductions
def _as_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class _Pooling:
    """A per-stage reduction: ``__call__`` maps a batch, ``measure`` gives FLOPs."""

    spec = None

    def __call__(self, Z):
        raise NotImplementedError

    def measure(self, Z, stage=None):
        """``(output, per-sample FLOPs)`` of the reduction on a probe batch ``Z``."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.spec!r})"


class _Flatten(_Pooling):
    def __init__(self, spec=None):
        self.spec = spec

    def __call__(self, Z):
        return Z

    def measure(self, Z, stage=None):
        return Z, 0


def _shape_error(stage, shape, spec, why):
    where = "" if stage is None else f"stage {stage} "
    return ValueError(
        f"pooling={spec!r} cannot reduce the {where}output of per-sample shape {tuple(shape)}: "
        f"{why}. Pass a per-stage list (e.g. None for that stage) or a callable. Accepted: "
        f"{ACCEPTED}."
    )


class _KernelPool(_Pooling):
    """Non-overlapping kernel pooling over (channels, *spatial) or spatial only."""

    def __init__(self, mode, kernel, with_channels, spec):
        self.mode = mode
        self.kernel = tuple(int(k) for k in kernel)
        self.with_channels = with_channels  # kernel[0] is over channels
        self.spec = spec

    def _full_kernel(self, shape, stage=None):
        """Kernel over (C, *spatial), clipped to the shape."""
        n_spatial = len(shape) - 1
        if self.with_channels:
            if len(self.kernel) != len(shape):
                raise _shape_error(
                    stage, shape, self.spec,
                    f"a kernel of {len(self.kernel)} sizes needs outputs with "
                    f"{len(self.kernel) - 1} spatial dimension(s) after the channels",
                )
            k = self.kernel
        else:
            k = (1,) + self.kernel * n_spatial
        k = tuple(min(ki, si) for ki, si in zip(k, shape))
        n_pool = len(k) if k[0] > 1 else len(k) - 1
        if n_pool > 3 or (k[0] == 1 and n_spatial > 3):
            raise _shape_error(stage, shape, self.spec, "too many dimensions to pool")
        return k

    def _pool(self, Z, k):
        fn_max = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
        fn_avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
        fns = fn_max if self.mode == "max" else fn_avg
        if all(ki == 1 for ki in k):
            return Z
        if k[0] == 1:  # spatial only: channels act as the pooling's channels
            ks = k[1:]
            return fns[len(ks)](Z, ks, ks, ceil_mode=True)
        out = fns[len(k)](Z.unsqueeze(1), k, k, ceil_mode=True)
        return out.squeeze(1)

    def __call__(self, Z):
        if Z.dim() <= 2:
            return Z
        return self._pool(Z, self._full_kernel(tuple(Z.shape[1:])))

    def measure(self, Z, stage=None):
        if Z.dim() <= 2:
            return Z, 0
        shape = tuple(Z.shape[1:])
        k = self._full_kernel(shape, stage)
        out = self._pool(Z, k)
        if all(ki == 1 for ki in k):
            return out, 0  # identity
        if k[0] == 1:  # spatial pooling, channels untouched
            sizes = [window_sizes(n, ki) for n, ki in zip(shape[1:], k[1:])]
            return out, pooling_flops(self.mode, sizes, shape[0])
        sizes = [window_sizes(n, ki) for n, ki in zip(shape, k)]
        return out, pooling_flops(self.mode, sizes, 1)


class _AdaptivePool(_Pooling):
    """Adaptive pooling of the spatial dimensions to a grid (clipped to the input)."""

    def __init__(self, mode, size, spec):
        self.mode = mode
        self.size = size  # int or tuple
        self.spec = spec

    def _grid(self, shape, stage=None):
        spatial = shape[1:]
        if len(spatial) > 3:
            raise _shape_error(stage, shape, self.spec, "too many spatial dimensions")
        if isinstance(self.size, tuple):
            if len(self.size) != len(spatial):
                raise _shape_error(
                    stage, shape, self.spec,
                    f"an output grid of {len(self.size)} sizes needs {len(self.size)} spatial "
                    f"dimension(s), the output has {len(spatial)}",
                )
            size = self.size
        else:
            size = (self.size,) * len(spatial)
        return tuple(min(int(o), int(i)) for o, i in zip(size, spatial))

    def _pool(self, Z, grid):
        fn = {
            ("max", 1): F.adaptive_max_pool1d, ("max", 2): F.adaptive_max_pool2d,
            ("max", 3): F.adaptive_max_pool3d, ("avg", 1): F.adaptive_avg_pool1d,
            ("avg", 2): F.adaptive_avg_pool2d, ("avg", 3): F.adaptive_avg_pool3d,
        }[(self.mode, len(grid))]
        return fn(Z, grid)

    def __call__(self, Z):
        if Z.dim() <= 2:
            return Z
        grid = self._grid(tuple(Z.shape[1:]))
        if grid == tuple(Z.shape[2:]):
            return Z
        return self._pool(Z, grid)

    def measure(self, Z, stage=None):
        if Z.dim() <= 2:
            return Z, 0
        shape = tuple(Z.shape[1:])
        grid = self._grid(shape, stage)
        if grid == tuple(shape[1:]):
            return Z, 0  # the grid is the input: identity
        out = self._pool(Z, grid)
        sizes = [adaptive_window_sizes(i, o) for i, o in zip(shape[1:], grid)]
        return out, pooling_flops(self.mode, sizes, shape[0])


_TORCH_POOLS = {
    nn.MaxPool1d: "max", nn.MaxPool2d: "max", nn.MaxPool3d: "max",
    nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.AvgPool3d: "avg",
    nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max", nn.AdaptiveMaxPool3d: "max",
    nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveAvgPool3d: "avg",
}


def _tup(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _torch_pool_flops(module, shape, out_shape):
    """Exact FLOPs of a torch pooling module from input/output per-sample shapes."""
    mode = _TORCH_POOLS[type(module)]
    n_sp = len(out_shape) - 1 if len(out_shape) == len(shape) else None
    if n_sp is None:
        return None
    name = type(module).__name__
    n_dim = int(name[-2])
    if n_sp < n_dim:
        return None
    in_sp, out_sp = shape[-n_dim:], out_shape[-n_dim:]
    lead = int(np.prod(shape[:-n_dim]))
    if name.startswith("Adaptive"):
        sizes = [adaptive_window_sizes(i, o) for i, o in zip(in_sp, out_sp)]
    else:
        k = _tup(module.kernel_size, n_dim)
        s = _tup(module.stride if module.stride is not None else module.kernel_size, n_dim)
        p = _tup(module.padding, n_dim)
        d = _tup(getattr(module, "dilation", 1), n_dim)
        sizes = [
            window_sizes(i, ki, si, pi, di, n_out=o)
            for i, o, ki, si, pi, di in zip(in_sp, out_sp, k, s, p, d)
        ]
    return pooling_flops(mode, sizes, lead)


class _CallablePool(_Pooling):
    """A user callable; FLOPs exact for torch pooling modules, else FlopCounterMode."""

    def __init__(self, fn):
        self.fn = fn
        self.spec = fn

    def __call__(self, Z):
        return self.fn(Z)

    def measure(self, Z, stage=None):
        from .._torch_flops import count_flops

        try:
            flops, out = count_flops(self.fn, Z)
        except Exception as exc:
            where = "" if stage is None else f" of stage {stage}"
            raise ValueError(
                f"pooling={self.fn!r} fails on the output{where} of per-sample shape "
                f"{tuple(Z.shape[1:])}: {exc}. Pass a pooling that fits this shape, or a "
                "per-stage list (None for that stage)."
            ) from exc
        if not isinstance(out, torch.Tensor):
            where = "" if stage is None else f" at stage {stage}"
            raise ValueError(
                f"pooling callable {self.fn!r} returned {type(out).__name__}{where}; it must "
                "return a tensor."
            )
        n = max(int(Z.shape[0]), 1)
        if type(self.fn) in _TORCH_POOLS:
            exact = _torch_pool_flops(self.fn, tuple(Z.shape[1:]), tuple(out.shape[1:]))
            if exact is not None:
                return out, exact
        return out, flops // n


# ----------------------------------------------------------------------- parse
def _bad(spec, why=""):
    why = f" ({why})" if why else ""
    return ValueError(f"Invalid pooling spec {spec!r}{why}. Accepted: {ACCEPTED}.")


def _parse_one(spec):
    if spec is None:
        return _Flatten(None)
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("flatten", "none"):
            return _Flatten(spec)
        m = _PRESET.match(s)
        if m is None or int(m.group(2)) < 1:
            raise _bad(spec, "unknown string")
        return _AdaptivePool(m.group(1), int(m.group(2)), spec)
    if isinstance(spec, bool):
        raise _bad(spec)
    if _as_int(spec):
        if spec < 1:
            raise _bad(spec, "a kernel size must be >= 1")
        return _KernelPool("max", (int(spec),), False, spec)
    if isinstance(spec, tuple) and spec and all(_as_int(v) for v in spec):
        if len(spec) not in (2, 3) or any(v < 1 for v in spec):
            raise _bad(spec, "a kernel is (c, h, w) (or (c, l) for 3-D outputs) of ints >= 1")
        return _KernelPool("max", spec, True, spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        mode, size = spec[0].strip().lower(), spec[1]
        if mode not in ("max", "avg"):
            raise _bad(spec, f"the pooling kind must be 'max' or 'avg', got {spec[0]!r}")
        if _as_int(size):
            if size < 1:
                raise _bad(spec, "the output size must be >= 1")
            return _AdaptivePool(mode, int(size), spec)
        if isinstance(size, (tuple, list)) and size and all(_as_int(v) and v >= 1 for v in size):
            size = tuple(int(v) for v in size)
            if len(size) == 3:
                return _KernelPool(mode, size, True, spec)
            return _AdaptivePool(mode, size, spec)
        raise _bad(spec, "size must be an int >= 1 or a tuple of them")
    if callable(spec):
        return _CallablePool(spec)
    raise _bad(spec)


def make_pooling(spec, n_stages):
    """One reduction per stage from a ``pooling=`` specification.

    Parameters
    ----------
    spec : None, int, tuple, str, callable or list
        See the module docstring for the accepted forms.
    n_stages : int
        Number of stages.

    Returns
    -------
    poolings : list of callables, length ``n_stages``
        ``poolings[j](Z)`` reduces a batch of stage ``j`` outputs (not yet
        flattened); ``poolings[j].measure(Z)`` returns ``(output,
        per-sample FLOPs)`` on a probe batch.

    Raises
    ------
    ValueError
        If ``spec`` is not one of the accepted forms (the message names it).

    Examples
    --------
    >>> import torch
    >>> from sklearn_e2cm.stages._pooling import make_pooling
    >>> pool = make_pooling((8, 2, 2), n_stages=1)[0]
    >>> out, flops = pool.measure(torch.zeros(1, 80, 14, 14))
    >>> tuple(out.shape), flops  # 7x7x10 windows of 32 elements: 31 comparisons each
    ((1, 10, 7, 7), 15190)
    >>> [type(p).__name__ for p in make_pooling(["avg4", None], 2)]
    ['_AdaptivePool', '_Flatten']
    """
    if isinstance(n_stages, bool) or not _as_int(n_stages) or n_stages < 1:
        raise ValueError(f"n_stages must be an int >= 1; got {n_stages!r}.")
    if isinstance(spec, list):
        if len(spec) not in (n_stages, n_stages - 1):
            raise ValueError(
                f"A per-stage pooling list needs {n_stages} entries (or {n_stages - 1}, the last "
                f"stage then flattened); got {len(spec)}: {spec!r}."
            )
        out = []
        for s in spec:
            if isinstance(s, list):
                raise _bad(spec, "per-stage lists cannot be nested")
            out.append(_parse_one(s))
        if len(out) < n_stages:
            out.append(_Flatten(None))
        return out
    one = _parse_one(spec)
    return [one] * n_stages
