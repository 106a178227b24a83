"""Tests for sklearn_e2cm.models (tiny networks, seconds in total)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from sklearn_e2cm.models import BasicBlock, resnet_small, train_classifier  # noqa: E402

CHILDREN = ["stem", "layer1", "layer2", "layer3", "avgpool", "fc"]


def _tiny(n_classes=3, **kw):
    kw.setdefault("depth", 8)
    kw.setdefault("width", 4)
    kw.setdefault("input_size", 8)
    return resnet_small(n_classes=n_classes, **kw)


def _easy_data(n=96, n_classes=3, seed=0):
    """Images whose class is given by the brightness of one quadrant: easy to learn."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    X = rng.normal(0, 0.1, size=(n, 1, 8, 8)).astype(np.float32)
    for k in range(n_classes):
        r, c = divmod(k, 2)
        X[y == k, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 2.0
    return X, y


# ----------------------------------------------------------------------------
# resnet_small
# ----------------------------------------------------------------------------
def test_named_children_layout():
    model = _tiny()
    assert [name for name, _ in model.named_children()] == CHILDREN
    assert isinstance(model.stem, nn.Sequential)
    assert [type(m) for m in model.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    for name in ("layer1", "layer2", "layer3"):
        group = getattr(model, name)
        assert isinstance(group, nn.Sequential)
        assert all(isinstance(b, BasicBlock) for b in group)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert model.avgpool.output_size == 1
    assert isinstance(model.fc, nn.Linear)
    assert (model.fc.in_features, model.fc.out_features) == (16, 3)


@pytest.mark.parametrize("depth, n_blocks", [(8, 1), (14, 2), (20, 3)])
def test_depth_gives_blocks_per_group(depth, n_blocks):
    model = resnet_small(depth=depth, width=4, input_size=8)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [n_blocks] * 3
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convs + fc (shortcuts are not counted)


def test_resnet20_widths_and_shortcuts():
    model = resnet_small()  # ResNet-20, width 16, 28x28, 10 classes
    assert model.layer1[0].downsample is None
    for group, (c_in, c_out) in zip(
        (model.layer2, model.layer3), [(16, 32), (32, 64)], strict=True
    ):
        ds = group[0].downsample
        assert isinstance(ds, nn.Sequential)
        assert isinstance(ds[0], nn.Conv2d) and ds[0].kernel_size == (1, 1)
        assert (ds[0].in_channels, ds[0].out_channels, ds[0].stride) == (c_in, c_out, (2, 2))
        assert isinstance(ds[1], nn.BatchNorm2d)
        assert all(b.downsample is None for b in list(group)[1:])
    n_params = sum(p.numel() for p in model.parameters())
    assert 270_000 < n_params < 280_000  # ResNet-20 (0.27M) + two 1x1 shortcuts
    assert model.input_shape == (1, 28, 28)


@pytest.mark.parametrize("size", [8, 11, 28])
def test_forward_shapes(size):
    model = _tiny(n_classes=5, in_channels=3, input_size=size).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_forward_equals_sequential_of_children():
    """The torch stage splitter relies on this decomposition."""
    torch.manual_seed(0)
    model = _tiny().eval()
    staged = nn.Sequential(
        model.stem, model.layer1, model.layer2, model.layer3, model.avgpool, nn.Flatten(1), model.fc
    )
    x = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), staged(x))
        block = model.layer2[0]
        h = model.layer1(model.stem(x))
        assert block(h).shape == (4, 8, 4, 4)


def test_init_is_deterministic_under_seed():
    torch.manual_seed(123)
    a = _tiny()
    torch.manual_seed(123)
    b = _tiny()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    torch.manual_seed(124)
    c = _tiny()
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)


def test_zero_init_residual():
    model = _tiny(zero_init_residual=True)
    assert all(not b.bn2.weight.detach().any() for b in model.layer1)


