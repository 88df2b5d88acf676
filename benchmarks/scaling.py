"""Meta-step time against the global meta-batch size on 1 and 8 devices, and the bytes that one
meta-step all-reduces (read from the compiled program).

Workload: the MAML sinusoid experiment (MLP 1-40-40-1, 1 inner SGD step, second order, Adam),
through the training loop's compiled step (tasks sampled inside the step, task axis sharded).
Each device count runs in its own subprocess (the device count is fixed at JAX start-up).
Prints one JSON line per (devices, meta-batch).

  python benchmarks/scaling.py [--devices 1 8] [--batches 8 16 32 64 128 256] [--steps 200]

On this 2-core CPU the 8 "devices" are virtual and share the same 2 cores: the 8-device rows
measure the cost of partitioning and of the all-reduce, not a speed-up.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

ELEMENT_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "u32": 4}


def all_reduced_bytes(hlo_text: str) -> int:
    """Sum of the result sizes of the all-reduce operations of a compiled HLO module."""
    total = 0
    for line in hlo_text.splitlines():
        if " all-reduce(" not in line and " all-reduce-start(" not in line:
            continue
        lhs = line.split("=", 1)[1].split("all-reduce", 1)[0]
        for dtype, dims in re.findall(r"(f32|f64|bf16|f16|s32|u32)\[([\d,]*)\]", lhs):
            size = 1
            for d in filter(None, dims.split(",")):
                size *= int(d)
            total += size * ELEMENT_BYTES[dtype]
    return total


def measure(batches: list[int], steps: int) -> None:
    import jax
    import optax

    from metax import data, learner, meta_models, nn
    from metax.train import make_train_step, sharding

    mesh = sharding.task_mesh()
    maml = learner.maml(
        meta_models.learned_init(nn.mlp([40, 40], 1)),
        optax.sgd(0.01),
        optax.adam(1e-3),
        num_inner_steps=1,
    )
    for batch in batches:
        init, train_step = make_train_step(maml, data.sinusoid(), batch, mesh, seed=0)
        state = init()
        start = time.perf_counter()
        compiled = train_step.lower(state).compile()
        compile_s = time.perf_counter() - start
        state, metrics = compiled(state)
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(steps):
            previous = metrics
            state, metrics = compiled(state)
            jax.block_until_ready(previous)  # As the training loop: at most 2 steps in flight.
        jax.block_until_ready(state)
        step_s = (time.perf_counter() - start) / steps
        params = sum(x.size for x in jax.tree.leaves(state.meta_params))
        print(
            json.dumps(
                {
                    "devices": mesh.size,
                    "meta_batch": batch,
                    "step_ms": round(1e3 * step_s, 3),
                    "tasks_per_s": round(batch / step_s, 1),
                    "compile_s": round(compile_s, 2),
                    "all_reduced_bytes": all_reduced_bytes(compiled.as_text()),
                    "meta_params": params,
                    "meta_gradient_bytes": 4 * params,
                }
            ),
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        measure(args.batches, args.steps)
        return
    for devices in args.devices:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--steps",
            str(args.steps),
            "--batches",
            *map(str, args.batches),
        ]
        subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
