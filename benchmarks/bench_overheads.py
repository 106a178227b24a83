"""Overheads of E²CM exits: per-exit FLOPs and class-means memory, beside the paper's figures.

For every network, class count, stem convention and pooling, each exit (every stage but the
classifier) is measured through the package itself: the network is split by
``split_into_stages`` and measured by ``TorchStages`` (stage FLOPs by ``FlopCounterMode``,
stage-vector sizes and pooling FLOPs), an exit's FLOPs are ``head_flops(D, K)`` plus its
pooling (as ``EarlyExitClassMeans.exit_flops_``), and its bytes are what an ``ExitHead`` of
that size holds (float32 means, norms and inverse scales, float64 scales). Where the class
statistics fit in ``--fit-budget-mb``, an ``EarlyExitClassMeans`` is also fitted on random
images with random labels (every class present; no training: only the heads' sizes matter)
and its ``exit_flops_`` and heads' bytes must equal the measured ones.

Networks (random weights): torchvision's ResNet-18, ResNet-152 and WideResNet-101-2 on
32x32 inputs with 10 and 100 classes, with torchvision's stem (7x7 stride-2 convolution and
max pooling) and with the CIFAR stem (3x3 stride-1 convolution, no max pooling); and
MobileNetV3-Large and EfficientNet-B0 on 224x224 inputs with 1000 classes; each without
pooling and with the paper's (8, 2, 2) max pooling. MB are 2**20 bytes (the paper's 1.87 MB
for 1000 classes of 10x7x7 float32 means is 1.869 MiB).

Run: ``python benchmarks/bench_overheads.py`` (needs torchvision:
``pip install -e ".[bench]"``; CPU, a few minutes); ``--quick`` measures two tiny generated
networks in seconds (no torchvision). Results: ``benchmarks/results/overheads.{json,md}``.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 2.0**20
POOLINGS = {"none": None, "max(8,2,2)": ("max", (8, 2, 2))}

# The paper's figures (Görmez, Dasari & Koyuncu, §IV "Overheads" and the fine-tuning
# experiment); None where the paper gives none.
PAPER = {
    # (model, n_classes): (FLOPs per exit, MB per exit, MB in total, model MB)
    ("resnet18", 10): (None, 0.242, 1.94, 42.17),
    ("resnet152", 10): (0.007, 0.417, 20.85, 222.0),
    ("wide_resnet101_2", 10): (0.007, 0.43, 15.05, 476.0),
    ("resnet152", 100): (0.057, 4.17, None, None),
    ("wide_resnet101_2", 100): (0.057, None, None, None),
    # 224x224, 1000 classes, one exit at 80x14x14 pooled by (8, 2, 2) to 10x7x7
    ("mobilenet_v3_large", 1000): (0.001, 1.87, None, 21.5),
    ("efficientnet_b0", 1000): (0.001, 1.87, None, 16.9),
}


# ----------------------------------------------------------------------------- networks
def cifar_stem(model):
    """The CIFAR convention: a 3x3 stride-1 first convolution and no max pooling."""
    from torch import nn

    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def torchvision_configs():
    """(name, model factory, input shape, n_classes, stem) of the full benchmark."""
    import torchvision.models as tvm

    configs = []
    for name in ("resnet18", "resnet152", "wide_resnet101_2"):
        for K in (10, 100):
            for stem in ("torchvision", "cifar"):
                def make(name=name, K=K, stem=stem):
                    m = getattr(tvm, name)(weights=None, num_classes=K)
                    return cifar_stem(m) if stem == "cifar" else m
                configs.append((name, make, (3, 32, 32), K, stem))
    for name in ("mobilenet_v3_large", "efficientnet_b0"):
        configs.append((name, lambda name=name: getattr(tvm, name)(weights=None,
                                                                   num_classes=1000),
                        (3, 224, 224), 1000, "imagenet"))
    return configs


def quick_configs():
    """Two tiny generated networks (no torchvision): a CIFAR-style ResNet-8 and a plain CNN."""
    import torch
    from torch import nn

    from sklearn_e2cm.models import resnet_small

    def cnn(K):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, K)))

    return [("resnet8_w8", lambda: resnet_small(8, 8, 3, 3, 16), (3, 16, 16), 3, "cifar"),
            ("cnn3", lambda: cnn(5), (3, 16, 16), 5, "cifar")]


# -------------------------------------------------------------------------- measurement
def _head_bytes(K, D, build_limit):
    """Bytes an ExitHead of K x D float32 means with eq. 4 scales holds (built when small)."""
    from sklearn_e2cm.exits.class_means import ExitHead

    if K * D <= build_limit:
        head = ExitHead(np.zeros((K, D), np.float32), scale=np.ones(K), dtype=np.float32)
        return head.nbytes(), True
    # too large to build here: what a built head holds, from its own size rule (float32
    # means, norms and inverse scales) plus its float64 scales, checked on every built head
    return ExitHead.nbytes_for(K, D, np.float32), False


def measure(model, input_shape, K, pooling, build_limit=20_000_000):
    """Per-exit FLOPs and bytes of E²CM on ``model``, through the package's own code."""
    import torch

    from sklearn_e2cm.exits.class_means import head_flops
    from sklearn_e2cm.stages import TorchStages

    model.eval()
    adapter = TorchStages(model, pooling=pooling)
    with torch.inference_mode():
        adapter.fit(np.zeros((1, *input_shape), np.float32))
    base = float(adapter.stage_flops_.sum())
    exits = []
    for j in range(adapter.n_stages - 1):  # the last stage is the network's classifier
        D = int(adapter.vector_dims_[j])
        flops = head_flops(D, K, "euclidean", True) + float(adapter.vector_flops_[j])
        nbytes, built = _head_bytes(K, D, build_limit)
        exits.append({
            "stage": adapter.stage_names_[j],
            "output_shape": list(adapter.output_shapes_[j]),
            "vector_shape": list(adapter.pooled_shapes_[j]),
            "D": D,
            "flops": flops,
            "flops_fraction": flops / base,
            "means_bytes": 4 * K * D,
            "head_bytes": int(nbytes),
            "head_built": built,
        })
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"base_flops": base, "model_bytes": int(params), "exits": exits,
            "stage_flops": adapter.stage_flops_.tolist()}


