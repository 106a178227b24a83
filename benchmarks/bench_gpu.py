"""Routed inference and fitting on the device the network runs on (GPU or CPU).

For a trained ResNet-20 (width 16) on Fashion-MNIST, and a light 6-block CNN,
wrapped in EarlyExitClassMeans with the paper's Euclidean exits and with
whitened exits on 4x4 average-pooled stage outputs, this measures on one
device (CUDA when available, else the CPU; the results name it):

* full network vs routed ``predict`` wall time on the test images at several
  batch sizes and FLOP targets;
* the *ideal* routed time: the plain network's own per-stage times on full
  batches, weighted by the fraction of rows that reach each stage, plus the
  exit heads' own time (stage vector and decision) for the rows that pass
  each active head;
* ``fit`` against one plain forward pass over the training images.

Every figure is the median of ``--rounds`` interleaved rounds (full pass,
per-stage times, head times, each routed target) after one warm-up round,
with the device synchronised around every timed call.

Run: ``python benchmarks/bench_gpu.py`` (full grid; on a 2-core CPU use e.g.
``--batch-sizes 512 --targets 0.15 0.3 0.5``). Needs the Debian package
``dataset-fashion-mnist``. Results: ``benchmarks/results/gpu_<device>.{json,md}``.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, load_fashion, machine, trained_resnet, write  # noqa: E402


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def light_cnn(seed=0):
    """A light 6-block CNN for 28x28 images (5 conv blocks and a linear head)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(1, 16, 1), block(16, 16, 2), block(16, 32, 1), block(32, 32, 2),
                         block(32, 64, 2), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                         nn.Linear(64, 10)))


def trained_light_cnn(Xtr, ytr, epochs, seed=0):
    import torch

    from sklearn_e2cm.models import train_classifier

    from _common import CACHE

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"light_cnn_e{epochs}_s{seed}_n{len(ytr)}.pt"
    net = light_cnn(seed)
    if path.exists():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval()
    train_classifier(net, Xtr, ytr, epochs=epochs, batch_size=128, optimizer="sgd",
                     schedule="onecycle", random_state=seed, verbose=1)
    torch.save(net.state_dict(), path)
    return net.eval()


def _batches(X, bs):
    return [X[s:s + bs] for s in range(0, X.shape[0], bs)]


def full_pass(stages, X, bs):
    """The plain network, batch by batch, predictions left on the device."""
    import torch

    with torch.inference_mode():
        return [stages(xb).argmax(1) for xb in _batches(X, bs)]


def stage_times(stages, X, bs, device):
    """Per-sample time of every stage on full batches."""
    import torch

    times = np.zeros(len(stages))
    with torch.inference_mode():
        for xb in _batches(X, bs):
            z = xb
            for j, st in enumerate(stages):
                dt, z = _timed(lambda st=st, z=z: st(z), device)
                times[j] += dt
    return times / X.shape[0]


def head_times(est, X, bs, device):
    """Per-sample time of every exit head (stage vector + decision) on full batches."""
    ad, heads = est._adapter, est._heads
    M = ad.n_stages
    times = np.zeros(M)
    with ad.activate():
        for xb in _batches(X, bs):
            z = xb
            for j in range(M - 1 if ad.final_is_classifier else M):
                z = ad.run_stage(j, z)
                dt, _ = _timed(lambda j=j, z=z: heads[j].decide(ad.stage_vector(j, z)), device)
                times[j] += dt
    return times / X.shape[0]


def ideal_time(res, est, st, ht, n):
    """Stage time of the rows reaching each stage, plus the time of the heads they passed."""
    M = est.n_stages_
    reach = np.array([np.mean(res.exit_stage >= j) for j in range(M)])
    active = np.zeros(M, bool)
    active[:M - 1] = est.mixture_thresholds_.min(axis=0) < 1.0
    active[M - 1] = not est._adapter.final_is_classifier
    stages = float(reach @ st) * n
    heads = float((reach * active) @ ht) * n
    return stages, heads


def _median(values):
    return float(np.median(values))


