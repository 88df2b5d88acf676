"""W2, W3 and W2 with 5 inner steps in plain PyTorch, the way learn2learn and higher run MAML
(a Python loop over tasks, `torch.autograd.grad(create_graph=True)` for second order), so the
README can put metax's numbers (benchmarks/suite.py) next to what users would otherwise pick.

Same math as suite.py's W2: conv4 (4 x [3x3 conv 64 channels, BatchNorm with batch
statistics, ReLU, 2x2 max-pool], linear head), 28x28x1 inputs, 5-way 1-shot, 15 queries per
class, 32 tasks, inner SGD lr 0.4, cross-entropy, outer Adam 1e-3. Random images (timings do
not depend on pixel values). Each configuration runs in its own subprocess; one JSON line
each with tasks/s (best of the repeats) and peak RSS.

Needs torch, which metax does not depend on (pip install torch==2.13.0, CPU build):
  python benchmarks/torch_w2.py [--steps 3] [--repeats 3]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

WAYS, SHOTS, QUERIES, TASKS, CHANNELS, INNER_LR = 5, 1, 15, 32, 64, 0.4


def child(inner_steps: int, first_order: bool, steps: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F  # noqa: N812 (PyTorch's own convention)

    torch.manual_seed(0)
    params = []
    c_in = 1
    for _ in range(4):
        w = torch.empty(CHANNELS, c_in, 3, 3)
        torch.nn.init.kaiming_normal_(w)
        params += [w, torch.zeros(CHANNELS), torch.ones(CHANNELS), torch.zeros(CHANNELS)]
        c_in = CHANNELS
    params += [torch.randn(WAYS, CHANNELS) / CHANNELS**0.5, torch.zeros(WAYS)]
    params = [p.requires_grad_() for p in params]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def forward(p, x):
        for i in range(4):
            w, b, scale, offset = p[4 * i : 4 * i + 4]
            x = F.conv2d(x, w, b, padding=1)
            x = F.batch_norm(x, None, None, scale, offset, training=True, eps=1e-5)
            x = F.max_pool2d(F.relu(x), 2)
        return F.linear(x.flatten(1), p[-2], p[-1])

    def meta_step(batch):
        optimizer.zero_grad()
        for train_x, train_y, test_x, test_y in batch:
            fast = params
            for _ in range(inner_steps):
                loss = F.cross_entropy(forward(fast, train_x), train_y)
                grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
                fast = [p - INNER_LR * g for p, g in zip(fast, grads, strict=True)]
            (F.cross_entropy(forward(fast, test_x), test_y) / TASKS).backward()
        optimizer.step()

    def task():
        labels = torch.arange(WAYS)
        return (
            torch.rand(WAYS * SHOTS, 1, 28, 28),
            labels.repeat_interleave(SHOTS),
            torch.rand(WAYS * QUERIES, 1, 28, 28),
            labels.repeat_interleave(QUERIES),
        )

    batch = [task() for _ in range(TASKS)]
    meta_step(batch)  # Warm-up.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            meta_step(batch)
        times.append((time.perf_counter() - start) / steps)
    return {
        "workload": f"W2{'_K5' if inner_steps == 5 else ''}" if not first_order else "W3",
        "framework": f"torch {torch.__version__} (autograd, loop over tasks)",
        "tasks_per_s": round(TASKS / min(times), 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("K", "FIRST_ORDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        k, first_order = int(args.child[0]), args.child[1] == "True"
        print(json.dumps(child(k, first_order, args.steps, args.repeats)), flush=True)
        return
    for k, first_order in ((1, False), (1, True), (5, False)):
        command = [sys.executable, __file__, "--child", str(k), str(first_order)]
        command += ["--steps", str(args.steps), "--repeats", str(args.repeats)]
        print(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())


if __name__ == "__main__":
    main()
