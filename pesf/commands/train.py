"""``pesf train``: the background training process of a workspace, and ``pesf train --stop``."""

from __future__ import annotations

import argparse

from pesf.cli import register
from pesf.errors import PesfError

__all__ = ["run_train"]


@register("train")
def run_train(args: argparse.Namespace) -> int:
    from pesf.train.worker import request_stop, run_training

    if args.stop:
        status = request_stop(args.workspace, wait=args.wait, timeout_s=args.timeout)
        if args.wait:
            print(f"trainer {status.get('state', 'gone')} at step {status.get('step', '?')}")
        else:
            print(f"stop requested for the trainer on {args.workspace}")
        return 0
    if args.wait:
        raise PesfError("--wait only goes with --stop")
    if args.max_steps is not None and args.max_steps < 1:
        raise PesfError(f"--max-steps must be at least 1, got {args.max_steps}")
    outcome = run_training(
        args.workspace, args.config, max_steps=args.max_steps, device=args.device, fresh=args.fresh
    )
    if outcome.extra.get("is_main", True):
        versions = outcome.extra.get("versions") or []
        written = f"; model version {versions[-1]} in {args.workspace}/models" if versions else ""
        print(f"training {outcome.message}{written}")
    return 0
