"""What the subcommands share: loading networks, data and exits files; user errors.

A network is given as a TorchScript file (``torch.jit.save``), a
``torch.export`` file (``torch.export.save``), a scikit-learn chain saved with
``skops.io.dump`` (loaded with skops' default trusted types plus the ones
named by ``--trust``: never pickle) or ``module:function`` (imported and
called with no arguments; it returns the network, a list of stages or a
scikit-learn chain). Data are ``.npy`` arrays, ``.npz`` archives or IDX files
(MNIST's format, gzip-compressed or not), told apart by their first bytes.
"""

import contextlib
import importlib
import logging
import os
import re
import sys
import zipfile

import numpy as np


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


def one_line(text):
    """``text`` with its lines joined by spaces (an error message on one line)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextlib.contextmanager
def user_errors(what):
    """Turn the errors a library call raises on bad input into :class:`CLIError`.

    ``ValueError`` / ``TypeError`` (bad values, shapes, parameters, files) and
    ``RuntimeError`` (torch's shape errors) become ``"<what>: <message>"``.
    """
    try:
        yield
    except CLIError:
        raise
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        raise CLIError(f"{what}: {_without_torchscript_trace(str(exc))}") from exc


def _without_torchscript_trace(text):
    """A TorchScript error without its two tracebacks: the error line is what tells."""
    return re.sub(r"The following operation failed in the TorchScript interpreter\..*?"
                  r"^(\w+(?:Error|Exception): [^\n]*)$", r"\1", text, flags=re.S | re.M)


_MODULE_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _check_file(path, what):
    if not os.path.exists(path):
        raise CLIError(f"{what} {path!r} does not exist.")
    if os.path.isdir(path):
        raise CLIError(f"{what} {path!r} is a folder, not a file.")
    if not os.access(path, os.R_OK):
        raise CLIError(f"{what} {path!r} is not readable (permissions).")


def add_network_argument(parser, required):
    """The ``--network`` option (a file or ``module:function``) and ``--trust``."""
    parser.add_argument(
        "--network", metavar="SPEC", required=required, default=None,
        help="the trained model: a TorchScript file (torch.jit.save), a torch.export file "
             "(torch.export.save), a fitted scikit-learn chain saved with skops.io.dump "
             "(*.skops) or MODULE:FUNCTION, a function called with no arguments "
             "that returns the network, a list of stages or fitted scikit-learn steps"
             + ("" if required else " (default: none, the input is the only stage)"))
    parser.add_argument(
        "--trust", metavar="TYPE", action="append", default=[],
        help="a type the --network .skops file may hold beyond skops' defaults, e.g. "
             "sklearn_e2cm.stages.Something; repeat for several. Only name types you have "
             "audited: loading runs their code")


def network_label(spec):
    """How error messages name the ``--network`` given."""
    return "no --network (the input as the only stage)" if spec is None else f"--network {spec}"


def load_network(spec, trust=()):
    """The stages described by ``--network``: a torch module, a list or a chain.

    Parameters
    ----------
    spec : str or None
        A file path or ``module:function``; ``None`` gives ``None`` (the input
        is the only stage).
    trust : sequence of str, default=()
        Types a skops file may hold beyond skops' default trusted types.

    Returns
    -------
    stages : torch module, list, Pipeline or None
    """
    if spec is None:
        return None
    if not os.path.exists(spec) and _MODULE_FUNCTION.match(spec):
        return _call_function(spec)
    _check_file(spec, "network file")
    from .._backend import import_torch

    not_network = CLIError(
        f"{spec!r} is not a TorchScript or torch.export file; give a file saved with "
        "torch.jit.save or torch.export.save, or MODULE:FUNCTION.")
    if not zipfile.is_zipfile(spec):  # all three formats are zip archives
        raise not_network
    with zipfile.ZipFile(spec) as archive:
        if "schema.json" in archive.namelist():  # skops.io.dump's layout
            return _load_skops(spec, trust)
    torch = import_torch()
    try:
        return torch.jit.load(spec, map_location="cpu")
    except Exception:  # torch raises several types on a file of another kind
        pass
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)  # it logs a traceback before raising
    try:
        program = torch.export.load(spec)
    except Exception:
        raise not_network from None
    finally:
        export_log.setLevel(level)
    try:  # the module hierarchy, so that the network can be cut into its children
        return torch.export.unflatten(program)
    except Exception:
        return program.module()


def _load_skops(path, trust):
    """A scikit-learn chain saved with ``skops.io.dump``: no pickle, types checked first."""
    try:
        import skops.io as sio
    except ImportError:
        raise CLIError(f"{path!r} is a skops file; reading it needs skops "
                       "(pip install skops).") from None
    with user_errors(f"cannot read the skops file {path!r}"):
        untrusted = sio.get_untrusted_types(file=path)
        refused = sorted(set(untrusted) - set(trust))
        if refused:
            raise CLIError(
                f"the skops file {path!r} holds types that are not trusted by default: "
                f"{', '.join(refused)}. Loading runs their code: audit them, then pass "
                + " ".join(f"--trust {t}" for t in refused) + ".")
        return sio.load(path, trusted=list(untrusted))


def _call_function(spec):
    module_name, func_name = spec.split(":", 1)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current folder
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"cannot import module {module_name!r} of --network {spec!r}: {exc}")
    for part in func_name.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"module {module_name!r} has no attribute {func_name!r} "
                           f"(--network {spec!r}).")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"{spec!r} is a {type(obj).__name__}, not a function.")
    stages = obj()
    if stages is None:
        raise CLIError(f"{spec}() returned None; it must return the network, a list of "
                       "stages or a scikit-learn chain.")
    return stages


def check_steps_fitted(stages, spec):
    """Refuse scikit-learn steps that are not fitted (the exits file cannot hold them)."""
    from ..stages import make_stage_adapter
    from ..stages.sklearn import _trained_by_fit

    with user_errors(f"--network {spec}"):
        adapter = make_stage_adapter(stages)
    if adapter.backend == "torch" or adapter.frozen:
        return
    j = next(j for j, s in enumerate(adapter.steps) if _trained_by_fit(s))
    raise CLIError(
        f"--network {spec} returned scikit-learn steps that are not fitted (stage {j}, "
        f"{adapter.names[j]}); the exits file holds only the exits, not the steps, so they "
        "must be fitted before: fit them in the function (or return fitted steps wrapped in "
        "sklearn.frozen.FrozenEstimator).")


def add_data_arguments(parser, need_y):
    """``--X``, ``--y``, ``--x-key``, ``--y-key``, ``--reshape``, ``--scale``."""
    g = parser.add_argument_group("data")
    g.add_argument("--X", dest="X", metavar="FILE", required=True,
                   help="inputs: a .npy array, a .npz archive (key --x-key) or an IDX file "
                        "(MNIST format, .gz or not); one row per sample")
    g.add_argument("--y", dest="y", metavar="FILE", default=None,
                   help="labels: .npy, .npz (key --y-key) or IDX"
                        + (" (default: the --X archive when it is a .npz)" if need_y
                           else "; not needed"))
    g.add_argument("--x-key", default="X", metavar="KEY",
                   help="array name of the inputs in a .npz (default: %(default)s)")
    g.add_argument("--y-key", default="y", metavar="KEY",
                   help="array name of the labels in a .npz (default: %(default)s)")
    g.add_argument("--reshape", default=None, metavar="SHAPE",
                   help="per-sample shape of the inputs, e.g. 1,28,28 for a network "
                        "taking (N, 1, 28, 28) images from an IDX file of (N, 28, 28)")
    g.add_argument("--scale", type=float, default=None, metavar="FACTOR",
                   help="multiply the inputs by FACTOR, e.g. 0.00392156862745098 (1/255) for "
                        "8-bit images")


def _kind(path):
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK"):
        return "npz"
    return "idx"


def _read_array(path, key, what):
    _check_file(path, f"{what} file")
    kind = _kind(path)
    if kind == "idx":
        from ..datasets import _read_idx

        with user_errors(f"{what} file {path!r} is not a .npy, .npz or IDX file"):
            return _read_idx(path)
    with user_errors(f"cannot read {what} file {path!r}"):
        data = np.load(path, allow_pickle=False)
        if kind == "npy":
            return data
        with data:
            if key not in data.files:
                raise CLIError(f"{what} file {path!r} has no array {key!r} (it holds "
                               f"{', '.join(data.files) or 'nothing'}); name it with "
                               f"--{'x' if what == 'input' else 'y'}-key.")
            return data[key]


def load_data(args, need_y):
    """``(X, y)`` from the data options (``y`` is None when not given and not needed)."""
    X = _read_array(args.X, args.x_key, "input")
    y_path = args.y
    if y_path is None and need_y:
        if _kind(args.X) != "npz":
            raise CLIError("labels are needed: give --y FILE (or an --X .npz holding them).")
        y_path = args.X
    y = None if y_path is None else _read_array(y_path, args.y_key, "label")
    if X.ndim < 1 or X.shape[0] == 0:
        raise CLIError(f"the inputs {args.X!r} hold no rows (shape {X.shape}).")
    if X.ndim == 1:
        raise CLIError(f"the inputs {args.X!r} are 1-D (shape {X.shape}); give one row per "
                       "sample, e.g. shape (n_samples, n_features).")
    if X.dtype.kind not in "biuf":
        raise CLIError(f"the inputs {args.X!r} are of type {X.dtype}, not numbers.")
    if X.dtype.kind != "f":
        X = X.astype(np.float32)
    if args.reshape:
        try:
            shape = tuple(int(d) for d in args.reshape.split(","))
        except ValueError:
            raise CLIError(f"--reshape {args.reshape!r} is not a list of integers such as "
                           "1,28,28.") from None
        if int(np.prod(shape)) != int(np.prod(X.shape[1:])):
            raise CLIError(f"--reshape {args.reshape}: {int(np.prod(shape))} values per sample, "
                           f"but the inputs have shape {X.shape[1:]} per sample.")
        X = X.reshape((X.shape[0],) + shape)
    if args.scale is not None:
        X = X * np.asarray(args.scale, dtype=X.dtype)
    if y is not None:
        if y.ndim != 1:
            raise CLIError(f"the labels {y_path!r} have shape {y.shape}; expected one label per "
                           "row, shape (n_samples,).")
        if y.shape[0] != X.shape[0]:
            raise CLIError(f"{X.shape[0]} input rows ({args.X}) but {y.shape[0]} labels "
                           f"({y_path}).")
    return X, y


def add_exits_arguments(parser):
    """``--exits`` and ``--network`` for the commands that read fitted exits."""
    parser.add_argument("--exits", required=True, metavar="FILE",
                        help="exits written by 'fit' (sklearn_e2cm.save_exits)")
    add_network_argument(parser, required=False)
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="torch device to run on, e.g. cuda (default: the one of 'fit')")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="rows per forward pass (default: the one of 'fit')")


def load_fitted(args):
    """The estimator of ``--exits`` on the stages of ``--network`` (checked against them)."""
    from ..persistence import load_exits

    _check_file(args.exits, "exits file")
    stages = load_network(args.network, trust=args.trust)
    overrides = {k: v for k, v in (("device", args.device), ("batch_size", args.batch_size))
                 if v is not None}
    with user_errors(f"cannot use the exits {args.exits!r} with {network_label(args.network)}"):
        return load_exits(args.exits, stages=stages, **overrides)


def write_text(text, out):
    """Write ``text`` to the file ``out``, or to stdout when ``out`` is None or ``-``."""
    if out is None or out == "-":
        sys.stdout.write(text)
        return
    with user_errors("cannot write the output"):
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.write(text)
