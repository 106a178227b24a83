"""The DEC training library: networks, autoencoder pretraining, self-training.

:func:`_train_dec` is the procedure of Xie, Girshick & Farhadi (2016): an
autoencoder is pretrained to reconstruct its (corrupted) input
(:func:`_pretrain_autoencoder`), k-means on the embedding initialises the
cluster centres (:func:`_kmeans_init`), and the encoder and centres are then
trained together (:func:`_self_train`) by minimising ``KL(P || Q)`` between
the Student-t soft assignment ``Q`` and the sharpened target distribution
``P``, refreshed every ``update_interval`` batches, until fewer than ``tol``
of the labels change between refreshes.

The early exits of the E²CM paper (section III-C, section IV-D) reuse it: an
exit head keeps the first ``n_frozen_layers`` Linear layers of the large
encoder (copied, frozen) and trains a small tail on top of them with exactly
the same procedure (:func:`_fit_prefix_head`), then its cluster ids are
renamed to agree with the large DEC's (:func:`_align_to`)::

    large = DEC(...).fit(X)
    encoder, centers, labels = _fit_prefix_head(
        large.encoder_, 1, (large.embedding_dim,), X, **large._train_params())
    centers, labels, mapping = _align_to(large.labels_, labels, centers)

``encoder[: 2 * n_frozen_layers]`` of a head is then bit-identical to
``large.encoder_[: 2 * n_frozen_layers]`` (Linear/ReLU pairs), so at inference
the shared layers run once and each head's tail ``encoder[2 * n_frozen_layers:]``
maps the shared activation to the head's embedding.

Every network here is a ``torch.nn.Sequential`` of ``Linear`` layers with a
``ReLU`` after each but the last. Torch is imported when a function needs it.
"""

import copy
import numbers
from collections import namedtuple

import numpy as np
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state

from .._backend import LongWorkNotice, as_float_tensor, import_torch, progress, resolve_device
from .._fitting.training import epoch_order, minibatch_step, run_epochs
from ..metrics import align_labels
from ..stages._dec import _soft_assign_numpy

#: Largest seed drawn from a RandomState for torch generators and k-means.
_MAX_SEED = 2**31 - 1

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


def _embed_numpy(encoder, X, *, batch_size, device):
    """``encoder(X)`` as a numpy array (:func:`_forward`); ``encoder`` is left on the CPU."""
    Z = _forward(encoder, X, batch_size=batch_size, device=device)
    encoder.cpu()
    return Z.cpu().numpy()


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
    """Endless stream of shuffled index batches (an :func:`epoch_order` per epoch)."""
    while True:
        perm = epoch_order(n, generator).to(device)
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

    Notes
    -----
    The loop is :func:`~sklearn_e2cm._fitting.training.run_epochs` (a
    permutation per epoch from the shuffling generator, a progress bar per
    epoch) with one :func:`~sklearn_e2cm._fitting.training.minibatch_step`
    per batch.
    """
    torch = import_torch("DEC")
    device = torch.device(device)
    X = as_float_tensor(X, device)
    decoder = _build_encoder(_encoder_dims(encoder)[::-1], seed=seed).to(device)
    encoder.to(device).train()
    opt = _make_optimizer(optimizer, [*encoder.parameters(), *decoder.parameters()], lr)
    shuffle_gen = torch.Generator().manual_seed(int(seed))
    noise_gen = torch.Generator(device=device).manual_seed(int(seed) + 1)

    def reconstruction_loss(xb):
        rec = decoder(encoder(_corrupt(xb, noise, noise_level, noise_gen)))
        return torch.nn.functional.mse_loss(rec, xb)

    def batches(order):  # the epoch's order moves to the device once
        order = order.to(device)
        return (order[start : start + batch_size] for start in range(0, n, batch_size))

    def step(rows):
        xb = X[rows]
        return minibatch_step(opt, lambda: reconstruction_loss(xb)), xb.shape[0]

    def check(epoch, loss):
        if not np.isfinite(loss):
            raise ValueError(
                f"{desc or 'Autoencoder pretraining'}: the reconstruction loss became {loss} at "
                f"epoch {epoch}; the autoencoder diverged. Scale the input (e.g. StandardScaler, "
                "or divide by its largest value) or lower the learning rate.")

    n = X.shape[0]
    loss_curve = run_epochs(n, epochs, step, rng=shuffle_gen, batches=batches, verbose=verbose,
                            desc=desc, n_batches=-(-n // batch_size), end_epoch=check)
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
    Z = _embed_numpy(encoder, X, batch_size=batch_size, device=device)
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state).fit(Z)
    return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)


def _refresh_target(encoder, X, mu, *, batch_size, device):
    """DEC's target ``P`` on all of ``X`` and the hard labels of its ``Q`` (torch)."""
    torch = import_torch("DEC")
    Z = _forward(encoder, X, batch_size=batch_size, device=device)
    Q = torch.softmax(_soft_assign_logits(Z, mu.detach()), dim=1)
    return _target_distribution(Q), Q.argmax(1)


