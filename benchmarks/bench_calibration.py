"""Tuning rows: the training data (``calibration=None``) or held out (``calibration=0.2``, ``0.1``).

``EarlyExitClassMeans`` tunes its thresholds (and the eq. 4 distance scales) on
the training rows by default, as the paper does. When the network (or the
chain) fits those rows, its early exits look as accurate there as the full
model, and thresholds tuned on them may send too many new samples out early:
the served FLOPs fall below the budget and the accuracy with them. A held-out
``calibration`` fraction tunes on rows the exits were not fitted on (and makes
the fit one pass). This benchmark measures both on models that do and do not
fit their training rows:

* ``resnet20``: the benchmarks' cached ResNet-20 (width 16, 3 epochs on all
  60k Fashion-MNIST training images; ``_common.trained_resnet``); exits fitted
  on the first ``--n-resnet`` (10k) of those training images to keep the run
  affordable; tested on the 10k test images.
* ``light_cnn``: the light 6-block CNN of ``bench_gpu.py`` trained on the first
  2,000 Fashion-MNIST training images for ``--cnn-epochs`` (40) epochs, long
  enough to fit them (training accuracy ~1.0, reported); cached with its
  recipe; exits fitted on those 2,000 images.
* ``digits``: scikit-learn chains on ``load_digits`` (70/30 stratified splits,
  ``--splits`` (2) of them, averaged): ``StandardScaler, PCA(32), Nystroem(1000),
  LogisticRegression(C=100)``, which fits its training rows, with its steps
  fitted by the estimator (the held-out rows are then unseen by the chain too)
  and pre-fitted on all the training rows (as a network is: the held-out rows
  were seen by the chain); and the same chain with ``C=0.01``, which does not
  fit its training rows.

Every model is fitted with Euclidean exits (the paper's; no pooling) and
whitened exits (``metric="mahalanobis"``, ``pooling="avg4"`` on the CNNs; on
the light CNN also on finely pooled outputs, ``FINE_POOLING``: thousands of
features per exit for 2,000 rows, so that the exits themselves fit their rows,
the regime where the issue saw a first exit at 0.99-1.00 training accuracy),
once per ``calibration`` setting (at the first target), and served at each φ
(0.15 / 0.3 / 0.5) with ``set_operating_point``. For each: the served test
FLOPs (mean of ``route(X_test).flops``), ``|test FLOPs - φ|``, the test
accuracy, the test accuracy the same exits reach at test FLOPs = φ
(interpolated between the tuning hull's vertices evaluated on the test rows:
what the setting would give if its budget were met exactly), the first exit's
accuracy on the tuning rows and on the test rows against the full model's,
whether the fit warned that the tuning rows look easy, and the fit wall time.

Run: ``nice -n 10 python benchmarks/bench_calibration.py`` (about 25 minutes on
2 shared CPU cores, plus 4 minutes to train the light CNN once; needs the Debian package
``dataset-fashion-mnist``); ``--quick``: digits only, in seconds (the test
suite runs it). Results: ``benchmarks/results/calibration.{json,md,png}``
(``calibration_quick`` with ``--quick``).
"""

import argparse
import json
import shlex
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CACHE, RESULTS, load_fashion, machine, plain_forward, pyplot, write,
)

TARGETS = [0.15, 0.3, 0.5]
CALIBRATIONS = [None, 0.2, 0.1]
EASY_WARNING = "to tune them on held-out rows"  # the fit's warning (tuning rows look easy)


#: whitened exits on finely pooled outputs of the light CNN (14x14 on its first two stages, 7x7,
#: then 4x4): thousands of features per exit for 2,000 rows, so the exits themselves fit the rows
FINE_POOLING = ["avg14", "avg14", "avg7", "avg7", "avg4", None]


def _label(cal):
    return "None (training rows)" if cal is None else f"{cal:g} held out"


def _pooling_name(pooling):
    if isinstance(pooling, list):
        return "per stage " + "/".join(str(p) for p in pooling)
    return str(pooling)


def _exits(r):
    """Name of a row's exits: the metric and its pooling."""
    return r["metric"] + (f", {_pooling_name(r['pooling'])}" if r["pooling"] else "")


# ------------------------------------------------------------------------------- models
def chain(C, n_components, max_iter):
    """The digits chain: unfitted steps (``C`` large: it fits its training rows)."""
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    return [StandardScaler(), PCA(32, random_state=0),
            Nystroem(n_components=n_components, random_state=0),
            LogisticRegression(C=C, max_iter=max_iter)]


