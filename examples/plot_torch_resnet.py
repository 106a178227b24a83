"""
================================================
Early exits for a trained PyTorch ResNet
================================================

E²CM never trains or modifies the network: it cuts it into stages (one per
residual block), computes the mean stage output of every class in one pass
over the training data, and tunes one exit threshold per stage to meet a
FLOP budget.

Here the "trained network" is a small ResNet trained for a few epochs on the
8×8 digits images, so the example runs in seconds on a CPU; with your own
network, skip the training and pass it to
:func:`~sklearn_e2cm.stages.split_into_stages`. Long fits on real data show a
progress bar with ``verbose=1``.

Run it as a script: ``python plot_torch_resnet.py`` shows the figure;
``python plot_torch_resnet.py out.png`` saves it.
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
X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # images as (N, C, H, W)
X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)

# %%
# A trained network
# -----------------
# A CIFAR-style ResNet-8 (one residual block per group), trained for a few
# epochs. Any trained ``nn.Module`` built from named children works the same.
net = resnet_small(depth=8, width=16, in_channels=1, n_classes=10, input_size=8)
train_classifier(net, X_tr, y_tr, epochs=4, batch_size=64, random_state=0)
net.eval()
with torch.inference_mode():
    base_acc = (net(torch.from_numpy(X_te)).argmax(1).numpy() == y_te).mean()
print(f"trained network: held-out accuracy {base_acc:.3f}")

# %%
# Cut it into stages
# ------------------
# One stage per residual block; the stem is kept whole and the last stage
# ends with the classifier. The stages are checked against ``net(x)`` and
# share the network's parameters (nothing is copied).
stages = split_into_stages(net)
print(f"{len(stages)} stages:", [name for name, _ in stages.named_children()])

# %%
# Fit the exits and route
# -----------------------
# ``fit`` takes numpy arrays, tensors or a DataLoader of ``(x, y)``. The
# class means come from one pass; inference drops the samples that exited
# before running the next stage.
e2cm = EarlyExitClassMeans(stages=stages, flops_target=0.4, batch_size=512, random_state=0)
e2cm.fit(X_tr, y_tr)
r = e2cm.route(X_te)
print(r)
print(f"E²CM: accuracy {e2cm.score(X_te, y_te):.3f} at {r.flops.mean():.3f} of the FLOPs")
print(f"memory of the exits: {e2cm.memory_overhead_bytes_ / 1024:.1f} KiB")

# %%
# Other budgets come from the arrays cached during the fit: no forward pass
# over the training data.
for target in (0.2, 0.6):
    e2cm.set_operating_point(flops_target=target)
    print(f"flops_target={target}: accuracy {e2cm.score(X_te, y_te):.3f}, "
          f"cost {e2cm.route(X_te).flops.mean():.3f}")
e2cm.set_operating_point(flops_target=0.4)

# %%
# Accuracy against FLOPs on the held-out images
# ---------------------------------------------
disp = TradeoffDisplay.from_estimator(e2cm, X_te, y_te, tune="estimator", name="ResNet-8 + E²CM")
disp.ax_.set_title("E²CM on a small ResNet (digits, held-out)")
disp.figure_.set_size_inches(7, 4.5)
disp.figure_.tight_layout()

if len(sys.argv) > 1:
    disp.figure_.savefig(sys.argv[1], dpi=120)
    print(f"saved {sys.argv[1]}")
else:
    plt.show()
