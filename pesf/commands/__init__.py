"""Subcommands of the ``pesf`` command line; importing this package registers them."""

from __future__ import annotations

from pesf.commands import cases, evaluate, info, pseudo_label, segment, studio, train  # noqa: F401
