"""Omniglot: the on-device episode sampler, and MAML meta-steps against hand-written JAX.

1. Sampler: episodes/s of `metax.data.fewshot` (5-way 1-shot, 15 queries, rotations) drawing
   ``--sampler_batch`` episodes per jit call on device, against a host sampler of the same
   episodes in NumPy (what a per-episode CPU data loader does) plus the copy to the device.
2. MAML: meta-steps/s of `metax.learner.maml` (conv4 with 64 channels, stride-2 convolutions,
   BatchNorm with batch statistics, 5-way 1-shot, 15 queries, meta-batch 32, one inner SGD step
   of 0.4, Adam 1e-3; second and first order) against a hand-written pure-JAX MAML of the same
   math returning the same diagnostics, on the same pre-sampled device batches, interleaved
   over repeats (best repeat counts). ``ratio`` = metax / reference (1.0: no overhead).

Uses the minimal Omniglot split from ``$METAX_OMNIGLOT_DIR`` (default ../shared/data/omniglot)
when present, else random images of the same shape (timings do not depend on pixel values).
Prints one JSON line per measurement.

  python benchmarks/omniglot.py [--steps 3] [--repeats 3] [--channels 64] [--task_chunk 1]

``--task_chunk 1`` runs metax's tasks one at a time (`metax.learner.maml`'s ``task_chunk``),
the fast setting for convolutions on CPU; the reference stays vmapped, as one writes it.
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax import data, energy, learner, module, nn
from metax.data import omniglot

WAYS, SHOTS, QUERIES, TASKS, INNER_LR, OUTER_LR = 5, 1, 15, 32, 0.4, 1e-3
BN_EPS = nn.BATCH_NORM_EPS


def load_images() -> tuple[np.ndarray, str]:
    zips = os.environ.get(
        omniglot.DATA_DIR_ENV,
        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "omniglot"),
    )
    if os.path.exists(os.path.join(zips, "images_background_small1.zip")):
        data_dir = os.environ.get(omniglot.TFDS_DIR_ENV, tempfile.mkdtemp())
        with contextlib.redirect_stdout(sys.stderr):  # TFDS reports its preparation on stdout.
            images = omniglot.omniglot_classes(
                "train", "minimal", manual_dir=zips, data_dir=data_dir
            )
        return images, "omniglot small1"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (136, 20, 28, 28, 1), dtype=np.uint8), "random images"


def host_episode(rng: np.random.Generator, images: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same episode as `metax.data.fewshot`, drawn in NumPy on the host."""
    classes = rng.permutation(images.shape[0] * 4)[:WAYS]
    chosen = []
    for c in classes:
        examples = rng.permutation(images.shape[1])[: SHOTS + QUERIES]
        chosen.append(np.rot90(images[c % images.shape[0], examples], c // images.shape[0], (1, 2)))
    chosen = np.stack(chosen).astype(np.float32) / 255.0
    labels = np.repeat(np.arange(WAYS, dtype=np.int32)[:, None], SHOTS + QUERIES, 1)
    shape = chosen.shape[2:]
    return (
        chosen[:, :SHOTS].reshape(-1, *shape),
        labels[:, :SHOTS].reshape(-1),
        chosen[:, SHOTS:].reshape(-1, *shape),
        labels[:, SHOTS:].reshape(-1),
    )


def benchmark_sampler(images: np.ndarray, batch: int, repeats: int) -> dict:
    sampler = data.fewshot(images, ways=WAYS, shots=SHOTS, queries=QUERIES, rotations=True)
    draw = jax.jit(lambda key: data.sample_meta_batch(sampler, key, batch))
    jax.block_until_ready(draw(jax.random.key(0)))
    device_s = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(10):
            out = draw(jax.random.key(r * 10 + i))
        jax.block_until_ready(out)
        device_s.append((time.perf_counter() - start) / (10 * batch))
    rng = np.random.default_rng(0)
    host_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        episodes = [host_episode(rng, images) for _ in range(batch)]
        jax.block_until_ready(jax.device_put([np.stack(e) for e in zip(*episodes, strict=True)]))
        host_s.append((time.perf_counter() - start) / batch)
    return {
        "benchmark": "omniglot_sampler",
        "episodes_per_s": {
            "metax_on_device": round(1 / min(device_s), 1),
            "numpy_host_loader": round(1 / min(host_s), 1),
        },
        "ratio": round(min(host_s) / min(device_s), 2),
        "episodes_per_call": batch,
    }


def reference_meta_step(params, opt_state, batch, optimizer, first_order):
    """MAML on conv4 as one would write it by hand: vmap over tasks, one SGD step."""

    def forward(p, x):
        for i in range(4):
            block = p["body"][f"block_{i}"]
            z = jax.lax.conv_general_dilated(
                x, block["conv"]["w"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            z = z + block["conv"]["b"]
            mean, var = jnp.mean(z, axis=(0, 1, 2)), jnp.var(z, axis=(0, 1, 2))
            z = (z - mean) * jax.lax.rsqrt(var + BN_EPS) * block["bn"]["scale"]
            x = jax.nn.relu(z + block["bn"]["offset"])
        x = x.reshape(x.shape[0], -1)
        return x @ p["head"]["w"] + p["head"]["b"]

    def cross_entropy(p, x, y):
        logits = forward(p, x)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    def task_loss(p, train_x, train_y, test_x, test_y):
        (loss_before, _), grads = jax.value_and_grad(cross_entropy, has_aux=True)(
            p, train_x, train_y
        )
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        adapted = jax.tree.map(lambda a, g: a - INNER_LR * g, p, grads)
        loss_after, _ = cross_entropy(jax.lax.stop_gradient(adapted), train_x, train_y)
        loss, accuracy = cross_entropy(adapted, test_x, test_y)
        metrics = {
            "inner/loss_before": loss_before,
            "inner/loss_after": loss_after,
            "inner/grad_norm": optax.tree.norm(grads),
            "outer/accuracy": accuracy,
        }
        return loss, metrics

    def meta_loss(p):
        losses, metrics = jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(
            p, batch.train.x, batch.train.y, batch.test.x, batch.test.y
        )
        return jnp.mean(losses), metrics

    (loss, metrics), grads = jax.value_and_grad(meta_loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics = {k: jnp.mean(v) for k, v in metrics.items()}
    metrics.update({"outer/loss": loss, "meta_grad_norm": optax.tree.norm(grads)})
    return (optax.apply_updates(params, updates), opt_state), metrics


def benchmark_maml(images, channels, first_order, steps, repeats, task_chunk=None) -> dict:
    sampler = data.fewshot(images, ways=WAYS, shots=SHOTS, queries=QUERIES, rotations=True)
    batches = [data.sample_meta_batch(sampler, jax.random.key(i), TASKS) for i in range(4)]
    batches = jax.block_until_ready(batches)
    model = nn.sequential(
        body=nn.conv4(num_channels=channels, pooling="strided"), head=nn.linear(WAYS)
    )
    maml = learner.maml(
        module.learned_init(model, loss_fn=energy.cross_entropy),
        optax.sgd(INNER_LR),
        optax.adam(OUTER_LR),
        num_inner_steps=1,
        first_order=first_order,
        task_chunk=task_chunk,
    )
    optimizer = optax.adam(OUTER_LR)

    def fresh_metax_state():
        return maml.init(jax.random.key(0), batches[0])

    def fresh_reference_state():
        params = fresh_metax_state().meta_params["init"]
        return params, optimizer.init(params)

    rng = jax.random.key(1)
    candidates = {
        "metax": (lambda s, b: maml.meta_step(s, b, rng)[0], fresh_metax_state),
        "reference": (
            lambda s, b: reference_meta_step(*s, b, optimizer, first_order)[0],
            fresh_reference_state,
        ),
    }
    compiled, compile_s, state, times = {}, {}, {}, {name: [] for name in candidates}
    for name, (step, fresh_state) in candidates.items():
        start = time.perf_counter()
        compiled[name] = jax.jit(step, donate_argnums=0).lower(fresh_state(), batches[0]).compile()
        compile_s[name] = round(time.perf_counter() - start, 2)
        state[name] = jax.block_until_ready(compiled[name](fresh_state(), batches[0]))
    for repeat in range(repeats):
        names = list(candidates)
        for name in names[repeat % 2 :] + names[: repeat % 2]:
            start = time.perf_counter()
            for i in range(steps):
                state[name] = compiled[name](state[name], batches[i % len(batches)])
            jax.block_until_ready(state[name])
            times[name].append((time.perf_counter() - start) / steps)
    best = {name: min(t) for name, t in times.items()}
    return {
        "benchmark": f"omniglot_maml_{'first' if first_order else 'second'}_order",
        "meta_steps_per_s": {name: round(1 / s, 3) for name, s in best.items()},
        "tasks_per_s": {name: round(TASKS / s, 2) for name, s in best.items()},
        "ratio": round(best["reference"] / best["metax"], 3),
        "compile_s": compile_s,
        "channels": channels,
        "metax_task_chunk": task_chunk,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--sampler_batch", type=int, default=1024)
    parser.add_argument("--task_chunk", type=int, default=None, help="metax's maml task_chunk")
    parser.add_argument("--sampler_only", action="store_true")
    args = parser.parse_args()
    images, source = load_images()
    context = {
        "data": source,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(json.dumps({**benchmark_sampler(images, args.sampler_batch, 5), **context}), flush=True)
    for first_order in () if args.sampler_only else (False, True):
        result = benchmark_maml(
            images, args.channels, first_order, args.steps, args.repeats, args.task_chunk
        )
        print(json.dumps({**result, **context}), flush=True)


if __name__ == "__main__":
    main()
