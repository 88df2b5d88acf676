"""A run's folder: one run at a time (`RunLock`), every file written whole or not at all
(`write_atomically`), and the config the run was started with kept beside its checkpoints (a
resume with another config is refused unless allowed; a changed config is stored only once
it has been accepted, with the first checkpoint it produces)."""

import ast
import contextlib
import errno
import fcntl
import json
import os
import socket
import time

import jax
from absl import logging
from etils import epath
from gin import config_parser

CONFIG = "config.gin"
HOLDER = ".metax.run"  # Who holds the workdir's lock (`RunLock`).
# Bindings a resumed run may change freely: they say how long to run and how often to report,
# not what is computed at each step.
SCHEDULE_BINDINGS = frozenset(
    {
        "train.num_steps",
        "train.log_every",
        "Evaluation.every",
        "Checkpoints.every",
        "Checkpoints.max_to_keep",
    }
)


class ConfigChangedError(ValueError):
    """Resuming a workdir with a config that differs from the stored one."""


class StoredConfigError(ValueError):
    """A stored config that cannot be read (damaged by hand or by a crash of metax 0.2)."""


class WorkdirLockedError(RuntimeError):
    """Another process runs in the workdir."""


class StorageError(OSError):
    """Writing to the workdir failed (a full disk, a lost mount): one line saying where."""


def resolve(workdir: str) -> epath.Path:
    """The workdir as a path: local ones made absolute, URLs (``gs://bucket/run``, for Cloud
    TPU) kept as they are (epath reads and writes both)."""
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def is_local(workdir: epath.Path) -> bool:
    return "://" not in os.fspath(workdir)


def check_writable(workdir: epath.Path) -> None:
    """Creates ``workdir`` if needed; raises a PermissionError naming it unless a file can be
    written there (checked before any compilation, so a bad path fails in seconds)."""
    probe = workdir / f".write_test_{os.getpid()}_{jax.process_index()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise storage_error(error, workdir) from None
        raise PermissionError(
            f"Cannot write to the workdir '{workdir}' ({error.strerror or error}). "
            f"Pass a --workdir where this user can create files."
        ) from None


