"""The launcher end to end, as a user runs it: outputs, resume, device-count independence, typos."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from xla_flags import with_device_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


# Runs compared across device and process counts are float64 (JAX_ENABLE_X64): their sums
# are ordered differently, and float32 rounding can move a ReLU across its kink and so change
# a second-order meta-gradient by far more than rounding (see tests/test_multihost.py).
X64 = {"JAX_ENABLE_X64": "1"}
SAME_NUMBERS = {"rtol": 1e-12, "atol": 1e-14}


def launch(
    workdir, bindings=(), devices=8, gin_file="configs/maml_sinusoid_quick.gin", env_vars=None
):
    env = dict(
        os.environ,
        XLA_FLAGS=with_device_count(devices),
        **(env_vars or {}),
    )
    args = [sys.executable, "-m", "launch.train", f"--gin_file={gin_file}", f"--workdir={workdir}"]
    args += [f"--gin_bindings={b}" for b in (*TINY, *bindings)]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = launch(workdir, env_vars=X64)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_run_writes_config_events_checkpoints_and_final_metrics(finished_run):
    workdir, result = finished_run
    # Not a terminal: a plain line per log interval, the summary, no library noise.
    assert "metax: step 10/20 (50%)   outer/loss " in result.stdout
    assert "metax: done: 20 meta-steps in" in result.stdout
    for noise in ("oneDNN", "absl::InitializeLog", "libtpu", "INFO"):
        assert noise not in result.stdout + result.stderr, noise
    assert "train.num_steps = 20" in (workdir / "config.gin").read_text()
    assert glob.glob(str(workdir / "events.out.tfevents.*"))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    metrics = json.loads((workdir / "final_metrics.json").read_text())
    assert metrics["step"] == 20 and metrics["eval/num_tasks"] == 16
    for key in (
        "eval/steps_1/loss",
        "eval/steps_1/loss_ci95",
        "eval/steps_2/loss",
        "train/outer/loss",
    ):
        assert np.isfinite(metrics[key]), key


def test_tensorboard_holds_classic_scalars_the_config_hparams_and_parameter_overview(
    finished_run,
):
    """What TensorBoard readers find: classic scalar events (EventAccumulator.Scalars, not
    only tensors), the operative config and the meta-parameter table as text, hparams."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, _ = finished_run
    events = EventAccumulator(str(workdir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    losses = events.Scalars("train/outer/loss")
    assert [e.step for e in losses] == [10, 20] and all(np.isfinite(e.value) for e in losses)
    assert [e.step for e in events.Scalars("steps_per_sec")] == [10, 20]
    assert [e.step for e in events.Scalars("eval/steps_2/loss")] == [10, 20]
    tensors = events.Tags()["tensors"]
    assert {"config", "meta_parameters", "_hparams_/session_start_info"} <= set(tensors)
    (table,) = events.Tensors("meta_parameters")
    text = table.tensor_proto.string_val[0].decode()
    assert text.startswith("1,761 meta-parameters") and "init/layer_1/w" in text
    (config,) = events.Tensors("config")
    assert "train.num_steps = 20" in config.tensor_proto.string_val[0].decode()


def test_one_and_eight_devices_give_the_same_numbers(finished_run, tmp_path):
    workdir, _ = finished_run
    eight = json.loads((workdir / "final_metrics.json").read_text())
    result = launch(tmp_path / "one", devices=1, env_vars=X64)
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "final_metrics.json").read_text())
    for key, value in one.items():
        if key != "wall_time_s":
            np.testing.assert_allclose(eight[key], value, **SAME_NUMBERS, err_msg=key)


def read_meta_params(workdir, step):
    """A checkpoint's meta-parameters as one flat vector (saved by any topology)."""
    from jax.flatten_util import ravel_pytree
    from test_multihost import read_checkpoint

    return np.asarray(ravel_pytree(read_checkpoint(workdir, step)["meta_params"])[0])


def test_two_processes_give_the_same_run_as_one(finished_run, tmp_path, x64):
    """2 processes x 4 devices (jax.distributed on 127.0.0.1) against the 8-device run:
    same final metrics and checkpointed meta-parameters; only process 0 prints."""
    from test_multihost import free_port, launcher, run_processes

    workdir, _ = finished_run
    port = free_port()
    outputs = run_processes([launcher(tmp_path / "two", i, port) for i in range(2)], X64)
    assert "metax: writing to" in outputs[0] and "metax: writing to" not in outputs[1]
    two = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    one = json.loads((workdir / "final_metrics.json").read_text())
    for key, value in one.items():
        if key != "wall_time_s":
            np.testing.assert_allclose(two[key], value, **SAME_NUMBERS, err_msg=key)
    two_params = read_meta_params(tmp_path / "two", 20)
    assert two_params.dtype == np.float64
    np.testing.assert_allclose(two_params, read_meta_params(workdir, 20), **SAME_NUMBERS)


def test_long_run_on_eight_virtual_devices_completes(tmp_path):
    """300 steps between two metric fetches and 8 evaluation chunks: unbounded queues of
    multi-device steps used to deadlock XLA:CPU's all-reduce here (aborting after 40 s)."""
    result = launch(
        tmp_path / "long",
        bindings=[
            "train.num_steps = 300",
            "train.log_every = 300",
            "Evaluation.every = 300",
            "Checkpoints.every = 300",
            "Evaluation.num_tasks = 64",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "long" / "final_metrics.json").read_text())["step"] == 300
