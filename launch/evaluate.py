r"""Evaluates a run's latest (or a given) checkpoint on held-out tasks, with the run's config.

  python -m launch.evaluate --workdir=runs/my_run [--num_tasks=600] [--step=5000] \
      [--gin_bindings='train.eval_inner_steps=(1, 10)']

Reads the config stored in the workdir (the latest ``config.<n>.gin``, else ``config.gin``),
applies the bindings, restores the checkpoint (only complete ones: safe on a run that is still
going), evaluates on the same held-out tasks as the run's own evaluation, prints the metrics
(mean and 95% half-width per metric) as JSON and writes them to
``<workdir>/eval_step_<step>.json``.
"""

import json
import sys

import gin
from absl import app, flags

from launch import common
from launch.common import (
    USER_ERRORS,
    add_gin_search_paths,
    gin_error_message,
    initialize_distributed,
    quiet_by_default,
    use_compilation_cache,
    user_message,
)

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder.", required=True)
_NUM_TASKS = flags.DEFINE_integer(
    "num_tasks", None, "Held-out tasks to evaluate on (default: the run's train.eval_num_tasks)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_CHECKPOINT = flags.DEFINE_enum(
    "checkpoint",
    "latest",
    ["latest", "best"],
    "'latest' (or --step) of the run's checkpoints, or 'best': the best by its validation "
    "metric (runs with train.val_sampler).",
)
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Bindings applied after the stored config, e.g. 'train.seed=1'."
)

flags.adopt_module_key_flags(common)  # --help lists the search-path and multi-process flags.


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    quiet_by_default()
    use_compilation_cache()
    import metax.train
    from metax.train import workdir as run_dir

    workdir = run_dir.resolve(_WORKDIR.value)
    config = run_dir.stored_config(workdir)
    if config is None:
        sys.exit(f"Error: {workdir} holds no metax run (no config.gin); pass a run's --workdir.")
    add_gin_search_paths()
    try:
        gin.parse_config(config)
        gin.parse_config_files_and_bindings([], _GIN_BINDINGS.value, skip_unknown=False)
    except (ValueError, KeyError, SyntaxError, OSError) as error:
        sys.exit(f"Error in the gin config: {gin_error_message(error)}")
    initialize_distributed()
    try:
        results = metax.train.evaluate_run(
            str(workdir), num_tasks=_NUM_TASKS.value, step=_STEP.value, checkpoint=_CHECKPOINT.value
        )
    except USER_ERRORS as error:
        sys.exit(f"Error: {user_message(error)}")
    print(json.dumps(results, sort_keys=True), flush=True)


if __name__ == "__main__":
    app.run(main)
