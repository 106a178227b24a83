"""
================================================
Internal classifiers, alone and with E²CM
================================================

The baselines of the paper on a frozen network:
:class:`~sklearn_e2cm.InternalClassifierEarlyExit` trains a small internal
classifier (pooling and one linear layer) after chosen stages, on the stage
outputs of the frozen network, and exits when the classifier is confident.
``method="sdn"`` places the exits as Shallow-Deep Networks (15–90 % of the
FLOPs); ``"branchynet"`` and ``"bwds"`` are the other two placements.

``class_means=True`` feeds each classifier the normalised distances to the
class means as extra inputs, and ``combine="consult"`` is the paper's
combination: a classifier's exit fires only where E²CM's class at that stage
agrees with the classifier's (``"and"`` / ``"or"`` combine the two confidences
instead).

Everything runs on a small ResNet trained for a few epochs on the digits
images, with 10 epochs of Adam for the heads, so it takes seconds.

Run it as a script: ``python plot_internal_classifiers.py`` shows the
figure; ``python plot_internal_classifiers.py out.png`` saves it.
"""

import sys

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_e2cm import EarlyExitClassMeans, InternalClassifierEarlyExit, TradeoffDisplay
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
# Three early-exit models on the same frozen stages
# -------------------------------------------------
common = dict(flops_target=0.3, random_state=0)
sdn = InternalClassifierEarlyExit(stages, method="sdn", epochs=10, pooling="avg4",
                                  **common).fit(X_tr, y_tr)
both = InternalClassifierEarlyExit(stages, method="sdn", epochs=10, pooling="avg4",
                                   class_means=True, combine="consult", **common).fit(X_tr, y_tr)
e2cm = EarlyExitClassMeans(stages, **common).fit(X_tr, y_tr)

print("SDN exits after stages", sdn.exit_stages_.tolist())
for name, est in [("SDN", sdn), ("SDN + E²CM (consult)", both), ("E²CM", e2cm)]:
    r = est.route(X_te)
    print(f"{name:<17} accuracy {est.score(X_te, y_te):.3f} at cost {r.flops.mean():.3f}")

# %%
# The trade-off of each on the held-out images
# --------------------------------------------
fig, ax = plt.subplots(figsize=(7, 4.5))
TradeoffDisplay.from_estimator(sdn, X_te, y_te, tune="estimator", name="SDN", ax=ax,
                               compare=[("SDN + E²CM (consult)", both), ("E²CM", e2cm)],
                               show_points=False)
ax.set_title("Internal classifiers and E²CM (digits, held-out)")
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
fig.tight_layout()

if len(sys.argv) > 1:
    fig.savefig(sys.argv[1], dpi=120)
    print(f"saved {sys.argv[1]}")
else:
    plt.show()
