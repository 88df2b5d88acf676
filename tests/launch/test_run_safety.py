"""Runs that survive everything around the training loop, tried as on a shared, preemptible
machine: two launchers on one workdir, evaluating while training deletes checkpoints, signals
in start-up and in the final evaluation, finished runs run again, a full disk."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.runs import (
    REPO,
    SHORT_ENV,
    STEPS,
    checkpoint_steps,
    command,
    final_metrics,
    run,
    start,
    wait_for,
)

QUIET = ["train.log_every = 100000", "Checkpoints.every = 100000"]  # Nothing written.
LONG = ["train.num_steps = 100000", *QUIET]


def files(folder, but_events=False) -> dict:
    """Every file under ``folder`` with its size and modification time (but TensorBoard's
    event files, which a running run appends to, with ``but_events``)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if but_events and name.startswith("events.out.tfevents"):
                continue
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = (os.path.getsize(path), os.path.getmtime(path))
    return found


def stop(process, sig=signal.SIGKILL) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout=120)


def test_a_second_launcher_is_refused_at_once_naming_the_holder_and_a_killed_one_frees_it(
    tmp_path,
):
    workdir = tmp_path / "shared"
    first, log = start(workdir, LONG)
    try:
        wait_for(lambda: "metax: compiled and ran the first meta-step" in log.read_text(), first)
        before = files(workdir, but_events=True)
        began = time.time()
        second = run(workdir, LONG, ok=False)
        assert time.time() - began < 60
        assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr[-3000:]
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith(f"Error: The workdir {workdir} is in use by process {first.pid}")
        assert f"on host {socket.gethostname()}" in line
        assert files(workdir, but_events=True) == before  # The refused one changed nothing,
        assert len([f for f in os.listdir(workdir) if f.startswith("events")]) == 1  # no events.
        assert first.poll() is None  # and the first trains on.
    finally:
        stop(first)  # SIGKILL: no chance to release anything but what the OS releases.
    again = run(workdir, ["train.num_steps = 10", "Checkpoints.every = 5"])
    assert "metax: done: 10 meta-steps" in again.stdout


def test_evaluating_a_run_that_deletes_its_checkpoints_never_fails(tmp_path):
    """A checkpoint every step, only the newest kept: each read races the run's deletions."""
    from metax.train import restore_run

    workdir = tmp_path / "busy"
    busy = ["train.num_steps = 400", "Checkpoints.every = 1", "Checkpoints.max_to_keep = 1"]
    process, log = start(workdir, busy)
    steps = []
    try:
        wait_for(lambda: (workdir / "config.gin").exists(), process)
        while process.poll() is None and len(steps) < 15:
            steps.append(restore_run(str(workdir)).step)
    finally:
        code = stop(process, signal.SIGTERM)
    assert code == 0, log.read_text()[-3000:]
    assert len(steps) >= 3 and steps == sorted(steps), steps


def test_sigterm_while_reading_data_exits_0_saying_nothing_was_saved(tmp_path):
    """The launcher prepares Omniglot (seconds) before compiling: SIGTERM arrives there."""
    zips = os.environ.get(
        "METAX_OMNIGLOT_DIR", os.path.join(os.path.dirname(REPO), "shared", "data", "omniglot")
    )
    if not os.path.exists(os.path.join(zips, "images_background_small1.zip")):
        pytest.skip(f"Omniglot zips not found in {zips}.")
    env = dict(SHORT_ENV, METAX_OMNIGLOT_DIR=zips, METAX_TFDS_DIR=str(tmp_path / "tfds"))
    workdir = tmp_path / "run"
    log = tmp_path / "run.log"
    args = [sys.executable, "-m", "launch.train", "--gin_file=configs/maml_omniglot_minimal.gin"]
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*args, f"--workdir={workdir}"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    wait_for(lambda: "metax: writing to" in log.read_text(), process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Received SIGTERM during start-up, before any meta-step: nothing to save" in text, text[
        -2000:
    ]
    assert "Traceback" not in text
    assert checkpoint_steps(workdir) == [] and not (workdir / "config.gin").exists()


LONG_FINAL = ["Evaluation.num_tasks = 2400"]  # A final evaluation of seconds.


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(workdir, LONG_FINAL)
    return workdir


