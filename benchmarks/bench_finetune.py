"""The paper's Fig. 3: early exits for a new task under a one-epoch fine-tuning budget.

The paper fine-tunes EfficientNet-B0 / MobileNetV3 (ImageNet) on 10 or 50
images per class of a new data set, with one early exit near 20 % of the
FLOPs and class means max-pooled from 14x14x80 to 7x7x10, and compares
E²CM with SDN and BranchyNet when every method gets one epoch of training.
Here, with what a 2-core CPU has:

* base network: ``resnet_small(depth=20, width=16)`` trained on Fashion-MNIST
  classes 0-4 (T-shirt, trouser, pullover, dress, coat; 30k images, 3 epochs,
  SGD one-cycle), cached with its recipe and its test accuracy on those
  classes (``<cache>/resnet20_w16_e3_s0_n30000_classes0-4.{pt,json}``);
* new task: classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), 10 or 50
  training images per class drawn at random (seeded), tested on all 5000 test
  images of those classes;
* budget: one epoch over the small training set for every method:

  (a) the head (final linear layer) replaced by a 5-class one and trained for
      one epoch, the rest of the network frozen (its batch norms keep their
      statistics): the network every other row is built on, and the accuracy
      at φ = 1;
  (b) E²CM on that network: class means at the one exit (one forward pass over
      the small set, no gradient), thresholds tuned on the same images;
  (c) SDN and BranchyNet: one internal classifier at the same exit
      (``InternalClassifierEarlyExit(exit_at=[k])``), trained for one epoch
      (and SDN once more with the estimator's own ``batch_size`` and
      ``learning_rate``);
  (d) E²CM with whitened exits (``metric="mahalanobis"``; with 10 images per
      class the within-class covariance is singular and the OAS shrinkage
      makes it invertible: the amounts used are reported).

The exit is the stage whose cumulative FLOPs are closest to 20 % of the
network's (``split_into_stages``; the stages before it are grouped into one
for E²CM, as ``InternalClassifierEarlyExit`` groups them); every exit sees
the stage output max-pooled with a (8, 2, 2) kernel (channels, height, width:
the paper's reduction, 16x28x28 -> 2x14x14 = 392 values). The head's epoch is
plain SGD on single images (``--head-batch-size 1``, lr 0.03, momentum 0.9,
cosine), the internal classifiers' Adam on batches of 16 (lr 0.01): the best
settings of a grid scored on 1500 held-out training images of the new classes
(dev draws, never the test images), which favours the baselines: a user with
10 images per class has no such validation set. As a reference outside the
budget, the head is also fitted to convergence (logistic regression on the
frozen features it sees). Accuracy at a budget φ is
the expected test accuracy of the time-sharing mixture each estimator serves
at φ (from one forward pass over the test images, ``exit_table``); one routed
pass per method checks it. Mean ± std over ``--seeds`` draws of the small set.

``--quick``: 8x8 digits, a depth-8 ResNet trained on digits 0-4 (not cached),
new task digits 5-9, seconds; the test suite runs it. Results:
``benchmarks/results/finetune.{json,md,png}`` (``finetune_quick`` with
``--quick``). The full mode takes about 2 minutes on 2 CPU cores once the base
network is cached (2-7 minutes to train it, with the machine idle or shared);
``--tune`` (``finetune_tuning.{json,md}``) about 3 minutes.
"""

import argparse
import copy
import json
import re
import shlex
import sys
import time
import warnings
from collections import OrderedDict

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS, load_fashion, machine, plain_forward, pyplot, resnet_cache_path, trained_resnet,
    write,
)

