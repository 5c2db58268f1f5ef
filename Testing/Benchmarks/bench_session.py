"""Interactive latency of the `vit_b_ori` configuration (random weights) on this machine.

Prints: first-click latency (preprocessing + encoder + decoder + paste-back), next-click latency in a cached
region, paste-back time and the refinement of a click (a geodesic grow from seeds on the organ's box, from
an organ's first click on; reported on its own lines), for a click on a 512x512x300 CT-like volume; and the
peak memory.

    python Testing/Benchmarks/bench_session.py [--config vit_b_ori] [--repeats 3]

Goals (issue 2): first click < 1 s; next click in a cached region, pasted back onto 512x512x300, < 150 ms
(the model's part; the refinement, added later, is reported on its own line).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from pesf.interactive import InteractiveSession, SessionConfig
from pesf.io.volume import Volume
from pesf.models import build_model


def _ct_like(shape=(512, 512, 300), spacing=(0.78, 0.78, 1.0)) -> Volume:
    rng = np.random.default_rng(0)
    arr = np.full(shape, -1000, dtype=np.int16)
    i, j, k = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((i - 256) / 220.0) ** 2 + ((j - 256) / 170.0) ** 2 < 1
    arr[np.broadcast_to(body, shape)] = 40
    organ = ((i - 300) / 60.0) ** 2 + ((j - 230) / 50.0) ** 2 + ((k - 150) / 70.0) ** 2 < 1
    arr[organ] = 120
    arr += rng.integers(-20, 20, size=shape, dtype=np.int16)
    return Volume(arr, origin=[-200.0, -200.0, -150.0], spacing=spacing, direction=np.diag([1.0, 1.0, 1.0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="vit_b_ori")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--confidence-runs", type=int, default=SessionConfig().confidence_runs)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.config).eval()
    image = _ct_like()
    cfg = SessionConfig(confidence_runs=args.confidence_runs, grow=False)
    print(f"config {args.config}, image {image.shape} at {image.spacing.tolist()} mm, threads {args.threads}")

    InteractiveSession(model, image, cfg).add_click("warmup", (300, 230, 150))  # warm up kernels
    first, nxt, paste, decode, refine, refine1, conf, conf_map = [], [], [], [], [], [], [], []
    first_parts: dict[str, list[float]] = {}
    for r in range(args.repeats):
        session = InteractiveSession(model, image, cfg)
        t0 = time.perf_counter()
        res = session.add_click("organ", (300 + r, 230, 150))
        refine1.append(res.timings.get("refine_s", 0.0))
        first.append(time.perf_counter() - t0 - refine1[-1])
        for k, v in res.timings.items():
            first_parts.setdefault(k, []).append(v)
        for dx in (5, -5, 10):
            t0 = time.perf_counter()
            res = session.add_click("organ", (300 + dx, 232, 150), positive=dx != 10)
            refine.append(res.timings.get("refine_s", 0.0))
            nxt.append(time.perf_counter() - t0 - refine[-1])
            paste.append(res.timings["paste_s"])
            decode.append(res.timings["decode_s"])
            t0 = time.perf_counter()
            _ = res.confidence
            conf.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _ = res.confidence_map
            conf_map.append(time.perf_counter() - t0)
    med = statistics.median
    print(f"first click (preprocess+encode+decode+paste): {med(first) * 1000:8.1f} ms   (goal < 1000 ms)")
    for k in ("preprocess_s", "encode_s", "decode_s", "paste_s"):
        print(f"  of which {k[:-2]:<36}{med(first_parts[k]) * 1000:8.1f} ms")
    print(f"next click in cached region, the model's part: {med(nxt) * 1000:7.1f} ms   (goal < 150 ms)")
    print(f"  of which decoder:                           {med(decode) * 1000:8.1f} ms")
    print(f"  of which paste-back onto 512x512x300:       {med(paste) * 1000:8.1f} ms")
    print(f"refinement of the first click (after it):      {med(refine1) * 1000:7.1f} ms")
    print(f"refinement of the corrective click (after it): {med(refine) * 1000:7.1f} ms")
    print(
        f"organ confidence on first use ({cfg.confidence_runs} perturbed decoder runs): "
        f"{med(conf) * 1000:.1f} ms; voxel confidence map pasted on first use: {med(conf_map) * 1000:.1f} ms"
    )
    print(f"  organ crop pasted: {res.probability.shape}")
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
