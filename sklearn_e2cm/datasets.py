"""Loaders for MNIST-style image datasets stored in the IDX format.

Fashion-MNIST, MNIST and Kuzushiji-MNIST are each four IDX files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), gzip-compressed
(``.gz``) or not. The loaders never download anything unless asked to with
``download=True``.

Where the files are looked for, in order:

1. ``data_home`` when it is passed explicitly: ``<data_home>/<name>/``, then
   ``<data_home>/`` itself (so ``data_home`` may also point straight at a
   folder holding the four files);
2. the system location of the Debian package, e.g.
   ``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``);
3. when ``data_home`` is not passed: ``$SKLEARN_E2CM_DATA/<name>/`` if the
   environment variable is set, else ``~/sklearn_e2cm_data/<name>/``.

``download=True`` fetches missing files into the first folder of step 1 or 3
(``<data_home>/<name>/``), over https only, and keeps a file only when its
digests equal the published ones (SHA-256 and MD5 for Fashion-MNIST and
Kuzushiji-MNIST, MD5 for MNIST, the digests its distributors publish) and
it parses as an IDX file.
"""

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._backend import log

__all__ = ["get_data_home", "load_fashion_mnist", "load_kmnist", "load_mnist"]

_ENV_VAR = "SKLEARN_E2CM_DATA"
_SUBSETS = ("train", "test", "all")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes -> big-endian numpy dtypes
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DOWNLOAD_TIMEOUT = 60


class _DatasetInfo:
    def __init__(self, name, title, system_dirs, mirrors, target_names, debian_package, descr,
                 digests):
        self.name = name
        self.title = title
        self.system_dirs = tuple(Path(d) for d in system_dirs)
        self.mirrors = tuple(mirrors)
        #: ``{file.gz: {"sha256": hex, "md5": hex}}``: every digest given must match a download.
        self.digests = dict(digests)
        self.target_names = tuple(target_names)
        self.debian_package = debian_package
        self.descr = descr


_FASHION_DESCR = """\
Fashion-MNIST
=============

Zalando's article images (Xiao, Rasul & Vollgraf, 2017): 70,000 grayscale
28x28 images of clothing in 10 classes, 60,000 for training and 10,000 for
testing, 7,000 images per class. A drop-in replacement for MNIST that is
harder to classify.

Classes: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal,
6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot.

License: MIT. https://github.com/zalandoresearch/fashion-mnist
"""

_MNIST_DESCR = """\
MNIST
=====

Handwritten digits (LeCun, Cortes & Burges): 70,000 grayscale 28x28 images
of the digits 0-9, 60,000 for training and 10,000 for testing.

https://yann.lecun.com/exdb/mnist/
"""

_KMNIST_DESCR = """\
Kuzushiji-MNIST
===============

Cursive Japanese (Kuzushiji) hiragana (Clanuwat et al., 2018): 70,000
grayscale 28x28 images in 10 classes, 60,000 for training and 10,000 for
testing. Classes (romanised): 0 o, 1 ki, 2 su, 3 tsu, 4 na, 5 ha, 6 ma, 7 ya,
8 re, 9 wo.

License: CC BY-SA 4.0. https://github.com/rois-codh/kmnist
"""

