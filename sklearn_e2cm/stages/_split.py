"""Cutting a trained torch model into stages: :func:`split_into_stages`."""

import numbers
import re
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ._torch_utils import _eval_mode, _floating_dtype, _module_device, _to_tensor

__all__ = ["split_into_stages"]


_NORM_TYPES = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
)
_HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear", "logits")
_POOL_NAMES = ("avgpool", "global_pool", "gap", "pool", "flatten", "dropout")
_GLOBAL_TYPES = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Flatten, nn.Identity, nn.modules.dropout._DropoutNd,
)


def _has_own_weights(m):
    return any(True for _ in m.parameters())


def _is_follower(m):
    """A child that joins the current stage instead of starting one."""
    return isinstance(m, _NORM_TYPES) or not _has_own_weights(m)


def _leaves_with_weights(m):
    return [s for s in m.modules() if not list(s.children()) and _has_own_weights(s)]


def _is_head(name, m):
    if isinstance(m, nn.Linear):
        return True
    if isinstance(m, nn.Sequential):
        leaves = _leaves_with_weights(m)
        return bool(leaves) and isinstance(leaves[-1], nn.Linear) and (
            name in _HEAD_NAMES or all(isinstance(s, (nn.Linear,) + _NORM_TYPES) for s in leaves)
        )
    return False


def _first_linear(m):
    if isinstance(m, nn.Linear):
        return m
    if isinstance(m, nn.Sequential):
        leaves = _leaves_with_weights(m)
        if leaves and isinstance(leaves[0], nn.Linear):
            return leaves[0]
    return None


def _expand(children, head_name):
    """Flatten containers (Sequential, ModuleList) except ``stem`` and the head."""
    out = []
    for name, m in children:
        expandable = isinstance(m, (nn.Sequential, nn.ModuleList)) and name not in ("stem",)
        if expandable and name != head_name and len(m) > 0:
            out.extend(_expand([(f"{name}_{n}", c) for n, c in m.named_children()], None))
        else:
            out.append((name, m))
    return out


def _candidate_inputs(model):
    shape = getattr(model, "input_shape", None)
    cands = []
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(s, numbers.Integral)
                                                          for s in shape):
        cands.append((1, *shape))
    size = getattr(model, "image_size", None)  # torchvision's VisionTransformer has one
    sizes = (32, 28, 64, 224)
    if isinstance(size, numbers.Integral) and not isinstance(size, bool) and size > 0:
        sizes = (int(size),) + tuple(s for s in sizes if s != size)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            cands += [(1, m.in_channels, s, s) for s in sizes]
            break
        if isinstance(m, nn.Conv1d):
            cands += [(1, m.in_channels, s) for s in (64, 128, 28)]
            break
        if isinstance(m, nn.Conv3d):
            cands += [(1, m.in_channels, s, s, s) for s in (16, 32)]
            break
        if isinstance(m, nn.Linear):
            cands.append((1, m.in_features))
            break
    return cands


def _stage_name(items, used, is_head):
    if len(items) == 1:
        base = items[0][0]
    elif is_head:
        base = "head"
    else:
        base = items[0][0]
    base = re.sub(r"[.\s]", "_", str(base)) or "stage"
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def _mismatch_error(model, names, why):
    return ValueError(
        f"split_into_stages could not reproduce {type(model).__name__}'s forward() from its "
        f"named children {names}: {why}. The forward() probably does work outside its children "
        "(functional calls such as F.relu or torch.mean, x * 2, reshapes, connections across "
        "children), has children it does not use, or uses them in another order. Split the "
        "model yourself: pass an "
        "nn.Sequential or a list of modules whose composition equals the model."
    )


