"""Errors that say whose fault they are.

A `ConfigError` is the user's input (a flag, a config file, an environment variable):
the CLI prints it and exits 2. A `StartupError` is the world refusing what a valid
configuration asked for (a port already held, no permission, a name that does not
resolve): the CLI prints it and exits 1. Neither ever reaches the user as a traceback.
"""


class PyforwardError(Exception):
    """Base of every error pyforward reports as one line."""

    exit_code = 1


class ConfigError(PyforwardError):
    """The configuration is invalid: a malformed value, an unknown key or flag."""

    exit_code = 2


class StartupError(PyforwardError):
    """A valid configuration could not be put into effect."""

    exit_code = 1
