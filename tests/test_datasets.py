"""Tests for sklearn_e2cm.datasets on tiny synthetic IDX files (no downloads)."""

import gzip
import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from sklearn_e2cm import datasets
from sklearn_e2cm.datasets import get_data_home, load_fashion_mnist, load_kmnist, load_mnist

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
          np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def _idx_bytes(arr):
    arr = np.asarray(arr)
    header = struct.pack(">BBBB", 0, 0, _CODES[arr.dtype], arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path, data, gz):
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _make(folder, n_train=12, n_test=5, gz=True, seed=0, size=28):
    """Write the four IDX files into ``folder``; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        X = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        X[0, 0, 0] = 255
        y = (np.arange(n) % 10).astype(np.uint8)
        _write(Path(folder) / f"{part}-images-idx3-ubyte", _idx_bytes(X), gz)
        _write(Path(folder) / f"{part}-labels-idx1-ubyte", _idx_bytes(y), gz)
        arrays[part] = (X, y)
    return arrays


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No system folders, no user data home, no network in any test."""
    for info in datasets._DATASETS.values():
        monkeypatch.setattr(info, "system_dirs", (tmp_path / "no-system" / info.name,))
    monkeypatch.setenv("SKLEARN_E2CM_DATA", str(tmp_path / "env-home"))

    def no_network(url, timeout):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(datasets, "_urlopen", no_network)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("loader, name", [
    (load_fashion_mnist, "fashion-mnist"), (load_mnist, "mnist"), (load_kmnist, "kmnist")
])
def test_load_synthetic(tmp_path, gz, loader, name):
    arrays = _make(tmp_path / "home" / name, gz=gz)
    bunch = loader(data_home=tmp_path / "home")
    X, y = arrays["train"]
    assert bunch.data.shape == (12, 1, 28, 28)
    assert bunch.data.dtype == np.float32
    np.testing.assert_array_equal(bunch.data[:, 0] * 255, X.astype(np.float32))
    assert bunch.data.max() == 1.0 and bunch.data.min() >= 0.0
    assert bunch.target.dtype == np.int64
    np.testing.assert_array_equal(bunch.target, y)
    assert len(bunch.target_names) == 10
    assert bunch.subset == "train"
    assert isinstance(bunch.DESCR, str) and bunch.DESCR
    suffix = ".gz" if gz else ""
    assert [Path(f).name for f in bunch.filenames] == [
        "train-images-idx3-ubyte" + suffix, "train-labels-idx1-ubyte" + suffix
    ]
    assert bunch.data.flags.writeable


def test_subsets_flatten_return_X_y_dtype(tmp_path):
    arrays = _make(tmp_path / "fashion-mnist")
    X, y = load_fashion_mnist(data_home=tmp_path, subset="test", return_X_y=True, flatten=True)
    assert X.shape == (5, 784) and y.shape == (5,)
    np.testing.assert_array_equal(X * 255, arrays["t10k"][0].reshape(5, 784))

    X, y = load_fashion_mnist(data_home=tmp_path, subset="all", return_X_y=True)
    assert X.shape == (17, 1, 28, 28)
    np.testing.assert_array_equal(y, np.r_[arrays["train"][1], arrays["t10k"][1]])

    X, _ = load_fashion_mnist(
        data_home=tmp_path, return_X_y=True, dtype=np.uint8, normalize=False
    )
    assert X.dtype == np.uint8
    np.testing.assert_array_equal(X[:, 0], arrays["train"][0])

    X, _ = load_fashion_mnist(data_home=tmp_path, return_X_y=True, dtype="float64")
    assert X.dtype == np.float64 and X.max() == 1.0


def test_data_home_may_hold_files_directly_and_alt_names(tmp_path):
    _make(tmp_path / "flat", gz=False)
    for f in (tmp_path / "flat").iterdir():  # MNIST's unpacked '.idx' spelling
        f.rename(f.with_name(f.name.replace("-idx", ".idx")))
    X, y = load_mnist(data_home=tmp_path / "flat", subset="test", return_X_y=True)
    assert X.shape == (5, 1, 28, 28)


