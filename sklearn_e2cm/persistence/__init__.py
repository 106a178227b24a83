"""Save and load fitted exits without pickle: no code runs when a file is loaded.

``joblib`` / ``pickle`` files of an estimator run code on load (any object in
the file can name any importable callable), and loading one needs the
network's Python classes importable. :func:`save_exits` writes only what the
exits learned, as plain data: a JSON document (parameters, labels, shapes,
format version) and numeric arrays (class means, eq. 4 scales, whitening
matrices, thresholds, the time-sharing mixture, the trade-off table and,
optionally, the tuning arrays that :meth:`set_operating_point` searches).
:func:`load_exits` reads them with ``allow_pickle=False`` and nothing else:
no ``eval``, no import named by the file, no pickled object.

The stages are not stored. The user loads the network (or the fitted
scikit-learn steps) their usual way and passes it to :func:`load_exits`,
which checks it against what the exits were fitted on: number of stages,
every stage's output shape and FLOPs, the stage-vector widths, and for torch
stages a SHA-256 digest of every stage's weights (a warning when they
differ: a network trained again, or another one of the same shape).

:class:`~sklearn_e2cm.DEC` and :class:`~sklearn_e2cm.DECEarlyExit` train
their networks themselves, from their own parameters (layer sizes, number of
features, embedding size): there is nothing for the user to pass back, so the
file holds the networks, as layer sizes (JSON) and weight arrays, and
:func:`load_exits` rebuilds them with the package's own builder.

File layout: one ``.npz`` archive (a zip file) holding ``metadata.json`` and
one ``.npy`` member per array; it opens with any zip tool. A file records the
oldest format version that reads it (:data:`FORMAT_VERSION` is the newest
this package reads): 1 for exits on stages the user passes back, 2 for files
that hold networks.

scikit-learn-only estimators can also be written with ``skops.io``; see
:func:`skops_trusted_types` for the types such a file asks the user to trust.
"""

import os
import re

import numpy as np

from .. import __version__
from .._exit_estimator import EarlyExitBase
from ..cluster import DEC, DECEarlyExit
from ..early_exit import EarlyExitClassMeans
from ..internal import InternalClassifierEarlyExit
from ..stages import make_stage_adapter
from ..stages._grouped import GroupedStages
from ._dec import check_dec_early_exit_state, check_dec_state, check_rebuilt_adapter
from ._format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    NETWORKS_VERSION,
    _decode,
    _encode,
    _Reader,
    _Unstorable,
    _write_atomic,
    _Writer,
)
from ._skops import skops_trusted_types
from ._stages import (
    _adapter_fingerprint,
    _check_fitted_state,
    _check_sklearn_fitted,
    _check_stages,
    _check_steps_are_given,
    _probe_fit,
)

__all__ = ["save_exits", "load_exits", "skops_trusted_types", "FORMAT_NAME", "FORMAT_VERSION"]


#: Estimators this module can write, by the class name stored in the file.
_SUPPORTED = {"EarlyExitClassMeans": EarlyExitClassMeans,
              "InternalClassifierEarlyExit": InternalClassifierEarlyExit,
              "DEC": DEC,
              "DECEarlyExit": DECEarlyExit}

#: Estimators that train their own networks: the file holds them (format version 2).
_OWN_NETWORKS = ("DEC", "DECEarlyExit")

#: Parameters renamed since format version 1 was defined: the name files store -> the new
#: name. Files keep the stored name (releases that know only it still read them).
_RENAMED = {"n_targets": "sweep_resolution"}


