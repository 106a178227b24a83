"""
================================================
Choosing a budget with FlopBudgetSearchCV
================================================

:class:`~sklearn_e2cm.FlopBudgetSearchCV` cross-validates an early-exit
estimator over many FLOP targets at once: each fold computes the class means
and sweeps every target on cached per-stage arrays, so 200 targets cost
little more than one. With ``max_flops=0.25`` it selects the target with the
best cross-validated accuracy among those whose mean *held-out* cost is at
most 0.25.

The chain is trained once and frozen (:class:`~sklearn.frozen.FrozenEstimator`),
so the search runs the stages once on all the data and every fold reads its
stage vectors from that pass.

Run it as a script: ``python plot_budget_search.py`` shows the figure;
``python plot_budget_search.py out.png`` saves it.
"""

import sys

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.frozen import FrozenEstimator
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_e2cm import EarlyExitClassMeans, FlopBudgetSearchCV, TradeoffDisplay

X, y = load_digits(return_X_y=True)
X_net, X_rest, y_net, y_rest = train_test_split(X, y, test_size=0.6, stratify=y, random_state=0)
X_tr, X_te, y_tr, y_te = train_test_split(X_rest, y_rest, test_size=0.4, stratify=y_rest,
                                          random_state=0)

# %%
# The trained model, frozen
# -------------------------
net = make_pipeline(StandardScaler(), PCA(32, random_state=0),
                    Nystroem(n_components=300, random_state=0),
                    LogisticRegression(max_iter=1000)).fit(X_net, y_net)
print(f"base model: held-out accuracy {net.score(X_te, y_te):.3f}")

# %%
# Search 200 targets, select within a budget of 0.25
# --------------------------------------------------
search = FlopBudgetSearchCV(
    EarlyExitClassMeans(stages=FrozenEstimator(net), sweep_resolution=200, random_state=0),
    flops_targets=200, cv=3, max_flops=0.25, random_state=0,
)
search.fit(X_tr, y_tr)
print("one shared forward pass:", search.shared_stage_outputs_)
print(f"selected flops_target {search.best_params_['flops_target']:.3f}: "
      f"CV accuracy {search.best_score_:.3f} at held-out cost {search.best_flops_:.3f}")
print(f"test accuracy {search.score(X_te, y_te):.3f} "
      f"at cost {search.route(X_te).flops.mean():.3f}")

# %%
# The cross-validated front: the best accuracy reachable at each cost.
front = search.pareto_front_[["flops_target", "flops", "score", "std_score"]]
print(front.round(3).to_string(index=False))

# %%
# Cross-validated trade-off and the selected point
# ------------------------------------------------
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
TradeoffDisplay.from_search(search, ax=axes[0], name="cross-validated")
axes[0].axvline(0.25, color="grey", linestyle=":", label="budget")
axes[0].set_title("FlopBudgetSearchCV (3 folds)")
axes[0].legend(fontsize="small", loc="lower right")
TradeoffDisplay.from_estimator(search.best_estimator_, X_te, y_te, tune="estimator",
                               name="refit, test set", ax=axes[1])
axes[1].set_title("selected estimator on the test set")
fig.tight_layout()

if len(sys.argv) > 1:
    fig.savefig(sys.argv[1], dpi=120)
    print(f"saved {sys.argv[1]}")
else:
    plt.show()
