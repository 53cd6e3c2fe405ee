"""dfseg and nnU-Net v2 side by side: same cohort, same splits, same machine, same wall-clock budget.

1. Exports a preprocessed dfseg cohort to nnU-Net's dataset format: the five channels of dfseg's
   combined input (attn, c0, amp, amp_cos2t, amp_sin2t) as ``<case>_0000..0004.nii.gz``, labels,
   ``dataset.json``; the training subjects go to ``imagesTr`` and the manifest's test subjects to
   ``imagesTs``. After nnU-Net's planning, fold 0 of ``splits_final.json`` is dfseg's fold 0.
2. Installs nnU-Net v2 in its own virtual environment (``--setup``; torch pinned as dfseg's), runs
   ``nnUNetv2_plan_and_preprocess`` (3d_fullres, nnU-Net's default planner).
3. For each budget: trains dfseg's attention U-Net bundle (the demo's recipe, ``--time-budget``)
   and nnU-Net (its own plans, network, augmentation and poly schedule, epochs fitted to the same
   budget by ``_nnunet_budget.py``), predicts the test subjects with each, and scores both with
   ``dfseg evaluate``, which scores every method's probabilities inside the lung mask (0 outside),
   as ``dfseg predict`` reports them.
4. Prints one JSON document (also ``WORK/peer_nnunet.json``) and writes ``WORK/peer_nnunet.md``.

Wall time and peak memory (resident set of the whole process tree, sampled every 0.5 s) are
measured per stage. Run on an otherwise idle machine:

    python bench/peer_nnunet.py --manifest runs/demo/preprocessed/manifest.json --work runs/peer --setup \\
        --budgets 10 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil

from dfseg.channels import DF_CHANNELS, MODALITY_CHANNELS
from dfseg.commands.demo import DEFAULT as DEMO
from dfseg.data.datasets import datalist_for_fold
from dfseg.data.manifest import load_manifest
from dfseg.resources import bundle_dir, run_bundle

DATASET_ID = 501
DATASET = f"Dataset{DATASET_ID}_DfsegCombined"
CHANNELS = MODALITY_CHANNELS["combined"]
NNUNET_VERSION = "2.8.1"
#: dfseg's side: the demo's recipe (``dfseg demo``'s DemoConfig), epochs set by the budget, no early stop
DFSEG_RECIPE = {"patch_size": DEMO.patch_size, "batch_size": DEMO.batch_size, "num_samples": DEMO.num_samples,
                "channels": json.dumps(list(DEMO.channels), separators=(",", ":")), "learning_rate": DEMO.learning_rate,
                "val_interval": DEMO.val_interval, "patience": 10_000, "num_workers": 0}
HERE = Path(__file__).resolve().parent
DFSEG = str(Path(sys.executable).parent / "dfseg")


def measured(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> dict[str, float]:
    """Run ``cmd``; wall seconds and the peak resident memory (MB) of its whole process tree."""
    t0 = time.perf_counter()
    out = open(log, "w") if log else None  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=out or None, stderr=subprocess.STDOUT if out else None)
    peak = [0.0]

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                peak[0] = max(peak[0], rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = proc.wait()
    thread.join()
    if out:
        out.close()
    if code != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"{' '.join(cmd[:4])} ...: failed with exit code {code}\n{tail}")
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak[0]}


def export_dataset(manifest: Path, raw: Path) -> dict[str, list[str]]:
    """The cohort as nnU-Net's ``DatasetXXX`` folder; returns the fold-0 split and the test cases."""
    doc = load_manifest(manifest)
    base = manifest.parent
    folder = raw / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    split = {"train": [e["scan_id"] for e in datalist_for_fold(manifest, 0, "train")],
             "val": [e["scan_id"] for e in datalist_for_fold(manifest, 0, "val")],
             "test": [e["scan_id"] for e in doc["test"]]}
    for group, entries in (("Tr", doc["training"]), ("Ts", doc["test"])):
        for e in entries:
            case = e["scan_id"]
            attn = nib.load(base / e["attn"])
            df = np.asarray(nib.load(base / e["df"]).dataobj, dtype=np.float32)
            images = {"attn": np.asarray(attn.dataobj, dtype=np.float32)}
            images.update({name: df[..., DF_CHANNELS.index(name)] for name in CHANNELS if name != "attn"})
            for c, name in enumerate(CHANNELS):
                target = folder / f"images{group}" / f"{case}_{c:04d}.nii.gz"
                if not target.exists():
                    nib.save(nib.Nifti1Image(images[name], attn.affine), target)
            label = folder / f"labels{group}" / f"{case}.nii.gz"
            if not label.exists():
                lab = nib.load(base / e["label"])
                nib.save(nib.Nifti1Image(np.asarray(lab.dataobj, dtype=np.uint8), lab.affine), label)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): name for c, name in enumerate(CHANNELS)},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": len(doc["training"]), "file_ending": ".nii.gz",
        "name": DATASET, "description": f"dfseg cohort {manifest} (combined input channels)"}, indent=2))
    return split