def save_exits(estimator, path, *, include_tuning=True):
    """Write a fitted estimator's exits to ``path`` as plain data (JSON + arrays).

    Nothing in the file is executable: :func:`load_exits` reads it with
    ``numpy.load(..., allow_pickle=False)`` and ``json``. The stages (the
    network, the fitted scikit-learn steps) are not stored; pass them to
    :func:`load_exits`. The file is written to a temporary file in the same
    folder and moved into place, so an interrupted save never leaves a
    partial file at ``path``.

    Parameters
    ----------
    estimator : EarlyExitClassMeans, InternalClassifierEarlyExit, DECEarlyExit or DEC
        Fitted. The scikit-learn steps of an ``EarlyExitClassMeans`` or
        ``InternalClassifierEarlyExit`` must have been fitted before the
        estimator's ``fit`` (steps it fitted itself exist only inside it and
        could not be passed back at load time). ``DEC`` and ``DECEarlyExit``
        own their networks: the file holds them (layer sizes and weight
        arrays) and :func:`load_exits` needs no stages.
    path : str or path-like
        Destination file (conventionally ``*.npz``); replaced if it exists.
    include_tuning : bool, default=True
        Also store the tuning rows' exit arrays (``N × n_stages`` confidences
        and correctness), which :meth:`set_operating_point` needs after
        loading.

    Returns
    -------
    path : str
        The written path.

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_e2cm import EarlyExitClassMeans, save_exits, load_exits
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = EarlyExitClassMeans(flops_target=None).fit(X, y)
    >>> path = os.path.join(tempfile.mkdtemp(), "exits.npz")
    >>> _ = save_exits(clf, path)
    >>> same = load_exits(path)  # stages=None: the input is the only stage
    >>> bool((same.predict(X) == clf.predict(X)).all())
    True
    """
    from sklearn.utils.validation import check_is_fitted

    name = type(estimator).__name__
    if not isinstance(estimator, (EarlyExitBase, DEC)):
        raise TypeError(f"save_exits needs a fitted early-exit estimator or DEC; got {name}.")
    if type(estimator) not in _SUPPORTED.values():
        raise NotImplementedError(
            f"save_exits does not support {name}, a subclass (it supports "
            f"{', '.join(sorted(_SUPPORTED))}). Use joblib/pickle only for files you trust.")
    check_is_fitted(estimator)
    if name in _OWN_NETWORKS:
        meta, arrays = _dump_own_networks(estimator, include_tuning)
    else:
        meta, arrays = _dump(estimator, include_tuning)
    _write_atomic(os.fspath(path), meta, arrays)
    return os.fspath(path)


def _dump_params(est):
    """JSON form of the parameters, and the names of those that have none.

    A renamed parameter is stored under the name files have always used
    (``_RENAMED``), with the value the estimator uses.
    """
    given = est.get_params(deep=False)
    values = {k: v for k, v in given.items() if k != "stages" and k not in _RENAMED.values()}
    for old, new in _RENAMED.items():
        if new in given:
            legacy = values.get(old)
            use_new = legacy is None or (isinstance(legacy, str) and legacy == "deprecated")
            values[old] = given[new] if use_new else legacy
    params, unstored = {}, []
    for key, value in values.items():
        try:
            params[key] = _encode(value)
        except _Unstorable:
            unstored.append(key)
    return params, unstored


def _dump(est, include_tuning):
    adapter = est._adapter
    grouped = isinstance(adapter, GroupedStages)
    base = adapter.base if grouped else adapter
    _check_steps_are_given(est, base)
    unseen = getattr(est, "_unseen_classes", None)
    if unseen is not None:
        raise ValueError(
            f"Classes {np.asarray(unseen).tolist()[:20]} have no training rows yet; "
            "partial_fit rows of every class before saving.")
    params, unstored = _dump_params(est)
    writer = _Writer()
    attributes = _dump_attributes(est, writer, include_tuning)
    adapter_meta = {"grouped": grouped}
    if grouped:
        adapter_meta["exits"] = [int(e) for e in adapter.exits]
        adapter_meta["stage_flops"] = writer.value(adapter._stage_flops, "adapter.stage_flops")
    meta = {
        **_header(est, 1),
        "params": params,
        "unstored_params": unstored,
        "attributes": attributes,
        "adapter": adapter_meta,
        "stages": _adapter_fingerprint(base),
    }
    return meta, writer.arrays


def _header(est, version):
    return {"format": FORMAT_NAME, "format_version": version, "package_version": __version__,
            "estimator": type(est).__name__}


def _dump_attributes(est, writer, include_tuning, prefix="attr", skip=()):
    """``[name, value]`` of every fitted attribute but the stage adapter and ``skip``."""
    params = est.get_params(deep=False)
    attributes = []
    for key, value in vars(est).items():
        if key in params or key == "_adapter" or key in skip:
            continue
        if key == "_tuning_table" and not include_tuning:
            continue
        try:
            attributes.append([key, writer.value(value, f"{prefix}.{key}")])
        except _Unstorable as exc:
            raise NotImplementedError(
                f"{type(est).__name__}.{key} holds a {exc}, which save_exits cannot store as "
                "plain data.") from exc
    return attributes


def _dump_own_networks(est, include_tuning):
    """DEC / DECEarlyExit: parameters, fitted arrays and the networks (format version 2)."""
    writer = _Writer(networks=True)
    params, unstored = _dump_params(est)
    meta = {**_header(est, NETWORKS_VERSION), "params": params, "unstored_params": unstored}
    if isinstance(est, DECEarlyExit):
        dec_params, dec_unstored = _dump_params(est.dec_)
        meta["dec"] = {"params": dec_params, "unstored_params": dec_unstored,
                       "attributes": _dump_attributes(est.dec_, writer, True, "dec")}
        skip = ("dec_",)  # stored above; the stage adapter is rebuilt from the networks
    else:
        skip = ()
    meta["attributes"] = _dump_attributes(est, writer, include_tuning, skip=skip)
    return meta, writer.arrays


