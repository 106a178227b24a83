"""Tests of the torch stage adapter, the splitter, pooling and FLOP counting."""

import itertools
import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from sklearn_e2cm._torch_flops import count_flops, stage_flops  # noqa: E402
from sklearn_e2cm.stages._pooling import (  # noqa: E402
    adaptive_window_sizes,
    make_pooling,
    window_sizes,
)
from sklearn_e2cm.stages.torch import (  # noqa: E402
    TorchStages,
    is_dataloader,
    split_into_stages,
)


# ------------------------------------------------------------------ tiny models
class TVBlock(nn.Module):
    """torchvision-style BasicBlock."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TVResNet(nn.Module):
    """A tiny clone of torchvision's ResNet layout."""

    def __init__(self, n_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(TVBlock(4, 4), TVBlock(4, 4))
        self.layer2 = nn.Sequential(TVBlock(4, 6, 2))
        self.layer3 = nn.Sequential(TVBlock(6, 6))
        self.layer4 = nn.Sequential(TVBlock(6, 8, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class PkgResNet(nn.Module):
    """A tiny clone of the package's ResNet layout (stem, layer1..3, avgpool, fc)."""

    def __init__(self, n_blocks=3, w=2, n_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = nn.Sequential(*[TVBlock(w, w) for _ in range(n_blocks)])
        self.layer2 = nn.Sequential(TVBlock(w, 2 * w, 2), *[TVBlock(2 * w, 2 * w)
                                                            for _ in range(n_blocks - 1)])
        self.layer3 = nn.Sequential(TVBlock(2 * w, 4 * w, 2), *[TVBlock(4 * w, 4 * w)
                                                                for _ in range(n_blocks - 1)])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, n_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TimesTwo(TVResNet):
    def forward(self, x):
        return 2 * super().forward(x)


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.relu2 = nn.ReLU()
        self.fc1 = nn.Linear(4 * 2 * 2, 6)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x)))))
        x = x.view(x.size(0), -1)
        return self.fc2(self.relu3(self.fc1(x)))


