"""Stage adapter for PyTorch networks, and :func:`split_into_stages`.

:class:`TorchStages` makes a trained network, cut into stages, look like any
other :class:`~sklearn_e2cm.stages.base.StageAdapter`: batches are float
tensors on the adapter's device, stage vectors are pooled and flattened
float32 tensors, and the cost of every stage is measured once, on one probe
sample, with :class:`torch.utils.flop_counter.FlopCounterMode` (see
:mod:`sklearn_e2cm._torch_flops` for what it counts). The network is never
trained nor modified: :meth:`TorchStages.activate` puts it in ``eval()`` mode
on the adapter's device for inference and restores the modes and devices it
found afterwards.

:func:`split_into_stages` cuts a model built from named children (a
torchvision-style ResNet, the package's :func:`~sklearn_e2cm.models.resnet_small`,
a plain stack of layers) into an ``nn.Sequential`` of stages and checks that
the stages reproduce ``model(x)``.
"""

import contextlib
import numbers
import threading

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only without torch
    from .._backend import TORCH_INSTALL_HINT

    raise ImportError(f"Torch stages need PyTorch, which is not installed. {TORCH_INSTALL_HINT}") \
        from exc

from .._backend import resolve_device
from .._torch_flops import count_flops
from ._pooling import make_pooling
from ._split import split_into_stages
from ._torch_utils import (
    _eval_mode,
    _floating_dtype,
    _labels_to_numpy,
    _module_device,
    _to_tensor,
    _unique_modules,
    network_inference,
)
from .base import StageAdapter

__all__ = ["TorchStages", "split_into_stages", "is_dataloader"]

_DEFAULT_BATCH_SIZE = 256


# --------------------------------------------------------------------- helpers
def _batch_order_message(batch):
    """The error for a DataLoader batch whose first element is not a batch of inputs."""
    parts = list(batch) if isinstance(batch, (tuple, list)) else [batch]

    def describe(a):
        return (f"shape {tuple(getattr(a, 'shape', ()))}, dtype "
                f"{getattr(a, 'dtype', type(a).__name__)}")

    got = "; ".join(f"element {i}: {describe(a)}" for i, a in enumerate(parts))
    swapped = len(parts) > 1 and len(getattr(parts[1], "shape", ())) >= 2
    return (
        "The DataLoader's batches must be (inputs, labels) pairs (or inputs alone): inputs "
        "first, of shape (batch_size, ...), then labels of shape (batch_size,). Got a batch "
        f"of {len(parts)} element{'s' if len(parts) > 1 else ''} ({got})"
        + ("; the labels seem to come first: yield (x, y), e.g. TensorDataset(X, y)."
           if swapped else "."))


def is_dataloader(X):
    """Whether ``X`` is a torch ``DataLoader`` (or an object that looks like one).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from sklearn_e2cm.stages.torch import is_dataloader
    >>> is_dataloader(DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2))
    True
    >>> is_dataloader(np.zeros((4, 2)))
    False
    """
    if isinstance(X, torch.utils.data.DataLoader):
        return True
    if isinstance(X, (np.ndarray, torch.Tensor)):
        return False
    return hasattr(X, "__iter__") and hasattr(X, "dataset") and hasattr(X, "batch_size")


def _normalize_torch_stages(stages):
    """``(names, modules)``, or ``None`` when the model must be split first."""
    if isinstance(stages, nn.Sequential):
        named = list(stages.named_children())
        if not named:
            raise ValueError("stages is an empty nn.Sequential; it needs at least one stage.")
        return [n for n, _ in named], [m for _, m in named]
    if isinstance(stages, nn.ModuleList) or isinstance(stages, (list, tuple)):
        mods = list(stages)
        if not mods:
            raise ValueError("stages is empty; pass at least one torch module.")
        for i, m in enumerate(mods):
            if not isinstance(m, nn.Module):
                raise TypeError(
                    f"stages[{i}] is a {type(m).__name__}, not a torch.nn.Module; a list of "
                    "torch stages must hold only nn.Module objects."
                )
        return [f"{i}:{type(m).__name__}" for i, m in enumerate(mods)], mods
    if isinstance(stages, nn.Module):
        return None
    raise TypeError(
        f"stages={type(stages).__name__!s} is not a torch stage container; pass an "
        "nn.Sequential (each child a stage), a list of nn.Module, or a model to split with "
        "split_into_stages."
    )


