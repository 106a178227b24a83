"""The file format of saved exits: plain-data encoding, the writer and the reader.

One ``.npz`` archive (a zip file) holds ``metadata.json`` and one ``.npy``
member per array. Values are encoded as JSON with a few tags (tuples, dicts,
non-finite floats, arrays kept aside by name, exit heads, data frames, exit
tables, class statistics and, from format version 2, the Linear/ReLU
networks that DEC trains, as layer sizes and arrays); the reader accepts only
those tags and reads arrays with ``allow_pickle=False``, so nothing in a file
can run code.

Versions. ``FORMAT_VERSION`` is the newest layout this package reads and
writes; a file records the oldest layout that can read it. Version 1 holds
fitted exits on stages the user passes back (``EarlyExitClassMeans``,
``InternalClassifierEarlyExit``): such files are unchanged and still say 1,
so older releases read them. Version 2 adds the networks of ``DEC`` and
``DECEarlyExit``. A reader refuses files of a newer version than its own.
"""

import io
import json
import numbers
import os
import tempfile
import zipfile
import zlib

import numpy as np
import pandas as pd

from .._fitting.class_statistics import ClassStatistics
from .._thresholds import ExitTable
from ..exits.class_means import ExitHead
from ..exits.internal_classifier import InternalClassifierHead
from ._dec import is_torch_module, mlp_state, rebuilt_mlp

__all__ = ["FORMAT_NAME", "FORMAT_VERSION"]


#: Written in every file; a file without it is not a saved-exits file.
FORMAT_NAME = "sklearn-e2cm-exits"


#: Newest file layout this package reads and writes; files of a newer version are refused.
#: A file records the oldest version that reads it (1 unless it holds networks: 2).
FORMAT_VERSION = 2


#: The first format version that stores trained networks (DEC, DECEarlyExit).
NETWORKS_VERSION = 2


_META = "metadata.json"


#: Exit-head classes a file may name (rebuilt from their plain state, nothing else).
_HEADS = {"ExitHead": ExitHead, "InternalClassifierHead": InternalClassifierHead}


class _Unstorable(Exception):
    """A parameter value that has no plain-data form (a callable, an object)."""


def _encode(value):
    """JSON form of a parameter value; ``_Unstorable`` when it has none."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        return v if np.isfinite(v) else {"__float__": repr(v)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"__array__": [_encode(v) for v in value.ravel().tolist()],
                "dtype": value.dtype.str, "shape": list(value.shape)}
    raise _Unstorable(type(value).__name__)


def _decode(value, where):
    """Inverse of :func:`_encode`; only the tags it writes are accepted."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in ("nan", "inf", "-inf"):
            return float(value["__float__"])
        if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
            return tuple(_decode(v, where) for v in value["__tuple__"])
        if set(value) == {"__dict__"} and isinstance(value["__dict__"], list):
            return {_decode(k, where): _decode(v, where) for k, v in value["__dict__"]}
        if set(value) == {"__array__", "dtype", "shape"}:
            dtype = np.dtype(value["dtype"])
            if dtype.kind not in "biuf":
                raise ValueError(f"{where}: array of dtype {dtype} is not plain numbers.")
            return np.asarray([_decode(v, where) for v in value["__array__"]],
                              dtype=dtype).reshape(value["shape"])
    raise ValueError(f"{where}: unexpected value {value!r:.80} in the file.")


