"""
================================================
Whitened exits against the paper's exits
================================================

The paper measures Euclidean distances between a stage output and the class
means and divides each distance by its mean over the training set (eq. 4).
``metric="mahalanobis"`` measures them in the metric of the within-class
covariance shared by all classes instead, estimated in the same single pass
and shrunk; on pooled stage outputs it is still one pass, with no gradients
and the network untouched.

This example compares three exit heads on the same small trained ResNet:
the paper's (Euclidean with eq. 4), Euclidean without eq. 4, and whitened
on 4×4 average-pooled stage outputs. It prints the nearest-mean accuracy of
every stage, then draws the held-out accuracy–FLOPs curves.

Run it as a script: ``python plot_whitened_exits.py`` shows the figure;
``python plot_whitened_exits.py out.png`` saves it.
"""

import sys

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_e2cm import EarlyExitClassMeans, TradeoffDisplay
from sklearn_e2cm.models import resnet_small, train_classifier
from sklearn_e2cm.stages import split_into_stages

torch.manual_seed(0)
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)

net = resnet_small(depth=8, width=16, in_channels=1, n_classes=10, input_size=8)
train_classifier(net, X_tr, y_tr, epochs=4, batch_size=64, random_state=0)
stages = split_into_stages(net)

# %%
# Three exit heads on the same stages
# -----------------------------------
configs = {
    "euclidean (paper)": dict(metric="euclidean"),
    "euclidean, no eq. 4": dict(metric="euclidean", normalize=False),
    "mahalanobis, avg4": dict(metric="mahalanobis", pooling="avg4"),
}
models = {}
for name, params in configs.items():
    models[name] = EarlyExitClassMeans(stages=stages, flops_target=0.3, random_state=0,
                                       **params).fit(X_tr, y_tr)

# %%
# Nearest-mean accuracy of every stage
# ------------------------------------
# ``staged_predict`` gives the prediction of every exit for every sample
# (the last stage is the network's own prediction). Whitening helps most at
# the early stages, where the classes are least separated.
for name, est in models.items():
    accs = [np.mean(p == y_te) for p in est.staged_predict(X_te)]
    print(f"{name:<22}", " ".join(f"{a:.3f}" for a in accs))

# %%
# Accuracy at a budget of 30 % of the FLOPs, and the curves
# ---------------------------------------------------------
# On these small, easy images the whitened head after the stem is already as
# accurate as the whole network: its hull ends at a few percent of the FLOPs
# and a larger target is served there (the estimator does not spend FLOPs
# that buy no accuracy on its tuning data). On Fashion-MNIST with a ResNet-20
# the whitened exits gain 14 points over the paper's at 15 % of the FLOPs
# (see the Performance page of the user guide).
for name, est in models.items():
    print(f"{name:<22} accuracy {est.score(X_te, y_te):.3f} "
          f"at cost {est.route(X_te).flops.mean():.3f}")

fig, ax = plt.subplots(figsize=(7, 4.5))
names = list(models)
TradeoffDisplay.from_estimator(
    models[names[0]], X_te, y_te, tune="estimator", name=names[0], ax=ax,
    compare=[(n, models[n]) for n in names[1:]], show_points=False,
)
ax.set_title("Exit heads on a small ResNet (digits, held-out)")
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
fig.tight_layout()

if len(sys.argv) > 1:
    fig.savefig(sys.argv[1], dpi=120)
    print(f"saved {sys.argv[1]}")
else:
    plt.show()