def fit_check(model, input_shape, K, pooling, result, seed=0):
    """Fit EarlyExitClassMeans on 2K random images (random labels, every class present) and
    check its exit FLOPs and heads' bytes against ``result``."""
    from sklearn_e2cm import EarlyExitClassMeans

    rng = np.random.RandomState(seed)
    X = rng.standard_normal((2 * K, *input_shape)).astype(np.float32)
    y = rng.permutation(np.tile(np.arange(K), 2))
    est = EarlyExitClassMeans(stages=model, pooling=pooling, flops_target=None, batch_size=64,
                              final_classifier=True, random_state=seed)
    with warnings.catch_warnings():  # random weights: the network is at chance
        warnings.simplefilter("ignore")
        est.fit(X, y)
    ex = result["exits"]
    frac = est.exit_flops_[:-1] / est.stage_flops_.sum()
    held = [h.nbytes() for h in est._heads[:-1]]
    ok_flops = np.allclose(frac, [e["flops_fraction"] for e in ex], rtol=1e-12, atol=0)
    ok_bytes = held == [e["head_bytes"] for e in ex]
    if not (ok_flops and ok_bytes):
        raise AssertionError(
            f"fitted estimator disagrees with the measurement: FLOPs {frac} vs "
            f"{[e['flops_fraction'] for e in ex]}, bytes {held} vs "
            f"{[e['head_bytes'] for e in ex]}")
    return {"memory_overhead_bytes_": int(est.memory_overhead_bytes_),
            "heads_bytes": int(sum(h.nbytes() for h in est._heads if h is not None))}


