"""Two processes x 4 devices on 127.0.0.1 give the same results as 8 devices and as 1, and a
SIGTERM to both stops them at the same step.

The comparisons run in float64. 1, 8 and 2 x 4 devices sum the task gradients in different
orders (in-device, in-process all-reduce, gloo across processes), so results agree only to
rounding. In float32 that rounding (3e-8 after one step) was enough to move a ReLU unit
sitting 4e-8 from its kink across it: the second-order meta-gradient, which contains
relu'(z), then jumped by 7e-5 at the fourth step, on one CPU and not another. In float64 the
same orders of summation differ by ~1e-16, and the results agree to 6e-17 after 4 steps, so
rtol 1e-12 has room for rounding while any real difference (another key, a missing term, a
summed instead of averaged gradient) is orders of magnitude larger.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.helpers import learners
from tests.helpers.runs import (
    REPO,
    checkpoint_steps,
    free_port,
    launcher,
    read_checkpoint,
    run_processes,
)
from tests.helpers.xla_flags import with_device_count

WORKER = os.path.join(REPO, "tests", "helpers", "multihost_worker.py")


LEARNERS = ("maml", "fewshot_maml")


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    port = free_port()
    run_processes(
        [
            [
                sys.executable,
                WORKER,
                str(i),
                "2",
                str(port),
                str(out),
                *LEARNERS,
            ]
            for i in range(2)
        ]
    )
    return {name: np.load(out / f"{name}.npz") for name in LEARNERS}


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_steps_match_across_processes_and_devices(name, two_process_results, x64):
    two_processes = two_process_results[name]
    assert two_processes["params"].dtype == np.float64
    for devices in (jax.devices(), jax.devices()[:1]):
        params, metrics = learners.run(name, devices)
        np.testing.assert_allclose(two_processes["params"], params, rtol=1e-12, atol=1e-14)
        for key, value in metrics.items():
            np.testing.assert_allclose(
                two_processes[key], value, rtol=1e-12, atol=1e-14, err_msg=key
            )


def test_a_missing_process_fails_within_the_timeout_with_a_clear_message(tmp_path):
    env = dict(os.environ, XLA_FLAGS=with_device_count(4))
    start = time.time()
    result = subprocess.run(
        launcher(tmp_path / "alone", 0, free_port(), timeout_s=5),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert time.time() - start < 60
    assert "if they have not all joined within --initialization_timeout=5 s" in result.stderr
    assert "JAX distributed service detected fatal errors" in result.stderr


def test_sigterm_on_two_processes_saves_the_same_step_and_resumes_bitwise(tmp_path):
    """A preempted pod slice: SIGTERM to both processes while they train. JAX's preemption
    notifier must see it (a Python SIGTERM handler used to replace it, so the run trained on
    until killed): both stop at the same step, save it and exit 0; the resumed run ends
    bitwise equal to an uninterrupted 2-process run."""
    env = dict(os.environ, XLA_FLAGS=with_device_count(4))
    port, workdir = free_port(), tmp_path / "preempted"
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    # Long enough that SIGTERM arrives mid-run; the resumed run is shortened to step + 20.
    no_periodic = ["Checkpoints.every = 1000000", "Evaluation.every = 1000000"]
    long_run = ["train.num_steps = 1000000", *no_periodic]
    procs = [
        subprocess.Popen(
            launcher(workdir, i, port) + [f"--gin_bindings={b}" for b in long_run],
            cwd=REPO,
            env=env,
            stdout=open(log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        for i, log in enumerate(logs)
    ]
    try:
        deadline = time.time() + 120
        while "metax: compiled and ran the first meta-step" not in logs[0].read_text():
            assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            assert time.time() < deadline, "timed out waiting for training to start"
            time.sleep(0.05)
        time.sleep(1.0)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    (step,) = checkpoint_steps(workdir)
    assert 0 < step < 1000000
    for text in texts:  # Both processes stopped at that step.
        assert f"at step {step}: saved the checkpoint of step {step}" in text, text[-2000:]
    assert int(read_checkpoint(workdir, step)["step"]) == step

    end = [f"train.num_steps = {step + 20}", *no_periodic]
    outputs = {
        folder: run_processes(
            [launcher(folder, i, port) + [f"--gin_bindings={b}" for b in end] for i in range(2)]
        )
        for folder, port in ((workdir, free_port()), (tmp_path / "uninterrupted", free_port()))
    }
    resumed = outputs[workdir]
    assert f"metax: resumed from the checkpoint of step {step}" in resumed[0], resumed[0][-2000:]
    assert checkpoint_steps(tmp_path / "uninterrupted") == [step + 20]
    assert checkpoint_steps(workdir) == [step, step + 20]
    jax.tree.map(
        np.testing.assert_array_equal,
        read_checkpoint(workdir, step + 20),
        read_checkpoint(tmp_path / "uninterrupted", step + 20),
    )
    metrics = [
        json.loads((f / "final_metrics.json").read_text())
        for f in (workdir, tmp_path / "uninterrupted")
    ]
    for name in metrics[1]:
        if name.startswith("eval/"):  # Training metrics average a log interval cut by the stop.
            assert metrics[0][name] == metrics[1][name], name
