"""Exits that match the full network sooner, with no gradient training (issue 16, item 4).

Measures, on the benchmarks' ResNet-20 (width 16, 3 epochs, Fashion-MNIST),
the held-out accuracy at φ = 0.15 / 0.2 / 0.25 / 0.3 / 0.5 of

* the paper's exits (Euclidean, eq. 4 scales, no pooling),
* whitened exits (``metric="mahalanobis"``, OAS shrinkage) on ``avg4`` pooling
  (the configuration of the other benchmarks), on ``avg7`` pooling, and on
  ``avg14`` for the first four stages (28x28 outputs) with ``avg7`` after,
* and, on the whitened exits' per-stage probabilities, exit-score variants
  that accumulate evidence across the stages a row has passed (no refit):

  - ``cumulative γ``: the exit logits at stage j are
    ``S_j = γ S_{j-1} + log p_j`` (γ = 1: the running sum of per-stage
    log-posteriors, i.e. the product of the posteriors; γ < 1 forgets old
    stages); the row's class and confidence are the argmax and the largest
    softmax of ``S_j``; the last stage keeps the network's own output;
  - ``agree``: the stage's own class and confidence, but a row may only leave
    at stage j >= 1 when its class equals the class of stage j - 1.

Held-out accuracy at a budget is measured as in ``bench_sweep.py``: the
coordinate-ascent hull (``threshold_search="hull"``, the package default) is
tuned on the training rows' exit table (the paper's protocol), its vertices
are evaluated on the test rows' table and φ is served by time sharing between
the two vertices around it on the tuning hull. FLOPs: stages and exit heads
(pooling + scores + softmax + decision) as the package counts them
(``exit_flops_``); the accumulating variants need every head before the exit
(its evidence is used later), so their cost counts every head a row passes
(``ExitTable.full_cost``), whatever the thresholds; the accumulation itself
(K adds and K multiplies per stage, plus a log-softmax of K values) is not
added, it is below 1e-6 of the network here.

Run: ``python benchmarks/bench_evidence.py`` (about 15 minutes on 2 CPU cores:
four fits on 60k images and one staged pass each over the 70k images;
``--quick``: scikit-learn stages on ``load_digits``, seconds; ``--render``:
rewrite the markdown from the saved JSON). Results in
``benchmarks/results/evidence.{json,md}``; each configuration's staged
probabilities are kept in the benchmarks' cache folder
(``evidence_<configuration>.npz``) to study other exit scores offline.

``--heads`` runs the study of the first four stages' heads alone (pooling
grid, covariance shrinkage, one covariance per class), written to
``benchmarks/results/evidence_heads.{json,md}`` (a few minutes).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from _common import machine, write  # noqa: E402

from sklearn_e2cm._thresholds import ExitTable, sweep_with_extremes, time_sharing, upper_hull  # noqa: E402,E501

PHIS = [0.15, 0.2, 0.25, 0.3, 0.5]
TARGETS = np.linspace(0, 1, 1001)[1:]
#: one-epoch SDN on the same network, quoted from results/internal.md (routed test accuracy)
SDN_INTERNAL = [0.863, 0.888, 0.904, 0.913, 0.920]


def _log(P):
    return np.log(np.clip(P, 1e-300, None))


def scores(P, variant):
    """Per-stage logits of a variant from per-stage probabilities ``P`` (M, N, K)."""
    M = P.shape[0]
    L = _log(P)
    if variant in ("stage", "agree"):
        return L
    gamma = float(variant.split()[1])
    S = np.empty_like(L)
    acc = np.zeros_like(L[0])
    for j in range(M - 1):  # loop over stages
        acc = gamma * acc + L[j]
        S[j] = acc
    S[-1] = L[-1]  # the network's own output decides at the end
    return S


def table_arrays(P, y, variant):
    """(conf, correct) of shape (N, M) of a variant."""
    S = scores(P, variant)
    M, N, _ = S.shape
    conf = np.empty((N, M))
    correct = np.empty((N, M), bool)
    pred = S.argmax(2)
    for j in range(M):
        z = S[j] - S[j].max(1, keepdims=True)
        p = np.exp(z)
        conf[:, j] = 1.0 / p.sum(1)  # largest softmax value
        correct[:, j] = pred[j] == y
    if variant == "agree":
        conf[:, 1:M - 1] *= pred[1:M - 1].T == pred[:M - 2].T
    return conf, correct


def _exit_stages(conf, t):
    M1 = conf.shape[1] - 1
    ex = conf[:, :M1] > t[None, :]
    return np.where(ex.any(1), ex.argmax(1), M1)


def held_out(tune, test, every_head, test_arrays):
    """Held-out accuracy at PHIS: hull tuned on ``tune``, evaluated on ``test``.

    Returns the accuracies and, per φ, every test row's expected correctness
    under the served mixture (for paired comparisons), from ``test_arrays`` =
    (conf, correct) of the test table.
    """
    _, T, c, s = sweep_with_extremes(tune, TARGETS, method="coordinate", random_state=0)
    if every_head:  # every head before the exit is paid for
        conf = tune.conf_cols.T
        w = tune.weights
        costs = []
        for t in T:  # loop over threshold vectors
            v = tune.full_cost[_exit_stages(conf, t)]
            costs.append(v.mean() if w is None else w @ v)
        c = np.asarray(costs)
    hull = upper_hull(c, s)
    _, test_score = test.evaluate_many(T[hull])
    conf_te, cor_te = test_arrays
    n = np.arange(conf_te.shape[0])
    out, per_row = [], []
    for phi in PHIS:
        verts, wts = time_sharing(c[hull], phi)
        out.append(float(wts @ test_score[verts]))
        per_row.append(sum(wv * cor_te[n, _exit_stages(conf_te, T[hull][v])]
                           for v, wv in zip(verts, wts)))
    per_row = np.asarray(per_row, dtype=np.float64)
    assert np.allclose(per_row.mean(1), out, atol=1e-9)
    return out, per_row


def fit_config(stages, kw, Xtr, ytr, Xte, yte, need_train_proba):
    from sklearn_e2cm import EarlyExitClassMeans
    from sklearn_e2cm._exit_estimator import tuning_table_of

    est = EarlyExitClassMeans(stages=stages, flops_target=None, **kw)
    t0 = time.perf_counter()
    est.fit(Xtr, ytr)
    fit_s = time.perf_counter() - t0
    Pte = np.stack(list(est.staged_predict_proba(Xte)))
    Ptr = np.stack(list(est.staged_predict_proba(Xtr))) if need_train_proba else None
    return est, tuning_table_of(est), Ptr, Pte, fit_s


def run(stages, configs, Xtr, ytr, Xte, yte, variants, log=print, done=None, save=None):
    """Rows of every (configuration, variant); ``done(rows)`` after each configuration;
    ``save(name, arrays)`` receives each configuration's staged probabilities."""
    rows = []
    for name, kw, evidence in configs:
        t0 = time.perf_counter()
        est, tune0, Ptr, Pte, fit_s = fit_config(stages, kw, Xtr, ytr, Xte, yte, evidence)
        if save is not None:
            save(name, {"Pte": Pte, **({} if Ptr is None else {"Ptr": Ptr})})
        sf, ef, lh = est.stage_flops_, est.exit_flops_, not est._adapter.final_is_classifier
        head = ef[:-1] / sf.sum()
        base = float(np.mean(Pte[-1].argmax(1) == np.searchsorted(est.classes_, yte)))
        ytr_i, yte_i = np.searchsorted(est.classes_, ytr), np.searchsorted(est.classes_, yte)
        ref = None  # per-row results of the stage's own score re-tuned from the staged arrays
        todo = (["stage"] + (["stage (re-tuned)"] if Ptr is not None else [])
                + [v for v in variants if v != "stage"]) if evidence else ["stage"]
        for variant in todo:
            kind = "stage" if variant.startswith("stage") else variant
            arrays_te = table_arrays(Pte, yte_i, kind)
            te = ExitTable(*arrays_te, sf, ef, lh)
            if variant == "stage":
                tune = tune0  # the package's own tuning table
                if Ptr is not None:  # the staged pass reproduces it (last conf unused)
                    conf, cor = table_arrays(Ptr, ytr_i, "stage")
                    assert np.abs(conf[:, :-1] - tune.conf_cols[:-1].T).max() < 1e-4
                    assert (cor.T.ravel() != tune.correct_flat).mean() < 1e-3
            else:
                tune = ExitTable(*table_arrays(Ptr, ytr_i, kind), sf, ef, lh)
            acc, per_row = held_out(tune, te, variant not in ("stage", "stage (re-tuned)"),
                                    arrays_te)
            row = {"exits": name, "variant": variant,
                   "params": {k: str(v) for k, v in kw.items()},
                   "held_out": acc, "base": base, "fit_s": fit_s,
                   "exit_flops": [float(v) for v in ef], "stage_flops": [float(v) for v in sf],
                   "head_flops_max": float(head.max()), "head_flops_sum": float(head.sum()),
                   "test_stage_accuracy": [float(v) for v in np.asarray(
                       te.correct_flat).reshape(te.n_stages, -1).mean(1)]}
            if variant == "stage (re-tuned)":
                ref = per_row
            elif ref is not None and variant != "stage":
                d = per_row - ref
                row["delta_vs_retuned_stage"] = d.mean(1).tolist()
                row["delta_se"] = (d.std(1) / np.sqrt(d.shape[1])).tolist()
            rows.append(row)
            log(f"{name} / {variant}: " + " ".join(f"{a:.4f}" for a in acc)
                + f" (base {base:.4f}; {time.perf_counter() - t0:.0f} s)")
        if done is not None:
            done(rows)
    return rows


