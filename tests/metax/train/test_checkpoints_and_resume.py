"""Runs that survive: SIGKILL, SIGTERM, corrupted and partial checkpoints, config changes on
resume, non-finite updates, and evaluating a run from its workdir."""

import json
import os
import random
import shutil
import signal
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers.runs import (
    STEPS,
    assert_trees_equal,
    checkpoint_steps,
    final_metrics,
    meta_params,
    restore_state,
    run,
    start,
    wait_for,
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run(workdir)
    return workdir


def test_sigkill_at_a_random_step_then_resume_ends_bitwise_equal(uninterrupted, tmp_path):
    """Killed (SIGKILL) as soon as a checkpoint at or past a random step exists, i.e. while it
    computes (or saves) the steps after it; the same command then resumes from the last
    complete checkpoint and ends bitwise equal."""
    workdir = tmp_path / "killed"
    target = random.randrange(5, STEPS - 20, 5)
    process, _ = start(workdir)
    wait_for(lambda: checkpoint_steps(workdir)[-1:] >= [target], process)
    process.kill()
    process.wait()
    killed_at = checkpoint_steps(workdir)
    assert killed_at[-1] < STEPS, (target, killed_at)  # Killed mid-run.
    resumed = run(workdir)
    assert f"metax: resumed from the checkpoint of step {killed_at[-1]}" in resumed.stdout
    assert final_metrics(workdir) == final_metrics(uninterrupted)
    assert_trees_equal(meta_params(workdir, STEPS), meta_params(uninterrupted, STEPS))


def test_sigterm_saves_the_current_step_and_exits_0(uninterrupted, tmp_path):
    workdir = tmp_path / "preempted"
    process, log = start(workdir, ["train.num_steps = 100000", "Checkpoints.every = 1000"])
    wait_for(lambda: "metax: compiled and ran the first meta-step" in log.read_text(), process)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    (step,) = checkpoint_steps(workdir)  # Saved at the current step, not a periodic one.
    assert 0 < step < 1000
    assert (
        f"Received SIGTERM at step {step}: saved the checkpoint of step {step}" in log.read_text()
    )
    # The checkpoint holds the state of that step (resuming from it: the SIGKILL test above).
    assert int(restore_state(workdir, step)["step"]) == step


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(uninterrupted, tmp_path):
    workdir = tmp_path / "corrupt"
    shutil.copytree(uninterrupted, workdir)
    assert checkpoint_steps(workdir) == [STEPS - 5, STEPS]
    latest = workdir / "checkpoints" / str(STEPS)
    files = [os.path.join(root, f) for root, _, names in os.walk(latest) for f in names]
    damaged = max(files, key=os.path.getsize)
    with open(damaged, "r+b") as f:
        f.truncate(os.path.getsize(damaged) // 2)
    # A save killed half-way leaves only orbax's temporary folder: never taken for a step.
    shutil.copytree(
        workdir / "checkpoints" / str(STEPS - 5),
        workdir / "checkpoints" / f"{STEPS + 5}.orbax-checkpoint-tmp-1",
    )
    resumed = run(workdir, [f"train.num_steps = {STEPS + 5}"])
    assert f"The checkpoint of step {STEPS} is unreadable" in resumed.stderr
    assert f"metax: resumed from the checkpoint of step {STEPS - 5}" in resumed.stdout
    assert (workdir / "corrupt_checkpoints" / str(STEPS)).exists()  # Set aside, not deleted.
    assert checkpoint_steps(workdir) == [STEPS, STEPS + 5]
    # The last 5 steps were replayed: the same meta-parameters as the uninterrupted run's.
    assert_trees_equal(meta_params(workdir, STEPS), meta_params(uninterrupted, STEPS))


def test_resume_with_another_config_is_refused_with_a_diff(uninterrupted, tmp_path):
    workdir = tmp_path / "changed"
    shutil.copytree(uninterrupted, workdir)
    stored = (workdir / "config.gin").read_text()
    refused = run(workdir, ["train.seed = 1", "outer/optax.adam.learning_rate = 0.01"], ok=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "was started with another config; changed bindings:" in refused.stderr
    assert "outer/adam.learning_rate: 0.001 -> 0.01" in refused.stderr
    assert "train.seed: 0 -> 1" in refused.stderr
    assert "--allow_config_change" in refused.stderr
    assert checkpoint_steps(workdir) == [STEPS - 5, STEPS]
    assert not (workdir / "config.1.gin").exists()
    assert (workdir / "config.gin").read_text() == stored
    # --allow_config_change: see the next test, which resumes with a changed learning rate.


def test_nonfinite_update_stops_the_run_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path):
    workdir = tmp_path / "diverged"
    shutil.copytree(uninterrupted, workdir)
    good = (workdir / "checkpoints" / str(STEPS)).stat().st_mtime
    params = meta_params(workdir, STEPS)
    stored = (workdir / "config.gin").read_text()
    diverging = ["inner/optax.sgd.learning_rate = 1e30", f"train.num_steps = {STEPS + 10}"]
    failed = run(workdir, diverging, flags=["--allow_config_change"], ok=False)
    assert f"metax: resumed from the checkpoint of step {STEPS}" in failed.stdout
    assert (workdir / "config.gin").read_text() == stored  # Never overwritten,
    # and the failed attempt's config is not kept: it produced no checkpoint (a kept one
    # would make the original command be refused as "another config").
    assert not (workdir / "config.1.gin").exists()
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: Non-finite ") and f"at meta-step {STEPS + 1}" in line
    assert f"the last checkpoint, of step {STEPS}, is intact" in line
    assert checkpoint_steps(workdir) == [STEPS - 5, STEPS]
    assert (workdir / "checkpoints" / str(STEPS)).stat().st_mtime == good
    assert_trees_equal(meta_params(workdir, STEPS), params)
    skipping = run(workdir, [*diverging, "train.skip_nonfinite = True"], ["--allow_config_change"])
    assert skipping.returncode == 0
    assert "learning_rate = 1e+30" in (workdir / "config.1.gin").read_text()  # Stored beside.
    metrics = json.loads((workdir / "final_metrics.json").read_text())
    assert metrics["train/skipped_steps"] == 5  # Every step of the last log interval.
    assert_trees_equal(meta_params(workdir, STEPS + 10), params)  # No update was applied.


def test_evaluate_a_finished_run_reproduces_its_final_evaluation(uninterrupted, tmp_path):
    workdir = tmp_path / "evaluated"
    shutil.copytree(uninterrupted, workdir)
    # A save in progress (a temporary folder) is ignored: only complete checkpoints are read.
    shutil.copytree(
        workdir / "checkpoints" / str(STEPS - 5),
        workdir / "checkpoints" / f"{STEPS + 10}.orbax-checkpoint-tmp-7",
    )
    result = run(workdir, module="launch.evaluate")
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {k: v for k, v in final_metrics(uninterrupted).items() if k.startswith("eval/")}
    assert printed == {"step": float(STEPS), **expected}
    assert json.loads((workdir / f"eval_step_{STEPS}.json").read_text()) == printed
    missing = run(tmp_path / "nothing", module="launch.evaluate", ok=False)
    assert missing.returncode != 0 and "holds no metax run" in missing.stderr


def test_evolution_strategy_state_resumes_exactly(tmp_path):
    """The evosax strategy state is part of the checkpoint: 5 steps, save, restore into a
    fresh process's abstract state, 5 more steps = 10 uninterrupted steps, bitwise."""
    import jax
    import jax.numpy as jnp

    from metax import data, learner, meta_models, nn
    from metax.train import checkpoints, sharding
    from metax.train import workdir as run_dir
    from metax.train.step import abstract_state as _abstract_state
    from metax.train.step import make_train_step

    evolution = learner.evolution(
        meta_models.anil(nn.mlp([8], 8, activate_final=True), nn.linear(1)), population_size=4
    )
    mesh = sharding.task_mesh(jax.devices()[:1])
    init, step = make_train_step(evolution, data.sinusoid(), 4, mesh, seed=0)

    def steps(state, n):
        for _ in range(n):
            state, _ = step(state)
        return state

    whole = steps(init(), 10)
    manager = checkpoints.checkpoint_manager(run_dir.resolve(str(tmp_path)))
    manager.save(5, args=ocp.args.StandardSave(steps(init(), 5)))
    manager.wait_until_finished()
    restored, at = checkpoints.restore_latest(manager, _abstract_state(init, mesh))
    manager.close()
    assert at == 5
    resumed = steps(restored, 5)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole), strict=True):
        np.testing.assert_array_equal(jnp.asarray(a), jnp.asarray(b))