@pytest.mark.parametrize("depth", [19, 21, 2, 0, -4, 20.0, "20", True])
def test_bad_depth_names_value(depth):
    with pytest.raises(ValueError, match=r"6n \+ 2.*depth=" + repr(depth).replace(".", r"\.")):
        resnet_small(depth=depth)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width=0"),
        ({"in_channels": 1.5}, "in_channels=1.5"),
        ({"n_classes": 1}, "n_classes=1"),
        ({"input_size": 7}, "at least 8x8.*input_size=7"),
        ({"input_size": (28, 4)}, r"input_size=\(28, 4\)"),
        ({"input_size": "big"}, "input_size='big'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet_small(**kwargs)


def test_non_square_input_size():
    model = resnet_small(depth=8, width=4, input_size=(8, 12))
    assert model.input_size == (8, 12)
    assert model.eval()(torch.zeros(1, 1, 8, 12)).shape == (1, 10)


# ----------------------------------------------------------------------------
# train_classifier
# ----------------------------------------------------------------------------
def test_train_learns_easy_problem_and_records_history():
    X, y = _easy_data()
    X_copy, y_copy = X.copy(), y.copy()
    torch.manual_seed(0)
    model = _tiny()
    history = []
    out = train_classifier(
        model, X, y, epochs=4, batch_size=32, random_state=0, history=history,
        validation_data=(X, y),
    )
    assert out is model
    assert not model.training
    np.testing.assert_array_equal(X, X_copy)  # inputs untouched
    np.testing.assert_array_equal(y, y_copy)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert set(history[0]) == {
        "epoch", "loss", "train_accuracy", "lr", "time", "val_loss", "val_accuracy"
    }
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_accuracy"] >= 0.9
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine annealed to 0
    with torch.inference_mode():
        acc = (model(torch.from_numpy(X)).argmax(1).numpy() == y).mean()
    assert acc == pytest.approx(history[-1]["val_accuracy"])


def test_reproducible_with_random_state():
    X, y = _easy_data(n=64)
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        model = train_classifier(_tiny(), X, y, epochs=1, batch_size=16, random_state=3)
        states.append(model.state_dict())
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_reproducible_with_shuffling_dataloader():
    X, y = _easy_data(n=64)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=16, shuffle=True
    )
    weights = []
    for _ in range(2):
        torch.manual_seed(7)
        model = train_classifier(_tiny(), loader, epochs=1, random_state=3)
        weights.append(model.fc.weight.detach().clone())
    assert torch.equal(*weights)


def test_random_state_does_not_touch_global_rng():
    X, y = _easy_data(n=32)
    torch.manual_seed(0)
    model = _tiny()
    before = torch.random.get_rng_state()
    train_classifier(model, X, y, epochs=1, batch_size=16, random_state=5)
    assert torch.equal(before, torch.random.get_rng_state())


def test_different_random_states_differ():
    X, y = _easy_data(n=64)
    weights = []
    for seed in (0, 1):
        torch.manual_seed(7)
        model = train_classifier(_tiny(), X, y, epochs=1, batch_size=16, random_state=seed)
        weights.append(model.fc.weight.detach().clone())
    assert not torch.equal(*weights)


@pytest.mark.parametrize(
    "optimizer, schedule",
    [("sgd", None), ("adamw", "cosine"), ("adamw", "onecycle"), ("sgd", "onecycle")],
)
def test_optimizers_and_schedules(optimizer, schedule):
    X, y = _easy_data(n=48)
    history = []
    train_classifier(
        _tiny(), X, y, epochs=2, batch_size=16, optimizer=optimizer, schedule=schedule,
        label_smoothing=0.1, random_state=0, history=history,
    )
    assert all(np.isfinite(h["loss"]) for h in history)
    if schedule is None:
        assert history[-1]["lr"] == pytest.approx(0.1)


def test_default_lr_per_optimizer():
    X, y = _easy_data(n=32)
    for optimizer, lr in [("sgd", 0.1), ("adamw", 1e-3)]:
        history = []
        train_classifier(
            _tiny(), X, y, epochs=1, batch_size=16, optimizer=optimizer, schedule=None,
            history=history,
        )
        assert history[0]["lr"] == pytest.approx(lr)


def test_tensor_and_dataloader_inputs_match_types():
    X, y = _easy_data(n=48)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    history = []
    train_classifier(_tiny(), Xt, yt, epochs=1, batch_size=16, random_state=0, history=history)
    assert history[0]["train_accuracy"] >= 0

    loader = DataLoader(TensorDataset(Xt, yt.to(torch.uint8)), batch_size=16, shuffle=True)
    history = []
    train_classifier(
        _tiny(), loader, epochs=1, random_state=0, history=history, validation_data=loader
    )
    assert 0 <= history[0]["val_accuracy"] <= 1


def test_accepts_non_float32_inputs_and_float_integer_labels():
    X, y = _easy_data(n=32)
    X8 = (np.clip(X, 0, 2) * 100).astype(np.uint8)
    X8.flags.writeable = False
    train_classifier(_tiny(), X8, y.astype(np.float64), epochs=1, batch_size=16)
    train_classifier(_tiny(), X.astype(np.float64), list(y), epochs=1, batch_size=16)


def test_trailing_single_sample_batch_is_merged():
    # 33 = 2 * 16 + 1: a batch of one would break BatchNorm in train mode.
    X, y = _easy_data(n=33)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    train_classifier(model, X, y, epochs=1, batch_size=16)


def test_model_returns_to_original_device_and_eval_mode_on_error():
    X, y = _easy_data(n=32)
    model = _tiny(n_classes=2)  # labels go up to 2: out of range
    model.train()
    with pytest.raises(ValueError, match="label 2.*outputs 2 class scores"):
        train_classifier(model, X, y, epochs=1, batch_size=32)
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"


