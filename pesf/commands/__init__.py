"""Subcommands of the ``pesf`` command line; importing this package registers them."""

from __future__ import annotations

from pesf.commands import evaluate, info, segment  # noqa: F401
