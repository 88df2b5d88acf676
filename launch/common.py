"""What the entry points share: gin parsing with 'did you mean' errors, multi-process start-up,
and one-line messages for the errors a user can fix."""

import difflib
import inspect
import logging as logging_std
import os
import re
import sys

import gin
from absl import app, flags, logging

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

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

# Errors whose message names the problem and its fix: shown as one line, no traceback.
# (Config mistakes, bad numbers, missing data, unwritable workdirs, diverging runs.)
USER_ERRORS = (TypeError, ValueError, OSError, FloatingPointError)


class QuietLibraries(logging_std.Filter):
    """Drops orbax's per-save INFO chatter and gin's lookups of include paths it then finds."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if "/orbax/" in path and record.levelno < logging_std.WARNING:
            return False
        return not path.endswith("gin/resource_reader.py")


RENAMED_GIN_MODULE, NEW_GIN_MODULE = "metax.module.", "metax.meta_models."


def _configurables() -> dict[str, object]:
    """Every registered configurable under its full and its short name."""
    names = {}
    for configurable in gin.config._REGISTRY._selector_map.values():  # noqa: SLF001
        names[configurable.selector] = configurable
        names.setdefault(configurable.name, configurable)
    return names


def _did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def gin_error_message(error: Exception) -> str:
    """A gin parse error as one line, with the closest valid names for a typo."""
    first = str(error).strip().splitlines()[0]
    configurables = _configurables()
    unknown = re.match(r"No configurable matching '([^']+)'", first)
    if unknown and unknown.group(1).startswith(RENAMED_GIN_MODULE):
        new = NEW_GIN_MODULE + unknown.group(1)[len(RENAMED_GIN_MODULE) :]
        return f"{first}: metax.module was renamed metax.meta_models; write '{new}'."
    if unknown:
        return first + _did_you_mean(unknown.group(1), configurables)
    unknown = re.match(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", first)
    if unknown and unknown.group(1) in configurables:
        wrapped = configurables[unknown.group(1)].wrapped
        parameters = inspect.signature(wrapped).parameters
        return first + _did_you_mean(unknown.group(2), parameters)
    return first


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
        sys.exit(f"Error in the gin config: {gin_error_message(error)}")


def user_message(error: Exception) -> str:
    """The message of a `USER_ERRORS` error, with the fix for gin's missing-argument errors."""
    text = str(error).strip()
    missing = re.search(
        r"missing \d+ required (?:keyword-only |positional )?arguments?: (.*)", text
    )
    where = re.search(r"In call to configurable '([^']+)'", text)
    if isinstance(error, TypeError) and missing and where:
        names = re.findall(r"'([^']+)'", missing.group(1))
        bindings = ", ".join(f"{where.group(1)}.{name}" for name in names)
        return (
            f"{bindings} {'is' if len(names) == 1 else 'are'} not bound. Bind "
            f"{'it' if len(names) == 1 else 'them'} in a gin file or with "
            f"--gin_bindings='{where.group(1)}.{names[0]} = ...' (the configs/ folder has "
            f"examples)."
        )
    # Gin appends where the error was raised ("In call to configurable ..."): not the fix.
    lines = [line for line in text.splitlines() if not line.startswith("  In call to configurable")]
    return "\n".join(lines)


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
        if jax.process_index() > 0 and not flags.FLAGS["verbosity"].present:
            # Process 0 speaks for the run; an explicit --verbosity keeps every process's log.
            logging.set_verbosity(logging.WARNING)
