r"""Runs an experiment from gin files: parses flags and gin, then calls `metax.train.train`.

  python -m launch.train --gin_file=configs/maml_sinusoid.gin \
      [--gin_bindings='train.num_steps=1000'] [--workdir=runs/my_run]

Gin files may ``include`` files relative to ``configs/`` (e.g. ``include 'data/sinusoid.gin'``).
Unknown configurables or parameters are errors. Without ``--workdir`` a new folder
``runs/<config name>_<time>`` is created and printed.
"""

import logging as logging_std
import os
import sys
import time

import gin
from absl import app, flags, logging

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

_GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings applied after the files, e.g. 'train.num_steps=100'."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for multi-process runs outside Cloud TPU (GPU clusters, tests).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout",
    300,
    "Seconds to wait for all processes to join; then JAX aborts this process.",
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Output folder; an existing run there is resumed. Default: runs/<config>_<time>.",
)


class _QuietLibraries(logging_std.Filter):
    """Drops orbax's per-save INFO chatter and gin's lookups of include paths it then finds."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if "/orbax/" in path and record.levelno < logging_std.WARNING:
            return False
        return not path.endswith("gin/resource_reader.py")


def initialize_distributed() -> None:
    """Joins JAX's multi-process runtime: from flags when given, automatically on a Cloud TPU
    pod slice (several TPU workers), not at all on a single host."""
    import jax

    if _COORDINATOR.value is not None or _NUM_PROCESSES.value is not None:
        if None in (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value):
            raise app.UsageError(
                "--coordinator_address, --num_processes and --process_id go together."
            )
        logging.warning(
            "Joining %d processes at %s as process %d; if they have not all joined within "
            "--initialization_timeout=%d s, JAX aborts this process.",
            _NUM_PROCESSES.value,
            _COORDINATOR.value,
            _PROCESS_ID.value,
            _INIT_TIMEOUT.value,
        )
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
            initialization_timeout=_INIT_TIMEOUT.value,
        )
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        # A multi-host Cloud TPU slice: JAX reads the topology from the TPU metadata.
        jax.distributed.initialize(initialization_timeout=_INIT_TIMEOUT.value)
    if jax.process_count() > 1:
        logging.info(
            "Process %d of %d; %d local and %d global devices.",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )
        if jax.process_index() > 0:
            logging.set_verbosity(logging.WARNING)  # Process 0 speaks for the run.


def default_workdir(gin_files: list[str]) -> str:
    name = os.path.splitext(os.path.basename(gin_files[-1]))[0] if gin_files else "run"
    return os.path.join("runs", f"{name}_{time.strftime('%Y%m%d-%H%M%S')}")


def parse_gin(gin_files: list[str], gin_bindings: list[str]) -> None:
    """Parses gin files and bindings; exits with a one-line message on any config error."""
    import metax.train  # noqa: F401  (registers every configurable)

    gin.add_config_file_search_path(CONFIGS_DIR)
    for path in gin_files:
        if not os.path.exists(path):
            sys.exit(f"Error: gin file {path!r} does not exist (looked in {os.getcwd()}).")
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_bindings, skip_unknown=False)
    except (ValueError, KeyError, SyntaxError, OSError) as error:
        sys.exit(f"Error in the gin config: {error}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
    initialize_distributed()
    import jax

    import metax.train

    if jax.process_count() > 1 and not _WORKDIR.value:
        sys.exit(
            "Error: a multi-process run needs --workdir, the same folder for every process "
            "(on Cloud TPU a gs:// bucket path)."
        )
    workdir = _WORKDIR.value or default_workdir(_GIN_FILES.value)
    logging.info("Workdir: %s", os.path.abspath(workdir))
    if jax.process_index() == 0:
        print(f"metax: writing to {os.path.abspath(workdir)}", flush=True)
    try:
        metax.train.train(workdir=workdir)
    except (TypeError, ValueError) as error:
        # Config mistakes surface here (missing required bindings, invalid numbers); their
        # messages name the fix, so the traceback adds nothing for the user.
        sys.exit(f"Error: {error}")


if __name__ == "__main__":
    app.run(main)