def load_exits(path, stages=None, *, check_weights="warn", **params):
    """Rebuild an estimator saved by :func:`save_exits`, on the stages given.

    Reading the file runs no code from it: JSON and ``numpy.load`` with
    ``allow_pickle=False`` only. The stages are checked against what the
    exits were fitted on (number of stages, output shapes and widths, FLOPs)
    and a mismatch raises ``ValueError`` naming the stage.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save_exits`.
    stages : None, list, Pipeline or torch module, default=None
        The stages the exits were fitted on, loaded by the caller: the trained
        network (same stage split), or the fitted scikit-learn steps. Leave it
        ``None`` for a ``DEC`` or ``DECEarlyExit`` file: the file holds their
        networks, rebuilt by the package's own builder from the stored layer
        sizes (no class named by the file is imported).
    check_weights : {"warn", "raise", "ignore"}, default="warn"
        What to do when a torch stage's weights differ from those the exits
        were fitted on (SHA-256 of every parameter and buffer).
    **params
        Estimator parameters that override the stored ones, e.g. ``device=``,
        or ``pooling=`` when it was a callable (callables are not stored).

    Returns
    -------
    estimator : EarlyExitClassMeans, InternalClassifierEarlyExit, DECEarlyExit or DEC
        Fitted; predicts exactly as the saved one on the same stages.
        ``set_operating_point`` works when the file holds the tuning arrays.

    Raises
    ------
    ValueError
        Not a saved-exits file, a newer format version, a corrupt or
        truncated file, pickled content, or stages that do not match.

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn_e2cm import DECEarlyExit, save_exits, load_exits
    >>> X, _ = make_blobs(n_samples=200, centers=3, n_features=8, random_state=0)
    >>> ee = DECEarlyExit(n_clusters=3, hidden=(16, 16), embedding_dim=3, pretrain_epochs=2,
    ...                   max_iter=20, n_init=1, flops_target=0.6, sweep_resolution=100,
    ...                   random_state=0).fit(X)
    >>> path = save_exits(ee, os.path.join(tempfile.mkdtemp(), "dec.npz"))
    >>> same = load_exits(path)  # the file holds the networks: no stages to pass
    >>> bool((same.predict(X) == ee.predict(X)).all())
    True
    """
    if check_weights not in ("warn", "raise", "ignore"):
        raise ValueError(
            f"check_weights must be 'warn', 'raise' or 'ignore'; got {check_weights!r}.")
    with _Reader(path) as reader:
        meta = reader.meta
        _check_header(meta, reader.path)
        cls = _SUPPORTED[meta["estimator"]]
        valid = set(cls().get_params(deep=False)) - {"stages"}
        unknown = sorted(set(params) - valid)
        if unknown:
            raise TypeError(f"load_exits got unknown parameters {unknown}; "
                            f"{cls.__name__} parameters are {sorted(valid)}.")
        if meta["estimator"] in _OWN_NETWORKS and stages is not None:
            raise ValueError(
                f"{reader.path} holds a {cls.__name__}, which trains its own networks; the "
                "file holds them. Call load_exits(path) without stages.")
        try:
            if meta["estimator"] in _OWN_NETWORKS:
                return _load_own_networks(cls, valid, reader, params)
            return _load(cls, valid, reader, stages, params, check_weights)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(
                f"{reader.path}: the metadata is incomplete or malformed ({type(exc).__name__}: "
                f"{exc}); the file was edited or truncated.") from exc


def _check_header(meta, path):
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{path} is not a saved-exits file (its metadata has no format "
            f"{FORMAT_NAME!r}).")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: invalid format version {version!r}.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version} (written by sklearn-e2cm "
            f"{meta.get('package_version')!r}); this sklearn-e2cm ({__version__}) reads "
            f"versions up to {FORMAT_VERSION}. Upgrade sklearn-e2cm to load it.")
    if meta.get("estimator") not in _SUPPORTED:
        raise ValueError(
            f"{path}: unknown estimator {meta.get('estimator')!r}; this version loads "
            f"{sorted(_SUPPORTED)}.")
    if meta["estimator"] in _OWN_NETWORKS and version < NETWORKS_VERSION:
        raise ValueError(
            f"{path}: a {meta['estimator']} file has format version {version}; its networks "
            f"are stored from version {NETWORKS_VERSION} (the file was edited).")


