"""What the entry points share: gin file lookup and parsing with 'did you mean' errors, a quiet
terminal, multi-process start-up, and one-line messages for the errors a user can fix."""

import contextlib
import difflib
import importlib.abc
import importlib.util
import inspect
import logging as logging_std
import os
import pkgutil
import re
import sys
from collections.abc import Iterator

import gin
from absl import app, flags, logging

# metax's own gin files, shipped in the package (metax/configs; in a checkout a link to configs/).
CONFIGS_DIR = os.path.join(
    importlib.util.find_spec("metax").submodule_search_locations[0], "configs"
)

_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "JAX's persistent compilation cache: a later launch of the same programs loads them "
    "instead of compiling. Default $JAX_COMPILATION_CACHE_DIR if set, else "
    "~/.cache/metax/jax_compilation_cache; '' turns it off.",
)
_GIN_SEARCH_PATHS = flags.DEFINE_list(
    "gin_search_paths",
    [],
    "Folders searched, in order, for --gin_file and gin `include` paths not found as given "
    f"(relative to the working directory); metax's own configs ({CONFIGS_DIR}) come last.",
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

# Errors whose message names the problem and its fix: shown as one line, no traceback.
# (Config mistakes, bad numbers, missing data, unwritable or full workdirs, a workdir in use,
# diverging runs.)
USER_ERRORS = (TypeError, ValueError, OSError, FloatingPointError, RuntimeError)


def _is_storage_error(error) -> bool:
    from metax.train.workdir import is_storage_error

    return error is not None and is_storage_error(error)


def _quiet_unraisable(hook):
    """``sys.unraisablehook`` without the echoes of a failed background save: once orbax's
    asynchronous save fails (a full disk), TensorStore's callbacks into its closed event loop
    raise "Event loop is closed" in threads that cannot report it; the save's own error is
    what the run reports."""

    def quiet(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        hook(unraisable)

    return quiet


class QuietLibraries(logging_std.Filter):
    """Drops orbax's per-save INFO chatter and gin's lookups of include paths it then finds."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if "/orbax/" in path and record.levelno < logging_std.WARNING:
            return False
        background = "/orbax/" in path or "/clu/" in path  # Saves and summaries' threads.
        if background and record.exc_info and _is_storage_error(record.exc_info[1]):
            return False  # A full disk in a background write: the run reports it in one line.
        return not path.endswith("gin/resource_reader.py")


RENAMED_GIN_MODULE, NEW_GIN_MODULE = "metax.module.", "metax.meta_models."


# The gin modules configurables are registered under (`metax.train.configurables`).
GIN_MODULES = (
    "metax.data",
    "metax.energy",
    "metax.learner",
    "metax.meta_models",
    "metax.nn",
    "metax.train",
    "optax",
    "jax.nn",
)


def configurable_names() -> dict[str, set[str]]:
    """``gin module -> names registered in it``, found through gin's public lookup
    (`gin.get_configurable`) among the functions of metax, optax and jax.nn."""
    import jax
    import optax

    import metax

    functions = {name for module in (optax, jax.nn) for name in dir(module)}
    for info in pkgutil.walk_packages(metax.__path__, "metax."):
        module = sys.modules.get(info.name)
        if module is not None:
            functions.update(n for n, v in vars(module).items() if inspect.isfunction(v))
    names: dict[str, set[str]] = {}
    for module in GIN_MODULES:
        for name in functions:
            try:
                gin.get_configurable(f"{module}.{name}")
            except ValueError:
                continue
            names.setdefault(module, set()).add(name)
    return names


def _close(name: str, candidates) -> list[str]:
    return difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.6)


def _did_you_mean(close: list[str]) -> str:
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def suggest_configurable(selector: str) -> list[str]:
    """Registered names close to an unknown ``[scope/]module.name`` or ``name``: the name is
    compared within its module only (a typo of ``maml`` suggests no other learner); a
    misspelt module, with the same name in the closest modules."""
    selector = selector.rpartition("/")[2]
    names = configurable_names()
    module, _, name = selector.rpartition(".")
    if not module:
        return _close(name, set().union(*names.values()))
    if module in names:
        return [f"{module}.{n}" for n in _close(name, names[module])]
    return [f"{m}.{name}" for m in _close(module, names) if name in names[m]]


def gin_error_message(error: Exception) -> str:
    """A gin parse error as one line, with the closest valid names for a typo."""
    first = str(error).strip().splitlines()[0]
    unknown = re.match(r"No configurable matching '([^']+)'", first)
    if unknown and unknown.group(1).startswith(RENAMED_GIN_MODULE):
        new = NEW_GIN_MODULE + unknown.group(1)[len(RENAMED_GIN_MODULE) :]
        return f"{first}: metax.module was renamed metax.meta_models; write '{new}'."
    if unknown:
        return first + _did_you_mean(suggest_configurable(unknown.group(1)))
    unknown = re.match(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", first)
    renamed = unknown and renamed_binding(unknown.group(1), unknown.group(2))
    if renamed:
        return f"{first} It was renamed in metax 0.3: bind {renamed} instead."
    if unknown:
        try:
            configurable = gin.get_configurable(unknown.group(1))
        except ValueError:
            return first
        parameters = inspect.signature(configurable).parameters
        return first + _did_you_mean(_close(unknown.group(2), parameters))
    return first


def renamed_binding(configurable: str, parameter: str) -> str | None:
    """The binding that replaced ``<configurable>.<parameter>`` (a 0.2 name), or None."""
    from metax.data.datasets import RENAMED_BINDINGS as DATA
    from metax.train.config import RENAMED_BINDINGS as TRAIN

    name = f"{configurable.rpartition('.')[2]}.{parameter}"
    return TRAIN.get(name) or DATA.get(name)


@contextlib.contextmanager
def _stderr_discarded() -> Iterator[None]:
    """Sends file descriptor 2 (C++ logging included) to /dev/null inside."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs another loader with stderr discarded, then uninstalls ``finder``."""

    def __init__(self, loader: importlib.abc.Loader, finder: importlib.abc.MetaPathFinder):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with _stderr_discarded():
            self.loader.exec_module(module)
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, whenever something first does, with stderr discarded: it logs INFO
    lines from C++ at import (oneDNN, the CUDA stub, CPU features) before its log level
    applies (TF_CPP_MIN_LOG_LEVEL does not silence them), and prints nothing else there; an
    import error is still raised. Costs nothing in runs that never import it."""

    def __init__(self):
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._finding:
            return None
        self._finding = True  # The real spec, from the finders after this one.
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec


def quiet_by_default() -> None:
    """Shows warnings and errors only, unless --verbosity is given: the run's progress is
    printed to stdout (`metax.train.console`), and INFO logs (clu's metric lines, JAX's
    backend probing, orbax) are for log files. Drops orbax's and gin's INFO chatter even then."""
    logging.get_absl_handler().addFilter(QuietLibraries())
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    if flags.FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.WARNING)
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def use_compilation_cache() -> None:
    """Points JAX's persistent compilation cache at --compilation_cache_dir (see the flag)."""
    import jax

    path = _COMPILATION_CACHE.value
    if path is None:
        if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            return  # JAX reads it itself.
        path = os.path.join(os.path.expanduser("~"), ".cache", "metax", "jax_compilation_cache")
    if path:
        jax.config.update("jax_compilation_cache_dir", path)


def gin_search_paths() -> list[str]:
    """Where gin files are looked up after the path as given: --gin_search_paths, then
    metax's own configs."""
    return [*_GIN_SEARCH_PATHS.value, CONFIGS_DIR]


def find_gin_file(path: str) -> str:
    """``path`` as given if it is a file, else the first ``<search path>/<path>`` that is;
    exits with a message naming the places looked in."""
    for prefix in ["", *gin_search_paths()]:
        candidate = os.path.join(prefix, path)
        if os.path.isfile(candidate):
            return candidate
    places = ", ".join([os.getcwd(), *gin_search_paths()])
    sys.exit(
        f"Error: gin file {path!r} not found; looked in {places}. metax's own configs are "
        f"named relative to {CONFIGS_DIR} (e.g. --gin_file=maml_sinusoid.gin); add folders "
        f"with --gin_search_paths."
    )


def add_gin_search_paths() -> None:
    """The same lookup for gin `include` statements."""
    _tolerate_namespace_packages_in_includes()
    for path in gin_search_paths():
        gin.add_config_file_search_path(path)


def _tolerate_namespace_packages_in_includes() -> None:
    """gin's second file reader (`gin.resource_reader`) looks an include such as
    ``'data/sinusoid.gin'`` up as a file of the Python package ``data`` first, and crashes
    (TypeError: origin None) when ``data`` is a namespace package: any ``data/`` folder in the
    working directory, which ``python -m`` puts on sys.path. Its existence check is wrapped
    so that such a path counts as absent and gin goes on to the search paths. (gin keeps its
    readers in a private list: there is no public way to change a registered one.)"""
    from gin import config as gin_config

    def tolerant(exists):
        def check(path):
            try:
                return exists(path)
            except TypeError:
                return False

        check.metax_tolerant = True
        return check

    gin_config._FILE_READERS[:] = [
        (reader, exists if getattr(exists, "metax_tolerant", False) else tolerant(exists))
        for reader, exists in gin_config._FILE_READERS
    ]


def parse_gin(gin_files: list[str], gin_bindings: list[str]) -> None:
    """Parses gin files and bindings; exits with a one-line message on any config error."""
    import metax.train  # noqa: F401  (registers every configurable)

    gin_files = [find_gin_file(path) for path in gin_files]
    add_gin_search_paths()
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


def multi_process_requested() -> bool:
    """Whether this launch is one process of several (from the flags or a Cloud TPU slice's
    environment), known before JAX starts."""
    flags_given = _COORDINATOR.value is not None or _NUM_PROCESSES.value is not None
    return flags_given or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


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
