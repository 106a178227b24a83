"""
================================================
Quick start: E²CM on a scikit-learn chain
================================================

Early exits for a trained scikit-learn chain (StandardScaler → PCA →
Nystroem → LogisticRegression) on the digits data bundled with scikit-learn.
After each step, E²CM compares the step's output with the mean output of
every class; a sample close enough to one class mean stops there.

We fit the paper's Euclidean exits and the whitened (Mahalanobis) exits,
look at where the samples leave, and draw both accuracy–FLOPs curves on
held-out data with :class:`~sklearn_e2cm.TradeoffDisplay`.

Run it as a script: ``python plot_tradeoff_digits.py`` shows the figure;
``python plot_tradeoff_digits.py tradeoff.png`` saves it to ``tradeoff.png``
instead.
"""

import sys

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from sklearn_e2cm import EarlyExitClassMeans, TradeoffDisplay

X, y = load_digits(return_X_y=True)
X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)


def chain():
    """The staged model: each step is one stage, an exit can follow each."""
    return [StandardScaler(), PCA(32, random_state=0),
            Nystroem(n_components=400, random_state=0), LogisticRegression(max_iter=1000)]


# %%
# Fit at a budget of 30 % of the chain's FLOPs
# --------------------------------------------
# ``flops_target=0.3`` asks for an expected cost of 0.3 (the chain alone
# costs 1.0). The thresholds are tuned on the training data: one pass
# computes the class means, a sweep over 1000 budgets keeps the best
# (cost, accuracy) points.
clf = EarlyExitClassMeans(stages=chain(), flops_target=0.3, random_state=0).fit(X_tr, y_tr)
r = clf.route(X_te)
print(r)
print(f"held-out accuracy {clf.score(X_te, y_te):.3f} at mean cost {r.flops.mean():.3f}")
print("samples leaving after each stage:", r.exit_counts(clf.n_stages_).tolist())

# %%
# Another budget without refitting
# --------------------------------
# The swept operating points are kept, so a new budget is served at once.
for target in (0.15, 0.5, 1.0):
    clf.set_operating_point(flops_target=target)
    r = clf.route(X_te)
    print(f"flops_target={target:<4}  cost {r.flops.mean():.3f}  "
          f"accuracy {clf.score(X_te, y_te):.3f}")
clf.set_operating_point(flops_target=0.3)

# %%
# The trade-off on held-out data
# ------------------------------
# ``tune="estimator"`` evaluates the threshold vectors tuned on the training
# data on the held-out split: an honest picture of what the estimator serves.
# The whitened exits measure distances in the metric of the shared
# within-class covariance (see :ref:`whitened`).
whitened = EarlyExitClassMeans(stages=chain(), metric="mahalanobis", flops_target=0.3,
                               random_state=0).fit(X_tr, y_tr)

fig, ax = plt.subplots(figsize=(7, 4.5))
TradeoffDisplay.from_estimator(clf, X_te, y_te, tune="estimator", name="euclidean", ax=ax)
TradeoffDisplay.from_estimator(whitened, X_te, y_te, tune="estimator", name="mahalanobis",
                               ax=ax)
ax.set_title("E²CM on digits (held-out)")
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
fig.tight_layout()

if len(sys.argv) > 1:
    fig.savefig(sys.argv[1], dpi=120)
    print(f"saved {sys.argv[1]}")
else:
    plt.show()
