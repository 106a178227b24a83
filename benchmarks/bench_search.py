"""FlopBudgetSearchCV and the threshold optimisers.

Three measurements (results in benchmarks/results/search.json and search.md):

1. Sweep speed: 1000 FLOP targets on a synthetic exit table of 60k samples x 11
   stages (beta-distributed exit probabilities), for both search methods.
2. Optimisers on the same cached arrays, held out: for each data set a staged
   model is trained, E²CM class means are fitted on the tuning data, both
   searches sweep 1000 targets on the tuning data's exit table (as the paper
   tunes on the training data) and the served operating points -- the tuning
   hull's vertices and the time-sharing mixtures between them -- are evaluated
   on held-out data. Reported: held-out accuracy of the point served for a
   target (same nominal target), and the best held-out accuracy within a
   held-out cost (budget curve), coordinate minus bisection (bisection averaged
   over 3 random seeds).
3. FlopBudgetSearchCV (1000 targets, cv=3) against GridSearchCV (20 values of
   flops_target, cv=3) on the same estimator and data: wall time, and the
   accuracy at phi = 0.25 (cross-validated and on the test set).

Run: python benchmarks/bench_search.py  (about 4-5 minutes on 2 CPU cores)
"""

import sys
import time
import warnings
from pathlib import Path

import joblib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, write  # noqa: E402

from sklearn.datasets import load_digits, make_classification  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.kernel_approximation import Nystroem  # noqa: E402
from sklearn.linear_model import LogisticRegression, RidgeClassifier  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_e2cm import EarlyExitClassMeans, FlopBudgetSearchCV  # noqa: E402
from sklearn_e2cm._thresholds import ExitTable, sweep, time_sharing, upper_hull  # noqa: E402
from sklearn_e2cm._exit_estimator import tuning_table_of  # noqa: E402
from sklearn_e2cm.search import DEFAULT_METHOD  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=RuntimeWarning)
TARGETS = np.linspace(0, 1, 1001)[1:]
PHIS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


# --------------------------------------------------------------------------- 1. speed
def synthetic_table(N=60000, M=11, seed=0):
    rng = np.random.default_rng(seed)
    a = np.linspace(1.0, 6.0, M)
    conf = rng.beta(a[None, :], 2.0, size=(N, M))
    correct = rng.random((N, M)) < (0.3 + 0.65 * conf)
    sf = np.full(M, 1.0)
    ef = np.full(M, 0.02)
    ef[-1] = 0
    return ExitTable(conf, correct, sf, ef, last_head=False)


def bench_speed():
    table = synthetic_table()
    out = {}
    for method in ("bisect", "coordinate"):
        times = []
        for rep in range(3):
            t0 = time.perf_counter()
            sweep(table, TARGETS, method=method, random_state=rep)
            times.append(time.perf_counter() - t0)
        out[method] = {"best_s": min(times), "all_s": times}
        print(f"sweep 1000 targets, 60k x 11, {method}: best {min(times):.2f} s {times}")
    return out


# ---------------------------------------------------------------------- 2. optimisers
def served(tune, test, method, seed):
    """Tuning hull of a 1000-target sweep, and its vertices evaluated held out."""
    T, c, s = sweep(tune, TARGETS, method=method, random_state=seed)
    M1 = tune.n_stages - 1
    ext = np.vstack([np.zeros(M1), np.ones(M1)])
    ce, se = tune.evaluate_many(ext)
    T, c, s = np.vstack([T, ext]), np.append(c, ce), np.append(s, se)
    h = upper_hull(c, s)
    hc, hs = test.evaluate_many(T[h])
    return c[h], s[h], hc, hs


def at_targets(tune_c, test_c, test_s, phis):
    """Held-out (cost, score) of the mixture served for each target."""
    out = []
    for phi in phis:
        v, w = time_sharing(tune_c, phi)
        out.append((float(w @ test_c[v]), float(w @ test_s[v])))
    return np.array(out)


def budget_curve(hc, hs, budgets):
    """Best held-out score among served points (vertices and mixtures of neighbours)
    whose held-out cost is within each budget."""
    lam = np.linspace(0, 1, 51)
    pc = np.concatenate([hc[:-1, None] * (1 - lam) + hc[1:, None] * lam]).ravel() if len(
        hc) > 1 else hc
    ps = np.concatenate([hs[:-1, None] * (1 - lam) + hs[1:, None] * lam]).ravel() if len(
        hs) > 1 else hs
    out = np.full(len(budgets), np.nan)
    for i, b in enumerate(budgets):
        ok = pc <= b
        if ok.any():
            out[i] = ps[ok].max()
    return out


