"""Lung mask from the images (``dfseg.transforms.LungMask``) against the simulator's lung masks.

N tumour-bearing mice from the real simulator (``simulate_subject``, default acquisition except the
number of projection angles), corrected by the volume chain with a calibration fitted on the
simulator's own phantom scans (noise-free, as ``tests/commands/test_preprocess.py`` does), then
``LungMaskd`` on the corrected attenuation and ``c0``. Reported per cohort:

- Dice of the mask against the simulator's ``lung_mask`` (mean, min, per mouse);
- tumour coverage: the share of all tumour voxels (``label``) inside the mask, and the number of
  tumours with any voxel outside it;
- the same Dice on the raw reconstructions (no correction; ``c0`` = mean over orientations), to
  show the thresholds do not depend on the correction;
- seconds per scan for ``LungMask`` alone.

Usage: ``python bench/lung_mask.py [--mice 8] [--size 48] [--voxel-mm 0.4] [--angles 90] [--seed 0]``;
prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dfseg.calibration import save_calibration
from dfseg.calibration.fit import fit_calibration
from dfseg.evaluation.lesions import connected_components
from dfseg.simulate.acquisition import AcquisitionConfig
from dfseg.simulate.cohort import simulate_subject
from dfseg.simulate.phantoms import write_phantom_scans
from dfseg.transforms import LungMask, LungMaskd, volume_chain


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mice", type=int, default=8)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--voxel-mm", type=float, default=0.4)
    parser.add_argument("--angles", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    acquisition = AcquisitionConfig(n_angles=args.angles)
    with tempfile.TemporaryDirectory() as tmp:
        write_phantom_scans(Path(tmp) / "phantoms", AcquisitionConfig(noise=False), seed=args.seed)
        calibration = fit_calibration(Path(tmp) / "phantoms")
        save_calibration(Path(tmp) / "calibration.json", calibration)
        chain = volume_chain(Path(tmp) / "calibration.json")
    transform, raw_mask = LungMaskd(), LungMask()
    runs, seconds, covered, tumour_voxels, missed = [], [], 0, 0, 0
    for index in range(args.mice):
        result = simulate_subject(index, size=args.size, voxel_mm=args.voxel_mm, seed=args.seed,
                                  acquisition=acquisition)
        images, sidecar = result["images"], result["sidecar"]
        attn = torch.from_numpy(images["attn"][None].astype(np.float32))
        df = torch.from_numpy(np.moveaxis(images["df"], -1, 0).astype(np.float32))
        d = chain({"attn": attn, "df": df, "meta": dict(sidecar)})
        start = time.perf_counter()
        mask = transform(d)["lung_mask"][0].numpy().astype(bool)
        seconds.append(time.perf_counter() - start)
        raw = raw_mask(attn, df.mean(0, keepdim=True), args.voxel_mm)[0].numpy().astype(bool)
        truth, label = images["lung_mask"].astype(bool), images["label"].astype(bool)
        covered += int((label & mask).sum())
        tumour_voxels += int(label.sum())
        labels, n = connected_components(label)
        missed += sum(int((~mask[labels == k]).any()) for k in range(1, n + 1))
        runs.append({"scan_id": sidecar["scan_id"], "dice": dice(mask, truth), "dice_raw": dice(raw, truth),
                     "lung_voxels": int(truth.sum()), "mask_voxels": int(mask.sum()), "tumours": n,
                     "tumour_diameters_mm": [round(t["diameter_mm"], 2) for t in sidecar["tumours"]]})
    dices = [r["dice"] for r in runs]
    print(json.dumps({
        "mice": args.mice, "size": args.size, "voxel_mm": args.voxel_mm, "angles": args.angles, "seed": args.seed,
        "settings": vars(transform.mask),
        "dice_mean": float(np.mean(dices)), "dice_min": float(np.min(dices)),
        "dice_raw_mean": float(np.mean([r["dice_raw"] for r in runs])),
        "tumour_coverage": covered / max(tumour_voxels, 1), "tumour_voxels": tumour_voxels,
        "tumours_not_fully_covered": missed, "seconds_per_scan": float(np.mean(seconds)),
        "torch_threads": torch.get_num_threads(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
