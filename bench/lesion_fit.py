"""Benchmark: does a trained model fit its own training lesions, by size, and where are its false positives?

Usage: ``python bench/lesion_fit.py RUN OUT [--model DIR] [--splits train test]``. ``RUN`` is a
finished ``dfseg demo`` run (its ``preprocessed/`` cohort); the model is ``RUN/train`` unless
``--model`` names another training folder on the same cohort (``bench/demo_recipe.py``'s
``OUT/train``). Splits: ``train`` the mice the model trained on (the training folds but its
validation fold), ``val`` that fold, ``test`` the held-out mice. For each split the bundle's
inference writes probabilities to ``OUT/<split>/predictions`` and ``dfseg evaluate`` scores them
(``OUT/<split>/evaluation``, 10 bootstrap resamples: the CIs are not the point here). Prints JSON
per split:

- per size bin: lesions, how many reach ``prob >= 0.5`` anywhere inside them (on the ``train``
  split: a lesion the network does not reach there it has not fitted, whatever the test set), and
  the median of each lesion's maximum probability;
- false-positive components per scan (``dfseg evaluate``'s count, from its ``records.json``) and
  where they lie, from the probability maps (``evaluate`` records no positions): the share whose
  voxels are mostly in the lung's outermost voxel layer (the pleural rim: median Euclidean depth in
  the lung mask <= 1.5 voxels), and the share centred in the lower half of the slices.

``--synthetic-mm 0.6 0.8 1.0`` also inserts, into each mouse of the last split, one synthetic lesion
of each diameter (``RandSyntheticTumourd``, the training augmentation's lesion: the scan's noise,
texture and blur; centred one radius and one voxel inside the lung, seeded), one at a time, runs the
model on the scan (``dfseg predict``'s chain) and reports the same per diameter: whether the network
can see a lesion of that size at all, set against the simulator's own tumours of that size.

About 2 minutes for the demo's 25 training and 8 test mice on 2 CPU cores; ``make bench`` leaves
it out (it needs a trained run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from dfseg.cli import main as dfseg_main
from dfseg.data.manifest import load_manifest, split_fold
from dfseg.data.scan import LoadScand
from dfseg.evaluation.lesions import SIZE_BINS, connected_components, lesion_mask
from dfseg.io import load_nifti, prepare_output_dir, read_json, write_json
from dfseg.predict import _probabilities as probabilities
from dfseg.predict import load_model
from dfseg.resources import bundle_dir, run_bundle
from dfseg.transforms.intensity import TissueReferencesd
from dfseg.transforms.tumour import LesionRoomd, RandSyntheticTumourd

RIM_DEPTH_VOX = 1.5
SPLITS = ("train", "val", "test")


def _split_manifest(manifest: Path, split: str, fold: int, out: Path) -> Path:
    """A manifest whose ``test`` list is the run's ``split``: ``train`` the mice it trained on, ``val`` its
    validation fold (:func:`dfseg.data.manifest.split_fold`), ``test`` the held-out mice; paths absolute."""
    doc = load_manifest(manifest)
    entries = doc["test"] if split == "test" else split_fold(doc, fold)[int(split == "val")]
    path = out / f"manifest_{split}.json"
    write_json(path, {**doc, "training": [], "validation": [], "test": [{**e, "fold": -1} for e in entries]})
    return path


def _network_overrides(run_info: dict) -> dict:
    """The bundle overrides that rebuild the run's network (``run_info.json``'s ``network``), as Python literals
    (the bundle runner parses ``False`` as a bool, ``false`` as a string)."""
    net = run_info["network"]
    if net.get("name") != "attention_unet":
        raise SystemExit(f"only attention U-Net runs are supported here, this run trained {net.get('name')!r}")
    return {f"network_args#{k}": repr(v) for k, v in net.items() if k not in ("name", "parameter_count")}


def _false_positive_places(predictions: Path, manifest: Path, threshold: float) -> dict:
    """Where the false-positive components lie: share on the pleural rim, share per half of the slices."""
    n_fp = rim = low = 0
    for entry in read_json(manifest)["test"]:
        prob_file = predictions / f"{entry['scan_id']}_prob.nii.gz"
        if not prob_file.is_file():
            continue
        prob = np.squeeze(load_nifti(prob_file)[0])
        lung = np.squeeze(load_nifti(entry["lung_mask"])[0]) > 0
        label = np.squeeze(load_nifti(entry["label"])[0]) > 0
        voxel = entry["meta"]["voxel_mm"]
        depth = ndimage.distance_transform_edt(lung)
        found = lesion_mask((prob >= threshold) & lung, voxel)
        components, n = connected_components(found)
        for i in range(1, n + 1):
            part = components == i
            if (part & label).any():
                continue
            n_fp += 1
            rim += float(np.median(depth[part])) <= RIM_DEPTH_VOX
            low += float(np.median(np.nonzero(part)[2])) < prob.shape[2] / 2
    return {"components": n_fp, "rim_share": round(rim / n_fp, 3) if n_fp else None,
            "lower_half_share": round(low / n_fp, 3) if n_fp else None}


def _synthetic_response(manifest: Path, model_dir: Path, diameters: list[float], seed: int = 0) -> dict:
    """Each synthetic lesion's maximum probability, per diameter (module docstring)."""
    model = load_model(model_dir, device="cpu")
    keys = ("attn", "df", "label", "lung_mask")
    load = LoadScand(keys)
    refs, room = TissueReferencesd(), LesionRoomd()
    peaks: dict[str, list[float]] = {f"{d:g}": [] for d in diameters}
    for i, entry in enumerate(read_json(manifest)["test"]):
        scan = room(refs(load(dict(entry))))
        before = np.asarray(scan["label"][0]) > 0
        lung = np.asarray(scan["lung_mask"][0]) > 0
        for k, diameter in enumerate(diameters):
            insert = RandSyntheticTumourd(prob=1.0, diameter_range_mm=(diameter, diameter))
            insert.set_random_state(seed + 1000 * i + k)
            out = insert(scan)
            lesion = (np.asarray(out["label"][0]) > 0) & ~before
            prob = probabilities({"attn": out["attn"], "df": out["df"]}, lung, model, sw_batch_size=2)
            peaks[f"{diameter:g}"].append(float(prob[lesion].max()))
    return peaks


