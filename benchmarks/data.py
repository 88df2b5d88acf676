"""The host-fed episode path against the on-device sampler, on the same data.

The minimal Omniglot background split (from ``$METAX_OMNIGLOT_DIR``, default
../shared/data/omniglot, else random images of the same shape) is written as an image
folder (``root/<class>/*.png``) and prepared once with `metax.data.builders.ImageFolder`, as
a user's own dataset would be; both feeds then draw 5-way 1-shot episodes with 15 queries
per class at 28x28x1 from that one prepared split:

  episodes/s   meta-batches of ``--tasks`` episodes drawn alone: on device (one jit call per
               meta-batch, `metax.data.fewshot`) and host-fed (`metax.data.host`: built by
               grain threads from the `tfds.data_source`, lifted into a task-sharded array,
               waited on one by one).
  idle         a W2-sized meta-step (conv4 64 channels with max-pooling, second-order MAML,
               1 inner SGD step, 32 tasks) run ``--steps`` times fed by the host path,
               against the same compiled step run on one batch already on device: the
               device idle fraction is ``1 - compute_s / fed_s``. On a CPU backend the host
               threads share the cores with the computation, so this is an upper bound of
               what an accelerator would see.

  python benchmarks/data.py [--tasks 32] [--steps 20] [--repeats 3] [--num_threads 2]

Prints one JSON line.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np
import optax
from common import context, omniglot_images
from PIL import Image

from metax import data, energy, learner, meta_models, nn
from metax.data import datasets, host
from metax.train import sharding, step

WAYS, SHOTS, QUERIES = 5, 1, 15


def write_image_folder(images: np.ndarray, root: str) -> list[str]:
    """``images (classes, per_class, h, w, 1)`` uint8 as ``root/cNNNN/NN.png``; the class
    names."""
    names = [f"c{c:04d}" for c in range(images.shape[0])]
    for name, examples in zip(names, images, strict=True):
        os.makedirs(os.path.join(root, name))
        for i, image in enumerate(examples):
            Image.fromarray(image[..., 0]).save(os.path.join(root, name, f"{i:02d}.png"))
    return names


def samplers(images: np.ndarray, workdir: str, num_threads: int):
    """The on-device and the host-fed sampler of one prepared image-folder split."""
    root = os.path.join(workdir, "folder")
    names = write_image_folder(images, root)
    settings = dict(
        root=root,
        classes={"train": names},
        episodes=data.Episodes(ways=WAYS, shots=SHOTS, queries=QUERIES),
        image_size=images.shape[2],
        channels=1,
        data_dir=os.path.join(workdir, "tfds"),
    )
    with contextlib.redirect_stdout(sys.stderr):  # TFDS reports its preparation on stdout.
        on_device = datasets.image_folder(feed=data.Feed(on="device"), **settings)
        host_fed = datasets.image_folder(
            feed=data.Feed(on="host", num_threads=num_threads), **settings
        )
    return on_device, host_fed


def best_of(repeats: int, run) -> float:
    """The shortest of ``repeats`` timings of ``run()`` (seconds)."""
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        run(r)
        times.append(time.perf_counter() - start)
    return min(times)


def episodes_per_s(on_device, host_fed, mesh, tasks: int, batches: int, repeats: int) -> dict:
    draw = jax.jit(
        lambda key: data.sample_meta_batch(on_device, key, tasks),
        out_shardings=sharding.task_sharded(mesh),
    )
    jax.block_until_ready(draw(jax.random.key(0)))

    def device_run(r):
        for i in range(batches):
            out = draw(jax.random.key(r * batches + i))
        jax.block_until_ready(out)

    def host_run(r):
        for batch in step.train_batches(host_fed, r, 0, batches, tasks, mesh):
            jax.block_until_ready(batch)

    host_run(0)  # Imports grain and opens the data source's files.
    device_s = best_of(repeats, device_run) / (batches * tasks)
    host_s = best_of(repeats, host_run) / (batches * tasks)
    return {
        "on_device": round(1 / device_s, 1),
        "host_fed": round(1 / host_s, 1),
        "host_over_device": round(device_s / host_s, 3),
    }


def w2_learner():
    model = nn.sequential(body=nn.conv4(64, pooling="max"), head=nn.linear(WAYS))
    return learner.maml(
        meta_models.learned_init(model, loss_fn=energy.cross_entropy),
        optax.sgd(0.4),
        optax.adam(1e-3),
        num_inner_steps=1,
    )


def idle_fraction(host_fed, mesh, tasks: int, steps: int, repeats: int) -> dict:
    init, train_step = step.make_train_step(w2_learner(), host_fed, tasks, mesh, seed=0)
    state = init()
    batch = next(step.train_batches(host_fed, 0, 0, 1, tasks, mesh))
    state = jax.block_until_ready(train_step(state, batch)[0])  # Compiles.

    def compute_run(_):
        nonlocal state
        for _ in range(steps):
            state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)

    def fed_run(r):
        nonlocal state
        for fed in step.train_batches(host_fed, r, 0, steps, tasks, mesh):
            state, metrics = train_step(state, fed)
        jax.block_until_ready(metrics)

    compute_s, fed_s = [], []
    for r in range(repeats):  # Interleaved, so that machine noise hits both alike.
        compute_s.append(best_of(1, compute_run))
        fed_s.append(best_of(1, lambda _, r=r: fed_run(r)))
    compute, fed = min(compute_s), min(fed_s)
    return {
        "meta_step_ms": round(1000 * compute / steps, 1),
        "fed_meta_step_ms": round(1000 * fed / steps, 1),
        "device_idle_fraction": round(max(0.0, 1 - compute / fed), 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32, help="episodes per meta-batch")
    parser.add_argument("--batches", type=int, default=20, help="meta-batches per timing")
    parser.add_argument("--steps", type=int, default=20, help="W2 meta-steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_threads", type=int, default=2, help="host-fed builder threads")
    args = parser.parse_args()
    images, source = omniglot_images()
    mesh = sharding.task_mesh()
    with tempfile.TemporaryDirectory() as workdir:
        on_device, host_fed = samplers(images, workdir, args.num_threads)
        assert isinstance(host_fed, host.HostTaskSampler)
        result = {
            "benchmark": "data_feed",
            "episodes_per_s": episodes_per_s(
                on_device, host_fed, mesh, args.tasks, args.batches, args.repeats
            ),
            "w2_meta_step": idle_fraction(host_fed, mesh, args.tasks, args.steps, args.repeats),
            "tasks": args.tasks,
            "num_threads": args.num_threads,
            "data": source,
            **context(),
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
