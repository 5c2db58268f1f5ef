"""Subcommands of the ``pesf`` command line; importing this package registers them."""

from __future__ import annotations

from pesf.commands import (  # noqa: F401
    cases,
    confidence,
    demo,
    evaluate,
    info,
    pseudo_label,
    segment,
    studio,
    train,
)
