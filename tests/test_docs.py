"""The documentation builds with warnings as errors, gallery examples included.

Builds a copy of ``docs/`` in a temporary folder (the examples run there: nothing is
written into the working tree) with ``sphinx-build -W --keep-going``. Skipped only
when Sphinx is not installed; the other extensions are in the ``test`` extra.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    src = tmp_path / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns(
        "_build", "auto_examples", "generated", "sg_execution_times.rst", "__pycache__"))
    env = dict(os.environ, E2CM_DOCS_ROOT=str(ROOT), MPLBACKEND="agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(src), str(tmp_path / "html")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, (
        f"sphinx-build failed (exit {proc.returncode}, {elapsed:.0f} s):\n"
        f"{proc.stderr[-6000:]}\n--- stdout ---\n{proc.stdout[-3000:]}"
    )
    assert "WARNING" not in proc.stderr, proc.stderr[-6000:]
    html = tmp_path / "html"
    # every page the toctrees promise, and the gallery's figures
    for page in ["index.html", "api/index.html", "guide/method.html", "guide/scaling.html",
                 "auto_examples/index.html", "auto_examples/plot_tradeoff_digits.html",
                 "api/generated/sklearn_e2cm.EarlyExitClassMeans.html"]:
        assert (html / page).is_file(), page
    examples = sorted(p.stem for p in (ROOT / "examples").glob("plot_*.py"))
    for name in examples:
        assert (html / "auto_examples" / f"{name}.html").is_file(), name
    figures = list((src / "auto_examples" / "images").glob("sphx_glr_plot_*_001.png"))
    assert len(figures) >= len(examples) - 1, figures  # plot_save_load draws nothing