def split_into_stages(model, example_input=None, *, atol=1e-5):
    """Cut a model built from named children into an ``nn.Sequential`` of stages.

    The children are walked in registration order:

    * containers (``nn.Sequential``, ``nn.ModuleList``) such as ResNet's
      ``layer1`` .. ``layer4`` are opened: each of their blocks becomes a
      stage; a child named ``stem`` is kept whole;
    * a child with weights (a convolution, a residual block, ...) starts a new
      stage; children without weights (activations, pooling, dropout) and
      normalisation layers join the stage before them, so torchvision's
      ``conv1, bn1, relu, maxpool`` form one stem stage;
    * the final linear classifier (a ``Linear`` or a ``Sequential`` ending in
      one, e.g. ``fc`` / ``classifier`` / ``head``) forms the last stage
      together with the global pooling, flatten and dropout children just
      before it, so the last stage outputs the logits;
    * an ``nn.Flatten(1)`` is inserted before a linear layer that receives a
      higher-dimensional tensor whose flattened size is its ``in_features``
      (the ``torch.flatten(x, 1)`` of the model's forward).

    A vision transformer laid out as torchvision's ``VisionTransformer``
    (``conv_proj``, ``class_token``, ``encoder`` with ``pos_embedding``,
    ``dropout``, ``layers`` and ``ln``, then ``heads``) is split as its
    forward runs: the stem embeds the patches, prepends the class token and
    adds the position embedding (then dropout); each encoder block is a
    stage, its output the ``(n, tokens, hidden)`` sequence; the last stage
    is the final norm, the class token and ``heads``.

    The result is checked on a probe batch: the stages run in sequence must
    give ``model(x)`` within ``atol``, in eval mode (the training flags of the
    model are restored afterwards). The stages share their parameters with
    ``model``: nothing is copied.

    Parameters
    ----------
    model : torch.nn.Module
        The trained network.
    example_input : tensor or array of shape (n, ...), default=None
        Probe batch (with the batch dimension). When ``None`` it is inferred:
        ``(1, *model.input_shape)`` when the model has an ``input_shape``
        attribute, else from the first convolution's ``in_channels`` (square
        inputs of ``model.image_size`` when it has one, then 32, 28, 64 and
        224 pixels are tried) or the first linear layer's ``in_features``.
    atol : float, default=1e-5
        Largest absolute difference allowed between the stages' output and
        ``model(x)``.

    Returns
    -------
    stages : torch.nn.Sequential
        One child per stage.

    Raises
    ------
    ValueError
        If the stages do not reproduce ``model(x)`` (the message gives the
        difference), ``model(example_input)`` fails, or no probe input can be
        inferred (pass ``example_input``).
    TypeError
        If ``model`` is not a ``torch.nn.Module``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_e2cm.stages import split_into_stages
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
    ...         self.relu = nn.ReLU()
    ...         self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3))
    ...         self.avgpool = nn.AdaptiveAvgPool2d(1)
    ...         self.fc = nn.Linear(4, 3)
    ...     def forward(self, x):
    ...         x = self.layer1(self.relu(self.conv1(x)))
    ...         return self.fc(torch.flatten(self.avgpool(x), 1))
    >>> stages = split_into_stages(Net(), torch.zeros(1, 1, 8, 8))
    >>> list(stages._modules)
    ['conv1', 'layer1_0', 'layer1_1', 'head']
    >>> stages.head
    Sequential(
      (avgpool): AdaptiveAvgPool2d(output_size=1)
      (flatten): Flatten(start_dim=1, end_dim=-1)
      (fc): Linear(in_features=4, out_features=3, bias=True)
    )
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"split_into_stages expects a torch.nn.Module; got {type(model).__name__}."
        )
    if isinstance(model, (nn.ModuleList, nn.ModuleDict)):
        raise TypeError(
            f"{type(model).__name__} has no forward(); pass a list of its modules to TorchStages."
        )
    children = list(model.named_children())
    if not children:
        raise ValueError(
            f"{type(model).__name__} has no child modules to split into stages; pass a list of "
            "modules or an nn.Sequential."
        )
    if not isinstance(atol, numbers.Real) or isinstance(atol, bool) or atol < 0:
        raise ValueError(f"atol must be a float >= 0; got {atol!r}.")
    names = [n for n, _ in children]
    vit = _vision_transformer_stages(model)
    if vit is not None:
        with _eval_mode([model]), torch.no_grad():
            x, ref = _probe(model, example_input)
            _verify(model, names, vit, x, ref, atol)
        return vit
    head_name = children[-1][0] if _is_head(*children[-1]) else None
    items = _expand(children, head_name)
    with _eval_mode([model]), torch.no_grad():
        x, ref = _probe(model, example_input)
        walked = _walk(model, names, items, x)
        staged = _group(walked, head_name is not None)
        _verify(model, names, staged, x, ref, atol)
    return staged


class _PatchEmbeddingStem(nn.Module):
    """Stem of a torchvision-style vision transformer: patches, class token, positions.

    Holds the model's own modules and parameters (nothing is copied).
    """

    def __init__(self, conv_proj, class_token, pos_embedding, dropout):
        super().__init__()
        self.conv_proj = conv_proj
        self.class_token = class_token
        self.pos_embedding = pos_embedding
        self.dropout = dropout

    def forward(self, x):
        x = self.conv_proj(x)  # (n, hidden, h, w)
        n, hidden = x.shape[:2]
        x = x.reshape(n, hidden, -1).permute(0, 2, 1)  # (n, h * w, hidden)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class _ClassTokenHead(nn.Module):
    """Last stage of a torchvision-style vision transformer: norm, class token, ``heads``."""

    def __init__(self, ln, heads):
        super().__init__()
        self.ln = ln
        self.heads = heads

    def forward(self, x):
        return self.heads(self.ln(x)[:, 0])


def _vision_transformer_stages(model):
    """Stages of a model with torchvision's ``VisionTransformer`` layout, else ``None``."""
    enc = getattr(model, "encoder", None)
    parts = (getattr(model, "conv_proj", None), getattr(model, "class_token", None),
             getattr(model, "heads", None))
    if enc is None or any(p is None for p in parts):
        return None
    conv_proj, class_token, heads = parts
    pos, drop, layers, ln = (getattr(enc, a, None)
                             for a in ("pos_embedding", "dropout", "layers", "ln"))
    if not (isinstance(conv_proj, nn.Module) and isinstance(class_token, torch.Tensor)
            and isinstance(pos, torch.Tensor) and isinstance(layers, (nn.Sequential, nn.ModuleList))
            and isinstance(ln, nn.Module) and isinstance(heads, nn.Module) and len(layers) > 0):
        return None
    stages = OrderedDict()
    stages["stem"] = _PatchEmbeddingStem(conv_proj, class_token, pos,
                                         drop if isinstance(drop, nn.Module) else nn.Identity())
    used = {"stem", "head"}
    for name, block in layers.named_children():
        stages[_stage_name([(name, block)], used, False)] = block
    stages["head"] = _ClassTokenHead(ln, heads)
    return nn.Sequential(stages)


