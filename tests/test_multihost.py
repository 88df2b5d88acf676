"""Two processes x 4 devices on 127.0.0.1 give the same results as 8 devices and as 1."""

import os
import socket
import subprocess
import sys
import time

import jax
import metax_test_learners
import numpy as np
import pytest
from test_launcher import REPO, TINY

TESTS = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands, timeout=240):
    """Starts one subprocess per command, waits for all, kills all on timeout or failure."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
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


# A gradient learner on regression and on the image sampler; the other learners share its
# sharding path or are checked on 8 devices = 1 (tests/test_learners.py).
LEARNERS = ("maml", "fewshot_maml")


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    port = free_port()
    run_processes(
        [
            [
                sys.executable,
                os.path.join(TESTS, "multihost_worker.py"),
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
def test_learner_steps_match_across_processes_and_devices(name, two_process_results):
    two_processes = two_process_results[name]
    for devices in (jax.devices(), jax.devices()[:1]):
        params, metrics = metax_test_learners.run(name, devices)
        np.testing.assert_allclose(two_processes["params"], params, rtol=1e-5, atol=1e-6)
        for key, value in metrics.items():
            np.testing.assert_allclose(two_processes[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def launcher(workdir, process_id=None, port=None, timeout_s=60):
    args = [
        sys.executable,
        "-m",
        "launch.train",
        "--gin_file=configs/maml_sinusoid_quick.gin",
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


def test_a_missing_process_fails_within_the_timeout_with_a_clear_message(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
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
