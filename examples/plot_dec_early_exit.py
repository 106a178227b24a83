"""
================================================
Clustering with early exits (DEC)
================================================

:class:`~sklearn_e2cm.DECEarlyExit` trains deep embedded clustering (an
autoencoder pretrained to reconstruct its input, k-means on the embedding,
then self-training of the encoder and the cluster centres), then two smaller
exit heads on frozen prefixes of its encoder (the paper's ``DEC_small`` and
``DEC_middle``). At inference a sample leaves at the first exit whose
cluster centres it is close enough to, exactly as E²CM does with class means.
No labels are used: thresholds are chosen by agreement with the large DEC.

The paper's recipe (500-500-2000 encoder, 200 pretraining epochs, 20 000
self-training batches, 20 k-means restarts) takes hours on a CPU. Here the
network is shrunk and trained briefly on the 64-pixel digits so that the
example runs in seconds; ``verbose=1`` shows progress bars on long fits.

Run it as a script: ``python plot_dec_early_exit.py`` shows the figure;
``python plot_dec_early_exit.py out.png`` saves it.
"""

import sys

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits

from sklearn_e2cm import DECEarlyExit
from sklearn_e2cm.metrics import clustering_accuracy

torch.manual_seed(0)
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)

# %%
# Fit: quick settings for a CPU
# -----------------------------
ee = DECEarlyExit(
    n_clusters=10, hidden=(128, 128, 256), embedding_dim=10,
    pretrain_epochs=30, max_iter=400, update_interval=50, n_init=5,
    flops_target=0.5, random_state=0,
)
ee.fit(X)  # no labels
print("exits after hidden layers", ee.exit_depths_, "; cost of each exit:",
      np.round(ee.cumulative_cost_, 3).tolist())

# %%
# Labels are used only to measure the result: clustering accuracy is the
# accuracy under the best one-to-one mapping of clusters to classes.
r = ee.route(X)
print(r)
print(f"routed at flops_target=0.5: clustering accuracy "
      f"{clustering_accuracy(y, r.y_pred):.3f} at cost {r.flops.mean():.3f}")

# %%
# Clustering accuracy against FLOPs
# ---------------------------------
# ``tradeoff_curve`` scores the operating point of every target (chosen
# without labels) against the labels, from one forward pass.
curve = ee.tradeoff_curve(X, y)
large = curve[curve["target"].isna()].iloc[0]
print(f"large DEC alone: clustering accuracy {large['score']:.3f}")

fig, ax = plt.subplots(figsize=(7, 4.5))
pts = curve[curve["target"].notna()]
ax.plot(pts["flops"], pts["score"], marker="o", markersize=3, label="DEC with early exits")
ax.plot([1.0], [large["score"]], marker="*", markersize=12, color="black",
        linestyle="none", label="large DEC")
for c in ee.cumulative_cost_[:-1]:
    ax.axvline(c, color="grey", linestyle=":", linewidth=1)
ax.set_xlabel("normalised FLOPs (large DEC = 1)")
ax.set_ylabel("clustering accuracy")
ax.set_title("DEC with early exits (digits)")
ax.set_xlim(left=0)
ax.grid(True, alpha=0.3)
ax.legend(loc="lower right")
fig.tight_layout()

if len(sys.argv) > 1:
    fig.savefig(sys.argv[1], dpi=120)
    print(f"saved {sys.argv[1]}")
else:
    plt.show()