def _new_estimator(cls, valid, stored, unstored, overrides, path):
    """``cls`` with the stored parameters, ``overrides`` on top (validated).

    A parameter the file could not store (a callable, a RandomState) must be
    in ``overrides``. Parameters stored under a name since renamed are given
    under the new name.
    """
    stored = dict(stored)
    for old, new in _RENAMED.items():
        if old in stored and new not in stored and new in valid:
            stored[new] = stored.pop(old)
    params = {k: _decode(v, f"{path}: parameter {k!r}") for k, v in stored.items()
              if k in valid}
    missing = [k for k in unstored if k not in overrides]
    if missing:
        raise ValueError(
            f"{path}: parameters {missing} were not stored (their values are Python objects, "
            f"e.g. a callable or a RandomState); pass them to load_exits as keyword arguments "
            f"({missing[0]}=...).")
    params.update(overrides)
    est = cls(**params)
    est._validate_params()
    return est


def _read_attributes(cls, valid, entries, reader, refused=()):
    """The fitted attributes stored as ``[name, value]`` pairs (names checked first)."""
    attributes = {}
    for key, value in entries:
        if (not _is_fitted_attribute_name(cls, key) or key in valid or key == "_adapter"
                or key in refused):
            raise ValueError(f"{reader.path}: attribute name {key!r} is not a fitted attribute.")
        attributes[key] = reader.value(value)
    return attributes


def _load(cls, valid, reader, stages, overrides, check_weights):
    meta = reader.meta
    path = reader.path
    est = _new_estimator(cls, valid, meta["params"], meta["unstored_params"],
                         dict(overrides, stages=stages), path)
    attributes = _read_attributes(cls, valid, meta["attributes"], reader)

    fp = meta["stages"]
    base = make_stage_adapter(est.stages, pooling=est.pooling, device=est.device,
                              batch_size=est.batch_size, final_classifier=est.final_classifier)
    if base.backend != fp["backend"]:
        raise ValueError(
            f"The exits were fitted on {fp['backend']} stages; the stages given are "
            f"{base.backend} stages.")
    if base.backend == "torch":
        shape = tuple(attributes["input_shape_"])
        _probe_fit(base, np.zeros((1,) + shape, dtype=np.float32))
    else:
        _check_sklearn_fitted(base)
        _probe_fit(base, np.zeros((2, int(attributes["n_features_in_"]))))
    classes = attributes["classes_"]
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or len(classes) < 2:
        raise ValueError(f"{path}: classes_ is not a 1-D array of at least 2 labels.")
    base.set_classes(classes)
    _check_stages(base, fp, path, check_weights)
    adapter = base
    if meta["adapter"]["grouped"]:
        adapter = GroupedStages(base, meta["adapter"]["exits"],
                                stage_flops=reader.value(meta["adapter"]["stage_flops"]))
    _check_fitted_state(attributes, adapter, path)
    vars(est).update(attributes)
    est._adapter = adapter
    return est


def _load_own_networks(cls, valid, reader, overrides):
    """DEC / DECEarlyExit: the networks rebuilt from the file, checked against the parameters."""
    meta, path = reader.meta, reader.path
    est = _new_estimator(cls, valid, meta["params"], meta["unstored_params"], overrides, path)
    attributes = _read_attributes(cls, valid, meta["attributes"], reader, refused=("dec_",))
    if cls is DEC:
        check_dec_state(est, attributes, path)
        vars(est).update(attributes)
        return est
    # the large DEC, with its stored parameters; an override (device=...) applies to it too
    dec_valid = set(DEC().get_params(deep=False))
    stored = meta["dec"]
    dec = _new_estimator(DEC, dec_valid, stored["params"], stored["unstored_params"],
                         {k: v for k, v in overrides.items() if k in dec_valid}, path)
    dec_attributes = _read_attributes(DEC, dec_valid, stored["attributes"], reader)
    check_dec_state(dec, dec_attributes, path)
    vars(dec).update(dec_attributes)
    check_dec_early_exit_state(est, dec, attributes, path)
    # the stage adapter, built by the estimator's own code from the rebuilt networks
    adapter = est._make_adapter(dec, attributes["exit_encoders_"], attributes["exit_depths_"])
    check_rebuilt_adapter(adapter, attributes, path)
    _check_fitted_state(attributes, adapter, path)
    vars(est).update(attributes)
    est.dec_ = dec
    est._adapter = adapter
    return est


def _is_fitted_attribute_name(cls, key):
    """``name_`` or ``_name``, and not a method or property of the class."""
    return (isinstance(key, str) and re.fullmatch(r"_?[a-z][a-z0-9_]*", key) is not None
            and (key.endswith("_") or key.startswith("_")) and not key.startswith("__")
            and not hasattr(cls, key))