def measure_network(name, net, Xtr, ytr, Xte, yte, args, device):
    import torch

    from sklearn_e2cm import EarlyExitClassMeans
    from sklearn_e2cm.stages import split_into_stages

    stages = split_into_stages(net.to(device), torch.from_numpy(Xte[:2]).to(device))
    Xtr_d = torch.from_numpy(Xtr).to(device)
    Xte_d = torch.from_numpy(Xte).to(device)
    configs = {"euclidean": dict(), "mahalanobis avg4": dict(metric="mahalanobis",
                                                              pooling="avg4")}
    rows, fits = [], []
    for label, kw in configs.items():
        est = EarlyExitClassMeans(stages=stages, flops_target=args.targets[0],
                                  batch_size=args.fit_batch_size, device=device,
                                  random_state=0, **kw)
        fit_t, fwd_t = [], []
        for _ in range(args.fit_rounds if "fit" in args.parts else 0):
            fwd_t.append(_timed(lambda: full_pass(stages, Xtr_d, args.fit_batch_size),
                                device)[0])
            fit_t.append(_timed(lambda: est.fit(Xtr_d, ytr), device)[0])
        if "fit" in args.parts:
            fits.append({"network": name, "metric": label, "fit_s": _median(fit_t),
                         "forward_s": _median(fwd_t),
                         "ratio": _median(np.array(fit_t) / np.array(fwd_t)),
                         "breakdown": dict(est._fit_times)})
        else:
            est.fit(Xtr_d, ytr)
        points = {t: None for t in args.targets}
        for bs in (args.batch_sizes if "routing" in args.parts else []):
            est.set_params(batch_size=bs)
            samples = {t: {"wall": [], "ideal": [], "heads": []} for t in args.targets}
            full = []
            for r in range(args.rounds + 1):  # round 0 warms up
                t_full = _timed(lambda: full_pass(stages, Xte_d, bs), device)[0]
                st = stage_times(stages, Xte_d, bs, device)
                ht = head_times(est, Xte_d, bs, device)
                for t in args.targets:
                    if points[t] is None:
                        est.set_operating_point(flops_target=t)
                        points[t] = (est.mixture_thresholds_, est.mixture_weights_)
                    est.set_operating_point(flops_target=t)
                    wall, res = _timed(lambda: est.route(Xte_d), device)
                    ideal, heads = ideal_time(res, est, st, ht, Xte.shape[0])
                    if r:
                        s = samples[t]
                        s["wall"].append(wall)
                        s["ideal"].append(ideal)
                        s["heads"].append(heads)
                        s["acc"] = float(np.mean(res.y_pred == yte))
                        s["flops"] = float(res.flops.mean())
                if r:
                    full.append(t_full)
            for t in args.targets:
                s = samples[t]
                wall, ideal, heads = (np.array(s[k]) for k in ("wall", "ideal", "heads"))
                rows.append({
                    "network": name, "metric": label, "batch": bs, "phi": t,
                    "test_flops": s["flops"], "test_acc": s["acc"],
                    "full_s": _median(full), "routed_s": _median(wall),
                    "routed_over_full": _median(wall / np.array(full)),
                    "ideal_s": _median(ideal), "heads_s": _median(heads),
                    "routed_over_ideal": _median(wall / ideal),
                    "routed_over_ideal_plus_heads": _median(wall / (ideal + heads)),
                })
                print(rows[-1], flush=True)
    return rows, fits


def main(argv=None):
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--targets", type=float, nargs="+", default=[0.15, 0.3, 0.5])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--fit-rounds", type=int, default=5)
    p.add_argument("--fit-batch-size", type=int, default=1024)
    p.add_argument("--networks", nargs="+", default=["resnet20", "light_cnn"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--parts", nargs="+", choices=["routing", "fit"], default=["routing", "fit"],
                   help="what to measure")
    p.add_argument("--name", default=None, help="results file name (default: gpu_<device>)")
    args = p.parse_args(argv)
    from sklearn_e2cm._backend import resolve_device

    device = resolve_device(args.device)
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU ({torch.get_num_threads()} threads)")
    Xtr, ytr, Xte, yte = load_fashion(args.n_train, args.n_test)
    Xtr, Xte = Xtr.reshape(-1, 1, 28, 28), Xte.reshape(-1, 1, 28, 28)
    rows, fits = [], []
    for name in args.networks:
        if name == "resnet20":
            net, _ = trained_resnet(Xtr, ytr, epochs=args.epochs)
        else:
            net = trained_light_cnn(Xtr, ytr, epochs=args.epochs)
        r, f = measure_network(name, net, Xtr, ytr, Xte, yte, args, device)
        rows += r
        fits += f
    lines = [f"# Routed inference and fit on {dev_name}", "",
             f"Command: `{command('bench_gpu.py', argv)}`  ",
             f"Device: **{dev_name}**; torch {torch.__version__}; routing: medians of "
             f"{args.rounds} interleaved rounds after a warm-up; fit: medians of {args.fit_rounds} "
             "rounds, each a forward pass then a fit; device synchronised around every timed call.",
             ""]
    if rows:
        lines += ["| network | metric | batch | φ | test FLOPs | test acc | full (s) | routed (s) | "
                  "routed / full | routed / ideal | routed / (ideal + heads) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['metric']} | {r['batch']} | {r['phi']:.2f} | "
            f"{r['test_flops']:.3f} | {r['test_acc']:.4f} | {r['full_s']:.3f} | "
            f"{r['routed_s']:.3f} | {r['routed_over_full']:.2f} | {r['routed_over_ideal']:.2f} | "
            f"{r['routed_over_ideal_plus_heads']:.2f} |")
    if fits:
        lines += ["", "| network | metric | fit (s) | forward over the training set (s) | "
                  "fit / forward (median of per-round ratios) |", "|---|---|---|---|---|"]
    for f in fits:
        lines.append(f"| {f['network']} | {f['metric']} | {f['fit_s']:.2f} | "
                     f"{f['forward_s']:.2f} | {f['ratio']:.2f} |")
    name = args.name or f"gpu_{device.type}"
    write(name, {"device": dev_name, "machine": machine(), "args": vars(args), "routing": rows,
                 "fit": fits}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
