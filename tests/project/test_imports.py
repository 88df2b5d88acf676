"""`import metax` stays light: the functional core never imports TensorFlow, and training
does not either (its TensorBoard writer is TensorFlow-free)."""

import subprocess
import sys


def test_import_metax_does_not_import_tensorflow():
    code = (
        "import sys, metax, metax.train, metax.train.configurables\n"
        "heavy = [m for m in ('tensorflow', 'clu.metric_writers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_training_and_its_tensorboard_events_do_not_import_tensorflow(tmp_path):
    """A run through the Python API (training, evaluation, the figure, every summary) never
    imports TensorFlow (the summaries' contents are checked in tests/launch/test_launcher.py and
    tests/metax/train/test_writers.py)."""
    code = (
        "import glob, optax, metax.train\n"
        "from metax import data, learner, meta_models, nn\n"
        "maml = learner.maml(meta_models.learned_init(nn.mlp([8], 1)), optax.adam(1e-3),\n"
        "                    num_inner_steps=1)\n"
        "config = metax.train.TrainConfig(learner=maml, train_sampler=data.sinusoid(),\n"
        "    meta_batch_size=8, num_steps=4, log_every=2,\n"
        "    evaluation=metax.train.Evaluation(every=4, num_tasks=8, inner_steps=(1,)))\n"
        f"final = metax.train.train(config, {str(tmp_path)!r}, verbose=False)\n"
        f"assert glob.glob({str(tmp_path / 'events.out.tfevents.*')!r})\n"
        "import sys\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_renamed_names_keep_working_for_one_release():
    import jax

    from metax import data

    code = "from metax import module; print(module.learned_init.__module__)"
    works = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert works.stdout.strip() == "metax.meta_models.learned_init"
    warned = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert warned.returncode != 0 and "metax.module was renamed metax.meta_models" in warned.stderr
    batch = data.sample_meta_batch(data.sinusoid(), jax.random.key(0), 2)
    assert batch.train is batch.support and batch.test is batch.query


def test_old_gin_meta_model_names_are_answered_with_the_new_one():
    import gin
    import pytest

    import metax.train  # noqa: F401  (registers the configurables)
    from launch.common import gin_error_message

    gin.clear_config()
    try:
        with pytest.raises(ValueError) as error:
            gin.parse_config("metax.module.learned_init.reg_strength = 1.0")
    finally:
        gin.clear_config()
    assert "write 'metax.meta_models.learned_init'" in gin_error_message(error.value)
