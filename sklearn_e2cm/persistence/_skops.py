"""The types a ``skops.io`` file of a scikit-learn-only estimator asks the user to trust.

``skops`` is not a dependency of sklearn-e2cm: it is imported when
:func:`skops_trusted_types` is called.
"""

import os

__all__ = ["skops_trusted_types"]


def _import_skops():
    try:
        import skops.io as sio
    except ImportError as exc:
        raise ImportError(
            "skops_trusted_types needs skops, which sklearn-e2cm does not install: "
            "pip install skops") from exc
    return sio


def _state_types():
    """``module.name`` of the package's classes that hold a fitted estimator's state.

    These are the objects a fitted :class:`~sklearn_e2cm.EarlyExitClassMeans`
    or :class:`~sklearn_e2cm.InternalClassifierEarlyExit` on scikit-learn
    stages is made of: the estimators, their stage adapters, exit heads,
    streamed class statistics, and the error a stage adapter keeps for a step
    whose cost is given by ``stage_costs=`` (rebuilt from its message).
    Functions and any other class are left out.
    """
    from .._flops import UnknownCostError
    from .._fitting.class_statistics import ClassStatistics
    from .._fitting.inputs import LabelIndex
    from ..early_exit import EarlyExitClassMeans
    from ..exits.class_means import ExitHead
    from ..exits.internal_classifier import InternalClassifierHead
    from ..exits.statistics import ClassStatsAccumulator
    from ..internal import InternalClassifierEarlyExit
    from ..stages._grouped import GroupedStages
    from ..stages.sklearn import SklearnStages

    classes = (EarlyExitClassMeans, InternalClassifierEarlyExit, SklearnStages, GroupedStages,
               ExitHead, InternalClassifierHead, ClassStatistics, ClassStatsAccumulator,
               LabelIndex, UnknownCostError)
    return {f"{c.__module__}.{c.__name__}" for c in classes}


def skops_trusted_types(source):
    """The sklearn-e2cm types to pass to ``skops.io.load(..., trusted=...)`` for ``source``.

    ``skops.io`` loads only the types it is told to trust, and trusts none
    of this package's. For a file of a fitted
    :class:`~sklearn_e2cm.EarlyExitClassMeans` or
    :class:`~sklearn_e2cm.InternalClassifierEarlyExit` on scikit-learn stages,
    this returns the untrusted types ``skops.io.get_untrusted_types`` reports
    that are the package's own state classes (the estimators, their stage
    adapters, exit heads and class statistics), and nothing else: a type of
    another package, a function, or any other name under ``sklearn_e2cm``
    is left out, so ``skops.io.load`` still refuses the file until you have
    reviewed that type yourself.

    What trusting means: ``skops.io.load`` creates an object of a trusted
    type without calling its ``__init__`` and gives it the attributes the
    file holds (through ``__setstate__`` or ``__dict__``). These classes run
    no code named by the file when they are created, and skops refuses every
    function or type you did not trust, so loading such a file does not run
    arbitrary code. It does not make the file's content right: a tampered
    file can hold any class means, thresholds or scikit-learn steps, and the
    estimator predicts whatever they say. Trust the file's origin as you
    would trust the model itself.

    The skops file holds the whole estimator, stages included, except the
    tuning arrays (pickling drops them too): the loaded estimator predicts
    and routes exactly as the saved one, but ``set_operating_point`` needs a
    refit. :func:`~sklearn_e2cm.save_exits` keeps them (``include_tuning``).

    Parameters
    ----------
    source : str, path-like, bytes or estimator
        A file written by ``skops.io.dump``, the bytes of ``skops.io.dumps``,
        or a fitted estimator (dumped in memory to list its types).

    Returns
    -------
    types : list of str
        Sorted ``module.ClassName`` names, as ``skops.io`` spells them.

    Raises
    ------
    ImportError
        When skops is not installed (``pip install skops``; it is not a
        dependency of sklearn-e2cm).

    Examples
    --------
    >>> import os, tempfile
    >>> import skops.io as sio
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_e2cm import EarlyExitClassMeans
    >>> from sklearn_e2cm.persistence import skops_trusted_types
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = EarlyExitClassMeans().fit(X, y)
    >>> path = os.path.join(tempfile.mkdtemp(), "e2cm.skops")
    >>> sio.dump(clf, path)
    >>> trusted = skops_trusted_types(path)
    >>> "sklearn_e2cm.early_exit.EarlyExitClassMeans" in trusted
    True
    >>> [t for t in sio.get_untrusted_types(file=path) if t not in trusted]  # nothing else
    []
    >>> same = sio.load(path, trusted=trusted)
    >>> bool((same.predict(X) == clf.predict(X)).all())
    True
    """
    sio = _import_skops()
    if isinstance(source, (bytes, bytearray)):
        found = sio.get_untrusted_types(data=bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        found = sio.get_untrusted_types(file=os.fspath(source))
    else:
        found = sio.get_untrusted_types(data=sio.dumps(source))
    return sorted(set(found) & _state_types())
