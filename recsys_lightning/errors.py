"""Errors a user can cause and fix: the entry points print them as one line and exit non-zero."""


class RecsysError(Exception):
    """Base class of every error whose message tells the user what to do."""


class DataError(RecsysError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(RecsysError):
    """A configuration value or combination cannot work."""
