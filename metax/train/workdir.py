"""A run's folder: it must be writable, and it keeps the config the run was started with (a
resume with another config is refused unless allowed)."""

import ast
import os

import jax
from absl import logging
from etils import epath
from gin import config_parser

CONFIG = "config.gin"
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


def resolve(workdir: str) -> epath.Path:
    """The workdir as a path: local ones made absolute, URLs (``gs://bucket/run``, for Cloud
    TPU) kept as they are (epath reads and writes both)."""
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def check_writable(workdir: epath.Path) -> None:
    """Creates ``workdir`` if needed; raises a PermissionError naming it unless a file can be
    written there (checked before any compilation, so a bad path fails in seconds)."""
    probe = workdir / f".write_test_{os.getpid()}_{jax.process_index()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"Cannot write to the workdir '{workdir}' ({error.strerror or error}). "
            f"Pass a --workdir where this user can create files."
        ) from None


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
    """The text of `stored_config_path`; None for a new workdir."""
    path = stored_config_path(workdir)
    return None if path is None else path.read_text()


def check_and_store_config(workdir: epath.Path, config: str, allow_change: bool) -> None:
    """Stores ``config`` as ``config.gin`` in a new workdir. In a workdir that holds a run,
    raises a ConfigChangedError listing the changed bindings, unless they are schedule
    bindings (`SCHEDULE_BINDINGS`) or ``allow_change``; a changed config is stored beside the
    old ones as ``config.<n>.gin``, never over them."""
    old = stored_config(workdir)
    if old is None:
        _write_once(workdir / CONFIG, config)
        return
    changed = config_diff(old, config, ignore=SCHEDULE_BINDINGS)
    if changed and not allow_change:
        lines = "\n  ".join(changed)
        raise ConfigChangedError(
            f"The run in {workdir} was started with another config; changed bindings:\n"
            f"  {lines}\n"
            f"Resume with the stored config (see {workdir / CONFIG}), use a new "
            f"--workdir, or pass --allow_config_change to resume with the new one."
        )
    all_changes = config_diff(old, config)
    if all_changes:
        n = 1
        while (workdir / f"config.{n}.gin").exists():
            n += 1
        _write_once(workdir / f"config.{n}.gin", config)
        logging.warning(
            "Resuming with a changed config, stored as config.%d.gin: %s", n, "; ".join(all_changes)
        )


def _write_once(path: epath.Path, text: str) -> None:
    if jax.process_index() == 0 and not path.exists():
        path.write_text(text)
