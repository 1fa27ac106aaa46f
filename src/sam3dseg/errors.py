"""Exceptions for mistakes a user can fix (bad path, wrong file, wrong shape).

The command line prints a ``UserError`` as one line and exits with status 2;
anything else is a bug and keeps its traceback.
"""


import re


class UserError(Exception):
    """A problem with the user's input, stated so the user can fix it."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be read or does not fit the model."""


def summarise(err: BaseException, limit: int = 200) -> str:
    """A library's error as one short clause for a one-line message: its first sentence, never cut
    mid-word (a longer one ends at a word with " …"). Libraries write paragraphs; our line names the file."""
    text = " ".join(str(err).split())  # newlines, tabs and runs of spaces to single spaces
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # terminal colours (torch.load's warning has them)
    if not text:
        return type(err).__name__
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text)[0].rstrip(".")
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0] + " …"
