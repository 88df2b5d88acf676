"""Two processes x 4 devices on 127.0.0.1 give the same results as 8 devices and as 1."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import metax_test_learners
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.flatten_util import ravel_pytree
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


@pytest.mark.parametrize("name", ["maml", "implicit", "evolution"])
def test_learner_steps_match_across_processes_and_devices(name, tmp_path):
    port, out = free_port(), tmp_path / "result.npz"
    run_processes(
        [
            [
                sys.executable,
                os.path.join(TESTS, "multihost_worker.py"),
                name,
                str(i),
                "2",
                str(port),
                str(out),
            ]
            for i in range(2)
        ]
    )
    two_processes = np.load(out)
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


def read_meta_params(path):
    """A checkpoint's meta-parameters as one flat vector, on this process's first device
    (the checkpoint may come from another topology)."""
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(path)
    tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    return np.asarray(ravel_pytree(checkpointer.restore(path, abstract)["meta_params"])[0])


def test_launcher_on_two_processes_matches_one_process(tmp_path):
    port = free_port()
    outputs = run_processes([launcher(tmp_path / "two", i, port) for i in range(2)])
    assert "metax: writing to" in outputs[0] and "metax: writing to" not in outputs[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    single = subprocess.run(
        launcher(tmp_path / "one"), cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert single.returncode == 0, single.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    one = json.loads((tmp_path / "one" / "final_metrics.json").read_text())
    for key, value in one.items():
        if key != "wall_time_s":
            np.testing.assert_allclose(two[key], value, rtol=1e-5, err_msg=key)
    restored = [
        read_meta_params(tmp_path / run / "checkpoints" / "20" / "default")
        for run in ("two", "one")
    ]
    np.testing.assert_allclose(restored[0], restored[1], rtol=1e-5, atol=1e-7)


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