class FixedSize(nn.Module):
    """Accepts only 10x10 inputs (the flatten is hidden in forward)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2 * 10 * 10, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _small_net(n_classes=3):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_classes)),
    )


def _X(n=10, shape=(1, 8, 8), seed=0):
    return np.random.RandomState(seed).rand(n, *shape).astype(np.float32)


# ------------------------------------------------------------ split_into_stages
def test_split_torchvision_layout_matches_exactly_and_restores_mode():
    torch.manual_seed(0)
    model = _randomize_bn(TVResNet())
    model.train()
    model.layer2.eval()  # a mixed state must survive
    before = {n: m.training for n, m in model.named_modules()}
    x = torch.randn(2, 3, 16, 16)
    stages = split_into_stages(model, x)
    assert {n: m.training for n, m in model.named_modules()} == before
    # stem + 2 + 1 + 1 + 1 blocks + head
    assert list(stages._modules) == ["conv1", "layer1_0", "layer1_1", "layer2_0", "layer3_0",
                                     "layer4_0", "head"]
    assert list(stages.conv1._modules) == ["conv1", "bn1", "relu", "maxpool"]
    assert [type(m).__name__ for m in stages.head] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    model.eval()
    stages.eval()
    with torch.no_grad():
        assert torch.equal(stages(x), model(x))
    # parameters are shared, not copied
    assert stages.layer1_0 is model.layer1[0]
    assert stages.head.fc.weight is model.fc.weight


def test_split_package_layout_depth20_gives_11_stages():
    torch.manual_seed(0)
    model = _randomize_bn(PkgResNet(n_blocks=3))
    x = torch.randn(2, 1, 8, 8)
    stages = split_into_stages(model, x)
    assert len(stages) == 11
    assert stages[0] is model.stem
    assert isinstance(stages[-1][-1], nn.Linear)
    model.eval()
    with torch.no_grad():
        assert torch.equal(stages.eval()(x), model(x))


def test_split_real_package_resnet_if_available():
    models = pytest.importorskip("sklearn_e2cm.models._resnet")
    torch.manual_seed(0)
    model = models.resnet_small(depth=20, width=2, n_classes=3, input_size=8)
    stages = split_into_stages(model)  # probe inferred from model.input_shape
    assert len(stages) == 11


def test_split_infers_probe_and_generic_fallback():
    torch.manual_seed(0)
    stages = split_into_stages(TVResNet())  # 32x32 probe inferred from conv1.in_channels
    assert len(stages) == 7
    model = LeNet()
    stages = split_into_stages(model, torch.randn(1, 1, 10, 10))
    assert list(stages._modules) == ["conv1", "conv2", "fc1", "fc2"]
    assert isinstance(stages.conv2[-1], nn.Flatten)
    x = torch.randn(3, 1, 10, 10)
    with torch.no_grad():
        assert torch.equal(stages(x), model(x))


def test_split_mismatch_and_bad_inputs_raise_clear_errors():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"could not reproduce TimesTwo.*largest absolute"):
        split_into_stages(TimesTwo(), torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"model\(example_input\) failed.*\(1, 3, 8\)"):
        split_into_stages(TVResNet(), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="pass example_input"):
        split_into_stages(FixedSize())
    split_into_stages(FixedSize(), torch.randn(1, 3, 10, 10))  # fine with the right probe
    with pytest.raises(TypeError, match="nn.Module"):
        split_into_stages([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="no child modules"):
        split_into_stages(nn.Linear(2, 2))


# ---------------------------------------------------------------- constructors
def test_sequential_list_and_module_inputs():
    net = _small_net()
    assert TorchStages(net).n_stages == 3
    assert TorchStages(list(net)).n_stages == 3
    assert TorchStages(tuple(net)).n_stages == 3
    assert TorchStages(nn.ModuleList(net)).n_stages == 3
    ad = TorchStages(TVResNet())
    with pytest.raises(AttributeError, match="after fit"):
        ad.n_stages
    torch.manual_seed(0)
    ad.fit(torch.randn(4, 3, 16, 16))
    assert ad.n_stages == 7 and ad.final_is_classifier and ad.n_outputs_ == 5
    with pytest.raises(TypeError, match=r"stages\[1\] is a str"):
        TorchStages([nn.ReLU(), "relu"])
    with pytest.raises(TypeError, match="nn.Sequential"):
        TorchStages("resnet")
    with pytest.raises(ValueError, match="empty"):
        TorchStages([])
    with pytest.raises(ValueError, match="final_classifier"):
        TorchStages(net, final_classifier="yes")
    with pytest.raises(ValueError, match="Invalid pooling spec 'avgx'"):
        TorchStages(net, pooling="avgx")
    with pytest.raises(ValueError, match="device='gpu'"):
        TorchStages(net, device="gpu").fit(_X())


# ----------------------------------------------------------------------- FLOPs
def test_stage_flops_equal_hand_count():
    torch.manual_seed(0)
    stages = [
        nn.Conv2d(2, 3, 3, padding=1),  # 5x5 -> 5x5
        nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2)),  # -> 2x2
        nn.Sequential(nn.Conv2d(4, 4, 1, groups=2), nn.Flatten(), nn.Linear(16, 6)),
    ]
    ad = TorchStages(stages, final_classifier=False).fit(np.zeros((3, 2, 5, 5)))
    hand = [
        2 * 2 * 3 * 9 * 5 * 5,
        2 * 3 * 4 * 9 * 2 * 2,
        2 * (4 // 2) * 4 * 1 * 2 * 2 + 2 * 16 * 6,
    ]
    np.testing.assert_array_equal(ad.stage_flops_, hand)
    assert ad.stage_flops_.dtype == np.float64
    assert ad.output_shapes_ == [(3, 5, 5), (4, 2, 2), (6,)]
    np.testing.assert_array_equal(ad.vector_dims_, [75, 16, 6])
    np.testing.assert_array_equal(ad.vector_flops_, [0, 0, 0])
    # helpers: whole-batch count and per-sample counts
    f, out = count_flops(stages[0], torch.zeros(4, 2, 5, 5))
    assert f == 4 * hand[0] and out.shape == (4, 3, 5, 5)
    with torch.inference_mode():
        per = stage_flops(stages, torch.zeros(2, 2, 5, 5))
    np.testing.assert_array_equal(per, hand)


def test_flopcountermode_ignores_elementwise_and_bn():
    m = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Softmax(1)).eval()
    with torch.inference_mode():
        assert count_flops(m, torch.randn(1, 3, 4, 4))[0] == 0
        assert count_flops(lambda z: z @ z.T, torch.randn(2, 3))[0] == 2 * 2 * 3 * 2


# --------------------------------------------------------------------- pooling
def _brute_kernel(mode, shape, kernel):
    """Brute force over the windows of a non-overlapping ceil-mode kernel pooling."""
    ranges = [[(s, min(s + k, n)) for s in range(0, n, k)] for n, k in zip(shape, kernel)]
    total = 0
    for win in itertools.product(*ranges):
        size = math.prod(e - s for s, e in win)
        total += size - 1 if mode == "max" else size
    return total, tuple(len(r) for r in ranges)


def _brute_adaptive(mode, shape, grid):
    c, spatial = shape[0], shape[1:]
    ranges = [
        [(math.floor(i * n / o), math.ceil((i + 1) * n / o)) for i in range(o)]
        for n, o in zip(spatial, grid)
    ]
    total = 0
    for win in itertools.product(*ranges):
        size = math.prod(e - s for s, e in win)
        total += size - 1 if mode == "max" else size
    return c * total


@pytest.mark.parametrize(
    "spec, shape, out_shape, flops",
    [
        (None, (6, 7, 5), (6, 7, 5), 0),
        ("flatten", (6, 7, 5), (6, 7, 5), 0),
        (2, (6, 7, 5), (6, 4, 3), 6 * _brute_kernel("max", (7, 5), (2, 2))[0]),
        ((4, 2, 2), (6, 7, 5), (2, 4, 3), _brute_kernel("max", (6, 7, 5), (4, 2, 2))[0]),
        ((8, 2, 2), (80, 14, 14), (10, 7, 7), 10 * 7 * 7 * 31),  # the paper's reduction
        (("max", (8, 2, 2)), (80, 14, 14), (10, 7, 7), 10 * 7 * 7 * 31),
        (("avg", (2, 2, 2)), (4, 4, 4), (2, 2, 2), 4 * 4 * 4),
        (("max", 3), (6, 7, 5), (6, 3, 3), _brute_adaptive("max", (6, 7, 5), (3, 3))),
        (("avg", (2, 4)), (6, 7, 5), (6, 2, 4), _brute_adaptive("avg", (6, 7, 5), (2, 4))),
        ("avg1", (6, 7, 5), (6, 1, 1), 6 * 35),
        ("max1", (6, 7, 5), (6, 1, 1), 6 * 34),
        ("avg4", (6, 7, 5), (6, 4, 4), _brute_adaptive("avg", (6, 7, 5), (4, 4))),
        ("avg8", (6, 7, 5), (6, 7, 5), 0),  # grid clipped to the input: identity
        (2, (10,), (10,), 0),  # 2-D outputs are never pooled
        (2, (4, 9), (4, 5), 4 * _brute_kernel("max", (9,), (2,))[0]),  # 3-D output
        ((2, 3), (4, 9), (2, 3), _brute_kernel("max", (4, 9), (2, 3))[0]),
        (nn.MaxPool2d(2), (6, 7, 5), (6, 3, 2), 6 * 6 * 3),
    ],
)
def test_pooling_shapes_and_flops(spec, shape, out_shape, flops):
    pool = make_pooling(spec, 1)[0]
    Z = torch.randn(1, *shape)
    out, f = pool.measure(Z)
    assert tuple(out.shape[1:]) == out_shape
    assert f == flops
    assert torch.equal(pool(Z), out)


def test_pooling_values_match_torch():
    Z = torch.randn(2, 6, 7, 5)
    pool = make_pooling(("avg", (2, 4)), 1)[0]
    torch.testing.assert_close(pool(Z), nn.functional.adaptive_avg_pool2d(Z, (2, 4)))
    pool = make_pooling((3, 2, 2), 1)[0]
    expected = torch.empty(2, 2, 4, 3)
    for c, h, w in itertools.product(range(2), range(4), range(3)):
        expected[:, c, h, w] = Z[:, 3 * c:3 * c + 3, 2 * h:2 * h + 2, 2 * w:2 * w + 2].amax((1, 2, 3))
    torch.testing.assert_close(pool(Z), expected)


def test_adaptive_flops_exact_against_brute_force():
    for n_in, n_out in itertools.product(range(1, 12), range(1, 9)):
        brute = [math.ceil((i + 1) * n_in / n_out) - math.floor(i * n_in / n_out)
                 for i in range(n_out)]
        assert adaptive_window_sizes(n_in, n_out).tolist() == brute
    for H, W, gh, gw in [(7, 5, 3, 2), (13, 11, 4, 5), (9, 9, 9, 1), (6, 10, 4, 3)]:
        Z = torch.randn(1, 3, H, W)
        for mode in ("max", "avg"):
            _, f = make_pooling((mode, (gh, gw)), 1)[0].measure(Z)
            assert f == _brute_adaptive(mode, (3, H, W), (gh, gw)), (mode, H, W, gh, gw)
        # the window formula is torch's: an average over each brute-force window
        out = nn.functional.adaptive_avg_pool2d(Z, (gh, gw))
        i, j = gh - 1, gw - 1
        hs, he = math.floor(i * H / gh), math.ceil((i + 1) * H / gh)
        ws, we = math.floor(j * W / gw), math.ceil((j + 1) * W / gw)
        torch.testing.assert_close(out[0, :, i, j], Z[0, :, hs:he, ws:we].mean((1, 2)))


def test_torch_pool_module_flops_exact():
    m = nn.MaxPool2d(3, stride=2, padding=1)
    Z = torch.randn(1, 2, 7, 6)
    out, f = make_pooling(m, 1)[0].measure(Z)
    brute = 0
    for i, j in itertools.product(range(out.shape[2]), range(out.shape[3])):
        h = sum(0 <= 2 * i - 1 + t < 7 for t in range(3))
        w = sum(0 <= 2 * j - 1 + t < 6 for t in range(3))
        brute += h * w - 1
    assert f == 2 * brute
    assert window_sizes(7, 3, 2, 1).tolist() == [2, 3, 3, 2]


def test_pooling_callable_list_and_errors():
    pools = make_pooling([lambda z: z.mean((2, 3)), "avg2"], 3)
    assert len(pools) == 3
    out, f = pools[0].measure(torch.randn(1, 4, 3, 3))
    assert out.shape == (1, 4) and f == 0  # FlopCounterMode does not count reductions
    proj = torch.randn(4, 2)
    out, f = make_pooling(lambda z: z.flatten(2).mean(2) @ proj, 1)[0].measure(
        torch.randn(1, 4, 3, 3))
    assert f == 2 * 4 * 2
    for bad in ["avg", "mean4", 0, -1, True, (0, 2, 2), (2, 2, 2, 2), ("min", 2), ("max", 0),
                ("max", "a"), 2.5, {"max": 2}]:
        with pytest.raises(ValueError, match="Accepted"):
            make_pooling(bad, 2)
    with pytest.raises(ValueError, match="per-stage pooling list needs 2"):
        make_pooling([None, None, None], 2)
    with pytest.raises(ValueError, match=r"stage 3 output of per-sample shape \(4, 9\)"):
        make_pooling((8, 2, 2), 1)[0].measure(torch.randn(1, 4, 9), stage=3)
    with pytest.raises(ValueError, match="grid of 2 sizes"):
        make_pooling(("avg", (2, 2)), 1)[0].measure(torch.randn(1, 4, 9))


def test_adapter_pooling_dims_and_flops():
    ad = TorchStages(_small_net(), pooling=[(2, 2, 2), "avg2"]).fit(_X())
    assert ad.pooled_shapes_[:2] == [(2, 4, 4), (8, 2, 2)]
    np.testing.assert_array_equal(ad.vector_dims_, [32, 32, 0])
    assert ad.vector_flops_[0] == 2 * 4 * 4 * 7
    assert ad.vector_flops_[1] == 8 * 4 * 4  # 4x4 -> 2x2 average: 16 elements per channel
    assert ad.vector_flops_[2] == 0
    with ad.activate():
        Xb, _ = next(ad.batches(_X()))
        Z = ad.run_stage(0, Xb)
        F = ad.stage_vector(0, Z)
    assert F.shape == (10, 32) and F.dtype == torch.float32
    pickle.loads(pickle.dumps(ad))  # joblib ships fitted estimators
    with pytest.raises(ValueError, match="stage 0"):
        TorchStages(_small_net(), pooling=(2, 2)).fit(_X())


# ------------------------------------------------------------------- activate
def test_activate_restores_modes_even_on_error():
    net = _small_net()
    net.train()
    net[1].eval()
    before = [m.training for m in net.modules()]
    ad = TorchStages(net).fit(_X())
    assert [m.training for m in net.modules()] == before  # fit does not change the modes
    with ad.activate():  # every stage (the children of net) in eval mode
        assert not any(m.training for stage in net for m in stage.modules())
        assert torch.is_inference_mode_enabled()
    assert [m.training for m in net.modules()] == before
    assert not torch.is_inference_mode_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        with ad.activate():
            raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == before


def test_fit_does_not_modify_parameters_or_buffers():
    net = _small_net()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ad = TorchStages(net).fit(_X())
    with ad.activate():
        for Xb, _ in ad.batches(_X()):
            ad.run_stage(0, Xb)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_run_stage_outside_activate_is_still_inference():
    net = _small_net()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ad = TorchStages(net).fit(_X())
    Xb, _ = next(ad.batches(_X()))
    Z = ad.run_stage(0, Xb)  # no activate(): eval + inference mode per call
    assert not Z.requires_grad and net[0].training
    assert ad.stage_vector(0, Z).shape == (10, 4 * 8 * 8)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_activate_moves_and_restores_device():
    net = _small_net()
    ad = TorchStages(net, device="cuda").fit(_X())
    with ad.activate():
        assert next(net.parameters()).device.type == "cuda"
        Xb, _ = next(ad.batches(_X()))
        assert Xb.device.type == "cuda"
        F = ad.stage_vector(0, ad.run_stage(0, Xb))
        assert F.device.type == "cuda"
        kept = ad.take(F, np.arange(F.shape[0]) < 3)
        assert kept.shape[0] == 3
    assert next(net.parameters()).device.type == "cpu"
    assert all(b.device.type == "cpu" for b in net.buffers())
    with pytest.raises(RuntimeError, match="boom"):
        with ad.activate():
            raise RuntimeError("boom")
    assert next(net.parameters()).device.type == "cpu"


def test_device_resolution():
    net = _small_net()
    assert TorchStages(net, device="auto").fit(_X()).device_.type in ("cpu", "cuda")
    assert TorchStages(net, device=torch.device("cpu")).fit(_X()).device_ == torch.device("cpu")
    assert TorchStages(net, device=None).fit(_X()).device_ == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            TorchStages(net, device="cuda:0").fit(_X())


# -------------------------------------------------------------------- batches
def test_batches_from_numpy_tensor_and_dataloaders():
    X = _X(10)
    y = np.arange(10) % 3
    ad = TorchStages(_small_net()).fit(X)
    got = list(ad.batches(X, y, 4))
    assert [b[0].shape[0] for b in got] == [4, 4, 2]
    assert all(b[0].dtype == torch.float32 for b in got)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)
    np.testing.assert_array_equal(torch.cat([b[0] for b in got]).numpy(), X)
    assert all(b[1] is None for b in ad.batches(X.astype(np.float64), None, 3))
    got = list(ad.batches(torch.from_numpy(X), torch.from_numpy(y), 6))
    assert [b[0].shape[0] for b in got] == [6, 4] and isinstance(got[0][1], np.ndarray)
    dl = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=3)
    assert is_dataloader(dl)
    got = list(ad.batches(dl))
    assert [b[0].shape[0] for b in got] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)
    got = list(ad.batches(DataLoader(TensorDataset(torch.from_numpy(X)), batch_size=5)))
    assert [b[1] for b in got] == [None, None]
    got = list(ad.batches(DataLoader(torch.from_numpy(X), batch_size=5)))  # bare tensors
    assert len(got) == 2 and got[0][1] is None
    with pytest.raises(ValueError, match="y must be None"):
        list(ad.batches(dl, y))
    with pytest.raises(ValueError, match="10 samples but y has 3"):
        list(ad.batches(X, y[:3]))
    # fit from a DataLoader
    ad2 = TorchStages(_small_net()).fit(dl)
    assert ad2.input_shape_ == (1, 8, 8)
    np.testing.assert_array_equal(ad2.stage_flops_, ad.stage_flops_)


def test_dataloader_with_changing_shapes_raises():
    items = [torch.zeros(1, 8, 8)] * 2 + [torch.zeros(1, 6, 6)] * 2
    dl = DataLoader(items, batch_size=2)
    ad = TorchStages(_small_net())
    with pytest.raises(ValueError, match=r"batch 1 has samples of shape \(1, 6, 6\).*\(1, 8, 8\)"):
        list(ad.batches(dl))
    ad.fit(_X())
    with pytest.raises(ValueError, match=r"\(1, 6, 6\) but \(1, 8, 8\)"):
        list(ad.batches(DataLoader(items[2:], batch_size=2)))


# ----------------------------------------------------- final classifier, take
def test_final_is_classifier_resolution_and_outputs():
    X = _X(6)
    ad = TorchStages(_small_net(3)).fit(X)
    assert ad.final_is_classifier and ad.n_outputs_ == 3
    ad.set_classes(np.array([0, 1, 2]))
    assert ad.final_is_classifier
    np.testing.assert_array_equal(ad.vector_dims_, [4 * 8 * 8, 8 * 4 * 4, 0])
    ad.set_classes(np.array([0, 1, 2, 3]))
    assert not ad.final_is_classifier
    assert ad.vector_dims_[-1] == 3
    ad.set_classes(np.array([0, 1, 2]))
    with ad.activate():
        Xb, _ = next(ad.batches(X))
        Z = ad.run_stage(1, ad.run_stage(0, Xb))
        idx, proba = ad.final_outputs(Z)
        logits = ad.stage_modules_[-1](Z)
    # indices stay on the batch's device: the router copies them to the host once per batch
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64 and idx.shape == (6,)
    assert idx.device == Z.device
    np.testing.assert_array_equal(idx.numpy(), logits.argmax(1).numpy())
    torch.testing.assert_close(proba.sum(1), torch.ones(6))
    # last stage not 2-D
    conv_only = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3))
    assert not TorchStages(conv_only).fit(X).final_is_classifier
    with pytest.raises(ValueError, match="final_classifier=True"):
        TorchStages(conv_only, final_classifier=True).fit(X)
    assert not TorchStages(_small_net(), final_classifier=False).fit(X).final_is_classifier
    forced = TorchStages(_small_net(3), final_classifier=True).fit(X)
    with pytest.raises(ValueError, match="3 class scores for 4 classes"):
        forced.set_classes([0, 1, 2, 3])


def test_take_and_helpers():
    ad = TorchStages(_small_net()).fit(_X())
    Z = torch.arange(12.0).reshape(6, 2)
    keep = np.array([True, False, True, False, False, True])
    torch.testing.assert_close(ad.take(Z, keep), Z[[0, 2, 5]])
    torch.testing.assert_close(ad.take(Z, np.array([1, 3])), Z[[1, 3]])
    assert ad.take(Z, np.zeros(6, bool)).shape == (0, 2)
    assert ad.n_rows(Z) == 6
    out = ad.to_numpy(Z)
    assert isinstance(out, np.ndarray) and out.shape == (6, 2)
    assert ad.backend == "torch"
