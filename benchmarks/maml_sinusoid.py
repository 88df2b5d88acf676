"""W1: metax's MAML meta-step against a hand-written pure-JAX MAML of the same math.

MLP 1-40-40-1 (ReLU), 25 sinusoid tasks of 10 support + 10 query points, 5 inner SGD steps
(lr 0.01), second order, outer Adam 1e-3. All candidates are jit-compiled in this process, with
donated state, and run on the same pre-sampled device batches, interleaved over repeats (best
repeat counts). Two references: ``reference`` returns only the new state and the outer loss;
``reference_with_metrics`` also computes the diagnostics that metax's meta_step returns (inner
loss before and after adaptation, gradient norms), i.e. the same outputs. Prints one JSON line
with tasks/s and compile seconds of each; ``ratio`` is metax / reference_with_metrics (>= 0.95:
metax adds no overhead), ``ratio_vs_minimal_reference`` is metax / reference.

  python benchmarks/maml_sinusoid.py [--steps 2000] [--repeats 7]
"""

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import optax

from metax import data, learner, module, nn

NUM_TASKS, INNER_STEPS, INNER_LR, OUTER_LR = 25, 5, 0.01, 1e-3


def reference_meta_step(params, opt_state, batch, optimizer, with_metrics):
    """MAML as one would write it by hand: unrolled SGD in Python, vmap over tasks."""

    def forward(p, x):
        h = jax.nn.relu(x @ p["layer_0"]["w"] + p["layer_0"]["b"])
        h = jax.nn.relu(h @ p["layer_1"]["w"] + p["layer_1"]["b"])
        return h @ p["output"]["w"] + p["output"]["b"]

    def mse(p, x, y):
        return jnp.mean((forward(p, x) - y) ** 2)

    def task_loss(p, train_x, train_y, test_x, test_y):
        metrics = {}
        for i in range(INNER_STEPS):
            loss, grads = jax.value_and_grad(mse)(p, train_x, train_y)
            if i == 0 and with_metrics:
                metrics = {"loss_before": loss, "grad_norm": optax.tree.norm(grads)}
            p = jax.tree.map(lambda a, g: a - INNER_LR * g, p, grads)
        if with_metrics:
            metrics["loss_after"] = mse(jax.lax.stop_gradient(p), train_x, train_y)
        return mse(p, test_x, test_y), metrics

    def meta_loss(p):
        losses, metrics = jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(
            p, batch.train.x, batch.train.y, batch.test.x, batch.test.y
        )
        return jnp.mean(losses), metrics

    (loss, metrics), grads = jax.value_and_grad(meta_loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics = {k: jnp.mean(v) for k, v in metrics.items()}
    if with_metrics:
        metrics["meta_grad_norm"] = optax.tree.norm(grads)
    return (optax.apply_updates(params, updates), opt_state), {"outer_loss": loss, **metrics}


def time_steps(step, state, batches, steps):
    """Seconds for ``steps`` meta-steps cycling through ``batches``; one sync at the end."""
    state = step(state, batches[0])  # Warm-up after compilation.
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(steps):
        state = step(state, batches[i % len(batches)])
    jax.block_until_ready(state)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    sampler = data.sinusoid()
    batches = [data.sample_meta_batch(sampler, jax.random.key(i), NUM_TASKS) for i in range(16)]
    batches = jax.block_until_ready(batches)
    maml = learner.maml(
        module.learned_init(nn.mlp([40, 40], 1)),
        optax.sgd(INNER_LR),
        optax.adam(OUTER_LR),
        num_inner_steps=INNER_STEPS,
    )
    optimizer = optax.adam(OUTER_LR)

    # All start from the same initialization, in fresh buffers: the steps donate their state.
    def fresh_metax_state():
        return maml.init(jax.random.key(0), batches[0])

    def fresh_reference_state():
        params = fresh_metax_state().meta_params["init"]
        return params, optimizer.init(params)

    rng = jax.random.key(1)
    candidates = {
        "metax": (lambda s, b: maml.meta_step(s, b, rng), fresh_metax_state),
        "reference": (
            lambda s, b: reference_meta_step(*s, b, optimizer, with_metrics=False),
            fresh_reference_state,
        ),
        "reference_with_metrics": (
            lambda s, b: reference_meta_step(*s, b, optimizer, with_metrics=True),
            fresh_reference_state,
        ),
    }
    compiled, compile_s, times = {}, {}, {name: [] for name in candidates}
    for name, (step, fresh_state) in candidates.items():
        start = time.perf_counter()
        compiled[name] = jax.jit(step, donate_argnums=0).lower(fresh_state(), batches[0]).compile()
        compile_s[name] = round(time.perf_counter() - start, 3)
    names = list(candidates)
    for repeat in range(args.repeats):
        # Interleaved in a rotating order, so that machine noise and warm-up hit all alike.
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            fresh_state, run = candidates[name][1], compiled[name]
            step = lambda s, b, run=run: run(s, b)[0]  # noqa: E731
            times[name].append(time_steps(step, fresh_state(), batches, args.steps))
    tasks_per_s = {name: NUM_TASKS * args.steps / min(t) for name, t in times.items()}
    result = {
        "benchmark": "W1 maml_sinusoid: MLP 1-40-40-1, 25 tasks, 5 inner steps, second order",
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "machine": platform.machine(),
        **{f"{name}_tasks_per_s": round(v, 1) for name, v in tasks_per_s.items()},
        "ratio": round(tasks_per_s["metax"] / tasks_per_s["reference_with_metrics"], 3),
        "ratio_vs_minimal_reference": round(tasks_per_s["metax"] / tasks_per_s["reference"], 3),
        **{f"{name}_compile_s": v for name, v in compile_s.items()},
        "steps": args.steps,
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
