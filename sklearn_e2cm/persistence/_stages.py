"""What saved exits record of their stages, and the checks of the stages given at load."""

from hashlib import sha256

import numpy as np

from .._backend import warn
from ..exits.class_means import ExitHead
from ._format import _decode, _encode


def _torch_weight_digests(adapter):
    """SHA-256 of every torch stage's parameters and buffers (names, shapes, dtypes, values)."""
    import torch

    digests = []
    for module in adapter.stage_modules_:
        h = sha256()
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            h.update(t.numpy().tobytes())
        digests.append(h.hexdigest())
    return digests


def _adapter_fingerprint(adapter):
    """What the given stages must reproduce at load time (JSON-safe)."""
    fp = {
        "backend": adapter.backend,
        "n_stages": int(adapter.n_stages),
        "final_is_classifier": bool(adapter.final_is_classifier),
        "measured_stage_flops": [_encode(float(f)) for f in adapter.stage_flops_],
        "vector_dims": [int(d) for d in adapter.vector_dims_],
        "vector_flops": [_encode(float(f)) for f in adapter.vector_flops_],
    }
    if adapter.backend == "torch":
        fp["stage_names"] = list(adapter.stage_names_)
        fp["output_shapes"] = [list(s) for s in adapter.output_shapes_]
        fp["pooled_shapes"] = [list(s) for s in adapter.pooled_shapes_]
        fp["input_shape"] = list(adapter.input_shape_)
        fp["weight_sha256"] = _torch_weight_digests(adapter)
    else:
        fp["stage_types"] = [
            "passthrough" if isinstance(s, str) or s is None else type(s).__name__
            for s in adapter.fitted_steps_
        ]
    return fp


def _check_steps_are_given(est, base):
    """Refuse to save exits on scikit-learn steps that only exist inside the estimator."""
    if base.backend == "torch":
        return
    for j, (step, fitted) in enumerate(zip(base.steps, base.fitted_steps_)):
        if not (isinstance(step, str) or step is None) and step is not fitted:
            raise ValueError(
                f"Stage {j} ({base.names[j]}) was fitted by {type(est).__name__}.fit, so it "
                "exists only inside the estimator and cannot be passed back to load_exits. "
                "Fit the scikit-learn steps first (or wrap fitted ones in FrozenEstimator), fit "
                "the estimator on them, then save.")


def _check_fitted_state(a, adapter, path):
    """The arrays routing reads agree with the stages and with each other."""
    M = int(a["n_stages_"])
    if adapter.n_stages != M:
        raise ValueError(f"{path}: {M} exits saved for {adapter.n_stages} stages.")
    heads = a["_heads"]
    if not isinstance(heads, list) or len(heads) != M:
        raise ValueError(f"{path}: expected {M} exit heads.")
    K = len(a["classes_"])
    for j, head in enumerate(heads):
        if head is None:
            continue
        if head.n_classes != K:
            raise ValueError(f"{path}: exit head {j} has {head.n_classes} classes, not {K}.")
        if isinstance(head, ExitHead) and not (j == M - 1 and adapter.final_is_classifier):
            D = int(adapter.vector_dims_[j])
            if head.n_features != D:
                raise ValueError(
                    f"{path}: exit head {j} holds class means of width {head.n_features}; "
                    f"stage {j} gives vectors of width {D}.")
    for key in ("stage_flops_", "exit_flops_", "cumulative_cost_"):
        if np.shape(a[key]) != (M,):
            raise ValueError(f"{path}: {key} has shape {np.shape(a[key])}; expected ({M},).")
    mix = a["mixture_thresholds_"]
    if mix.ndim != 2 or mix.shape[1] != M - 1:
        raise ValueError(f"{path}: mixture_thresholds_ has shape {mix.shape}; expected "
                         f"(n_components, {M - 1}).")
    w = a["mixture_weights_"]
    if w.shape != (mix.shape[0],) or np.shape(a["_mixture_costs"]) != (mix.shape[0], M):
        raise ValueError(f"{path}: the time-sharing arrays disagree in shape.")
    for name, arr in (("mixture_thresholds_", mix), ("thresholds_", a["thresholds_"])):
        if not np.all((arr >= 0) & (arr <= 1)):
            raise ValueError(f"{path}: {name} has values outside [0, 1].")
    if not (np.all(w >= 0) and abs(w.sum() - 1) < 1e-9):
        raise ValueError(f"{path}: mixture_weights_ {w.tolist()} do not form a probability "
                         "vector.")


