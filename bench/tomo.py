"""Benchmark dfseg.tomo: project + FBP of a 96^3 volume with 7 maps, or of a true-size mouse.

Default: one JSON object for a 96^3 volume with 7 maps (attn + 6 tensor components): wall seconds
for the cold call (includes building the system-matrix blocks) and the warm call, per stage, CPU
seconds over all threads, and peak memory. Run: ``python bench/tomo.py [--size 96] [--angles 180]
[--device cpu|cuda]``.

``--mouse``: one JSON object with, for a mouse at 0.15 mm (X = Y = 170, 110 slices x 16 channels
= 1760 images projected over 180 angles, FBP of 5 x 110 sinograms) and at 0.10 mm (256, 165
slices, 2640 images, 360 angles, FBP of 5 x 165), the cold and warm seconds of project and FBP
and the peak resident memory, on the CPU with ``--threads`` (default 2) and on CUDA when
available (else ``"cuda": null``). Each case runs in its own process so its peak is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch
from _memory import peak_rss_mb  # bench/ is sys.path[0]

from dfseg.tomo import fbp, project, projection_angles
from dfseg.tomo import projector as _projector

#: (X = Y, slices, channels projected per slice, angles, channels reconstructed per slice)
MOUSE_CASES = {"0.15mm": (170, 110, 16, 180, 5), "0.10mm": (256, 165, 16, 360, 5)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _volume(args: argparse.Namespace) -> dict[str, object]:
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
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if dev.startswith("cuda"):
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _mouse_case(case: str, device: str, seed: int) -> dict[str, object]:
    """One mouse case in this process: cold and warm project + FBP, seconds and peak memory."""
    n, slices, channels, n_angles, rec_channels = MOUSE_CASES[case]
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.random((slices, channels, n, n), dtype=np.float32)).to(device)
    angles = projection_angles(n_angles)
    mb = 2**20
    result: dict[str, object] = {"images": slices * channels, "fbp_images": slices * rec_channels}
    pixel_mm = float(case[:4])
    for label in ("cold", "warm"):
        sino = rec = sub = None
        _sync(device)
        t0 = time.perf_counter()
        sino = project(images, angles, pixel_mm=pixel_mm)
        _sync(device)
        sub = sino[:, :rec_channels].contiguous()  # the sinograms reconstructed, as a caller holds them
        _sync(device)
        t1 = time.perf_counter()
        rec = fbp(sub, angles, n, pixel_mm=pixel_mm)
        _sync(device)
        t2 = time.perf_counter()
        result[f"{label}_project_s"] = round(t1 - t0, 2)
        result[f"{label}_fbp_s"] = round(t2 - t1, 2)
    data = images.numel() + sino.numel() + sub.numel() + rec.numel()  # inputs and outputs held at the peak
    result["data_mb"] = round(data * 4 / mb)
    result["operator_cache_mb"] = round(_projector.operator_cache_bytes() / mb, 1)
    result["largest_block_mb"] = round(_projector.operator_stats()["largest_block_bytes"] / mb, 1)
    result["peak_rss_mb"] = round(peak_rss_mb())
    if device.startswith("cuda"):
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / mb)
    return result


def _mouse(args: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {
        "threads": args.threads,
        "budget_mb": _projector.OPERATOR_BUDGET_BYTES / 2**20,
        "cases": {},
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for case, (n, slices, _, n_angles, _) in MOUSE_CASES.items():
        entry: dict[str, object] = {"size": n, "slices": slices, "angles": n_angles, "cuda": None}
        for dev in devices:
            cmd = [sys.executable, __file__, "--mouse-case", case, "--device", dev,
                   "--threads", str(args.threads), "--seed", str(args.seed)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            entry[dev] = json.loads(out.stdout)
        result["cases"][case] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=96, help="X = Y = Z voxels")
    p.add_argument("--angles", type=int, default=180)
    p.add_argument("--maps", type=int, default=7, help="maps per slice (attn + 6 tensor components)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mouse", action="store_true", help="true-size mouse cases at 0.15 and 0.10 mm")
    p.add_argument("--threads", type=int, default=2, help="torch threads for --mouse")
    p.add_argument("--mouse-case", choices=sorted(MOUSE_CASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.mouse_case:
        torch.set_num_threads(args.threads)
        result = _mouse_case(args.mouse_case, args.device, args.seed)
    elif args.mouse:
        result = _mouse(args)
    else:
        result = _volume(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
