"""Deep embedded clustering (DEC) and DEC with early exits.

:class:`DEC` is Xie, Girshick & Farhadi (2016): an autoencoder is pretrained
to reconstruct its (corrupted) input, k-means on the embedding initialises the
cluster centres, and the encoder and centres are then trained together by
minimising ``KL(P || Q)`` between the Student-t soft assignment ``Q`` and the
sharpened target distribution ``P``, refreshed every ``update_interval``
batches, until fewer than ``tol`` of the labels change between refreshes.

The private helpers below are the training machinery shared with the early
exit version (E²CM paper §III-C, §IV-D). An exit head reuses the first
``n_frozen_layers`` Linear layers of the large encoder (copied, frozen) and
trains a small tail on top of them with exactly the same procedure::

    large = DEC(...).fit(X)
    encoder, centers, labels = _fit_prefix_head(
        large.encoder_, 1, (large.embedding_dim,), X, **large._train_params())
    centers, labels, mapping = _align_to(large.labels_, labels, centers)

``encoder[: 2 * n_frozen_layers]`` of a head is then bit-identical to
``large.encoder_[: 2 * n_frozen_layers]`` (Linear/ReLU pairs), so at inference
the shared layers run once and each head's tail ``encoder[2 * n_frozen_layers:]``
maps the shared activation to the head's embedding.

:class:`DECEarlyExit` trains the large DEC and such heads, aligns their
cluster ids to the large DEC's, and routes samples through a private stage
adapter (:class:`_DECStages`): the large encoder cut at the exits, each
exit's tail as its stage vector, and the large DEC's clustering layer as the
final classifier. Thresholds come from the shared E²CM machinery
(:class:`~sklearn_e2cm.early_exit._EarlyExitBase`) with agreement with the
large DEC as the label-free quality measure.

Every network here is a ``torch.nn.Sequential`` of ``Linear`` layers with a
``ReLU`` after each but the last. Torch is imported lazily: the rest of the
package works without it.
"""

import contextlib
import copy
import inspect
import numbers
from collections import namedtuple

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from ._backend import as_float_tensor, import_torch, progress, resolve_device, to_numpy
from ._class_means import ExitHead, normalized_head
from ._routing import forward_all
from ._thresholds import (
    ExitTable,
    cumulative_cost,
    exit_stages,
    sweep,
    time_sharing,
    upper_hull,
)
from ._hashing import assign_rows
from .early_exit import _EarlyExitBase
from .metrics import align_labels, clustering_accuracy
from .stages.base import StageAdapter

__all__ = ["DEC", "DECEarlyExit"]

_MAX_SEED = 2**31 - 1

#: Names of the DEC parameters that drive training; ``DEC._train_params()``
#: returns them as keyword arguments of :func:`_train_dec` and
#: :func:`_fit_prefix_head`.
_TRAIN_PARAM_NAMES = (
    "n_clusters",
    "pretrain_epochs",
    "pretrain_lr",
    "optimizer",
    "noise",
    "noise_level",
    "self_train_lr",
    "max_iter",
    "update_interval",
    "tol",
    "batch_size",
    "n_init",
    "random_state",
    "device",
    "verbose",
)

#: Result of :func:`_train_dec`.
_DECResult = namedtuple(
    "_DECResult", ["encoder", "centers", "labels", "n_iter", "pretrain_loss"]
)


# --------------------------------------------------------------------------
# torch plumbing
# --------------------------------------------------------------------------


def _build_encoder(dims, *, seed=None):
    """``nn.Sequential`` of Linear layers ``dims[0] -> ... -> dims[-1]``.

    A ReLU follows every Linear layer but the last. With ``seed`` the default
    torch initialisation is drawn from that seed without touching the global
    torch random state. The mirrored decoder of an encoder with ``dims`` is
    ``_build_encoder(dims[::-1])``.
    """
    torch = import_torch("DEC")
    dims = [int(d) for d in dims]
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(
            f"dims must list at least two positive layer sizes; got {tuple(dims)!r}."
        )

    def build():
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(torch.nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def _linear_layers(encoder):
    """The ``nn.Linear`` modules of ``encoder``, in order."""
    torch = import_torch("DEC")
    return [m for m in encoder if isinstance(m, torch.nn.Linear)]


def _encoder_dims(encoder):
    """Layer sizes ``(d_in, ..., d_out)`` of an encoder built by :func:`_build_encoder`."""
    linears = _linear_layers(encoder)
    return (linears[0].in_features, *[m.out_features for m in linears])


def _forward(module, X, *, batch_size, device):
    """``module(X)`` in batches, without gradients, as a tensor on ``device``."""
    torch = import_torch("DEC")
    X = as_float_tensor(X, device)
    module = module.to(device)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = [module(X[i : i + batch_size]) for i in range(0, X.shape[0], batch_size)]
    module.train(was_training)
    if not out:
        return X[:, :0]
    return torch.cat(out)


def _make_optimizer(name, params, lr):
    torch = import_torch("DEC")
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer={name!r} is not supported; use 'adam' or 'sgd'.")


def _corrupt(xb, noise, noise_level, generator):
    """Denoising-autoencoder corruption of a batch (new tensor)."""
    torch = import_torch("DEC")
    if noise is None or noise_level == 0:
        return xb
    if noise == "dropout":
        keep = torch.rand(xb.shape, generator=generator, device=xb.device) >= noise_level
        return xb * keep / (1.0 - noise_level)
    if noise == "gaussian":
        return xb + noise_level * torch.randn(
            xb.shape, generator=generator, device=xb.device
        )
    raise ValueError(f"noise={noise!r} is not supported; use 'dropout', 'gaussian' or None.")


def _batch_indices(n, batch_size, generator, device):
    """Endless stream of shuffled index batches (reshuffled every epoch)."""
    torch = import_torch("DEC")
    while True:
        perm = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            yield perm[start : start + batch_size]


# --------------------------------------------------------------------------
# DEC building blocks
# --------------------------------------------------------------------------


def _soft_assign_logits(Z, centers, alpha=1.0):
    """Log-numerators of the Student-t kernel (torch).

    ``q_ij ∝ (1 + ||z_i - mu_j||² / alpha) ** (-(alpha + 1) / 2)``, so
    ``softmax`` of the returned ``(n, K)`` tensor is ``Q``.
    """
    torch = import_torch("DEC")
    d2 = (Z[:, None, :] - centers[None, :, :]).pow(2).sum(-1)
    return -(alpha + 1.0) / 2.0 * torch.log1p(d2 / alpha)


def _soft_assign_numpy(Z, centers, alpha=1.0):
    """Student-t soft assignment ``Q`` of embeddings ``Z`` (numpy, float64)."""
    Z = np.asarray(Z, dtype=np.float64)
    C = np.asarray(centers, dtype=np.float64)
    d2 = (Z * Z).sum(1)[:, None] - 2.0 * Z @ C.T + (C * C).sum(1)[None, :]
    np.maximum(d2, 0.0, out=d2)
    logits = -(alpha + 1.0) / 2.0 * np.log1p(d2 / alpha)
    logits -= logits.max(axis=1, keepdims=True)
    Q = np.exp(logits)
    Q /= Q.sum(axis=1, keepdims=True)
    return Q


def _target_distribution(Q):
    """DEC's sharpened target ``p_ij ∝ q_ij² / f_j`` with ``f_j = Σ_i q_ij``."""
    weight = Q**2 / Q.sum(0)
    return weight / weight.sum(1, keepdims=True)


def _pretrain_autoencoder(
    encoder,
    X,
    *,
    epochs,
    lr=1e-3,
    optimizer="adam",
    noise="dropout",
    noise_level=0.2,
    batch_size=256,
    seed=0,
    device="cpu",
    verbose=False,
    desc="DEC pretraining",
):
    """Pretrain ``encoder`` in place as a denoising autoencoder on ``X``.

    A mirrored decoder (``_build_encoder(dims[::-1])``, seeded by ``seed``)
    is trained jointly to reconstruct the clean input from its corruption
    (``noise``: ``"dropout"`` zeroes each input with probability
    ``noise_level`` and rescales the rest, ``"gaussian"`` adds noise of
    standard deviation ``noise_level``, ``None`` none) under the mean
    squared error. Parameters with ``requires_grad=False`` are not trained.
    The decoder is discarded. Batches are reshuffled every epoch from a torch
    generator seeded by ``seed``: the run is reproducible on CPU.

    Parameters
    ----------
    encoder : torch.nn.Sequential
        Trained in place; returned on the CPU.
    X : ndarray or torch.Tensor of shape (n_samples, dims[0])
        The input to reconstruct.

    Returns
    -------
    loss_curve : list of float
        Mean training loss of every epoch.
    """
    torch = import_torch("DEC")
    device = torch.device(device)
    X = as_float_tensor(X, device)
    n = X.shape[0]
    decoder = _build_encoder(_encoder_dims(encoder)[::-1], seed=seed).to(device)
    encoder.to(device).train()
    opt = _make_optimizer(optimizer, [*encoder.parameters(), *decoder.parameters()], lr)
    shuffle_gen = torch.Generator().manual_seed(int(seed))
    noise_gen = torch.Generator(device=device).manual_seed(int(seed) + 1)
    loss_curve = []
    for _ in progress(range(epochs), verbose, desc):
        total = torch.zeros((), device=device)
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        for start in range(0, n, batch_size):
            xb = X[perm[start : start + batch_size]]
            rec = decoder(encoder(_corrupt(xb, noise, noise_level, noise_gen)))
            loss = torch.nn.functional.mse_loss(rec, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * xb.shape[0]
        loss_curve.append(float(total) / max(n, 1))
    encoder.cpu().eval()
    return loss_curve


def _kmeans_init(encoder, X, n_clusters, *, n_init=20, random_state=None, batch_size=256,
                 device="cpu"):
    """k-means (scikit-learn) on the embedding ``encoder(X)``.

    Returns
    -------
    centers : ndarray of float32 of shape (n_clusters, embedding_dim)
    labels : ndarray of int64 of shape (n_samples,)
    """
    Z = _forward(encoder, X, batch_size=batch_size, device=device).cpu().numpy()
    encoder.cpu()
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state).fit(Z)
    return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)


