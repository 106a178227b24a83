"""The benchmarks' --quick modes: each runs end to end on small generated data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script, args, out):
    env = {**os.environ, "SKLEARN_E2CM_BENCH_RESULTS": str(out), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["six", "unlimited"])
def test_budget_tables_quick(tmp_path, budget):
    pytest.importorskip("torch")
    _run("bench_budget.py", ["--quick", "--budget", budget], tmp_path)
    payload = json.loads((tmp_path / f"budget_{budget}_quick.json").read_text())
    methods = {r["method"] for r in payload["rows"]}
    assert {"SDN", "BranchyNet", "BWDS", "E2CM + SDN (consult)", "E2CM + SDN (and)",
            "E2CM + SDN (or)"} <= methods
    for r in payload["rows"]:
        assert 0 < r["test_flops"] <= 1.0 + 1e-9 and 0 <= r["test_accuracy"] <= 1
    epochs = {r["method"]: r["epochs"] for r in payload["rows"]}
    if budget == "six":
        assert epochs["SDN"] == {"IC training": 1}
    else:  # early stopping: at most max_epochs (4 in the quick mode)
        assert 1 <= epochs["SDN"]["IC training"] <= 4
    md = (tmp_path / f"budget_{budget}_quick.md").read_text()
    assert "| SDN |" in md and (tmp_path / f"budget_{budget}_quick.png").exists()


@pytest.mark.slow
def test_sweep_benchmark_quick(tmp_path):
    _run("bench_sweep.py", ["--quick"], tmp_path)
    payload = json.loads((tmp_path / "sweep_quick.json").read_text())
    timing = payload["timing"]["synthetic_2k_6"]
    assert timing["coordinate"] > 0 and timing["bisect"] > 0
    held = payload["held_out"]["synthetic_2k_6"]
    assert len(held["coordinate"]) == len(payload["phis"])


@pytest.mark.slow
def test_evidence_benchmark_quick(tmp_path):
    _run("bench_evidence.py", ["--quick"], tmp_path)
    rows = json.loads((tmp_path / "evidence_quick.json").read_text())["rows"]
    assert {("whitened", "agree"), ("whitened", "cumulative 1.0")} <= {
        (r["exits"], r["variant"]) for r in rows}
    assert all(len(r["held_out"]) == 5 for r in rows)


@pytest.mark.slow
def test_calibration_benchmark_quick(tmp_path):
    pytest.importorskip("torch")
    _run("bench_calibration.py", ["--quick"], tmp_path)
    payload = json.loads((tmp_path / "calibration_quick.json").read_text())
    rows = payload["rows"]
    assert {r["calibration"] for r in rows} == {None, 0.2}
    for r in rows:
        run = r["runs"][0]
        # held out: about a fifth of the training rows tune the thresholds; None: all of them
        expected = run["n_fit_rows"] if r["calibration"] is None else 0.2 * run["n_fit_rows"]
        assert abs(run["n_tuning_rows"] - expected) <= 1
        assert [s["flops_target"] for s in r["served"]] == payload["targets"]
        for s in run["served"]:
            assert abs(s["tuning_flops"] - s["flops_target"]) <= 0.01  # met on the tuning rows
            assert 0 < s["test_flops"] <= max(run["cumulative_cost"]) + 1e-9
            assert s["abs_flops_error"] == pytest.approx(abs(s["test_flops"] - s["flops_target"]),
                                                         abs=1e-12)
            assert 0 <= s["test_accuracy"] <= 1
    md = (tmp_path / "calibration_quick.md").read_text()
    assert "## digits" in md and "| 0.2 held out |" in md

    # the benchmark's warning capture: separable blobs make the first exit look perfect on the
    # training rows (the fit warns), never on held-out rows (calibration=0.2 does not)
    sys.path.insert(0, str(BENCH))
    try:
        from bench_calibration import measure
    finally:
        sys.path.remove(str(BENCH))
    from sklearn.datasets import make_blobs
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from sklearn_e2cm import EarlyExitClassMeans

    X, y = make_blobs(600, n_features=8, centers=4, cluster_std=0.5, random_state=0)
    warned = {}
    for cal in (None, 0.2):
        def make(cal=cal):
            steps = [StandardScaler(), Nystroem(n_components=200, random_state=0),
                     LogisticRegression()]
            return EarlyExitClassMeans(steps, calibration=cal, random_state=0)
        warned[cal] = measure(make, X[:400], y[:400], X[400:], y[400:], [0.3])["easy_warning"]
    assert warned == {None: True, 0.2: False}


@pytest.mark.slow
def test_finetune_benchmark_quick(tmp_path):
    pytest.importorskip("torch")
    _run("bench_finetune.py", ["--quick"], tmp_path)
    payload = json.loads((tmp_path / "finetune_quick.json").read_text())
    run = payload["runs"][0]
    assert {"E2CM", "E2CM (whitened)", "SDN (1 epoch)", "BranchyNet (1 epoch)"} <= set(
        run["methods"])
    assert 0 < run["exit"]["stage_flops_fraction"] < 1
    for r in payload["runs"]:
        assert 0 <= r["head"]["test_accuracy"] <= 1
        for m in r["methods"].values():
            assert "error" not in m, m
            assert len(m["test_accuracy"]) == len(payload["phis"])
            assert all(0 < f <= 1.0 + 1e-9 for f in m["test_flops"])
            assert all(0 <= a <= 1 for a in m["test_accuracy"])
            # leaving at the one exit costs the stages before it plus the exit head
            assert m["exit_cost"] >= run["exit"]["stage_flops_fraction"] - 1e-12
            # a budget of 1 is served by the fine-tuned network itself
            assert abs(m["test_flops"][-1] - 1.0) < 1e-9
            assert abs(m["test_accuracy"][-1] - r["head"]["test_accuracy"]) < 1e-9
    md = (tmp_path / "finetune_quick.md").read_text()
    assert "| E2CM |" in md and (tmp_path / "finetune_quick.png").exists()
