"""`import metax` stays light: the functional core never imports TensorFlow."""

import subprocess
import sys


def test_import_metax_does_not_import_tensorflow():
    code = (
        "import sys, metax, metax.train, metax.train.configurables\n"
        "heavy = [m for m in ('tensorflow', 'clu.metric_writers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


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
