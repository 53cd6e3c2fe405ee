"""Benchmark: leave-one-variant-out generalisation of the training recipe (issue #17, item 5).

Usage: ``python bench/generalisation.py OUT [--fixed N] [--randomised N] [--max-epochs E]``.

Two cohorts at the ``demo`` protocol (true-size mouse, 0.15 mm voxels, a 4.8 mm slab), each dealt
over the simulator's three phantom variants (``standard``, ``fine``, ``coarse``: alveolar size,
tube spectrum and tumour shape model; :mod:`dfseg.simulate.variants`):

- ``fixed``: every subject scanned at its variant's own scanner (``--fixed`` subjects per variant);
- ``randomised``: ``dfseg simulate --randomise``, each subject's scanner and animal drawn from the
  documented ranges (docs/domain_randomisation.md) with the voxel held at 0.15 mm to keep the
  benchmark CPU-sized (``--randomised`` subjects per variant).

Each cohort is calibrated from its own phantoms (a calibration set: one calibration per spectrum)
and preprocessed. Half of every (variant, cohort) group, stratified by tumour presence, is held out
as test mice; the training recipe is the demo's (attention U-Net, combined input, fold 0 for
validation) on the mix of fixed and randomised training mice. Five models are trained: ``all``
(every variant: the in-distribution reference) and ``without-<V>`` for each variant V (no mouse of
V, fixed or randomised), plus ``fixed-only`` (every variant, fixed-scanner mice only: what the
randomised mice add). Each is scored by ``dfseg evaluate`` on the test mice of every held-out
variant: ``all`` on each variant's, ``without-V`` on V's, ``fixed-only`` on each variant's
fixed-scanner mice. The model dfseg ships is scored, as it is, on every variant's test mice except
those that may be of the cohort it was made from (:func:`shipped_cohort_mouse`: same seed, index
below the cohort's size; with seed 0, the fixed cohort's mice). The JSON printed (and written to
``OUT/generalisation.json``) gives, per variant and test group (fixed, randomised, both): volume
AUROC in and out of distribution and the drop, lesion sensitivity for lesions >= 1 mm and per size
bin, false-positive components per scan and Dice, with 95 % subject-bootstrap CIs where
``dfseg evaluate`` gives them. Stages already finished in OUT are reused (``--resume``).

About 40 minutes on 2 CPU cores with the defaults; ``make bench`` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from dfseg.cli import main as dfseg_main
from dfseg.commands.demo import DEFAULT
from dfseg.data.manifest import build_manifest, load_manifest, write_manifest
from dfseg.io import read_json, write_json
from dfseg.resources import MODEL_FILES, SHIPPED_COHORT, bundle_dir, run_bundle, shipped_model
from dfseg.simulate.protocols import get_protocol

VARIANTS = ("standard", "fine", "coarse")
#: Training epochs per model: a fixed count, so that models compare whatever else runs on the machine
#: (the demo itself trains to a time budget); docs/generalisation.md's tables are at 60.
EPOCHS = 60
GROUPS = ("fixed", "randomised")


def _dfseg(*args: Any) -> None:
    code = dfseg_main([str(a) for a in args])
    if code:
        raise SystemExit(f"dfseg {args[0]} failed (exit {code})")


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def make_cohorts(out: Path, fixed: int, randomised: int, seed: int, workers: int, protocol: str) -> dict[str, Path]:
    """Simulate, calibrate and preprocess both cohorts; return their preprocessed manifests."""
    manifests = {}
    for group, n in (("fixed", fixed), ("randomised", randomised)):
        pre = out / group / "preprocessed" / "manifest.json"
        manifests[group] = pre
        if pre.is_file():
            continue
        cohort = out / group / "cohort"
        extra: list[Any] = []
        if group == "randomised":
            ranges = out / "randomise_ranges.yaml"
            voxel = get_protocol(protocol).voxel_mm
            ranges.write_text(f"voxel_mm: [{voxel}, {voxel}]  # the protocol's voxel: CPU-sized grids\n")
            extra = ["--randomise-ranges", ranges]
        _log(f"simulate {group}: {n * len(VARIANTS)} mice")
        _dfseg("simulate", "-o", cohort, "--protocol", protocol, "--subjects", n * len(VARIANTS), "--variant", *VARIANTS,
               "--seed", seed + (group == "randomised"), "--workers", workers, "--test-by", "none", "--no-progress",
               "--overwrite", *extra)
        # one reference energy for both cohorts: dark-field at the fixed cohort's (the variants' median)
        energy = [] if group == "fixed" else [
            "--e-ref-kev", next(iter(read_json(out / "fixed" / "calibration.json")["calibrations"].values()))
            ["reference"]["e_ref_kev"]]
        _dfseg("calibrate", cohort / "phantoms", "-o", out / group / "calibration.json", "--overwrite", *energy)
        _log(f"preprocess {group}")
        _dfseg("preprocess", cohort / "manifest.json", "-o", out / group / "preprocessed", "--calibration",
               out / group / "calibration.json", "--workers", workers, "--no-progress", "--overwrite")
    return manifests


def cohort_entries(manifest: Path, group: str, prefix: str, out: Path) -> list[dict]:
    """One preprocessed cohort's scans, ids prefixed by ``prefix-``, tagged with ``group``.

    Cohorts number their mice from ``sub-0000``: each scan gets a copy of its sidecar under
    ``OUT/pooled/`` with the prefixed ids (the images stay where they are).
    """
    doc = load_manifest(manifest)
    entries = []
    for e in [e for split in ("training", "validation", "test") for e in doc.get(split) or []]:
        keep = {k: e[k] for k in ("attn", "df", "label", "lung_mask", "sidecar", "has_tumour", "variant") if k in e}
        ids = {"subject_id": f"{prefix}-{e['subject_id']}", "scan_id": f"{prefix}-{e['scan_id']}"}
        sidecar = out / "pooled" / ids["scan_id"] / "sidecar.json"
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        write_json(sidecar, {**read_json(e["sidecar"]), **ids})
        keep.update(ids, sidecar=str(sidecar), group=group)
        entries.append(keep)
    return entries


def mark_test(entries: list[dict]) -> list[dict]:
    """Flag half of every (group, variant, tumour yes/no) stratum ``test``, alternating in subject order."""
    strata: dict[tuple, list[dict]] = {}
    for e in sorted(entries, key=lambda e: e["subject_id"]):
        strata.setdefault((e["group"], e["variant"], e["has_tumour"]), []).append(e)
    for members in strata.values():
        for i, e in enumerate(members):
            e["test"] = i % 2 == 1
    return entries


def pooled_entries(manifests: dict[str, Path], out: Path) -> list[dict]:
    """Every scan of both cohorts (:func:`cohort_entries`, prefixed ``fix``/``ran``), half of each stratum test."""
    return mark_test([e for group, path in manifests.items() for e in cohort_entries(path, group, group[:3], out)])


def write_split_manifest(path: Path, train: list[dict], test: list[dict], seed: int) -> Path:
    """A training manifest of ``train`` (5 folds) whose test split is ``test``."""
    strip = ("group", "test")
    doc = build_manifest([{k: v for k, v in e.items() if k not in strip} for e in train + test], path.parent,
                         num_folds=5, seed=seed, test_by="none", name=path.stem,
                         description="bench/generalisation.py split")
    held = {e["subject_id"] for e in test}
    doc["test"] = [dict(e, fold=-1) for e in doc["training"] if e["subject_id"] in held]
    doc["training"] = [e for e in doc["training"] if e["subject_id"] not in held]
    doc["test_split"] = {"by": "subject", "fraction": len(held) / (len(held) + len({e["subject_id"] for e in train}))}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(path, doc)
    return path


def _estimate(metrics: dict, key: str) -> dict | None:
    value = metrics.get(key)
    if not isinstance(value, dict) or value.get("estimate") is None:
        return None
    return {k: round(value[k], 4) for k in ("estimate", "ci_low", "ci_high") if value.get(k) is not None}


def summarise(doc: dict) -> dict:
    """The numbers the table reports, from a ``metrics.json``."""
    m = doc["metrics"]
    bins = doc["size_bins"]
    big = [b for name, b in bins.items() if not name.startswith("0.")]
    n_big = sum(b["n_lesions"] for b in big)
    return {
        "n_scans": doc["n_scans"], "n_lesions": doc["n_lesions"],
        "volume_auroc": _estimate(m, "volume_auroc"),
        "lesion_sensitivity_ge_1mm": round(sum(b["n_detected"] for b in big) / n_big, 4) if n_big else None,
        "lesions_ge_1mm": f"{sum(b['n_detected'] for b in big)}/{n_big}",
        "size_bins": {k: f"{v['n_detected']}/{v['n_lesions']}" for k, v in bins.items()},
        "fp_per_scan": _estimate(m, "lesion_fp_per_scan"), "dice": _estimate(m, "dice"),
    }


def demo_recipe(max_epochs: int, seed: int) -> dict[str, Any]:
    """The demo's training recipe (attention U-Net, combined input, fold 0 validating) for ``run_bundle``."""
    return dict(fold=0, modality="combined", max_epochs=max_epochs, val_interval=min(DEFAULT.val_interval, max_epochs),
                patience=10_000, patch_size=DEFAULT.patch_size, batch_size=DEFAULT.batch_size,
                num_samples=DEFAULT.num_samples, channels=list(DEFAULT.channels), learning_rate=DEFAULT.learning_rate,
                device="cpu", seed=seed, num_workers=0, progress=False)