def compare_on(name, tune, test, n_seeds=3):
    budgets = np.round(np.arange(0.05, 1.0001, 0.01), 2)
    t0 = time.perf_counter()
    co = served(tune, test, "coordinate", 0)
    t_co = time.perf_counter() - t0
    bi, t_bi = [], []
    for seed in range(n_seeds):
        t0 = time.perf_counter()
        bi.append(served(tune, test, "bisect", seed))
        t_bi.append(time.perf_counter() - t0)
    reach = max(co[0][0], max(b[0][0] for b in bi))
    phis = [p for p in PHIS if p >= reach]
    co_t = at_targets(co[0], co[2], co[3], TARGETS)
    bi_t = np.mean([at_targets(b[0], b[2], b[3], TARGETS) for b in bi], axis=0)
    co_b = budget_curve(co[2], co[3], budgets)
    bi_b = np.nanmean([budget_curve(b[2], b[3], budgets) for b in bi], axis=0)
    tune_grid = TARGETS[TARGETS >= reach]
    co_tune = np.interp(tune_grid, co[0], co[1])
    bi_tune = np.mean([np.interp(tune_grid, b[0], b[1]) for b in bi], axis=0)
    valid = TARGETS >= reach
    d_target = co_t[valid, 1] - bi_t[valid, 1]
    d_budget = co_b - bi_b
    res = {
        "n_tune": tune.n_samples, "n_test": test.n_samples, "n_stages": tune.n_stages,
        "time_coordinate_s": t_co, "time_bisect_s": float(np.mean(t_bi)),
        "hull_vertices": {"coordinate": len(co[0]), "bisect": [len(b[0]) for b in bi]},
        "tuning_diff": {"min": float(np.min(co_tune - bi_tune)),
                        "mean": float(np.mean(co_tune - bi_tune)),
                        "max": float(np.max(co_tune - bi_tune))},
        "heldout_diff_same_target": {"min": float(d_target.min()),
                                     "mean": float(d_target.mean()),
                                     "max": float(d_target.max())},
        "heldout_diff_budget": {"min": float(np.nanmin(d_budget)),
                                "mean": float(np.nanmean(d_budget)),
                                "max": float(np.nanmax(d_budget))},
        "per_phi": {},
        "base_test_accuracy": float(test.evaluate(np.ones(test.n_stages - 1))[1]),
    }
    for phi in phis:
        i = int(np.argmin(np.abs(TARGETS - phi)))
        k = int(np.argmin(np.abs(budgets - phi)))
        res["per_phi"][str(phi)] = {
            "coordinate_served": {"flops": float(co_t[i, 0]), "acc": float(co_t[i, 1])},
            "bisect_served": {"flops": float(bi_t[i, 0]), "acc": float(bi_t[i, 1])},
            "coordinate_budget_acc": float(co_b[k]), "bisect_budget_acc": float(bi_b[k]),
        }
    res["_curves"] = {"valid": valid, "d_target": co_t[:, 1] - bi_t[:, 1], "d_budget": d_budget}
    print(f"{name}: tune {tune.n_samples} test {test.n_samples} M={tune.n_stages} | "
          f"coord-bisect held-out (same target) min {d_target.min():+.4f} "
          f"mean {d_target.mean():+.4f} | budget min {np.nanmin(d_budget):+.4f} "
          f"mean {np.nanmean(d_budget):+.4f} | tuning mean {res['tuning_diff']['mean']:+.4f}")
    return res