PHIS = [0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
TABLE_PHIS = [0.25, 0.3, 0.4, 0.5, 0.7, 1.0]
POOLING = (8, 2, 2)
# one-epoch hyper-parameters, chosen on 1500 held-out training images of the new classes
# (subsets drawn with seeds 100-102, never the test images): see benchmarks/README.md
HEAD = {"batch_size": 1, "optimizer": "sgd", "lr": 0.03}
IC = {"batch_size": 16, "lr": 1e-2}
OLD, NEW = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
FASHION = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot"]


# ---------------------------------------------------------------------------- data, base network
def quick_setting():
    """8x8 digits, a depth-8 ResNet trained on digits 0-4 (seconds, not cached)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from sklearn_e2cm.models import resnet_small, train_classifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    old = np.isin(ytr, OLD)
    torch.manual_seed(0)
    net = resnet_small(depth=8, width=8, in_channels=1, n_classes=len(OLD), input_size=8)
    recipe = {"depth": 8, "width": 8, "epochs": 5, "seed": 0, "classes": list(OLD),
              "n_train": int(old.sum()), "optimizer": "sgd", "schedule": "onecycle",
              "data": "8x8 digits (scikit-learn), half of them for training"}
    t0 = time.perf_counter()
    train_classifier(net, Xtr[old], ytr[old], epochs=5, batch_size=32, schedule="onecycle",
                     random_state=0)
    recipe["train_seconds"] = time.perf_counter() - t0
    old_te = np.isin(yte, OLD)
    recipe["test_accuracy_old_classes"] = float(
        np.mean(plain_forward(net, Xte[old_te], 256)[1] == yte[old_te]))
    return net, recipe, (Xtr, ytr, Xte, yte), "depth-8 ResNet (width 8) on 8x8 digits 0-4"


def full_setting():
    """Fashion-MNIST; the ResNet-20 trained on classes 0-4 (cached with its recipe)."""
    Xtr, ytr, Xte, yte = load_fashion()
    old = np.isin(ytr, OLD)
    kw = dict(depth=20, width=16, epochs=3, seed=0)
    tag = "_classes0-4"
    meta_path = resnet_cache_path(int(old.sum()), tag=tag, **kw).with_suffix(".json")
    net, elapsed = trained_resnet(Xtr[old], ytr[old], n_classes=len(OLD), tag=tag, **kw)
    recipe = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if recipe is None or elapsed > 0:  # trained now (or cached before its recipe was kept)
        old_te = np.isin(yte, OLD)
        recipe = {**kw, "classes": list(OLD), "n_train": int(old.sum()), "batch_size": 128,
                  "optimizer": "sgd", "schedule": "onecycle", "data": "Fashion-MNIST",
                  "train_seconds": elapsed if elapsed > 0 else None,
                  "test_accuracy_old_classes": float(np.mean(
                      plain_forward(net, Xte[old_te], 512)[1] == yte[old_te])),
                  "weights": resnet_cache_path(int(old.sum()), tag=tag, **kw).name}
        meta_path.write_text(json.dumps(recipe, indent=2))
    return net, recipe, (Xtr, ytr, Xte, yte), (
        "resnet_small(depth=20, width=16), 3 epochs on Fashion-MNIST classes 0-4")


def subset_rows(y, n_per_class, seed):
    """Indices of ``n_per_class`` random rows of each new class (seeded)."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n_per_class,
                                              replace=False) for c in NEW]))


def new_task(data, n_per_class, seed):
    """``n_per_class`` random training images of each new class (labels 0..4) and the test set."""
    Xtr, ytr, Xte, yte = data
    rows = subset_rows(ytr, n_per_class, seed)
    te = np.isin(yte, NEW)
    return (Xtr[rows], ytr[rows] - NEW[0], Xte[te], yte[te] - NEW[0])


