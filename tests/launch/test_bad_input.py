"""Bad input fails early through the launcher: non-zero exit, one readable line naming the cause
and the fix, and the workdir left as it was."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from metax import checks, data, energy, meta_models, nn
from tests.helpers.runs import REPO
from tests.helpers.xla_flags import with_device_count

QUICK = "configs/maml_sinusoid_quick.gin"


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its size and modification time."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = (os.path.getsize(path), os.path.getmtime(path))
    return found


def launch_error(tmp_path, args, env=None, workdir=None):
    """Runs the launcher in a workdir holding one file; returns its last stderr line after
    checking the exit code, the absence of a traceback and that the workdir is unchanged."""
    workdir = workdir or tmp_path / "run"
    os.makedirs(workdir, exist_ok=True)
    (workdir / "notes.txt").write_text("user's file")
    before = snapshot(workdir)
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", f"--workdir={workdir}", *args],
        cwd=REPO,
        env=dict(os.environ, XLA_FLAGS=with_device_count(8), **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert snapshot(workdir) == before
    return result.stderr.strip().splitlines()[-1]


def test_unknown_configurable_names_the_closest_one(tmp_path):
    line = launch_error(tmp_path, [f"--gin_file={QUICK}", "--gin_bindings=trian.num_steps = 3"])
    assert line.startswith(
        "Error in the gin config: No configurable matching 'trian'. Did you mean 'train'"
    )


def test_suggestions_stay_within_the_module_of_the_typo():
    """A misspelt learner suggests learners close to it, not every name that shares the
    'metax.learner.' prefix; a misspelt module suggests the name in the closest modules."""
    import metax.train.configurables  # noqa: F401
    from launch.common import suggest_configurable

    assert suggest_configurable("metax.learner.mml") == ["metax.learner.maml"]
    assert suggest_configurable("metax.lerner.reptil") == []
    assert suggest_configurable("metax.lerner.reptile") == ["metax.learner.reptile"]
    assert suggest_configurable("outer/optax.adm")[0] == "optax.adam"
    assert suggest_configurable("optax.warmup_cosine_decay")[0] == (
        "optax.warmup_cosine_decay_schedule"
    )
    assert suggest_configurable("learned_innit")[0] == "learned_init"


def test_unknown_parameter_names_the_closest_one(tmp_path):
    line = launch_error(
        tmp_path, [f"--gin_file={QUICK}", "--gin_bindings=metax.learner.maml.first_ordr = True"]
    )
    assert "doesn't have a parameter named 'first_ordr'. Did you mean 'first_order'?" in line


def test_missing_gin_file(tmp_path):
    line = launch_error(tmp_path, ["--gin_file=configs/no_such_experiment.gin"])
    assert "gin file 'configs/no_such_experiment.gin' not found; looked in" in line
    assert "add folders with --gin_search_paths" in line


def test_missing_required_binding_says_what_to_bind(tmp_path):
    config = tmp_path / "no_learner.gin"
    config.write_text("include 'data/sinusoid.gin'\n")
    line = launch_error(tmp_path, [f"--gin_file={config}"])
    assert line.startswith("Error: train.learner is not bound. Bind it in a gin file or with")


def test_incompatible_learner_and_meta_model(tmp_path):
    line = launch_error(
        tmp_path,
        [
            "--gin_file=configs/anil_sinusoid.gin",
            "--gin_bindings=train.learner = @metax.learner.reptile()",
            "--gin_bindings=metax.learner.reptile.meta_model = %META_MODEL",
        ],
    )
    assert "reptile cannot meta-learn the meta-parameters ['body']" in line


def test_meta_batch_not_divisible_over_devices(tmp_path):
    line = launch_error(tmp_path, [f"--gin_file={QUICK}", "--gin_bindings=train.meta_batch_size=7"])
    assert "meta-batch of 7 tasks does not divide over the 8 devices" in line
    assert "(e.g. 8)" in line


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    os.makedirs(tmp_path / "empty")
    line = launch_error(
        tmp_path,
        ["--gin_file=configs/maml_omniglot_minimal.gin"],
        env={"METAX_OMNIGLOT_DIR": str(tmp_path / "empty"), "METAX_TFDS_DIR": str(tmp_path)},
    )
    assert f"No Omniglot zip in '{tmp_path / 'empty'}'" in line
    assert "images_background_small1.zip" in line


def test_model_output_that_does_not_fit_the_targets(tmp_path):
    line = launch_error(
        tmp_path,
        [
            f"--gin_file={QUICK}",
            "--gin_bindings=metax.nn.mlp.out_features = 3",
            "--gin_bindings=train.meta_batch_size = 8",
        ],
    )
    assert "The model outputs shape (10, 3) but the tasks' targets have shape (10, 1)" in line


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.train",
            f"--gin_file={QUICK}",
            "--gin_bindings=train.meta_batch_size=8",
            f"--workdir={blocker}/run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"Cannot write to the workdir '{blocker}/run'" in result.stderr.splitlines()[-1]
    assert blocker.read_text() == ""


@pytest.mark.parametrize(
    "binding, message",
    [
        ("train.num_steps = -5", "train.num_steps must be an integer >= 1, got -5 (int)."),
        ("train.num_steps = 'x'", "train.num_steps must be an integer >= 1, got 'x' (str)."),
        ("train.num_steps = 1.5", "train.num_steps must be an integer >= 1, got 1.5 (float)."),
        ("train.seed = 'x'", "train.seed must be an integer >= 0, got 'x' (str)."),
        ("train.skip_nonfinite = 'yes'", "train.skip_nonfinite must be True or False"),
        ("train.learner = 3", "train.learner must be a metax Learner"),
        ("Evaluation.inner_steps = ()", "Evaluation.inner_steps must be a non-empty tuple"),
        ("Evaluation.inner_steps = 5", "Evaluation.inner_steps must be a non-empty tuple"),
        ("Evaluation.batch_size = 0", "Evaluation.batch_size must be an integer >= 1"),
        ("Checkpoints.max_to_keep = 2.5", "Checkpoints.max_to_keep must be an integer >= 1"),
        ("metax.learner.maml.num_inner_steps = -1", "maml num_inner_steps must be an integer >= 0"),
        (
            "metax.learner.maml.num_inner_steps = 'x'",
            "maml num_inner_steps must be an integer >= 0",
        ),
        ("metax.learner.maml.first_order = 'yes'", "maml first_order must be True or False"),
        ("metax.nn.mlp.hidden_sizes = 40", "mlp hidden_sizes must be a tuple of widths"),
        (
            "train/metax.data.sinusoid.num_train_shots = 0",
            "num_train_shots must be an integer >= 1",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_its_binding_and_nothing_is_written(
    tmp_path, binding, message
):
    workdir = tmp_path / "run"
    line = launch_error(
        tmp_path, [f"--gin_file={QUICK}", f"--gin_bindings={binding}"], workdir=workdir
    )
    assert message in line, line
    assert sorted(os.listdir(workdir)) == ["notes.txt"]  # No workdir files, no checkpoints/1.5.


@pytest.mark.parametrize(
    "old, new",
    [
        ("train.eval_every = 5", "Evaluation.every"),
        ("train.max_checkpoints_to_keep = 2", "Checkpoints.max_to_keep"),
        ("train.val_sampler = @metax.data.sinusoid()", "Validation.sampler"),
        ("metax.data.omniglot.ways = 5", "metax.data.Episodes.ways"),
    ],
)
def test_a_binding_renamed_in_0_3_is_answered_with_its_new_name(tmp_path, old, new):
    line = launch_error(tmp_path, [f"--gin_file={QUICK}", f"--gin_bindings={old}"])
    configurable = old.split("=")[0].strip().rpartition(".")[0]
    assert line.startswith(f"Error in the gin config: Configurable '{configurable}' doesn't have")
    assert f"It was renamed in metax 0.3: bind {new}" in line


def test_more_ways_than_classes(tmp_path):
    zips = os.path.join(os.path.dirname(REPO), "shared", "data", "omniglot")
    zips = os.environ.get("METAX_OMNIGLOT_DIR", zips)
    if not os.path.exists(os.path.join(zips, "images_background_small1.zip")):
        pytest.skip(f"Omniglot zips not found in {zips}.")
    line = launch_error(
        tmp_path,
        ["--gin_file=configs/maml_omniglot_minimal.gin", "--gin_bindings=WAYS = 1000"],
        env={"METAX_OMNIGLOT_DIR": zips, "METAX_TFDS_DIR": str(tmp_path / "tfds")},
    )
    assert "Episodes of 1000 ways, but the split has only 544 classes" in line


def test_classification_head_smaller_than_the_number_of_ways():
    images = np.zeros((10, 4, 8, 8, 1), np.uint8)
    episode = data.fewshot(images, data.Episodes(ways=5, shots=1, queries=1)).sample_task(
        jax.random.key(0)
    )
    model = nn.sequential(body=nn.conv4(num_channels=2, pooling="strided"), head=nn.linear(3))
    with pytest.raises(ValueError, match=r"outputs shape \(5, 3\) but the tasks are 5-way"):
        checks.check_model_fits_data(meta_models.learned_init(model, energy.cross_entropy), episode)
    fitting = nn.sequential(body=nn.conv4(num_channels=2, pooling="strided"), head=nn.linear(5))
    checks.check_model_fits_data(meta_models.learned_init(fitting, energy.cross_entropy), episode)


def test_energies_refuse_shapes_that_would_broadcast():
    import jax.numpy as jnp

    with pytest.raises(ValueError, match=r"predicts shape \(4, 1\) but the targets have shape"):
        energy.squared_error(jnp.zeros((4, 1)), jnp.zeros((4,)))
    with pytest.raises(ValueError, match="needs integer labels of shape"):
        energy.cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4,), jnp.float32))


def test_python_api_mistakes_get_errors_that_name_the_fix():
    import optax

    from metax import learner

    mlp = nn.mlp([4], 1)
    with pytest.raises(TypeError, match=r"wrap it in a meta-model.*learned_init"):
        learner.maml(mlp)
    with pytest.raises(TypeError, match="prototypical needs the embedding model"):
        learner.prototypical(meta_models.learned_init(mlp))
    with pytest.raises(TypeError, match="outer_optimizer must be an optax"):
        learner.implicit(meta_models.learned_init(mlp, reg_strength=1.0), outer_optimizer=1e-3)
    with pytest.raises(TypeError, match="inner optimizer must be an optax"):
        learner.reptile(meta_models.learned_init(mlp), inner_optimizer=0.01)

    maml = learner.maml(meta_models.learned_init(mlp), optax.sgd(0.01), optax.adam(1e-3))
    task = data.sinusoid().sample_task(jax.random.key(0))  # One task: no task axis.
    with pytest.raises(ValueError, match="no task axis"):
        maml.init(jax.random.key(0), task)
    state = maml.init(jax.random.key(0), jax.tree.map(lambda a: a[None], task))
    with pytest.raises(ValueError, match="no task axis"):
        maml.evaluate(state, task, jax.random.key(0), 1)

    images = np.random.default_rng(0).integers(0, 256, (12, 6, 8, 8, 1), dtype=np.uint8)
    episodes = data.sample_meta_batch(
        data.fewshot(images, data.Episodes(ways=5, shots=1, queries=2)), jax.random.key(0), 2
    )
    three_way_head = nn.sequential(body=nn.conv4(4, 1), head=nn.linear(3))
    wrong_ways = learner.maml(meta_models.learned_init(three_way_head, energy.cross_entropy))
    with pytest.raises(ValueError, match="5-way classification"):
        wrong_ways.init(jax.random.key(0), episodes)
    per_pixel = learner.maml(meta_models.learned_init(nn.mlp([4], 5), energy.cross_entropy))
    with pytest.raises(ValueError, match=r"examples of 1 axis \(vectors\).*Flatten each example"):
        per_pixel.init(jax.random.key(0), episodes)
    flattened = nn.sequential(flat=nn.flatten(), mlp=nn.mlp([4], 5))
    learner.maml(meta_models.learned_init(flattened, energy.cross_entropy)).init(
        jax.random.key(0), episodes
    )


def test_a_damaged_stored_config_is_one_line_naming_the_file(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.gin").write_text("train.num_steps = (\nmetax.nn.mlp.@@@\n")
    args = [f"--gin_file={QUICK}", "--gin_bindings=train.meta_batch_size = 8"]
    line = launch_error(tmp_path, args, workdir=workdir)
    assert line.startswith(f"Error: The stored config {workdir / 'config.gin'} cannot be read")
    assert "restore it from a copy, or use a new --workdir" in line


def test_a_truncated_omniglot_zip_is_one_line_naming_the_file(tmp_path):
    zips = os.path.join(os.path.dirname(REPO), "shared", "data", "omniglot")
    source = os.path.join(
        os.environ.get("METAX_OMNIGLOT_DIR", zips), "images_background_small1.zip"
    )
    if not os.path.exists(source):
        pytest.skip(f"Omniglot zips not found beside {source}.")
    damaged = tmp_path / "zips" / "images_background_small1.zip"
    damaged.parent.mkdir()
    with open(source, "rb") as f:
        damaged.write_bytes(f.read(300_000))  # The first 300 kB: no central directory.
    line = launch_error(
        tmp_path,
        ["--gin_file=configs/maml_omniglot_minimal.gin"],
        env={"METAX_OMNIGLOT_DIR": str(damaged.parent), "METAX_TFDS_DIR": str(tmp_path / "tfds")},
    )
    assert line.startswith(f"Error: {damaged} cannot be read"), line
    assert "truncated or damaged. Download it again" in line
