"""metax against the plain PyTorch loop of `torch_w2.py` on W2, W3 and W2 with 5 inner
steps, the two frameworks' processes alternating for several rounds (metax first in odd
rounds, PyTorch first in even ones), so that this machine's drift (10-30% between runs here)
hits both alike. One JSON line per workload: each framework's tasks/s in every round (metax
as `suite.py` times it, without its hand-written reference; PyTorch as `torch_w2.py` does),
their medians, and the ratio of the medians (> 1: metax is faster).

Needs torch (pip install torch==2.13.0, CPU build), which metax does not depend on:
  python benchmarks/versus_torch.py [--rounds 3] [--steps 2] [--repeats 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOADS = {"W2": (1, False), "W3": (1, True), "W2_K5": (5, False)}


def metax_child(steps: int, repeats: int) -> None:
    """Prints one JSON line per workload: metax's tasks/s, as suite.py measures it."""
    import suite
    from common import omniglot_images

    images, _ = omniglot_images()
    for name in WORKLOADS:
        row = suite.run(name, steps, repeats, images, reference=False)
        print(json.dumps({"workload": name, "tasks_per_s": row["tasks_per_s"]["metax"]}))


def run_child(arguments: list[str]) -> list[dict]:
    command = [sys.executable, *arguments]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--metax_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    timing = ["--steps", str(args.steps), "--repeats", str(args.repeats)]
    if args.metax_child:
        metax_child(args.steps, args.repeats)
        return
    here = os.path.dirname(os.path.abspath(__file__))
    speeds = {name: {"metax": [], "torch": []} for name in WORKLOADS}
    for round_index in range(args.rounds):
        order = ["metax", "torch"] if round_index % 2 == 0 else ["torch", "metax"]
        for framework in order:
            if framework == "metax":
                rows = run_child([__file__, "--metax_child", *timing])
            else:
                rows = []
                for k, first_order in WORKLOADS.values():
                    child = ["--child", str(k), str(first_order), *timing]
                    rows += run_child([os.path.join(here, "torch_w2.py"), *child])
            for row in rows:
                speeds[row["workload"]][framework].append(row["tasks_per_s"])
    for name, by_framework in speeds.items():
        medians = {f: round(statistics.median(v), 2) for f, v in by_framework.items()}
        print(
            json.dumps(
                {
                    "workload": name,
                    "tasks_per_s": by_framework,
                    "median": medians,
                    "metax_over_torch": round(medians["metax"] / medians["torch"], 2),
                    "rounds": args.rounds,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