def test_partial_folder_is_skipped(tmp_path):
    # only the training files in data_home/<name>: subset="all" must look elsewhere
    _make(tmp_path / "home" / "mnist", n_train=4, n_test=2)
    os.remove(tmp_path / "home" / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert load_mnist(data_home=tmp_path / "home").data.shape[0] == 4
    with pytest.raises(FileNotFoundError):
        load_mnist(data_home=tmp_path / "home", subset="all")


def test_search_order(tmp_path, monkeypatch):
    info = datasets._DATASETS["fashion-mnist"]
    system = tmp_path / "system"
    monkeypatch.setattr(info, "system_dirs", (system,))
    _make(system, n_train=3)
    _make(tmp_path / "env-home" / "fashion-mnist", n_train=4)
    _make(tmp_path / "explicit" / "fashion-mnist", n_train=5)

    # no data_home: system folder first, then the environment variable's folder
    assert load_fashion_mnist().data.shape[0] == 3
    # an explicit data_home wins over the system folder
    assert load_fashion_mnist(data_home=tmp_path / "explicit").data.shape[0] == 5
    # ... and falls back to the system folder when it lacks the files
    assert load_fashion_mnist(data_home=tmp_path / "empty").data.shape[0] == 3
    monkeypatch.setattr(info, "system_dirs", (tmp_path / "gone",))
    assert load_fashion_mnist().data.shape[0] == 4


def test_get_data_home(tmp_path, monkeypatch):
    assert get_data_home(tmp_path) == tmp_path
    assert get_data_home() == tmp_path / "env-home"
    monkeypatch.delenv("SKLEARN_E2CM_DATA")
    assert get_data_home() == Path.home() / "sklearn_e2cm_data"


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(data_home=tmp_path / "nothing")
    msg = str(info.value)
    assert str(tmp_path / "nothing" / "fashion-mnist") in msg
    assert str(tmp_path / "no-system" / "fashion-mnist") in msg
    assert "dataset-fashion-mnist" in msg and "download=True" in msg
    assert "train-images-idx3-ubyte" in msg

    match = r"(?s)env-home.*kmnist.*load_kmnist\(download=True\)"
    with pytest.raises(FileNotFoundError, match=match):
        load_kmnist(subset="test")


@pytest.mark.parametrize("kwargs, match", [
    ({"subset": "validation"}, "subset='validation'"),
    ({"dtype": "nonsense"}, "dtype='nonsense'"),
    ({"dtype": np.uint8}, "normalize=True.*floating dtype"),
    ({"dtype": np.bool_, "normalize": False}, "numeric"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    _make(tmp_path / "mnist")
    with pytest.raises(ValueError, match=match):
        load_mnist(data_home=tmp_path, **kwargs)


def _corrupt(folder, which, data, gz=False):
    _make(folder, gz=gz)
    path = Path(folder) / which
    for p in (path, Path(str(path) + ".gz")):
        if p.exists():
            p.unlink()
    _write(path, data, gz)


def test_corrupted_files(tmp_path):
    home = tmp_path / "h"
    folder = home / "mnist"
    good_images = _idx_bytes(np.zeros((12, 28, 28), np.uint8))
    labels = (np.arange(12) % 10).astype(np.uint8)
    images, bad_label = "train-images-idx3-ubyte", np.r_[labels[:-1], 10].astype(np.uint8)
    cases = [
        ("train-images-idx3-ubyte", b"\x08\x03" + good_images[2:], "magic number '0803"),
        ("train-images-idx3-ubyte", b"\x00\x00", "not an IDX file"),
        (images, good_images[:-10], r"truncated.*needs 9408 data bytes, found 9398"),
        ("train-images-idx3-ubyte", good_images + b"\x00", "longer than its header"),
        (images, b"\x00\x00\x07\x03" + good_images[4:], "unknown IDX data type 0x07"),
        ("train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00\x00", "header"),
        (images, _idx_bytes(np.zeros((12, 784), np.uint8)), r"shape \(n, rows, cols\)"),
        ("train-labels-idx1-ubyte", _idx_bytes(labels[:11]), "12 images but .* 11 labels"),
        ("train-labels-idx1-ubyte", _idx_bytes(bad_label), "label 10 is outside 0..9"),
        ("train-labels-idx1-ubyte", _idx_bytes(labels.reshape(3, 4)), "label file of shape"),
    ]
    for which, data, match in cases:
        _corrupt(folder, which, data)
        with pytest.raises(ValueError, match=match):
            load_mnist(data_home=home)


def test_truncated_gzip(tmp_path):
    folder = tmp_path / "mnist"
    _make(folder, gz=True)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="gzip.*corrupted or truncated"):
        load_mnist(data_home=tmp_path)


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_parse_idx_dtypes(dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == "u1":
        arr = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    out = datasets._parse_idx(_idx_bytes(arr))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


class _FakeResponse(io.BytesIO):
    pass


def test_download_writes_atomically(tmp_path, monkeypatch):
    """The download code, fed by a fake urlopen: the first mirror fails, the second works."""
    src = tmp_path / "src"
    _make(src, n_train=6, n_test=3, gz=True)
    info = datasets._DATASETS["kmnist"]
    monkeypatch.setattr(info, "mirrors", ("https://broken.invalid/", "https://mirror.invalid/"))
    digests = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
               for p in src.iterdir()}
    monkeypatch.setattr(info, "digests", digests)
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        if url.startswith("https://broken.invalid/"):
            raise OSError("connection refused")
        return _FakeResponse((src / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(datasets, "_urlopen", fake_urlopen)
    bunch = load_kmnist(data_home=tmp_path / "home", subset="all", download=True)
    assert bunch.data.shape == (9, 1, 28, 28)
    folder = tmp_path / "home" / "kmnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in src.iterdir()
    )  # no temporary files left behind
    assert len(calls) == 8
    # already there: nothing downloaded again
    calls.clear()
    load_kmnist(data_home=tmp_path / "home", subset="test", download=True)
    assert calls == []


def test_download_rejects_corrupt_file(tmp_path, monkeypatch):
    info = datasets._DATASETS["mnist"]
    monkeypatch.setattr(info, "mirrors", ("https://mirror.invalid/",))
    monkeypatch.setattr(
        datasets, "_urlopen", lambda url, timeout: _FakeResponse(gzip.compress(b"\x00\x00\x08"))
    )
    with pytest.raises(OSError, match="Could not download train-images-idx3-ubyte.gz"):
        load_mnist(data_home=tmp_path, download=True)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_checks_published_digests(tmp_path, monkeypatch):
    """A well-formed IDX file whose digest differs from the published one is refused."""
    src = tmp_path / "src"
    _make(src, n_train=6, n_test=3, gz=True)
    info = datasets._DATASETS["fashion-mnist"]
    monkeypatch.setattr(info, "mirrors", ("https://mirror.invalid/",))
    monkeypatch.setattr(datasets, "_urlopen",
                        lambda url, timeout: _FakeResponse((src / url.rsplit("/", 1)[1]).read_bytes()))
    with pytest.raises(OSError, match="sha256 is [0-9a-f]{64}, expected 3aede38d"):
        load_fashion_mnist(data_home=tmp_path / "home", download=True)
    assert list((tmp_path / "home" / "fashion-mnist").iterdir()) == []
    for name, info in datasets._DATASETS.items():  # every published file has a digest
        assert all(m.startswith("https://") for m in info.mirrors), name
        assert len(info.digests) == 4 and all(info.digests.values()), name


def test_plain_http_mirrors_are_refused(tmp_path, monkeypatch):
    info = datasets._DATASETS["mnist"]
    monkeypatch.setattr(info, "mirrors", ("http://mirror.invalid/",))
    with pytest.raises(OSError, match="only https:// mirrors are used"):
        load_mnist(data_home=tmp_path, download=True)


def test_no_download_without_flag(tmp_path):
    # _urlopen raises AssertionError in every test (autouse fixture)
    with pytest.raises(FileNotFoundError):
        load_mnist(data_home=tmp_path)


@pytest.mark.slow  # reads the 70 000 real images
@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(datasets._DATASETS["fashion-mnist"], "system_dirs", (REAL_FASHION,))
    X, y = load_fashion_mnist(subset="test", return_X_y=True)
    assert X.shape == (10000, 1, 28, 28) and X.dtype == np.float32
    assert 0.0 <= X.min() and X.max() <= 1.0
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    assert np.bincount(y).tolist() == [1000] * 10
    bunch = load_fashion_mnist(subset="train", flatten=True)
    assert bunch.data.shape == (60000, 784)
    assert np.bincount(bunch.target).tolist() == [6000] * 10
    assert list(bunch.target_names[:2]) == ["T-shirt/top", "Trouser"]