def write_atomically(path: epath.Path, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all: into a temporary file beside it, then
    renamed over it. A failure (a full disk) leaves no partial file and raises a
    `StorageError` naming ``path``."""
    temporary = path.parent / f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    try:
        temporary.write_text(text)
        temporary.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise storage_error(error, path) from None


def storage_error(error: BaseException, where) -> StorageError:
    """``error`` (an OSError, or orbax's and TensorStore's wrappings of one) as a one-line
    `StorageError` naming ``where``."""
    full = _is_disk_full(error)
    reason = "No space left on device" if full else _first_line(error)
    fix = (
        "free some space and run the same command again: the run resumes from its last "
        "complete checkpoint"
        if full
        else "check the workdir's storage and run the same command again"
    )
    error_ = StorageError(f"{reason} writing {where}: {fix}.")
    error_.errno = errno.ENOSPC if full else errno.EIO
    return error_


def is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) is a failure to write files: an OSError, or orbax's
    and clu's wrappings of one (a full disk during an asynchronous save or summary)."""
    seen = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
            return True
        if _is_disk_full(link):
            return True
        link = link.__cause__ or link.__context__
    return False


def _is_disk_full(error: BaseException) -> bool:
    text = str(error)
    return (
        getattr(error, "errno", None) == errno.ENOSPC
        or "No space left on device" in text
        or "os_error_code='28'" in text
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


class RunLock:
    """The workdir's lock: one run at a time. An OS lock (``flock``) on the workdir folder
    itself, held from `acquire` to `release` and released by the OS when the process dies, so
    a killed run never leaves a stale lock; ``.metax.run`` names the holder (host, pid, start
    time) while it runs, for the message of a refused launch. With several processes, process
    0 holds it for the run. Workdirs on object stores (``gs://``) have no file locks: there it
    is skipped."""

    def __init__(self, workdir: epath.Path):
        self.workdir = workdir
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock (process 0; the others learn whether it did); raises a
        `WorkdirLockedError` naming the holder, changing nothing in the workdir, if another
        process holds it. The workdir must exist (`check_writable`)."""
        holder = None
        if jax.process_index() == 0 and is_local(self.workdir):
            holder = self._try_lock()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            refused = multihost_utils.broadcast_one_to_all(int(holder is not None))
            holder = holder or ("another process" if int(refused) else None)
        if holder is not None:
            raise WorkdirLockedError(
                f"The workdir {self.workdir} is in use by {holder}: wait for that run to end, "
                f"or use another --workdir."
            )

    def _try_lock(self) -> str | None:
        """None once locked, else a description of the holder."""
        fd = os.open(os.fspath(self.workdir), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return _describe_holder(self.workdir / HOLDER)
        self._fd = fd
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        with contextlib.suppress(OSError):  # The lock holds without it.
            write_atomically(self.workdir / HOLDER, json.dumps(info))
        return None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                (self.workdir / HOLDER).unlink()
            os.close(self._fd)  # Closing the descriptor releases the flock.
            self._fd = None


def _describe_holder(path: epath.Path) -> str:
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"process {info['pid']} on host {info['host']} (since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class _Placeholders(config_parser.ParserDelegate):
    """Parses a config without looking anything up: references and macros become strings."""

    def configurable_reference(self, scoped_name: str, evaluate: bool) -> str:
        return f"@{scoped_name}{'()' if evaluate else ''}"

    def macro(self, macro_name: str) -> str:
        return f"%{macro_name}"


def bindings(config_text: str) -> dict[str, str]:
    """``{"scope/configurable.parameter": value}`` of a gin config text (macros: ``{"NAME":
    value}``), values as canonical strings."""
    result = {}
    for statement in config_parser.ConfigParser(config_text, _Placeholders()):
        if isinstance(statement, config_parser.BindingStatement):
            scope = f"{statement.scope}/" if statement.scope else ""
            name = ".".join(filter(None, (statement.selector, statement.arg_name)))
            result[scope + name] = repr(statement.value)
    return result


def hparams(config_text: str) -> dict[str, bool | int | float | str]:
    """A gin config's bindings as TensorBoard hyperparameters: numbers, booleans and strings
    as themselves, anything else (references, tuples) as its gin text."""
    result = {}
    for name, text in bindings(config_text).items():
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        result[name] = value if isinstance(value, bool | int | float | str) else text
    return result


def config_diff(old: str, new: str, ignore: frozenset[str] = frozenset()) -> list[str]:
    """Lines ``name: old -> new`` for every binding that differs (added, removed or changed),
    sorted, leaving out the names in ``ignore``."""
    before, after = bindings(old), bindings(new)
    missing = "(unset)"
    return [
        f"{name}: {before.get(name, missing)} -> {after.get(name, missing)}"
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name) and name not in ignore
    ]


def stored_config_path(workdir: epath.Path) -> epath.Path | None:
    """The config the run in ``workdir`` last resumed with: the highest ``config.<n>.gin``,
    else ``config.gin``; None for a new workdir."""
    names = [p.name for p in workdir.iterdir()] if workdir.is_dir() else []
    numbered = [f for f in names if f.startswith("config.") and f.endswith(".gin")]
    numbered = [f for f in numbered if f[len("config.") : -len(".gin")].isdigit()]
    if numbered:
        return workdir / max(numbered, key=lambda f: int(f[len("config.") : -len(".gin")]))
    return workdir / CONFIG if CONFIG in names else None


def stored_config(workdir: epath.Path) -> str | None:
    """The text of `stored_config_path` (checked to parse); None for a new workdir. Raises a
    `StoredConfigError` naming the file if it cannot be read."""
    path = stored_config_path(workdir)
    if path is None:
        return None
    text = path.read_text()
    try:
        bindings(text)
    except Exception as error:  # noqa: BLE001 (gin's parser raises several kinds)
        raise StoredConfigError(
            f"The stored config {path} cannot be read ({_first_line(error)}): restore it from "
            f"a copy, or use a new --workdir (its checkpoints are not touched)."
        ) from None
    return text


def config_to_store(workdir: epath.Path, config: str, allow_change: bool) -> str | None:
    """The name under which ``config`` is to be stored once the run is accepted: ``config.gin``
    in a new workdir, ``config.<n>.gin`` beside the old ones for a changed config, None when
    the stored one is this one. Raises a ConfigChangedError listing the changed bindings
    unless they are schedule bindings (`SCHEDULE_BINDINGS`) or ``allow_change``. Writes
    nothing."""
    old = stored_config(workdir)
    if old is None:
        return CONFIG
    changed = config_diff(old, config, ignore=SCHEDULE_BINDINGS)
    if changed and not allow_change:
        lines = "\n  ".join(changed)
        raise ConfigChangedError(
            f"The run in {workdir} was started with another config; changed bindings:\n"
            f"  {lines}\n"
            f"Resume with the stored config (see {stored_config_path(workdir)}), use a new "
            f"--workdir, or pass --allow_config_change to resume with the new one."
        )
    all_changes = config_diff(old, config)
    if not all_changes:
        return None
    logging.warning("Resuming with a changed config: %s", "; ".join(all_changes))
    n = 1
    while (workdir / f"config.{n}.gin").exists():
        n += 1
    return f"config.{n}.gin"


def store_config(workdir: epath.Path, name: str, config: str) -> None:
    """Writes ``config`` as ``workdir/name`` (process 0), atomically."""
    if jax.process_index() == 0:
        write_atomically(workdir / name, config)
