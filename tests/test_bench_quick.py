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