def train_and_predict(bundle: Path, name: str, folder: Path, manifest: Path, n_train: int, n_test: int,
                      recipe: dict[str, Any], times: dict[str, float]) -> None:
    """Train ``folder/train`` on ``manifest`` and predict its test split into ``folder/predictions``,
    each step skipped when an earlier call finished it; the training time goes to ``times``."""
    if not (folder / "train" / "model.pt").is_file() and not (folder / "done").is_file():
        _log(f"train {name}: {n_train} mice (fold 0 validates), {recipe['max_epochs']} epochs")
        t = time.perf_counter()
        run_bundle(bundle, "train", manifest=manifest, output_dir=folder / "train", **recipe)
        times[f"train_{name}"] = time.perf_counter() - t
        (folder / "done").write_text("trained\n")
    if not (folder / "predictions_done").is_file():
        _log(f"predict {name}: {n_test} test mice")
        run_bundle(bundle, "inference", manifest=manifest, modality="combined", split="test",
                   channels=list(DEFAULT.channels), device="cpu", output_dir=folder / "train",
                   predictions_dir=folder / "predictions", num_workers=0)
        (folder / "predictions_done").write_text("predicted\n")


def shipped_cohort_mouse(entry: dict, seed: int, protocol: str, made_with: dict) -> bool:
    """Whether ``entry`` may be a mouse of the cohort the shipped model was made from. ``made_with``
    is its ``dfseg demo`` settings (:data:`dfseg.resources.SHIPPED_COHORT`): a subject is drawn from
    ``(seed, index)``, so a mouse of a cohort with the model's seed and protocol, numbered below its
    cohort's size, may share anatomy and tumours with one the model saw (the fixed cohort has the
    bench's seed, the randomised one seed + 1)."""
    index = int(entry["subject_id"].rsplit("-", 1)[1])
    cohort_seed = seed + (entry["group"] == "randomised")
    return (cohort_seed == made_with["seed"] and protocol == made_with["protocol"]
            and index < made_with["subjects"])