def setup_nnunet(venv: Path) -> Path:
    """nnU-Net v2 in its own virtual environment (torch pinned to dfseg's CPU build)."""
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, f"nnunetv2=={NNUNET_VERSION}"], check=True)
    return py


def metrics_row(eval_dir: Path) -> dict[str, object]:
    doc = json.loads((eval_dir / "metrics.json").read_text())
    m = doc["metrics"]

    def est(key: str) -> float | None:
        return m[key]["estimate"]

    def ci(key: str) -> list[float | None]:
        return [m[key]["ci_low"], m[key]["ci_high"]]

    froc = doc["froc"]
    i = froc["fp_rates"].index(1.0)
    at_1fp = froc["sensitivities"][i] if froc["reached"][i] else None
    return {"volume_auroc": est("volume_auroc"), "sensitivity_at_1fp": at_1fp, "volume_auroc_ci": ci("volume_auroc"),
            "lesion_sensitivity": est("lesion_sensitivity"), "lesion_sensitivity_ci": ci("lesion_sensitivity"),
            "fp_per_scan": est("lesion_fp_per_scan"), "froc_cpm": est("froc_cpm"), "dice": est("dice"),
            "dice_ci": ci("dice"),
            "size_bins": doc["size_bins"], "n_scans": doc["n_scans"], "n_lesions": doc["n_lesions"]}


def evaluate(predictions: Path, manifest: Path, out: Path) -> dict[str, object]:
    measured([DFSEG, "evaluate", "--predictions", str(predictions), "--manifest",
              str(manifest), "-o", str(out), "--split", "test", "--seed", "0", "--no-progress", "--overwrite"])
    return metrics_row(out)


def run_dfseg(manifest: Path, work: Path, budget: float, mirroring: bool = True) -> dict[str, object]:
    run = work / f"dfseg_{budget:g}min"
    train = [DFSEG, "train", "--manifest", str(manifest), "--out", str(run / "train"),
             "--modality", "combined", "--seed", "0", "--max-epochs", "10000", "--time-budget", str(budget),
             "--overwrite", "--no-progress", "--device", "cpu"]
    for key, value in DFSEG_RECIPE.items():
        train += ["--override", f"{key}={value}"]
    t = measured(train, log=work / f"dfseg_{budget:g}min.train.log")
    t0 = time.perf_counter()
    run_bundle(bundle_dir("dfseg_attention_unet"), "inference", manifest=manifest, modality="combined", split="test",
               channels=DFSEG_RECIPE["channels"], device="cpu", output_dir=run / "train",
               predictions_dir=run / "predictions", num_workers=0, **({} if mirroring else {"mirror_axes": []}))
    infer_s = time.perf_counter() - t0
    info = json.loads((run / "train" / "run_info.json").read_text())
    row = {"method": "dfseg attention U-Net", "budget_min": budget, "train_s": t["seconds"],
           "train_peak_mb": t["peak_mb"], "infer_s": infer_s, "epochs": info.get("completed_epochs"),
           "mirroring": mirroring}
    row.update(evaluate(run / "predictions", manifest, run / "evaluation"))
    return row


def run_nnunet(py: Path, env: dict[str, str], manifest: Path, work: Path, budget: float, iterations: int,
               mirroring: bool, plans: str) -> dict[str, object]:
    run = work / f"nnunet_{budget:g}min"
    cmd = [str(py), str(HERE / "_nnunet_budget.py"), "--dataset", str(DATASET_ID), "--budget-min", str(budget),
           "--plans", plans,
           "--iterations", str(iterations), "--out", str(run / "predictions"),
           "--test-images", str(work / "nnUNet_raw" / DATASET / "imagesTs")]
    if not mirroring:
        cmd.append("--no-mirroring")
    t = measured(cmd, env=env, log=work / f"nnunet_{budget:g}min.log")
    timing = json.loads((run / "predictions" / "timing.json").read_text())
    base = {"budget_min": budget, "train_s": timing["train_s"], "train_peak_mb": t["peak_mb"],
            "infer_s": timing["infer_s"], "epochs": timing["completed_epochs"],
            "nnunet": {"plans": plans, **{k: timing[k] for k in ("iterations_per_epoch", "patch_size", "batch_size",
                                                                  "mirroring")}}}
    return {"method": f"nnU-Net v2 3d_fullres ({plans})", **base,
            **evaluate(run / "predictions", manifest, run / "evaluation")}


