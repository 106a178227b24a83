"""Scaling benchmark (issue: streaming fits, torch.distributed, Dask) on Fashion-MNIST.

Measures, each in fresh processes so that peak memory is per process:

* **torch**: ``EarlyExitClassMeans.fit`` of the cached ResNet-20 (width 16, see
  ``_common.trained_resnet``) from a DataLoader, in one process (all cores)
  against two processes under ``torch.distributed`` (gloo, loopback, one
  thread each, a ``DistributedSampler`` each): wall time of the fit, peak
  resident memory of every process, and whether every rank's fitted state
  equals the single process's (class statistics, thresholds, test predictions).
* **dask**: a fitted scikit-learn chain (scaler, PCA, Nystroem, logistic
  regression) fitted in memory in one process against a dask array whose
  blocks the two workers of a ``LocalCluster`` read from disk themselves:
  wall time, peak memory of the client and of each worker, equality of the
  fitted states.

Then a projection on paper, from the measured per-sample costs, of the fit
of ImageNet-1k on a ResNet-50 on 1, 8 and 64 workers.

Run: ``python benchmarks/bench_scale.py`` (``--n-train 20000`` for a quicker
run). Results: ``benchmarks/results/scale.{json,md}``.
"""

import argparse
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))


def _peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _estimator(stages, args, **kw):
    from sklearn_e2cm import EarlyExitClassMeans

    return EarlyExitClassMeans(stages=stages, metric=args.metric, flops_target=0.3,
                               random_state=0, **kw)


