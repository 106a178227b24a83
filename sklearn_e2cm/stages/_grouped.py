"""A stage adapter whose stages are runs of another adapter's stages.

Early-exit methods with trained internal classifiers (SDN, BranchyNet, BWDS)
place exits after a few chosen stages only. :class:`GroupedStages` merges the
stages between two exits into one, so that every stage of the grouped view
ends in an exit and the router, the exit tables and the cost model serve it
unchanged: grouped stage ``g`` runs the base stages ``exits[g-1]+1 ..
exits[g]``; the last grouped stage runs the rest of the network.
"""

import numpy as np

from .base import StageAdapter

__all__ = ["GroupedStages"]

#: Base attributes that describe the whole model, not one stage, and are read from the base
#: as they are. Anything indexed by base stage is not in this list (its length would be
#: wrong for the grouped view); the per-group ones are the properties of the class.
_FORWARDED = frozenset({"input_shape_", "input_dtype_", "device_"})


class GroupedStages(StageAdapter):
    """View of a fitted :class:`StageAdapter` with exits after ``exits`` only.

    Parameters
    ----------
    base : StageAdapter
        A fitted adapter (its FLOPs and vector sizes are known).
    exits : sequence of int
        Base stage indices, strictly increasing, in ``[0, base.n_stages - 2]``,
        after which an exit is placed. The last base stage always ends the
        last grouped stage.
    stage_flops : array-like of shape (base.n_stages,), default=None
        Per-stage FLOPs overriding ``base.stage_flops_`` (resolved stage costs).

    Attributes indexed by *base* stage (``stage_names_``, ``output_shapes_``,
    ...) are not forwarded: only the per-group properties below are defined.
    """

    def __init__(self, base, exits, stage_flops=None):
        M = base.n_stages
        exits = [int(e) for e in exits]
        if any(b <= a for a, b in zip(exits, exits[1:])) or (
                exits and (exits[0] < 0 or exits[-1] > M - 2)):
            raise ValueError(
                f"exits must be strictly increasing stage indices in [0, {M - 2}]; got {exits}."
            )
        self.base = base
        self.exits = exits
        self.ends = exits + [M - 1]  # last base stage of every group
        self.starts = [0] + [e + 1 for e in exits]
        self.backend = base.backend
        self._stage_flops = None if stage_flops is None else np.asarray(stage_flops, float)

    # ------------------------------------------------------------ properties
    @property
    def n_stages(self):
        return len(self.ends)

    @property
    def final_is_classifier(self):
        return self.base.final_is_classifier

    @property
    def frozen(self):
        return self.base.frozen

    def _group_sum(self, values):
        v = np.asarray(values, dtype=np.float64)
        return np.array([v[s:e + 1].sum() for s, e in zip(self.starts, self.ends)])

    @property
    def stage_flops_(self):
        flops = self.base.stage_flops_ if self._stage_flops is None else self._stage_flops
        return self._group_sum(flops)

    @property
    def vector_flops_(self):
        return np.asarray(self.base.vector_flops_, dtype=np.float64)[self.ends]

    @property
    def vector_dims_(self):
        return np.asarray(self.base.vector_dims_)[self.ends]

    @property
    def cost_errors_(self):
        errors = self.base.cost_errors_ or {}
        out = {}
        for g, (s, e) in enumerate(zip(self.starts, self.ends)):
            for j in range(s, e + 1):
                if j in errors:
                    out.setdefault(g, errors[j])
        return out

    def __getattr__(self, name):
        # only whole-model attributes of the base (input shape, output width, device)
        if name not in _FORWARDED or "base" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r} (attributes indexed by base "
                "stage are not forwarded)")
        return getattr(self.base, name)

    @property
    def n_outputs_(self):
        return self.base.n_outputs_

    # --------------------------------------------------------------- running
    def fit(self, X, y=None, sample_weight=None):
        """The base adapter is fitted already; nothing to do.

        Parameters
        ----------
        X, y, sample_weight : Ignored
            Present for the :class:`~sklearn_e2cm.stages.base.StageAdapter`
            interface.

        Returns
        -------
        self : GroupedStages
        """
        return self

    def activate(self):
        """The base adapter's inference context.

        Returns
        -------
        context : context manager
            ``self.base.activate()``.
        """
        return self.base.activate()

    def batches(self, X, y=None, batch_size=None):
        """The base adapter's batches (see :meth:`StageAdapter.batches`).

        Parameters
        ----------
        X : array-like or backend input of shape (n_samples, ...)
        y : array-like of shape (n_samples,), default=None
        batch_size : int, default=None

        Returns
        -------
        batches : iterator of (Xb, yb)
            ``Xb`` in the base adapter's native array type, ``yb`` numpy labels or None.
        """
        return self.base.batches(X, y, batch_size)

    def run_stage(self, g, Z):
        """Output of group ``g``: the base stages of the group run in sequence.

        For the last group of a classifier chain the base model's classifier is
        left out (it runs in :meth:`final_outputs`).

        Parameters
        ----------
        g : int
            Group index.
        Z : backend array of shape (n, ...)
            Input batch of the group's first base stage.

        Returns
        -------
        Z_out : backend array of shape (n, ...)
            Output of the group's last base stage run, in the base adapter's array
            type and device.
        """
        stop = self.ends[g]
        if g == self.n_stages - 1 and self.final_is_classifier:
            stop -= 1  # the base model's classifier runs in final_outputs
        for j in range(self.starts[g], stop + 1):
            Z = self.base.run_stage(j, Z)
        return Z

    def stage_vector(self, g, Z):
        """Stage vector of group ``g``: that of its last base stage.

        Parameters
        ----------
        g : int
            Group index.
        Z : backend array of shape (n, ...)
            Output batch of group ``g``.

        Returns
        -------
        F : backend array of shape (n, vector_dims_[g])
        """
        return self.base.stage_vector(self.ends[g], Z)

    def final_outputs(self, Z):
        """Base model's ``(class_index, proba)`` from the last group's input.

        Runs the last group but its classifier, then the base adapter's
        :meth:`final_outputs`.

        Parameters
        ----------
        Z : backend array of shape (n, ...)
            Input batch of the last group.

        Returns
        -------
        class_index : array of int of shape (n,)
        proba : array of shape (n, K)
            As the base adapter returns them (numpy, or tensors on the batch's
            device).
        """
        Z = self.run_stage(self.n_stages - 1, Z)
        return self.base.final_outputs(Z)

    def take(self, Z, keep):
        """Rows of ``Z`` selected by a boolean mask or row positions (the base adapter's).

        Parameters
        ----------
        Z : backend array of shape (n, ...)
        keep : array of shape (n,) of bool, or of int
            Numpy, or for torch stages a tensor on ``Z``'s device.

        Returns
        -------
        Z_kept : backend array
        """
        return self.base.take(Z, keep)

    def n_rows(self, Z):
        """Number of rows of a batch (the base adapter's).

        Parameters
        ----------
        Z : backend array of shape (n, ...)

        Returns
        -------
        n : int
        """
        return self.base.n_rows(Z)

    def to_numpy(self, a):
        """A backend array as a numpy array (the base adapter's).

        Parameters
        ----------
        a : backend array or array-like

        Returns
        -------
        a_np : ndarray
        """
        return self.base.to_numpy(a)

    def set_classes(self, classes):
        """Pass the estimator's sorted ``classes_`` on to the base adapter.

        Parameters
        ----------
        classes : array-like of shape (n_classes,)

        Returns
        -------
        self : GroupedStages
        """
        self.base.set_classes(classes)
        return self

    @property
    def classes_(self):
        return self.base.classes_

    def __getstate__(self):
        return self.__dict__.copy()

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        return f"GroupedStages({self.base!r}, exits={self.exits})"