def prefitted(steps, X, y):
    """The chain's steps fitted in sequence on ``X, y`` (a model trained before the exits)."""
    from sklearn.pipeline import make_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence at a large C
        pipe = make_pipeline(*steps).fit(X, y)
    return [step for _, step in pipe.steps]


def trained_light_cnn_with_recipe(Xtr, ytr, Xte, yte, epochs, seed=0):
    """The light CNN of ``bench_gpu.py`` trained on ``Xtr`` (cached), with its recipe.

    The recipe (and the accuracies, measured now) is kept next to the weights
    as JSON: ``<cache>/light_cnn_e{epochs}_s{seed}_n{rows}.json``.
    """
    import torch

    from bench_gpu import trained_light_cnn

    torch.manual_seed(seed)
    path = CACHE / f"light_cnn_e{epochs}_s{seed}_n{len(ytr)}.json"
    t0 = time.perf_counter()
    had_weights = path.with_suffix(".pt").exists()
    net = trained_light_cnn(Xtr, ytr, epochs=epochs, seed=seed)
    elapsed = time.perf_counter() - t0
    old = json.loads(path.read_text()) if path.exists() else {}
    recipe = {
        "network": "bench_gpu.light_cnn(seed): 5 conv-BN-ReLU blocks (16, 16, 32, 32, 64 "
                   "channels) and an average-pool + linear head",
        "data": f"Fashion-MNIST, the first {len(ytr)} training images (normalised)",
        "epochs": epochs, "seed": seed, "batch_size": 128, "optimizer": "sgd (lr 0.1, "
        "momentum 0.9, weight decay 5e-4)", "schedule": "onecycle",
        "train_seconds": old.get("train_seconds") if had_weights else elapsed,
        "train_accuracy": float(np.mean(plain_forward(net, Xtr, 512)[1] == ytr)),
        "test_accuracy": float(np.mean(plain_forward(net, Xte, 512)[1] == yte)),
        "weights": path.with_suffix(".pt").name,
    }
    path.write_text(json.dumps(recipe, indent=2))
    return net, recipe


# ----------------------------------------------------------------------------- measures
def _interp_at(phi, flops, acc):
    """Accuracy at cost ``phi`` on the piecewise-linear curve through (flops, acc) (NaN outside)."""
    order = np.argsort(flops, kind="stable")
    f, a = np.asarray(flops)[order], np.asarray(acc)[order]
    if phi < f[0] - 1e-9 or phi > f[-1] + 1e-9:
        return float("nan")
    return float(np.interp(phi, f, a))


def measure(make, Xfit, yfit, Xte, yte, targets):
    """Fit once at ``targets[0]``, serve every target, measure on the test rows."""
    from sklearn_e2cm._exit_estimator import tuning_table_of

    est = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        est.set_params(flops_target=targets[0]).fit(Xfit, yfit)
        fit_s = time.perf_counter() - t0
    messages = sorted({str(w.message) for w in caught
                       if not issubclass(w.category, (DeprecationWarning,))})
    easy = [m for m in messages if EASY_WARNING in m]
    tuning = tuning_table_of(est)
    tune_acc = tuning.correct.mean(axis=0)
    test_table = est.exit_table(Xte, yte)
    test_acc = test_table.correct.mean(axis=0)
    hull = est.tradeoff_[est.tradeoff_["on_hull"]]
    hull_T = np.stack(list(hull["thresholds"]))
    hull_test_flops, hull_test_acc = test_table.evaluate_many(hull_T)
    served = []
    for phi in targets:
        with warnings.catch_warnings(record=True) as caught_phi:
            warnings.simplefilter("always")
            est.set_operating_point(flops_target=phi)
        r = est.route(Xte)
        test_flops = float(r.flops.mean())
        served.append({
            "flops_target": phi,
            "tuning_flops": float(est.expected_flops_),
            "tuning_accuracy": float(est.expected_accuracy_),
            "test_flops": test_flops,
            "abs_flops_error": abs(test_flops - phi),
            "test_accuracy": float(np.mean(r.y_pred == yte)),
            "test_accuracy_at_phi": _interp_at(phi, hull_test_flops, hull_test_acc),
            "exit_counts": r.exit_counts(est.n_stages_).tolist(),
            "warnings": sorted({str(w.message) for w in caught_phi}),
        })
    return {
        "n_fit_rows": len(yfit), "n_tuning_rows": int(tuning.n_samples),
        "fit_s": fit_s, "easy_warning": bool(easy), "fit_warnings": messages,
        "cumulative_cost": est.cumulative_cost_.tolist(),
        "tuning_stage_accuracy": tune_acc.tolist(), "test_stage_accuracy": test_acc.tolist(),
        "served": served,
    }


