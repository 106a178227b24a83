"""The command line end to end: ``python -m sklearn_e2cm fit / curve / predict`` in a subprocess.

A tiny network trained here on the digits is saved with ``torch.jit.save``; the data go to
``.npy`` / ``.npz`` files. User errors must end with exit status 2 and one line on stderr
(no traceback).
"""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.datasets import load_digits

from sklearn_e2cm.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd=None, env_path=None):
    """Run ``python -m sklearn_e2cm ARGS``; return the CompletedProcess (text)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        str(p) for p in (env_path, ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "sklearn_e2cm", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_user_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert "error:" in lines[0] and "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained TorchScript network, another one of other widths, and the digits as files."""
    torch = pytest.importorskip("torch")
    from torch import nn

    d = tmp_path_factory.mktemp("cli")
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Linear(64, 16), nn.ReLU()),
                        nn.Sequential(nn.Linear(16, 64), nn.ReLU()), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    net.eval()
    torch.jit.save(torch.jit.script(net), d / "net.pt")
    other = nn.Sequential(nn.Linear(64, 24), nn.Linear(24, 32), nn.Linear(32, 10)).eval()
    torch.jit.save(torch.jit.script(other), d / "other.pt")
    np.save(d / "X.npy", X)
    np.save(d / "y.npy", y)
    np.savez(d / "data.npz", X=X, y=y)
    np.savez(d / "renamed.npz", images=X[:300], labels=y[:300])
    np.save(d / "X_wide.npy", np.zeros((len(y), 65), np.float32))
    (d / "notes.pt").write_text("not a network\n")
    return d, X, y


@pytest.fixture(scope="module")
def exits(files):
    """Exits fitted by ``fit`` on the TorchScript network (and what the command printed)."""
    d, X, y = files
    proc = cli("fit", "--network", d / "net.pt", "--X", d / "X.npy", "--y", d / "y.npy",
               "--out", d / "exits.npz", "--flops-target", "0.8", "--random-state", "0")
    assert proc.returncode == 0, proc.stderr
    return d / "exits.npz", proc


def test_fit_writes_exits_that_load_on_the_network(files, exits):
    torch = pytest.importorskip("torch")
    from sklearn_e2cm import load_exits

    d, X, y = files
    path, proc = exits
    assert "fitted 3 stages on 1797 rows" in proc.stdout
    est = load_exits(path, stages=torch.jit.load(d / "net.pt"))
    assert est.n_stages_ == 3 and est.flops_target == 0.8
    assert est.score(X, y) > 0.85


def test_predict_csv_matches_routing_in_python(files, exits):
    torch = pytest.importorskip("torch")
    import pandas as pd

    from sklearn_e2cm import load_exits

    d, X, y = files
    proc = cli("predict", "--exits", exits[0], "--network", d / "net.pt", "--X", d / "X.npy")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(io.StringIO(proc.stdout))
    assert list(df.columns) == ["y_pred", "exit_stage", "flops"] and len(df) == len(y)
    r = load_exits(exits[0], stages=torch.jit.load(d / "net.pt")).route(X)
    np.testing.assert_array_equal(df["y_pred"], r.y_pred)
    np.testing.assert_array_equal(df["exit_stage"], r.exit_stage)
    np.testing.assert_allclose(df["flops"], r.flops, rtol=1e-5)
    assert set(df["exit_stage"]) <= {0, 1, 2} and df["exit_stage"].nunique() > 1
    assert np.mean(df["y_pred"] == y) > 0.85


