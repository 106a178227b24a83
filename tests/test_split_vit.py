"""split_into_stages on a vision transformer laid out as torchvision's VisionTransformer.

torchvision is not a dependency: the model below mirrors its attribute layout and forward
(``torchvision.models.vision_transformer``), at a size that runs in milliseconds.
"""

from collections import OrderedDict
from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from sklearn_e2cm import EarlyExitClassMeans  # noqa: E402
from sklearn_e2cm._torch_flops import stage_flops  # noqa: E402
from sklearn_e2cm.stages import split_into_stages  # noqa: E402


class MLPBlock(nn.Sequential):
    def __init__(self, dim, mlp_dim):
        super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0),
                         nn.Linear(mlp_dim, dim), nn.Dropout(0.0))


class EncoderBlock(nn.Module):
    def __init__(self, num_heads, hidden_dim, mlp_dim, norm_layer):
        super().__init__()
        self.ln_1 = norm_layer(hidden_dim)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = norm_layer(hidden_dim)
        self.mlp = MLPBlock(hidden_dim, mlp_dim)

    def forward(self, input):
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    def __init__(self, seq_length, num_layers, num_heads, hidden_dim, mlp_dim):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, norm_layer))
            for i in range(num_layers)))
        self.ln = norm_layer(hidden_dim)

    def forward(self, input):
        input = input + self.pos_embedding
        return self.ln(self.layers(self.dropout(input)))


class TinyViT(nn.Module):
    """torchvision.models.VisionTransformer's layout and forward, tiny."""

    def __init__(self, image_size=8, patch_size=4, num_layers=3, num_heads=2, hidden_dim=8,
                 mlp_dim=16, num_classes=10, in_channels=1):
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def _process_input(self, x):
        n, c, h, w = x.shape
        p = self.patch_size
        torch._assert(h == self.image_size, "Wrong image height!")
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, (h // p) * (w // p))
        return x.permute(0, 2, 1)

    def forward(self, x):
        x = self._process_input(x)
        n = x.shape[0]
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = self.encoder(x)
        return self.heads(x[:, 0])


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = TinyViT()
    with torch.no_grad():
        model.class_token.normal_()
    return model.eval()


def test_vit_splits_into_stem_blocks_head_and_reproduces_outputs(vit):
    stages = split_into_stages(vit)  # the probe is inferred (an 8x8 one-channel image)
    assert list(stages._modules) == ["stem", "encoder_layer_0", "encoder_layer_1",
                                     "encoder_layer_2", "head"]
    # the stages share the model's parameters: nothing is copied
    ids = {id(p) for p in vit.parameters()}
    assert {id(p) for p in stages.parameters()} == ids
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = vit(x)
        z = x
        for j, stage in enumerate(stages):
            z = stage(z)
            if 0 < j < len(stages) - 1:
                assert z.shape == (5, 5, 8)  # (n, class token + 4 patches, hidden)
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-6)


def test_vit_stage_flops_count_attention_by_hand(vit):
    stages = split_into_stages(vit, torch.zeros(1, 1, 8, 8))
    with torch.inference_mode():
        f = stage_flops(stages, torch.zeros(1, 1, 8, 8))
    L, E, M, P = 5, 8, 16, 4  # tokens, hidden, MLP width, patches
    attention = 2 * L * E * 3 * E + 2 * 2 * L * L * E + 2 * L * E * E
    assert f[0] == 2 * 1 * 4 * 4 * E * P  # patch embedding: one 4x4 kernel per patch
    for j in (1, 2, 3):
        assert f[j] == attention + 2 * 2 * L * E * M
    assert f[4] == 2 * E * 10


@pytest.mark.filterwarnings("ignore:The network's own predictions agree")  # untrained
def test_e2cm_on_a_vit_reproduces_the_model_without_a_target(vit, digit_images):
    Xtr, ytr, Xte, _ = digit_images
    est = EarlyExitClassMeans(stages=split_into_stages(vit), flops_target=None,
                              batch_size=256, random_state=0).fit(Xtr[:300], ytr[:300])
    with torch.inference_mode():
        ref = vit(torch.from_numpy(Xte[:100])).argmax(1).numpy()
    np.testing.assert_array_equal(est.predict(Xte[:100]), ref)
    assert est.n_stages_ == 5