def average_runs(runs):
    """Mean over splits of the difference curves (small test sets are noisy)."""
    valid = np.logical_and.reduce([r["_curves"]["valid"] for r in runs])
    dt = np.array([r["_curves"]["d_target"] for r in runs])[:, valid]
    db = np.array([r["_curves"]["d_budget"] for r in runs])
    mt, st = dt.mean(0), dt.std(0, ddof=1) / np.sqrt(len(runs))
    mb = np.nanmean(db, axis=0)
    i = int(np.argmin(mt))
    out = dict(runs[0])
    out["n_splits"] = len(runs)
    for key in ("time_coordinate_s", "time_bisect_s", "base_test_accuracy"):
        out[key] = float(np.mean([r[key] for r in runs]))
    out["tuning_diff"] = {k: float(np.mean([r["tuning_diff"][k] for r in runs]))
                          for k in ("min", "mean", "max")}
    out["heldout_diff_same_target"] = {"min": float(mt.min()), "mean": float(mt.mean()),
                                       "max": float(mt.max()),
                                       "standard_error_at_min": float(st[i])}
    out["heldout_diff_budget"] = {"min": float(np.nanmin(mb)), "mean": float(np.nanmean(mb)),
                                  "max": float(np.nanmax(mb))}
    out["per_phi"] = {}
    for p in runs[0]["per_phi"]:
        if all(p in r["per_phi"] for r in runs):
            out["per_phi"][p] = {
                k: ({kk: float(np.mean([r["per_phi"][p][k][kk] for r in runs]))
                     for kk in ("flops", "acc")} if isinstance(runs[0]["per_phi"][p][k], dict)
                    else float(np.mean([r["per_phi"][p][k] for r in runs])))
                for k in runs[0]["per_phi"][p]}
    out["per_split_mean_diff"] = [r["heldout_diff_same_target"]["mean"] for r in runs]
    print(f"digits, mean over {len(runs)} splits: same-target min {mt.min():+.4f} "
          f"(standard error {st[i]:.4f}) mean {mt.mean():+.4f}")
    return out


def chain_digits():
    return make_pipeline(StandardScaler(), PCA(32, random_state=0), PCA(12, random_state=0),
                         Nystroem(n_components=300, random_state=0),
                         LogisticRegression(max_iter=300))


def chain_mc():
    return make_pipeline(StandardScaler(), PCA(24, random_state=0),
                         PCA(10, whiten=True, random_state=0),
                         Nystroem(n_components=400, gamma=0.05, random_state=0),
                         RidgeClassifier())


def chain_fashion():
    return make_pipeline(StandardScaler(), PCA(64, random_state=0),
                         PCA(24, whiten=True, random_state=0),
                         Nystroem(n_components=500, gamma=0.02, random_state=0),
                         LogisticRegression(max_iter=300))


def tables(net, X_tune, y_tune, X_test, y_test):
    est = EarlyExitClassMeans(stages=FrozenEstimator(net), random_state=0).fit(X_tune, y_tune)
    return tuning_table_of(est), est.exit_table(X_test, y_test)


def fashion_data(n_base=20000, n_search=15000):
    from sklearn_e2cm.datasets import load_fashion_mnist

    tr = load_fashion_mnist(flatten=True)
    te = load_fashion_mnist(flatten=True, subset="test")
    X, y = tr.data.astype(np.float64), tr.target
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"fashion_chain_n{n_base}.joblib"
    t_base = 0.0
    if path.exists():
        net = joblib.load(path)
    else:
        t0 = time.perf_counter()
        net = chain_fashion().fit(X[:n_base], y[:n_base])
        t_base = time.perf_counter() - t0
        joblib.dump(net, path)
    B = slice(n_base, n_base + n_search)
    return net, X[B], y[B], te.data.astype(np.float64), te.target, t_base


def bench_optimisers(fashion):
    out = {}
    X, y = load_digits(return_X_y=True)
    runs = []
    for seed in range(5):
        Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
        net = chain_digits().fit(Xa, ya)
        runs.append(compare_on(f"digits split {seed}", *tables(net, Xa, ya, Xb, yb)))
    out["digits (5 splits)"] = average_runs(runs)
    X, y = make_classification(24000, 40, n_informative=15, n_redundant=10, n_classes=6,
                               n_clusters_per_class=2, class_sep=1.5, random_state=0)
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=1 / 3, random_state=0, stratify=y)
    net = chain_mc().fit(Xa, ya)
    out["make_classification"] = compare_on("make_classification", *tables(net, Xa, ya, Xb, yb))
    net, Xs, ys, Xt, yt, _ = fashion
    out["fashion_mnist"] = compare_on("fashion-mnist", *tables(net, Xs, ys, Xt, yt))
    out["synthetic_60k_11"] = compare_on("synthetic 60k x 11", synthetic_table(seed=0),
                                         synthetic_table(seed=1), n_seeds=2)
    for r in out.values():
        r.pop("_curves", None)
    return out


