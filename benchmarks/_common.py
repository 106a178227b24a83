"""Shared helpers of the benchmarks: data, a trained network (cached), timing, results."""

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(os.environ.get("SKLEARN_E2CM_BENCH_RESULTS",
                            Path(__file__).resolve().parent / "results"))
CACHE = Path(os.environ.get("SKLEARN_E2CM_BENCH_CACHE", Path.home() / ".cache" / "sklearn_e2cm"))


def load_fashion(n_train=None, n_test=None):
    from sklearn_e2cm.datasets import load_fashion_mnist

    Xtr, ytr = load_fashion_mnist(subset="train", return_X_y=True)
    Xte, yte = load_fashion_mnist(subset="test", return_X_y=True)
    mean, std = 0.2860, 0.3530  # Fashion-MNIST pixel statistics
    Xtr = (Xtr - mean) / std
    Xte = (Xte - mean) / std
    if n_train:
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    if n_test:
        Xte, yte = Xte[:n_test], yte[:n_test]
    return Xtr.astype(np.float32), ytr, Xte.astype(np.float32), yte


def resnet_cache_path(n_rows, depth=20, width=16, epochs=3, seed=0, tag=""):
    """Where :func:`trained_resnet` caches the network of this recipe (``tag``: extra recipe)."""
    return CACHE / f"resnet{depth}_w{width}_e{epochs}_s{seed}_n{n_rows}{tag}.pt"


def trained_resnet(Xtr, ytr, depth=20, width=16, epochs=3, seed=0, verbose=1, *,
                   n_classes=10, in_channels=1, input_size=28, tag=""):
    """A ResNet trained by the package's own helper, cached on disk by its recipe.

    ``tag`` is appended to the cache file name for recipes that the other
    arguments do not name (e.g. a subset of the classes); the defaults give the
    benchmarks' usual 10-class network and its usual file.
    """
    import torch

    from sklearn_e2cm.models import resnet_small, train_classifier

    CACHE.mkdir(parents=True, exist_ok=True)
    path = resnet_cache_path(len(ytr), depth, width, epochs, seed, tag)
    torch.manual_seed(seed)
    net = resnet_small(depth=depth, width=width, in_channels=in_channels, n_classes=n_classes,
                       input_size=input_size)
    if path.exists():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.eval()
        return net, 0.0
    t0 = time.perf_counter()
    history = []
    train_classifier(net, Xtr, ytr, epochs=epochs, batch_size=128, optimizer="sgd",
                     schedule="onecycle", random_state=seed, verbose=verbose, history=history)
    elapsed = time.perf_counter() - t0
    torch.save(net.state_dict(), path)
    return net, elapsed


def plain_forward(net, X, batch_size):
    """Wall time of the plain network over X (inference mode), and its predictions."""
    import torch

    preds = []
    net.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(X), batch_size):
            preds.append(net(torch.from_numpy(X[s:s + batch_size])).argmax(1).numpy())
    return time.perf_counter() - t0, np.concatenate(preds)


def stage_times(stages, X, batch_size):
    """Per-sample wall time of every stage when run on full batches (the plain network)."""
    import torch

    times = np.zeros(len(stages))
    with torch.inference_mode():
        for s in range(0, len(X), batch_size):
            z = torch.from_numpy(X[s:s + batch_size])
            for j, st in enumerate(stages):
                t0 = time.perf_counter()
                z = st(z)
                times[j] += time.perf_counter() - t0
    return times / len(X)


def head_times(est, X, batch_size):
    """Per-sample wall time of every exit head of a fitted estimator, on full batches.

    The head's work is the stage vector (pooling) and the exit decision
    (distances, normalisation, softmax, max); the stages themselves run
    untimed. The last stage of a network ending in its classifier has no
    head (0).
    """
    import torch

    from sklearn_e2cm._routing import decide

    ad, heads = est._adapter, est._heads
    M = ad.n_stages
    times = np.zeros(M)
    with ad.activate():
        for s in range(0, len(X), batch_size):
            z = torch.from_numpy(X[s:s + batch_size])
            for j in range(M - 1 if ad.final_is_classifier else M):
                z = ad.run_stage(j, z)
                t0 = time.perf_counter()
                decide(ad, heads[j], ad.stage_vector(j, z))
                times[j] += time.perf_counter() - t0
    return times / len(X)


def machine():
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "malloc_env": malloc_env(),
    }


def malloc_env():
    """The glibc allocator settings of this process (``MALLOC_*`` variables)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}


def command(script, argv=None):
    """The command line that reproduces this run, allocator settings first."""
    import shlex
    import sys

    env = [f"{k}={v}" for k, v in malloc_env().items()]
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(env + ["python", f"benchmarks/{script}"] + args)


def write(name, payload, table_md):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float))
    (RESULTS / f"{name}.md").write_text(table_md)
    print(table_md)


def serve_configs(configs, Xtr, ytr, Xte, yte, targets, log=print):
    """Fit every configuration once, serve it at every target, measure on the test rows.

    ``configs`` maps a name to a zero-argument factory of an unfitted
    estimator. Each is fitted at ``targets[0]`` and moved to the other targets
    with ``set_operating_point`` (no refit). Returns ``(rows, fit_seconds)``.
    """
    rows, fits = [], {}
    for name, make in configs.items():
        est = make()
        t0 = time.perf_counter()
        est.set_params(flops_target=targets[0]).fit(Xtr, ytr)
        fits[name] = time.perf_counter() - t0
        extra = getattr(est, "n_epochs_", None)
        log(f"{name}: fit {fits[name]:.1f} s" + (f", epochs {extra}" if extra else ""))
        for phi in targets:
            est.set_operating_point(flops_target=phi)
            r = est.route(Xte)
            rows.append({"method": name, "flops_target": phi,
                         "test_flops": float(r.flops.mean()),
                         "test_accuracy": float(np.mean(r.y_pred == yte)),
                         "epochs": extra})
    return rows, fits


def accuracy_table(configs, rows, fits, targets):
    """Markdown rows: accuracy (FLOPs) of every configuration at every target."""
    md = ["| method | fit (s) | " + " | ".join(f"φ = {t}" for t in targets) + " |",
          "|---|---|" + "---|" * len(targets)]
    for name in configs:
        cells = [f"{r['test_accuracy']:.3f} ({r['test_flops']:.2f})"
                 for r in rows if r["method"] == name]
        md.append(f"| {name} | {fits[name]:.0f} | " + " | ".join(cells) + " |")
    return md


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def accuracy_plot(configs, rows, name):
    """PNG of test accuracy against test FLOPs per configuration; its markdown line, or []."""
    plt = pyplot()
    if plt is None:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for cname in configs:
        rs = [r for r in rows if r["method"] == cname]
        ax.plot([r["test_flops"] for r in rs], [r["test_accuracy"] for r in rs], "o-",
                label=cname)
    ax.set_xlabel("test FLOPs (base model = 1)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    plt.close(fig)
    return ["", f"![accuracy against FLOPs]({name}.png)"]
