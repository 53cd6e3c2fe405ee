"""Time and peak memory of ``dfseg predict`` on one scan, model load included; prints JSON.

Each case runs ``dfseg predict`` as its own process (``python bench/predict.py --child ...``), so the
wall time (``seconds``) includes Python start-up, the imports, reading the run record and ``model.pt``, reading
the scan, inference and writing every output, and the peak resident memory (``VmHWM``) belongs to
that run alone; ``predict_seconds`` is the part after the imports, ``startup_seconds`` the rest. The model is a demo-sized attention U-Net (channels 8-16-32-64, strides 2-2-2, deep
supervision, ROI 32 as ``dfseg demo`` trains it) with random weights (the cost does not depend on
the weights); the scan is a preprocessed (attn + 5 dark-field channels) cube with a lung mask, at the
model's voxel size (no resampling) unless ``--voxel-mm`` differs from 0.4.

Usage:
    python bench/predict.py [--sizes 64 192] [--roi 32] [--voxel-mm 0.4] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dfseg.io import save_nifti, write_json
from dfseg.training import build_network, run_info

MODEL_VOXEL_MM = 0.4
NETWORK = {"name": "attention_unet", "spatial_dims": 3, "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
           "dropout": 0.1, "deep_supervision": True, "presence_head": False}


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_run(folder: Path, roi: int) -> Path:
    """A run folder: random demo-sized weights and a run record with the predict plan."""
    torch.manual_seed(0)
    net = build_network(NETWORK, "combined", [roi] * 3)
    folder.mkdir(parents=True)
    torch.save({"model": net.state_dict()}, folder / "model.pt")
    info = run_info(bundle="bench", manifest=folder / "none.json", fold=0, modality="combined", seed=0,
                    hyper_parameters={"patch_size": [roi] * 3}, network=NETWORK, model=net, spatial_dims=3,
                    preprocessed=True)
    info["predict"] = {"voxel_mm": [MODEL_VOXEL_MM] * 3, "roi_size": [roi] * 3,
                       "correction": {"preprocessed": True, "domain": "volume", "calibration": None}}
    write_json(folder / "run_info.json", info)
    return folder


def make_scan(folder: Path, size: int, voxel_mm: float) -> Path:
    """A preprocessed scan folder: two ellipsoidal lungs in tissue, a few dense nodules."""
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"), -1)
    lungs = ((((g - (-0.35, 0, 0)) / (0.3, 0.5, 0.7)) ** 2).sum(-1) <= 1) | \
            ((((g - (0.35, 0, 0)) / (0.3, 0.5, 0.7)) ** 2).sum(-1) <= 1)
    nodules = (((g - (0.35, 0.1, 0.2)) / 0.08) ** 2).sum(-1) <= 1
    attn = np.where(lungs, 0.005, 0.02) + 0.015 * nodules + rng.normal(0, 0.001, lungs.shape)
    c0 = np.where(lungs & ~nodules, 0.01, 0.001) + rng.normal(0, 0.0005, lungs.shape)
    df = np.stack([c0, 0.2 * c0, np.full_like(c0, 0.2), 0.12 * c0, 0.16 * c0], -1)
    save_nifti(folder / "attn.nii.gz", attn.astype(np.float32), voxel_mm)
    save_nifti(folder / "df.nii.gz", df.astype(np.float32), voxel_mm)
    save_nifti(folder / "lung_mask.nii.gz", lungs.astype(np.uint8), voxel_mm)
    write_json(folder / "sidecar.json", {
        "subject_id": "bench", "scan_id": folder.name, "kvp": 50.0, "filtration_mm": {"Al": 0.5},
        "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0},
        "orientations_deg": [0.0, 45.0, 90.0, 135.0], "voxel_mm": voxel_mm, "preprocessed": True})
    return folder


def child(argv: list[str]) -> None:
    from dfseg.cli import main

    t0 = time.perf_counter()
    rc = main(["predict", *argv])
    print(json.dumps({"rc": rc, "predict_seconds": round(time.perf_counter() - t0, 2),
                      "peak_rss_mib": round(_peak_rss_mib(), 1)}), file=sys.stderr)
    sys.exit(rc)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 192])
    parser.add_argument("--roi", type=int, default=32)
    parser.add_argument("--voxel-mm", type=float, default=MODEL_VOXEL_MM)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    result = {"host": platform.node(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "load_average": os.getloadavg()[0],
              "device": args.device, "network": NETWORK, "roi": args.roi, "model_voxel_mm": MODEL_VOXEL_MM,
              "scan_voxel_mm": args.voxel_mm, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", args.roi)
        for size in args.sizes:
            scan = make_scan(Path(tmp) / f"scan{size}", size, args.voxel_mm)
            cmd = [sys.executable, __file__, "--child", "--model", str(run), str(scan), "-o", str(Path(tmp) / f"out{size}"),
                   "--device", args.device]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            last = (proc.stderr.strip().splitlines() or ["{}"])[-1]
            try:
                child_out = json.loads(last)
            except json.JSONDecodeError:
                child_out = {"rc": proc.returncode, "error": last}
            # seconds: the whole process; predict_seconds: dfseg predict after the imports (model load,
            # read, inference, writing); the difference is interpreter start-up and imports (torch, MONAI)
            result["cases"][f"{size}^3"] = {"seconds": round(seconds, 2), **child_out,
                                           "startup_seconds": round(seconds - child_out.get("predict_seconds", 0.0), 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
