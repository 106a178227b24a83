"""The common view of a staged feature extractor.

Every backend (a list of scikit-learn transformers, a torch network split into
stages, ...) is wrapped in a :class:`StageAdapter` so that the layers above it
(exit heads, router, estimators) never look at the backend itself.

Contract
--------
* ``n_stages``: number of stages ``M``. The router may exit after stages
  ``0 .. M-2``; stage ``M-1`` always exits.
* ``final_is_classifier``: True when the last stage outputs the base model's
  class scores. The last stage is then *not* run by :meth:`run_stage`; the
  router calls :meth:`final_outputs` on the last stage's *input* instead and
  the final exit returns the base model's own prediction.
* ``batches(X, y, batch_size)`` yields ``(Xb, yb)`` with ``Xb`` in the
  backend's native array type (numpy for scikit-learn, torch tensor on the
  adapter's device for torch) and ``yb`` a 1-D numpy array of raw labels or
  ``None``.
* ``run_stage(j, Z)`` maps stage ``j``'s input batch to its output batch.
* ``stage_vector(j, Z)`` maps stage ``j``'s output batch to the 2-D array of
  features the class means live in (flattened, after the optional feature
  reduction). numpy float64 for scikit-learn, float32 torch tensor on the
  device for torch.
* ``take(Z, keep)`` keeps the rows of ``Z`` selected by ``keep``, a boolean
  mask or row positions, numpy or (torch adapters) a tensor on the batch's
  device (compaction: exited rows are not passed on).
* ``stage_flops_``: per-sample FLOPs of each stage (multiply-add = 2),
  ``vector_flops_``: per-sample FLOPs of turning each stage output into its
  vector (pooling), ``vector_dims_``: ``D_j`` of every stage vector.
  All three are 1-D numpy arrays of length ``n_stages``, available after
  :meth:`fit`. For the last stage of a classifier chain the vector entries
  are 0 (no class-mean head there).

Optional members have defaults here, so callers never probe for them:

* ``activate()``: the context inference and fitting passes run in (eval
  mode, device placement, ``torch.inference_mode`` for torch); a no-op by
  default.
* ``cost_errors_``: stage index -> the error explaining why that stage's
  FLOPs are unknown (``stage_flops_`` holds NaN there); empty by default.
* ``n_outputs_``: width of the last stage's output when it may be the base
  model's classifier (``None`` when unknown).
* ``frozen``: whether :meth:`fit` trains nothing.
"""

import contextlib
from abc import ABC, abstractmethod

import numpy as np

from .._backend import to_numpy


class StageAdapter(ABC):
    """Uniform interface over a sequence of stages (see module docstring)."""

    #: "numpy" or "torch": the array type of batches and stage vectors.
    backend = "numpy"

    #: Stage index -> why that stage's FLOPs could not be counted (see module docstring).
    cost_errors_ = {}

    #: Width of the last stage's output, when known (see module docstring).
    n_outputs_ = None

    def activate(self):
        """Context the stages run in (eval mode, device, inference mode); a no-op here.

        Returns
        -------
        context : context manager
        """
        return contextlib.nullcontext()

    @property
    @abstractmethod
    def n_stages(self):
        """Number of stages."""

    @property
    @abstractmethod
    def final_is_classifier(self):
        """Whether the last stage outputs the base model's class scores."""

    @abstractmethod
    def fit(self, X, y, sample_weight=None):
        """Prepare the stages on training data and measure their FLOPs.

        Sets ``stage_flops_``, ``vector_flops_`` and ``vector_dims_``.

        Parameters
        ----------
        X : array-like or backend input of shape (n_samples, ...)
            Training data, in any form :meth:`batches` accepts.
        y : array-like of shape (n_samples,) or None
            Raw training labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Per-sample weights for the stages that are trained.

        Returns
        -------
        self : StageAdapter
        """

    @abstractmethod
    def batches(self, X, y=None, batch_size=None):
        """Yield ``(Xb, yb)`` batches in the backend's native form.

        Parameters
        ----------
        X : array-like or backend input of shape (n_samples, ...)
            Data to cut into batches.
        y : array-like of shape (n_samples,), default=None
            Raw labels, cut along with ``X``.
        batch_size : int, default=None
            Rows per batch; ``None`` uses the adapter's default.

        Yields
        ------
        Xb : backend array of shape (n_batch, ...)
            numpy for scikit-learn, a torch tensor on the adapter's device for torch.
        yb : ndarray of shape (n_batch,) or None
            Raw labels of the batch, ``None`` when ``y`` is None.
        """

    @abstractmethod
    def run_stage(self, j, Z):
        """Output of stage ``j`` for its input batch ``Z``.

        Parameters
        ----------
        j : int
            Stage index.
        Z : backend array of shape (n, ...)
            Stage ``j``'s input batch (the batch itself for ``j == 0``).

        Returns
        -------
        Z_out : backend array of shape (n, ...)
            Stage ``j``'s output, same array type and device as ``Z``.
        """

    @abstractmethod
    def stage_vector(self, j, Z):
        """2-D feature matrix of stage ``j``'s output batch ``Z``.

        Parameters
        ----------
        j : int
            Stage index.
        Z : backend array of shape (n, ...)
            Stage ``j``'s output batch.

        Returns
        -------
        F : backend array of shape (n, D_j)
            The stage vectors the class means live in: numpy float64 for
            scikit-learn, a float32 tensor on the device for torch.
        """

    def final_outputs(self, Z):
        """Base model's ``(class_index, proba)`` from the last stage's input.

        Only called when :attr:`final_is_classifier` is True; raises
        ``NotImplementedError`` here.

        Parameters
        ----------
        Z : backend array of shape (n, ...)
            Input batch of the last stage.

        Returns
        -------
        class_index : array of int of shape (n,)
            Indices into the estimator's ``classes_`` (numpy, or a tensor on
            the batch's device).
        proba : array of shape (n, K)
            Class probabilities (numpy or torch).
        """
        raise NotImplementedError

    @property
    def frozen(self):
        """Whether :meth:`fit` trains nothing (a row's stage outputs do not depend on the
        training data), so one forward pass can serve fits on any subset of rows."""
        return False

    def take(self, Z, keep):
        """Rows of ``Z`` selected by a boolean mask or row positions.

        Parameters
        ----------
        Z : backend array of shape (n, ...)
        keep : array of shape (n,) of bool, or of int
            Numpy, or for torch adapters a tensor on ``Z``'s device.

        Returns
        -------
        Z_kept : backend array
            The selected rows.
        """
        return Z[keep]

    def n_rows(self, Z):
        """Number of rows of a batch.

        Parameters
        ----------
        Z : backend array of shape (n, ...)

        Returns
        -------
        n : int
        """
        return int(Z.shape[0])

    def to_numpy(self, a):
        """A backend array as a numpy array (used for small per-sample outputs).

        Parameters
        ----------
        a : backend array or array-like

        Returns
        -------
        a_np : ndarray
            A tensor is detached and copied to the host.
        """
        return to_numpy(a)

    def set_classes(self, classes):
        """Tell the adapter the estimator's sorted ``classes_`` (for the final classifier).

        Parameters
        ----------
        classes : array-like of shape (n_classes,)
            Sorted class labels; stored as ``classes_``.

        Returns
        -------
        self : StageAdapter
        """
        self.classes_ = np.asarray(classes)
        return self
