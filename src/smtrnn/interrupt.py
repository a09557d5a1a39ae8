"""Stopping a training run cleanly: SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it
preempts a job) only set a flag while a run trains. The trainer looks at it after every optimiser step,
saves a checkpoint at that step (the usual atomic save) and raises ``Interrupted``: the command line
shows one line and exits with 128 + the signal's number (130, 143), and the same command resumes from
that step. A second signal stops at once (KeyboardInterrupt), keeping the last saved checkpoint.

    with caught():
        ...
        if pending():
            save(); raise Interrupted(pending(), "interrupted at smt step 137; ...")
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from smtrnn.errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals received inside the outermost caught() block
_depth = [0]  # how many caught() blocks are open (in the main thread)


class Interrupted(UserError):
    """The run stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self):  # crosses from a study's worker process to the study
        return type(self), (self.signum, str(self))


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _handle(signum: int, frame) -> None:
    if _received:
        raise KeyboardInterrupt(f"{name(signum)} again: stopped without saving")
    _received.append(signum)


@contextmanager
def caught() -> Iterator[None]:
    """Catch SIGINT and SIGTERM as a flag for the block; nested blocks share the outermost one's handlers,
    which are restored after it. Outside the main thread (where Python cannot set handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _depth[0] == 0
    previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS} if outermost else {}
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if outermost:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python
            _received.clear()


def catching(function: Callable) -> Callable:
    """``function`` run inside ``caught()``."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with caught():
            return function(*args, **kwargs)

    return wrapper


def pending() -> int:
    """The signal received in the current block, 0 when none."""
    return _received[0] if _received else 0