def test_sigterm_in_the_final_evaluation_exits_0_and_the_rerun_gives_the_same_report(
    uninterrupted, tmp_path
):
    workdir = tmp_path / "preempted"
    process, log = start(workdir, LONG_FINAL)
    wait_for(lambda: "final evaluation on" in log.read_text(), process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Received SIGTERM during the final evaluation: the checkpoint of step" in text
    assert STEPS in checkpoint_steps(workdir) and not (workdir / "final_metrics.json").exists()
    resumed = run(workdir, LONG_FINAL)
    assert f"metax: resumed from the checkpoint of step {STEPS}" in resumed.stdout
    assert final_metrics(workdir) == final_metrics(uninterrupted)  # train/* metrics included.


def test_a_finished_run_stays_finished(uninterrupted, tmp_path):
    """Killed in its final evaluation or run again when finished, a run reports what the
    uninterrupted run reported; a lower num_steps is refused, naming the run's step."""
    workdir = tmp_path / "killed"
    process, log = start(workdir, LONG_FINAL)
    wait_for(lambda: "final evaluation on" in log.read_text(), process)
    stop(process)  # SIGKILL.
    run(workdir, LONG_FINAL)
    assert final_metrics(workdir) == final_metrics(uninterrupted)
    report = (workdir / "final_metrics.json").read_bytes()
    before = files(workdir)
    again = run(workdir, LONG_FINAL)
    assert f"The run in {workdir} finished at step {STEPS}" in again.stdout
    assert (workdir / "final_metrics.json").read_bytes() == report
    assert files(workdir) == before  # Nothing rewritten, no new event file.
    lower = run(workdir, [*LONG_FINAL, "train.num_steps = 30"], ok=False)
    assert lower.returncode != 0 and "Traceback" not in lower.stderr
    assert f"is at step {STEPS}, past train.num_steps = 30" in lower.stderr.splitlines()[-1]
    assert files(workdir) == before


def test_a_refused_resume_stores_no_config(uninterrupted, tmp_path):
    """Resumed with another model (other shapes), even with --allow_config_change: refused,
    and nothing stored that would refuse the original command next."""
    workdir = tmp_path / "reshaped"
    shutil.copytree(uninterrupted, workdir)
    before = files(workdir)
    reshaped = run(
        workdir,
        [*LONG_FINAL, "train.num_steps = 70", "metax.nn.mlp.hidden_sizes = (8,)"],
        flags=["--allow_config_change"],
        ok=False,
    )
    assert reshaped.returncode != 0 and "holds arrays of other shapes" in reshaped.stderr
    assert files(workdir) == before


def can_mount_a_small_disk() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp && true"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(
    not can_mount_a_small_disk(),
    reason="needs unshare -rm (user and mount namespaces) to mount a small tmpfs as a full disk",
)
def test_a_full_disk_is_one_line_leaves_nothing_half_written_and_the_rerun_resumes(tmp_path):
    """The workdir on a 256 kB tmpfs (its own mount namespace): the run stops at the first
    write that does not fit with one line; after space is freed (remounted bigger) the same
    command resumes from the last complete checkpoint."""
    mount = tmp_path / "disk"
    mount.mkdir()
    workdir = mount / "run"
    args = command(
        workdir, ["train.num_steps = 400", "Checkpoints.every = 20", "Checkpoints.max_to_keep = 50"]
    )
    launch = " ".join(f"'{a}'" for a in args)
    script = (
        f"mount -t tmpfs -o size=256k tmpfs {mount} && "
        f"{launch} > {tmp_path}/full.out 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.code; "
        f"ls -la {workdir} > {tmp_path}/full.files; "
        f"mount -o remount,size=64m {mount} && "
        f"{launch} > {tmp_path}/freed.out 2> {tmp_path}/freed.err; "
        f"echo $? > {tmp_path}/freed.code; "
        f"cat {workdir}/final_metrics.json > {tmp_path}/final.json"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=SHORT_ENV, timeout=600)
    full_err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.code").read_text().strip() != "0"
    assert "Traceback" not in full_err, full_err[-3000:]
    line = full_err.strip().splitlines()[-1]
    assert line.startswith("Error: No space left on device writing "), line
    assert " 0 " not in (tmp_path / "full.files").read_text()  # No empty file left.
    assert (tmp_path / "freed.code").read_text().strip() == "0", (
        tmp_path / "freed.err"
    ).read_text()[-3000:]
    assert "metax: resumed from the checkpoint of step" in (tmp_path / "freed.out").read_text()
    assert "Traceback" not in (tmp_path / "freed.err").read_text()
    assert json.loads((tmp_path / "final.json").read_text())["step"] == 400
