"""sklearn-e2cm: Early Exit Class Means (E²CM) as scikit-learn estimators.

E²CM adds gradient-free early exits to an already-trained staged model: after
every stage the stage output is compared with the mean output of each class,
and a sample that is close enough to one class mean leaves the model there.

The scikit-learn path never imports torch; torch-backed features import it
when they are used.
"""

__version__ = "0.2.0.dev0"

_LAZY = {
    "EarlyExitClassMeans": "sklearn_e2cm.early_exit",
    "FlopBudgetSearchCV": "sklearn_e2cm.search",
    "InternalClassifierEarlyExit": "sklearn_e2cm.internal",
    "DEC": "sklearn_e2cm.cluster",
    "DECEarlyExit": "sklearn_e2cm.cluster",
    "TradeoffDisplay": "sklearn_e2cm.plotting",
    "save_exits": "sklearn_e2cm.persistence",
    "load_exits": "sklearn_e2cm.persistence",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'sklearn_e2cm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
