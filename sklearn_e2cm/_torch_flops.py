"""FLOP counting of torch modules with :class:`torch.utils.flop_counter.FlopCounterMode`.

``FlopCounterMode`` is the source of truth for the cost of torch stages. It
counts a multiply-add as 2 FLOPs and only counts the operators it has a
formula for:

* counted: matrix products (``aten.mm``, ``aten.addmm``, ``aten.bmm``,
  ``aten.baddbmm``, ``aten._scaled_mm`` -- so ``nn.Linear``, ``torch.matmul``,
  ``einsum``), convolutions (``aten.convolution`` and its backends:
  ``2 * C_in/groups * prod(kernel) * C_out * prod(output spatial)`` per
  sample) and scaled-dot-product / flex attention;
* not counted (0 FLOPs): the bias of a linear layer or a convolution,
  batch normalisation (in eval mode), activations (ReLU, GELU, ...), residual
  additions and other elementwise operations, pooling, softmax, reshapes.

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
    counter = FlopCounterMode(display=False)
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
