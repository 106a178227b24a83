"""Attention FLOPs: fused kernels the torch counter misses are counted by formula."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from sklearn_e2cm._torch_flops import count_flops, stage_flops  # noqa: E402

B, L, E, H, FF = 2, 6, 16, 4, 24


def _mha_by_hand(B, L, S, E):
    # q, k, v and out projections (multiply-add = 2), then Q·Kᵀ and A·V over all heads
    return 2 * B * L * E * E + 2 * 2 * B * S * E * E + 2 * B * L * E * E + 2 * 2 * B * L * S * E


@pytest.fixture(params=["no_grad", "inference_mode"])
def mode(request):
    return torch.no_grad if request.param == "no_grad" else torch.inference_mode


def test_sdpa_by_hand(mode):
    torch.manual_seed(0)
    q = torch.randn(B, H, L, E // H)
    k = torch.randn(B, H, L + 3, E // H)
    for v_dim in (E // H, 3):  # same width (fused kernel) and another (math path)
        v = torch.randn(B, H, L + 3, v_dim)
        with mode():
            flops, out = count_flops(lambda x: F.scaled_dot_product_attention(x, k, v), q)
        assert out.shape == (B, H, L, v_dim)
        assert flops == 2 * B * H * L * (L + 3) * (E // H) + 2 * B * H * L * (L + 3) * v_dim


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_by_hand(mode, batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
    x = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    with mode():
        flops, (out, _) = count_flops(lambda z: mha(z, z, z, need_weights=False), x)
    assert flops == _mha_by_hand(B, L, L, E)
    # cross attention: keys and values of another length
    kv = torch.randn(B, L + 2, E) if batch_first else torch.randn(L + 2, B, E)
    with mode():
        flops, _ = count_flops(lambda z: mha(z, kv, kv), x)
    assert flops == _mha_by_hand(B, L, L + 2, E)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_by_hand(mode, norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True,
                                       norm_first=norm_first).eval()
    x = torch.randn(B, L, E)
    with mode():
        flops, out = count_flops(layer, x)
        ref = layer(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert flops == _mha_by_hand(B, L, L, E) + 2 * 2 * B * L * E * FF
    # the same layer through its decomposed (training-mode) path counts the same
    layer.train()
    flops_slow, _ = count_flops(layer, x)
    assert flops_slow == flops


def test_stage_flops_of_an_attention_stage_per_sample():
    torch.manual_seed(0)
    stages = nn.Sequential(nn.Linear(E, E), nn.TransformerEncoderLayer(E, H, FF, dropout=0.0,
                                                                       batch_first=True))
    stages.eval()
    with torch.inference_mode():
        f = stage_flops(stages, torch.randn(1, L, E))
    assert f[0] == 2 * L * E * E
    assert f[1] == _mha_by_hand(1, L, L, E) + 2 * 2 * L * E * FF