def _bins(peaks: dict[str, list[float]], threshold: float) -> dict:
    return {name: {"lesions": len(p), "reached": sum(v >= threshold for v in p),
                   "median_max_prob": float(f"{np.median(p):.3g}") if p else None} for name, p in peaks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `dfseg demo` run folder")
    parser.add_argument("out", type=Path, help="new folder for predictions and evaluations")
    parser.add_argument("--model", type=Path, help="training folder with model.pt and run_info.json (default RUN/train)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=SPLITS,
                        help="train: the mice the model trained on; val: its validation fold; test: held out")
    parser.add_argument("--synthetic-mm", nargs="*", type=float, default=[], metavar="D",
                        help="also insert synthetic lesions of these diameters (mm) into the last split's mice")
    args = parser.parse_args()
    manifest = (args.run / "preprocessed" / "manifest.json").resolve()
    model = (args.model or args.run / "train").resolve()
    for need in (manifest, model / "model.pt", model / "run_info.json"):
        if not need.is_file():
            parser.error(f"{need}: not found")
    run_info = read_json(model / "run_info.json")
    out = prepare_output_dir(args.out, overwrite=False)
    result: dict = {"run": str(args.run), "model": str(model)}
    for split in args.splits:
        predictions, evaluation = out / split / "predictions", out / split / "evaluation"
        subset = _split_manifest(manifest, split, run_info["fold"], out)
        run_bundle(bundle_dir("dfseg_attention_unet"), "inference", manifest=subset, modality=run_info["modality"],
                   split="test", device="cpu", output_dir=model, predictions_dir=predictions, num_workers=0,
                   **_network_overrides(run_info))
        code = dfseg_main(["evaluate", "--predictions", str(predictions), "--manifest", str(subset),
                           "-o", str(evaluation), "--split", "test", "--seed", "0", "--bootstrap", "10",
                           "--no-progress"])
        if code:
            raise SystemExit(code)
        records = read_json(evaluation / "records.json")
        threshold = float(records["threshold"])
        lesions = [les for rec in records["records"] for les in rec["lesions"]]
        bins = _bins({name: [les["max_prob"] for les in lesions if les["size_bin"] == name]
                      for name, _, _ in SIZE_BINS}, threshold)
        places = _false_positive_places(predictions, subset, threshold)
        n_scans = len(records["records"])
        n_fp = sum(not c["tp"] for rec in records["records"] for c in rec["components"])
        result[split] = {"scans": n_scans, "size_bins": bins,
                         "fp_per_scan": round(n_fp / n_scans, 3) if n_scans else None,
                         "fp_rim_share": places["rim_share"], "fp_lower_half_share": places["lower_half_share"]}
        if args.synthetic_mm and split == args.splits[-1]:
            result[split]["synthetic_mm"] = _bins(_synthetic_response(subset, model, args.synthetic_mm), threshold)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
