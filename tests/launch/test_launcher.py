"""The launcher end to end, as a user runs it: outputs, resume, device-count independence, typos."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.runs import SAME_NUMBERS, TINY, X64, launch, read_meta_params
from tests.helpers.xla_flags import with_device_count


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


def test_two_processes_give_the_same_run_as_one(finished_run, tmp_path, x64):
    """2 processes x 4 devices (jax.distributed on 127.0.0.1) against the 8-device run:
    same final metrics and checkpointed meta-parameters; only process 0 prints."""
    from tests.helpers.runs import free_port, launcher, run_processes

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


def test_a_data_folder_in_the_working_directory_does_not_break_config_includes(tmp_path):
    """ML projects keep a data/ folder: under `python -m` it is a namespace package on
    sys.path, which made gin's package reader crash (TypeError) on `include 'data/...'`."""
    project = tmp_path / "project"
    for folder in ("data", "models", "learners"):
        (project / folder).mkdir(parents=True)
    env = dict(os.environ, XLA_FLAGS=with_device_count(1))
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", "--gin_file=maml_sinusoid_quick.gin"]
        + ["--workdir=run", *[f"--gin_bindings={b}" for b in TINY]],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metax: done: 20 meta-steps" in result.stdout
