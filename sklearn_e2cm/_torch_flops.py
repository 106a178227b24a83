"""FLOP counting of torch modules with :class:`torch.utils.flop_counter.FlopCounterMode`.

``FlopCounterMode`` is the source of truth for the cost of torch stages. It
counts a multiply-add as 2 FLOPs and only counts the operators it has a
formula for:

* counted: matrix products (``aten.mm``, ``aten.addmm``, ``aten.bmm``,
  ``aten.baddbmm``, ``aten._scaled_mm`` -- so ``nn.Linear``, ``torch.matmul``,
  ``einsum``), convolutions (``aten.convolution`` and its backends:
  ``2 * C_in/groups * prod(kernel) * C_out * prod(output spatial)`` per
  sample) and scaled-dot-product / flex attention; attention kernels the
  counter has no formula for are counted here by formula (see below);
* not counted (0 FLOPs): the bias of a linear layer or a convolution,
  batch normalisation (in eval mode), activations (ReLU, GELU, ...), residual
  additions and other elementwise operations, pooling, softmax, reshapes.

Attention that ``FlopCounterMode`` sees as one fused kernel without a formula
(on CPU: ``scaled_dot_product_attention``'s flash kernel, the fast path of
``nn.MultiheadAttention`` and of ``nn.TransformerEncoderLayer`` in eval mode
without gradients) would count 0; :func:`count_flops` registers these
formulas, in the counter's convention (matrix products only, a multiply-add
as 2; ``B`` the batch, ``L`` / ``S`` the query / key lengths, ``E`` the embed
dimension, summed over heads, ``F`` the feed-forward width):

* scaled dot-product attention: ``2·B·H·L·S·E_h`` for ``QKᵀ`` plus
  ``2·B·H·L·S·E_v`` for the product with ``V`` (per head dimensions);
* multi-head attention: the in-projections ``2·B·(L + 2S)·E²``, ``QKᵀ`` and
  ``AV`` ``2·2·B·L·S·E``, the out-projection ``2·B·L·E²``;
* a transformer encoder layer: its multi-head self-attention (``S = L``) and
  its feed-forward block ``2·2·B·L·E·F``.

Operators the counter already has a formula for keep torch's own.

For convolutional networks the uncounted work is a few percent of the total,
and the same convention is applied to every stage, so the normalised costs
(stage FLOPs divided by the total) are consistent. The pooling that reduces a
stage output to its class-means vector is counted separately and exactly by
:mod:`sklearn_e2cm.stages._pooling`.
"""

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "stage_flops"]


def _prod(shape):
    return int(np.prod([int(s) for s in shape], dtype=np.int64))


def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """``QKᵀ`` and ``AV`` of scaled dot-product attention, any leading batch/head dims."""
    L, E = int(query_shape[-2]), int(query_shape[-1])
    S, Ev = int(key_shape[-2]), int(value_shape[-1])
    batch = _prod(query_shape[:-2])
    return 2 * batch * L * S * E + 2 * batch * L * S * Ev


def _mha_count(query_shape, key_shape, embed_dim):
    """Projections and attention products of multi-head attention (``E`` summed over heads)."""
    E = int(embed_dim)
    L = int(query_shape[-2])
    S = int(key_shape[-2])
    B = _prod(query_shape[:-2])  # 1 for an unbatched (L, E) query
    projections = 2 * B * L * E * E + 2 * 2 * B * S * E * E + 2 * B * L * E * E
    return projections + 2 * 2 * B * L * S * E


def _native_mha_formula(query_shape, key_shape, value_shape, embed_dim, *args,
                        out_shape=None, **kwargs):
    """``aten._native_multi_head_attention``: the fast path of ``nn.MultiheadAttention``."""
    return _mha_count(query_shape, key_shape, embed_dim)


def _encoder_layer_formula(src_shape, embed_dim, num_heads, *args, out_shape=None, **kwargs):
    """``aten._transformer_encoder_layer_fwd``: the fast path of ``nn.TransformerEncoderLayer``.

    The feed-forward weights are the 15th and 17th arguments (``ffn_weight_1``
    of shape (F, E), ``ffn_weight_2`` of shape (E, F)).
    """
    ffn1 = kwargs.get("ffn_weight_1", args[11] if len(args) > 11 else None)
    F = 0 if ffn1 is None else int(ffn1[0])
    L, B = int(src_shape[-2]), _prod(src_shape[:-2])
    return _mha_count(src_shape, src_shape, embed_dim) + 2 * 2 * B * L * int(embed_dim) * F


