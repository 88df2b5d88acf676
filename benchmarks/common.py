"""What every benchmark shares: the machine's description, Omniglot images, and timing of
jit-compiled meta-steps against a hand-written reference in the same process."""

import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from metax.data import omniglot_splits, storage


class Candidate(NamedTuple):
    """A meta-step to time: ``step(state, batch) -> (state, metrics)`` (donates ``state``;
    metrics include ``meta_grad_norm``), ``fresh_state()`` builds its initial state in new
    buffers."""

    step: Callable[[Any, Any], tuple[Any, Any]]
    fresh_state: Callable[[], Any]


def context() -> dict:
    return {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
    }


def omniglot_images() -> tuple[np.ndarray, str]:
    """The minimal Omniglot background split ``(classes, 20, 28, 28, 1)`` uint8 when its zips
    are in ``$METAX_OMNIGLOT_DIR`` (default ../shared/data/omniglot), else random images of
    the same shape (timings do not depend on pixel values)."""
    zips = os.environ.get(
        omniglot_splits.DATA_DIR_ENV,
        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "omniglot"),
    )
    if os.path.exists(os.path.join(zips, "images_background_small1.zip")):
        data_dir = os.environ.get(storage.TFDS_DIR_ENV) or tempfile.mkdtemp()
        with contextlib.redirect_stdout(sys.stderr):  # TFDS reports its preparation on stdout.
            images, _ = omniglot_splits.omniglot_classes_and_alphabets(
                "train", "minimal", manual_dir=zips, data_dir=data_dir
            )
        return images, "omniglot small1"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (136, 20, 28, 28, 1), dtype=np.uint8), "random images"


def compare(
    candidates: dict[str, Candidate], batches: list, tasks_per_batch: int, steps: int, repeats: int
) -> dict:
    """Compiles every candidate (timed), checks that one step from the same state computes
    the same meta-gradient as the first candidate (``meta_grad_norm_rel_diff``: the relative
    difference of their norms; the outer optimizer's update would hide it, Adam's first step
    being +-lr whatever the gradient), then times ``steps`` steps per repeat, candidates
    interleaved in a rotating order so that machine noise hits all alike; the best repeat
    counts. One host sync per repeat, none inside the loop. Returns tasks/s and compile
    seconds per candidate.
    """
    compiled, compile_s, grad_norm = {}, {}, {}
    for name, candidate in candidates.items():
        start = time.perf_counter()
        lowered = jax.jit(candidate.step, donate_argnums=0).lower(
            candidate.fresh_state(), batches[0]
        )
        compiled[name] = lowered.compile()
        compile_s[name] = round(time.perf_counter() - start, 2)
        _, metrics = compiled[name](candidate.fresh_state(), batches[0])
        grad_norm[name] = float(metrics["meta_grad_norm"])
    first = next(iter(candidates))
    diffs = {
        name: abs(norm / grad_norm[first] - 1) for name, norm in grad_norm.items() if name != first
    }
    times = {name: [] for name in candidates}
    names = list(candidates)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            run = compiled[name]
            state = jax.block_until_ready(run(candidates[name].fresh_state(), batches[0])[0])
            start = time.perf_counter()
            for i in range(steps):
                state = run(state, batches[i % len(batches)])[0]
            jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / steps)
    tasks_per_s = {name: tasks_per_batch / min(t) for name, t in times.items()}
    return {
        "tasks_per_s": {name: round(v, 2) for name, v in tasks_per_s.items()},
        "compile_s": compile_s,
        "meta_grad_norm_rel_diff": {name: float(f"{d:.1e}") for name, d in diffs.items()},
        "steps": steps,
        "repeats": repeats,
    }
