"""FLOP cost model for scikit-learn stages.

Per-sample inference FLOPs of fitted scikit-learn transformers and
classifiers, counted the way ``torch.utils.flop_counter`` counts a matrix
product (a multiply-add is 2 FLOPs); elementwise work is counted one FLOP per
operation. Unknown estimators raise a clear error naming the step; the
``stage_costs=`` parameter of the estimators overrides any count.
"""

import numbers

import numpy as np
import scipy.sparse as sp

__all__ = ["sklearn_flops", "UnknownCostError"]


class UnknownCostError(TypeError):
    """The FLOPs of a stage cannot be known without ``stage_costs``."""


def _n_out_linear(coef):
    coef = np.atleast_2d(coef)
    return coef.shape[0], coef.shape[1]


def _linear(est, n_in):
    k, d = _n_out_linear(est.coef_)
    return 2 * k * d + k  # x·Wᵀ + b


def _kernel_flops(kernel, n_in, n_ref):
    """FLOPs of evaluating a kernel between one sample and ``n_ref`` references."""
    base = 2 * n_in * n_ref  # the inner products
    if kernel == "linear":
        return base
    if kernel in ("rbf", "laplacian", "chi2"):
        # ||x||² (2D) + combine (3 per ref) + scale (1) + exp (1)
        return base + 2 * n_in + 5 * n_ref
    if kernel == "poly":
        return base + 3 * n_ref  # scale, add coef0, power
    if kernel in ("sigmoid",):
        return base + 3 * n_ref
    if kernel in ("cosine",):
        return base + 2 * n_in + 2 * n_ref
    return None


def _pca(est, n_in):
    k = est.components_.shape[0]
    f = n_in + 2 * n_in * k  # centring + projection
    if getattr(est, "whiten", False):
        f += k
    return f


def _mlp(est, n_in):
    f = 0
    for W in est.coefs_:
        a, b = W.shape
        f += 2 * a * b + b  # matmul + bias
        f += b  # activation
    return f


