"""Benchmark: seconds and peak memory to simulate one subject of a named protocol (CT, 4 orientations).

Usage: ``python bench/simulate.py [--protocol mission-150um] [--angles N] [--subjects 2] [--threads 2]
[--device cpu|cuda]``. Prints JSON. The first subject pays one-time costs (SpekPy model, projector
blocks); the per-subject figure that matters is the warm one. Peak memory is the process's
maximum resident set (and CUDA's peak allocation on a GPU).

The issue's targets (2 CPU cores): mission-150um (178 x 178 x 107, >= 180 angles) <= 15 s and
<= 3 GB; mission-100um (260 x 260 x 160, >= 360 angles) <= 90 s and <= 6 GB; with CUDA <= 3 s at
0.10 mm.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="mission-150um", help="protocol name (dfseg.simulate.protocols)")
    parser.add_argument("--angles", type=int, default=None, help="CT projection angles (default: the protocol's)")
    parser.add_argument("--subjects", type=int, default=2, help="subjects to time (first is the cold one)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when present)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    import torch

    from dfseg.simulate.acquisition import AcquisitionConfig, acquire_ct
    from dfseg.simulate.anatomy import build_anatomy
    from dfseg.simulate.cohort import subject_rng
    from dfseg.simulate.protocols import get_protocol
    from dfseg.simulate.tumours import sample_tumours

    torch.set_num_threads(args.threads)
    import_s = time.perf_counter() - t0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    proto = get_protocol(args.protocol)
    cfg = AcquisitionConfig(n_angles=args.angles or proto.n_angles)
    grid = proto.grid(cfg.air_columns)
    runs = []
    for i in range(args.subjects):
        rng = subject_rng(0, i)
        t = time.perf_counter()
        a = build_anatomy(grid, proto.voxel_mm, rng, air_columns=cfg.air_columns, z_centre_mm=proto.z_centre_mm)
        sample_tumours(a, rng, count=2)
        t_anat = time.perf_counter() - t
        t1 = time.perf_counter()
        acquire_ct(a, cfg, rng, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t_acq = time.perf_counter() - t1
        runs.append({"anatomy_s": round(t_anat, 2), "acquisition_s": round(t_acq, 2),
                     "total_s": round(t_anat + t_acq, 2)})
    print(json.dumps({
        "protocol": proto.name, "grid": list(grid), "voxel_mm": proto.voxel_mm,
        "orientations": len(cfg.orientations_deg), "angles": cfg.n_angles, "device": device,
        "torch_threads": torch.get_num_threads(), "import_s": round(import_s, 2), "runs": runs,
        "seconds_per_subject_warm": runs[-1]["total_s"],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "cuda_max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.startswith("cuda") else None,
    }, indent=2))


if __name__ == "__main__":
    main()
