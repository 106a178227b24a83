"""The contract between exit heads and the router.

Every exit head (class means, whitened class means, a trained internal
classifier) offers the members of :class:`ExitHeadProtocol`; the router,
the tuning passes and the cost model call nothing else.
"""

from typing import Protocol, runtime_checkable

__all__ = ["ExitHeadProtocol"]


@runtime_checkable
class ExitHeadProtocol(Protocol):
    """What the router calls on the exit head of one stage.

    ``F`` is a batch of stage vectors, shape (n, D), a numpy array or a torch
    tensor on the stages' device; results keep its array type and device.
    """

    def decide(self, F):
        """Class probabilities and exit confidence of a batch.

        Parameters
        ----------
        F : array of shape (n, D)

        Returns
        -------
        P : array of shape (n, n_classes)
            Class probabilities (the prediction is their argmax).
        conf : array of shape (n,) or None
            Confidence compared with the stage's threshold (exit when
            ``conf > T``); ``None`` means the largest probability.
        """

    def proba(self, F):
        """Class probabilities of a batch.

        Parameters
        ----------
        F : array of shape (n, D)

        Returns
        -------
        P : array of shape (n, n_classes)
        """

    def flops(self):
        """Per-sample FLOPs of :meth:`decide` (multiply-add counted as 2).

        Returns
        -------
        flops : float
        """

    def nbytes(self, itemsize=None):
        """Bytes the head holds (``None``), or stores for inference with ``itemsize``-byte floats.

        Parameters
        ----------
        itemsize : int or None, default=None
            ``None``: every array the head holds now, as stored, with its
            copies on other devices (what ``memory_overhead_bytes_`` sums).

        Returns
        -------
        nbytes : int
        """
