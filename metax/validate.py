"""Checks of settings a user gives (in gin or in Python): each bad value gets one line that
names its binding and what the binding accepts, before anything is built or written. Used by
every layer (the training settings, learners, meta-models, models, samplers)."""

import numbers
from collections.abc import Sequence


def _shown(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(name: str, value, minimum: int = 1) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is an integer >= ``minimum``
    (a bool or a float such as 1.5 or 2.0 is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {_shown(value)}.")


def check_optional_int(name: str, value, minimum: int = 1) -> None:
    """As `check_int`, or None."""
    if value is not None:
        check_int(name, value, minimum)


def check_bool(name: str, value) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {_shown(value)}.")


def check_int_tuple(name: str, value, minimum: int = 0) -> tuple[int, ...]:
    """``value`` as a tuple of integers >= ``minimum``; raises a ValueError naming ``name``
    unless it is a non-empty sequence of them (a bare integer ``5`` is not: write ``(5,)``)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(
            f"{name} must be a non-empty tuple of integers >= {minimum}, e.g. (1, 5), got "
            f"{_shown(value)}."
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral) or item < minimum:
            raise ValueError(
                f"{name} must be a non-empty tuple of integers >= {minimum}, e.g. (1, 5), got "
                f"{value!r}."
            )
    return tuple(int(item) for item in value)


def check_instance(name: str, value, kinds: tuple[type, ...], what: str) -> None:
    """Raises a TypeError naming ``name`` unless ``value`` is one of ``kinds`` (``what``
    describes them for the message, e.g. "a task sampler (metax.data.sinusoid(), ...)")."""
    if not isinstance(value, kinds):
        raise TypeError(f"{name} must be {what}, got {_shown(value)}.")


def check_number(name: str, value, minimum: float | None = None, above: bool = False) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is a real number (not a bool) at
    least ``minimum`` (strictly above it with ``above``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and minimum is not None:
        ok = value > minimum if above else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if above else '>='} {minimum}"
        raise ValueError(f"{name} must be a number{bound}, got {_shown(value)}.")


def check_optional_number(name: str, value, minimum: float | None = None, above=False) -> None:
    """As `check_number`, or None."""
    if value is not None:
        check_number(name, value, minimum, above)