def markdown(rows: list[dict[str, object]], prep: dict[str, float]) -> str:
    def f(x: object, nd: int = 3) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    def b(row: dict, key: str) -> str:
        d = row["size_bins"].get(key, {"n_detected": 0, "n_lesions": 0})
        return f"{d['n_detected']}/{d['n_lesions']}"

    lines = ["| method | budget (min) | epochs | train (s) | peak memory (GB) | infer (s) | volume AUROC | "
             "lesion sensitivity | 0.5-1 mm | 1-2 mm | 2-3 mm | FP/scan | sensitivity at 1 FP/scan | FROC CPM | Dice |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['budget_min']:g} | {r['epochs']} | {r['train_s']:.0f} | "
                     f"{r['train_peak_mb'] / 1024:.1f} | {r['infer_s']:.0f} | {f(r['volume_auroc'])} | "
                     f"{f(r['lesion_sensitivity'])} | {b(r, '0.5-1')} | {b(r, '1-2')} | {b(r, '2-3')} | "
                     f"{f(r['fp_per_scan'])} | {f(r.get('sensitivity_at_1fp'))} | {f(r.get('froc_cpm'))} | "
                     f"{f(r['dice'])} |")
    lines.append(f"\nnnU-Net planning and preprocessing: {prep['seconds']:.0f} s, peak {prep['peak_mb'] / 1024:.1f} GB "
                 "(not counted in its training budget).")
    return "\n".join(lines) + "\n"


def rescore(work: Path) -> None:
    """Re-read every run's ``evaluation/metrics.json`` into the table (timings are kept)."""
    doc = json.loads((work / "peer_nnunet.json").read_text())
    for row in doc["rows"]:
        side = "dfseg" if row["method"].startswith("dfseg") else "nnunet"
        row.update(metrics_row(work / f"{side}_{row['budget_min']:g}min" / "evaluation"))
    (work / "peer_nnunet.json").write_text(json.dumps(doc, indent=2))
    (work / "peer_nnunet.md").write_text(markdown(doc["rows"], doc["nnunet_preprocessing"]))
    print(json.dumps(doc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, required=True, help="preprocessed dfseg cohort manifest.json")
    ap.add_argument("--work", type=Path, required=True, help="working folder (nnU-Net folders, runs, table)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[10.0, 30.0], help="training minutes (default 10 30)")
    ap.add_argument("--nnunet-venv", type=Path, help="nnU-Net's environment (default WORK/nnunet-venv)")
    ap.add_argument("--setup", action="store_true", help="create the nnU-Net environment if it is missing")
    ap.add_argument("--iterations", type=int, default=25, help="nnU-Net iterations per epoch (default 25)")
    ap.add_argument("--plans-memory-gb", type=float,
                    help="plan nnU-Net for this GPU-memory target (nnU-Net's -gpu_memory_target; smaller patches "
                         "for a CPU budget); default: nnU-Net's own plans")
    ap.add_argument("--no-mirroring", action="store_true",
                    help="both without test-time mirroring (dfseg: the bundle's mirror_axes=[]; nnU-Net: --no-mirroring)")
    ap.add_argument("--only", choices=["dfseg", "nnunet"], help="run one side only")
    ap.add_argument("--rescore", action="store_true",
                    help="rewrite WORK/peer_nnunet.{json,md} from the runs' evaluation folders (no training)")
    args = ap.parse_args()
    if args.rescore:
        rescore(args.work.resolve())
        return

    manifest, work = args.manifest.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    venv = (args.nnunet_venv or work / "nnunet-venv").resolve()
    py = setup_nnunet(venv) if args.setup else venv / "bin" / "python"
    env = {**os.environ, "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
           "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_compile": "f"}
    rows: list[dict[str, object]] = []
    prep = {"seconds": 0.0, "peak_mb": 0.0}
    if args.only != "dfseg":
        if not py.exists():
            raise SystemExit(f"{py}: nnU-Net's environment is missing; add --setup or give --nnunet-venv")
        split = export_dataset(manifest, work / "nnUNet_raw")
        plans_name = "nnUNetPlans" if args.plans_memory_gb is None else f"nnUNetPlans{args.plans_memory_gb:g}GB"
        plans = work / "nnUNet_preprocessed" / DATASET / f"{plans_name}.json"
        if not plans.exists():
            extra = [] if args.plans_memory_gb is None else ["-gpu_memory_target", f"{args.plans_memory_gb:g}",
                                                             "-overwrite_plans_name", plans_name]
            prep = measured([str(venv / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c",
                             "3d_fullres", "-np", "2", "--verify_dataset_integrity", *extra], env=env,
                            log=work / "nnunet_plan.log")
        (plans.parent / "splits_final.json").write_text(json.dumps([{"train": split["train"], "val": split["val"]}]))
    for budget in args.budgets:
        if args.only != "nnunet":
            rows.append(run_dfseg(manifest, work, budget, not args.no_mirroring))
            print(json.dumps(rows[-1]), flush=True)
        if args.only != "dfseg":
            rows.append(run_nnunet(py, env, manifest, work, budget, args.iterations, not args.no_mirroring,
                                   plans_name))
            print(json.dumps(rows[-1]), flush=True)
    doc = {"manifest": str(manifest), "nnunet_version": NNUNET_VERSION, "cpu_count": os.cpu_count(),
           "nnunet_preprocessing": prep, "rows": rows}
    (work / "peer_nnunet.json").write_text(json.dumps(doc, indent=2))
    (work / "peer_nnunet.md").write_text(markdown(rows, prep))
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
