"""What a user sees and installs: a launch under a pseudo-terminal (progress bar, compile line,
summary, no library noise), and the wheel installed into a fresh venv, run from outside the
checkout with metax's packaged configs."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import sysconfig
import termios
import venv

from tests.helpers.runs import REPO, TINY
from tests.helpers.xla_flags import with_device_count

NOISE = ("oneDNN", "absl::InitializeLog", "libtpu", "Unable to initialize backend")


def run_in_pty(args: list[str], cwd, env, timeout: float = 300) -> tuple[int, str]:
    """Runs ``args`` with stdout and stderr on a pseudo-terminal; returns (exit code, output)."""
    primary, secondary = pty.openpty()
    # A terminal window of 30 rows x 120 columns (a new pty has none).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal.
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    return process.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def test_a_launch_on_a_terminal_shows_compile_time_progress_bar_and_summary(tmp_path):
    args = [
        sys.executable,
        "-m",
        "launch.train",
        "--gin_file=configs/maml_sinusoid_quick.gin",
        f"--workdir={tmp_path / 'run'}",
        f"--compilation_cache_dir={tmp_path / 'cache'}",
        *[f"--gin_bindings={b}" for b in TINY],
    ]
    env = dict(os.environ, XLA_FLAGS=with_device_count(1))
    code, output = run_in_pty(args, REPO, env)
    assert code == 0, output[-3000:]
    assert re.search(r"metax: compiled and ran the first meta-step in \d+\.\d s\.", output)
    # tqdm redraws the bar in place (carriage returns) up to 20/20, with the rate and loss.
    assert "\r" in output and re.search(r"100%\|[^\n]*\| 20/20 \[", output), output[-2000:]
    assert "step/s" in output and "loss=" in output
    assert "metax: done: 20 meta-steps in" in output
    assert "metax: meta-test on 16 held-out tasks (mean +- 95% CI):" in output
    assert re.search(r"metax:   steps_2 +loss \S+ \+- \S+", output)
    assert f"outputs in {tmp_path / 'run'}" in output
    for noise in NOISE:
        assert noise not in output, noise
    assert os.listdir(tmp_path / "cache")  # The compiled programs, for the next launch.


def fresh_venv_seeing_this_environment(path) -> str:
    """A new venv at ``path`` whose interpreter also finds the packages of the environment
    running the tests (a virtualenv or the base interpreter alike); returns its python.

    ``venv.create(system_site_packages=True)`` would expose the *base interpreter's*
    site-packages, not those of a virtualenv the suite runs in. The running environment's
    site-packages folders are added as plain path lines of a ``.pth`` file instead: the new
    venv's own site-packages come first, and the ``.pth`` files in the added folders (an
    editable install of metax among them) are not processed, so only the wheel's metax is
    found."""
    venv.create(path, with_pip=True)
    python = str(path / "bin" / "python")
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    with open(os.path.join(site_packages, "metax_test_parent_environment.pth"), "w") as f:
        f.write("\n".join(paths) + "\n")
    return python


def test_the_wheel_installs_into_a_fresh_venv_and_runs_from_outside_the_checkout(tmp_path):
    """The wheel, not the checkout: its configs are package data, found by name from any
    folder (the venv sees the dependencies of the environment running the tests, not its
    metax), whether the suite runs in a virtualenv (as README says) or not."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [REPO, "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("metax-*.whl")
    python = fresh_venv_seeing_this_environment(tmp_path / "venv")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, XLA_FLAGS=with_device_count(1))
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [python, "-c", "import launch, metax; print(metax.__file__, launch.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(path.startswith(str(tmp_path / "venv")) for path in where), where
    bindings = [b for b in TINY if not b.startswith("train.num_steps")]
    result = subprocess.run(
        [python, "-m", "launch.train", "--gin_file=maml_sinusoid_quick.gin", "--workdir=run"]
        + [f"--gin_bindings={b}" for b in (*bindings, "train.num_steps = 50")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((elsewhere / "run" / "final_metrics.json").read_text())["step"] == 50
    assert "metax: step 50/50 (100%)" in result.stdout
    assert "metax: done: 50 meta-steps" in result.stdout
    for noise in NOISE:
        assert noise not in result.stdout + result.stderr, noise
