"""Peak memory of second-order MAML on W2 for K inner steps, with and without remat, and of
implicit differentiation (which does not backpropagate through the inner loop).

W2: conv4 (64 channels, max-pool) on 28x28x1 Omniglot, 5-way 1-shot, 15 queries, 32 tasks,
inner SGD lr 0.4 (implicit: learned init with an L2 pull of 10, conjugate gradient with 10
iterations), Adam 1e-3. Each configuration runs in its own subprocess (the process maximum
RSS is per process): it compiles the meta-step, runs two steps and reports its peak RSS over
the process (compilation included), its peak RSS while running the steps (the peak is reset
after compiling), the RSS before compiling (Python, JAX and the data), XLA's temporary buffer
size for the step, compile and step seconds. One JSON line per configuration.

  python benchmarks/memory.py [--steps 1,5,10,20] [--implicit_steps 1,20] [--task_chunk auto]
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def status_gb(field: str) -> float:
    """A memory field of /proc/self/status (Linux) in GiB: VmRSS (now), VmHWM (peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so that the next peak is the run's,
    not the compiler's."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def child(learner_name: str, num_steps: int, remat: bool, task_chunk: str) -> dict:
    import jax
    import optax
    from common import context, omniglot_images

    from metax import data, energy, learner, meta_models, nn

    images, source = omniglot_images()
    sampler = data.fewshot(images, data.Episodes(ways=5, shots=1, queries=15), rotations=True)
    batch = jax.block_until_ready(data.sample_meta_batch(sampler, jax.random.key(0), 32))
    model = nn.sequential(body=nn.conv4(64, pooling="max"), head=nn.linear(5))
    chunk = (
        None if task_chunk == "none" else task_chunk if task_chunk == "auto" else int(task_chunk)
    )
    if learner_name == "maml":
        meta_learner = learner.maml(
            meta_models.learned_init(model, loss_fn=energy.cross_entropy),
            optax.sgd(0.4),
            optax.adam(1e-3),
            num_inner_steps=num_steps,
            remat=remat,
            task_chunk=chunk,
        )
    else:
        meta_learner = learner.implicit(
            meta_models.learned_init(model, loss_fn=energy.cross_entropy, reg_strength=10.0),
            learner.conjugate_gradient(10),
            optax.sgd(0.4),
            optax.adam(1e-3),
            num_inner_steps=num_steps,
            task_chunk=chunk,
        )
    state = meta_learner.init(jax.random.key(0), batch)
    before = status_gb("VmRSS")
    start = time.perf_counter()
    step = jax.jit(meta_learner.meta_step, donate_argnums=0)
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - start
    reset_peak_rss()
    state = jax.block_until_ready(compiled(state, batch, jax.random.key(1)))[0]
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, batch, jax.random.key(2)))
    step_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    return {
        "learner": learner_name,
        "inner_steps": num_steps,
        "remat": remat,
        "task_chunk": task_chunk,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_rss_running_gb": round(status_gb("VmHWM"), 3),
        "rss_before_compile_gb": round(before, 3),
        "xla_temp_gb": round(analysis.temp_size_in_bytes / 2**30, 3) if analysis else None,
        "compile_s": round(compile_s, 1),
        "step_s": round(step_s, 2),
        "data": source,
        **context(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1,5,10,20", help="inner-step counts K")
    parser.add_argument("--implicit_steps", default="1,20", help="K for implicit")
    parser.add_argument("--task_chunk", default="auto", help="'auto', 'none' (vmap) or k")
    parser.add_argument(
        "--child", nargs=3, metavar=("LEARNER", "K", "REMAT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        name, k, remat = args.child
        print(json.dumps(child(name, int(k), remat == "True", args.task_chunk)), flush=True)
        return
    configs = [("maml", k, remat) for k in args.steps.split(",") for remat in (False, True)]
    configs += [("implicit", k, False) for k in args.implicit_steps.split(",")]
    for name, k, remat in configs:
        command = [sys.executable, __file__, "--child", name, k, str(remat)]
        command += ["--task_chunk", args.task_chunk]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            print(
                json.dumps(
                    {
                        "learner": name,
                        "inner_steps": int(k),
                        "remat": remat,
                        "error": result.stderr.strip().splitlines()[-1],
                    }
                ),
                flush=True,
            )
        else:
            print(result.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