def _labels_to_array(labels, what):
    """Labels as an array ``np.load`` reads without pickle, and the dtype to restore."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "biufU":
        return labels, None
    if labels.dtype.kind == "O":
        items = labels.tolist()
        if all(isinstance(v, str) for v in items):
            return np.asarray(items, dtype=str), "object"
    raise ValueError(
        f"{what} of dtype {labels.dtype} (e.g. {labels.ravel()[:3].tolist()}) cannot be saved "
        "without pickle; save_exits stores bool, integer, float and string labels."
    )


def _labels_from_array(arr, restore):
    return arr.astype(object) if restore == "object" else arr


class _Writer:
    """Plain-data form of fitted attributes: JSON values, arrays kept aside by name.

    With ``networks=True`` (files of version 2) the Linear/ReLU networks DEC
    builds are stored as layer sizes and arrays; any other torch module is
    refused.
    """

    def __init__(self, networks=False):
        self.arrays = {}
        self.networks = networks

    def array(self, arr, name):
        arr = np.asarray(arr)
        restore = None
        if arr.dtype.kind == "O":
            arr, restore = _labels_to_array(arr, name)
        elif arr.dtype.kind not in "biufU":
            raise _Unstorable(f"array of dtype {arr.dtype}")
        self.arrays[name] = arr
        return {"__ndarray__": name} if restore is None else {"__ndarray__": name,
                                                              "restore": restore}

    def value(self, v, name):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, np.generic) and not isinstance(v, np.str_):
            if v.dtype.kind not in "biuf":
                raise _Unstorable(f"scalar of dtype {v.dtype}")
            return {"__scalar__": _encode(v.item()), "dtype": v.dtype.str}
        if isinstance(v, (int, float)):
            return _encode(v)
        if isinstance(v, np.ndarray):
            return self.array(v, name)
        if isinstance(v, tuple):
            return {"__tuple__": [self.value(x, f"{name}.{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.value(x, f"{name}.{i}") for i, x in enumerate(v)]
        if isinstance(v, dict):
            return {"__dict__": [[self.value(k, f"{name}.key{i}"),
                                  self.value(x, f"{name}.{k if isinstance(k, str) else i}")]
                                 for i, (k, x) in enumerate(v.items())]}
        if type(v) in _HEADS.values():
            state = {k: x for k, x in vars(v).items() if k != "_cache"}
            return {"__head__": type(v).__name__, "state": self.value(state, name)}
        if isinstance(v, pd.DataFrame):
            cols = []
            for i, c in enumerate(v.columns):
                col = v[c].to_numpy()
                if col.dtype.kind == "O" and len(col) and isinstance(col[0], np.ndarray):
                    cols.append({"__stacked__": self.array(np.stack(col), f"{name}.{i}")})
                else:
                    cols.append(self.array(col, f"{name}.{i}"))
            return {"__frame__": [str(c) for c in v.columns], "columns": cols}
        if isinstance(v, ExitTable):
            return {"__table__": {
                "conf": self.array(v.conf, f"{name}.conf"),
                "correct": self.array(v.correct, f"{name}.correct"),
                "stage_flops": self.array(v.stage_flops, f"{name}.stage_flops"),
                "exit_flops": self.array(v.exit_flops, f"{name}.exit_flops"),
                "last_head": bool(v.last_head),
                "weights": self.value(v.weights, f"{name}.weights"),
                "pred_labels": self.value(v.pred_labels, f"{name}.pred_labels"),
                "classes": self.value(v.classes, f"{name}.classes")}}
        if is_torch_module(v):
            state = mlp_state(v) if self.networks else None
            if state is None:
                raise _Unstorable(f"torch module {type(v).__name__} (only the Linear/ReLU "
                                  "networks DEC trains are stored)")
            return {"__mlp__": {
                "dims": state["dims"],
                "weights": [self.array(W, f"{name}.weight{i}")
                            for i, W in enumerate(state["weights"])],
                "biases": [self.array(b, f"{name}.bias{i}") for i, b in enumerate(state["biases"])],
                "requires_grad": state["requires_grad"],
                "training": state["training"]}}
        if isinstance(v, ClassStatistics):
            stages = []
            for j, acc in enumerate(v.stages):
                acc._settle()  # device-resident sums, added to the host arrays
                stages.append(self.value(
                    {k: getattr(acc, k) for k in ("scatter", "sums", "weights", "second",
                                                  "shift", "n_seen")}, f"{name}.{j}"))
            return {"__statistics__": {"metric": v.metric,
                                       "labels": self.array(np.asarray(v.labels.labels),
                                                            f"{name}.labels"),
                                       "stages": stages}}
        raise _Unstorable(type(v).__name__)


def _write_atomic(path, meta, arrays):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(_META, json.dumps(meta, allow_nan=False, indent=1))
                for key, arr in arrays.items():
                    arr = np.asarray(arr)
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, arr, allow_pickle=False)
                    zf.writestr(f"{key}.npy", buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class _Reader:
    """The file's metadata and arrays, read without pickle."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise ValueError(f"{self.path} cannot be read ({exc}).") from exc
        if magic[:1] == b"\x80":  # the protocol byte every binary pickle starts with
            raise ValueError(
                f"{self.path} holds pickled Python objects; load_exits refuses them "
                "(loading a pickle runs code from the file).")
        if magic != b"PK\x03\x04" and magic != b"\x93NUM":  # neither a zip nor an .npy
            raise ValueError(
                f"{self.path} is not a saved-exits file (not an .npz archive written by "
                "sklearn_e2cm.save_exits).")
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise ValueError(
                    f"{self.path} holds pickled Python objects; load_exits refuses them "
                    "(loading a pickle runs code from the file).") from exc
            raise ValueError(
                f"{self.path} is not a saved-exits file or is truncated/corrupt ({exc})."
            ) from exc
        except (zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(
                f"{self.path} is not a saved-exits file or is truncated/corrupt ({exc})."
            ) from exc
        if not isinstance(self._npz, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{self.path} holds a single array, not a saved-exits archive "
                "(written by sklearn_e2cm.save_exits).")
        try:
            if _META not in set(self._npz.zip.namelist()):
                raise ValueError(
                    f"{self.path} has no {_META}: it was not written by "
                    "sklearn_e2cm.save_exits.")
            self.meta = json.loads(self._npz.zip.read(_META).decode("utf-8"))
        except (zipfile.BadZipFile, zlib.error, UnicodeDecodeError, json.JSONDecodeError,
                OSError, EOFError) as exc:
            self.close()
            raise ValueError(f"{self.path}: corrupt metadata ({exc}).") from exc
        except BaseException:
            self.close()
            raise

    @property
    def version(self):
        """The file's format version (checked by the loader before any value is read)."""
        v = self.meta.get("format_version") if isinstance(self.meta, dict) else None
        return v if isinstance(v, int) and not isinstance(v, bool) else 1

    def close(self):
        self._npz.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def array(self, key, shape=None):
        if not isinstance(key, str) or key not in self._npz.files:
            raise ValueError(f"{self.path}: array {key!r} is missing (truncated or edited file).")
        try:
            arr = self._npz[key]
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise ValueError(
                    f"{self.path}: array {key!r} holds pickled Python objects; load_exits "
                    "refuses them (loading them would run code from the file).") from exc
            raise ValueError(f"{self.path}: array {key!r} is corrupt ({exc}).") from exc
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ValueError(f"{self.path}: array {key!r} is corrupt ({exc}).") from exc
        if arr.dtype.kind not in "biufU":
            raise ValueError(f"{self.path}: array {key!r} has dtype {arr.dtype}, not plain data.")
        if shape is not None and arr.shape != tuple(shape):
            raise ValueError(
                f"{self.path}: array {key!r} has shape {arr.shape}; expected {tuple(shape)} "
                "(the file is inconsistent).")
        return arr

    def value(self, v):
        """Inverse of :meth:`_Writer.value`: only the tags it writes are accepted."""
        if v is None or isinstance(v, (bool, str, int, float)):
            return v
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if not isinstance(v, dict):
            raise ValueError(f"{self.path}: unexpected value {v!r:.80} in the file.")
        keys = set(v)
        if keys in ({"__ndarray__"}, {"__ndarray__", "restore"}):
            return _labels_from_array(self.array(v["__ndarray__"]), v.get("restore"))
        if keys == {"__scalar__", "dtype"}:
            dtype = np.dtype(v["dtype"])
            if dtype.kind not in "biuf":
                raise ValueError(f"{self.path}: scalar of dtype {dtype} is not a number.")
            return dtype.type(_decode(v["__scalar__"], self.path))
        if keys == {"__float__"}:
            return _decode(v, self.path)
        if keys == {"__tuple__"}:
            return tuple(self.value(x) for x in v["__tuple__"])
        if keys == {"__dict__"}:
            return {self.value(k): self.value(x) for k, x in v["__dict__"]}
        if keys == {"__head__", "state"}:
            return self._head(v["__head__"], self.value(v["state"]))
        if keys == {"__frame__", "columns"}:
            data = {}
            for c, col in zip(v["__frame__"], v["columns"]):
                if isinstance(col, dict) and set(col) == {"__stacked__"}:
                    data[c] = list(self.value(col["__stacked__"]))
                else:
                    data[c] = self.value(col)
            return pd.DataFrame(data, columns=list(v["__frame__"]))
        if keys == {"__table__"}:
            t = v["__table__"]
            conf, correct = self.value(t["conf"]), self.value(t["correct"])
            if conf.ndim != 2 or correct.shape != conf.shape:
                raise ValueError(f"{self.path}: the tuning arrays have shapes {conf.shape} and "
                                 f"{correct.shape}.")
            table = ExitTable(conf, correct, self.value(t["stage_flops"]),
                              self.value(t["exit_flops"]), t["last_head"],
                              pred_labels=self.value(t["pred_labels"]),
                              classes=self.value(t["classes"]))
            weights = self.value(t["weights"])
            if weights is not None:  # as the fit normalised them, bit for bit
                if weights.shape != (conf.shape[0],):
                    raise ValueError(f"{self.path}: tuning weights have shape {weights.shape}.")
                table.weights = weights
            return table
        if keys == {"__mlp__"}:
            if self.version < NETWORKS_VERSION:
                raise ValueError(f"{self.path}: a network in a format-version {self.version} "
                                 f"file (networks are stored from version {NETWORKS_VERSION}).")
            st = v["__mlp__"]
            if not isinstance(st, dict):
                raise ValueError(f"{self.path}: malformed network description.")
            return rebuilt_mlp({k: self.value(x) for k, x in st.items()}, self.path)
        if keys == {"__statistics__"}:
            st = v["__statistics__"]
            labels = self.value(st["labels"])
            stats = ClassStatistics(len(st["stages"]), st["metric"], classes=labels.tolist())
            for acc, entry in zip(stats.stages, st["stages"]):
                state = self.value(entry)
                if set(state) != {"scatter", "sums", "weights", "second", "shift", "n_seen"} \
                        or bool(state["scatter"]) != bool(acc.scatter):
                    raise ValueError(f"{self.path}: malformed class statistics.")
                for k, x in state.items():
                    setattr(acc, k, x)
            return stats
        raise ValueError(f"{self.path}: unexpected value {v!r:.80} in the file.")

    def _head(self, name, state):
        if name not in _HEADS or not isinstance(state, dict):
            raise ValueError(f"{self.path}: unknown exit head {name!r}.")
        if name == "ExitHead":
            return _rebuilt_exit_head(state, self.path)
        head = object.__new__(_HEADS[name])
        fresh = InternalClassifierHead(np.zeros((1, 1)), np.zeros(1), "max_proba")
        if set(state) != set(vars(fresh)) - {"_cache"}:
            raise ValueError(f"{self.path}: an internal-classifier head holds "
                             f"{sorted(state)}; expected {sorted(set(vars(fresh)) - {'_cache'})}.")
        for k in ("W", "b"):
            if not isinstance(state[k], np.ndarray):
                raise ValueError(f"{self.path}: an internal-classifier head lacks array {k!r}.")
        if state.get("e2cm") is not None and not isinstance(state["e2cm"], ExitHead):
            raise ValueError(f"{self.path}: an internal-classifier head's e2cm is not a head.")
        vars(head).update(state)
        head._cache = {}
        return head


def _rebuilt_exit_head(state, path):
    """An ExitHead built by its constructor, then given back every array it held (checked)."""
    means = state.get("means")
    if not isinstance(means, np.ndarray) or means.ndim != 2 or means.dtype.kind != "f":
        raise ValueError(f"{path}: an exit head has no 2-D float class means.")
    if state.get("metric") not in ("euclidean", "mahalanobis"):
        raise ValueError(f"{path}: an exit head has unknown metric {state.get('metric')!r}.")
    head = ExitHead(means, scale=state.get("scale"), metric=state["metric"],
                    coef=state.get("coef"), intercept=state.get("intercept"), dtype=means.dtype)
    expected = set(vars(head)) - {"_cache"}
    if set(state) != expected:
        raise ValueError(f"{path}: an exit head holds {sorted(state)}; expected "
                         f"{sorted(expected)}.")
    for key, value in state.items():
        fresh = getattr(head, key)
        if isinstance(fresh, np.ndarray) or isinstance(value, np.ndarray):
            if not (isinstance(value, np.ndarray) and isinstance(fresh, np.ndarray)
                    and value.shape == fresh.shape and value.dtype == fresh.dtype):
                raise ValueError(
                    f"{path}: an exit head's array {key!r} has shape "
                    f"{getattr(value, 'shape', None)} and dtype {getattr(value, 'dtype', None)}; "
                    f"expected {getattr(fresh, 'shape', None)} and "
                    f"{getattr(fresh, 'dtype', None)}.")
            setattr(head, key, value)
        elif value != fresh:
            raise ValueError(f"{path}: an exit head's {key!r} is {value!r}, expected {fresh!r}.")
    return head

