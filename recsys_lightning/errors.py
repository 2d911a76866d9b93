"""Errors a user can cause and fix: the entry points print them as one line and exit non-zero."""

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

QUOTE_LIMIT = 100  # characters of a raw value (an id, a cell, a path) that an error message shows


class RecsysError(Exception):
    """Base class of every error whose message tells the user what to do.

    The message is one line by construction: text it echoes from a file or a command line (a header
    cell, an id, a file name, a path a run folder records) may hold a newline or a terminal's escape
    code, and such characters are shown escaped (`one_line`), whoever built the message."""

    exit_code = 1

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(message), *args)


class DataError(RecsysError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(RecsysError):
    """A configuration value or combination cannot work."""


class UnknownId(RecsysError):
    """A raw user or item id that the trained run never saw; the message names it and shows valid ones."""


class TrainingDiverged(RecsysError):
    """The loss became NaN or infinite; the message names where and what to change."""


class RunInterrupted(RecsysError):
    """A signal (SIGTERM from kill, a scheduler's time limit or docker stop; SIGINT from Ctrl-C) ended
    the run; the message says how to resume. The exit code is the shell's for that signal (143, 130)."""

    def __init__(self, message: str, signal_number: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signal_name = signal.Signals(signal_number).name
        self.exit_code = 128 + int(signal_number)


class CtrlC(KeyboardInterrupt):
    """The KeyboardInterrupt Ctrl-C raises inside `ctrl_c_raises_subclass`, caught by every `except KeyboardInterrupt`.

    Why a subclass: CPython marks a bare KeyboardInterrupt that passes out of code an extension runs
    through PyRun_String as unhandled, even when it is caught later, and at exit kills the process with
    SIGINT whatever `sys.exit` asked (returncode -2 instead of 130, seen in CI mid-export). It marks only
    the exact class, so a subclass never is."""


def _raise_ctrl_c(signal_number: int, frame: object) -> None:
    raise CtrlC


@contextmanager
def ctrl_c_raises_subclass() -> Iterator[None]:
    """Within the block, Ctrl-C raises CtrlC where Python's default handler raises KeyboardInterrupt.
    A SIGINT the process ignores (a job started with nohup or `&`) stays ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _raise_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def exit_with_message(error: RecsysError) -> None:
    """One line on stderr and the error's exit code, unless HYDRA_FULL_ERROR=1 asks for the traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters; never fails on an empty one."""
    lines = str(error).strip().splitlines()
    return cut(lines[0] if lines else type(error).__name__, limit)


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A raw id, cell or value as a message shows it: text quoted (so ` 7` and `7` differ), the rest plain, cut short."""
    return cut(repr(value) if isinstance(value, str) else str(value), limit)


def one_line(text: object) -> str:
    """`text` with every character that is not printable (newline, tab, ESC, other control and line-separator
    characters) escaped as repr escapes it (`\\n`, `\\x1b`): it prints on one line and draws nothing."""
    text = str(text)
    return text if text.isprintable() else "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """At most `limit` characters: a message never echoes a whole hostile line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def interruptions_raise(message: str) -> Iterator[None]:
    """Within the block, SIGTERM and Ctrl-C raise RunInterrupted(message) instead of ending the process
    at once or with a traceback, so `finally` blocks run and temporary files are removed."""

    def interrupt(signum: int, frame: object) -> None:
        raise RunInterrupted(message, signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with ctrl_c_raises_subclass():
            yield
    except KeyboardInterrupt as error:
        raise RunInterrupted(message, signal.SIGINT) from error
    finally:
        signal.signal(signal.SIGTERM, previous)
