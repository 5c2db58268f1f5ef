"""``pesf demo``: the whole engine on the bundled sample CT, with a table, files and one PESF round."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pesf.cli import register

__all__ = ["run_demo_command"]


class _Screen:
    """Step lines on stdout and a tqdm bar per stage on stderr (the bars hide when stderr is no terminal)."""

    def __init__(self) -> None:
        self.bar = None
        self.started = time.perf_counter()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def stage(self, number: int, total: int, text: str) -> None:
        self._close()
        print(f"[{number}/{total}] {text}  ({time.perf_counter() - self.started:.0f} s)", flush=True)

    def progress(self, done: int, total: int, text: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", leave=False, disable=None, file=sys.stderr)
        self.bar.total = total
        self.bar.n = done
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.refresh()

    def info(self, text: str) -> None:
        self._close()
        print(f"      {text}", flush=True)


def _idle_threads() -> int:
    """Torch threads for a machine others may be using: its cores minus the current load, at least 1.

    Torch's default (one thread per core) is much slower than one thread when the cores are busy.
    """
    import torch

    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):  # no load average (Windows)
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - busy))


@register("demo")
def run_demo_command(args: argparse.Namespace) -> int:
    import torch

    from pesf.demo import DemoCallbacks, DemoOptions, format_demo_table, run_demo

    if args.threads is None:  # neither `pesf --threads N demo` nor `pesf demo --threads N`
        torch.set_num_threads(_idle_threads())
    print(f"pesf demo: {torch.get_num_threads()} CPU thread(s) (choose with --threads N)", flush=True)
    screen = _Screen()
    callbacks = DemoCallbacks(
        stage=screen.stage, progress=screen.progress, info=screen.info, train_progress=sys.stderr.isatty()
    )
    options = DemoOptions(
        out=Path(args.out), model=args.model, clicks=args.clicks, skip_training=args.skip_training
    )
    try:
        result = run_demo(options, callbacks)
    finally:
        screen._close()
    report = result.report
    print()
    print(format_demo_table(report["table"]))
    round_ = report["pesf_round"]
    if round_ is not None:
        pseudo = round_["pseudo_label"]
        print()
        print(
            f"PESF round on {round_['organ']}: pseudo-label confidence {pseudo['confidence']:.3f} "
            f"(threshold {pseudo['threshold']:.3f}: {pseudo['kept_count']} kept, {pseudo['dropped_count']} dropped), "
            f"Dice against the reference {pseudo['dice_vs_reference']:.3f}"
        )
        if round_["dice_after"] is not None:
            print(
                f"  Dice of {round_['organ']} with the same {len(round_['clicks'])} clicks: "
                f"before {round_['dice_before'][-1]:.3f}, after fine-tuning {round_['dice_after'][-1]:.3f} "
                f"({round_['training']['steps']} steps)"
            )
        else:
            print("  fine-tuning skipped")
    print()
    print(f"finished in {report['timings_s']['total_s']:.0f} s")
    print(f"wrote {len(result.files)} files and a training workspace to {result.out}:")
    files = report["files"]
    print(f"  {files['labelmap']}, {files['segmentation']} (open in 3D Slicer with {report['image']})")
    print(f"  overlays/*.png ({len(files['overlays'])}), clicks/*.mrk.json, {files['report']}, workspace/")
    print(f"the demo's files are in {result.out}")
    return 0
