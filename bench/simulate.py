"""Benchmark: seconds and peak memory to simulate one subject (CT, 4 orientations, 180 angles).

Usage: ``python bench/simulate.py [--size 96] [--voxel-mm 0.25] [--angles 180] [--subjects 2]``.
Prints JSON. The first subject pays one-time costs (SpekPy model, projector matrices); the
per-subject figure that matters is the warm one.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="voxels per axis")
    parser.add_argument("--voxel-mm", type=float, default=0.25, help="voxel size, mm")
    parser.add_argument("--angles", type=int, default=180, help="CT projection angles")
    parser.add_argument("--subjects", type=int, default=2, help="subjects to time (first is the cold one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    import torch

    from dfseg.simulate.acquisition import AcquisitionConfig, acquire_ct
    from dfseg.simulate.anatomy import build_anatomy
    from dfseg.simulate.cohort import subject_rng
    from dfseg.simulate.tumours import sample_tumours

    if args.threads:
        torch.set_num_threads(args.threads)
    import_s = time.perf_counter() - t0
    cuda = torch.cuda.is_available()
    cfg = AcquisitionConfig(n_angles=args.angles)
    runs = []
    for i in range(args.subjects):
        rng = subject_rng(0, i)
        t = time.perf_counter()
        a = build_anatomy(args.size, args.voxel_mm, rng, air_columns=cfg.air_columns)
        sample_tumours(a, rng, count=2)
        t_anat = time.perf_counter() - t
        t1 = time.perf_counter()
        r = acquire_ct(a, cfg, rng)
        t_acq = time.perf_counter() - t1
        runs.append({"anatomy_s": round(t_anat, 2), "acquisition_s": round(t_acq, 2),
                     "total_s": round(t_anat + t_acq, 2), "attn_shape": list(r["attn"].shape)})
    print(json.dumps({
        "size": args.size, "voxel_mm": args.voxel_mm, "orientations": len(cfg.orientations_deg),
        "angles": args.angles, "device": "cuda" if cuda else "cpu", "torch_threads": torch.get_num_threads(),
        "import_s": round(import_s, 2), "runs": runs,
        "seconds_per_subject_warm": runs[-1]["total_s"],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "cuda_max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
    }, indent=2))


if __name__ == "__main__":
    main()