def _svc(est, n_in):
    n_sv = est.support_vectors_.shape[0]
    kernel = est.kernel if isinstance(est.kernel, str) else None
    kf = _kernel_flops(kernel, n_in, n_sv) if kernel else None
    if kf is None:
        return None
    n_coef = np.atleast_2d(est.dual_coef_).shape[0]
    n_dec = max(1, len(getattr(est, "classes_", [0, 1])) * (len(getattr(est, "classes_", [0, 1])) - 1) // 2)
    return kf + 2 * n_sv * n_coef + n_dec


def _nystroem(est, n_in):
    m = est.components_.shape[0]
    kernel = est.kernel if isinstance(est.kernel, str) else None
    kf = _kernel_flops(kernel, n_in, m) if kernel else None
    if kf is None:
        return None
    return kf + 2 * m * est.normalization_.shape[1]


def _rbf_sampler(est, n_in):
    m = est.random_weights_.shape[1]
    return 2 * n_in * m + m + m + m  # projection, offset, cos, scale


def _random_projection(est, n_in):
    comp = est.components_
    if sp.issparse(comp):
        return 2 * comp.nnz
    return 2 * comp.shape[0] * comp.shape[1]


def _standard_scaler(est, n_in):
    f = 0
    if getattr(est, "with_mean", True) and getattr(est, "mean_", None) is not None:
        f += n_in
    if getattr(est, "with_std", True) and getattr(est, "scale_", None) is not None:
        f += n_in
    return f


def _lda(est, n_in):
    if hasattr(est, "coef_"):
        return _linear(est, n_in)
    return None


def _kneighbors(est, n_in):
    n_fit = est.n_samples_fit_
    return 2 * n_in * n_fit + 2 * n_fit + n_fit * int(np.log2(max(est.n_neighbors, 2)) + 1)


def _nearest_centroid(est, n_in):
    k = est.centroids_.shape[0]
    return 2 * n_in * k + 2 * n_in + 4 * k


def _gaussian_nb(est, n_in):
    k = est.theta_.shape[0]
    return 4 * k * n_in + 2 * k


def _tree(est, n_in):
    return int(est.tree_.max_depth) + 1  # one comparison per level


def _forest(est, n_in):
    return sum(_tree(t, n_in) for t in est.estimators_) + len(est.estimators_) * len(
        getattr(est, "classes_", [0]))


# name of the estimator class -> function(fitted estimator, n_features_in) -> FLOPs
_RULES = {
    "StandardScaler": _standard_scaler,
    "MinMaxScaler": lambda e, d: 2 * d,
    "MaxAbsScaler": lambda e, d: d,
    "RobustScaler": lambda e, d: 2 * d,
    "Normalizer": lambda e, d: 3 * d,
    "Binarizer": lambda e, d: d,
    "PCA": _pca,
    "IncrementalPCA": _pca,
    "TruncatedSVD": lambda e, d: 2 * d * e.components_.shape[0],
    "FastICA": lambda e, d: d + 2 * d * e.components_.shape[0],
    "GaussianRandomProjection": _random_projection,
    "SparseRandomProjection": _random_projection,
    "Nystroem": _nystroem,
    "RBFSampler": _rbf_sampler,
    "PolynomialFeatures": lambda e, d: int(e.n_output_features_),
    "SelectKBest": lambda e, d: 0,
    "VarianceThreshold": lambda e, d: 0,
    "LogisticRegression": _linear,
    "LogisticRegressionCV": _linear,
    "RidgeClassifier": _linear,
    "RidgeClassifierCV": _linear,
    "SGDClassifier": _linear,
    "Perceptron": _linear,
    "PassiveAggressiveClassifier": _linear,
    "LinearSVC": _linear,
    "LinearDiscriminantAnalysis": _lda,
    "MLPClassifier": _mlp,
    "SVC": _svc,
    "NuSVC": _svc,
    "KNeighborsClassifier": _kneighbors,
    "NearestCentroid": _nearest_centroid,
    "GaussianNB": _gaussian_nb,
    "DecisionTreeClassifier": _tree,
    "RandomForestClassifier": _forest,
    "ExtraTreesClassifier": _forest,
}


def sklearn_flops(estimator, n_features_in, name=None):
    """Per-sample inference FLOPs of a fitted scikit-learn step.

    Parameters
    ----------
    estimator : fitted estimator, or "passthrough"/None
    n_features_in : int
        Width of the step's input.
    name : str, default=None
        Name used in the error message.

    Returns
    -------
    flops : float

    Raises
    ------
    UnknownCostError
        When no cost rule exists for the estimator's type.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.decomposition import PCA
    >>> pca = PCA(n_components=2).fit(np.random.RandomState(0).rand(20, 5))
    >>> sklearn_flops(pca, 5)  # centring (5) + projection (2 * 5 * 2)
    25.0
    """
    if estimator is None or (isinstance(estimator, str) and estimator == "passthrough"):
        return 0.0
    if type(estimator).__name__ == "FrozenEstimator":  # costs what the step inside costs
        return sklearn_flops(estimator.estimator, n_features_in, name=name)
    if hasattr(estimator, "steps"):  # a Pipeline inside a stage: sum of its steps
        total, d = 0.0, n_features_in
        for step_name, step in estimator.steps:
            total += sklearn_flops(step, d, name=f"{name or 'pipeline'}/{step_name}")
            d = _output_width(step, d)
        return total
    cls = type(estimator).__name__
    rule = _RULES.get(cls)
    flops = None if rule is None else rule(estimator, int(n_features_in))
    if flops is None:
        label = f"stage {name!r} " if name is not None else ""
        raise UnknownCostError(
            f"The FLOPs of {label}({cls}) cannot be known: no cost rule exists for "
            f"{cls} with these settings. Pass stage_costs= with the per-sample FLOPs of each "
            f"stage (a list, or a dict {{stage index: flops}}). Known types: "
            f"{', '.join(sorted(_RULES))}."
        )
    return float(flops)


def _output_width(step, n_in):
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return n_in
    if type(step).__name__ == "FrozenEstimator":
        return _output_width(step.estimator, n_in)
    for attr in ("n_components_", "n_output_features_"):
        v = getattr(step, attr, None)
        if isinstance(v, numbers.Integral):
            return int(v)
    comp = getattr(step, "components_", None)
    if comp is not None:
        return comp.shape[0]
    rw = getattr(step, "random_weights_", None)
    if rw is not None:
        return rw.shape[1]
    return n_in
