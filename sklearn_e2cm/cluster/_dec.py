"""Deep embedded clustering: the :class:`DEC` estimator.

Xie, Girshick & Farhadi (2016), trained by the DEC training library
(:mod:`sklearn_e2cm.cluster._training`). Needs PyTorch, which is imported when
the estimator is fitted.
"""

import numbers

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._backend import import_torch, resolve_device
from .._exit_estimator import transactional
from ..stages._dec import _soft_assign_numpy
from ._training import _MAX_SEED, _build_encoder, _embed_numpy, _train_dec

__all__ = ["DEC"]

#: Names of the DEC parameters that drive training; ``DEC._train_params()``
#: returns them as keyword arguments of :func:`~._training._train_dec` and
#: :func:`~._training._fit_prefix_head`.
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


def _validate_fitted_X(estimator, X):
    """``X`` checked against a fitted DEC-based estimator (float32 or float64 array)."""
    check_is_fitted(estimator)
    return validate_data(estimator, X, dtype=[np.float32, np.float64], reset=False)


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
    feature_names_in_ : ndarray of str of shape (n_features_in,)
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
        """Training keyword arguments of :func:`~._training._train_dec` and
        :func:`~._training._fit_prefix_head`."""
        return {name: getattr(self, name) for name in _TRAIN_PARAM_NAMES}

    # -- fitting ----------------------------------------------------------

    @transactional
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
        """Embeddings of validated ``X`` (float32 numpy), computed in batches of ``batch_size``."""
        return _embed_numpy(self.encoder_, X, batch_size=self.batch_size,
                            device=resolve_device(self.device))

    def _predict_embedded(self, Z):
        """Cluster of each embedding: argmax of the Student-t soft assignment."""
        return _soft_assign_numpy(Z, self.cluster_centers_).argmax(axis=1).astype(np.int64)

    def _validate_X(self, X):
        return _validate_fitted_X(self, X)

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
