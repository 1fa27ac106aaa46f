"""Exceptions for mistakes a user can fix (bad path, wrong file, wrong shape).

The command line prints a ``UserError`` as one line and exits with status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, stated so the user can fix it."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be read or does not fit the model."""