def _self_train(
    encoder,
    centers,
    X,
    *,
    max_iter,
    update_interval=140,
    tol=1e-3,
    lr=0.01,
    batch_size=256,
    seed=0,
    device="cpu",
    verbose=False,
    desc="DEC self-training",
):
    """DEC self-training of ``encoder`` (in place) and ``centers``.

    Minimises ``KL(P || Q)`` with SGD (momentum 0.9, learning rate ``lr``)
    over the trainable encoder parameters and the centres, one shuffled
    mini-batch per iteration. ``Q`` is the Student-t soft assignment
    (alpha = 1); the target ``P`` is recomputed on all of ``X`` every
    ``update_interval`` iterations, and training stops there when fewer than
    a fraction ``tol`` of the hard labels changed since the previous refresh,
    or after ``max_iter`` iterations.

    Parameters
    ----------
    encoder : torch.nn.Sequential
        Trained in place; returned on the CPU in eval mode.
    centers : array-like of shape (n_clusters, embedding_dim)
        Initial centres (k-means).
    X : ndarray or torch.Tensor of shape (n_samples, dims[0])

    Returns
    -------
    centers : ndarray of float32 of shape (n_clusters, embedding_dim)
    labels : ndarray of int64 of shape (n_samples,)
        Hard assignments of ``X`` by the returned encoder and centres.
    n_iter : int
        Number of mini-batch iterations run.
    """
    torch = import_torch("DEC")
    device = torch.device(device)
    X = as_float_tensor(X, device)
    n = X.shape[0]
    encoder.to(device).train()
    mu = torch.nn.Parameter(torch.as_tensor(np.asarray(centers), dtype=torch.float32,
                                            device=device).clone())
    opt = _make_optimizer("sgd", [*encoder.parameters(), mu], lr)
    batches = _batch_indices(n, batch_size, torch.Generator().manual_seed(int(seed)), device)
    labels_last = None
    target = None
    n_iter = 0
    bar = progress(range(max_iter), verbose, desc, total=max_iter)
    for it in bar:
        if it % update_interval == 0:
            Z = _forward(encoder, X, batch_size=batch_size, device=device)
            Q = torch.softmax(_soft_assign_logits(Z, mu.detach()), dim=1)
            target = _target_distribution(Q)
            labels = Q.argmax(1)
            if labels_last is not None:
                delta = (labels != labels_last).float().mean().item()
                if verbose:
                    bar.set_postfix(delta_label=f"{delta:.4f}")
                if delta < tol:
                    break
            labels_last = labels
        idx = next(batches)
        log_q = torch.log_softmax(_soft_assign_logits(encoder(X[idx]), mu), dim=1)
        loss = torch.nn.functional.kl_div(log_q, target[idx], reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_iter = it + 1
    if verbose and hasattr(bar, "close"):
        bar.close()
    encoder.cpu().eval()
    centers = mu.detach().cpu().numpy().astype(np.float32)
    Z = _forward(encoder, X, batch_size=batch_size, device=device).cpu().numpy()
    encoder.cpu()
    labels = _soft_assign_numpy(Z, centers).argmax(1).astype(np.int64)
    return centers, labels, n_iter


def _train_dec(
    encoder,
    X,
    *,
    n_clusters,
    pretrain_epochs,
    pretrain_lr=1e-3,
    optimizer="adam",
    noise="dropout",
    noise_level=0.2,
    self_train_lr=0.01,
    max_iter=20000,
    update_interval=140,
    tol=1e-3,
    batch_size=256,
    n_init=20,
    random_state=None,
    device="cpu",
    verbose=False,
    desc="DEC",
):
    """The whole DEC procedure on a fresh ``encoder`` (trained in place).

    Pretraining (:func:`_pretrain_autoencoder`), k-means initialisation
    (:func:`_kmeans_init`) and self-training (:func:`_self_train`). The
    seeds of the three phases are drawn, in that order, from
    ``check_random_state(random_state)``.

    Returns
    -------
    result : _DECResult
        ``(encoder, centers, labels, n_iter, pretrain_loss)``: the trained
        encoder (CPU, eval mode), float32 centres ``(n_clusters, D)``, int64
        training labels, the number of self-training iterations and the
        pretraining loss curve.
    """
    rng = check_random_state(random_state)
    pretrain_seed, kmeans_seed, self_train_seed = (int(s) for s in rng.randint(_MAX_SEED, size=3))
    loss_curve = _pretrain_autoencoder(
        encoder, X, epochs=pretrain_epochs, lr=pretrain_lr, optimizer=optimizer, noise=noise,
        noise_level=noise_level, batch_size=batch_size, seed=pretrain_seed, device=device,
        verbose=verbose, desc=f"{desc} pretraining",
    )
    centers, _ = _kmeans_init(encoder, X, n_clusters, n_init=n_init, random_state=kmeans_seed,
                              batch_size=batch_size, device=device)
    centers, labels, n_iter = _self_train(
        encoder, centers, X, max_iter=max_iter, update_interval=update_interval, tol=tol,
        lr=self_train_lr, batch_size=batch_size, seed=self_train_seed, device=device,
        verbose=verbose, desc=f"{desc} self-training",
    )
    return _DECResult(encoder, centers, labels, n_iter, loss_curve)


def _fit_prefix_head(large_encoder, n_frozen_layers, head_dims, X, *, desc=None, **train_params):
    """Train an exit head on a frozen prefix of ``large_encoder``.

    The head's encoder is the first ``n_frozen_layers`` Linear layers of
    ``large_encoder`` (each with its ReLU), deep-copied and frozen
    (``requires_grad=False``), followed by a fresh trainable tail of Linear
    layers with output sizes ``head_dims`` (the last one the embedding, no
    activation). The tail is trained by the whole DEC procedure
    (:func:`_train_dec`) on the frozen prefix's output, which is computed
    once: its autoencoder mirrors the tail and reconstructs that output.
    E.g. the paper's ``DEC_small`` is ``n_frozen_layers=1, head_dims=(10,)``
    and ``DEC_middle`` is ``n_frozen_layers=2, head_dims=(10,)``.

    Parameters
    ----------
    large_encoder : torch.nn.Sequential
        A trained encoder built by :func:`_build_encoder` (e.g.
        ``DEC().fit(X).encoder_``). Not modified.
    n_frozen_layers : int
        Number of leading Linear layers to copy and freeze, ``0 <= n <
        number of Linear layers`` (0 trains an independent DEC).
    head_dims : sequence of int
        Output sizes of the tail's Linear layers.
    X : array-like of shape (n_samples, n_features)
        Training data (the input of ``large_encoder``).
    desc : str, default=None
        Progress-bar label.
    **train_params
        Keyword arguments of :func:`_train_dec` (``n_clusters``,
        ``pretrain_epochs``, ..., ``random_state``), e.g.
        ``DEC._train_params()``.

    Returns
    -------
    encoder : torch.nn.Sequential
        ``prefix + tail`` on the CPU in eval mode: ``encoder[:2 *
        n_frozen_layers]`` is the frozen copy, ``encoder[2 *
        n_frozen_layers:]`` the trained tail.
    centers : ndarray of float32 of shape (n_clusters, head_dims[-1])
    labels : ndarray of int64 of shape (n_samples,)
        The head's training assignments (not aligned; see :func:`_align_to`).
    """
    torch = import_torch("DEC")
    n_linear = len(_linear_layers(large_encoder))
    if not isinstance(n_frozen_layers, numbers.Integral) or not 0 <= n_frozen_layers < n_linear:
        raise ValueError(
            f"n_frozen_layers must be an integer in [0, {n_linear}) for an encoder with "
            f"{n_linear} Linear layers; got {n_frozen_layers!r}."
        )
    head_dims = tuple(int(d) for d in head_dims)
    if not head_dims:
        raise ValueError("head_dims must list at least one layer size; got ().")
    n_prefix_modules = 2 * int(n_frozen_layers)
    prefix = copy.deepcopy(large_encoder[:n_prefix_modules]).cpu().eval()
    for p in prefix.parameters():
        p.requires_grad_(False)
    device = resolve_device(train_params.get("device", "cpu"))
    batch_size = int(train_params.get("batch_size", 256))
    H = _forward(prefix, X, batch_size=batch_size, device=device)
    prefix.cpu()
    rng = check_random_state(train_params.pop("random_state", None))
    tail_seed = int(rng.randint(_MAX_SEED))
    tail = _build_encoder((H.shape[1], *head_dims), seed=tail_seed)
    result = _train_dec(tail, H, random_state=rng,
                        desc=desc or f"DEC head @{n_frozen_layers}", **train_params)
    encoder = torch.nn.Sequential(*prefix, *result.encoder).cpu().eval()
    for mine, theirs in zip(encoder[:n_prefix_modules].parameters(),
                            large_encoder[:n_prefix_modules].parameters()):
        if mine.requires_grad or not torch.equal(mine.detach().cpu(), theirs.detach().cpu()):
            raise RuntimeError("the frozen prefix of an exit head changed during training")
    return encoder, result.centers, result.labels


def _align_to(reference_labels, labels, centers):
    """Rename a head's clusters to agree with ``reference_labels`` (Hungarian).

    Parameters
    ----------
    reference_labels : array-like of int of shape (n_samples,)
        Training assignments of the final head, ids in ``[0, n_clusters)``.
    labels : array-like of int of shape (n_samples,)
        Training assignments of the head to align, same samples.
    centers : ndarray of shape (n_clusters, D)
        The head's cluster centres, row ``i`` for cluster ``i``.

    Returns
    -------
    centers : ndarray of shape (n_clusters, D)
        Reordered: row ``mapping[i]`` is the old row ``i``.
    labels : ndarray of int64 of shape (n_samples,)
        ``mapping[labels]``.
    mapping : ndarray of int64 of shape (n_clusters,)
        The permutation, from :func:`sklearn_e2cm.metrics.align_labels`.
    """
    centers = np.asarray(centers)
    mapping = align_labels(reference_labels, labels, n_clusters=centers.shape[0])
    aligned = np.empty_like(centers)
    aligned[mapping] = centers
    return aligned, mapping[np.asarray(labels, dtype=np.int64)], mapping


# --------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------


class DEC(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """Deep embedded clustering (Xie, Girshick & Farhadi, 2016).

    An encoder ``n_features - hidden... - embedding_dim`` (Linear layers,
    ReLU after all but the last) is pretrained as a denoising autoencoder
    with a mirrored decoder; k-means on the embedding initialises the
    cluster centres; then encoder and centres are trained together by
    minimising ``KL(P || Q)``, where ``Q`` is the Student-t soft assignment
    (alpha = 1) of the embeddings to the centres and ``P`` the sharpened
    target ``p_ij ∝ q_ij² / Σ_i q_ij``, recomputed every ``update_interval``
    mini-batches. Self-training stops when fewer than a fraction ``tol`` of
    the labels change between two target refreshes, or after ``max_iter``
    mini-batches.

    Needs PyTorch (``pip install sklearn-e2cm[torch]``).

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters.
    hidden : tuple of int, default=(500, 500, 2000)
        Hidden layer sizes of the encoder (the decoder mirrors them). The
        paper's architecture is ``d-500-500-2000-10``.
    embedding_dim : int, default=10
        Size of the embedding the clusters live in.
    pretrain_epochs : int, default=200
        Epochs of end-to-end autoencoder pretraining (0 skips it). The DEC
        paper pretrains for 50 000 mini-batches of 256 on MNIST's 70 000
        images, about 180 epochs.
    pretrain_lr : float, default=1e-3
        Pretraining learning rate.
    optimizer : {"adam", "sgd"}, default="adam"
        Pretraining optimiser (``"sgd"`` uses momentum 0.9).
    noise : {"dropout", "gaussian"} or None, default="dropout"
        Corruption of the denoising autoencoder's input: ``"dropout"``
        zeroes each input feature with probability ``noise_level`` (the
        paper uses 20 %), ``"gaussian"`` adds Gaussian noise of standard
        deviation ``noise_level``, ``None`` trains a plain autoencoder.
    noise_level : float, default=0.2
        Dropout rate (in ``[0, 1)``) or Gaussian standard deviation.
    self_train_lr : float, default=0.01
        Learning rate of self-training (SGD with momentum 0.9, as the paper).
    max_iter : int, default=20000
        Maximum number of self-training mini-batches (0 keeps the k-means
        centres of the pretrained embedding).
    update_interval : int, default=140
        Mini-batches between refreshes of the target distribution (the
        paper's ``T = 140`` for MNIST).
    tol : float, default=1e-3
        Stop self-training when fewer than this fraction of the labels
        changed between two refreshes (the paper's 0.1 %).
    batch_size : int, default=256
        Mini-batch size of both phases and of inference.
    n_init : int, default=20
        Number of k-means restarts for the initial centres.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, corruption, shuffling and k-means. An
        int gives reproducible results on the CPU.
    device : str or torch.device, default="cpu"
        Where to train and run the network. Fitted modules are stored on
        the CPU.
    verbose : bool or int, default=False
        Show progress bars (tqdm).

    Attributes
    ----------
    labels_ : ndarray of int64 of shape (n_samples,)
        Cluster of every training sample (``predict`` of the training data).
    cluster_centers_ : ndarray of float32 of shape (n_clusters, embedding_dim)
        Cluster centres in the embedding space.
    encoder_ : torch.nn.Sequential
        The trained encoder (CPU, eval mode): Linear/ReLU pairs and a final
        Linear layer without activation.
    n_iter_ : int
        Number of self-training mini-batches run.
    pretrain_loss_curve_ : list of float
        Mean reconstruction loss of every pretraining epoch.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of str of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string feature
        names.

    See Also
    --------
    sklearn.cluster.KMeans : k-means on the raw input.
    sklearn_e2cm.metrics.clustering_accuracy : Hungarian clustering accuracy.

    References
    ----------
    J. Xie, R. Girshick and A. Farhadi, "Unsupervised deep embedding for
    clustering analysis", ICML 2016.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn_e2cm import DEC
    >>> from sklearn_e2cm.metrics import clustering_accuracy
    >>> X, y = make_blobs(n_samples=200, centers=3, n_features=8, random_state=0)
    >>> dec = DEC(n_clusters=3, hidden=(16,), embedding_dim=3, pretrain_epochs=5,
    ...           max_iter=50, n_init=3, random_state=0).fit(X)
    >>> dec.transform(X).shape
    (200, 3)
    >>> clustering_accuracy(y, dec.labels_)
    1.0
    """

    _parameter_constraints = {
        "n_clusters": [Interval(numbers.Integral, 1, None, closed="left")],
        "hidden": [tuple, list],
        "embedding_dim": [Interval(numbers.Integral, 1, None, closed="left")],
        "pretrain_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "pretrain_lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "optimizer": [StrOptions({"adam", "sgd"})],
        "noise": [StrOptions({"dropout", "gaussian"}), None],
        "noise_level": [Interval(numbers.Real, 0, None, closed="left")],
        "self_train_lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "update_interval": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, 1, closed="both")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "device": "no_validation",
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_clusters=10,
        *,
        hidden=(500, 500, 2000),
        embedding_dim=10,
        pretrain_epochs=200,
        pretrain_lr=1e-3,
        optimizer="adam",
        noise="dropout",
        noise_level=0.2,
        self_train_lr=0.01,
        max_iter=20000,
        update_interval=140,
        tol=1e-3,
        batch_size=256,
        n_init=20,
        random_state=None,
        device="cpu",
        verbose=False,
    ):
        self.n_clusters = n_clusters
        self.hidden = hidden
        self.embedding_dim = embedding_dim
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.optimizer = optimizer
        self.noise = noise
        self.noise_level = noise_level
        self.self_train_lr = self_train_lr
        self.max_iter = max_iter
        self.update_interval = update_interval
        self.tol = tol
        self.batch_size = batch_size
        self.n_init = n_init
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # -- validation -------------------------------------------------------

    def _check_params(self, n_samples):
        """Checks beyond ``_parameter_constraints``; returns the hidden sizes."""
        hidden = tuple(self.hidden)
        if not all(
            isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1
            for h in hidden
        ):
            raise ValueError(
                f"hidden must be a tuple of positive integers (layer sizes); got "
                f"{self.hidden!r}."
            )
        if self.noise == "dropout" and self.noise_level >= 1:
            raise ValueError(
                f"noise_level must be in [0, 1) with noise='dropout'; got "
                f"{self.noise_level!r}."
            )
        if n_samples < self.n_clusters:
            raise ValueError(
                f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}."
            )
        resolve_device(self.device)
        return tuple(int(h) for h in hidden)

    def _train_params(self):
        """Training keyword arguments for :func:`_train_dec` / :func:`_fit_prefix_head`."""
        return {name: getattr(self, name) for name in _TRAIN_PARAM_NAMES}

    # -- fitting ----------------------------------------------------------

    def fit(self, X, y=None):
        """Pretrain, initialise and self-train on ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : DEC
            The fitted estimator.
        """
        self._validate_params()
        import_torch("DEC")
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        hidden = self._check_params(X.shape[0])
        params = self._train_params()
        rng = check_random_state(params.pop("random_state"))
        dims = (X.shape[1], *hidden, self.embedding_dim)
        encoder = _build_encoder(dims, seed=int(rng.randint(_MAX_SEED)))
        result = _train_dec(encoder, X, random_state=rng, **params)
        self.encoder_ = result.encoder
        self.cluster_centers_ = result.centers
        self.n_iter_ = result.n_iter
        self.pretrain_loss_curve_ = result.pretrain_loss
        self._n_features_out = self.embedding_dim
        self.labels_ = self._predict_embedded(self._embed(X))
        return self

    # -- inference --------------------------------------------------------

    def _embed(self, X):
        device = resolve_device(self.device)
        Z = _forward(self.encoder_, X, batch_size=self.batch_size, device=device)
        self.encoder_.cpu()
        return Z.cpu().numpy()

    def _predict_embedded(self, Z):
        return _soft_assign_numpy(Z, self.cluster_centers_).argmax(axis=1).astype(np.int64)

    def _validate_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, dtype=[np.float32, np.float64], reset=False)

    def transform(self, X):
        """Embed ``X`` with the trained encoder.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        Z : ndarray of float32 of shape (n_samples, embedding_dim)
            The embeddings.
        """
        return self._embed(self._validate_X(X))

    def soft_assign(self, X):
        """Student-t soft assignment ``Q`` of ``X`` to the clusters.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        Q : ndarray of float64 of shape (n_samples, n_clusters)
            Rows sum to one.
        """
        return _soft_assign_numpy(self.transform(X), self.cluster_centers_)

    def predict(self, X):
        """Cluster of each sample (argmax of the soft assignment).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        labels : ndarray of int64 of shape (n_samples,)
            Cluster indices in ``[0, n_clusters)``.
        """
        return self._predict_embedded(self.transform(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


# --------------------------------------------------------------------------
# DEC with early exits
# --------------------------------------------------------------------------

#: Named exits: number of hidden layers of the large encoder an exit shares
#: (copies and freezes). The paper's DEC_small and DEC_middle.
_EXIT_DEPTHS = {"small": 1, "middle": 2}


def _mlp_flops(module):
    """Per-sample FLOPs of a ``Sequential`` of ``Linear`` / ``ReLU`` modules.

    A Linear layer costs ``2 * in * out + out`` (multiply-add counted as 2,
    plus the bias), a ReLU one FLOP per element. This is the elementwise
    convention of :func:`sklearn_e2cm._class_means.head_flops`;
    ``torch.utils.flop_counter.FlopCounterMode`` counts only the
    ``2 * in * out`` of each Linear (about 0.1 % less on the paper's
    encoder, and the normalised costs agree to that precision).
    """
    torch = import_torch("DEC")
    flops = 0
    width = None
    for m in module:
        if isinstance(m, torch.nn.Linear):
            flops += 2 * m.in_features * m.out_features + m.out_features
            width = m.out_features
        elif isinstance(m, torch.nn.ReLU):
            if width is None:
                raise ValueError("a ReLU before any Linear layer: cannot count its FLOPs")
            flops += width
        else:  # pragma: no cover - the encoders here are Linear/ReLU only
            raise TypeError(f"cannot count the FLOPs of {type(m).__name__}")
    return flops


def _clustering_layer_flops(embedding_dim, n_clusters):
    """Per-sample FLOPs of DEC's Student-t clustering layer and its argmax.

    ``||z||²`` (2D), ``z·Cᵀ`` (2KD), combining the squared distances (3K),
    ``1 + d²`` (K), the reciprocal (alpha = 1: K), the normalisation (sum and
    divide: 2K) and the argmax (K).
    """
    D, K = int(embedding_dim), int(n_clusters)
    return 2 * D + 2 * K * D + 8 * K


class _DECStages(StageAdapter):
    """Stage adapter of a DEC encoder with frozen-prefix exit heads.

    The shared layers of the large encoder are cut at the exits: stage ``j <
    M-1`` is the block of Linear/ReLU pairs between exit ``j-1`` and exit
    ``j`` (run once per sample, shared by every head); its stage vector is
    exit ``j``'s trainable tail applied to that activation, i.e. the exit's
    own embedding. The last stage is the rest of the large encoder followed
    by the large DEC's Student-t clustering layer: it is the base model's
    classifier (``final_is_classifier``), so a sample that reaches the end
    gets exactly the large DEC's cluster.

    Parameters
    ----------
    stages : list of torch.nn.Sequential
        The ``M - 1`` shared blocks (views of the large encoder's modules).
    tails : list of torch.nn.Sequential
        The ``M - 1`` exit tails (shared activation -> exit embedding).
    final : torch.nn.Sequential
        The large encoder after the last exit.
    centers : ndarray of shape (n_clusters, embedding_dim)
        The large DEC's cluster centres.
    device : torch.device or str
    """

    backend = "torch"

    def __init__(self, stages, tails, final, centers, device="cpu"):
        self.stages = list(stages)
        self.tails = list(tails)
        self.final = final
        self.centers = np.asarray(centers)
        self.device = device

    @property
    def n_stages(self):
        return len(self.stages) + 1

    @property
    def final_is_classifier(self):
        return True

    def _modules(self):
        return [*self.stages, *self.tails, self.final]

    def fit(self, X=None, y=None, sample_weight=None):
        """Count the per-sample FLOPs of every stage (nothing is trained)."""
        K, D = self.centers.shape
        self.stage_flops_ = np.array(
            [_mlp_flops(s) for s in self.stages]
            + [_mlp_flops(self.final) + _clustering_layer_flops(D, K)],
            dtype=np.float64,
        )
        self.vector_flops_ = np.array([_mlp_flops(t) for t in self.tails] + [0], dtype=np.float64)
        self.vector_dims_ = np.array(
            [_linear_layers(t)[-1].out_features for t in self.tails] + [0], dtype=np.int64
        )
        return self

    @contextlib.contextmanager
    def activate(self):
        """Modules on ``device``, in eval mode, under ``torch.inference_mode``; then on the CPU."""
        torch = import_torch("DEC")
        device = resolve_device(self.device)
        mods = self._modules()
        for m in mods:
            m.to(device).eval()
        try:
            with torch.inference_mode():
                yield self
        finally:
            for m in mods:
                m.cpu()

    def batches(self, X, y=None, batch_size=None):
        torch = import_torch("DEC")
        device = resolve_device(self.device)
        n = X.shape[0]
        step = n if not batch_size else int(batch_size)
        for start in range(0, n, max(step, 1)):
            xb = torch.from_numpy(np.array(X[start : start + step], dtype=np.float32))
            yield xb.to(device), (None if y is None else np.asarray(y[start : start + step]))

    def run_stage(self, j, Z):
        return self.stages[j](Z)

    def stage_vector(self, j, Z):
        return self.tails[j](Z)

    def final_outputs(self, Z):
        """The large DEC's cluster (argmax of its Student-t assignment) and ``Q``."""
        Zl = self.to_numpy(self.final(Z))
        Q = _soft_assign_numpy(Zl, self.centers)
        return Q.argmax(axis=1).astype(np.intp), Q

    def take(self, Z, keep):
        torch = import_torch("DEC")
        return Z[torch.from_numpy(np.asarray(keep, dtype=bool)).to(Z.device)]

    def n_rows(self, Z):
        return int(Z.shape[0])

    def to_numpy(self, a):
        return to_numpy(a)


class DECEarlyExit(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, _EarlyExitBase, BaseEstimator
):
    """Deep embedded clustering with early exits (E²CM paper §III-C, §IV-D).

    Fitting trains the large DEC (:class:`DEC`, encoder ``n_features -
    hidden... - embedding_dim`` and its clustering layer), then one exit
    head per entry of ``exits``: the first layers of the large encoder,
    copied and frozen, followed by a new Linear layer to a
    ``embedding_dim``-d embedding, pretrained and self-trained by the same
    DEC procedure on the frozen layers' output (the paper's ``DEC_small``,
    500-10, and ``DEC_middle``, 500-500-10). Every head's cluster indices
    are renamed to agree with the large DEC's (Hungarian matching on the
    training assignments), so all exits speak of the same clusters.

    At inference the shared layers run once; after each exit's layers the
    exit embedding is compared with that head's cluster centres exactly as
    E²CM compares a stage output with class means (distances, eq. 4
    normalisation, softmax): a sample whose largest probability exceeds the
    exit's threshold leaves with the most probable cluster, the others go
    on, and a sample that reaches the end gets the large DEC's own cluster.

    Thresholds are chosen without labels: the quality of an operating point
    on the training data is its *agreement* with the large DEC, and the
    threshold search (sweep of FLOP targets, upper concave hull, time sharing
    between the two hull vertices around ``flops_target``) is the one of
    :class:`~sklearn_e2cm.EarlyExitClassMeans`.

    Needs PyTorch (``pip install sklearn-e2cm[torch]``).

    Parameters
    ----------
    n_clusters, hidden, embedding_dim, pretrain_epochs, pretrain_lr, optimizer, \
noise, noise_level, self_train_lr, max_iter, update_interval, tol, batch_size, \
n_init, random_state, device, verbose
        As in :class:`DEC`; the large DEC and every exit head are trained
        with them. ``random_state`` also seeds the threshold search and the
        time-sharing assignment. With the same ``random_state`` the large DEC
        is exactly ``DEC(random_state=...)``.
    exits : tuple of {"small", "middle"} or int, default=("small", "middle")
        Where the exits are: ``"small"`` after the first hidden layer of the
        large encoder, ``"middle"`` after the second, an integer ``k`` after
        the ``k``-th (``1 <= k <= len(hidden)``). Order does not matter.
    flops_target : float in (0, 1] or None, default=None
        Expected cost per sample, normalised so that the large DEC costs 1.
        ``None``: no early exit (every sample gets the large DEC's cluster).
    thresholds : array-like of shape (len(exits),), default=None
        Explicit exit thresholds in [0, 1], in exit order (shallowest
        first); override the search.
    threshold_search : {"hull", "coordinate", "bisect"}, default="hull"
        ``"hull"``: sweep ``n_targets`` FLOP targets, keep the upper concave
        hull of (cost, agreement) on the training data and serve
        ``flops_target`` by time sharing. ``"bisect"``: the paper's search
        for the single target.
    n_targets : int, default=1000
        Size of the FLOP-target grid of the sweep.
    normalize : bool, default=True
        Divide the distances to an exit's centres by their mean over the
        training data (eq. 4) before the softmax.

    Attributes
    ----------
    dec_ : DEC
        The large DEC.
    labels_ : ndarray of int64 of shape (n_samples,)
        The large DEC's cluster of every training sample (``dec_.labels_``;
        ``fit_predict`` returns it). ``predict`` routes with early exits.
    cluster_centers_ : ndarray of float32 of shape (n_clusters, embedding_dim)
        The large DEC's centres.
    classes_ : ndarray of int64 of shape (n_clusters,)
        ``arange(n_clusters)``: the cluster ids ``predict`` returns.
    exit_depths_ : list of int
        Number of shared (frozen) hidden layers of every exit, increasing.
    exit_encoders_ : list of torch.nn.Sequential
        Every exit head's whole encoder (frozen copy of the shared layers,
        then its trained tail), CPU, eval mode.
    exit_centers_ : list of ndarray of shape (n_clusters, embedding_dim)
        Every exit's cluster centres, aligned to the large DEC's ids.
    exit_labels_ : list of ndarray of int64 of shape (n_samples,)
        Every exit head's own training assignment, aligned.
    exit_alignment_ : list of ndarray of int64 of shape (n_clusters,)
        The permutation applied to every exit's cluster ids.
    exit_agreement_ : ndarray of shape (n_exits,)
        Fraction of training samples whose aligned exit assignment equals
        the large DEC's.
    class_means_ : list of ndarray
        The centres used as class means at every exit, then the large DEC's.
    distance_scale_ : list of ndarray of shape (n_clusters,) or None
        eq. 4 scales of every exit (``None`` with ``normalize=False``).
    n_stages_ : int
        ``len(exits) + 1``.
    stage_flops_ : ndarray of shape (n_stages_,)
        Per-sample FLOPs of the shared layers of every stage; the last entry
        includes the large DEC's clustering layer. A Linear layer counts
        ``2 * in * out + out``, a ReLU one per element; see Notes.
    exit_flops_ : ndarray of shape (n_stages_,)
        Per-sample FLOPs of every exit: its tail layers plus distances,
        eq. 4, softmax and the decision (0 for the large DEC, whose
        clustering layer is part of the base cost).
    cumulative_cost_ : ndarray of shape (n_stages_,)
        Normalised cost of leaving after each stage with every exit active.
    thresholds_, mixture_thresholds_, mixture_weights_ : ndarray
        The operating point (see :class:`~sklearn_e2cm.EarlyExitClassMeans`).
    expected_flops_ : float
        Expected normalised cost of the operating point on the training data.
    expected_accuracy_ : float
        Its expected agreement with the large DEC on the training data.
    tradeoff_ : pandas.DataFrame
        Swept operating points on the training data: ``target``, ``flops``,
        ``accuracy`` (agreement with the large DEC, not accuracy against
        labels, which fitting never sees), ``thresholds``, ``on_hull``.
        :meth:`tradeoff_curve` evaluates against true labels.
    memory_overhead_bytes_ : int
    n_iter_ : int
        Self-training mini-batches of the large DEC.
    n_features_in_ : int
    feature_names_in_ : ndarray of str

    Notes
    -----
    Cost model. ``1.0`` is one sample through the large DEC: its encoder
    plus its Student-t clustering layer (``2D + 2KD + 8K``). Leaving at exit
    ``j`` costs the shared layers up to it plus the overheads of the exits
    evaluated on the way (each exit's tail Linear layer and its class-means
    head, ``head_flops``), so a sample that passes every exit and reaches
    the end pays slightly more than 1 (``cumulative_cost_[-1]``); with
    ``flops_target=None`` no exit is evaluated and every sample costs
    exactly 1.0. Exits with a threshold of 1 are switched off and cost
    nothing.

    With ``normalize=True`` an exit's prediction is the most probable
    cluster after eq. 4 (Algorithm 1 of the paper), which can differ from
    the head DEC's own nearest-centre assignment (``exit_labels_``) on
    samples between clusters.

    See Also
    --------
    DEC : The large DEC alone.
    sklearn_e2cm.EarlyExitClassMeans : E²CM for classifiers.

    References
    ----------
    A. Görmez, V. R. Dasari and E. Koyuncu, "E²CM: Early Exit via Class
    Means for Efficient Supervised and Unsupervised Learning", IJCNN 2022.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn_e2cm import DECEarlyExit
    >>> from sklearn_e2cm.metrics import clustering_accuracy
    >>> X, y = make_blobs(n_samples=300, centers=3, n_features=8, random_state=0)
    >>> ee = DECEarlyExit(n_clusters=3, hidden=(16, 16, 32), embedding_dim=3,
    ...                   pretrain_epochs=5, max_iter=50, n_init=3, flops_target=0.5,
    ...                   n_targets=100, random_state=0).fit(X)
    >>> ee.n_stages_, ee.exit_depths_
    (3, [1, 2])
    >>> r = ee.route(X)  # easy blobs: every sample leaves at the first exit
    >>> r.exit_counts(ee.n_stages_)
    array([300,   0,   0])
    >>> round(float(r.flops.mean()), 2)  # fraction of the large DEC's FLOPs
    0.21
    >>> clustering_accuracy(y, ee.predict(X)), clustering_accuracy(y, ee.labels_)
    (1.0, 1.0)
    """

    _parameter_constraints = {
        **DEC._parameter_constraints,
        "exits": [tuple, list],
        "flops_target": [Interval(numbers.Real, 0, 1, closed="right"), None],
        "thresholds": ["array-like", None],
        "threshold_search": [StrOptions({"hull", "coordinate", "bisect"})],
        "n_targets": [Interval(numbers.Integral, 2, None, closed="left")],
        "normalize": ["boolean"],
    }

    def __init__(
        self,
        n_clusters=10,
        *,
        hidden=(500, 500, 2000),
        embedding_dim=10,
        exits=("small", "middle"),
        flops_target=None,
        thresholds=None,
        threshold_search="hull",
        n_targets=1000,
        normalize=True,
        pretrain_epochs=200,
        pretrain_lr=1e-3,
        optimizer="adam",
        noise="dropout",
        noise_level=0.2,
        self_train_lr=0.01,
        max_iter=20000,
        update_interval=140,
        tol=1e-3,
        batch_size=256,
        n_init=20,
        random_state=None,
        device="cpu",
        verbose=False,
    ):
        self.n_clusters = n_clusters
        self.hidden = hidden
        self.embedding_dim = embedding_dim
        self.exits = exits
        self.flops_target = flops_target
        self.thresholds = thresholds
        self.threshold_search = threshold_search
        self.n_targets = n_targets
        self.normalize = normalize
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.optimizer = optimizer
        self.noise = noise
        self.noise_level = noise_level
        self.self_train_lr = self_train_lr
        self.max_iter = max_iter
        self.update_interval = update_interval
        self.tol = tol
        self.batch_size = batch_size
        self.n_init = n_init
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # -- validation -------------------------------------------------------

    def _exit_depths(self):
        """The exits as sorted numbers of shared hidden layers; ValueError when invalid."""
        hidden = tuple(self.hidden)
        n_hidden = len(hidden)
        accepted = (
            "'small' (after the first hidden layer), 'middle' (after the second) or an "
            f"integer number of shared hidden layers in [1, {n_hidden}]"
        )
        depths = []
        for e in self.exits:
            if isinstance(e, str):
                if e not in _EXIT_DEPTHS:
                    raise ValueError(f"exits contains {e!r}; each exit must be {accepted}.")
                d = _EXIT_DEPTHS[e]
            elif isinstance(e, numbers.Integral) and not isinstance(e, (bool, np.bool_)):
                d = int(e)
            else:
                raise ValueError(f"exits contains {e!r}; each exit must be {accepted}.")
            if not 1 <= d <= n_hidden:
                raise ValueError(
                    f"exits contains {e!r}, an exit after hidden layer {d}, but hidden="
                    f"{self.hidden!r} has {n_hidden} hidden layer(s); each exit must be "
                    f"{accepted}."
                )
            depths.append(d)
        if not depths:
            raise ValueError(
                f"exits={self.exits!r} names no exit; give at least one of 'small', 'middle' "
                "or a number of shared hidden layers (use DEC for no early exit)."
            )
        if len(set(depths)) != len(depths):
            raise ValueError(
                f"exits={self.exits!r} names the same exit twice (exit depths {depths})."
            )
        return sorted(depths)

    def _dec_params(self):
        return {name: getattr(self, name) for name in DEC().get_params()}

    # -- fitting ----------------------------------------------------------

    def fit(self, X, y=None):
        """Train the large DEC and the exit heads, then choose the thresholds.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : Ignored
            Not used (clustering is unsupervised), present for API consistency.

        Returns
        -------
        self : DECEarlyExit
            The fitted estimator.
        """
        self._validate_params()
        import_torch("DEC")
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        depths = self._exit_depths()
        rng = check_random_state(self.random_state)

        # ---- the large DEC (exactly DEC(random_state=...) for an int seed)
        dec = DEC(**dict(self._dec_params(), random_state=rng)).fit(X)
        dec.random_state = self.random_state
        large = dec.encoder_

        # ---- the exit heads, aligned to the large DEC
        params = dec._train_params()
        encoders, centers, labels, mappings = [], [], [], []
        for d in depths:
            p = dict(params, random_state=int(rng.randint(_MAX_SEED)))
            enc, C, lab = _fit_prefix_head(
                large, d, (self.embedding_dim,), X, desc=f"DEC exit @{d}", **p
            )
            C, lab, mapping = _align_to(dec.labels_, lab, C)
            encoders.append(enc)
            centers.append(C)
            labels.append(lab)
            mappings.append(mapping)

        # ---- stages: the large encoder cut at the exits, and the exit tails
        bounds = [0, *depths]
        stages = [large[2 * a : 2 * b] for a, b in zip(bounds[:-1], bounds[1:])]
        tails = [enc[2 * d :] for enc, d in zip(encoders, depths)]
        adapter = _DECStages(stages, tails, large[2 * depths[-1] :], dec.cluster_centers_,
                             device=self.device).fit()

        # ---- per-exit distances on the training data: eq. 4 scales, exit arrays
        raw = [ExitHead(C, scale=None) for C in centers]
        dist = [[] for _ in depths]
        final_idx = []
        with adapter.activate():
            for Xb, _ in adapter.batches(X, None, self.batch_size):
                vectors, fin = forward_all(adapter, Xb)
                for j, head in enumerate(raw):
                    dist[j].append(adapter.to_numpy(head.distances(vectors[j])))
                final_idx.append(fin[0])
        final_idx = np.concatenate(final_idx)
        heads, conf, pred = [], [], []
        for j, C in enumerate(centers):
            head, P = normalized_head(C, np.concatenate(dist[j]), self.normalize)
            heads.append(head)
            conf.append(P.max(axis=1))
            pred.append(P.argmax(axis=1))
        heads.append(None)  # the last stage is the large DEC's own clustering layer
        conf.append(np.ones(X.shape[0]))
        pred.append(final_idx)
        conf, pred = np.column_stack(conf), np.column_stack(pred)
        correct = pred == final_idx[:, None]  # agreement with the large DEC: no labels

        self.dec_ = dec
        self.labels_ = dec.labels_
        self.cluster_centers_ = dec.cluster_centers_
        self.n_iter_ = dec.n_iter_
        self.classes_ = np.arange(self.n_clusters, dtype=np.int64)
        self.exit_depths_ = depths
        self.exit_encoders_ = encoders
        self.exit_centers_ = centers
        self.exit_labels_ = labels
        self.exit_alignment_ = mappings
        self.exit_agreement_ = np.array([np.mean(lab == dec.labels_) for lab in labels])
        self.class_means_ = [h.means for h in heads[:-1]] + [
            np.asarray(dec.cluster_centers_, dtype=np.float64)
        ]
        self.distance_scale_ = [h.scale for h in heads[:-1]]
        self._n_features_out = self.embedding_dim
        self._fit_times = {}
        search_rng = (
            rng if isinstance(self.random_state, np.random.RandomState)
            else check_random_state(self.random_state)
        )
        table = self._finish_fit(adapter, heads, adapter.stage_flops_, conf, correct, None,
                                 search_rng)
        self._store_label_free_hull(table)
        return self

    def _store_label_free_hull(self, table):
        """Keep the (cost, agreement) hull of the training sweep for :meth:`tradeoff_curve`."""
        tr = self.tradeoff_
        if len(tr) > 1:  # the hull search ran: reuse it
            T = np.vstack(tr["thresholds"].to_numpy())
            costs, scores = tr["flops"].to_numpy(), tr["accuracy"].to_numpy()
        else:
            M1 = self.n_stages_ - 1
            targets = np.linspace(0, 1, self.n_targets + 1)[1:]
            T, costs, scores = sweep(table, targets, random_state=self._sweep_seed)
            T = np.vstack([T, np.zeros(M1), np.ones(M1)])
            extra_c, extra_s = table.evaluate_many(T[-2:])
            costs, scores = np.append(costs, extra_c), np.append(scores, extra_s)
        hull = upper_hull(costs, scores)
        self._hull_thresholds = T[hull]
        self._hull_costs = np.asarray(costs)[hull]
        self._hull_agreement = np.asarray(scores)[hull]

    # -- inference --------------------------------------------------------

    def _validate_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, dtype=[np.float32, np.float64], reset=False)

    def transform(self, X):
        """Embed ``X`` with the large DEC's encoder.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of float32 of shape (n_samples, embedding_dim)
        """
        return self.dec_._embed(self._validate_X(X))

    def fit_predict(self, X, y=None):
        """Fit and return the large DEC's training clusters (``labels_``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        labels : ndarray of int64 of shape (n_samples,)
        """
        return self.fit(X).labels_

    def predict(self, X):
        """Cluster of each sample, with early exits (ids of the large DEC).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of int64 of shape (n_samples,)
        """
        return super().predict(X).astype(np.int64)

    def _staged_arrays(self, X):
        """Per-stage predictions and exit confidences (max probabilities) of validated ``X``,
        (N, M) each."""
        preds, _, confs = self._staged(X)
        return np.column_stack(preds), np.column_stack(confs)

    @staticmethod
    def _cluster_to_class(y, clusters):
        """Hungarian mapping of cluster ids to classes; reference cluster of each sample.

        Returns an int array with, for every sample, the cluster id mapped to
        its class (``-1`` when no cluster maps to it).
        """
        from scipy.optimize import linear_sum_assignment

        classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
        y_idx = y_idx.reshape(-1)
        K = int(max(clusters.max(initial=-1) + 1, 1))
        table = np.zeros((K, classes.shape[0]))
        np.add.at(table, (clusters, y_idx), 1.0)
        rows, cols = linear_sum_assignment(table, maximize=True)
        cluster_of_class = np.full(classes.shape[0], -1, dtype=np.int64)
        cluster_of_class[cols] = rows
        return cluster_of_class[y_idx]

    def exit_table(self, X, y=None, sample_weight=None):
        """Per-stage exit arrays of this fitted estimator on new data (one forward pass).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or None
            True classes: a prediction is correct when its cluster is the one
            mapped to the sample's class by the Hungarian matching of the large
            DEC's clusters to the classes on ``X`` (so the last stage's score
            is the large DEC's clustering accuracy). ``None``: the score is
            agreement with the large DEC.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        table : ExitTable
        """
        X = self._validate_X(X)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        pred, conf = self._staged_arrays(X)
        if y is None:
            ref = pred[:, -1]
        else:
            ref = self._cluster_to_class(_check_y_length(y, X), pred[:, -1])
        extra = {}
        if "pred_labels" in inspect.signature(ExitTable).parameters:
            extra = dict(pred_labels=pred, classes=self.classes_)
        return ExitTable(conf, pred == ref[:, None], self.stage_flops_, self.exit_flops_,
                         False, sample_weight, **extra)

    def tradeoff_curve(self, X, y, *, scoring=None, targets=None):
        """Clustering score against cost on ``(X, y)``, one forward pass.

        Every point is an operating point chosen *without labels*: for each
        FLOP target the time-sharing mixture of the training (cost,
        agreement) hull that :meth:`set_operating_point` would serve. Its
        routed predictions on ``X`` (exactly those of :meth:`predict` after
        ``set_operating_point(flops_target=target)``) are rebuilt from the
        cached per-stage outputs and scored against ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            True classes.
        scoring : callable, default=None
            ``scoring(y_true, y_pred) -> float`` on cluster ids;
            :func:`~sklearn_e2cm.metrics.clustering_accuracy` when ``None``.
        targets : array-like of float, default=None
            FLOP targets. ``None``: 101 targets evenly spaced from the
            cheapest hull vertex to 1.0, plus the hull vertices.

        Returns
        -------
        curve : pandas.DataFrame
            One row per target, in increasing target order, then one row for
            the large DEC (``target`` NaN): ``target``, ``flops`` (mean
            normalised cost on ``X``), ``score``, ``agreement`` (with the
            large DEC on ``X``) and ``on_hull`` (vertex of the upper concave
            hull of (flops, score) among the rows).
        """
        import pandas as pd

        check_is_fitted(self)
        scoring = clustering_accuracy if scoring is None else scoring
        if not callable(scoring):
            raise ValueError(
                f"scoring must be a callable scoring(y_true, y_pred); got {scoring!r}."
            )
        X = self._validate_X(X)
        y = _check_y_length(y, X)
        pred, conf = self._staged_arrays(X)
        hull_c, hull_T = self._hull_costs, self._hull_thresholds
        if targets is None:
            targets = np.union1d(hull_c, np.linspace(hull_c[0], 1.0, 101))
        targets = np.sort(np.asarray(targets, dtype=np.float64).ravel())
        if targets.size == 0 or np.any(~np.isfinite(targets)) or np.any(targets <= 0):
            raise ValueError(f"targets must be finite FLOP targets > 0; got {targets!r}.")
        N, M = pred.shape
        u = self._time_sharing_uniforms(X)
        rows = np.arange(N)
        final = pred[:, -1]
        out = []
        for target in targets:
            verts, w = time_sharing(hull_c, target)
            T = hull_T[verts]
            comp = assign_rows(u, w) if len(w) > 1 else np.zeros(N, dtype=np.intp)
            ex = exit_stages(conf, T[comp])
            cost = cumulative_cost(self.stage_flops_, self.exit_flops_, T < 1.0, last_head=False)
            y_pred = pred[rows, ex]
            out.append((target, float(cost[comp, ex].mean()), float(scoring(y, y_pred)),
                        float(np.mean(y_pred == final))))
        out.append((np.nan, 1.0, float(scoring(y, final)), 1.0))
        curve = pd.DataFrame(out, columns=["target", "flops", "score", "agreement"])
        on_hull = np.zeros(len(curve), dtype=bool)
        on_hull[upper_hull(curve["flops"].to_numpy(), curve["score"].to_numpy())] = True
        curve["on_hull"] = on_hull
        return curve

    def __getstate__(self):
        # a copy: ``object.__getstate__`` returns the live ``__dict__``, so popping from it
        # would strip the tuning arrays from the estimator being pickled or deep-copied
        state = dict(BaseEstimator.__getstate__(self))
        state.pop("_tuning_table", None)  # per-sample tuning arrays: not needed to predict
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags


def _check_y_length(y, X):
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must be a 1-D array with one label per sample of X ({X.shape[0]}); got shape "
            f"{y.shape}."
        )
    return y