# ------------------------------------------------------------------ 3. search vs grid
def bench_search(fashion):
    net, X, y, Xt, yt, t_base = fashion
    est = EarlyExitClassMeans(stages=FrozenEstimator(net), random_state=0)
    grid = np.round(np.linspace(0.05, 1.0, 20), 4)

    def acc_and_flops(e, X_, y_):  # one routed pass gives both held-out measures
        r = e.route(X_)
        return {"accuracy": float(np.mean(r.y_pred == y_)), "flops": float(r.flops.mean())}

    def refit_at_025(res):
        # the same rule as FlopBudgetSearchCV(max_flops=0.25): best cross-validated accuracy
        # among the candidates whose mean held-out cost is within 0.25
        ok = np.asarray(res["mean_test_flops"]) <= 0.25 + 1e-12
        idx = np.flatnonzero(ok)
        return int(idx[np.argmax(res["mean_test_accuracy"][idx])])

    def nominal_025(res):  # best cross-validated accuracy with nominal flops_target <= 0.25
        ok = np.asarray(res["param_flops_target"], dtype=float) <= 0.25 + 1e-9
        idx = np.flatnonzero(ok)
        return int(idx[np.argmax(res["mean_test_accuracy"][idx])])

    t0, c0 = time.perf_counter(), time.process_time()
    gs = GridSearchCV(est, {"flops_target": list(grid)}, cv=3, scoring=acc_and_flops,
                      refit=refit_at_025, n_jobs=1).fit(X, y)
    t_gs, cpu_gs = time.perf_counter() - t0, time.process_time() - c0
    g_best = gs.best_estimator_
    g_route = g_best.route(Xt)
    print(f"GridSearchCV 20 targets x 3 folds: {t_gs:.1f} s")

    res = {}
    variants = {"bisect": ("bisect", "auto"), "coordinate": ("coordinate", "auto"),
                "bisect, one pass per fold": ("bisect", False)}
    for key, (method, share) in variants.items():
        walls, cpus, fits = [], [], []
        for _ in range(3):  # the machine is shared: keep the best of three runs
            t0, c0 = time.perf_counter(), time.process_time()
            fits.append(FlopBudgetSearchCV(est, flops_targets=1000, cv=3, max_flops=0.25,
                                           method=method, n_jobs=1, random_state=0,
                                           share_stage_outputs=share).fit(X, y))
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        t_s, cpu_s = min(walls), min(cpus)
        s = fits[int(np.argmin(walls))]
        r = s.best_estimator_.route(Xt)
        i25 = int(np.argmin(np.abs(s.cv_results_["param_flops_target"] - 0.25)))
        # the rows at GridSearchCV's 20 targets: the same fits, seeds and routing
        tg = np.asarray(s.cv_results_["param_flops_target"], dtype=float)
        at = [int(np.argmin(np.abs(tg - t))) for t in grid]
        gap_acc = s.cv_results_["mean_test_score"][at] - gs.cv_results_["mean_test_accuracy"]
        gap_flops = s.cv_results_["mean_test_flops"][at] - gs.cv_results_["mean_test_flops"]
        res[key] = {
            "method": method, "shared_forward_pass": bool(s.shared_stage_outputs_),
            "shared_pass_s": getattr(s, "shared_pass_time_", None),
            "wall_s": t_s, "wall_runs_s": walls, "cpu_s": cpu_s,
            "speedup_vs_grid": t_gs / t_s, "cpu_speedup_vs_grid": cpu_gs / cpu_s,
            "mean_fit_time_per_fold_s": float(s.cv_results_["mean_fit_time"][0]),
            "mean_score_time_per_fold_s": float(s.cv_results_["mean_score_time"][0]),
            "refit_s": s.refit_time_,
            "selected_target": s.best_params_["flops_target"],
            "cv_acc_within_025": s.best_score_, "cv_flops": s.best_flops_,
            "cv_acc_target_025": float(s.cv_results_["mean_test_score"][i25]),
            "cv_flops_target_025": float(s.cv_results_["mean_test_flops"][i25]),
            "max_abs_gap_to_grid_rows": {"accuracy": float(np.abs(gap_acc).max()),
                                         "flops": float(np.abs(gap_flops).max())},
            "test_acc": float(np.mean(r.y_pred == yt)), "test_flops": float(r.flops.mean()),
        }
        print(f"FlopBudgetSearchCV({key}) 1000 targets x 3 folds: {t_s:.1f} s "
              f"({t_gs / t_s:.1f}x faster; CPU time {cpu_gs / cpu_s:.1f}x); test acc "
              f"{res[key]['test_acc']:.4f} at {res[key]['test_flops']:.3f} FLOPs")
    gi = gs.best_index_
    gn = nominal_025(gs.cv_results_)
    g_nom = clone(est).set_params(flops_target=float(gs.cv_results_["param_flops_target"][gn]))
    g_nom_route = g_nom.fit(X, y).route(Xt)
    res["grid"] = {
        "wall_s": t_gs, "cpu_s": cpu_gs,
        "mean_fit_time_s": float(gs.cv_results_["mean_fit_time"].mean()),
        "mean_score_time_s": float(gs.cv_results_["mean_score_time"].mean()),
        "refit_s": float(gs.refit_time_),
        "selected_target": float(gs.best_params_["flops_target"]),
        "cv_acc_target_025": float(gs.cv_results_["mean_test_accuracy"][gi]),
        "cv_flops": float(gs.cv_results_["mean_test_flops"][gi]),
        "test_acc": float(np.mean(g_route.y_pred == yt)), "test_flops": float(g_route.flops.mean()),
        "nominal_rule": {
            "selected_target": float(gs.cv_results_["param_flops_target"][gn]),
            "cv_acc": float(gs.cv_results_["mean_test_accuracy"][gn]),
            "cv_flops": float(gs.cv_results_["mean_test_flops"][gn]),
            "test_acc": float(np.mean(g_nom_route.y_pred == yt)),
            "test_flops": float(g_nom_route.flops.mean()),
        },
    }
    print(f"GridSearchCV best (flops_target {gs.best_params_['flops_target']}): CV acc "
          f"{res['grid']['cv_acc_target_025']:.4f}; test acc {res['grid']['test_acc']:.4f} at "
          f"{res['grid']['test_flops']:.3f} FLOPs")
    res["data"] = {"n_search": len(y), "n_test": len(yt), "base_fit_s": t_base,
                   "base_test_acc": float(net.score(Xt, yt))}
    return res