# ---------------------------------------------------------------------------- (a) the head
def _head_only(net):
    """``net`` whose ``train()`` sets only its ``fc`` training (the backbone stays in eval)."""
    from torch import nn

    class HeadOnly(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def train(self, mode=True):
            self.training = mode
            self.net.eval()
            self.net.fc.train(mode)
            return self

        def forward(self, x):
            return self.net(x)

    return HeadOnly(net)


def finetune_head(base, X, y, *, seed, batch_size, lr, optimizer="sgd"):
    """A copy of ``base`` with a new 5-class head trained one epoch (backbone frozen)."""
    import torch

    from sklearn_e2cm.models import train_classifier

    net = copy.deepcopy(base)
    for p in net.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    net.fc = torch.nn.Linear(net.fc.in_features, len(NEW))
    t0 = time.perf_counter()
    train_classifier(_head_only(net), X, y, epochs=1, batch_size=batch_size, lr=lr,
                     optimizer=optimizer, schedule="cosine", random_state=seed)
    return net.eval(), time.perf_counter() - t0


def penultimate(net, X, batch_size=512):
    """The frozen features the head of a ``ResNetSmall`` sees (global average pool)."""
    import torch

    out = []
    with torch.inference_mode():
        for s in range(0, len(X), batch_size):
            z = torch.from_numpy(X[s:s + batch_size])
            for m in (net.stem, net.layer1, net.layer2, net.layer3, net.avgpool):
                z = m(z)
            out.append(torch.flatten(z, 1).numpy())
    return np.concatenate(out)


def reference_head(net, X, y, Xte, yte):
    """Outside the budget: the head fitted to convergence (L-BFGS logistic regression)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
        penultimate(net, X), y)
    return {"fit_seconds": time.perf_counter() - t0,
            "test_accuracy": float(clf.score(penultimate(net, Xte), yte))}


# ---------------------------------------------------------------------------- the exit
def exit_stage(stages, X, target=0.2):
    """The stage whose cumulative FLOPs are closest to ``target`` (``exit_at``'s rule)."""
    from sklearn_e2cm.stages import TorchStages

    ad = TorchStages(stages, pooling=POOLING).fit(X[:1])
    cum = np.cumsum(ad.stage_flops_)
    k = int(np.argmin(np.abs(cum[:-1] / cum[-1] - target)))
    return k, {"stage": k, "stage_name": ad.stage_names_[k],
               "stage_flops_fraction": float(cum[k] / cum[-1]),
               "output_shape": list(ad.output_shapes_[k]),
               "pooled_shape": list(ad.pooled_shapes_[k]),
               "vector_dim": int(ad.vector_dims_[k])}


def two_stages(stages, k):
    """The network as two stages: everything up to the exit, then the rest (head included)."""
    from torch import nn

    mods = list(stages.children())
    return nn.Sequential(OrderedDict(to_exit=nn.Sequential(*mods[:k + 1]),
                                     rest=nn.Sequential(*mods[k + 1:])))


def methods(stages, k, *, seed, batch_size, ic_lr):
    """Name -> factory of every early-exit row, all with one exit after stage ``k``."""
    from sklearn_e2cm import EarlyExitClassMeans, InternalClassifierEarlyExit

    grouped = two_stages(stages, k)
    common = dict(pooling=POOLING, random_state=seed)

    def ic(method):
        return lambda: InternalClassifierEarlyExit(
            stages, method=method, exit_at=[k], epochs=1, batch_size=batch_size,
            learning_rate=ic_lr, **common)

    return {
        "E2CM": lambda: EarlyExitClassMeans(grouped, batch_size=256, **common),
        "E2CM (whitened)": lambda: EarlyExitClassMeans(grouped, metric="mahalanobis",
                                                       batch_size=256, **common),
        "SDN (1 epoch)": ic("sdn"),
        "BranchyNet (1 epoch)": ic("branchynet"),
        # the estimator's own defaults (batch 256, Adam 1e-3): one step per epoch here
        "SDN (1 epoch, defaults)": lambda: InternalClassifierEarlyExit(
            stages, method="sdn", exit_at=[k], epochs=1, **common),
    }


def serve(est, table, phi):
    """Expected (test FLOPs, test accuracy) of the mixture ``est`` serves at ``phi``."""
    est.set_operating_point(flops_target=phi)
    c, s = table.evaluate_many(est.mixture_thresholds_)
    w = np.asarray(est.mixture_weights_)
    return float(w @ c), float(w @ s)


def run_one(base, data, n_per_class, seed, args, log):
    """Every row of one draw of the small training set."""
    import torch

    from sklearn_e2cm.stages import split_into_stages

    X, y, Xte, yte = new_task(data, n_per_class, seed)
    net, head_s = finetune_head(base, X, y, seed=seed, batch_size=args.head_batch_size,
                                lr=args.head_lr, optimizer=args.head_optimizer)
    head_acc = float(np.mean(plain_forward(net, Xte, 512)[1] == yte))
    ref = reference_head(net, X, y, Xte, yte)
    log(f"  n={n_per_class} seed={seed}: head {head_s:.2f} s, test accuracy {head_acc:.3f} "
        f"(fitted to convergence: {ref['test_accuracy']:.3f})")
    stages = split_into_stages(net, example_input=torch.from_numpy(X[:2]))
    k, exit_info = exit_stage(stages, X)
    out = {"n_per_class": n_per_class, "seed": seed, "n_train": len(y),
           "head": {"train_seconds": head_s, "test_accuracy": head_acc},
           "reference_head": ref, "exit": exit_info,
           "methods": {}}
    for name, make in methods(stages, k, seed=seed, batch_size=args.ic_batch_size,
                              ic_lr=args.ic_lr).items():
        est = make()
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                est.set_params(flops_target=PHIS[0]).fit(X, y)
        except Exception as exc:  # reported, not hidden: the row says why it is missing
            out["methods"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"    {name}: FAILED {type(exc).__name__}: {exc}")
            continue
        fit_s = time.perf_counter() - t0
        table = est.exit_table(Xte, yte)
        curve = [serve(est, table, phi) for phi in PHIS]
        check_phi = 0.5
        r_flops, r_acc = serve(est, table, check_phi)
        routed = est.route(Xte)  # served at check_phi (the last set_operating_point)
        row = {"fit_seconds": fit_s, "test_flops": [c for c, _ in curve],
               "test_accuracy": [s for _, s in curve],
               "exit_cost": float(est.cumulative_cost_[0]),
               "exit_head_flops_fraction": float(est.exit_flops_[0] / est.stage_flops_.sum()),
               "exit_train_accuracy": float(est.exit_table(X, y).evaluate(
                   np.zeros(1))[1]),
               "routed_check": {"phi": check_phi, "expected_accuracy": r_acc,
                                "expected_flops": r_flops,
                                "routed_accuracy": float(np.mean(routed.y_pred == yte)),
                                "routed_flops": float(routed.flops.mean())},
               "warnings": sorted({str(w.message) for w in caught})}
        row["exit_test_accuracy"] = float(table.evaluate(np.zeros(1))[1])
        if hasattr(est, "shrinkage_"):
            row["shrinkage"] = [float(a) for a in est.shrinkage_[:1]]
        out["methods"][name] = row
        log(f"    {name}: fit {fit_s:.2f} s, exit alone {row['exit_test_accuracy']:.3f}, "
            f"φ=0.3 {curve[PHIS.index(0.3)][1]:.3f} ({curve[PHIS.index(0.3)][0]:.2f})")
    return out


# ---------------------------------------------------------------------------- --tune
HEAD_GRID = ([("sgd", lr, bs) for lr in (0.03, 0.1, 0.3) for bs in (1, 2, 5, 10, 25)]
             + [("adamw", lr, bs) for lr in (0.01, 0.1) for bs in (1, 5, 25)])
IC_GRID = [(lr, bs) for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1) for bs in (10, 16, 25, 50)] + [
    (1e-3, 256)]
DEV_SEEDS = (100, 101, 102)


def tune_hparams(base, data, sizes, log, n_val=1500):
    """Validation accuracy of every head and IC setting of the grids (dev draws, held-out rows).

    The small sets are drawn with ``DEV_SEEDS`` (not the benchmark's seeds);
    the validation rows are other training images of the new classes, never
    the test images. The ICs are scored alone at the exit (every row leaves
    there), on the network whose head has the chosen ``HEAD`` settings; the
    class-means exits are scored the same way for reference.
    """
    import torch

    from sklearn_e2cm import EarlyExitClassMeans, InternalClassifierEarlyExit
    from sklearn_e2cm.stages import split_into_stages

    Xtr, ytr = data[0], data[1]
    out = {}
    for n in sizes:
        for seed in DEV_SEEDS:
            rows = subset_rows(ytr, n, seed)
            rest = np.setdiff1d(np.flatnonzero(np.isin(ytr, NEW)), rows)
            val = np.sort(np.random.default_rng(seed + 1000).permutation(rest)[:n_val])
            X, y = Xtr[rows], ytr[rows] - NEW[0]
            Xv, yv = Xtr[val], ytr[val] - NEW[0]
            res = {}
            for opt, lr, bs in HEAD_GRID:
                net, _ = finetune_head(base, X, y, seed=seed, batch_size=bs, lr=lr,
                                       optimizer=opt)
                res[f"head {opt} lr={lr} batch={bs}"] = float(
                    np.mean(plain_forward(net, Xv, 512)[1] == yv))
            net, _ = finetune_head(base, X, y, seed=seed, **HEAD)
            stages = split_into_stages(net, example_input=torch.from_numpy(X[:2]))
            k, _ = exit_stage(stages, X)
            for lr, bs in IC_GRID:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est = InternalClassifierEarlyExit(
                        two_stages(stages, k), method="sdn", exit_at=[0], epochs=1,
                        batch_size=bs, learning_rate=lr, pooling=POOLING,
                        random_state=seed).fit(X, y)
                res[f"IC Adam lr={lr} batch={bs}"] = float(
                    np.mean(next(est.staged_predict(Xv)) == yv))
            for metric in ("euclidean", "mahalanobis"):
                est = EarlyExitClassMeans(two_stages(stages, k), pooling=POOLING,
                                          metric=metric).fit(X, y)
                res[f"E2CM exit ({metric})"] = float(np.mean(next(est.staged_predict(Xv)) == yv))
            out[f"{n} {seed}"] = res
            log(f"  tuning n={n} seed={seed}: {len(Xv)} validation rows done")
    md = ["# Fine tuning: the one-epoch settings of the head and the internal classifiers", "",
          f"Validation accuracy (mean over dev draws {list(DEV_SEEDS)} of the small set) on "
          f"up to {n_val} other training images of the new classes; the test images are never "
          "used. ICs scored alone at the exit. Chosen: head "
          f"{HEAD}, IC {IC}.", ""]
    summary_ = {}
    for n in sizes:
        keys = list(out[f"{n} {DEV_SEEDS[0]}"])
        mean = {k: float(np.mean([out[f"{n} {s}"][k] for s in DEV_SEEDS])) for k in keys}
        summary_[n] = mean
        md += [f"## {n} images per class", "", "| setting | validation accuracy |", "|---|---|"]
        md += [f"| {k} | {v:.3f} |" for k, v in sorted(mean.items(), key=lambda kv: -kv[1])]
        md.append("")
    return {"per_draw": out, "mean": summary_}, md


# ---------------------------------------------------------------------------- report
def _ms(values, fmt="{:.3f}"):
    v = np.asarray(values, float)
    return (fmt + " ± " + fmt).format(v.mean(), v.std()) if len(v) > 1 else fmt.format(v[0])


def summary(runs, names):
    """Per (n per class, method): mean and std over seeds of every curve point."""
    out = {}
    for n in sorted({r["n_per_class"] for r in runs}):
        rs = [r for r in runs if r["n_per_class"] == n]
        per = {"(a) fine-tuned head": {
            "accuracy_mean": [None] * (len(PHIS) - 1) + [
                float(np.mean([r["head"]["test_accuracy"] for r in rs]))],
            "accuracy_std": [None] * (len(PHIS) - 1) + [
                float(np.std([r["head"]["test_accuracy"] for r in rs]))],
            "flops_mean": [None] * (len(PHIS) - 1) + [1.0],
            "seconds": [r["head"]["train_seconds"] for r in rs]},
            "(ref.) head fitted to convergence, outside the budget": {
            "accuracy_mean": [None] * (len(PHIS) - 1) + [
                float(np.mean([r["reference_head"]["test_accuracy"] for r in rs]))],
            "accuracy_std": [None] * (len(PHIS) - 1) + [
                float(np.std([r["reference_head"]["test_accuracy"] for r in rs]))],
            "flops_mean": [None] * (len(PHIS) - 1) + [1.0],
            "seconds": [r["reference_head"]["fit_seconds"] for r in rs]}}
        for name in names:
            ok = [r["methods"][name] for r in rs if "error" not in r["methods"].get(name, {
                "error": "missing"})]
            if not ok:
                continue
            acc = np.array([m["test_accuracy"] for m in ok])
            fl = np.array([m["test_flops"] for m in ok])
            per[name] = {"accuracy_mean": acc.mean(0).tolist(),
                         "accuracy_std": acc.std(0).tolist(), "flops_mean": fl.mean(0).tolist(),
                         "seconds": [m["fit_seconds"] for m in ok],
                         "exit_test_accuracy": [m["exit_test_accuracy"] for m in ok],
                         "n_failed": len(rs) - len(ok)}
        out[n] = per
    return out


def markdown(payload, summ, names):
    ex = payload["runs"][0]["exit"]
    r0 = payload["runs"][0]["methods"]
    e2 = r0.get("E2CM", {})
    md = ["# Fine tuning under a one-epoch budget (paper Fig. 3)", "",
          f"Command: `{payload['command']}`  ",
          f"Base network: {payload['network']} (test accuracy on those classes "
          f"{payload['base']['test_accuracy_old_classes']:.4f}). New task: classes "
          f"{payload['new_classes']}, {', '.join(str(n) for n in payload['n_per_class'])} "
          f"training images per class (seeds {payload['seeds']}), tested on "
          f"{payload['n_test']} test images of those classes.  ",
          f"One exit after stage {ex['stage']} (`{ex['stage_name']}`, output "
          f"{'x'.join(map(str, ex['output_shape']))}), at {ex['stage_flops_fraction']:.4f} of "
          f"the network's FLOPs; its class-means head (max pooling {POOLING} to "
          f"{'x'.join(map(str, ex['pooled_shape']))} = {ex['vector_dim']} values, distances) "
          f"costs {e2.get('exit_head_flops_fraction', float('nan')):.4f} more, so leaving "
          f"there costs {e2.get('exit_cost', float('nan')):.4f}.  ",
          f"Budget: one epoch over the small set (head: batches of "
          f"{payload['head']['batch_size']}, {payload['head']['optimizer']} lr "
          f"{payload['head']['lr']}, cosine; internal classifiers: batches of "
          f"{payload['ic']['batch_size']}, Adam lr {payload['ic']['lr']}); "
          "E²CM: one forward pass (class means) and the threshold "
          "search. Thresholds tuned on the small training set. Cells: test accuracy, "
          "mean ± std over the seeds (mean test FLOPs); 'exit alone': every test image "
          "leaves at the exit. Row (a) is the fine-tuned network; every method serves it at "
          "φ = 1 (a budget above the top of a method's training hull is spent on the full "
          "network, by time sharing). 'SDN (1 epoch, defaults)': the estimator's own "
          "batch_size=256 and learning_rate=1e-3 (one Adam step). Time: wall seconds of each "
          "method's own training (the head's epoch comes first for every row).", ""]
    cols = [PHIS.index(p) for p in TABLE_PHIS]
    for n, per in summ.items():
        md += [f"## {n} images per class", "",
               "| method | train (s) | exit alone | " + " | ".join(
                   f"φ = {PHIS[c]}" for c in cols) + " |",
               "|---|---|---|" + "---|" * len(cols)]
        for name, s in per.items():
            cells = []
            for c in cols:
                if s["accuracy_mean"][c] is None:
                    cells.append("—")
                else:
                    cells.append(f"{s['accuracy_mean'][c]:.3f} ± {s['accuracy_std'][c]:.3f} "
                                 f"({s['flops_mean'][c]:.2f})")
            exit_alone = _ms(s["exit_test_accuracy"]) if "exit_test_accuracy" in s else "—"
            md.append(f"| {name} | {_ms(s['seconds'], '{:.2f}')} | {exit_alone} | "
                      + " | ".join(cells) + " |")
        md.append("")
    fails = {(r["n_per_class"], r["seed"], m): v["error"] for r in payload["runs"]
             for m, v in r["methods"].items() if "error" in v}
    if fails:
        md += ["Failed fits: " + "; ".join(f"{m} (n={n}, seed {s}): {e}"
                                          for (n, s, m), e in fails.items()), ""]
    shr = {r["n_per_class"]: [] for r in payload["runs"]}
    for r in payload["runs"]:
        w = r["methods"].get("E2CM (whitened)", {})
        if "shrinkage" in w:
            shr[r["n_per_class"]] += w["shrinkage"]
    if any(shr.values()):
        md += ["Whitened exit: OAS shrinkage of the within-class covariance "
               f"({ex['vector_dim']} x {ex['vector_dim']}, from "
               + ", ".join(f"{5 * n} images" for n in shr) + "): "
               + "; ".join(f"{n}/class {min(v):.3f}–{max(v):.3f}" for n, v in shr.items() if v)
               + ".", ""]
    checks = [abs(m["routed_check"]["routed_accuracy"] - m["routed_check"]["expected_accuracy"])
              for r in payload["runs"] for m in r["methods"].values() if "routed_check" in m]
    if checks:
        md += [f"Routed check at φ = 0.5: routed test accuracy within {max(checks):.4f} of the "
               "expected accuracy of the served mixture (time sharing draws per image).", ""]
    warns = {}
    for r in payload["runs"]:
        for mname, m in r["methods"].items():
            for w in m.get("warnings", []):
                key = re.sub(r"\d+\.\d+|\[[^]]*\]", "…", w)
                warns.setdefault(key, set()).add(f"{mname}, n={r['n_per_class']}")
    if warns:
        md += ["Warnings raised while fitting (numbers elided):", ""]
        md += [f"* {w} ({'; '.join(sorted(where))})" for w, where in warns.items()]
        md.append("")
    return md


def plot(summ, name, title):
    """Mean test accuracy against mean test FLOPs, ± std over the seeds, one panel per size."""
    plt = pyplot()
    if plt is None:
        return []
    fig, axes = plt.subplots(1, len(summ), figsize=(5.2 * len(summ) + 1, 5.0), squeeze=False)
    for ax, (n, per) in zip(axes[0], summ.items()):
        for mname, s in per.items():
            if mname.startswith("(a)"):
                ax.errorbar([1.0], [s["accuracy_mean"][-1]], yerr=[s["accuracy_std"][-1]],
                            marker="*", markersize=13, color="black", linestyle="none",
                            label="fine-tuned head (φ = 1)", zorder=5)
                continue
            if mname.startswith("(ref.)"):
                ax.errorbar([1.0], [s["accuracy_mean"][-1]], yerr=[s["accuracy_std"][-1]],
                            marker="x", markersize=9, color="grey", linestyle="none",
                            label="head fitted to convergence (outside the budget)", zorder=5)
                continue
            x, m, sd = (np.asarray(s[k], float) for k in ("flops_mean", "accuracy_mean",
                                                            "accuracy_std"))
            style = "s--" if mname.startswith("BranchyNet") else "o-"  # on SDN's curve
            (ln,) = ax.plot(x, m, style, markersize=3.5, label=mname)
            ax.fill_between(x, m - sd, m + sd, color=ln.get_color(), alpha=0.1)
        ax.set_title(f"{n} images per class")
        ax.set_xlabel("test FLOPs (base model = 1)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title + "\n(mean ± std over the draws of the small training set)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    plt.close(fig)
    return ["", f"![accuracy against FLOPs]({name}.png)"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8x8 digits, a tiny ResNet (seconds)")
    p.add_argument("--n-per-class", type=int, nargs="+", default=None,
                   help="training images per new class (default: 10 50; quick: 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="draws of the small training set (default: 0 1 2; quick: 0 1)")
    p.add_argument("--head-batch-size", type=int, default=HEAD["batch_size"],
                   help="minibatch of the new head's epoch")
    p.add_argument("--head-optimizer", choices=("sgd", "adamw"), default=HEAD["optimizer"])
    p.add_argument("--head-lr", type=float, default=HEAD["lr"],
                   help="(peak) rate of the new head, cosine schedule")
    p.add_argument("--ic-batch-size", type=int, default=IC["batch_size"],
                   help="minibatch of the internal classifiers' epoch")
    p.add_argument("--ic-lr", type=float, default=IC["lr"], help="Adam rate of the ICs")
    p.add_argument("--tune", action="store_true",
                   help="score the grids of head and IC settings on held-out training images "
                        "of the new classes (finetune_tuning.{json,md}) instead")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default=None, help="results file name (no extension)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1 if args.quick else args.threads)
    log = (lambda m: print(m, flush=True))
    t_all = time.perf_counter()
    if args.quick:
        base, recipe, data, network = quick_setting()
    else:
        base, recipe, data, network = full_setting()
    log(f"base network: {network}; test accuracy on classes {OLD}: "
        f"{recipe['test_accuracy_old_classes']:.4f}")
    sizes = args.n_per_class or ([10] if args.quick else [10, 50])
    if args.tune:
        result, md = tune_hparams(base, data, sizes, log)
        name = args.name or ("finetune_tuning_quick" if args.quick else "finetune_tuning")
        write(name, {"command": shlex.join(["python"] + sys.argv), "machine": machine(),
                     "network": network, "head_grid": HEAD_GRID, "ic_grid": IC_GRID,
                     "dev_seeds": DEV_SEEDS, "chosen": {"head": HEAD, "ic": IC},
                     "total_seconds": time.perf_counter() - t_all, **result}, "\n".join(md) + "\n")
        return
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    runs = [run_one(base, data, n, s, args, log) for n in sizes for s in seeds]
    names = list(runs[0]["methods"])
    summ = summary(runs, names)
    name = args.name or ("finetune_quick" if args.quick else "finetune")
    payload = {"command": shlex.join(["python"] + sys.argv), "machine": machine(),
               "network": network, "base": recipe, "new_classes": list(NEW),
               "class_names": None if args.quick else [FASHION[c] for c in NEW],
               "n_per_class": sizes, "seeds": seeds, "n_test": int(np.isin(data[3], NEW).sum()),
               "head": {"batch_size": args.head_batch_size, "optimizer": args.head_optimizer,
                        "lr": args.head_lr},
               "ic": {"batch_size": args.ic_batch_size, "lr": args.ic_lr},
               "pooling": list(POOLING), "phis": PHIS, "runs": runs,
               "summary": {str(n): v for n, v in summ.items()},
               "total_seconds": time.perf_counter() - t_all}
    md = markdown(payload, summ, names)
    md += plot(summ, name, f"Fine tuning on new classes, one-epoch budget: {network}")
    write(name, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
