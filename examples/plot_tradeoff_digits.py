"""Accuracy-FLOPs trade-off of E²CM on a scikit-learn chain (digits).

Fits E²CM on StandardScaler -> PCA -> Nystroem -> LogisticRegression,
compares the paper's Euclidean exits with whitened (Mahalanobis) exits on
held-out data, and saves the plot to ``tradeoff_digits.png``.

Run: ``python examples/plot_tradeoff_digits.py``
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.kernel_approximation import Nystroem  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_e2cm import EarlyExitClassMeans, TradeoffDisplay  # noqa: E402

X, y = load_digits(return_X_y=True)
X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)


def chain():
    return [StandardScaler(), PCA(32, random_state=0),
            Nystroem(n_components=400, random_state=0), LogisticRegression(max_iter=1000)]


fig, ax = plt.subplots(figsize=(6, 4))
for metric in ("euclidean", "mahalanobis"):
    est = EarlyExitClassMeans(stages=chain(), metric=metric, flops_target=0.3,
                              random_state=0).fit(X_tr, y_tr)
    # thresholds tuned on the training data, evaluated on the held-out split
    TradeoffDisplay.from_estimator(est, X_te, y_te, tune="estimator", name=metric, ax=ax)
ax.set_title("E²CM on digits (held-out)")
fig.tight_layout()
fig.savefig("tradeoff_digits.png", dpi=120)
print("saved tradeoff_digits.png")
