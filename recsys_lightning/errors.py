"""Errors a user can cause and fix: the entry points print them as one line and exit non-zero."""

import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator


class RecsysError(Exception):
    """Base class of every error whose message tells the user what to do."""

    exit_code = 1


class DataError(RecsysError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(RecsysError):
    """A configuration value or combination cannot work."""


class TrainingDiverged(RecsysError):
    """The loss became NaN or infinite; the message names where and what to change."""


class RunInterrupted(RecsysError):
    """SIGTERM (kill, a scheduler's time limit, docker stop) ended the run; the message says how to resume."""

    exit_code = 128 + 15  # what a shell reports for a process ended by SIGTERM


def exit_with_message(error: RecsysError) -> None:
    """One line on stderr and the error's exit code, unless HYDRA_FULL_ERROR=1 asks for the traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters; never fails on an empty one."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def sigterm_raises(message: str) -> Iterator[None]:
    """Within the block, SIGTERM raises RunInterrupted(message) instead of ending the process at once,
    so `finally` blocks run and temporary files are removed; the entry point then exits 143."""

    def interrupt(signum: int, frame: object) -> None:
        raise RunInterrupted(message)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