def score_model(folder: Path, model_train: list[dict], model_test: list[dict], variants: tuple[str, ...],
                subsets: tuple[str, ...], seed: int) -> dict[str, Any]:
    """``dfseg evaluate`` of ``folder/predictions`` on each variant's test mice, all of them (``both``)
    and each scanner group, skipping evaluations already written; ``{"variant/subset": summary}``."""
    rows: dict[str, Any] = {}
    for variant in variants:
        for subset in subsets:
            chosen = [e for e in model_test if e["variant"] == variant and subset in ("both", e["group"])]
            if not chosen:
                continue
            evaluation = folder / "evaluation" / variant / subset
            if not (evaluation / "metrics.json").is_file():
                sub_manifest = write_split_manifest(folder / "eval" / variant / subset / "manifest.json",
                                                    model_train, chosen, seed)
                _dfseg("evaluate", "--predictions", folder / "predictions", "--manifest", sub_manifest,
                       "-o", evaluation, "--split", "test", "--seed", seed, "--no-progress", "--overwrite")
            rows[f"{variant}/{subset}"] = summarise(read_json(evaluation / "metrics.json"))
    return rows


def place_shipped_model(folder: Path) -> None:
    """Copy the model dfseg ships (:func:`dfseg.resources.shipped_model`) to ``folder/train``, where
    :func:`train_and_predict` finds it trained and only predicts."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(shipped_model() / name, folder / "train" / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for cohorts, models, predictions and evaluations")
    parser.add_argument("--fixed", type=int, default=16, help="fixed-scanner mice per variant (default 16)")
    parser.add_argument("--randomised", type=int, default=8, help="domain-randomised mice per variant (default 8)")
    parser.add_argument("--max-epochs", type=int, default=EPOCHS,
                        help=f"training epochs per model (default {EPOCHS}; a fixed count, not the demo's time budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default="demo", help="simulation protocol (default demo; quick for a smoke test)")
    parser.add_argument("--workers", type=int, default=2, help="simulation and preprocessing workers")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    entries = pooled_entries(make_cohorts(out, args.fixed, args.randomised, args.seed, args.workers, args.protocol), out)
    times["cohorts"] = time.perf_counter() - t
    train = [e for e in entries if not e["test"]]
    test = [e for e in entries if e["test"]]
    bundle = bundle_dir("dfseg_attention_unet")
    recipe = demo_recipe(args.max_epochs, args.seed)
    # name -> (variant left out, scanner groups trained on)
    models = {"all": (None, GROUPS), **{f"without-{v}": (v, GROUPS) for v in VARIANTS}, "fixed-only": (None, ("fixed",))}
    results: dict[str, Any] = {}
    for name, (left_out, groups) in models.items():
        folder = out / "models" / name
        model_train = [e for e in train if e["variant"] != left_out and e["group"] in groups]
        model_test = [e for e in test if (left_out is None or e["variant"] == left_out) and e["group"] in groups]
        manifest = write_split_manifest(folder / "manifest.json", model_train, model_test, args.seed)
        train_and_predict(bundle, name, folder, manifest, len(model_train), len(model_test), recipe, times)
        column = {"all": "all", "fixed-only": "fixed_only"}.get(name, "held_out")
        variants = VARIANTS if left_out is None else (left_out,)
        subsets = ("both", *GROUPS) if len(groups) > 1 else groups
        for key, row in score_model(folder, model_train, model_test, variants, subsets, args.seed).items():
            results.setdefault(key, {})[column] = row
    # the model dfseg ships, unchanged, on every variant's test mice but those that may be of its own cohort
    folder = out / "models" / "shipped"
    made_with = read_json(shipped_model() / SHIPPED_COHORT)
    shipped_test = [e for e in test if not shipped_cohort_mouse(e, args.seed, args.protocol, made_with)]
    manifest = write_split_manifest(folder / "manifest.json", train, shipped_test, args.seed)
    place_shipped_model(folder)
    train_and_predict(bundle, "shipped", folder, manifest, 0, len(shipped_test), recipe, times)
    for key, row in score_model(folder, train, shipped_test, VARIANTS, ("both", *GROUPS), args.seed).items():
        results.setdefault(key, {})["shipped"] = row
    for row in results.values():
        a, h = (row.get("all") or {}).get("volume_auroc"), (row.get("held_out") or {}).get("volume_auroc")
        row["auroc_drop"] = round(a["estimate"] - h["estimate"], 4) if a and h else None
    report = {"settings": vars(args) | {"out": str(out)}, "n_train": len(train), "n_test": len(test),
              "seconds": {k: round(v, 1) for k, v in times.items()}, "results": results}
    write_json(out / "generalisation.json", report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
