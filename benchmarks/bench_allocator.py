"""glibc allocator settings and CPU inference speed (plain network and routed E²CM).

Each batch of a ResNet on 28×28 images allocates activation buffers of tens of
MB. glibc serves them with mmap or returns freed heap to the system, so every
batch faults its pages in again. This benchmark runs the same work in two
fresh processes, with the default allocator and with

    MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000
    MALLOC_TOP_PAD_=268435456

(keep freed memory in the process), and reports the plain forward pass and the
routed pass at φ = 0.3 over the 10k test images (batch 512, medians of 3).
The package never changes these process-wide settings itself.

Run: ``python benchmarks/bench_allocator.py`` (needs ``dataset-fashion-mnist``).
Results: ``benchmarks/results/allocator.{json,md}``.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import load_fashion, machine, plain_forward, trained_resnet, write  # noqa: E402

TUNED = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000",
         "MALLOC_TOP_PAD_": "268435456"}


def child():
    import torch

    from sklearn_e2cm import EarlyExitClassMeans
    from sklearn_e2cm.stages import split_into_stages

    torch.set_num_threads(2)
    Xtr, ytr, Xte, _ = load_fashion(None, None)
    net, _ = trained_resnet(Xtr, ytr, verbose=0)
    e2cm = EarlyExitClassMeans(split_into_stages(net), flops_target=0.3, batch_size=512,
                               random_state=0).fit(Xtr[:10000], ytr[:10000])
    plain_forward(net, Xte[:512], 512)
    fwd, routed = [], []
    for _ in range(3):
        fwd.append(plain_forward(net, Xte, 512)[0])
        t0 = time.perf_counter()
        e2cm.route(Xte)
        routed.append(time.perf_counter() - t0)
    print(json.dumps({"forward_s": fwd, "routed_s": routed}))


def main():
    if "--child" in sys.argv:
        return child()
    runs = {}
    for name, extra in (("default", {}), ("tuned", TUNED)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(extra)
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                             capture_output=True, text=True).stdout
        runs[name] = json.loads(out.strip().splitlines()[-1])
    med = {n: {k: float(np.median(v)) for k, v in r.items()} for n, r in runs.items()}
    payload = {"command": " ".join(["python"] + sys.argv), "machine": machine(),
               "tuned_env": TUNED, "runs": runs, "medians": med}
    md = ["# glibc allocator settings: ResNet-20 (width 16), Fashion-MNIST test set, 2-core CPU",
          "", f"Command: `{payload['command']}`  ",
          "Tuned: " + " ".join(f"`{k}={v}`" for k, v in TUNED.items()), "",
          "| allocator | plain forward (s) | routed φ = 0.3 (s) |", "|---|---|---|"]
    for n in ("default", "tuned"):
        md.append(f"| {n} | {med[n]['forward_s']:.2f} | {med[n]['routed_s']:.2f} |")
    md += ["", f"Speed-up: plain {med['default']['forward_s'] / med['tuned']['forward_s']:.2f}×, "
           f"routed {med['default']['routed_s'] / med['tuned']['routed_s']:.2f}×.", ""]
    write("allocator", payload, "\n".join(md))


if __name__ == "__main__":
    main()