def run_setting(name, description, models, data, metrics, calibrations, targets, log):
    """Every (model, metric, calibration) of one setting; ``data`` is a list of splits."""
    from sklearn_e2cm import EarlyExitClassMeans

    rows = []
    for model_name, (stages_of, common) in models.items():
        for metric, pooling in metrics:
            for cal in calibrations:
                runs = []
                for split, (Xfit, yfit, Xte, yte) in enumerate(data):
                    stages = stages_of(split)

                    def make(stages=stages):
                        return EarlyExitClassMeans(stages, metric=metric, pooling=pooling,
                                                   calibration=cal, random_state=0, **common)

                    runs.append(measure(make, Xfit, yfit, Xte, yte, targets))
                row = {"setting": name, "description": description, "model": model_name,
                       "metric": metric, "pooling": pooling, "calibration": cal, "runs": runs}
                row.update(average(runs))
                rows.append(row)
                log(f"{name} / {model_name} / {_exits(row)} / calibration={cal}: fit "
                    f"{row['fit_s']:.1f} s, test FLOPs "
                    + ", ".join(f"{s['test_flops']:.3f}" for s in row["served"])
                    + ", test acc " + ", ".join(f"{s['test_accuracy']:.4f}" for s in row["served"])
                    + (", warned" if row["easy_warning"] else ""))
    return rows


def average(runs):
    """Means over the splits of the figures the tables show."""
    mean = lambda key: float(np.mean([r[key] for r in runs]))  # noqa: E731
    stage = lambda key: np.mean([r[key] for r in runs], axis=0).tolist()  # noqa: E731
    served = []
    for i, s in enumerate(runs[0]["served"]):
        served.append({k: (float(np.mean([r["served"][i][k] for r in runs]))
                           if isinstance(s[k], float) else s[k])
                       for k in s if k not in ("exit_counts", "warnings")})
    return {"fit_s": mean("fit_s"), "n_fit_rows": runs[0]["n_fit_rows"],
            "n_tuning_rows": runs[0]["n_tuning_rows"],
            "easy_warning_runs": int(sum(r["easy_warning"] for r in runs)),
            "easy_warning": any(r["easy_warning"] for r in runs),
            "cumulative_cost": stage("cumulative_cost"),
            "tuning_stage_accuracy": stage("tuning_stage_accuracy"),
            "test_stage_accuracy": stage("test_stage_accuracy"), "served": served}


# ------------------------------------------------------------------------------ settings
def digits_setting(n_splits, quick, calibrations, metrics, log):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    data = [train_test_split(X, y, test_size=0.3, random_state=s, stratify=y)
            for s in range(n_splits)]
    data = [(Xtr, ytr, Xte, yte) for Xtr, Xte, ytr, yte in data]
    n_comp, max_iter = (300, 300) if quick else (1000, 1000)
    over = lambda split: chain(100.0, n_comp, max_iter)  # noqa: E731
    models = {"C=100 (fits its rows), steps fitted by E2CM": (over, {}),
              "C=0.01 (does not), steps fitted by E2CM":
                  (lambda split: chain(0.01, n_comp, max_iter), {})}
    if not quick:
        fitted = [prefitted(chain(100.0, n_comp, max_iter), Xtr, ytr) for Xtr, ytr, _, _ in data]
        models["C=100, pre-fitted on all training rows"] = (lambda split: fitted[split], {})
    desc = (f"StandardScaler, PCA(32), Nystroem({n_comp}), LogisticRegression(C) on load_digits; "
            f"{len(data)} stratified 70/30 split(s) ({len(data[0][1])} training rows, "
            f"{len(data[0][3])} test rows), figures averaged over the splits")
    return run_setting("digits", desc, models, data, metrics, calibrations, TARGETS, log)


