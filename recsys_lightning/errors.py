"""Errors a user can cause and fix: the entry points print them as one line and exit non-zero."""

import os
import sys


class RecsysError(Exception):
    """Base class of every error whose message tells the user what to do."""


class DataError(RecsysError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(RecsysError):
    """A configuration value or combination cannot work."""


class TrainingDiverged(RecsysError):
    """The loss became NaN or infinite; the message names where and what to change."""


def exit_with_message(error: RecsysError) -> None:
    """One line on stderr and exit code 1, unless HYDRA_FULL_ERROR=1 asks for the traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
