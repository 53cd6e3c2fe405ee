"""Benchmark cone-beam FDK (dfseg.tomo.fdk) against ASTRA: one JSON object.

A quadratic-profile ellipsoid phantom (exact projections, computed once and not timed) in a
circular cone beam: ``--size`` cubed voxels of 0.1 mm (default 128^3), ``--angles`` over 360 degrees
(default 256), magnification 2, a detector of ``size + 32`` columns by ``size`` rows of 0.2 mm.

* ``dfseg_cpu`` / ``dfseg_cuda``: FDK wall seconds (cold: first call; warm: second), CPU seconds
  over all threads, peak memory (CPU: the child process' resident high-water mark from just
  before FDK, and its rise above the resident size then, which holds the input; CUDA: the rise
  of ``torch.cuda.max_memory_allocated`` above the input), and the relative RMSE to the phantom
  inside the object within +-8 slices of the mid-plane. The default memory budget is
  :data:`dfseg.tomo.projector.OPERATOR_BUDGET_BYTES` (256 MiB).
* ``astra_cpu``: what ASTRA runs on the CPU for this geometry: its 3D cone-beam algorithms are
  CUDA-only and its CPU FBP takes parallel beams only, so the per-slice 2D fan-beam operators
  (``strip_fanflat`` forward projection and back-projection of the mid-plane, the back-projection
  being the bulk of an FBP) and a parallel-beam FBP of one slice, with the seconds for all
  ``size`` slices (``x size``: ASTRA has no 3D CPU path to time directly).
* ``astra_cuda``: ``FDK_CUDA`` seconds for the whole volume and the relative RMSE between its
  reconstruction and dfseg's (inside the object), when CUDA and ASTRA's CUDA build are there.

Run: ``python bench/cone_beam.py [--size 128] [--angles 256] [--threads 2] [--device all|cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import numpy as np
import torch
from _memory import peak_rss_mb, reset_peak_rss  # bench/ is sys.path[0]

from dfseg.tomo import Ellipsoid, Geometry, ellipsoid_projections, ellipsoid_volume, fdk

VOXEL = 0.1


def _timed_astra(astra, algorithm: str, projector: int, sino: int, vol_geom: dict) -> float:
    """Seconds one run of an ASTRA 2D algorithm (``BP``, ``FBP``) takes; frees its data and projector."""
    rid = astra.data2d.create("-vol", vol_geom, 0)
    cfg = astra.astra_dict(algorithm)
    cfg.update(ProjectorId=projector, ProjectionDataId=sino, ReconstructionDataId=rid)
    aid = astra.algorithm.create(cfg)
    try:
        t0 = time.perf_counter()
        astra.algorithm.run(aid)
        return time.perf_counter() - t0
    finally:
        astra.algorithm.delete(aid)
        astra.data2d.delete([sino, rid])
        astra.projector.delete(projector)


def _setup(size: int, n_angles: int) -> tuple[Geometry, list[Ellipsoid], np.ndarray, np.ndarray]:
    """Geometry, phantom (scaled to the volume), exact projections (A, U, V) float32, phantom volume."""
    half = size * VOXEL / 2
    ph = [
        Ellipsoid(0.02, (0.0, 0.0, 0.0), (0.75 * half, 0.62 * half, 0.7 * half), 20.0, "quadratic"),
        Ellipsoid(0.015, (0.2 * half, -0.15 * half, 0.1 * half), (0.25 * half, 0.2 * half, 0.3 * half), 0.0, "quadratic"),
        Ellipsoid(-0.01, (-0.3 * half, 0.2 * half, -0.2 * half), (0.2 * half, 0.22 * half, 0.18 * half), 45.0,
                  "quadratic"),
    ]
    g = Geometry(kind="cone", scan_deg=360, source_object_mm=50.0, source_detector_mm=100.0,
                 detector_pixel_mm=2 * VOXEL, detector_shape=(size + 32, size))
    proj = ellipsoid_projections(ph, g, n_angles=n_angles).astype(np.float32)
    vol = ellipsoid_volume(ph, (size, size, size), VOXEL, supersample=2).astype(np.float32)
    return g, ph, proj, vol


def _accuracy(rec: np.ndarray, vol: np.ndarray) -> float:
    mid = vol.shape[2] // 2
    near = slice(max(0, mid - 8), mid + 9)
    inside = vol[:, :, near] > 0
    a, b = rec[:, :, near][inside], vol[:, :, near][inside]
    return round(float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2))), 5)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_dfseg(size: int, n_angles: int, device: str) -> dict[str, object]:
    g, _, proj, vol = _setup(size, n_angles)
    p = torch.from_numpy(proj).to(device)
    out: dict[str, object] = {"device": device, "threads": torch.get_num_threads(),
                              "input_mb": round(proj.nbytes / 2**20, 1), "output_mb": round(4 * size**3 / 2**20, 1)}
    reset = reset_peak_rss()  # the phantom's set-up is not FDK's peak
    rss0 = peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rec = None
    for label in ("cold", "warm"):
        rec = None
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        rec = fdk(p, g, VOXEL, volume_shape=(size, size, size))
        _sync(device)
        out[f"{label}_s"] = round(time.perf_counter() - t0, 3)
        out[f"{label}_cpu_s"] = round(time.process_time() - c0, 3)
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    else:
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)  # since the reset when it worked
        out["fdk_rss_rise_mb"] = round(peak_rss_mb() - rss0, 1) if reset else None
    out["voxel_angle_updates_per_s"] = round(size**3 * n_angles / out["warm_s"])
    out["rel_rmse_vs_phantom"] = _accuracy(rec.cpu().numpy(), vol)
    return out


def _astra():
    try:
        import astra
    except ImportError:
        return None
    return astra


def run_astra_cpu(size: int, n_angles: int) -> dict[str, object] | None:
    astra = _astra()
    if astra is None:
        return None
    g, _, proj, vol = _setup(size, n_angles)
    n_u = g.detector_shape[0]
    t = g.angles(n_angles)
    du = g.pixel_mm()[0] / VOXEL
    so, sd = g.source_object_mm / VOXEL, g.source_detector_mm / VOXEL
    # ASTRA fanflat in its 2D frame: a = t - pi/2, columns reversed (tests/tomo/test_cone.py)
    pg = astra.create_proj_geom("fanflat", du, n_u, t - math.pi / 2, so, sd - so)
    vg = astra.create_vol_geom(size, size)
    pid = astra.create_projector("strip_fanflat", pg, vg)
    sl = np.ascontiguousarray(vol[:, :, size // 2].T[::-1])
    t0 = time.perf_counter()
    sid, _ = astra.create_sino(sl, pid)
    fp = time.perf_counter() - t0
    mid = np.ascontiguousarray(proj[:, ::-1, proj.shape[2] // 2])
    astra.data2d.store(sid, mid)
    bp = _timed_astra(astra, "BP", pid, sid, vg)
    # a parallel-beam FBP of one slice (ASTRA's only CPU FBP), same angles and detector
    ppg = astra.create_proj_geom("parallel", 1.0, n_u, t + math.pi / 2)
    ppid = astra.create_projector("strip", ppg, vg)
    pfbp = _timed_astra(astra, "FBP", ppid, astra.data2d.create("-sino", ppg, np.ascontiguousarray(mid)), vg)
    return {
        "fanflat_fp_per_slice_s": round(fp, 4),
        "fanflat_bp_per_slice_s": round(bp, 4),
        "fanflat_bp_all_slices_s": round(bp * size, 2),
        "parallel_fbp_per_slice_s": round(pfbp, 4),
        "parallel_fbp_all_slices_s": round(pfbp * size, 2),
        "note": "ASTRA has no CPU cone-beam or fan-beam FBP; per-slice 2D operators x slices",
    }


def run_astra_cuda(size: int, n_angles: int) -> dict[str, object] | None:
    astra = _astra()
    if astra is None or not torch.cuda.is_available() or not astra.use_cuda():
        return None
    g, _, proj, vol = _setup(size, n_angles)
    t = g.angles(n_angles)
    d = np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], 1)
    e = np.stack([-np.sin(t), np.cos(t), np.zeros_like(t)], 1)
    du, dv = g.pixel_mm()
    vz = np.zeros_like(d)
    vz[:, 2] = dv
    vec = np.concatenate([-g.source_object_mm * d, (g.source_detector_mm - g.source_object_mm) * d - g.cor_offset_px * du * e,
                          du * e, vz], axis=1) / VOXEL
    n_u, n_v = g.detector_shape
    pg = astra.create_proj_geom("cone_vec", n_v, n_u, vec)
    vg = astra.create_vol_geom(size, size, size)
    out: dict[str, object] = {}
    ref = None
    for label in ("cold", "warm"):
        sid = astra.data3d.create("-sino", pg, np.ascontiguousarray(proj.transpose(2, 0, 1)))
        rid = astra.data3d.create("-vol", vg, 0)
        cfg = astra.astra_dict("FDK_CUDA")
        cfg.update(ProjectionDataId=sid, ReconstructionDataId=rid)
        aid = astra.algorithm.create(cfg)
        t0 = time.perf_counter()
        astra.algorithm.run(aid)
        out[f"fdk_{label}_s"] = round(time.perf_counter() - t0, 3)
        ref = astra.data3d.get(rid).transpose(2, 1, 0) / VOXEL
        astra.algorithm.delete(aid)
        astra.data3d.delete([sid, rid])
    mine = fdk(torch.from_numpy(proj).cuda(), g, VOXEL, volume_shape=(size, size, size)).cpu().numpy()
    inside = vol > 0
    out["rel_rmse_dfseg_vs_astra"] = round(float(np.sqrt(np.mean((mine[inside] - ref[inside]) ** 2)
                                                         / np.mean(ref[inside] ** 2))), 5)
    out["rel_rmse_vs_phantom"] = _accuracy(ref, vol)
    return out


def _child(args: argparse.Namespace, case: str) -> dict[str, object] | None:
    """Run one case in its own process, so that its peak memory is its own."""
    cmd = [sys.executable, __file__, "--size", str(args.size), "--angles", str(args.angles),
           "--threads", str(args.threads), "--case", case]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--angles", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    ap.add_argument("--case", choices=("dfseg_cpu", "dfseg_cuda", "astra_cpu", "astra_cuda"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        runs = {"dfseg_cpu": lambda: run_dfseg(args.size, args.angles, "cpu"),
                "dfseg_cuda": lambda: run_dfseg(args.size, args.angles, "cuda"),
                "astra_cpu": lambda: run_astra_cpu(args.size, args.angles),
                "astra_cuda": lambda: run_astra_cuda(args.size, args.angles)}
        print(json.dumps(runs[args.case]()))
        return
    cuda = torch.cuda.is_available()
    result: dict[str, object] = {
        "size": args.size, "angles": args.angles, "voxel_mm": VOXEL, "detector": [args.size + 32, args.size],
        "magnification": 2.0, "torch": torch.__version__, "threads": args.threads,
    }
    if args.device in ("all", "cpu"):
        result["dfseg_cpu"] = _child(args, "dfseg_cpu")
        result["astra_cpu"] = _child(args, "astra_cpu")
    if args.device in ("all", "cuda"):
        result["dfseg_cuda"] = _child(args, "dfseg_cuda") if cuda else None
        result["astra_cuda"] = _child(args, "astra_cuda") if cuda else None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