_DATASETS = {
    "fashion-mnist": _DatasetInfo(
        name="fashion-mnist",
        title="Fashion-MNIST",
        system_dirs=["/usr/share/datasets/fashion-mnist"],
        mirrors=[
            "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ],
        digests={
            "train-images-idx3-ubyte.gz": {
                "md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "sha256": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"},
            "train-labels-idx1-ubyte.gz": {
                "md5": "25c81989df183df01b3e8a0aad5dffbe",
                "sha256": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"},
            "t10k-images-idx3-ubyte.gz": {
                "md5": "bef4ecab320f06d8554ea6380940ec79",
                "sha256": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"},
            "t10k-labels-idx1-ubyte.gz": {
                "md5": "bb300cfdad3c16e7a12a480ee83cd310",
                "sha256": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"},
        },
        target_names=[
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ],
        debian_package="dataset-fashion-mnist",
        descr=_FASHION_DESCR,
    ),
    "mnist": _DatasetInfo(
        name="mnist",
        title="MNIST",
        system_dirs=["/usr/share/datasets/mnist"],
        mirrors=[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        digests={
            "train-images-idx3-ubyte.gz": {"md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
            "train-labels-idx1-ubyte.gz": {"md5": "d53e105ee54ea40749a09fcbcd1e9432"},
            "t10k-images-idx3-ubyte.gz": {"md5": "9fb629c4189551a2d022fa330f9573f3"},
            "t10k-labels-idx1-ubyte.gz": {"md5": "ec29112dd5afa0611ce80d1b7f02629c"},
        },
        target_names=[str(d) for d in range(10)],
        debian_package=None,
        descr=_MNIST_DESCR,
    ),
    "kmnist": _DatasetInfo(
        name="kmnist",
        title="Kuzushiji-MNIST",
        system_dirs=["/usr/share/datasets/kmnist"],
        mirrors=["https://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
        digests={
            "train-images-idx3-ubyte.gz": {
                "md5": "bdb82020997e1d708af4cf47b453dcf7",
                "sha256": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4"},
            "train-labels-idx1-ubyte.gz": {
                "md5": "e144d726b3acfaa3e44228e80efcd344",
                "sha256": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17"},
            "t10k-images-idx3-ubyte.gz": {
                "md5": "5c965bf0a639b31b8f53240b1b52f4d7",
                "sha256": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5"},
            "t10k-labels-idx1-ubyte.gz": {
                "md5": "7320c461ea6c1c855c0b718fb2a4b134",
                "sha256": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"},
        },
        target_names=["お", "き", "す", "つ", "な", "は", "ま", "や", "れ", "を"],
        debian_package=None,
        descr=_KMNIST_DESCR,
    ),
}


# ----------------------------------------------------------------------------
# locations
# ----------------------------------------------------------------------------
def get_data_home(data_home=None):
    """Root folder of the downloaded / user-provided datasets.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Returned as a :class:`pathlib.Path` (``~`` expanded) when given.
        Otherwise the environment variable ``SKLEARN_E2CM_DATA`` if set, else
        ``~/sklearn_e2cm_data``. The folder is not created.

    Returns
    -------
    data_home : pathlib.Path
        Each dataset lives in a sub-folder named after it (``fashion-mnist``,
        ``mnist``, ``kmnist``).

    Examples
    --------
    >>> from sklearn_e2cm.datasets import get_data_home
    >>> get_data_home("/tmp/my_data").as_posix()
    '/tmp/my_data'
    """
    if data_home is None:
        data_home = os.environ.get(_ENV_VAR) or os.path.join("~", "sklearn_e2cm_data")
    return Path(os.fspath(data_home)).expanduser()


def _candidate_dirs(info, data_home):
    """Folders to look in, in order, and the folder downloads go to."""
    dirs = []
    if data_home is not None:
        root = get_data_home(data_home)
        dirs += [root / info.name, root]
        download_dir = root / info.name
    dirs += list(info.system_dirs)
    if data_home is None:
        download_dir = get_data_home(None) / info.name
        dirs.append(download_dir)
    return dirs, download_dir


def _find_file(folder, base):
    """Path of ``base`` (raw or .gz, '-idx' or '.idx' naming) in ``folder``, or None."""
    alt = base.replace("-idx", ".idx")
    for name in (base, base + ".gz", alt, alt + ".gz"):
        path = folder / name
        if path.is_file():
            return path
    return None


def _locate(info, names, data_home):
    """Map each file base name to a path, all from one folder, or None."""
    dirs, download_dir = _candidate_dirs(info, data_home)
    for folder in dirs:
        found = {base: _find_file(folder, base) for base in names}
        if all(found.values()):
            return found, dirs, download_dir
    return None, dirs, download_dir


# ----------------------------------------------------------------------------
# IDX reading
# ----------------------------------------------------------------------------
def _read_bytes(path):
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(
            f"{path}: cannot decompress the gzip file ({exc}); the file is corrupted or "
            "truncated. Delete it and get it again."
        ) from exc


def _parse_idx(buf, path="<bytes>"):
    """Array stored in the IDX bytes ``buf``, validated against its header."""
    if len(buf) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(buf)} bytes).")
    if buf[0] != 0 or buf[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file (magic number {buf[:4].hex()!r} should start with '0000'); "
            "the file is corrupted or is not an MNIST-style IDX file."
        )
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX data type 0x{code:02x} (expected one of "
            f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})."
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(buf) < header:
        raise ValueError(f"{path}: IDX header for {ndim} dimensions is incomplete or invalid.")
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(buf) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise ValueError(
            f"{path}: IDX file is {what}: shape {shape} of {dtype.name} needs {expected} "
            f"data bytes, found {got}. The file is corrupted; delete it and get it again."
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _read_idx(path):
    return _parse_idx(_read_bytes(path), path)


def _read_pair(images_path, labels_path, n_classes):
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(
            f"{images_path}: expected an image file of shape (n, rows, cols); got shape "
            f"{images.shape}."
        )
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected a label file of shape (n,); got {labels.shape}.")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels."
        )
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"{labels_path}: labels are stored as {labels.dtype} values; an IDX label file holds "
            "integers (the file is corrupted or not a label file)."
        )
    if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
        raise ValueError(f"{images_path}: images hold NaN or infinite values; the file is "
                         "corrupted.")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ValueError(
            f"{labels_path}: label {bad} is outside 0..{n_classes - 1}; the file is corrupted."
        )
    return images, labels


# ----------------------------------------------------------------------------
# download (only with download=True, never in tests)
# ----------------------------------------------------------------------------
def _require_https(url):
    if not url.startswith("https://"):
        raise ValueError(f"refusing to download {url}: only https:// mirrors are used.")


def _urlopen(url, timeout):
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (https mirrors only)


def _check_digests(path, expected, name):
    """Compare the file's digests with the published ones (every algorithm given)."""
    for algorithm in sorted(expected, key=lambda a: a != "sha256"):  # the stronger first
        want = expected[algorithm]
        h = hashlib.new(algorithm)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != want:
            raise ValueError(
                f"{name}: {algorithm} is {h.hexdigest()}, expected {want} (a corrupted or "
                "altered download)."
            )


def _download(info, names, folder, verbose=True):
    """Fetch the missing ``names`` (``.gz``) into ``folder``; each file appears atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for base in names:
        if _find_file(folder, base) is not None:
            continue
        target = folder / (base + ".gz")
        errors = []
        for mirror in info.mirrors:
            url = mirror + base + ".gz"
            fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=folder)
            try:
                log(f"Downloading {url}", verbose)
                _require_https(url)
                with os.fdopen(fd, "wb") as out, _urlopen(url, _DOWNLOAD_TIMEOUT) as response:
                    shutil.copyfileobj(response, out)
                _check_digests(tmp, info.digests.get(base + ".gz", {}), base + ".gz")
                _read_idx(tmp)  # refuse truncated or corrupted downloads
                os.replace(tmp, target)
                break
            except Exception as exc:  # noqa: BLE001 - try the next mirror
                errors.append(f"{url}: {exc}")
                try:
                    os.remove(tmp)
                except OSError:
                    pass
        else:
            raise OSError(
                f"Could not download {base}.gz for {info.title} from any mirror:\n  "
                + "\n  ".join(errors)
            )


# ----------------------------------------------------------------------------
# loaders
# ----------------------------------------------------------------------------
def _load(name, *, data_home, subset, return_X_y, flatten, dtype, normalize, download):
    info = _DATASETS[name]
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be one of {_SUBSETS}; got subset={subset!r}.")
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype must be a numpy dtype; got dtype={dtype!r}.") from exc
    if dtype.kind not in "uif":
        raise ValueError(f"dtype must be a numeric numpy dtype; got dtype={dtype!r}.")
    if normalize and dtype.kind != "f":
        raise ValueError(
            "normalize=True scales pixels to [0, 1] and needs a floating dtype; "
            f"got dtype={dtype}. Pass normalize=False for raw integer pixel values."
        )

    parts = ["train", "test"] if subset == "all" else [subset]
    names = [base for part in parts for base in _FILES[part]]
    found, dirs, download_dir = _locate(info, names, data_home)
    if found is None and download:
        _download(info, names, download_dir)
        found, dirs, download_dir = _locate(info, names, data_home)
    if found is None:
        looked = "\n".join(f"  - {d}" for d in dirs)
        how = []
        if info.debian_package:
            how.append(f"install the Debian package `{info.debian_package}` (apt install "
                       f"{info.debian_package}), which puts them in {info.system_dirs[0]}")
        how.append(f"put the IDX files (.gz or not) in {download_dir}")
        how.append(f"call load_{name.replace('-', '_')}(download=True) on a machine with internet "
                   "access")
        raise FileNotFoundError(
            f"{info.title} files {', '.join(names)} (raw or .gz) were not found together "
            "in any of:\n"
            f"{looked}\nTo get them: " + "; or ".join(how) + "."
        )

    n_classes = len(info.target_names)
    images, labels, filenames = [], [], []
    for part in parts:
        img_path, lbl_path = (found[b] for b in _FILES[part])
        X, y = _read_pair(img_path, lbl_path, n_classes)
        images.append(X)
        labels.append(y)
        filenames += [str(img_path), str(lbl_path)]
    if len({X.shape[1:] for X in images}) != 1:
        raise ValueError(f"{info.title}: train and test images differ in size.")
    X = np.concatenate(images) if len(images) > 1 else images[0]
    y = np.concatenate(labels) if len(labels) > 1 else labels[0]

    n, rows, cols = X.shape
    if normalize:
        data = np.empty(X.shape, dtype=dtype)
        np.divide(X, dtype.type(255), out=data, casting="unsafe")
    else:
        data = X.astype(dtype, copy=True)
    data = data.reshape(n, rows * cols) if flatten else data.reshape(n, 1, rows, cols)
    target = y.astype(np.int64)

    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        target=target,
        target_names=np.asarray(info.target_names),
        DESCR=info.descr,
        filenames=filenames,
        subset=subset,
    )


def load_fashion_mnist(
    *,
    data_home=None,
    subset="train",
    return_X_y=False,
    flatten=False,
    dtype=np.float32,
    normalize=True,
    download=False,
):
    """Load Fashion-MNIST: 60,000 train + 10,000 test images of clothing, 28x28, 10 classes.

    The IDX files (gzip-compressed or not) are read from the first folder that
    holds all the files needed: an explicit ``data_home``
    (``<data_home>/fashion-mnist/``, then ``<data_home>/``), then
    ``/usr/share/datasets/fashion-mnist/`` (Debian package
    ``dataset-fashion-mnist``),
    then ``$SKLEARN_E2CM_DATA/fashion-mnist/`` or ``~/sklearn_e2cm_data/fashion-mnist/``
    when ``data_home`` is not passed. Nothing is downloaded unless
    ``download=True``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Root folder of user-provided or downloaded datasets (see
        :func:`get_data_home`).
    subset : {"train", "test", "all"}, default="train"
        The official training split, the test split, or both (training
        first).
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.
    flatten : bool, default=False
        Images as rows of 784 pixels, ``(n_samples, 784)``, instead of
        ``(n_samples, 1, 28, 28)`` (the layout torch convolutions expect).
    dtype : numpy dtype, default=np.float32
        Type of ``data``. Integer types need ``normalize=False``.
    normalize : bool, default=True
        Scale pixels from 0..255 to [0, 1].
    download : bool, default=False
        Download missing files from the official mirrors into
        ``<data_home>/fashion-mnist/``. Each file is written to a temporary file,
        checked, and renamed into place.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes:

        data : ndarray of shape (n_samples, 1, 28, 28) or (n_samples, 784)
            The images.
        target : ndarray of shape (n_samples,), dtype int64
            Class indices 0..9.
        target_names : ndarray of str of shape (10,)
            Class names.
        DESCR : str
            Description of the dataset.
        filenames : list of str
            The files that were read.
        subset : str
            The ``subset`` argument.

    (data, target) : tuple if ``return_X_y`` is True

    Raises
    ------
    FileNotFoundError
        When the files are not found; the message lists the folders searched
        and how to get the files.
    ValueError
        For invalid arguments, or a corrupted or truncated IDX file.

    See Also
    --------
    load_mnist, load_kmnist : The same layout for MNIST and Kuzushiji-MNIST.

    Examples
    --------
    >>> from sklearn_e2cm.datasets import load_fashion_mnist
    >>> X, y = load_fashion_mnist(subset="test", return_X_y=True)  # doctest: +SKIP
    >>> X.shape, X.dtype, y[:5]  # doctest: +SKIP
    ((10000, 1, 28, 28), dtype('float32'), array([9, 2, 1, 1, 6]))
    """
    return _load(
        "fashion-mnist", data_home=data_home, subset=subset, return_X_y=return_X_y,
        flatten=flatten, dtype=dtype, normalize=normalize, download=download,
    )


def load_mnist(
    *,
    data_home=None,
    subset="train",
    return_X_y=False,
    flatten=False,
    dtype=np.float32,
    normalize=True,
    download=False,
):
    """Load MNIST: 60,000 train + 10,000 test images of handwritten digits, 28x28, 10 classes.

    The IDX files (gzip-compressed or not) are read from the first folder that
    holds all the files needed: an explicit ``data_home``
    (``<data_home>/mnist/``, then ``<data_home>/``), then
    ``/usr/share/datasets/mnist/``,
    then ``$SKLEARN_E2CM_DATA/mnist/`` or ``~/sklearn_e2cm_data/mnist/``
    when ``data_home`` is not passed. Nothing is downloaded unless
    ``download=True``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Root folder of user-provided or downloaded datasets (see
        :func:`get_data_home`).
    subset : {"train", "test", "all"}, default="train"
        The official training split, the test split, or both (training
        first).
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.
    flatten : bool, default=False
        Images as rows of 784 pixels, ``(n_samples, 784)``, instead of
        ``(n_samples, 1, 28, 28)`` (the layout torch convolutions expect).
    dtype : numpy dtype, default=np.float32
        Type of ``data``. Integer types need ``normalize=False``.
    normalize : bool, default=True
        Scale pixels from 0..255 to [0, 1].
    download : bool, default=False
        Download missing files from the official mirrors into
        ``<data_home>/mnist/``. Each file is written to a temporary file,
        checked, and renamed into place.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes:

        data : ndarray of shape (n_samples, 1, 28, 28) or (n_samples, 784)
            The images.
        target : ndarray of shape (n_samples,), dtype int64
            Class indices 0..9.
        target_names : ndarray of str of shape (10,)
            Class names.
        DESCR : str
            Description of the dataset.
        filenames : list of str
            The files that were read.
        subset : str
            The ``subset`` argument.

    (data, target) : tuple if ``return_X_y`` is True

    Raises
    ------
    FileNotFoundError
        When the files are not found; the message lists the folders searched
        and how to get the files.
    ValueError
        For invalid arguments, or a corrupted or truncated IDX file.

    See Also
    --------
    load_fashion_mnist : Fashion-MNIST, installed on these machines.

    Examples
    --------
    >>> from sklearn_e2cm.datasets import load_mnist
    >>> bunch = load_mnist(subset="train", flatten=True)  # doctest: +SKIP
    >>> bunch.data.shape  # doctest: +SKIP
    (60000, 784)
    """
    return _load(
        "mnist", data_home=data_home, subset=subset, return_X_y=return_X_y,
        flatten=flatten, dtype=dtype, normalize=normalize, download=download,
    )


def load_kmnist(
    *,
    data_home=None,
    subset="train",
    return_X_y=False,
    flatten=False,
    dtype=np.float32,
    normalize=True,
    download=False,
):
    """Load Kuzushiji-MNIST: 60,000 train + 10,000 test 28x28 cursive hiragana, 10 classes.

    The IDX files (gzip-compressed or not) are read from the first folder that
    holds all the files needed: an explicit ``data_home``
    (``<data_home>/kmnist/``, then ``<data_home>/``), then
    ``/usr/share/datasets/kmnist/``,
    then ``$SKLEARN_E2CM_DATA/kmnist/`` or ``~/sklearn_e2cm_data/kmnist/``
    when ``data_home`` is not passed. Nothing is downloaded unless
    ``download=True``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Root folder of user-provided or downloaded datasets (see
        :func:`get_data_home`).
    subset : {"train", "test", "all"}, default="train"
        The official training split, the test split, or both (training
        first).
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.
    flatten : bool, default=False
        Images as rows of 784 pixels, ``(n_samples, 784)``, instead of
        ``(n_samples, 1, 28, 28)`` (the layout torch convolutions expect).
    dtype : numpy dtype, default=np.float32
        Type of ``data``. Integer types need ``normalize=False``.
    normalize : bool, default=True
        Scale pixels from 0..255 to [0, 1].
    download : bool, default=False
        Download missing files from the official mirrors into
        ``<data_home>/kmnist/``. Each file is written to a temporary file,
        checked, and renamed into place.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes:

        data : ndarray of shape (n_samples, 1, 28, 28) or (n_samples, 784)
            The images.
        target : ndarray of shape (n_samples,), dtype int64
            Class indices 0..9.
        target_names : ndarray of str of shape (10,)
            Class names.
        DESCR : str
            Description of the dataset.
        filenames : list of str
            The files that were read.
        subset : str
            The ``subset`` argument.

    (data, target) : tuple if ``return_X_y`` is True

    Raises
    ------
    FileNotFoundError
        When the files are not found; the message lists the folders searched
        and how to get the files.
    ValueError
        For invalid arguments, or a corrupted or truncated IDX file.

    See Also
    --------
    load_fashion_mnist : Fashion-MNIST, installed on these machines.

    Examples
    --------
    >>> from sklearn_e2cm.datasets import load_kmnist
    >>> bunch = load_kmnist(subset="train", flatten=True)  # doctest: +SKIP
    >>> bunch.data.shape  # doctest: +SKIP
    (60000, 784)
    """
    return _load(
        "kmnist", data_home=data_home, subset=subset, return_X_y=return_X_y,
        flatten=flatten, dtype=dtype, normalize=normalize, download=download,
    )
