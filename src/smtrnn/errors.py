"""The user's mistakes: ``UserError`` (shown as one line, exit code 2) and the argument checks shared
by tasks and configs; and ``WorkerDied``, a failure from outside shown the same way (exit code 1). A
leaf module: importing it loads nothing else of smtrnn."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user asked for: shown as one line, exit code 2."""


class WorkerDied(RuntimeError):
    """A study's worker process died in a run (killed from outside: the system's out-of-memory killer, a
    SIGKILL); the other runs under way saved a checkpoint, and the same command resumes them all."""


def check_int(owner: str, name: str, value, minimum: int) -> None:
    """One-line UserError unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{owner}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"{owner}: {name} must be at least {minimum}, got {value}")


def check_choices(command: str, option: str, values: list, allowed=None) -> None:
    """One-line UserError when the list given to ``--option`` is empty, repeats a value, or (with
    ``allowed``) holds a value outside it."""
    if not values:
        raise UserError(f"{command}: --{option} is empty")
    if len(set(values)) != len(values):
        raise UserError(f"{command}: --{option} lists a value twice: {values}")
    for value in values:
        if allowed is not None and value not in allowed:
            raise UserError(f"{command}: unknown {option[:-1]} {value!r}; choose from {', '.join(map(str, allowed))}")


def check_bool(owner: str, name: str, value) -> None:
    """One-line UserError unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise UserError(f"{owner}: {name} must be true or false, got {value!r}")


def type_mismatch(value, default) -> str | None:
    """What a setting whose default is the bool or number ``default`` must be where ``value`` (read from
    JSON or a command line) is not that ("an integer" for 1.5 where the default is 8; an integer does
    for a float); None where it fits or ``default`` is neither."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, int):
        return None if number and isinstance(value, int) else "an integer"
    if isinstance(default, float):
        return None if number else "a number"
    return None
