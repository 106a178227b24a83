"""The networks DEC and DECEarlyExit train, stored as plain data and rebuilt.

These estimators build their networks themselves: every one is a
``torch.nn.Sequential`` of ``Linear`` layers with a ``ReLU`` after each but
the last, made by the DEC training library's builder
(:func:`sklearn_e2cm.cluster._training._build_encoder`) from the layer sizes.
A file stores such a network as its layer sizes (JSON) and one weight and one
bias array per layer; loading rebuilds it with the same builder and copies
the arrays in. No class named by the file is imported, nothing is unpickled.

The checks here tie what a file holds to the estimator's own parameters:
the encoder's layer sizes are ``(n_features_in_, *hidden, embedding_dim)``,
an exit's are ``(n_features_in_, *hidden[:depth], embedding_dim)`` with its
first ``depth`` layers equal to the large encoder's, and the stage adapter
rebuilt by the estimator's own code costs what the fit measured.
"""

import sys

import numpy as np

from .._backend import import_torch
from ..cluster._training import _build_encoder, _encoder_dims

__all__ = []


def is_torch_module(value):
    """Whether ``value`` is a torch module (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def mlp_state(module):
    """Layer sizes, arrays and flags of a Linear/ReLU stack; ``None`` for any other module.

    Returns
    -------
    state : dict or None
        ``dims`` (layer sizes), ``weights`` and ``biases`` (numpy copies, one
        per Linear layer), ``requires_grad`` (per Linear layer) and
        ``training`` (the module's mode).
    """
    torch = import_torch("DEC")
    layers = list(module) if isinstance(module, torch.nn.Sequential) else None
    if not layers or len(layers) % 2 != 1:
        return None
    dims, weights, biases, grads = [], [], [], []
    for i, m in enumerate(layers):
        if i % 2 == 1:  # a plain ReLU between two Linear layers
            if type(m) is not torch.nn.ReLU or m.inplace:
                return None
            continue
        if type(m) is not torch.nn.Linear or m.bias is None or m.weight.dtype not in (
                torch.float16, torch.float32, torch.float64):
            return None
        if dims and dims[-1] != m.in_features:
            return None
        if not dims:
            dims.append(int(m.in_features))
        dims.append(int(m.out_features))
        weights.append(m.weight.detach().to("cpu").clone().numpy())
        biases.append(m.bias.detach().to("cpu").clone().numpy())
        grads.append(bool(m.weight.requires_grad))
    if any(w.dtype.kind != "f" or w.dtype != weights[0].dtype for w in weights + biases):
        return None
    if any(m.training != module.training for m in layers):
        return None
    return {"dims": dims, "weights": weights, "biases": biases, "requires_grad": grads,
            "training": bool(module.training)}


def rebuilt_mlp(state, path):
    """The network :func:`mlp_state` described, built by the DEC library's builder."""
    torch = import_torch("DEC")
    if not isinstance(state, dict) or set(state) != {"dims", "weights", "biases",
                                                      "requires_grad", "training"}:
        raise ValueError(f"{path}: malformed network description.")
    dims = state["dims"]
    if not (isinstance(dims, list) and len(dims) >= 2 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)):
        raise ValueError(f"{path}: a network has layer sizes {dims!r}; expected at least two "
                         "positive integers.")
    n = len(dims) - 1
    weights, biases, grads = state["weights"], state["biases"], state["requires_grad"]
    if not (isinstance(weights, list) and isinstance(biases, list) and isinstance(grads, list)
            and len(weights) == len(biases) == len(grads) == n
            and all(isinstance(g, bool) for g in grads)
            and isinstance(state["training"], bool)):
        raise ValueError(f"{path}: a network of {n} layers does not hold {n} weight and bias "
                         "arrays.")
    dtype = None
    for i, (W, b) in enumerate(zip(weights, biases)):
        want = ((dims[i + 1], dims[i]), (dims[i + 1],))
        for arr, shape, what in ((W, want[0], "weight"), (b, want[1], "bias")):
            if not (isinstance(arr, np.ndarray) and arr.dtype.kind == "f"
                    and arr.shape == shape and arr.dtype == (dtype or arr.dtype)):
                raise ValueError(
                    f"{path}: layer {i}'s {what} has shape {getattr(arr, 'shape', None)} and "
                    f"dtype {getattr(arr, 'dtype', None)}; the layer sizes {tuple(dims)} need "
                    f"shape {shape} (one float dtype for every layer).")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{path}: layer {i}'s {what} holds non-finite values.")
            dtype = arr.dtype
    # a fixed seed: the throwaway initial weights never touch the global torch random state
    module = _build_encoder(dims, seed=0).to(getattr(torch, dtype.name))
    with torch.no_grad():
        for lin, W, b, g in zip((m for m in module if isinstance(m, torch.nn.Linear)),
                                weights, biases, grads):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W)))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
            lin.weight.requires_grad_(g)
            lin.bias.requires_grad_(g)
    return module.train(state["training"])