def test_seeded_training_is_the_plain_minibatch_loop():
    """With random_state, array training equals a hand-written loop, bit for bit."""
    X, y = _easy_data(n=41)  # batches of 16, 16, 9
    torch.manual_seed(0)
    model = _tiny()
    ref = _tiny()
    ref.load_state_dict(model.state_dict())
    history = []
    train_classifier(model, X, y, epochs=2, batch_size=16, random_state=7, history=history,
                     label_smoothing=0.1)

    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        gen = torch.Generator().manual_seed(7)
        for record in history:
            ref.train()
            order, total = torch.randperm(41, generator=gen), torch.zeros((), dtype=torch.float64)
            for start in range(0, 41, 16):
                idx = order[start:start + 16]
                loss = torch.nn.functional.cross_entropy(ref(Xt[idx]), yt[idx],
                                                         label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * len(idx)
            assert record["loss"] == float(total) / 41
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


def test_verbose_shows_progress(capsys, monkeypatch):
    from sklearn_e2cm import _backend

    monkeypatch.setattr(_backend, "_logging_configured", lambda: False)  # as in a plain script
    X, y = _easy_data(n=32)
    train_classifier(_tiny(), X, y, epochs=1, batch_size=16, verbose=1, validation_data=(X, y))
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "val_acc" in err


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"epochs": 0}, ValueError, "epochs=0"),
        ({"epochs": 1.5}, ValueError, "epochs=1.5"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"optimizer": "adam"}, ValueError, "optimizer='adam'"),
        ({"schedule": "step"}, ValueError, "schedule='step'"),
        ({"lr": 0}, ValueError, "lr=0"),
        ({"lr": float("nan")}, ValueError, "lr=nan"),
        ({"weight_decay": -1}, ValueError, "weight_decay=-1"),
        ({"momentum": 1.0}, ValueError, "momentum=1.0"),
        ({"label_smoothing": 1}, ValueError, "label_smoothing=1"),
        ({"verbose": -1}, ValueError, "verbose=-1"),
        ({"random_state": "x"}, ValueError, "random_state='x'"),
        ({"device": "nodevice"}, ValueError, "device='nodevice'"),
        ({"history": ()}, TypeError, "history must be None or a list"),
        ({"validation_data": 3}, ValueError, "validation_data must be"),
    ],
)
def test_bad_parameters(kwargs, exc, match):
    X, y = _easy_data(n=16)
    with pytest.raises(exc, match=match):
        train_classifier(_tiny(), X, y, **kwargs)


def test_bad_data():
    X, y = _easy_data(n=16)
    model = _tiny()
    with pytest.raises(ValueError, match="X has 16, y has 15"):
        train_classifier(model, X, y[:-1])
    with pytest.raises(ValueError, match="X_val has 16, y_val has 3"):
        train_classifier(model, X, y, validation_data=(X, y[:3]))
    with pytest.raises(ValueError, match="negative label -1"):
        train_classifier(model, X, np.r_[y[:-1], -1])
    with pytest.raises(ValueError, match="integer class indices.*LabelEncoder"):
        train_classifier(model, X, np.array(["a", "b"] * 8))
    with pytest.raises(ValueError, match="integer class indices"):
        train_classifier(model, X, y + 0.5)
    with pytest.raises(ValueError, match=r"1-D.*\(16, 1\)"):
        train_classifier(model, X, y[:, None])
    with pytest.raises(ValueError, match="y is required"):
        train_classifier(model, X)
    with pytest.raises(ValueError, match=r"shape \(n_samples, \.\.\.\)"):
        train_classifier(model, X[0, 0, 0], y[:8])
    X_nan = X.copy()
    X_nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_classifier(model, X_nan, y)
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=8)
    with pytest.raises(ValueError, match="y must be None when X is a DataLoader"):
        train_classifier(model, loader, y)
    bad_loader = DataLoader(TensorDataset(torch.from_numpy(X)), batch_size=8)
    with pytest.raises(ValueError, match=r"\(x, y\) batches.*length 1"):
        train_classifier(model, bad_loader)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        train_classifier("not a model", X, y)


def test_divergence_raises():
    X, y = _easy_data(n=32)
    with pytest.raises(FloatingPointError, match="lower learning rate"):
        train_classifier(_tiny(), X * 1e30, y, epochs=1, batch_size=16, lr=1e30, schedule=None)


def test_loader_edge_cases():
    X, y = _easy_data(n=16)
    empty = DataLoader(TensorDataset(torch.from_numpy(X[:0]), torch.from_numpy(y[:0])))
    with pytest.raises(ValueError, match="no training samples"):
        train_classifier(_tiny(), empty)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(torch.from_numpy(X), torch.from_numpy(y)))

    stream = DataLoader(Stream(), batch_size=8)
    with pytest.raises(ValueError, match="pass schedule=None"):
        train_classifier(_tiny(), stream)
    history = []
    train_classifier(_tiny(), stream, schedule=None, epochs=1, history=history)
    assert len(history) == 1
