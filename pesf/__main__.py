"""``python -m pesf``: the ``pesf`` command (also what ``torchrun -m pesf ...`` runs on every rank)."""

from __future__ import annotations

import sys

from pesf.cli import main

if __name__ == "__main__":
    sys.exit(main())