def markdown(rows, command, quick, sdn=None):
    base = rows[0]["base"]
    lines = ["# Exits that match the full network sooner (no gradient training)", "",
             f"Command: `{command}`. Held-out (test) accuracy at the served budget φ: the "
             "coordinate-ascent hull (`threshold_search=\"hull\"`) tuned on the training rows' "
             "exit table, its vertices evaluated on the test rows' table, φ served by time "
             "sharing (as `bench_sweep.py`). Base network (test): "
             f"{base:.4f}; target of issue 16: ≥ {base - 0.01:.4f} at φ = 0.2 and "
             f"≥ {base - 0.005:.4f} from φ = 0.3.", "",
             "| exits | exit score | fit (s) | largest head (FLOPs, base = 1) | "
             + " | ".join(f"φ = {p}" for p in PHIS) + " | target met | "
             "stage accuracy (test): 0 / 1 / 2 / 3 | Δ vs re-tuned stage score ± SE, "
             "φ = 0.2 / 0.3 / 0.5 |",
             "|---|---|---|---|" + "---|" * len(PHIS) + "---|---|---|"]
    at = [PHIS.index(p) for p in (0.2, 0.3, 0.5)]
    for r in rows:
        acc = r["held_out"]
        cells = " | ".join(f"{a:.4f}" for a in acc)
        met = (acc[PHIS.index(0.2)] >= base - 0.01
               and all(a >= base - 0.005 for p, a in zip(PHIS, acc) if p >= 0.3))
        sa = " / ".join(f"{a:.3f}" for a in r["test_stage_accuracy"][:4])
        delta = " / ".join(f"{r['delta_vs_retuned_stage'][k]:+.4f} ± {r['delta_se'][k]:.4f}"
                           for k in at) if "delta_se" in r else "-"
        lines.append(f"| {r['exits']} | {r['variant']} | {r['fit_s']:.0f} | "
                     f"{r['head_flops_max']:.5f} | {cells} | {'yes' if met else 'no'} | {sa} | "
                     f"{delta} |")
    if sdn is not None:
        lines.append("| one-epoch SDN (quoted from `internal.md`, routed test accuracy) | IC "
                     "max softmax | 59 | - | " + " | ".join(f"{a:.3f}" for a in sdn)
                     + " | no | - | - |")
    lines += ["", "Exit scores: `stage` = the stage's own largest probability (the package, "
              "tuned on its own tuning table); `stage (re-tuned)` = the same score tuned on "
              "the table rebuilt from `staged_predict_proba` (float32 probabilities: the "
              "difference between the two rows is the tuning's own noise); "
              "`cumulative γ` = softmax of S_j = γ S_{j-1} + log p_j (class and confidence "
              "from the accumulated evidence; every head before the exit counted in the "
              "cost); `agree` = the stage's own, allowed to fire only when the class equals "
              "the previous stage's."]
    best = [r for r in rows if r["variant"] == "stage"]
    met = [f"{r['exits']} ({r['variant']})" for r in rows
           if r["held_out"][PHIS.index(0.2)] >= base - 0.01
           and all(a >= base - 0.005 for p, a in zip(PHIS, r["held_out"]) if p >= 0.3)]
    lines += ["", "Meets the target: " + (", ".join(met) if met else "none") + "."]
    if best:
        top = max(best, key=lambda r: r["held_out"][PHIS.index(0.2)])
        lines += [f"Best package exits at φ = 0.2: {top['exits']} "
                  f"({top['held_out'][PHIS.index(0.2)]:.4f}, "
                  f"{top['held_out'][PHIS.index(0.2)] - base:+.4f} against the network)."]
    if quick:
        lines += ["", "Quick mode: scikit-learn stages on `load_digits` (a smoke test; "
                  "the figures mean nothing)."]
    return "\n".join(lines) + "\n"


