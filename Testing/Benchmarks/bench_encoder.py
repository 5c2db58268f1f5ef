"""Benchmark the image encoder: SAM-Med3D's padded-window attention against the fast exact computation.

Run::

    python Testing/Benchmarks/bench_encoder.py [--config vit_b_ori] [--runs 3] [--threads 2]

Each computation runs in its own child process (so each peak memory is its own) on the same random weights
and input, one warm-up pass then ``--runs`` timed passes under ``torch.inference_mode``. Prints the median
times, their ratio, the peak resident memory of each process and how far the two embeddings differ.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the Testing folder, for the reference


def _rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _measure(kernel_name: str, config: str, runs: int, threads: int, queue: Any) -> None:
    """Child process: build the model, time the encoder with one attention kernel, report via ``queue``."""
    import torch
    from reference_padded_attention import padded_reference_attention

    from pesf.models import build_model

    torch.set_num_threads(threads)
    model = build_model(config, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero position tables and biases, so every term of the attention is exercised
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    encoder = model.image_encoder
    encoder.set_attention_kernel(padded_reference_attention if kernel_name == "padded" else None)
    x = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(2))
    baseline = _rss_mb()
    times = []
    with torch.inference_mode():
        out = encoder(x)  # warm-up
        for _ in range(runs):
            start = time.perf_counter()
            out = encoder(x)
            times.append(time.perf_counter() - start)
    queue.put({"times": times, "baseline_mb": baseline, "peak_mb": _rss_mb(), "out": out.numpy().copy()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="vit_b_ori", help="model configuration (default: vit_b_ori)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per computation (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = parser.parse_args(argv)

    import torch

    ctx = mp.get_context("spawn")
    results = {}
    for kernel_name in ("fast", "padded"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(kernel_name, args.config, args.runs, args.threads, queue))
        proc.start()
        results[kernel_name] = queue.get()
        proc.join()

    fast, padded = results["fast"], results["padded"]
    t_fast, t_padded = statistics.median(fast["times"]), statistics.median(padded["times"])
    diff = float(abs(fast["out"] - padded["out"]).max() / abs(padded["out"]).max())
    print(f"image encoder {args.config}, input (1, 1, 128, 128, 128), random weights")
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(
        f"{'attention':<10} {'median s':>9} {'runs (s)':<26} {'model MiB':>9} {'peak MiB':>9} {'extra MiB':>9}"
    )
    for name, res in (("padded", padded), ("fast", fast)):
        runs = ", ".join(f"{t:.2f}" for t in res["times"])
        print(
            f"{name:<10} {statistics.median(res['times']):>9.3f} {runs:<26} {res['baseline_mb']:>9.0f} "
            f"{res['peak_mb']:>9.0f} {res['peak_mb'] - res['baseline_mb']:>9.0f}"
        )
    print(f"speed-up fast vs padded: {t_padded / t_fast:.1f}x")
    print(f"max |fast - padded| / max |padded| = {diff:.2e}")


if __name__ == "__main__":
    main()