# ------------------------------------------------------------------------ workers
def torch_worker(args, rank, world, port, out):
    """Fit the ResNet's exits on all rows (rank None) or on this rank's shard."""
    import torch

    torch.set_num_threads(args.threads if rank is None else max(1, args.threads // world))
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from _common import load_fashion, trained_resnet
    from sklearn_e2cm.stages import split_into_stages

    Xtr, ytr, Xte, yte = load_fashion(None, args.n_test)
    net, _ = trained_resnet(Xtr, ytr, verbose=0)  # trained on the 60k rows (cached)
    Xtr, ytr = Xtr[:args.n_train], ytr[:args.n_train]
    ds = TensorDataset(torch.from_numpy(Xtr), torch.from_numpy(ytr))
    if rank is None:
        loader = DataLoader(ds, batch_size=args.batch_size)
    else:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        loader = DataLoader(ds, batch_size=args.batch_size,
                            sampler=DistributedSampler(ds, shuffle=False))
    del Xtr
    est = _estimator(split_into_stages(net), args, batch_size=args.batch_size,
                     pooling=args.pooling)
    t0 = time.perf_counter()
    est.fit(loader)
    fit_s = time.perf_counter() - t0
    pred = est.predict(Xte)
    res = dict(fit_s=fit_s, rss_mib=_peak_rss_mib(), stats=est.class_statistics_,
               thresholds=est.mixture_thresholds_, weights=est.mixture_weights_,
               pred=pred, acc=float(np.mean(pred == yte)), flops=est.expected_flops_,
               stage_flops=est.stage_flops_, n_stages=est.n_stages_,
               stats_pass_s=est._fit_times.get("class statistics pass"))
    if rank is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
    with open(out, "wb") as f:
        pickle.dump(res, f)


def _chain(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _load_rows(path, lo, hi):
    return np.load(path, mmap_mode="r")[lo:hi].astype(np.float64)


def dask_worker(args, mode, files, out):
    """Fit the scikit-learn chain's exits in memory (mode "single") or on a dask array."""
    from threadpoolctl import threadpool_limits

    y = np.load(files["y"])
    Xte = np.load(files["Xte"])
    yte = np.load(files["yte"])
    stages = _chain(files["chain"])
    res = {}
    if mode == "single":
        with threadpool_limits(args.threads):
            X = np.load(files["X"]).astype(np.float64)
            est = _estimator(stages, args, batch_size=4096)
            t0 = time.perf_counter()
            est.fit(X, y)
            res["fit_s"] = time.perf_counter() - t0
            res["rss_mib"] = _peak_rss_mib()
    else:
        import dask
        import dask.array as da
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
        n, d = len(y), int(np.load(files["X"], mmap_mode="r").shape[1])
        step = args.chunk
        blocks = [da.from_delayed(dask.delayed(_load_rows)(files["X"], lo, min(lo + step, n)),
                                  shape=(min(lo + step, n) - lo, d), dtype=np.float64)
                  for lo in range(0, n, step)]
        X = da.concatenate(blocks)
        est = _estimator(stages, args, batch_size=4096)
        t0 = time.perf_counter()
        est.fit(X, y)
        res["fit_s"] = time.perf_counter() - t0
        res["rss_mib"] = _peak_rss_mib()
        res["worker_rss_mib"] = sorted(client.run(_peak_rss_mib).values())
        client.close()
        cluster.close()
    pred = est.predict(Xte)
    res.update(stats=est.class_statistics_, thresholds=est.mixture_thresholds_,
               weights=est.mixture_weights_, pred=pred, acc=float(np.mean(pred == yte)))
    with open(out, "wb") as f:
        pickle.dump(res, f)


# ------------------------------------------------------------------------ driver
def _run(cmd, timeout):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait(procs, timeout):
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out.decode(errors="replace"))
        if p.returncode:
            raise RuntimeError(f"worker failed:\n{outs[-1][-3000:]}")
    return outs


def _same(a, b):
    """Max relative difference of the class statistics; whether thresholds/predictions agree."""
    rel = 0.0
    for ma, mb in zip(a["stats"].means(), b["stats"].means()):
        rel = max(rel, float(np.max(np.abs(ma - mb)) / max(np.max(np.abs(mb)), 1e-300)))
    if a["stats"].metric == "mahalanobis":
        for ca, cb in zip(a["stats"].covariances(), b["stats"].covariances()):
            rel = max(rel, float(np.max(np.abs(ca - cb)) / np.max(np.abs(cb))))
    return dict(stats_max_rel_diff=rel, n_samples_equal=a["stats"].n_samples == b["stats"].n_samples,
                thresholds_max_abs_diff=float(np.max(np.abs(a["thresholds"] - b["thresholds"]),
                                                     initial=0.0)),
                predictions_equal=bool(np.array_equal(a["pred"], b["pred"])))


def bench_torch(args, tmp):
    me = [sys.executable, __file__, "--worker", "torch"] + _forward_args(args)
    t0 = time.perf_counter()
    _wait([_run(me + ["--rank", "-1", "--out", str(tmp / "single.pkl")], 3600)], 3600)
    single_wall = time.perf_counter() - t0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    procs = [_run(me + ["--rank", str(r), "--port", str(port),
                        "--out", str(tmp / f"rank{r}.pkl")], 3600) for r in range(2)]
    _wait(procs, 3600)
    dist_wall = time.perf_counter() - t0
    single = pickle.load(open(tmp / "single.pkl", "rb"))
    ranks = [pickle.load(open(tmp / f"rank{r}.pkl", "rb")) for r in range(2)]
    return dict(
        single=dict(fit_s=single["fit_s"], rss_mib=single["rss_mib"], acc=single["acc"],
                    flops=single["flops"], process_wall_s=single_wall),
        distributed=[dict(fit_s=r["fit_s"], rss_mib=r["rss_mib"], acc=r["acc"]) for r in ranks],
        distributed_process_wall_s=dist_wall,
        equal=[_same(r, single) for r in ranks],
        per_sample_s=single["stats_pass_s"] / args.n_train,
        flops_per_sample=float(np.sum(single["stage_flops"])),
        n_stages=int(single["n_stages"]),
    )


def bench_dask(args, tmp):
    from _common import load_fashion
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    Xtr, ytr, Xte, yte = load_fashion(args.n_train, args.n_test)
    Xtr, Xte = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
    sc = StandardScaler().fit(Xtr)
    pca = PCA(50, random_state=0).fit(sc.transform(Xtr))
    Z = pca.transform(sc.transform(Xtr))
    nys = Nystroem(n_components=500, random_state=0).fit(Z)
    clf = LogisticRegression(max_iter=200).fit(nys.transform(Z), ytr)
    files = {k: str(tmp / f"{k}.npy") for k in ("X", "y", "Xte", "yte")}
    files["chain"] = str(tmp / "chain.pkl")
    np.save(files["X"], Xtr)
    np.save(files["y"], ytr)
    np.save(files["Xte"], Xte)
    np.save(files["yte"], yte)
    with open(files["chain"], "wb") as f:
        pickle.dump([sc, pca, nys, clf], f)
    with open(tmp / "files.json", "w") as f:
        json.dump(files, f)
    out = {}
    for mode in ("single", "cluster"):
        cmd = [sys.executable, __file__, "--worker", "dask", "--mode", mode,
               "--files", str(tmp / "files.json"), "--out", str(tmp / f"dask_{mode}.pkl")]
        t0 = time.perf_counter()
        _wait([_run(cmd + _forward_args(args), 3600)], 3600)
        wall = time.perf_counter() - t0
        res = pickle.load(open(tmp / f"dask_{mode}.pkl", "rb"))
        res["process_wall_s"] = wall
        out[mode] = res
    eq = _same(out["cluster"], out["single"])
    keep = ("fit_s", "rss_mib", "worker_rss_mib", "acc", "process_wall_s")
    return {mode: {k: v for k, v in r.items() if k in keep} for mode, r in out.items()} | {
        "equal": eq}


def projection(torch_res):
    """ImageNet-1k, ResNet-50, 1 / 8 / 64 workers, from this machine's measured costs."""
    N, K = 1_281_167, 1000
    flops_r50 = 8.2e9  # 4.1 G multiply-adds per 224x224 image, a multiply-add counted as 2
    flop_rate = torch_res["flops_per_sample"] / torch_res["per_sample_s"]  # measured here
    fwd_s = flops_r50 / flop_rate  # one image's forward pass on one worker like this one
    decode_s = 5e-3  # ASSUMED: JPEG decode + resize per image per core (not measured here)
    # exits after the stem and the 16 bottleneck blocks: (channels, spatial) of each output
    blocks = [(64, 56)] + [(256, 56)] * 3 + [(512, 28)] * 4 + [(1024, 14)] * 6 + [(2048, 7)] * 3
    D_avg4 = [c * 16 for c, _ in blocks]      # avg4 pooling (Euclidean exits)
    D_gap = [c for c, _ in blocks]            # global average pooling (whitened exits)
    M = len(blocks) + 1                       # + the base classifier
    allreduce_euclid = 8 * sum(K * d + K + 1 for d in D_avg4)
    allreduce_white = 8 * sum(K * d + K + 1 + d * d for d in D_gap)
    gather = N * (M * (8 + 8) + 8)            # conf (float64), pred (int64) per stage, label
    bw = 10e9 / 8                             # ASSUMED: 10 Gbit/s between workers
    rows = []
    for W in (1, 8, 64):
        per_worker_rows = N / W
        load = per_worker_rows * decode_s / 8     # 8 loader processes per worker
        fwd = per_worker_rows * fwd_s
        comm = 0.0 if W == 1 else 2 * max(allreduce_euclid, allreduce_white) / bw + gather / bw
        rows.append(dict(workers=W, load_h=load / 3600, forward_h=fwd / 3600,
                         comm_s=comm, total_h=(max(load, fwd) + comm) / 3600))
    return dict(flop_rate_gflops=flop_rate / 1e9, resnet50_forward_s=fwd_s,
                allreduce_bytes_euclidean_avg4=allreduce_euclid,
                allreduce_bytes_whitened_gap=allreduce_white, gather_bytes=gather, rows=rows)


def _forward_args(args):
    out = ["--n-train", str(args.n_train), "--n-test", str(args.n_test), "--metric",
           args.metric, "--threads", str(args.threads), "--batch-size", str(args.batch_size),
           "--chunk", str(args.chunk)]
    if args.pooling:
        out += ["--pooling", args.pooling]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--metric", default="mahalanobis")
    p.add_argument("--pooling", default="avg4")
    p.add_argument("--threads", type=int, default=2, help="threads of the single process")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--chunk", type=int, default=10000, help="rows per dask block")
    p.add_argument("--parts", nargs="+", default=["torch", "dask"])
    p.add_argument("--name", default="scale")
    p.add_argument("--worker")
    p.add_argument("--rank", type=int)
    p.add_argument("--port")
    p.add_argument("--out")
    p.add_argument("--mode")
    p.add_argument("--files")
    args = p.parse_args()
    if args.worker == "torch":
        rank = None if args.rank < 0 else args.rank
        return torch_worker(args, rank, 2, args.port, args.out)
    if args.worker == "dask":
        with open(args.files) as f:
            files = json.load(f)
        return dask_worker(args, args.mode, files, args.out)

    from _common import machine, write

    payload = dict(machine=machine(), args={k: v for k, v in vars(args).items()
                                            if v is not None})
    lines = [f"# Scaling: Fashion-MNIST, {args.n_train} training rows\n",
             f"`python benchmarks/bench_scale.py --n-train {args.n_train}` "
             f"({payload['machine']['cpu_count']} cores).\n"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "torch" in args.parts:
            t = payload["torch"] = bench_torch(args, tmp)
            lines += [
                f"\n## torch: ResNet-20 (w16), metric={args.metric}, pooling={args.pooling}\n",
                "| run | fit wall (s) | process wall (s) | peak RSS per process (MiB) |",
                "|---|---|---|---|",
                f"| 1 process, {args.threads} threads | {t['single']['fit_s']:.1f} | "
                f"{t['single']['process_wall_s']:.1f} | {t['single']['rss_mib']:.0f} |",
                f"| 2 processes (gloo), {max(1, args.threads // 2)} thread each | "
                + " / ".join(f"{r['fit_s']:.1f}" for r in t["distributed"])
                + f" | {t['distributed_process_wall_s']:.1f} | "
                + " / ".join(f"{r['rss_mib']:.0f}" for r in t["distributed"]) + " |",
                "", f"Every rank equal to one process: {t['equal']}", "",
                f"Test accuracy {t['single']['acc']:.4f} at expected FLOPs "
                f"{t['single']['flops']:.3f}.", ""]
            pr = payload["projection"] = projection(t)
            lines += [
                "\n## Projection: ImageNet-1k, ResNet-50 (on paper)\n",
                f"Measured here: {pr['flop_rate_gflops']:.1f} GFLOP/s of ResNet-20 forward in "
                f"the statistics pass, so one ResNet-50 image ({8.2:.1f} GFLOPs) takes "
                f"{pr['resnet50_forward_s'] * 1e3:.0f} ms per worker like this one. Assumed "
                "(not measured): 5 ms of JPEG decoding per image and loader core, 8 loader "
                "cores per worker, 10 Gbit/s between workers.",
                f"All-reduce: {pr['allreduce_bytes_euclidean_avg4'] / 2**20:.0f} MiB "
                "(Euclidean exits on avg4-pooled outputs after the stem and the 16 blocks) or "
                f"{pr['allreduce_bytes_whitened_gap'] / 2**20:.0f} MiB (whitened exits on "
                "globally pooled outputs); gathered tuning arrays: "
                f"{pr['gather_bytes'] / 2**20:.0f} MiB on every worker.", "",
                "| workers | data loading (h) | forward (h) | communication (s) | fit (h) |",
                "|---|---|---|---|---|"]
            lines += [f"| {r['workers']} | {r['load_h']:.2f} | {r['forward_h']:.2f} | "
                      f"{r['comm_s']:.1f} | {r['total_h']:.2f} |" for r in pr["rows"]]
            lines.append("\nOne forward pass over the training set (the statistics pass; "
                         "the whitened exits' tuning reads the cache) dominates; the "
                         "collectives are seconds.")
        if "dask" in args.parts:
            dk = payload["dask"] = bench_dask(args, tmp)
            lines += [
                "\n## dask: scaler + PCA(50) + Nystroem(500) + logistic regression\n",
                "| run | fit wall (s) | process wall (s) | peak RSS (MiB) |", "|---|---|---|---|",
                f"| in memory, 1 process | {dk['single']['fit_s']:.1f} | "
                f"{dk['single']['process_wall_s']:.1f} | {dk['single']['rss_mib']:.0f} |",
                f"| dask array, LocalCluster 2 workers | {dk['cluster']['fit_s']:.1f} | "
                f"{dk['cluster']['process_wall_s']:.1f} | client "
                f"{dk['cluster']['rss_mib']:.0f}, workers "
                + " / ".join(f"{v:.0f}" for v in dk["cluster"]["worker_rss_mib"]) + " |",
                "", f"Equal to the in-memory fit: {dk['equal']}", ""]
    write(args.name, payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
