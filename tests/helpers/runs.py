"""Running metax as users do, for tests: the launcher in subprocesses (one process or several on
127.0.0.1), the Python API, and reading what a run left in its workdir.

Two schedules of `configs/maml_sinusoid_quick.gin`: ``TINY`` (20 steps, 8 devices: `launch`)
and ``SHORT`` (60 steps, 2 devices, a checkpoint every 5: `run`, `start`), long enough to be
interrupted at a random moment.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from PIL import Image

import metax.train
from metax import data, learner, meta_models, nn
from tests.helpers.xla_flags import with_device_count

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = "configs/maml_sinusoid_quick.gin"
TINY = [
    "train.num_steps = 20",
    "train.meta_batch_size = 8",
    "train.log_every = 10",
    "Evaluation.every = 10",
    "Checkpoints.every = 10",
    "Evaluation.num_tasks = 16",
    "Evaluation.batch_size = 8",
    "Evaluation.inner_steps = (1, 2)",
]
STEPS = 60
SHORT = [
    f"train.num_steps = {STEPS}",
    "train.meta_batch_size = 4",
    "train.log_every = 5",
    f"Evaluation.every = {STEPS}",
    "Checkpoints.every = 5",
    "Checkpoints.max_to_keep = 2",
    "Evaluation.num_tasks = 8",
    "Evaluation.batch_size = 4",
    "Evaluation.inner_steps = (1, 2)",
]
SHORT_ENV = dict(os.environ, XLA_FLAGS=with_device_count(2))

# Runs compared across device and process counts are float64 (JAX_ENABLE_X64): their sums
# are ordered differently, and float32 rounding can move a ReLU across its kink and so change
# a second-order meta-gradient by far more than rounding (see tests/metax/train/test_multihost.py).
X64 = {"JAX_ENABLE_X64": "1"}
SAME_NUMBERS = {"rtol": 1e-12, "atol": 1e-14}


def launch(workdir, bindings=(), devices=8, gin_file=QUICK, env_vars=None):
    """The launcher with the ``TINY`` schedule (then ``bindings``) on ``devices`` devices."""
    env = dict(os.environ, XLA_FLAGS=with_device_count(devices), **(env_vars or {}))
    args = [sys.executable, "-m", "launch.train", f"--gin_file={gin_file}", f"--workdir={workdir}"]
    args += [f"--gin_bindings={b}" for b in (*TINY, *bindings)]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def command(workdir, bindings=(), flags=(), module="launch.train"):
    """The arguments of a ``SHORT`` launch (or of ``launch.evaluate`` on ``workdir``)."""
    args = [sys.executable, "-m", module, f"--workdir={workdir}", *flags]
    if module == "launch.train":
        args.append(f"--gin_file={QUICK}")
        args += [f"--gin_bindings={b}" for b in (*SHORT, *bindings)]
    return args


def run(workdir, bindings=(), flags=(), module="launch.train", ok=True):
    """A ``SHORT`` launch to its end; checks the exit code unless ``ok`` is False."""
    result = subprocess.run(
        command(workdir, bindings, flags, module),
        cwd=REPO,
        env=SHORT_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def start(workdir, bindings=()):
    """A ``SHORT`` launch in the background: ``(process, path of its log)``."""
    log_path = workdir.parent / f"{workdir.name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command(workdir, bindings),
            cwd=REPO,
            env=SHORT_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, log_path


def wait_for(condition, process, timeout=240):
    """Polls ``condition()`` while ``process`` runs; fails if it ends first or on timeout."""
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the test could interrupt it"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands, env_vars=None, timeout=240, devices_per_process=4):
    """Starts one subprocess per command, waits for all, kills all on timeout or failure."""
    env = dict(os.environ, XLA_FLAGS=with_device_count(devices_per_process), **(env_vars or {}))
    procs = [
        subprocess.Popen(
            c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in commands
    ]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def launcher(workdir, process_id=None, port=None, timeout_s=60):
    """The arguments of a ``TINY`` launch, as process ``process_id`` of 2 when given."""
    args = [
        sys.executable,
        "-m",
        "launch.train",
        f"--gin_file={QUICK}",
        f"--workdir={workdir}",
        *[f"--gin_bindings={b}" for b in TINY],
    ]
    if process_id is not None:
        args += [
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={process_id}",
            f"--initialization_timeout={timeout_s}",
        ]
    return args


def final_metrics(workdir) -> dict:
    """``final_metrics.json`` without its wall time."""
    metrics = json.loads((workdir / "final_metrics.json").read_text())
    metrics.pop("wall_time_s")
    return metrics


def checkpoint_steps(workdir) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(s) for s in os.listdir(folder) if s.isdigit()) if folder.exists() else []


def restore_state(workdir, step):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(workdir / "checkpoints" / str(step) / "default")


def meta_params(workdir, step):
    return restore_state(workdir, step)["meta_params"]


def read_checkpoint(workdir, step):
    """A checkpointed state as host arrays, whatever topology saved it."""
    path = workdir / "checkpoints" / str(step) / "default"
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path)
        tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree
        )
        return jax.device_get(checkpointer.restore(path, abstract))


def read_meta_params(workdir, step):
    """A checkpoint's meta-parameters as one flat vector (saved by any topology)."""
    from jax.flatten_util import ravel_pytree

    return np.asarray(ravel_pytree(read_checkpoint(workdir, step)["meta_params"])[0])


def assert_trees_equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], dict):
            assert_trees_equal(a[key], b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key])


def check_regression_figure(workdir):
    """The training loop's regression figure: a PNG of 4 panels of 300 x 240 pixels in the
    workdir, and an image summary in the TensorBoard event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Image.open(workdir / metax.train.REGRESSION_FIGURE) as image:
        assert image.format == "PNG" and image.size == (960, 300)
    (events,) = glob.glob(str(workdir / "events.out.tfevents.*"))
    accumulator = EventAccumulator(events, size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"] + accumulator.Tags()["images"]
    assert "regression_tasks" in tags, tags


def python_api_run(workdir, num_steps: int, steps_per_call: int) -> dict:
    """A small MAML sinusoid run through `metax.train.train` (no gin): logs every 10 steps,
    evaluates every 15, checkpoints every 10; its final metrics without the wall time."""
    maml = learner.maml(
        meta_models.learned_init(nn.mlp([16, 16], 1)),
        optax.sgd(0.01),
        optax.adam(1e-3),
        num_inner_steps=1,
    )
    config = metax.train.TrainConfig(
        learner=maml,
        train_sampler=data.sinusoid(),
        meta_batch_size=8,
        num_steps=num_steps,
        log_every=10,
        evaluation=metax.train.Evaluation(every=15, inner_steps=(1,), num_tasks=8),
        checkpoints=metax.train.Checkpoints(every=10, max_to_keep=10),
        steps_per_call=steps_per_call,
    )
    final = metax.train.train(config, str(workdir), verbose=False)
    final.pop("wall_time_s")
    return final
