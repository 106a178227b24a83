"""
================================================
Saving and loading fitted exits
================================================

Two ways to keep a fitted estimator:

* :func:`~sklearn_e2cm.save_exits` / :func:`~sklearn_e2cm.load_exits` write
  only what the exits learned (class means, eq. 4 scales, thresholds, the
  trade-off table) as plain data: a JSON document and numeric arrays in one
  ``.npz`` file. Loading runs no code from the file. The stages (your network
  or fitted scikit-learn steps) are not stored: you load them your usual way
  and pass them to ``load_exits``, which checks that they match.
* ``joblib`` / ``pickle`` keep the whole estimator, stages included. Loading
  such a file runs code named in it: use it only for files you trust.

Files go to a temporary folder that is removed at the end.
"""

import os
import tempfile

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_e2cm import EarlyExitClassMeans, load_exits, save_exits

X, y = load_digits(return_X_y=True)
X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)

# %%
# The stages are fitted first (they are "the trained model"), then the exits.
net = make_pipeline(StandardScaler(), PCA(24, random_state=0),
                    Nystroem(n_components=300, random_state=0),
                    LogisticRegression(max_iter=1000)).fit(X_tr, y_tr)
steps = list(net)  # the fitted steps, in order

e2cm = EarlyExitClassMeans(stages=steps, flops_target=0.3, random_state=0).fit(X_tr, y_tr)

folder = tempfile.mkdtemp()

# %%
# Plain-data file, stages passed back at load time
# ------------------------------------------------
path = save_exits(e2cm, os.path.join(folder, "exits.npz"))
print(f"{os.path.basename(path)}: {os.path.getsize(path) / 1024:.1f} KiB")

loaded = load_exits(path, stages=steps)
same = np.array_equal(loaded.predict(X_te), e2cm.predict(X_te))
print("same predictions:", same)
print("same costs:", np.allclose(loaded.route(X_te).flops, e2cm.route(X_te).flops))

# %%
# The tuning arrays are stored too (``include_tuning=True``), so another
# budget can be served after loading, without the training data.
loaded.set_operating_point(flops_target=0.15)
print(f"after loading, flops_target=0.15: cost {loaded.route(X_te).flops.mean():.3f}, "
      f"accuracy {loaded.score(X_te, y_te):.3f}")

# %%
# joblib: the whole estimator, for files you trust
# ------------------------------------------------
jpath = os.path.join(folder, "e2cm.joblib")
joblib.dump(e2cm, jpath)
again = joblib.load(jpath)
print("joblib round trip, same predictions:",
      np.array_equal(again.predict(X_te), e2cm.predict(X_te)))

for name in os.listdir(folder):
    os.remove(os.path.join(folder, name))
os.rmdir(folder)