_ATTENTION_FORMULAS = {
    "scaled_dot_product_attention": _sdpa_formula,
    "_scaled_dot_product_flash_attention": _sdpa_formula,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_formula,
    "_scaled_dot_product_efficient_attention": _sdpa_formula,
    "_native_multi_head_attention": _native_mha_formula,
    "_transformer_encoder_layer_fwd": _encoder_layer_formula,
}
_ATTENTION_MAPPING = None


def _attention_mapping():
    """Formulas for the attention operators this torch's counter has none for (cached)."""
    global _ATTENTION_MAPPING
    if _ATTENTION_MAPPING is None:
        from torch.utils import flop_counter

        known = getattr(flop_counter, "flop_registry", None)
        if known is None:  # torch < 2.2
            known = getattr(flop_counter, "flop_mapping", {})
        mapping = {}
        for name, formula in _ATTENTION_FORMULAS.items():
            try:
                op = getattr(torch.ops.aten, name)
            except (AttributeError, RuntimeError):  # not in this torch
                continue
            if op not in known:
                mapping[op] = formula
        _ATTENTION_MAPPING = mapping
    return _ATTENTION_MAPPING


def count_flops(module, example_input):
    """FLOPs of one call ``module(example_input)``, as FlopCounterMode counts them.

    The call runs as it is: the caller chooses the mode (``eval()``), the
    device and the grad mode. Only operators FlopCounterMode knows are counted
    (matrix products, convolutions, attention; see the module docstring).

    Parameters
    ----------
    module : callable
        A ``torch.nn.Module`` or any callable on tensors.
    example_input : torch.Tensor
        The input batch. The count is for the whole batch.

    Returns
    -------
    flops : int
        Total FLOPs of the call (a multiply-add counts 2).
    output : object
        What ``module(example_input)`` returned.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_e2cm._torch_flops import count_flops
    >>> flops, out = count_flops(nn.Linear(3, 4), torch.zeros(2, 3))
    >>> flops  # 2 samples * 2 * 3 * 4 (the bias add is not counted)
    48
    >>> out.shape
    torch.Size([2, 4])
    """
    counter = FlopCounterMode(display=False, custom_mapping=_attention_mapping())
    # torch < 2.3 counts nothing under inference_mode (its dispatch skips the counter):
    # count in no-grad mode instead, on a normal copy of an inference tensor
    with torch.inference_mode(False), torch.no_grad():
        x = example_input
        if isinstance(x, torch.Tensor) and x.is_inference():
            x = x.clone()
        with counter:
            output = module(x)
    return int(counter.get_total_flops()), output


def stage_flops(stages, probe, *, return_outputs=False):
    """Per-sample FLOPs of each stage of a chain, run in sequence on a probe batch.

    Stage ``j`` runs on the output of stage ``j - 1`` (stage 0 on ``probe``).
    The counts are divided by the probe's batch size (use a batch of 1).
    Like :func:`count_flops`, this runs the stages as they are: put them in
    ``eval()`` mode and under :func:`torch.inference_mode` first.

    Parameters
    ----------
    stages : iterable of callables
        E.g. an ``nn.Sequential`` or a list of modules.
    probe : torch.Tensor of shape (n, ...)
        Input batch of the first stage.
    return_outputs : bool, default=False
        Also return the output of every stage.

    Returns
    -------
    flops : ndarray of shape (n_stages,), float64
        Per-sample FLOPs of each stage.
    outputs : list
        Only when ``return_outputs``: the output of every stage on the probe.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_e2cm._torch_flops import stage_flops
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    >>> with torch.inference_mode():
    ...     stage_flops(net, torch.zeros(1, 1, 4, 4))
    array([576.,   0., 192.])
    """
    n = int(probe.shape[0])
    if n < 1:
        raise ValueError("The probe batch is empty; pass at least one sample.")
    flops, outputs = [], []
    z = probe
    for stage in stages:
        f, z = count_flops(stage, z)
        flops.append(f / n)
        outputs.append(z)
    flops = np.asarray(flops, dtype=np.float64)
    return (flops, outputs) if return_outputs else flops
