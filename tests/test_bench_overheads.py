"""benchmarks/bench_overheads.py --quick: tiny generated networks, no torchvision."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_overheads.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_overheads", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_quick_mode_measures_and_checks_every_row_against_a_fit(tmp_path):
    bench = _load()
    payload = bench.main(["--quick", "--out", str(tmp_path)])
    rows = payload["rows"]
    assert {(r["model"], r["pooling"]) for r in rows} == {
        (m, p) for m in ("resnet8_w8", "cnn3") for p in ("none", "max(8,2,2)")}
    for r in rows:
        assert "fit_check" in r  # the fitted estimator's exit FLOPs and bytes were equal
        assert 0 < r["flops_per_exit_min"] <= r["flops_per_exit_mean"] <= 1
        # means bytes are K * D float32 values per exit
        for e in r["exits"]:
            assert e["means_bytes"] == 4 * r["n_classes"] * e["D"]
            assert e["head_bytes"] >= e["means_bytes"]
    by = {(r["model"], r["pooling"]): r for r in rows}
    for m in ("resnet8_w8", "cnn3"):  # the paper's pooling shrinks both overheads
        assert by[m, "max(8,2,2)"]["means_mb_total"] < by[m, "none"]["means_mb_total"]
        assert by[m, "max(8,2,2)"]["flops_per_exit_mean"] < by[m, "none"]["flops_per_exit_mean"]
    saved = json.loads((tmp_path / "overheads_quick.json").read_text())
    assert len(saved["rows"]) == 4
    md = (tmp_path / "overheads_quick.md").read_text()
    assert "| resnet8_w8 | 3 | cifar | none |" in md