def _probe(model, example_input):
    """The probe batch (given, or the first inferred shape the model accepts) and model(x)."""
    device = _module_device(model)
    dtype = _floating_dtype([model])
    if example_input is not None:
        x = _to_tensor(example_input).to(device=device, dtype=dtype)
        try:
            ref = model(x)
        except Exception as exc:
            raise ValueError(
                f"model(example_input) failed for an example_input of shape "
                f"{tuple(x.shape)}: {exc}. Pass a batch the model accepts, with the batch "
                "dimension first."
            ) from exc
    else:
        cands = _candidate_inputs(model)
        gen = torch.Generator().manual_seed(0)
        ref = x = None
        for shape in cands:
            xc = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
            try:
                ref = model(xc)
            except Exception:
                continue
            x = xc
            break
        if x is None:
            tried = ", ".join(str(c) for c in cands) or "none could be guessed"
            raise ValueError(
                f"Cannot infer an input for {type(model).__name__} (tried shapes: {tried}); "
                "pass example_input=, a batch the model accepts, e.g. torch.zeros(1, C, H, W)."
            )
    if not isinstance(ref, torch.Tensor):
        raise ValueError(
            f"{type(model).__name__}.forward() returned {type(ref).__name__}, not a tensor; "
            "split_into_stages needs a model that returns one tensor."
        )
    return x, ref


def _walk(model, names, items, x):
    """Run the children in order on the probe, inserting flattens where a linear layer
    receives a higher-dimensional tensor; returns the ``(name, module)`` list."""
    walked = []
    z = x
    for name, m in items:
        lin = _first_linear(m)
        if (
            lin is not None and z.dim() > 2
            and lin.in_features == int(np.prod(z.shape[1:]))
            and lin.in_features != z.shape[-1]
        ):
            flat = nn.Flatten(1)
            walked.append(("flatten", flat))
            z = flat(z)
        try:
            z = m(z)
        except Exception as exc:
            raise _mismatch_error(
                model, names,
                f"child {name!r} ({type(m).__name__}) fails on the output of the children "
                f"before it (shape {tuple(z.shape)}): {exc}",
            ) from exc
        if not isinstance(z, torch.Tensor):
            raise _mismatch_error(
                model, names, f"child {name!r} returned {type(z).__name__}, not a tensor"
            )
        walked.append((name, m))
    return walked


def _group(walked, has_head):
    """Group the walked children into stages (followers join the stage before them; the
    head takes the global pooling before it) as one named ``nn.Sequential``."""
    head = []
    body = list(walked)
    if has_head:
        head = [body.pop()]
        while body and (
            isinstance(body[-1][1], _GLOBAL_TYPES) or body[-1][0] in _POOL_NAMES
        ) and not _has_own_weights(body[-1][1]):
            head.insert(0, body.pop())
    groups = []
    pending = []  # followers before the first weighted child join the first stage
    for name, m in body:
        if _is_follower(m):
            (groups[-1] if groups else pending).append((name, m))
        else:
            groups.append(pending + [(name, m)])
            pending = []
    if pending:
        groups.append(pending)
    if head:
        groups.append(head)
    used = set()
    stages = OrderedDict()
    for gi, g in enumerate(groups):
        is_head = bool(head) and gi == len(groups) - 1
        sname = _stage_name(g, used, is_head)
        if len(g) == 1:
            stages[sname] = g[0][1]
        else:
            sub, sub_used = OrderedDict(), set()
            for n, m in g:
                sub[_stage_name([(n, m)], sub_used, False)] = m
            stages[sname] = nn.Sequential(sub)
    return nn.Sequential(stages)


def _verify(model, names, staged, x, ref, atol):
    """Raise unless the stages run in sequence give ``model(x)`` within ``atol``."""
    try:
        out = staged(x)
    except Exception as exc:  # pragma: no cover - the walk ran the same modules
        raise _mismatch_error(model, names, f"the stages fail: {exc}") from exc
    if out.shape != ref.shape:
        raise _mismatch_error(
            model, names,
            f"the stages output shape {tuple(out.shape)}, model(x) {tuple(ref.shape)}",
        )
    diff = float((out.float() - ref.float()).abs().max()) if out.numel() else 0.0
    if not diff <= atol:
        raise _mismatch_error(
            model, names,
            f"on a probe of shape {tuple(x.shape)} the largest absolute difference between "
            f"the stages' output and model(x) is {diff:.3g} > atol={atol}",
        )


# ------------------------------------------------------------------ TorchStages
