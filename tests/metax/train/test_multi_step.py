"""Several meta-steps per device call (`train.steps_per_call`): the same run, bit for bit, as
one step per call, with logs, evaluations and checkpoints at the same steps, across a resume."""

import os

import jax
import numpy as np

from tests.helpers.runs import python_api_run, read_checkpoint


def checkpointed(workdir) -> dict[int, np.ndarray]:
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    return {
        step: np.concatenate(
            [np.ravel(x) for x in jax.tree.leaves(read_checkpoint(workdir, step)["meta_params"])]
        )
        for step in steps
    }


def evaluations(workdir) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("eval/steps_1/loss")]


def test_seven_steps_per_call_is_the_one_step_run_bit_for_bit_across_a_resume(tmp_path):
    one = python_api_run(tmp_path / "one", 30, steps_per_call=1)
    seven = python_api_run(tmp_path / "seven", 30, steps_per_call=7)
    # Stopped at step 13 (a call ends there: the last step), resumed to 30, 7 per call.
    python_api_run(tmp_path / "resumed", 13, steps_per_call=7)
    resumed = python_api_run(tmp_path / "resumed", 30, steps_per_call=7)
    assert seven == one and resumed == one  # Training and evaluation metrics, exactly.
    expected = checkpointed(tmp_path / "one")
    assert sorted(expected) == [10, 20, 30]
    for workdir in ("seven", "resumed"):
        saved = checkpointed(tmp_path / workdir)
        assert sorted(saved) == ([10, 13, 20, 30] if workdir == "resumed" else [10, 20, 30])
        for step in expected:
            np.testing.assert_array_equal(saved[step], expected[step])
    # Evaluations at the same steps (15 and the end), with the same results.
    assert [step for step, _ in evaluations(tmp_path / "one")] == [15, 30]
    assert evaluations(tmp_path / "seven") == evaluations(tmp_path / "one")