def _check_sklearn_fitted(adapter):
    if not adapter.frozen:
        from ..stages.sklearn import _trained_by_fit

        j = next(j for j, s in enumerate(adapter.steps) if _trained_by_fit(s))
        raise ValueError(
            f"Stage {j} ({adapter.names[j]}) is not fitted; load_exits needs the fitted "
            "scikit-learn steps the exits were fitted on.")


def _probe_fit(adapter, probe):
    """Measure the given stages on a zero probe (nothing is trained: they are fitted)."""
    try:
        adapter.fit(probe, None)
    except Exception as exc:
        raise ValueError(
            f"The stages given fail on an input of per-sample shape {probe.shape[1:]}, the "
            f"input the exits were fitted on: {exc}") from exc


def _same(a, b):
    a, b = float(a), float(b)
    return (np.isnan(a) and np.isnan(b)) or a == b


def _check_stages(adapter, fp, path, check_weights):
    def name(j):
        names = fp.get("stage_names") or fp.get("stage_types")
        return f"stage {j} ({names[j]})" if names and j < len(names) else f"stage {j}"

    if adapter.n_stages != fp["n_stages"]:
        raise ValueError(
            f"The exits in {path} were fitted on {fp['n_stages']} stages; the stages given "
            f"have {adapter.n_stages}.")
    if bool(adapter.final_is_classifier) != fp["final_is_classifier"]:
        raise ValueError(
            f"The exits were fitted with final_is_classifier={fp['final_is_classifier']}; the "
            f"stages given give {adapter.final_is_classifier}.")
    if adapter.backend == "torch":
        for j in range(adapter.n_stages):
            if list(adapter.output_shapes_[j]) != fp["output_shapes"][j]:
                raise ValueError(
                    f"{name(j)} outputs per-sample shape {tuple(adapter.output_shapes_[j])}; "
                    f"the exits were fitted on {tuple(fp['output_shapes'][j])}.")
    else:
        types = ["passthrough" if isinstance(s, str) or s is None else type(s).__name__
                 for s in adapter.fitted_steps_]
        for j, (got, want) in enumerate(zip(types, fp["stage_types"])):
            if got != want:
                raise ValueError(f"Stage {j} is a {got}; the exits were fitted on a {want}.")
    for j in range(adapter.n_stages):
        if int(adapter.vector_dims_[j]) != fp["vector_dims"][j]:
            raise ValueError(
                f"{name(j)} gives stage vectors of width {int(adapter.vector_dims_[j])}; the "
                f"exits were fitted on width {fp['vector_dims'][j]}.")
        got = adapter.stage_flops_[j]
        want = _decode(fp["measured_stage_flops"][j], path)
        if not _same(got, want):
            raise ValueError(
                f"{name(j)} costs {got} FLOPs per sample; the exits were fitted on a stage "
                f"costing {want}.")
        if not _same(adapter.vector_flops_[j], _decode(fp["vector_flops"][j], path)):
            raise ValueError(
                f"{name(j)}'s pooling costs {adapter.vector_flops_[j]} FLOPs; the exits were "
                f"fitted with pooling costing {_decode(fp['vector_flops'][j], path)} (check "
                "pooling=).")
    if adapter.backend == "torch" and check_weights != "ignore":
        digests = _torch_weight_digests(adapter)
        differ = [j for j, (a, b) in enumerate(zip(digests, fp["weight_sha256"])) if a != b]
        if differ:
            msg = (f"The weights of {', '.join(name(j) for j in differ)} differ from those the "
                   "exits were fitted on (SHA-256 of parameters and buffers): the exits may "
                   "not fit this network.")
            if check_weights == "raise":
                raise ValueError(msg)
            warn(msg)

