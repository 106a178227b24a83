"""Stage adapters: make any staged extractor look the same to the exit heads.

``SklearnStages`` wraps a list of scikit-learn transformers (optionally ending
in a classifier); ``TorchStages`` and :func:`split_into_stages` (torch, imported
on first use) wrap a trained network.
"""

from ._factory import is_torch_stages, make_stage_adapter
from .base import StageAdapter
from .sklearn import SklearnStages

__all__ = ["StageAdapter", "SklearnStages", "TorchStages", "split_into_stages",
           "is_torch_stages", "make_stage_adapter"]


def __getattr__(name):
    if name in ("TorchStages", "split_into_stages"):
        from . import torch as _torch_stages

        return getattr(_torch_stages, name)
    raise AttributeError(f"module 'sklearn_e2cm.stages' has no attribute {name!r}")
