"""``python -m pesf.train WORKSPACE [options]``: the same as ``pesf train WORKSPACE [options]``.

The entry point for launchers that start a module rather than a script, e.g. Slicer's PESFTrain, PESF Studio,
or ``torchrun --standalone --nproc_per_node 2 -m pesf.train WORKSPACE``. The ``pesf`` command's own options
(``-v``, ``--debug``, ``--threads N``) may be given anywhere.
"""

from __future__ import annotations

import sys

from pesf.cli import main

_GLOBAL_FLAGS = ("-v", "--verbose", "--debug")


def command_line(args: list[str]) -> list[str]:
    """``pesf`` arguments for ``python -m pesf.train`` arguments: global options first, then ``train ...``."""
    options: list[str] = []
    rest: list[str] = []
    items = iter(args)
    for arg in items:
        if arg in _GLOBAL_FLAGS or arg.startswith("--threads="):
            options.append(arg)
        elif arg == "--threads":
            options += [arg, next(items, "")]
        else:
            rest.append(arg)
    return [*options, "train", *rest]


if __name__ == "__main__":
    sys.exit(main(command_line(sys.argv[1:])))