def network_settings(args, calibrations, log):
    import torch

    from sklearn_e2cm.stages import split_into_stages
    from _common import trained_resnet

    rows, extra = [], {}
    Xtr, ytr, Xte, yte = load_fashion()
    whitened = [("euclidean", None), ("mahalanobis", "avg4")]
    example = torch.zeros((1,) + tuple(Xtr.shape[1:]))
    common = {"batch_size": 512}

    if "light_cnn" in args.networks:
        n = args.n_cnn
        net, recipe = trained_light_cnn_with_recipe(Xtr[:n], ytr[:n], Xte, yte, args.cnn_epochs)
        extra["light_cnn"] = recipe
        log(f"light CNN: train accuracy {recipe['train_accuracy']:.4f}, "
            f"test {recipe['test_accuracy']:.4f}")
        stages = split_into_stages(net, example_input=example)
        desc = (f"light 6-block CNN (bench_gpu.py) trained {args.cnn_epochs} epochs on the first "
                f"{n} Fashion-MNIST training images (train accuracy "
                f"{recipe['train_accuracy']:.4f}, test {recipe['test_accuracy']:.4f}); exits "
                f"fitted on those {n} images, tested on the {len(yte)} test images")
        rows += run_setting("light_cnn", desc, {"light CNN": (lambda s: stages, common)},
                            [(Xtr[:n], ytr[:n], Xte, yte)],
                            whitened + [("mahalanobis", FINE_POOLING)], calibrations, TARGETS, log)

    if "resnet20" in args.networks:
        net, _ = trained_resnet(Xtr, ytr, epochs=3)
        n = args.n_resnet
        acc_fit = float(np.mean(plain_forward(net, Xtr[:n], 512)[1] == ytr[:n]))
        acc_te = float(np.mean(plain_forward(net, Xte, 512)[1] == yte))
        extra["resnet20"] = {"train_accuracy_fit_rows": acc_fit, "test_accuracy": acc_te}
        stages = split_into_stages(net, example_input=example)
        desc = (f"ResNet-20 (width 16) trained 3 epochs on the 60k Fashion-MNIST training images "
                f"(accuracy {acc_fit:.4f} on the {n} fit rows, {acc_te:.4f} on the test images); "
                f"exits fitted on the first {n} training images (to keep the run affordable), "
                f"tested on the {len(yte)} test images")
        rows += run_setting("resnet20", desc, {"ResNet-20": (lambda s: stages, common)},
                            [(Xtr[:n], ytr[:n], Xte, yte)], whitened, calibrations, TARGETS, log)
    return rows, extra


# ------------------------------------------------------------------------------- report
def summary(rows, calibrations):
    """Per calibration: mean / max |test FLOPs - φ| and accuracy differences against None."""
    base = {(r["setting"], r["model"], _exits(r)): r for r in rows if r["calibration"] is None}
    out = []
    for cal in calibrations:
        rs = [r for r in rows if r["calibration"] == cal]
        err = [s["abs_flops_error"] for r in rs for s in r["served"]]
        d_acc, d_at = [], []
        for r in rs:
            b = base.get((r["setting"], r["model"], _exits(r)))
            if b is None:
                continue
            for s, sb in zip(r["served"], b["served"]):
                d_acc.append(s["test_accuracy"] - sb["test_accuracy"])
                d_at.append(s["test_accuracy_at_phi"] - sb["test_accuracy_at_phi"])
        out.append({"calibration": cal, "mean_abs_flops_error": float(np.mean(err)),
                    "max_abs_flops_error": float(np.max(err)),
                    "mean_test_accuracy_minus_none": float(np.mean(d_acc)),
                    "mean_accuracy_at_phi_minus_none": float(np.nanmean(d_at)),
                    "min_test_accuracy_minus_none": float(np.min(d_acc)),
                    "max_test_accuracy_minus_none": float(np.max(d_acc)),
                    "warned": sum(r["easy_warning"] for r in rs), "fits": len(rs)})
    return out


