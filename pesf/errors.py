"""Errors the engine raises for bad input: one clear line for the user, never a traceback."""

from __future__ import annotations


class PesfError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    The command line prints ``str(error)`` as one line and exits with status 2.
    """
