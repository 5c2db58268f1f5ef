"""Training throughput on this CPU: optimizer steps per second and peak memory, per model configuration.

Run::

    python Testing/Benchmarks/bench_training.py [--configs tiny vit_b_ori] [--steps 3] [--threads 2]
    python Testing/Benchmarks/bench_training.py --speedups [--steps 6]

Each (configuration, trainable) pair runs in its own child process (so each peak memory is its own) on a
workspace made from the sample CT (5 accepted organs): a :class:`pesf.train.trainer.Trainer` with random
weights, one warm-up step, then ``--steps`` timed steps of the default settings (batch 1, 5 simulated clicks
per sample, augmentation on). Prints steps/s, seconds per step, the share of data preparation (region
resampling and augmentation) and the peak resident memory. Figures only; nothing is asserted.

``--speedups`` times the ``tiny`` configuration three ways in one run, on the same samples: the benchmark
user's clicks and the loss on the region's 128^3 grid; the fast training clicks (``training_clicks:
"fast"``); and the fast clicks with the loss on a 64^3 grid (``loss_size: 64``, the default model's recipe);
it prints each one's seconds per step and its speed-up over the first.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _workspace(root: Path) -> Path:
    from pesf.io import read_labelmap, read_volume
    from pesf.resources import sample_data_dir
    from pesf.train.store import CaseStore, OrganRecord

    organs = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6}
    folder = sample_data_dir() / "A_ts_ct"
    image = read_volume(folder / "A_ct_sm_image.nii.gz")
    label = read_labelmap(folder / "A_ct_sm_seg_total.nii.gz", like=image)[0]
    label = label.with_array(np.where(np.isin(label.array, list(organs.values())), label.array, 0))
    store = CaseStore(root, create=True)
    store.add_case(image, label, [OrganRecord(n, v, "accepted") for n, v in organs.items()], "a")
    return root


def _measure(
    config: str, trainable: str, steps: int, threads: int, clicks: int, queue: Any, extra: dict | None = None
) -> None:
    import torch

    from pesf.models import build_model
    from pesf.train.config import TrainConfig
    from pesf.train.store import CaseStore
    from pesf.train.trainer import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        store = CaseStore(_workspace(Path(tmp) / "ws"))
        settings = TrainConfig(
            steps=steps + 1, trainable=trainable, click_iterations=clicks, val_fraction=0.0, **(extra or {})
        )
        trainer = Trainer(store, settings, build_model(config, seed=0))
        prepare_s: list[float] = []
        prepare = trainer._prepare

        def timed_prepare(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            sample = prepare(*args, **kwargs)
            prepare_s.append(time.perf_counter() - t0)
            return sample

        trainer._prepare = timed_prepare  # type: ignore[method-assign]
        trainer.train_step()  # warm-up: first allocations, case cache
        prepare_s.clear()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            result = trainer.train_step()
            times.append(time.perf_counter() - t0)
        params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    queue.put(
        {
            "config": config,
            "trainable": trainable,
            "trainable_params": params,
            "step_s": statistics.median(times),
            "prepare_s": statistics.median(prepare_s),
            "loss": result.loss,
            "peak_mb": _rss_mb(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "vit_b_ori"])
    parser.add_argument("--trainable", nargs="+", default=["all", "decoder"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--clicks", type=int, default=5, help="simulated clicks per sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speedups", action="store_true", help="compare click simulation and loss grids")
    args = parser.parse_args()
    if args.speedups:
        _speedups(args)
        return
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads; batch 1, {args.clicks} clicks per "
        f"sample, {args.steps} timed steps after 1 warm-up"
    )
    print(
        f"{'config':<10} {'trainable':<9} {'params':>11} {'steps/s':>8} {'s/step':>7} {'data s':>7} {'peak MiB':>9}"
    )
    ctx = mp.get_context("spawn")
    for config in args.configs:
        for trainable in args.trainable:
            queue = ctx.Queue()
            proc = ctx.Process(
                target=_measure, args=(config, trainable, args.steps, args.threads, args.clicks, queue)
            )
            proc.start()
            r = queue.get()
            proc.join()
            print(
                f"{r['config']:<10} {r['trainable']:<9} {r['trainable_params']:>11,} {1 / r['step_s']:>8.3f} "
                f"{r['step_s']:>7.2f} {r['prepare_s']:>7.2f} {r['peak_mb']:>9.0f}"
            )


def _speedups(args: argparse.Namespace) -> None:
    variants = [
        ("exact clicks, 128^3 loss", {"training_clicks": "exact", "loss_size": 0}),
        ("fast clicks, 128^3 loss", {"training_clicks": "fast", "loss_size": 0}),
        ("fast clicks, 64^3 loss", {"training_clicks": "fast", "loss_size": 64}),
    ]
    print(
        f"tiny, all trainable, {args.threads} threads; batch 1, {args.clicks} clicks, {args.steps} timed steps"
    )
    ctx = mp.get_context("spawn")
    first = None
    for name, extra in variants:
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_measure, args=("tiny", "all", args.steps, args.threads, args.clicks, queue, extra)
        )
        proc.start()
        r = queue.get()
        proc.join()
        first = first or r["step_s"]
        print(
            f"{name:<26} {r['step_s']:>6.2f} s/step  data {r['prepare_s']:.2f} s  x{first / r['step_s']:.1f}"
        )


if __name__ == "__main__":
    main()
