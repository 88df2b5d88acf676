r"""Runs an experiment from gin files: parses flags and gin, then calls `metax.train.train`.

  python -m launch.train --gin_file=configs/maml_sinusoid.gin \
      [--gin_bindings='train.num_steps=1000'] [--workdir=runs/my_run]

A gin file (``--gin_file`` or an ``include``) is looked up as given, then in each
``--gin_search_paths`` folder, then in metax's own configs (shipped in the package; in a
checkout, ``configs/``): ``--gin_file=maml_sinusoid.gin`` works from any folder, and
``include 'data/sinusoid.gin'`` finds metax's data configs. Unknown configurables or parameters
are errors. Without ``--workdir`` a new folder ``runs/<config name>_<time>`` is created.
Progress goes to stdout; logs (``--verbosity=0`` for INFO) to stderr.
"""

import os
import sys
import time

from absl import app, flags, logging

from launch import common
from launch.common import (
    USER_ERRORS,
    initialize_distributed,
    multi_process_requested,
    parse_gin,
    quiet_by_default,
    use_compilation_cache,
    user_message,
)

_GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings applied after the files, e.g. 'train.num_steps=100'."
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir whose stored config differs from this one; the new config is stored "
    "beside the old one (config.<n>.gin).",
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Output folder; an existing run there is resumed. Default: runs/<config>_<time>.",
)
_PROGRESS = flags.DEFINE_bool(
    "progress",
    True,
    "Print the run's progress and summary to stdout (process 0); --noprogress: logs only.",
)
flags.adopt_module_key_flags(common)  # --help lists the search-path and multi-process flags.


def default_workdir(gin_files: list[str]) -> str:
    name = os.path.splitext(os.path.basename(gin_files[-1]))[0] if gin_files else "run"
    return os.path.join("runs", f"{name}_{time.strftime('%Y%m%d-%H%M%S')}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from metax.train.signals import StopSignals

    # Noted from here on, in every phase: a run stops where it is safe, and exits 0 saying so.
    with StopSignals(install=not multi_process_requested()) as signals:
        run(signals)


def run(signals) -> None:
    """Parses gin, joins the other processes, builds the run's settings and trains."""
    quiet_by_default()
    use_compilation_cache()
    parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
    initialize_distributed()
    import jax

    import metax.train
    from metax.train import workdir as run_dir
    from metax.train.signals import Stopped

    if jax.process_count() > 1 and not _WORKDIR.value:
        sys.exit(
            "Error: a multi-process run needs --workdir, the same folder for every process "
            "(on Cloud TPU a gs:// bucket path)."
        )
    workdir = _WORKDIR.value or default_workdir(_GIN_FILES.value)
    logging.info("Workdir: %s", run_dir.resolve(workdir))
    if jax.process_index() == 0:
        print(f"metax: writing to {run_dir.resolve(workdir)}", flush=True)
    try:
        config = metax.train.TrainConfig()  # gin's `train`: builds the learner and samplers.
        signals.check("start-up")
    except Stopped as stop:
        metax.train.loop.stopped_in_start_up(stop, workdir)
        return
    except USER_ERRORS as error:
        sys.exit(f"Error: {user_message(error)}")
    try:
        metax.train.train(
            config,
            workdir,
            allow_config_change=_ALLOW_CONFIG_CHANGE.value,
            verbose=_PROGRESS.value,
            signals=signals,
        )
    except USER_ERRORS as error:
        sys.exit(f"Error: {user_message(error)}")


if __name__ == "__main__":
    app.run(main)
