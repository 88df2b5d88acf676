"""Every experiment config parses: configurables and parameter names exist, includes resolve."""

import glob
import os

import gin
import pytest

import metax.train  # noqa: F401  (registers `train`)
import metax.train.configurables  # noqa: F401
from tests.helpers.runs import REPO

CONFIGS = os.path.join(REPO, "configs")
EXPERIMENTS = sorted(
    path for path in glob.glob(os.path.join(CONFIGS, "*.gin")) if not path.endswith("_common.gin")
)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_experiment_config_parses(path):
    gin.clear_config()
    gin.add_config_file_search_path(CONFIGS)
    try:
        gin.parse_config_files_and_bindings([path], [], skip_unknown=False)
        assert gin.query_parameter("train.learner") is not None
        assert gin.query_parameter("train.train_sampler") is not None
    finally:
        gin.clear_config()


def test_every_experiment_says_what_it_reproduces():
    for path in EXPERIMENTS:
        with open(path) as f:
            first = f.readline()
        assert first.startswith("# "), f"{path} must start with a comment saying what it runs"


@pytest.mark.parametrize(
    "name", ["metasgd_sinusoid.gin", "mamlpp_sinusoid.gin", "maml_sinusoid_schedule.gin"]
)
def test_new_method_configs_train_a_few_steps(tmp_path, name):
    import math

    gin.clear_config()
    gin.add_config_file_search_path(CONFIGS)
    overrides = [
        "train.num_steps = 20",
        "train.meta_batch_size = 8",
        "train.log_every = 10",
        "Evaluation.every = 20",
        "Checkpoints.every = 20",
        "Evaluation.num_tasks = 8",
    ]
    try:
        gin.parse_config_files_and_bindings(
            [os.path.join(CONFIGS, name)], overrides, skip_unknown=False
        )
        final = metax.train.train(metax.train.TrainConfig(), str(tmp_path))
    finally:
        gin.clear_config()
    losses = {k: v for k, v in final.items() if k.startswith("eval/") and k.endswith("/loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), final
    if name == "maml_sinusoid_schedule.gin":
        # optax's warmup from 0 to 2e-3 over 500 steps, read from the optimizer state:
        # meta-steps 10..19 (the last log interval) use 2e-3 * t / 500, mean 5.8e-5.
        assert math.isclose(final["train/outer/learning_rate"], 2e-3 * 14.5 / 500, rel_tol=1e-5)
