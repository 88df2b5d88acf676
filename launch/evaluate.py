r"""Evaluates a stored run's checkpoint on held-out tasks, with the run's own config.

  python -m launch.evaluate --workdir=runs/my_run [--checkpoint=latest|best|<step>] \
      [--num_tasks=600] [--gin_bindings='Evaluation.inner_steps = (1, 10)']

Reads the config stored in the workdir (the latest ``config.<n>.gin``, else ``config.gin``),
applies the bindings after it (another evaluation: ``Evaluation.sampler``, its inner steps,
...), restores the checkpoint (only complete ones: safe on a run that is still going),
evaluates (`metax.train.evaluate_run`: on the run's own held-out tasks, the numbers of its
final evaluation), prints the metrics (mean and 95% half-width each) as JSON and writes them
to ``<workdir>/eval_step_<step>.json``.
"""

import json
import sys

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
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    "latest",
    "'latest' (the newest complete checkpoint), 'best' (the best by the run's validation "
    "metric; runs with validation) or a step number.",
)
_NUM_TASKS = flags.DEFINE_integer(
    "num_tasks", None, "Held-out tasks to evaluate on (default: the run's Evaluation.num_tasks)."
)
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Bindings applied after the stored config, e.g. 'Evaluation.num_tasks=100'."
)

flags.adopt_module_key_flags(common)  # --help lists the search-path and multi-process flags.


def checkpoint_flag(value: str) -> str | int:
    """``--checkpoint`` as `metax.train.restore_run` takes it."""
    if value in ("latest", "best"):
        return value
    if value.isdigit():
        return int(value)
    sys.exit(f"Error: --checkpoint must be 'latest', 'best' or a step number, got {value!r}.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    quiet_by_default()
    use_compilation_cache()
    checkpoint = checkpoint_flag(_CHECKPOINT.value)
    import metax.train

    add_gin_search_paths()
    initialize_distributed()
    try:
        results = metax.train.evaluate_run(
            _WORKDIR.value, checkpoint, num_tasks=_NUM_TASKS.value, bindings=_GIN_BINDINGS.value
        )
    except metax.train.restore.ConfigError as error:
        sys.exit(f"Error in {error.where}: {gin_error_message(error.__cause__)}")
    except USER_ERRORS as error:
        sys.exit(f"Error: {user_message(error)}")
    print(json.dumps(results, sort_keys=True), flush=True)


if __name__ == "__main__":
    app.run(main)