VARIANTS = ["stage", "cumulative 1.0", "cumulative 0.5", "agree"]


def _class_stats(F, y, K):
    F = F.astype(np.float64)
    C = np.stack([F[y == k].mean(0) for k in range(K)])  # loop over classes (offline study)
    R = F - C[y]
    return C, R.T @ R / len(F)  # the pooled within-class covariance the package streams


def _whitened_accuracy(C, cov, a, n, Fte, yte):
    from sklearn_e2cm.exits.class_means import whitened_head

    head, used = whitened_head(C, cov, a, n_samples=n)
    S = Fte.astype(np.float64) @ head.coef.T.astype(np.float64) + head.intercept
    return float(np.mean(S.argmax(1) == yte)), used


def _class_covariance_accuracy(F, y, Fte, yte, K, lam):
    """Class-specific covariances shrunk towards the (OAS-shrunk) pooled one (QDA)."""
    from sklearn_e2cm.exits.class_means import oas_shrinkage

    F = F.astype(np.float64)
    C, cov = _class_stats(F, y, K)
    D = cov.shape[0]
    a = oas_shrinkage(cov, len(F))
    pooled = (1 - a) * cov
    pooled.flat[::D + 1] += a * np.trace(cov) / D
    S = np.empty((len(Fte), K))
    for k in range(K):  # loop over classes (offline study)
        R = F[y == k] - C[k]
        L = np.linalg.cholesky((1 - lam) * (R.T @ R / len(R)) + lam * pooled)
        Z = np.linalg.solve(L, (Fte.astype(np.float64) - C[k]).T)
        S[:, k] = -0.5 * (Z * Z).sum(0) - np.log(np.diag(L)).sum()
    return float(np.mean(S.argmax(1) == yte))


