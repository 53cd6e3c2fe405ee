"""Benchmark dfseg.tomo: project + FBP of a 96^3 volume with 7 maps (attn + 6 tensor components).

Prints one JSON object: wall seconds for the cold call (includes building the cached system
matrices) and the warm call, per stage, CPU seconds over all threads, and peak memory. Run: ``python bench/tomo.py [--size 96]
[--angles 180] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from dfseg.tomo import fbp, project, projection_angles


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=96, help="X = Y = Z voxels")
    p.add_argument("--angles", type=int, default=180)
    p.add_argument("--maps", type=int, default=7, help="maps per slice (attn + 6 tensor components)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    n, dev = args.size, args.device
    rng = np.random.default_rng(args.seed)
    # Slices (Z) and maps folded into the batch, as callers do: (Z, maps, X, Y).
    vol = torch.from_numpy(rng.random((n, args.maps, n, n), dtype=np.float32)).to(dev)
    angles = projection_angles(args.angles)
    result: dict[str, object] = {
        "size": n,
        "angles": args.angles,
        "maps": args.maps,
        "images": n * args.maps,
        "device": dev,
        "threads": torch.get_num_threads(),
    }
    for label in ("cold", "warm"):
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        sino = project(vol, angles, pixel_mm=0.1)
        _sync(dev)
        t1, c1 = time.perf_counter(), time.process_time()
        rec = fbp(sino, angles, n, pixel_mm=0.1)
        _sync(dev)
        t2, c2 = time.perf_counter(), time.process_time()
        result[f"{label}_project_s"] = round(t1 - t0, 3)
        result[f"{label}_fbp_s"] = round(t2 - t1, 3)
        result[f"{label}_total_s"] = round(t2 - t0, 3)
        # CPU seconds over all threads: comparable between runs on a busy machine, unlike wall time.
        result[f"{label}_project_cpu_s"] = round(c1 - c0, 3)
        result[f"{label}_total_cpu_s"] = round(c2 - c0, 3)
    result["output_shape"] = list(rec.shape)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    if dev.startswith("cuda"):
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
