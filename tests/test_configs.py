"""Every experiment config parses: configurables and parameter names exist, includes resolve."""

import glob
import os

import gin
import pytest

import metax.train  # noqa: F401  (registers `train`)
import metax.train.configurables  # noqa: F401

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
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