class TorchStages(StageAdapter):
    """A PyTorch network cut into stages, for the early-exit estimators.

    Parameters
    ----------
    stages : nn.Sequential, list of nn.Module, or nn.Module
        An ``nn.Sequential`` (each child a stage) or a list/tuple/``ModuleList``
        of modules (each a stage), run in order. Any other ``nn.Module`` is cut
        with :func:`split_into_stages` on the first training sample in
        :meth:`fit`. The modules are shared, never copied, trained or changed.
    pooling : None, int, tuple, str, callable or list, default=None
        Reduction of each stage output before it is flattened into the stage
        vector; see :mod:`sklearn_e2cm.stages._pooling` (e.g. ``"avg4"``,
        ``("max", (8, 2, 2))``). 2-D stage outputs are never pooled.
    device : str or torch.device, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:0"``, ... or ``"auto"`` (CUDA when
        available). Stages are moved there only inside :meth:`activate`.
    batch_size : int, default=None
        Rows per batch of :meth:`batches` for array input (256 when ``None``);
        a DataLoader keeps its own batches.
    final_classifier : "auto" or bool, default="auto"
        Whether the last stage outputs the network's class scores. ``"auto"``:
        when its output is 2-D ``(n, K)`` with ``K`` equal to the number of
        classes given to :meth:`set_classes` (before that call: when it is
        2-D). ``True`` requires a 2-D output (error in :meth:`fit`
        otherwise); ``False``: the last stage gets a class-means head too. The
        network's output column ``k`` is taken to score ``classes_[k]`` (the
        sorted labels), as when it was trained with labels ``0 .. K-1``.

    Attributes
    ----------
    n_stages : int
    stage_names_ : list of str
    stage_modules_ : list of nn.Module
    device_ : torch.device
    input_shape_ : tuple
        Per-sample shape of the input.
    input_dtype_ : torch.dtype
        Floating dtype of the network's parameters; batches are cast to it.
    stage_flops_ : ndarray of shape (n_stages,)
        Per-sample FLOPs of every stage, counted by ``FlopCounterMode`` on one
        probe sample (matrix products and convolutions; see
        :mod:`sklearn_e2cm._torch_flops`).
    output_shapes_ : list of tuple
        Per-sample output shape of every stage.
    pooled_shapes_ : list of tuple
        Per-sample shape of every stage output after pooling.
    vector_dims_ : ndarray of shape (n_stages,)
        ``D_j``, the length of every stage vector (0 for the last stage when
        :attr:`final_is_classifier`).
    vector_flops_ : ndarray of shape (n_stages,)
        Per-sample FLOPs of the pooling of every stage output (0 for the last
        stage when :attr:`final_is_classifier`).
    n_outputs_ : int or None
        Width of the last stage's output when it is 2-D.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from sklearn_e2cm.stages import TorchStages
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(
    ...     nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
    ...     nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU()),
    ...     nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)),
    ... )
    >>> X = np.random.RandomState(0).rand(10, 1, 8, 8).astype(np.float32)
    >>> ad = TorchStages(net, pooling="avg2").fit(X)
    >>> ad.stage_flops_.tolist(), ad.vector_dims_.tolist(), ad.final_is_classifier
    ([4608.0, 9216.0, 48.0], [16, 32, 0], True)
    >>> with ad.activate():
    ...     for Xb, _ in ad.batches(X, batch_size=4):
    ...         Z = ad.run_stage(0, Xb)
    ...         F = ad.stage_vector(0, Z)
    ...         Z = ad.take(Z, np.arange(len(Z)) % 2 == 0)
    >>> tuple(F.shape), tuple(Z.shape)
    ((2, 16), (1, 4, 8, 8))
    """

    backend = "torch"

    def __init__(self, stages, pooling=None, device="cpu", batch_size=None,
                 final_classifier="auto"):
        if not (isinstance(final_classifier, str) and final_classifier == "auto") and not (
            isinstance(final_classifier, (bool, np.bool_))
        ):
            raise ValueError(
                f"final_classifier must be 'auto', True or False; got {final_classifier!r}."
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an int >= 1 or None; got {batch_size!r}.")
        self.stages = stages
        self.pooling = pooling
        self.device = device
        self.batch_size = batch_size
        self.final_classifier = (
            final_classifier if isinstance(final_classifier, str) else bool(final_classifier)
        )
        norm = _normalize_torch_stages(stages)
        if norm is None:
            self.stage_names_, self.stage_modules_ = None, None
            self._poolings = None
        else:
            self.stage_names_, self.stage_modules_ = norm
            self._poolings = make_pooling(pooling, len(self.stage_modules_))
        self._fitted = False

    # ------------------------------------------------------------ properties
    def _check_stages(self):
        if self.stage_modules_ is None:
            raise AttributeError(
                f"The stages of {type(self.stages).__name__} are known after fit() (the model "
                "is split with split_into_stages on the first sample)."
            )

    @property
    def n_stages(self):
        self._check_stages()
        return len(self.stage_modules_)

    def _check_fitted(self, what):
        if not self._fitted:
            raise AttributeError(f"{what} is available after TorchStages.fit().")

    @property
    def final_is_classifier(self):
        fc = self.final_classifier
        if fc is False:
            return False
        if not self._fitted:
            return fc is True
        if fc is True:
            return True
        if len(self.output_shapes_[-1]) != 1:
            return False
        classes = getattr(self, "classes_", None)
        return classes is None or self.output_shapes_[-1][0] == len(classes)

    @property
    def vector_dims_(self):
        self._check_fitted("vector_dims_")
        d = self._vector_dims.copy()
        if self.final_is_classifier:
            d[-1] = 0
        return d

    @property
    def vector_flops_(self):
        self._check_fitted("vector_flops_")
        f = self._vector_flops.copy()
        if self.final_is_classifier:
            f[-1] = 0.0
        return f

    # ------------------------------------------------------------------- fit
    def _probe(self, X):
        """First sample of X as a (1, ...) tensor, and X's per-sample shape."""
        if is_dataloader(X):
            for batch in X:
                xb, _ = self._split_batch(batch)
                if xb.shape[0] == 0:
                    continue
                return xb[:1]
            raise ValueError("The DataLoader yields no samples.")
        if isinstance(X, torch.Tensor):
            x = X.detach()
        else:
            x = np.asarray(X)
            if x.dtype == object:
                raise ValueError("X must be a numeric array, a tensor or a DataLoader.")
        if x.ndim < 2 or x.shape[0] < 1:
            raise ValueError(
                f"X must have shape (n_samples, ...) with at least one sample; got shape "
                f"{tuple(x.shape)}."
            )
        return _to_tensor(x[:1])

    def fit(self, X, y=None, sample_weight=None):
        """Measure the stages on the first sample of ``X``; return self.

        Nothing is trained: the first sample (of ``X`` or of the first batch
        of a DataLoader) is run through the stages in eval mode to record
        every stage's FLOPs (``FlopCounterMode``), output shape, stage-vector
        size and pooling FLOPs. A model that is not an ``nn.Sequential`` or a
        list is split with :func:`split_into_stages` on that sample first.

        Parameters
        ----------
        X : array of shape (n, ...), tensor, or DataLoader of (x, y) / x batches
        y, sample_weight : ignored

        Returns
        -------
        self
        """
        self._fitted = False
        self.device_ = resolve_device(self.device)
        probe = self._probe(X)
        if _normalize_torch_stages(self.stages) is None:  # a model to split, on this probe
            staged = split_into_stages(self.stages, probe)
            self.stage_names_ = list(staged._modules)
            self.stage_modules_ = list(staged.children())
            self._poolings = make_pooling(self.pooling, len(self.stage_modules_))
        self.input_dtype_ = _floating_dtype(self.stage_modules_)
        self.input_shape_ = tuple(probe.shape[1:])
        flops, shapes, pooled, dims, vflops = [], [], [], [], []
        with self.activate():
            z = probe.to(device=self.device_, dtype=self.input_dtype_)
            for j, stage in enumerate(self.stage_modules_):
                try:
                    f, out = count_flops(stage, z)
                except Exception as exc:
                    raise ValueError(
                        f"Stage {j} ({self.stage_names_[j]}) fails on an input of per-sample "
                        f"shape {tuple(z.shape[1:])}: {exc}"
                    ) from exc
                if not isinstance(out, torch.Tensor):
                    raise ValueError(
                        f"Stage {j} ({self.stage_names_[j]}) returned {type(out).__name__}; "
                        "every stage must return a single tensor."
                    )
                if out.dim() < 1 or out.shape[0] != z.shape[0]:
                    raise ValueError(
                        f"Stage {j} ({self.stage_names_[j]}) returned shape {tuple(out.shape)} "
                        f"for a batch of {z.shape[0]}; stages must keep the batch dimension first."
                    )
                vec, vf = self._poolings[j].measure(out, stage=j)
                flops.append(float(f))
                shapes.append(tuple(out.shape[1:]))
                pooled.append(tuple(vec.shape[1:]))
                dims.append(int(np.prod(vec.shape[1:])))
                vflops.append(float(vf))
                z = out
        self.stage_flops_ = np.asarray(flops, dtype=np.float64)
        self.output_shapes_ = shapes
        self.pooled_shapes_ = pooled
        self._vector_dims = np.asarray(dims, dtype=np.intp)
        self._vector_flops = np.asarray(vflops, dtype=np.float64)
        self.n_outputs_ = shapes[-1][0] if len(shapes[-1]) == 1 else None
        if self.final_classifier is True and self.n_outputs_ is None:
            raise ValueError(
                f"final_classifier=True but the last stage ({self.stage_names_[-1]}) outputs "
                f"per-sample shape {shapes[-1]}, not class scores of shape (K,)."
            )
        self._fitted = True
        if getattr(self, "classes_", None) is not None:
            self.set_classes(self.classes_)
        return self

    def set_classes(self, classes):
        """Record the estimator's sorted ``classes_``; check them against the network's outputs.

        Parameters
        ----------
        classes : array-like of shape (n_classes,)

        Returns
        -------
        self : TorchStages
            Raises ``ValueError`` when ``final_classifier=True`` and the fitted last
            stage outputs a different number of class scores.
        """
        classes = np.asarray(classes)
        if self.final_classifier is True and self._fitted and self.n_outputs_ != len(classes):
            raise ValueError(
                f"final_classifier=True but the last stage outputs {self.n_outputs_} class "
                f"scores for {len(classes)} classes {classes.tolist()[:20]}."
            )
        self.classes_ = classes
        return self

    # ------------------------------------------------------------- inference
    @contextlib.contextmanager
    def activate(self):
        """Run the stages for inference: ``eval()``, on ``device_``, under ``inference_mode``.

        Every module's training flag and every parameter's and buffer's device
        are restored on exit, also when the body raises. Nested and concurrent
        activations of one network (from any adapters and threads) share one
        switch: the first switches the network to inference (moving nothing
        that is already on ``device_``), the last restores it.

        Yields
        ------
        self : TorchStages
        """
        self._check_stages()
        device = getattr(self, "device_", None)
        if device is None:
            device = self.device_ = resolve_device(self.device)
        tls = self._thread_state()
        with network_inference(self.stage_modules_, self._modules(), device):
            tls.depth = getattr(tls, "depth", 0) + 1
            try:
                yield self
            finally:
                tls.depth -= 1

    def _thread_state(self):
        """Per-thread activation depth (``inference_mode`` is per thread)."""
        tls = self.__dict__.get("_tls")
        if tls is None:
            tls = self.__dict__.setdefault("_tls", threading.local())
        return tls

    def _in_activation(self):
        """Whether this thread runs inside :meth:`activate`."""
        return getattr(self._thread_state(), "depth", 0) > 0

    def _modules(self):
        """Every module of the stages, once (cached for the current stages)."""
        key = tuple(id(m) for m in self.stage_modules_)
        cached = self.__dict__.get("_module_cache")
        if cached is None or cached[0] != key:
            cached = self._module_cache = (key, _unique_modules(self.stage_modules_))
        return cached[1]

    def _split_batch(self, batch):
        if isinstance(batch, torch.Tensor):
            x, y = batch, None
        elif isinstance(batch, (tuple, list)):
            if len(batch) == 0:
                raise ValueError("The DataLoader yields an empty batch.")
            x = _to_tensor(batch[0])
            y = batch[1] if len(batch) > 1 else None
        elif isinstance(batch, np.ndarray):
            x, y = _to_tensor(batch), None
        else:
            x = None
        if x is not None:
            if x.dim() < 2:  # no per-sample shape: labels first, or not a batch of samples
                raise ValueError(_batch_order_message(batch))
            return x, y
        raise TypeError(
            f"The DataLoader yields {type(batch).__name__} batches; expected tensors or "
            "(x, y) / (x,) tuples."
        )

    def _check_shape(self, shape, ref, what):
        if ref is not None and tuple(shape) != tuple(ref):
            raise ValueError(
                f"{what} has samples of shape {tuple(shape)} but {tuple(ref)} was expected "
                "(every batch must have the same per-sample shape as the data the stages were "
                "fitted on)."
            )

    def batches(self, X, y=None, batch_size=None):
        """Yield ``(Xb, yb)``: ``Xb`` a float tensor on ``device_``, ``yb`` numpy labels or None.

        ``X`` is an array or tensor of shape ``(n, ...)`` (cut into batches of
        ``batch_size`` rows) or a DataLoader yielding ``(x, y)`` pairs or
        ``x`` alone (its batches are kept; ``y`` must then be None).

        Parameters
        ----------
        X : array-like, torch.Tensor or DataLoader
            Samples of the per-sample shape the stages were fitted on.
        y : array-like of shape (n_samples,), default=None
            Labels; must be None for a DataLoader.
        batch_size : int, default=None
            Rows per batch; falls back to the adapter's ``batch_size``, then to a
            default. Ignored for a DataLoader.

        Yields
        ------
        Xb : torch.Tensor of shape (n_batch, ...)
            In ``input_dtype_`` (float32 by default), on ``device_``.
        yb : ndarray of shape (n_batch,) or None
        """
        device = getattr(self, "device_", None) or resolve_device(self.device)
        dtype = getattr(self, "input_dtype_", None) or torch.float32
        ref = getattr(self, "input_shape_", None)
        if is_dataloader(X):
            if y is not None:
                raise ValueError("y must be None when X is a DataLoader: the labels come from it.")
            first = None
            for i, batch in enumerate(X):
                xb, yb = self._split_batch(batch)
                shape = tuple(xb.shape[1:])
                if first is None:
                    first = shape
                    self._check_shape(shape, ref, "The DataLoader")
                elif shape != first:
                    raise ValueError(
                        f"DataLoader batch {i} has samples of shape {shape} but the earlier "
                        f"batches had samples of shape {first}; every batch must have the "
                        "same per-sample shape."
                    )
                n = xb.shape[0]
                yield xb.to(device=device, dtype=dtype), _labels_to_numpy(yb, n)
            return
        bs = batch_size or self.batch_size or _DEFAULT_BATCH_SIZE
        if isinstance(bs, bool) or not isinstance(bs, numbers.Integral) or bs < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {bs!r}.")
        if not isinstance(X, torch.Tensor):
            X = np.asarray(X)
        if X.ndim < 1:
            raise ValueError(f"X must have shape (n_samples, ...); got shape {tuple(X.shape)}.")
        self._check_shape(tuple(X.shape[1:]), ref, "X")
        n = X.shape[0]
        if y is not None:
            y = _labels_to_numpy(y)
            if y.shape[0] != n:
                raise ValueError(f"X has {n} samples but y has {y.shape[0]}.")
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            if isinstance(X, torch.Tensor):
                xb = X[start:stop].detach()
            else:
                xb = X[start:stop]
                if not (xb.flags.c_contiguous and xb.flags.writeable):
                    xb = np.array(xb, order="C")
                xb = torch.from_numpy(xb)
            yield (xb.to(device=device, dtype=dtype),
                   None if y is None else y[start:stop])

    def _call(self, module, Z):
        """``module(Z)``; outside :meth:`activate`, in eval mode and inference mode anyway."""
        if self._in_activation():
            return module(Z)
        dev = _module_device(module)
        if isinstance(Z, torch.Tensor) and any(True for _ in module.parameters()) and (
            dev.type != Z.device.type
        ):
            raise RuntimeError(
                f"The stage is on {dev} but the batch on {Z.device}; run the stages inside "
                "`with adapter.activate():`, which moves them to the adapter's device."
            )
        with _eval_mode([module]), torch.inference_mode():
            return module(Z)

    def run_stage(self, j, Z):
        """Output of stage ``j`` for its input batch ``Z``.

        Meant to run inside :meth:`activate`; outside it the stage is still
        run in eval mode under :func:`torch.inference_mode` (so a training
        flag never updates batch-norm statistics), at the cost of switching
        modes on every call.

        Parameters
        ----------
        j : int
            Stage index.
        Z : torch.Tensor of shape (n, ...)
            Stage ``j``'s input batch, on the stage's device.

        Returns
        -------
        Z_out : torch.Tensor of shape (n, ...)
        """
        return self._call(self.stage_modules_[j], Z)

    def stage_vector(self, j, Z):
        """Pooled and flattened ``(n, D_j)`` float32 tensor of stage ``j``'s output.

        Parameters
        ----------
        j : int
            Stage index.
        Z : torch.Tensor of shape (n, ...)
            Stage ``j``'s output batch.

        Returns
        -------
        F : torch.Tensor of float32 of shape (n, D_j)
            On ``Z``'s device.
        """
        if self._in_activation():
            V = self._poolings[j](Z)
        else:
            with torch.inference_mode():
                V = self._poolings[j](Z)
        return V.flatten(1).float()

    def final_outputs(self, Z):
        """``(argmax indices, softmax probabilities)`` of the last stage, both on ``Z``'s device.

        Parameters
        ----------
        Z : torch.Tensor of shape (n, ...)
            Input of the last stage, whose output must be ``(n, K)`` class scores.

        Returns
        -------
        class_index : torch.Tensor of int64 of shape (n,)
        proba : torch.Tensor of float32 of shape (n, K)
            Both on ``Z``'s device (nothing is copied to the host).
        """
        logits = self._call(self.stage_modules_[-1], Z)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(f"The last stage must output (n, K) class scores; got {shape}.")
        proba = torch.softmax(logits.float(), dim=1)
        return logits.argmax(dim=1), proba

    @property
    def frozen(self):
        """Always True: the network is never trained, only measured."""
        return True

    def take(self, Z, keep):
        """Rows of ``Z`` selected by a boolean mask or row indices (numpy or tensor).

        Parameters
        ----------
        Z : torch.Tensor of shape (n, ...)
        keep : ndarray or torch.Tensor of shape (n,) of bool, or of int
            Boolean mask or row indices; a tensor on ``Z``'s device is used
            as it is (no transfer).

        Returns
        -------
        Z_kept : torch.Tensor
            The selected rows, on ``Z``'s device.
        """
        if isinstance(keep, torch.Tensor):
            index = keep.nonzero().reshape(-1) if keep.dtype == torch.bool else keep
            return Z.index_select(0, index.to(Z.device))
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)  # index_select is ~3x faster than a boolean mask
        index = torch.as_tensor(keep, dtype=torch.long, device=Z.device)
        return Z.index_select(0, index)

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_tls", "_module_cache", "_active"):
            state.pop(name, None)
        return state

    def __repr__(self):
        n = "?" if self.stage_modules_ is None else len(self.stage_modules_)
        return (
            f"TorchStages(n_stages={n}, pooling={self.pooling!r}, device={self.device!r}, "
            f"final_classifier={self.final_classifier!r})"
        )