def _kl_loss(Z, mu, target):
    """DEC's loss ``KL(P || Q)`` of a batch (mean over its rows), ``Q`` from embedding ``Z``."""
    torch = import_torch("DEC")
    log_q = torch.log_softmax(_soft_assign_logits(Z, mu), dim=1)
    return torch.nn.functional.kl_div(log_q, target, reduction="batchmean")


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
    notice = LongWorkNotice(desc or "DEC self-training", verbose, unit="iteration")
    for it in bar:
        if it % update_interval == 0:
            notice.update(it, max_iter)
            if not bool(torch.isfinite(mu).all()):
                raise ValueError(
                    f"{desc or 'DEC self-training'}: the cluster centres became non-finite "
                    f"after {it} iterations (the KL loss diverged); lower the learning rate or "
                    "scale the input.")
            target, labels = _refresh_target(encoder, X, mu, batch_size=batch_size,
                                             device=device)
            if labels_last is not None:
                delta = (labels != labels_last).float().mean().item()
                if verbose:
                    bar.set_postfix(delta_label=f"{delta:.4f}")
                if delta < tol:
                    break
            labels_last = labels
        idx = next(batches)
        minibatch_step(opt, lambda: _kl_loss(encoder(X[idx]), mu, target[idx]))
        n_iter = it + 1
    if verbose and hasattr(bar, "close"):
        bar.close()
    encoder.cpu().eval()
    centers = mu.detach().cpu().numpy().astype(np.float32)
    Z = _embed_numpy(encoder, X, batch_size=batch_size, device=device)
    labels = _soft_assign_numpy(Z, centers).argmax(1).astype(np.int64)
    return centers, labels, n_iter


def _train_dec(
    encoder, X, *, n_clusters, pretrain_epochs, pretrain_lr, optimizer, noise, noise_level,
    self_train_lr, max_iter, update_interval, tol, batch_size, n_init, random_state, device,
    verbose, desc="DEC",
):
    """The whole DEC procedure on a fresh ``encoder`` (trained in place).

    Pretraining (:func:`_pretrain_autoencoder`), k-means initialisation
    (:func:`_kmeans_init`) and self-training (:func:`_self_train`). The
    seeds of the three phases are drawn, in that order, from
    ``check_random_state(random_state)``.

    The training parameters are those of :class:`~sklearn_e2cm.cluster.DEC`
    (``DEC._train_params()``), all required: the defaults live in one place,
    ``DEC.__init__``.

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
        Every keyword argument of :func:`_train_dec` (``n_clusters``,
        ``pretrain_epochs``, ..., ``random_state``, ``device``, ``verbose``):
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
    device = resolve_device(train_params["device"])
    batch_size = int(train_params["batch_size"])
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