def markdown(payload, targets):
    rows = payload["rows"]
    md = ["# Tuning rows: the training data (calibration=None) or held-out (calibration=0.2 / 0.1)",
          "", f"Command: `{payload['command']}`  ",
          "Each model fitted once per setting at φ = "
          f"{targets[0]} and served at every φ with `set_operating_point`. Cells: **test FLOPs** "
          "(the mean of `route(X_test).flops`) / test accuracy / [test accuracy of the same exits "
          "at test FLOPs = φ, interpolated between the tuning hull's vertices on the test rows]. "
          "exit 0: the first exit's accuracy on the tuning rows → on the test rows; full: the same "
          "for the full model. warned: the fit's warning that the tuning rows make an early exit "
          "look as accurate as the full model (raised only with calibration=None).", ""]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for setting in settings:
        rs = [r for r in rows if r["setting"] == setting]
        md += [f"## {setting}", "", rs[0]["description"] + ".", ""]
        md.append("| model | exits | calibration | fit (s) | warned | exit 0: tune → test | "
                  "full: tune → test | " + " | ".join(f"φ = {t}" for t in targets)
                  + " | mean abs(FLOPs − φ) |")
        md.append("|---|---|---|---|---|---|---|" + "---|" * len(targets) + "---|")
        for r in rs:
            exits = _exits(r)
            warned = (("yes" if r["easy_warning"] else "no") if len(r["runs"]) == 1
                      else f"{r['easy_warning_runs']}/{len(r['runs'])}")
            ta, te = r["tuning_stage_accuracy"], r["test_stage_accuracy"]
            cells = [f"**{s['test_flops']:.3f}** / {s['test_accuracy']:.4f} / "
                     f"[{s['test_accuracy_at_phi']:.4f}]" for s in r["served"]]
            err = np.mean([s["abs_flops_error"] for s in r["served"]])
            md.append(f"| {r['model']} | {exits} | {_label(r['calibration'])} | {r['fit_s']:.1f} | "
                      f"{warned} | {ta[0]:.3f} → {te[0]:.3f} | {ta[-1]:.3f} → {te[-1]:.3f} | "
                      + " | ".join(cells) + f" | {err:.3f} |")
        md.append("")
    md += ["## Summary over every model, exit kind and φ", "",
           "| calibration | mean abs(test FLOPs − φ) | max "
           "| test accuracy − None's: mean (min, max) "
           "| accuracy at test FLOPs = φ − None's: mean | warned fits |",
           "|---|---|---|---|---|---|"]
    for s in payload["summary"]:
        md.append(f"| {_label(s['calibration'])} | {s['mean_abs_flops_error']:.3f} | "
                  f"{s['max_abs_flops_error']:.3f} | {s['mean_test_accuracy_minus_none']:+.4f} "
                  f"({s['min_test_accuracy_minus_none']:+.4f}, "
                  f"{s['max_test_accuracy_minus_none']:+.4f}) | "
                  f"{s['mean_accuracy_at_phi_minus_none']:+.4f} | {s['warned']}/{s['fits']} |")
    md.append("")
    return md


def plot(rows, targets, name):
    """Test FLOPs against φ, one panel per (setting, model, exits), one line per calibration."""
    plt = pyplot()
    if plt is None:
        return []
    panels = list(dict.fromkeys((r["setting"], r["model"], _exits(r)) for r in rows))
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 3.0 * nrow), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        ax.plot([0, 0.6], [0, 0.6], color="0.6", lw=0.8, ls="--")
        for r in rows:
            if (r["setting"], r["model"], _exits(r)) == key:
                ax.plot(targets, [s["test_flops"] for s in r["served"]], "o-", ms=3,
                        label=f"calibration={r['calibration']}")
        ax.set_title(textwrap.fill(f"{key[0]}: {key[1]}", 42) + f"\n{key[2][:44]}", fontsize=6.5)
        ax.set_xlim(0, 0.6), ax.set_ylim(0, 0.6)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("φ (flops_target)", fontsize=8)
    fig.supylabel("test FLOPs served", fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    plt.close(fig)
    return ["", f"![test FLOPs against the target]({name}.png)", ""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits only, one split (seconds)")
    p.add_argument("--networks", nargs="*", default=["light_cnn", "resnet20"],
                   choices=["light_cnn", "resnet20"])
    p.add_argument("--n-resnet", type=int, default=10000,
                   help="training images the ResNet-20's exits are fitted on")
    p.add_argument("--n-cnn", type=int, default=2000, help="training images of the light CNN")
    p.add_argument("--cnn-epochs", type=int, default=40)
    p.add_argument("--splits", type=int, default=2, help="digits train/test splits")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1 if args.quick else args.threads)
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    if args.quick:
        calibrations, metrics = [None, 0.2], [("euclidean", None)]
        rows = digits_setting(1, True, calibrations, metrics, log)
        extra = {}
    else:
        calibrations = CALIBRATIONS
        rows, extra = network_settings(args, calibrations, log)
        rows += digits_setting(args.splits, False, calibrations,
                               [("euclidean", None), ("mahalanobis", None)], log)
    name = "calibration" + ("_quick" if args.quick else "")
    payload = {"command": shlex.join(["python"] + sys.argv), "machine": machine(),
               "targets": TARGETS, "calibrations": calibrations, "networks": extra,
               "total_seconds": time.perf_counter() - t0, "rows": rows}
    payload["summary"] = summary(rows, calibrations)
    md = markdown(payload, TARGETS) + plot(rows, TARGETS, name)
    md.append(f"Total wall time {payload['total_seconds'] / 60:.1f} min "
              f"({payload['machine']['threads']} threads, shared 2-core CPU).")
    write(name, payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