def summarise(name, K, stem, pooling, r):
    ex = r["exits"]
    fr = np.array([e["flops_fraction"] for e in ex])
    mb = np.array([e["means_bytes"] for e in ex]) / MIB
    held = np.array([e["head_bytes"] for e in ex]) / MIB
    row = {
        "model": name, "n_classes": K, "stem": stem, "pooling": pooling, "n_exits": len(ex),
        "flops_per_exit_mean": float(fr.mean()), "flops_per_exit_min": float(fr.min()),
        "flops_per_exit_max": float(fr.max()), "flops_all_exits": float(fr.sum()),
        "means_mb_per_exit_mean": float(mb.mean()), "means_mb_total": float(mb.sum()),
        "head_mb_total": float(held.sum()),
        "model_mb": r["model_bytes"] / MIB,
        "means_fraction_of_model": float(mb.sum() / (r["model_bytes"] / MIB)),
        "base_gflops": r["base_flops"] / 1e9,
    }
    # the paper's fine-tuning exit: an 80-channel 14x14 output, the one nearest 20 % of the
    # network's FLOPs
    cum = np.cumsum(r["stage_flops"]) / r["base_flops"]
    cands = [j for j, e in enumerate(ex) if e["output_shape"] == [80, 14, 14]]
    if cands:
        j = min(cands, key=lambda i: abs(cum[i] - 0.2))
        row.update(paper_exit=ex[j]["stage"], paper_exit_depth=float(cum[j]),
                   paper_exit_flops=ex[j]["flops_fraction"],
                   paper_exit_means_mb=ex[j]["means_bytes"] / MIB,
                   paper_exit_fraction_of_model=ex[j]["means_bytes"] / r["model_bytes"])
    paper = PAPER.get((name, K))
    # the paper's CIFAR figures are without pooling; its ImageNet ones are one exit's
    if paper is not None and stem != "imagenet" and pooling == "none":
        row["paper"] = dict(zip(("flops_per_exit", "mb_per_exit", "mb_total", "model_mb"),
                                paper))
    return row


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def markdown(rows, quick, elapsed):
    lines = [
        "# Overheads of E²CM exits" + (" (quick smoke run, tiny generated networks)"
                                       if quick else ""),
        "",
        "Random weights; every stage but the classifier carries an exit. FLOPs are "
        "fractions of the base network (a multiply-add counts 2, as the package counts "
        "them); memory is the float32 class means, in MB of 2**20 bytes (`means`), and "
        "what the exit heads hold in all (`held`: means, norms, scales). `paper` columns: "
        "the paper's figure for the same network and class count without pooling (— where "
        "it gives none; its ImageNet figures are for one exit, in the second table). "
        "Every exit is counted, the one after the stem included. "
        f"`python benchmarks/bench_overheads.py{' --quick' if quick else ''}`, "
        f"{elapsed:.0f} s.",
        "",
        "| model | K | stem | pooling | exits | FLOPs/exit mean (min–max) | paper | "
        "means MB/exit | paper | means MB total | paper | held MB total | model MB | "
        "paper | total / model |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r.get("paper", {})
        lines.append(
            f"| {r['model']} | {r['n_classes']} | {r['stem']} | {r['pooling']} | "
            f"{r['n_exits']} | {r['flops_per_exit_mean']:.5f} ({r['flops_per_exit_min']:.5f}–"
            f"{r['flops_per_exit_max']:.5f}) | {_fmt(p.get('flops_per_exit'), '.3f')} | "
            f"{r['means_mb_per_exit_mean']:.3f} | {_fmt(p.get('mb_per_exit'), '.3f')} | "
            f"{r['means_mb_total']:.2f} | {_fmt(p.get('mb_total'), '.2f')} | "
            f"{r['head_mb_total']:.2f} | {r['model_mb']:.2f} | "
            f"{_fmt(p.get('model_mb'), '.2f')} | {r['means_fraction_of_model']:.3f} |")
    single = [r for r in rows if "paper_exit" in r]
    if single:
        lines += [
            "",
            "The paper's fine-tuning exit (one exit, an 80x14x14 output near 20 % of the "
            "FLOPs, 1000 classes; paper: 0.001 FLOPs and 1.87 MB with (8, 2, 2) pooling):",
            "",
            "| model | pooling | exit | FLOPs up to the exit | FLOPs | paper | means MB | "
            "paper | model MB | paper | fraction of model |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in single:
            paper = PAPER.get((r["model"], r["n_classes"]), (None,) * 4)
            pooled = r["pooling"] != "none"
            lines.append(
                f"| {r['model']} | {r['pooling']} | {r['paper_exit']} | "
                f"{r['paper_exit_depth']:.3f} | {r['paper_exit_flops']:.4f} | "
                f"{_fmt(paper[0] if pooled else None, '.3f')} | "
                f"{r['paper_exit_means_mb']:.3f} | {_fmt(paper[1] if pooled else None, '.2f')} | "
                f"{r['model_mb']:.2f} | {_fmt(paper[3], '.2f')} | "
                f"{r['paper_exit_fraction_of_model']:.3f} |")
    checked = [r for r in rows if r.get("fit_check")]
    lines += ["", f"{len(checked)} of {len(rows)} rows were also fitted "
              "(`EarlyExitClassMeans` on random images): their `exit_flops_` and heads' bytes "
              "equal the measured ones."]
    return "\n".join(lines) + "\n"


def _row(rows, model, K, stem, pooling="none"):
    for r in rows:
        if (r["model"], r["n_classes"], r["stem"], r["pooling"]) == (model, K, stem, pooling):
            return r
    return None


def _blocks_mb(row, itemsize=4):
    """Mean class-means MB over the residual blocks' exits only (the paper's count)."""
    mb = [e["means_bytes"] / 4 * itemsize / MIB for e in row["exits"]
          if e["stage"].startswith("layer")]
    return float(np.mean(mb)), len(mb)


def differences(rows, close=0.05):
    """Why the paper's CIFAR and ImageNet figures differ from ours: one sentence each,
    computed from the measured rows (empty when the rows are not the full benchmark's).
    A figure "matches" when it is within ``close`` (relative) of ours."""
    out = []
    r18t, r18c = _row(rows, "resnet18", 10, "torchvision"), _row(rows, "resnet18", 10, "cifar")
    if r18t is None or r18c is None:
        return out
    names = {"resnet18": "ResNet-18", "resnet152": "ResNet-152",
             "wide_resnet101_2": "WideResNet-101"}
    models = ("resnet152", "wide_resnet101_2", "resnet18")
    between = all(_blocks_mb(_row(rows, m, 10, "torchvision"))[0] < PAPER[(m, 10)][1]
                  < _blocks_mb(_row(rows, m, 10, "cifar"))[0] for m in models)
    ratio = r18c["means_mb_per_exit_mean"] / r18t["means_mb_per_exit_mean"]
    out.append(
        "* **Stem convention.** torchvision's stride-2 stem and max pooling leave every later "
        "feature map with a quarter of the side the CIFAR stem leaves, so the class means "
        f"differ {ratio:.0f}x between the conventions (ResNet-18, 10 classes: "
        f"{r18t['means_mb_per_exit_mean']:.3f} against {r18c['means_mb_per_exit_mean']:.3f} "
        "MB per exit); the paper's figures lie "
        + ("between the two for all three networks, matching neither."
           if between else "outside that range for some network (see the table)."))
    parts, matches = [], {}
    for m in models:
        t, c = _row(rows, m, 10, "torchvision"), _row(rows, m, 10, "cifar")
        paper = PAPER[(m, 10)][1]
        cand = {"float32, torchvision stem": _blocks_mb(t)[0],
                "float32, CIFAR stem": _blocks_mb(c)[0],
                "float64, torchvision stem": _blocks_mb(t, 8)[0],
                "float64, CIFAR stem": _blocks_mb(c, 8)[0]}
        matches[m] = [f"{k} ({v:.3f}, {100 * (paper / v - 1):+.1f} %)"
                      for k, v in cand.items() if abs(paper / v - 1) <= close]
        parts.append(f"{names[m]} {paper} against " + " / ".join(
            f"{v:.3f}" for v in cand.values()))
    out.append(
        "* **Precision.** Per residual block (the paper's average), the paper's MB per exit "
        "against ours in float32 on torchvision's / the CIFAR stem and in float64 on the "
        "same two: " + "; ".join(parts) + ". Within "
        f"{100 * close:.0f} %: " + "; ".join(
            f"{names[m]}: " + (", ".join(v) if v else "none") for m, v in matches.items())
        + ". The package holds float32 means (the network's dtype).")
    t152, w101 = _row(rows, "resnet152", 10, "torchvision"), _row(rows, "wide_resnet101_2", 10,
                                                                  "torchvision")
    out.append(
        "* **Number of exits.** The paper multiplies by 50 / 35 / 8 blocks; torchvision's "
        f"ResNet-152 / WideResNet-101-2 / ResNet-18 have {_blocks_mb(t152)[1]} / "
        f"{_blocks_mb(w101)[1]} / {_blocks_mb(r18t)[1]} residual blocks, and we also place "
        f"an exit after the stem ({t152['n_exits']} / {w101['n_exits']} / {r18t['n_exits']} "
        "exits).")
    out.append(
        "* **Model size.** The paper's 222 / 476 / 42.17 MB against torchvision's "
        "ResNet-152 / WideResNet-101-2 / ResNet-18 float32 parameters with a 10-class head: "
        f"{t152['model_mb']:.2f} / {w101['model_mb']:.2f} / {r18t['model_mb']:.2f} MB "
        "(the CIFAR stem changes them by under 0.1 MB).")
    fl = [_row(rows, m, 10, st)["flops_per_exit_mean"]
          for m in ("resnet152", "wide_resnet101_2") for st in ("torchvision", "cifar")]
    c100 = [_row(rows, m, 100, st)["flops_per_exit_mean"]
            for m in ("resnet152", "wide_resnet101_2") for st in ("torchvision", "cifar")]
    ours_ratio = np.mean(c100) / np.mean(fl)
    out.append(
        "* **FLOPs per exit.** An exit costs about 2·K·D FLOPs and D scales with the feature "
        "map as the network's FLOPs do, so the fraction hardly depends on the stem: "
        f"{min(fl):.5f}–{max(fl):.5f} for ResNet-152 and WideResNet-101 with 10 classes and "
        f"{min(c100):.5f}–{max(c100):.5f} with 100, {0.007 / max(fl):.0f}–"
        f"{0.007 / min(fl):.0f}x below the paper's 0.007 and {0.057 / max(c100):.0f}–"
        f"{0.057 / min(c100):.0f}x below its 0.057 (paper's 100/10 ratio "
        f"{0.057 / 0.007:.1f}, ours {ours_ratio:.1f}): the paper counts the exits or the "
        "base network in a way it does not describe.")
    for m, label in (("efficientnet_b0", "EfficientNet-B0"),
                     ("mobilenet_v3_large", "MobileNetV3-Large")):
        r = _row(rows, m, 1000, "imagenet", "max(8,2,2)")
        if r is not None and "paper_exit" in r:
            out.append(
                f"* **{label}, ImageNet.** In torchvision's network the 80x14x14 output "
                f"nearest 20 % of the FLOPs comes after {r['paper_exit_depth']:.2f} of them "
                f"(paper: roughly 0.2); that exit ({r['paper_exit']}) with (8, 2, 2) "
                f"pooling holds {r['paper_exit_means_mb']:.3f} MB of means for 1000 classes "
                f"(paper 1.87) and costs {r['paper_exit_flops']:.4f} of the FLOPs (paper "
                f"0.001); the model is {r['model_mb']:.1f} MB (paper "
                f"{PAPER[(m, 1000)][3]}).")
    return out


def run(configs, out_dir, name, quick, fit_budget_mb, verbose=True):
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    rows = []
    for model_name, make, shape, K, stem in configs:
        for pname, pooling in POOLINGS.items():
            t = time.perf_counter()
            model = make()
            r = measure(model, shape, K, pooling)
            row = summarise(model_name, K, stem, pname, r)
            stats_mb = 8 * K * sum(e["D"] for e in r["exits"]) / MIB
            if stats_mb <= fit_budget_mb:
                row["fit_check"] = fit_check(model, shape, K, pooling, r)
            row["exits"] = r["exits"]
            row["seconds"] = time.perf_counter() - t
            rows.append(row)
            if verbose:
                print(f"{model_name:20s} K={K:<5d} {stem:11s} {pname:10s} "
                      f"FLOPs/exit {row['flops_per_exit_mean']:.4f}  "
                      f"MB/exit {row['means_mb_per_exit_mean']:.3f}  "
                      f"total {row['means_mb_total']:.2f} / model {row['model_mb']:.1f} MB"
                      f"{'  (fit checked)' if 'fit_check' in row else ''}  "
                      f"{row['seconds']:.1f} s", flush=True)
    elapsed = time.perf_counter() - t0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"quick": quick, "seconds": elapsed, "torch": torch.__version__,
               "paper": {f"{m}/{k}": v for (m, k), v in PAPER.items()}, "rows": rows}
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float))
    render(payload, out_dir / f"{name}.md")
    return payload


def render(payload, path):
    """Write the markdown report of a results payload (also ``--render`` from its JSON)."""
    md = markdown(payload["rows"], payload["quick"], payload["seconds"])
    diffs = differences(payload["rows"])
    if diffs:
        md += "\n## Why the figures differ\n\n" + "\n".join(diffs) + "\n"
    Path(path).write_text(md)
    return md


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="two tiny generated networks, seconds, no torchvision")
    p.add_argument("--out", default=str(RESULTS), help="folder of the results")
    p.add_argument("--fit-budget-mb", type=float, default=400.0,
                   help="fit an estimator as a check when its float64 class sums fit in this")
    p.add_argument("--render", action="store_true",
                   help="only rewrite overheads.md from the overheads.json in --out")
    args = p.parse_args(argv)
    if args.render:
        payload = json.loads((Path(args.out) / "overheads.json").read_text())
        print(render(payload, Path(args.out) / "overheads.md"))
        return payload
    if args.quick:
        return run(quick_configs(), args.out, "overheads_quick", True, args.fit_budget_mb)
    return run(torchvision_configs(), args.out, "overheads", False, args.fit_budget_mb)


if __name__ == "__main__":
    main()