def test_curve_table_and_png(files, exits, tmp_path):
    pytest.importorskip("matplotlib")
    import pandas as pd

    d, X, y = files
    png, out = tmp_path / "curve.png", tmp_path / "curve.csv"
    proc = cli("curve", "--exits", exits[0], "--network", d / "net.pt", "--X", d / "data.npz",
               "--targets", "0.5", "0.8", "1.0", "--out", out, "--png", png)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["model", "flops_target", "flops", "accuracy"]
    assert list(df["model"]) == ["base model", "E2CM", "E2CM", "E2CM"]
    np.testing.assert_allclose(df["flops_target"], [1.0, 0.5, 0.8, 1.0])
    assert abs(df["flops"].iloc[0] - 1.0) < 1e-6 and df["accuracy"].iloc[0] > 0.9
    e2cm = df[df["model"] == "E2CM"]
    assert np.all(np.diff(e2cm["flops"]) >= -1e-9)  # more budget, never less spent
    assert abs(e2cm["flops"].iloc[-1] - 1.0) < 0.02  # the budget asked for is spent
    assert np.all((df["accuracy"] > 0.5) & (df["accuracy"] <= 1))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_curve_markdown_on_stdout_and_npz_keys(files, exits):
    d, X, y = files
    proc = cli("curve", "--exits", exits[0], "--network", d / "net.pt", "--X",
               d / "renamed.npz", "--x-key", "images", "--y-key", "labels", "--targets", "0.9",
               "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split("|")[1].strip() == "model" and set(lines[1]) <= set("|-")
    assert len(lines) == 4 and "base model" in lines[2] and "E2CM" in lines[3]


@pytest.mark.slow
def test_module_function_sklearn_chain(tmp_path, files):
    """``module:function`` returning fitted steps works; unfitted steps are refused first."""
    d, X, y = files
    (tmp_path / "my_chain.py").write_text(textwrap.dedent("""
        from sklearn.datasets import load_digits
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        def fitted():
            X, y = load_digits(return_X_y=True)
            return make_pipeline(StandardScaler(), PCA(16, random_state=0),
                                 LogisticRegression(max_iter=500)).fit(X / 16, y)

        def unfitted():
            return [StandardScaler(), LogisticRegression()]
    """))
    out = tmp_path / "chain_exits.npz"
    proc = cli("fit", "--network", "my_chain:unfitted", "--X", d / "data.npz", "--out", out,
               env_path=tmp_path)
    assert_user_error(proc, "not fitted", "FrozenEstimator")
    assert not out.exists()
    proc = cli("fit", "--network", "my_chain:fitted", "--X", d / "data.npz", "--out", out,
               "--flops-target", "0.7", env_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = cli("predict", "--network", "my_chain:fitted", "--exits", out, "--X", d / "X.npy",
               env_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 + len(y)
    # exits of the chain with the TorchScript network: refused, one line
    assert_user_error(cli("predict", "--network", d / "net.pt", "--exits", out, "--X",
                          d / "X.npy"), "torch stages")


@pytest.mark.slow
def test_torch_export_file(tmp_path, files):
    torch = pytest.importorskip("torch")
    from torch import nn

    if not hasattr(torch.export, "Dim"):
        pytest.skip(f"exporting with a dynamic batch needs torch >= 2.2 (have {torch.__version__})")

    d, X, y = files
    net = torch.jit.load(d / "net.pt")
    eager = nn.Sequential(nn.Sequential(nn.Linear(64, 16), nn.ReLU()),
                          nn.Sequential(nn.Linear(16, 64), nn.ReLU()), nn.Linear(64, 10))
    eager.load_state_dict(net.state_dict())
    program = torch.export.export(eager.eval(), (torch.from_numpy(X[:2]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "net.pt2")
    out = tmp_path / "exits.npz"
    proc = cli("fit", "--network", tmp_path / "net.pt2", "--X", d / "data.npz", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "fitted 3 stages" in proc.stdout


# ------------------------------------------------------------------ user errors


def test_unknown_subcommand_and_bad_option():
    assert_user_error(cli("nope"), "invalid choice", "nope")
    assert_user_error(cli("fit", "--flops-target", "x"), "--flops-target")


def _error_cases(d, exits, out):
    net, X, y = d / "net.pt", d / "X.npy", d / "y.npy"
    return {
        "missing file": (["fit", "--network", net, "--X", d / "absent.npy", "--y", y, "--out",
                          out], ["absent.npy", "does not exist"]),
        "not a network": (["fit", "--network", d / "notes.pt", "--X", X, "--y", y, "--out", out],
                          ["notes.pt", "not a TorchScript"]),
        "not an exits file": (["predict", "--network", net, "--exits", d / "notes.pt", "--X", X],
                              ["notes.pt"]),
        "not a data file": (["predict", "--network", net, "--exits", exits, "--X",
                             d / "notes.pt"], ["notes.pt", "not a .npy, .npz or IDX file"]),
        "rows and labels": (["fit", "--network", net, "--X", X, "--y", d / "renamed.npz",
                             "--y-key", "labels", "--out", out], ["1797 input rows", "300 labels"]),
        "width": (["fit", "--network", net, "--X", d / "X_wide.npy", "--y", y, "--out", out],
                  ["X_wide.npy", "65", "64"]),  # torch's shape error, without its traceback
        "exits of another network": (["predict", "--network", d / "other.pt", "--exits", exits,
                                      "--X", X], ["other.pt", "exits.npz"]),
        "unknown npz key": (["curve", "--exits", exits, "--network", net, "--X",
                             d / "renamed.npz"], ["renamed.npz", "images, labels"]),
    }


CASES = ["missing file", "not a network", "not an exits file", "not a data file",
         "rows and labels", "width", "exits of another network", "unknown npz key"]


@pytest.mark.parametrize("case", CASES)
def test_user_errors_in_process(case, files, exits, tmp_path, capsys):
    """Exit status 2 and one line from ``main`` (the subprocess run of each is marked slow)."""
    d = files[0]
    out = tmp_path / "e.npz"
    argv, words = _error_cases(d, exits[0], out)[case]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err
    for w in words:
        assert w in err[0], err[0]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_user_errors_in_a_subprocess(case, files, exits, tmp_path):
    d = files[0]
    out = tmp_path / "e.npz"
    argv, words = _error_cases(d, exits[0], out)[case]
    assert_user_error(cli(*argv), *words)
    assert not out.exists()


# ------------------------------------------------------------------ help, version


@pytest.mark.parametrize("command", ["demo", "fit", "curve", "predict"])
def test_every_subcommand_has_help_and_version(command, capsys):
    from sklearn_e2cm import __version__

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"{command} [-h]" in text and "``" not in text and "--version" in text
    with pytest.raises(SystemExit) as exc:
        main([command, "--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_console_script_name_and_version():
    from sklearn_e2cm import __version__

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"python -m sklearn_e2cm {__version__}"
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("demo", "fit", "curve", "predict"):
        assert command in proc.stdout


def test_demo_fashion_mnist_missing_is_one_line(monkeypatch, capsys):
    import sklearn_e2cm.datasets as datasets

    def absent(**kwargs):
        raise FileNotFoundError("Fashion-MNIST files not found.\nSearched: /nowhere")

    monkeypatch.setattr(datasets, "load_fashion_mnist", absent)
    assert main(["demo", "--dataset", "fashion-mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Fashion-MNIST" in err[0] and "/nowhere" in err[0]


@pytest.mark.slow
def test_idx_files_without_a_network(tmp_path):
    """IDX images and labels (MNIST's format, gzip too); no --network: the input is the stage."""
    import gzip

    X, y = load_digits(return_X_y=True)
    images = X.reshape(-1, 8, 8).astype(np.uint8)
    header = bytes([0, 0, 0x08, 3]) + np.array(images.shape, ">u4").tobytes()
    with gzip.open(tmp_path / "images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    labels = y.astype(np.uint8)
    (tmp_path / "labels-idx1-ubyte").write_bytes(
        bytes([0, 0, 0x08, 1]) + np.array([len(labels)], ">u4").tobytes() + labels.tobytes())
    out = tmp_path / "exits.npz"
    proc = cli("fit", "--X", tmp_path / "images-idx3-ubyte.gz", "--y",
               tmp_path / "labels-idx1-ubyte", "--reshape", "64", "--scale", "0.0625",
               "--out", out, "--flops-target", "1.0")
    assert proc.returncode == 0, proc.stderr
    proc = cli("curve", "--exits", out, "--X", tmp_path / "images-idx3-ubyte.gz", "--y",
               tmp_path / "labels-idx1-ubyte", "--reshape", "64", "--scale", "0.0625",
               "--targets", "1.0")
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.strip().splitlines()
    assert rows[0] == "model,flops_target,flops,accuracy" and len(rows) == 3
    assert float(rows[1].split(",")[3]) > 0.85  # nearest class mean on the digits


def test_skops_chain_needs_its_custom_types_trusted(tmp_path, files):
    """A chain saved with skops: default-trusted types load; others are named and refused."""
    sio = pytest.importorskip("skops.io")
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d, X, y = files
    (tmp_path / "my_steps.py").write_text(textwrap.dedent("""
        from sklearn.preprocessing import StandardScaler

        class Scale(StandardScaler):
            pass
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        from my_steps import Scale

        custom = make_pipeline(Scale(), PCA(16, random_state=0),
                               LogisticRegression(max_iter=500)).fit(X, y)
        sio.dump(custom, tmp_path / "custom.skops")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_steps", None)
    plain = make_pipeline(StandardScaler(), PCA(16, random_state=0),
                          LogisticRegression(max_iter=500)).fit(X, y)
    sio.dump(plain, tmp_path / "plain.skops")

    out = tmp_path / "exits.npz"
    assert main(["fit", "--network", str(tmp_path / "plain.skops"), "--X", str(d / "data.npz"),
                 "--out", str(out), "--flops-target", "0.8"]) == 0
    proc = cli("predict", "--network", tmp_path / "plain.skops", "--exits", out, "--X",
               d / "X.npy")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 + len(y)

    out2 = tmp_path / "custom_exits.npz"
    line = assert_user_error(
        cli("fit", "--network", tmp_path / "custom.skops", "--X", d / "data.npz", "--out", out2,
            env_path=tmp_path), "not trusted by default", "my_steps.Scale",
        "--trust my_steps.Scale")
    assert "custom.skops" in line and not out2.exists()
    # trusted, it loads; the package cannot count a custom step's FLOPs: it says so ...
    assert_user_error(cli("fit", "--network", tmp_path / "custom.skops", "--X", d / "data.npz",
                          "--out", out2, "--trust", "my_steps.Scale", env_path=tmp_path),
                      "FLOPs of stage 'scale' (Scale) cannot be known")
    # ... and --stage-costs gives them
    proc = cli("fit", "--network", tmp_path / "custom.skops", "--X", d / "data.npz", "--out",
               out2, "--trust", "my_steps.Scale", "--stage-costs", "128,2048,330",
               env_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = cli("predict", "--network", tmp_path / "custom.skops", "--exits", out2, "--X",
               d / "X.npy", "--trust", "my_steps.Scale", env_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 + len(y)


def test_fit_internal_classifiers_and_options_of_the_other_estimator(files, tmp_path):
    torch = pytest.importorskip("torch")
    from sklearn_e2cm import InternalClassifierEarlyExit, load_exits

    d, X, y = files
    out = tmp_path / "ic.npz"
    assert main(["fit", "--network", str(d / "net.pt"), "--X", str(d / "data.npz"),
                 "--out", str(out), "--estimator", "internal", "--method", "branchynet",
                 "--exit-at", "0", "--epochs", "2", "--combine", "consult",
                 "--sweep-resolution", "100", "--flops-target", "0.8"]) == 0
    est = load_exits(out, stages=torch.jit.load(d / "net.pt"))
    assert isinstance(est, InternalClassifierEarlyExit)
    assert (est.method, est.epochs, est.combine, est.sweep_resolution) == (
        "branchynet", 2, "consult", 100)
    assert est.score(X, y) > 0.8
    # options of the internal classifiers are refused for class means, not ignored
    assert main(["fit", "--network", str(d / "net.pt"), "--X", str(d / "data.npz"),
                 "--out", str(tmp_path / "e.npz"), "--epochs", "3"]) == 2
    with pytest.raises(SystemExit):
        main(["fit", "--network", str(d / "net.pt"), "--X", str(d / "data.npz"),
              "--out", str(tmp_path / "e.npz"), "--exit-at", "a,b"])
    assert not (tmp_path / "e.npz").exists()