def head_study(n_stages=4):
    """Test accuracy of whitened heads at the first stages: pooling, shrinkage, class-specific
    covariances (thresholds play no part)."""
    import torch
    import torch.nn.functional as Fn

    from _common import load_fashion, trained_resnet

    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(1)
    Xtr, ytr, Xte, yte = load_fashion()
    net, _ = trained_resnet(Xtr, ytr, epochs=3)
    mods = list(split_into_stages(net))

    def features(X, grid):
        out = [[] for _ in range(n_stages)]
        with torch.inference_mode():
            for s in range(0, len(X), 1000):
                z = torch.from_numpy(X[s:s + 1000])
                for j in range(n_stages):
                    z = mods[j](z)
                    out[j].append(Fn.adaptive_avg_pool2d(z, grid).flatten(1).numpy().copy())
        return [np.concatenate(o) for o in out]

    rows = []
    for grid in (4, 7):
        Ftr, Fte = features(Xtr, grid), features(Xte, grid)
        for j in range(n_stages):
            C, cov = _class_stats(Ftr[j], ytr, 10)
            row = {"pooling": f"avg{grid}", "stage": j, "n_features": int(Ftr[j].shape[1])}
            for a in ("oas", 0.0, 0.01, 0.1):
                row[f"shrinkage {a}"], used = _whitened_accuracy(C, cov, a, len(ytr), Fte[j], yte)
                if a == "oas":
                    row["oas amount"] = used
            if grid == 4:
                for lam in (0.3, 0.7):
                    row[f"class covariances λ={lam}"] = _class_covariance_accuracy(
                        Ftr[j], ytr, Fte[j], yte, 10, lam)
            rows.append(row)
            print(row, flush=True)
    cols = [k for k in rows[0] if k not in ("pooling", "stage", "n_features")]
    md = ["# Whitened heads at the first stages: test accuracy of each stage's class alone",
          "", "Command: `python benchmarks/bench_evidence.py --heads` (ResNet-20, Fashion-MNIST;"
          " heads fitted on the 60k training images, accuracy on the 10k test images; "
          "`shrinkage` = amount towards the scaled identity; `class covariances λ` = one "
          "covariance per class shrunk by λ towards the pooled one, K times the head's "
          "FLOPs and memory).", "",
          "| pooling | stage | features | " + " | ".join(cols) + " |",
          "|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        md.append(f"| {r['pooling']} | {r['stage']} | {r['n_features']} | " + " | ".join(
            "-" if c not in r else (f"{r[c]:.2g}" if c == "oas amount" else f"{r[c]:.4f}")
            for c in cols) + " |")
    write("evidence_heads", {"machine": machine(), "rows": rows}, "\n".join(md) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="scikit-learn stages on digits")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    ap.add_argument("--render", action="store_true",
                    help="rewrite the markdown from the saved JSON (no fit)")
    ap.add_argument("--heads", action="store_true",
                    help="only the study of the first stages' heads (evidence_heads.md)")
    args = ap.parse_args(argv)
    if args.out:
        import _common

        _common.RESULTS = __import__("pathlib").Path(args.out)
    if args.heads:
        return head_study()
    if args.render:
        import json

        from _common import RESULTS

        name = "evidence_quick" if args.quick else "evidence"
        payload = json.loads((RESULTS / f"{name}.json").read_text())
        write(name, payload, markdown(payload["rows"], payload["command"], args.quick,
                                      payload["sdn_one_epoch_quoted"]))
        return payload
    if args.quick:
        from sklearn.datasets import load_digits
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        X, y = load_digits(return_X_y=True)
        Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:], y[1200:]
        stages = [StandardScaler(), PCA(16, random_state=0), PCA(8, random_state=0),
                  LogisticRegression(max_iter=300)]
        configs = [("paper (Euclidean)", {}, False),
                   ("whitened", {"metric": "mahalanobis"}, True)]
        command = "python benchmarks/bench_evidence.py --quick"
        sdn = None
    else:
        import torch

        from _common import load_fashion, trained_resnet

        from sklearn_e2cm.stages import split_into_stages

        torch.set_num_threads(1)
        Xtr, ytr, Xte, yte = load_fashion()
        net, _ = trained_resnet(Xtr, ytr, epochs=3)
        stages = split_into_stages(net)
        cpu = {"batch_size": 512, "device": "cpu"}
        maha = {"metric": "mahalanobis", **cpu}
        configs = [
            ("whitened, avg4", {**maha, "pooling": "avg4"}, True),
            ("whitened, avg7", {**maha, "pooling": "avg7"}, True),
            ("paper (Euclidean, no pooling)", cpu, False),
            ("whitened, avg14 (stages 0-3) + avg7",
             {**maha, "pooling": ["avg14"] * 4 + ["avg7"] * 6 + [None]}, True),
        ]
        command = "python benchmarks/bench_evidence.py"
        sdn = SDN_INTERNAL
    name = "evidence_quick" if args.quick else "evidence"

    def done(rows):  # results so far, rewritten after every configuration
        payload = {"machine": machine(), "phis": PHIS, "command": command, "rows": rows,
                   "sdn_one_epoch_quoted": sdn}
        write(name, payload, markdown(rows, command, args.quick, sdn))
        return payload

    def save(config, arrays):  # staged probabilities, to study other exit scores offline
        if not args.quick:
            from _common import CACHE

            CACHE.mkdir(parents=True, exist_ok=True)
            slug = "".join(c if c.isalnum() else "_" for c in config)
            np.savez(CACHE / f"evidence_{slug}.npz", ytr=ytr, yte=yte,
                     **{k: v.astype(np.float32) for k, v in arrays.items()})

    return done(run(stages, configs, Xtr, ytr, Xte, yte, VARIANTS, done=done, save=save))


if __name__ == "__main__":
    main()
