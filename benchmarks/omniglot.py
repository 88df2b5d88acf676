"""Omniglot: the on-device episode sampler against a NumPy host loader.

Episodes/s of `metax.data.fewshot` (5-way 1-shot, 15 queries, rotations) drawing
``--sampler_batch`` episodes per jit call on device, against a host sampler of the same
episodes in NumPy (what a per-episode CPU data loader does) plus the copy to the device.
MAML's meta-steps on Omniglot are timed by benchmarks/suite.py (W2, W3, W2_K5).

Uses the minimal Omniglot split from ``$METAX_OMNIGLOT_DIR`` (default ../shared/data/omniglot)
when present, else random images of the same shape. Prints one JSON line.

  python benchmarks/omniglot.py [--repeats 5] [--sampler_batch 1024]
"""

import argparse
import json
import time

import jax
import numpy as np
from common import context, omniglot_images

from metax import data

WAYS, SHOTS, QUERIES = 5, 1, 15


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
    sampler = data.fewshot(
        images, data.Episodes(ways=WAYS, shots=SHOTS, queries=QUERIES), rotations=True
    )
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sampler_batch", type=int, default=1024)
    args = parser.parse_args()
    images, source = omniglot_images()
    result = benchmark_sampler(images, args.sampler_batch, args.repeats)
    print(json.dumps({**result, "data": source, **context()}), flush=True)


if __name__ == "__main__":
    main()
