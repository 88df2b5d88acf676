"""Meta-validation: periodic evaluation on validation tasks, the best checkpoint kept by orbax
and reported on the meta-test tasks, across a resume; `evaluate_run` picks it."""

import os

import gin
import pytest

import metax.train
from metax.train import checkpoints, sharding
from metax.train import workdir as run_dir
from metax.train.evaluation import Evaluator
from metax.train.step import abstract_state, make_train_step
from tests.helpers.runs import REPO

CONFIGS = os.path.join(REPO, "configs")
BINDINGS = [
    "train.meta_batch_size = 8",
    "train.log_every = 10",
    "Evaluation.every = 10",
    "Checkpoints.every = 10",
    "Checkpoints.max_to_keep = 5",
    "Evaluation.num_tasks = 16",
    "Evaluation.inner_steps = (1,)",
    "outer/optax.adam.learning_rate = 0.01",
    "train.validation = @metax.train.Validation()",
    "Validation.sampler = @val/metax.data.sinusoid()",
    "val/metax.data.sinusoid.num_train_shots = 5",
]


def run(workdir, num_steps, extra=()):
    gin.clear_config()
    gin.add_config_file_search_path(CONFIGS)
    gin.parse_config_files_and_bindings(
        [os.path.join(CONFIGS, "maml_sinusoid_quick.gin")],
        [*BINDINGS, f"train.num_steps = {num_steps}", *extra],
        skip_unknown=False,
    )
    return metax.train.train(metax.train.TrainConfig(), str(workdir), allow_config_change=True)


def test_best_validation_checkpoint_is_kept_across_a_resume_and_reported(tmp_path):
    try:
        run(tmp_path, 20)
        final = run(tmp_path, 30)  # Resumed from step 20.
        best_step = int(final["best/step"])
        learner = gin.query_parameter("train.learner").scoped_configurable_fn()
        sampler = gin.query_parameter("Validation.sampler").scoped_configurable_fn()
        # The validation loss of every checkpoint: the kept one is the lowest.
        mesh = sharding.task_mesh()
        init, _ = make_train_step(learner, sampler, 8, mesh, 0)
        evaluation = metax.train.Evaluation(num_tasks=16, inner_steps=(1,))
        validator = Evaluator(learner, sampler, mesh, 0, evaluation, 8, split="val")
        manager = checkpoints.checkpoint_manager(run_dir.resolve(str(tmp_path)))
        losses = {}
        for step in (10, 20, 30):
            state, _ = checkpoints.restore_latest(
                manager, abstract_state(init, mesh), set_aside=False, step=step
            )
            losses[step] = validator(state)["val/steps_1/loss"]
        manager.close()
        assert best_step == min(losses, key=losses.get), losses
        assert len(set(losses.values())) == 3  # The run moved: the choice was a real one.
        assert sorted(os.listdir(tmp_path / "best_checkpoint")) == [str(best_step)]
        best = metax.train.evaluate_run(str(tmp_path), checkpoint="best")
        assert best["step"] == best_step
        for name, value in best.items():
            if name.startswith("eval/"):
                assert value == final[name], name  # The final report is the best checkpoint's.
    finally:
        gin.clear_config()


def test_select_metric_is_checked(tmp_path):
    try:
        with pytest.raises(ValueError, match="Validation.metric must be 'val/<setting>/<metric>'"):
            run(tmp_path / "a", 10, ["Validation.metric = 'val/steps_2/loss'"])
        with pytest.raises(ValueError, match="is not a validation metric of this learner"):
            run(tmp_path / "b", 10, ["Validation.metric = 'val/steps_1/acc'"])
    finally:
        gin.clear_config()
