"""``dfseg predict --model RUN_DIR INPUT... -o OUT``: a trained model on a lab's own scans, a lesion list per scan.

The stage is :func:`dfseg.predict.predict`. INPUT is a scan folder (``attn.*``, ``df.*``,
``sidecar.json``, optional ``lung_mask.*``), a folder of scan folders or a ``manifest.json``; or give
one scan's files with ``--attn A --df D --sidecar S [--lung-mask L]``. Labels are never needed. The
correction chain, voxel size, ROI and network come from RUN_DIR's ``run_info.json``; each window is
predicted with its mirror images (``--no-mirror``: once); per scan,
``OUT/<scan_id>/`` gets ``prob.nii.gz``, ``mask.nii.gz``, ``lesions.nii.gz``, ``lesions.seg.nrrd``,
``lesions.csv``, ``lesions.png`` and ``summary.json`` on the input's own grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfseg.commands import add_no_progress, add_out
from dfseg.errors import InputError
from dfseg.evaluation.lesions import MAX_LESION_ELONGATION, check_max_elongation
from dfseg.predict import predict
from dfseg.resources import shipped_model

HELP = "run a trained model on scans: probability map, lesion masks, lesion list (CSV), montage, summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="scan folder (attn.*, df.*, sidecar.json, optional lung_mask.*), folder of scan folders, "
                             "or manifest.json")
    parser.add_argument("--model", type=Path, metavar="RUN_DIR",
                        help="training run folder with model.pt and run_info.json (e.g. <dfseg demo out>/train); "
                             "default: the model dfseg ships (bundles/dfseg_attention_unet/models)")
    add_out(parser, "output folder (one sub-folder per scan)", type=Path, required=True)
    parser.add_argument("--attn", type=Path, help="one scan from files: the attenuation image")
    parser.add_argument("--df", type=Path, help="one scan from files: the dark-field image (orientations or 5 "
                                                "decomposed channels, channels last)")
    parser.add_argument("--sidecar", type=Path, help="one scan from files: its sidecar.json (acquisition)")
    parser.add_argument("--lung-mask", type=Path, help="one scan from files: its lung mask")
    parser.add_argument("--scan-id", help="one scan from files: its id (default: the sidecar's scan_id)")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold (default 0.5)")
    parser.add_argument("--max-elongation", type=float, default=MAX_LESION_ELONGATION, metavar="E",
                        help="a component smaller than a 1 mm sphere more than E times as long as it is wide is a "
                             f"vessel segment, not a lesion (default {MAX_LESION_ELONGATION:g}; 0 lists every shape)")
    parser.add_argument("--calibration", type=Path,
                        help="calibration (or calibration set) for raw scans: the model's own when the recorded "
                             "path is not on this machine, or your scanner's, made from your phantoms with dfseg "
                             "calibrate --e-ref-kev at the model's reference energy (refused at any other)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run the network (default: CUDA if present)")
    parser.add_argument("--sw-batch-size", type=int, default=2, help="sliding-window ROIs per forward pass")
    parser.add_argument("--no-mirror", action="store_true",
                        help="one pass per window instead of test-time mirroring along the axes the model was "
                             "trained flipping (as nnU-Net; 8 passes for a model trained flipping X, Y and Z)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    single = None
    if args.attn is not None or args.df is not None or args.sidecar is not None:
        single = {"attn": args.attn or args.df or args.sidecar, "df": args.df, "sidecar": args.sidecar,
                  "lung_mask": args.lung_mask, "scan_id": args.scan_id}
        if args.attn is None:
            raise InputError(single["attn"], "no attenuation image given with it (--attn)")
    summaries = predict(args.inputs, args.out, args.model or shipped_model(), single=single, threshold=args.threshold,
                        calibration=args.calibration, device=args.device, sw_batch_size=args.sw_batch_size,
                        mirror=not args.no_mirror, overwrite=args.overwrite,
                        max_elongation=check_max_elongation(args.max_elongation), progress=False if args.no_progress else None)
    for s in summaries:
        print(f"{s['scan_id']}: presence {s['presence_score']:.3f}, {s['n_lesions']} lesion(s)")
    print(f"wrote {len(summaries)} scan(s) into {args.out}")
    return 0