# ------------------------------------------------------------------------- report
def report(speed, opt, srch):
    L = ["# FlopBudgetSearchCV and threshold optimisers", "",
         "Command: `python benchmarks/bench_search.py` (about 3 minutes; 2 CPU cores shared "
         "with other jobs, so wall-clock timings vary from run to run).", ""]
    L += ["## 1. Sweep of 1000 FLOP targets, 60k samples x 11 stages (synthetic table)", "",
          "| method | best of 3 (s) |", "|---|---|"]
    for m, v in speed.items():
        L.append(f"| {m} | {v['best_s']:.2f} |")
    L += ["", "Target: <= 2 s. Before this work the bisection sweep took 2.46 s on the same "
          "table and machine (2.9 s in the lead's measurement); the gain comes from cached "
          "per-code lookup tables, a running cost instead of a histogram of codes, coarse-bin "
          "membership from a sorted index, 16-bit comparisons and reading cost and score from "
          "the search's final state instead of re-evaluating.", ""]
    L += ["## 2. Coordinate ascent vs the paper's bisection, held out", "",
          "Both sweep 1000 targets on the tuning data's exit table (the paper tunes on the "
          "training data); the tuning hull's vertices and the time-sharing mixtures between "
          "them are evaluated on held-out data. Differences are coordinate minus bisection "
          "(bisection averaged over 3 random seeds), in accuracy (1.0 = 100 points). "
          "'Same target': held-out accuracy of the operating point served for each of the "
          "1000 targets. 'Within budget': best held-out accuracy among served points whose "
          "held-out cost is within the budget (budgets 0.05 ... 1.00).", "",
          "| data | N tune / test | stages | tuning hull, mean | held-out, same target: min / "
          "mean / max | held-out, within budget: min / mean / max | sweep time coord / "
          "bisect (s) |",
          "|---|---|---|---|---|---|---|"]
    for name, r in opt.items():
        a, b = r["heldout_diff_same_target"], r["heldout_diff_budget"]
        L.append(
            f"| {name} | {r['n_tune']} / {r['n_test']} | {r['n_stages']} | "
            f"{r['tuning_diff']['mean']:+.4f} | {a['min']:+.4f} / {a['mean']:+.4f} / "
            f"{a['max']:+.4f} | {b['min']:+.4f} / {b['mean']:+.4f} / {b['max']:+.4f} | "
            f"{r['time_coordinate_s']:.2f} / {r['time_bisect_s']:.2f} |")
    L += ["", "Held-out accuracy of the operating point served for phi (coordinate / bisection):",
          "", "| data | " + " | ".join(f"phi={p}" for p in PHIS) + " |",
          "|---|" + "---|" * len(PHIS)]
    for name, r in opt.items():
        cells = []
        for p in PHIS:
            v = r["per_phi"].get(str(p))
            cells.append("-" if v is None else
                         f"{v['coordinate_served']['acc']:.4f} / {v['bisect_served']['acc']:.4f}")
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    dig = opt.get("digits (5 splits)")
    if dig is not None:
        L += ["", f"Digits tunes on 1257 samples and tests on 540 (one sample = 0.0019): its "
              f"row is the mean over {dig['n_splits']} splits; the standard error of the mean "
              f"difference at its worst target is "
              f"{dig['heldout_diff_same_target']['standard_error_at_min']:.4f}. Per-split mean "
              f"differences: " + ", ".join(f"{v:+.4f}" for v in dig["per_split_mean_diff"])
              + "."]
    means = ", ".join(f"{n} {r['heldout_diff_same_target']['mean']:+.4f}" for n, r in opt.items())
    worsts = ", ".join(f"{n} {r['heldout_diff_same_target']['min']:+.4f}" for n, r in opt.items())
    L += ["", f"The package default is `method='{DEFAULT_METHOD}'` (the estimators' "
          "`threshold_search='hull'`), chosen on the ResNet-20 tables of "
          "`benchmarks/results/sweep.md`: higher held-out accuracy at almost every budget there, "
          "and a sweep whose cost does not depend on how the exit probabilities are "
          f"distributed. On the tables above coordinate ascent is better on average ({means}); "
          f"its worst gaps at a single target are ({worsts}). The paper's bisection is "
          "`method='bisect'` (`threshold_search='bisect-hull'`)."]
    g = srch["grid"]
    d = srch[DEFAULT_METHOD]
    u = srch["bisect, one pass per fold"]
    L += ["", "## 3. FlopBudgetSearchCV (1000 targets, cv=3) vs GridSearchCV (20 targets, cv=3)",
          "", f"Fashion-MNIST: a StandardScaler-PCA-PCA-Nystroem-LogisticRegression chain "
          f"trained on 20k images and frozen (`FrozenEstimator`: clones keep it trained), E²CM "
          f"searched on {srch['data']['n_search']} other training images, tested on the "
          f"{srch['data']['n_test']} test images (base model test accuracy "
          f"{srch['data']['base_test_acc']:.4f}). Same estimator "
          "(`EarlyExitClassMeans(stages=FrozenEstimator(net), random_state=0)`), n_jobs=1 for "
          "both. Both select by the same rule, the best cross-validated accuracy among the "
          "candidates whose mean held-out cost is at most 0.25 (GridSearchCV measures accuracy "
          "and cost of each candidate with one routed pass per held-out fold, "
          "`scoring=callable` returning both). FlopBudgetSearchCV runs are the best of three.",
          "",
          "Wall time depends on the other jobs sharing the 2 cores; CPU time (this process, "
          "all its threads) is the steadier measure of the work done.", "",
          "| search | wall (s) | speed-up (wall) | CPU (s) | speed-up (CPU) | selected target "
          "| CV acc | CV FLOPs (held out) | test acc | test FLOPs |",
          "|---|---|---|---|---|---|---|---|---|---|",
          f"| GridSearchCV (20 x 3 fits + refit) | {g['wall_s']:.1f} | 1.0x | {g['cpu_s']:.1f} | "
          f"1.0x | "
          f"{g['selected_target']} | {g['cv_acc_target_025']:.4f} | {g['cv_flops']:.3f} | "
          f"{g['test_acc']:.4f} | {g['test_flops']:.3f} |"]
    for m, s in srch.items():
        if m in ("grid", "data"):
            continue
        shared = "one shared forward pass" if s["shared_forward_pass"] else "one pass per fold"
        L.append(f"| FlopBudgetSearchCV method={s['method']} ({shared}) | {s['wall_s']:.1f} | "
                 f"{s['speedup_vs_grid']:.1f}x | {s['cpu_s']:.1f} | "
                 f"{s['cpu_speedup_vs_grid']:.1f}x | {s['selected_target']:.3f} | "
                 f"{s['cv_acc_within_025']:.4f} | {s['cv_flops']:.3f} | {s['test_acc']:.4f} | "
                 f"{s['test_flops']:.3f} |")
    acc_gain = d["test_acc"] - g["test_acc"]
    met = min(d["cpu_speedup_vs_grid"], d["speedup_vs_grid"]) >= 20
    L += ["", f"Issue targets, default settings (method='{DEFAULT_METHOD}'): >= 20x faster -- "
          f"{d['cpu_speedup_vs_grid']:.1f}x in CPU time, {d['speedup_vs_grid']:.1f}x in wall "
          f"time ({'met' if met else 'not met'}); never less accurate -- test accuracy "
          f"{acc_gain:+.4f} against GridSearchCV's choice ({d['test_flops']:.3f} vs "
          f"{g['test_flops']:.3f} test FLOPs), cross-validated "
          f"{d['cv_acc_within_025'] - g['cv_acc_target_025']:+.4f}."]
    gn = g["nominal_rule"]
    if gn["selected_target"] != g["selected_target"]:
        L += ["", f"Had GridSearchCV selected by the *nominal* target instead (flops_target <= "
              f"0.25, ignoring its held-out cost), it would pick {gn['selected_target']}: CV "
              f"accuracy {gn['cv_acc']:.4f} at a held-out cost of {gn['cv_flops']:.3f}, test "
              f"accuracy {gn['test_acc']:.4f} at {gn['test_flops']:.3f} FLOPs."]
    else:
        L += ["", f"GridSearchCV's candidate {g['selected_target']} met the budget held out "
              f"({g['cv_flops']:.3f}), so selecting by its nominal target gives the same "
              "choice."]
    gap = d["max_abs_gap_to_grid_rows"]
    L += ["", "Why FlopBudgetSearchCV cannot be less accurate in cross-validation: each of its "
          "folds builds the hull exactly as the estimator's own fit does (its 1000-target grid, "
          "and a bisection start that is a hash of the estimator's seed and the target, so a "
          "target's point does not depend on the other targets), and routes the held-out rows "
          "as the fitted estimator does (time sharing by a hash of each row). Its rows at "
          "GridSearchCV's 20 targets are therefore GridSearchCV's own numbers -- measured "
          f"here: largest difference {gap['accuracy']:.1e} in accuracy and {gap['flops']:.1e} "
          "in FLOPs over the 20 targets -- and selecting from 1000 targets that include those "
          "20 can only give an equal or higher cross-validated accuracy within the budget. "
          "The test accuracy of the two refits can still differ either way by the noise of "
          "choosing a different target on 15k images."]
    per_cand = g["mean_fit_time_s"] + g["mean_score_time_s"]
    L += ["", f"FlopBudgetSearchCV's row for the nominal target 0.25 (the candidate "
          f"GridSearchCV scores): CV acc {d['cv_acc_target_025']:.4f} at a held-out cost of "
          f"{d['cv_flops_target_025']:.3f}.", "",
          f"Where the time goes. GridSearchCV: {per_cand:.2f} s per candidate and fold (fit "
          f"{g['mean_fit_time_s']:.2f} s = both passes of the stages + its own 1000-target "
          f"sweep, score {g['mean_score_time_s']:.2f} s = a routed pass), 60 of them, plus a "
          f"{g['refit_s']:.2f} s refit. FlopBudgetSearchCV with frozen stages runs the stages "
          f"once on all the data ({d['shared_pass_s']:.2f} s); each fold then fits its class "
          f"means and sweeps 1000 targets from those cached vectors (fit + sweep "
          f"{d['mean_fit_time_per_fold_s']:.2f} s, held-out exit table "
          f"{d['mean_score_time_per_fold_s']:.2f} s), and the refit reads them too "
          f"({d['refit_s']:.2f} s). With one forward pass per fold instead "
          f"(`share_stage_outputs=False`, the only option when fit trains the stages) it takes "
          f"{u['wall_s']:.1f} s ({u['speedup_vs_grid']:.1f}x).", ""]
    return "\n".join(L) + "\n"


def main():
    t0 = time.perf_counter()
    speed = bench_speed()
    fashion = fashion_data()
    opt = bench_optimisers(fashion)
    srch = bench_search(fashion)
    md = report(speed, opt, srch)
    payload = {"sweep_speed": speed, "optimisers": opt, "search_vs_grid": srch,
               "total_s": time.perf_counter() - t0}
    write("search", payload, md)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
