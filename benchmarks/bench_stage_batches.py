"""Per-row time of every stage against the batch it runs in (CPU or GPU).

Routed ``predict`` runs each stage on the rows that have not left yet, so the
later stages see smaller batches than the plain network's; the *ideal* of
``bench_gpu.py`` times every stage on full batches. This measures, for the
ResNet-20 and the light 6-block CNN of ``bench_gpu.py``, each stage's time per
row on batches of 512 (the reference), 256, 128, 64 and 32 rows (medians of
``--rounds`` runs over the same 2048 test images, the stage's own input
precomputed), relative to batches of 512.

Run: ``python benchmarks/bench_stage_batches.py`` (about 2 minutes on 2 CPU
cores; try it with and without the allocator settings of
``bench_allocator.py``). Results: ``benchmarks/results/stage_batches.{json,md}``.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, load_fashion, machine, trained_resnet, write  # noqa: E402
from bench_gpu import _sync, trained_light_cnn  # noqa: E402


def stage_rows(name, net, X, sizes, rounds, device):
    import torch

    from sklearn_e2cm.stages import split_into_stages

    stages = split_into_stages(net.to(device), X[:2])
    n = X.shape[0]
    out = []
    with torch.inference_mode():
        inputs = [X]
        for st in stages[:-1]:
            inputs.append(st(inputs[-1]))
        for j, st in enumerate(stages):
            Z = inputs[j]
            per_row = {}
            for bs in sizes:
                def run():
                    for a in range(0, n, bs):
                        st(Z[a:a + bs])
                    _sync(device)

                run()
                times = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                per_row[bs] = float(np.median(times)) / n
            out.append({"network": name, "stage": j, "per_row_s": per_row,
                        "width": int(np.prod(inputs[j + 1].shape[1:])) if j + 1 < len(inputs)
                        else None})
            print(out[-1], flush=True)
    return out


def main(argv=None):
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 256, 128, 64, 32])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--name", default="stage_batches")
    args = p.parse_args(argv)
    from sklearn_e2cm._backend import resolve_device

    device = resolve_device(args.device)
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU ({torch.get_num_threads()} threads)")
    Xtr, ytr, Xte, _ = load_fashion()
    Xtr, Xte = Xtr.reshape(-1, 1, 28, 28), Xte.reshape(-1, 1, 28, 28)
    X = torch.from_numpy(Xte[:args.rows]).to(device)
    rows = []
    for name in ("resnet20", "light_cnn"):
        net = (trained_resnet(Xtr, ytr, epochs=args.epochs)[0] if name == "resnet20"
               else trained_light_cnn(Xtr, ytr, epochs=args.epochs))
        rows += stage_rows(name, net.eval(), X, args.sizes, args.rounds, device)
    ref = args.sizes[0]
    lines = [f"# Per-row stage time against the batch size on {dev_name}", "",
             f"Command: `{command('bench_stage_batches.py', argv)}`  ",
             f"Device: **{dev_name}**; torch {torch.__version__}; {args.rows} test images, each "
             f"stage on its own precomputed input; medians of {args.rounds} runs. Cells: time per "
             f"row relative to batches of {ref} rows (below 1: faster per row).", "",
             "| network | stage | output values per row | ms per 1000 rows at batch "
             f"{ref} | " + " | ".join(f"batch {b}" for b in args.sizes[1:]) + " |",
             "|---|---|---|---|" + "---|" * (len(args.sizes) - 1)]
    for r in rows:
        t = r["per_row_s"]
        lines.append(f"| {r['network']} | {r['stage']} | {r['width'] or '—'} | "
                     f"{t[ref] * 1e6:.1f} | "
                     + " | ".join(f"{t[b] / t[ref]:.2f}" for b in args.sizes[1:]) + " |")
    write(args.name, {"device": dev_name, "machine": machine(), "args": vars(args), "rows": rows},
          "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
