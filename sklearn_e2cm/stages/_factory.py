"""One entry point from an estimator's ``stages=`` parameter to a stage adapter."""

from sklearn.pipeline import Pipeline

from .._backend import is_torch_module
from .sklearn import SklearnStages

__all__ = ["is_torch_stages", "make_stage_adapter"]


def is_torch_stages(stages):
    """Whether ``stages`` is a torch network or a list of torch modules.

    Parameters
    ----------
    stages : None, list, Pipeline or torch module

    Returns
    -------
    bool

    Raises
    ------
    TypeError
        When a list mixes torch modules and other objects.
    """
    if stages is None or isinstance(stages, Pipeline):
        return False
    if is_torch_module(stages):
        return True
    if isinstance(stages, (list, tuple)) and stages:
        kinds = [is_torch_module(s) for s in stages]
        if any(kinds) and not all(kinds):
            raise TypeError(
                "stages mixes torch modules and other objects; pass either torch modules "
                "or scikit-learn estimators."
            )
        return all(kinds)
    return False


def make_stage_adapter(stages, *, pooling=None, device="cpu", batch_size=None,
                       final_classifier="auto"):
    """The stage adapter of an estimator's ``stages=`` parameter (not fitted yet).

    Parameters
    ----------
    stages : None, list, Pipeline or torch module
        Torch modules give a :class:`~sklearn_e2cm.stages.TorchStages`; anything
        else a :class:`~sklearn_e2cm.stages.SklearnStages`.
    pooling : None, int, tuple, str, list or callable, default=None
        Feature reduction of torch stage outputs (a callable is also accepted
        for scikit-learn stages).
    device : str or torch.device, default="cpu"
    batch_size : int, default=None
    final_classifier : "auto" or bool, default="auto"
        Whether the last stage is the base model's classifier.

    Returns
    -------
    adapter : StageAdapter
    """
    if is_torch_stages(stages):
        from .torch import TorchStages

        return TorchStages(stages, pooling=pooling, device=device, batch_size=batch_size,
                           final_classifier=final_classifier)
    if pooling is not None and not callable(pooling):
        raise ValueError(
            f"pooling={pooling!r} applies to torch stages (image-shaped outputs); "
            "scikit-learn stages output 2-D features. Use pooling=None."
        )
    adapter = SklearnStages(stages, batch_size=batch_size)
    if final_classifier is True and not adapter.final_is_classifier:
        raise ValueError(
            "final_classifier=True but the last stage is not a classifier "
            f"({type(adapter.steps[-1]).__name__})."
        )
    return adapter
