"""The launcher end to end, as a user runs it: outputs, resume, device-count independence, typos."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "train.num_steps = 20",
    "train.meta_batch_size = 8",
    "train.log_every = 10",
    "train.eval_every = 10",
    "train.checkpoint_every = 10",
    "train.eval_num_tasks = 16",
    "train.eval_batch_size = 8",
    "train.eval_inner_steps = (1, 2)",
]


def launch(workdir, bindings=(), devices=8, gin_file="configs/maml_sinusoid_quick.gin"):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    args = [sys.executable, "-m", "launch.train", f"--gin_file={gin_file}", f"--workdir={workdir}"]
    args += [f"--gin_bindings={b}" for b in (*TINY, *bindings)]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = launch(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_run_writes_config_events_checkpoints_and_final_metrics(finished_run):
    workdir, _ = finished_run
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


def test_one_and_eight_devices_give_the_same_numbers(finished_run, tmp_path):
    workdir, _ = finished_run
    eight = json.loads((workdir / "final_metrics.json").read_text())
    result = launch(tmp_path / "one", devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "final_metrics.json").read_text())
    for key, value in one.items():
        if key != "wall_time_s":
            np.testing.assert_allclose(eight[key], value, rtol=1e-5, err_msg=key)


def test_resumed_run_ends_where_an_uninterrupted_run_ends(finished_run, tmp_path):
    workdir, _ = finished_run
    uninterrupted = json.loads((workdir / "final_metrics.json").read_text())
    first = launch(tmp_path / "resumed", bindings=["train.num_steps = 10"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(tmp_path / "resumed")  # Same command, same workdir, now to 20 steps.
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from the checkpoint of step 10" in second.stderr
    assert "Training from step 10 to 20" in second.stderr
    resumed = json.loads((tmp_path / "resumed" / "final_metrics.json").read_text())
    for key, value in uninterrupted.items():
        if key != "wall_time_s":
            assert resumed[key] == value, key  # Bitwise: same batches, same state.


def test_typo_in_a_binding_fails_naming_it(tmp_path):
    result = launch(tmp_path / "typo", bindings=["train.num_step = 5"])
    assert result.returncode != 0
    assert "doesn't have a parameter named 'num_step'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "typo").exists()


def test_missing_gin_file_fails_clearly(tmp_path):
    result = launch(tmp_path / "missing", gin_file="configs/no_such_experiment.gin")
    assert result.returncode != 0
    assert "gin file 'configs/no_such_experiment.gin' does not exist" in result.stderr
