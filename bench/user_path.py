"""Benchmark: a model on its users' path, on the test mice of a ``bench/generalisation.py`` folder.

Usage: ``python bench/user_path.py GEN_DIR [--model DIR] [--out OUT]``.

The test mice of the generalisation bench (``GEN_DIR/models/shipped/manifest.json``'s test split)
are handed to ``dfseg predict`` the way a lab would hand over its scans: the raw reconstructions
(``attn``, ``df`` at the grating orientations, ``sidecar.json``) and nothing else: no label, no lung
mask (``dfseg predict`` makes one from the images), no projections (the volume chain corrects them).
Each scanner group is corrected with its own cohort's calibration set, given with ``--calibration``
as a lab gives the calibration of its own phantoms; it states dark-field at the model's reference
energy. The lesion lists are then scored against the simulator's labels by ``dfseg evaluate``'s
rules (:func:`dfseg.evaluation.lesions.match_lesions`): a tumour (a 26-connected component of the
label, in the size bin of its equivalent-sphere diameter; under 0.5 mm not counted) is found when a
listed lesion overlaps it; a listed lesion on no tumour voxel is a false positive; Dice compares the listed
lesions' mask with the label on scans with tumours; the volume AUROC ranks the presence scores.

Prints (and writes to ``OUT/user_path.json``) per variant and for all mice: scans, AUROC, tumours of
1 mm and more found, of 0.5-1 mm found, false positives per scan, mean Dice. About 2.5 minutes for
the 33 test mice of a seed-1 folder on 2 CPU cores; ``make bench`` leaves it out (it needs a
generalisation folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dfseg.cli import main as dfseg_main
from dfseg.evaluation.lesions import match_lesions
from dfseg.evaluation.metrics import auroc as metrics_auroc
from dfseg.evaluation.metrics import dice
from dfseg.io import load_nifti, read_json, voxel_size, write_json
from dfseg.resources import shipped_model

GROUPS = {"fixed": "fix", "randomised": "ran"}
#: What a lab hands over: the raw reconstructions and the acquisition record.
HANDED_OVER = ("attn.nii.gz", "df.nii.gz", "sidecar.json")


def score_scan(lesions: np.ndarray, label: np.ndarray, voxel_mm: float) -> dict[str, Any]:
    """One scan's lesion list (``lesions``: ids, 0 = background) against its tumour ``label``, by
    the evaluation's matching rule and size bins (:func:`dfseg.evaluation.lesions.match_lesions`)."""
    matched = match_lesions((lesions > 0).astype(np.float32), label > 0, 0.5, voxel_mm)
    found = {"ge_1mm": [0, 0], "0.5_1mm": [0, 0]}
    for lesion in matched["lesions"]:
        key = {"0.5-1": "0.5_1mm", "<0.5": None}.get(lesion["size_bin"], "ge_1mm")
        if key is not None:
            found[key][0] += int(lesion["detected"])
            found[key][1] += 1
    return {"found": found, "false_positives": sum(not c["tp"] for c in matched["components"]),
            "dice": dice(lesions > 0, label > 0) if label.any() else None, "has_tumour": bool(label.any())}


def auroc(labels: list[bool], scores: list[float]) -> float | None:
    """:func:`dfseg.evaluation.metrics.auroc` (ties count half); None without both classes."""
    value = metrics_auroc(np.asarray(scores, float), np.asarray(labels, bool))
    return None if np.isnan(value) else value


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled numbers of a set of scored scans."""
    total = {key: [sum(r["found"][key][i] for r in rows) for i in (0, 1)] for key in ("ge_1mm", "0.5_1mm")}
    dice = [r["dice"] for r in rows if r["dice"] is not None]
    value = auroc([r["has_tumour"] for r in rows], [r["presence_score"] for r in rows])
    return {"n_scans": len(rows), "volume_auroc": None if value is None else round(value, 4),
            "lesions_ge_1mm": "{}/{}".format(*total["ge_1mm"]), "lesions_0.5_1mm": "{}/{}".format(*total["0.5_1mm"]),
            "fp_per_scan": round(float(np.mean([r["false_positives"] for r in rows])), 4),
            "dice": round(float(np.mean(dice)), 4) if dice else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gen_dir", type=Path, help="a bench/generalisation.py output folder")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the model dfseg ships)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: GEN_DIR/user_path)")
    args = parser.parse_args()
    out = args.out or args.gen_dir / "user_path"
    model = args.model or shipped_model()
    test = {e["subject_id"] for e in read_json(args.gen_dir / "models" / "shipped" / "manifest.json")["test"]}
    rows, seconds = [], {}
    for group, prefix in GROUPS.items():
        scans = args.gen_dir / group / "cohort" / "scans"
        handed = out / "scans" / group
        for scan in sorted(p for p in scans.iterdir() if p.is_dir()):
            if f"{prefix}-{scan.name.removesuffix('_ct')}" not in test or (handed / scan.name).exists():
                continue
            (handed / scan.name).mkdir(parents=True)
            for name in HANDED_OVER:
                os.symlink((scan / name).resolve(), handed / scan.name / name)
        if not handed.is_dir():  # no test mouse of this group (e.g. all of the shipped model's cohort)
            continue
        t = time.perf_counter()
        code = dfseg_main(["predict", str(handed), "-o", str(out / "predictions" / group), "--model", str(model),
                           "--calibration", str(args.gen_dir / group / "calibration.json"), "--no-progress",
                           "--overwrite"])
        if code:
            sys.exit(code)
        seconds[group] = round(time.perf_counter() - t, 1)
        for folder in sorted(p for p in (out / "predictions" / group).iterdir() if p.is_dir()):
            label, affine = load_nifti(scans / folder.name / "label.nii.gz")
            lesions, _ = load_nifti(folder / "lesions.nii.gz")
            row = score_scan(lesions, label, float(voxel_size(affine)[0]))
            side = read_json(scans / folder.name / "sidecar.json")
            row.update(scan=folder.name, group=group, variant=side.get("variant"),
                       presence_score=read_json(folder / "summary.json")["presence_score"])
            rows.append(row)
    report: dict[str, Any] = {"model": str(model), "gen_dir": str(args.gen_dir), "predict_seconds": seconds}
    for variant in sorted({r["variant"] for r in rows}):
        report[variant] = summarise([r for r in rows if r["variant"] == variant])
    report["all"] = summarise(rows)
    report["scans"] = rows
    write_json(out / "user_path.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "scans"}, indent=2))


if __name__ == "__main__":
    main()