def _dims(module, what, path):
    if not is_torch_module(module):
        raise ValueError(f"{path}: {what} is not a network.")
    return tuple(int(d) for d in _encoder_dims(module))


def check_dec_state(dec, a, path):
    """A DEC's stored attributes agree with its parameters (layer sizes, centres)."""
    hidden = tuple(int(h) for h in dec.hidden)
    n_in = int(a["n_features_in_"])
    want = (n_in, *hidden, int(dec.embedding_dim))
    got = _dims(a["encoder_"], "encoder_", path)
    if got != want:
        raise ValueError(
            f"{path}: the encoder has layer sizes {got}; n_features_in_={n_in}, hidden="
            f"{hidden} and embedding_dim={dec.embedding_dim} give {want}.")
    centers = a["cluster_centers_"]
    shape = (int(dec.n_clusters), int(dec.embedding_dim))
    if not (isinstance(centers, np.ndarray) and centers.shape == shape
            and centers.dtype.kind == "f" and np.all(np.isfinite(centers))):
        raise ValueError(
            f"{path}: cluster_centers_ has shape {getattr(centers, 'shape', None)}; expected "
            f"finite floats of shape {shape} (n_clusters, embedding_dim).")


def check_dec_early_exit_state(est, dec, a, path):
    """The exits stored for a DECEarlyExit agree with its parameters and its large DEC."""
    torch = import_torch("DEC")
    for key in ("n_clusters", "hidden", "embedding_dim"):
        mine, theirs = getattr(est, key), getattr(dec, key)
        if (tuple(mine) != tuple(theirs)) if key == "hidden" else (mine != theirs):
            raise ValueError(f"{path}: the large DEC has {key}={theirs!r}; the estimator "
                             f"{key}={mine!r}.")
    if int(a["n_features_in_"]) != dec.n_features_in_ or not np.array_equal(
            a["cluster_centers_"], dec.cluster_centers_):
        raise ValueError(f"{path}: n_features_in_ and cluster_centers_ are not the large "
                         "DEC's.")
    depths = est._exit_depths()
    if list(a["exit_depths_"]) != depths:
        raise ValueError(f"{path}: exit_depths_ is {a['exit_depths_']!r}; exits={est.exits!r} "
                         f"gives {depths}.")
    encoders = a["exit_encoders_"]
    if not isinstance(encoders, list) or len(encoders) != len(depths):
        raise ValueError(f"{path}: expected {len(depths)} exit encoders.")
    large = dec.encoder_
    hidden = tuple(int(h) for h in est.hidden)
    for j, (enc, d) in enumerate(zip(encoders, depths)):
        want = (int(a["n_features_in_"]), *hidden[:d], int(est.embedding_dim))
        got = _dims(enc, f"exit encoder {j}", path)
        if got != want:
            raise ValueError(f"{path}: exit encoder {j} has layer sizes {got}; an exit after "
                             f"hidden layer {d} has {want}.")
        shared = zip(enc[: 2 * d].parameters(), large[: 2 * d].parameters())
        if not all(torch.equal(p, q) for p, q in shared):
            raise ValueError(f"{path}: exit encoder {j}'s first {d} layer(s) differ from the "
                             "large encoder's (an exit shares them, frozen).")
    shape = (int(est.n_clusters), int(est.embedding_dim))
    for j, C in enumerate(a["exit_centers_"]):
        if not (isinstance(C, np.ndarray) and C.shape == shape and np.all(np.isfinite(C))):
            raise ValueError(f"{path}: exit {j}'s centres have shape "
                             f"{getattr(C, 'shape', None)}; expected {shape}.")


def check_rebuilt_adapter(adapter, a, path):
    """The stage adapter rebuilt from the networks costs what the fit measured."""
    want, got = np.asarray(a["stage_flops_"], dtype=np.float64), adapter.stage_flops_
    if want.shape != got.shape or not np.array_equal(want, got):
        raise ValueError(f"{path}: stage_flops_ is {want.tolist()}; the stored networks cost "
                         f"{got.tolist()} FLOPs per sample.")
