"""Where dfseg finds the files it ships beside the package: the MONAI bundles and the shipped model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from dfseg.errors import DfsegError
from dfseg.io import atomic_write, read_json, sha256_file, write_json

BUNDLES = ("dfseg_attention_unet", "dfseg_swinunetr")
#: The MONAI Model Zoo metadata schema, relative to the bundles folder (shipped, so checks run offline).
METADATA_SCHEMA = "schema/meta_schema_20240725.json"
#: Config files of each bundle workflow, merged left to right: inference and evaluation are overlays
#: on ``train.yaml``, which declares the network and the settings once.
WORKFLOWS: dict[str, tuple[str, ...]] = {
    "train": ("train.yaml",),
    "inference": ("train.yaml", "inference.yaml"),
    "evaluate": ("train.yaml", "inference.yaml", "evaluate.yaml"),
    "multi_gpu_train": ("train.yaml", "multi_gpu_train.yaml"),
}


def bundles_root() -> Path:
    """The bundles folder: ``$DFSEG_BUNDLES``, else the bundles installed with the package (a wheel),
    else the repository checkout dfseg runs from (an editable install), else ``/opt/dfseg/bundles``
    (the Docker image)."""
    candidates = []
    if os.environ.get("DFSEG_BUNDLES"):
        candidates.append(Path(os.environ["DFSEG_BUNDLES"]))
    # a wheel holds the repository's bundles/ as dfseg/bundles (pyproject.toml's package-dir)
    candidates += [Path(str(resources.files("dfseg") / "bundles")),
                   Path(__file__).resolve().parents[1] / "bundles", Path("/opt/dfseg/bundles")]
    for path in candidates:
        if (path / BUNDLES[0] / "configs").is_dir():
            return path
    raise DfsegError("bundles/", "MONAI bundles not found; set DFSEG_BUNDLES to the repository's bundles/ folder")


def metadata_schema() -> Path:
    """The bundle metadata schema the bundles are verified against offline
    (``verify_metadata(meta_file=..., filepath=metadata_schema())``: an existing file is not downloaded)."""
    path = bundles_root() / METADATA_SCHEMA
    if not path.is_file():
        raise DfsegError(path, "bundle metadata schema missing; reinstall dfseg or restore bundles/schema/")
    return path


def bundle_dir(name: str) -> Path:
    """Root of one bundle, e.g. ``bundle_dir("dfseg_attention_unet")``; a path is returned as is."""
    path = Path(name)
    if (path / "configs").is_dir():
        return path.resolve()
    root = bundles_root() / name
    if not (root / "configs").is_dir():
        raise DfsegError(name, f"no such bundle; known: {', '.join(BUNDLES)}")
    return root


def run_bundle(bundle: str | os.PathLike, workflow: str, **overrides: object) -> None:
    """Run a bundle workflow in a subprocess, exactly as a user would with ``python -m monai.bundle run``.

    Args:
        bundle: bundle name (``dfseg_attention_unet``) or folder.
        workflow: a key of :data:`WORKFLOWS` (``train``, ``inference``, ``evaluate``, ...).
        overrides: ``--key value`` overrides; ``None`` values are left out.
    """
    root = bundle_dir(str(bundle))
    files = [str(root / "configs" / name) for name in WORKFLOWS[workflow]]
    cmd = [sys.executable, "-m", "monai.bundle", "run",
           "--config_file", files[0] if len(files) == 1 else repr(files),
           "--bundle_root", str(root), "--meta_file", str(root / "configs" / "metadata.json"),
           "--logging_file", str(root / "configs" / "logging.conf")]
    for key, value in overrides.items():
        if value is not None:
            cmd += [f"--{key}", str(value)]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise DfsegError(f"{root.name}/configs/{WORKFLOWS[workflow][-1]}",
                         f"bundle run failed with exit code {result.returncode} (messages above)")


#: The bundle whose ``models/`` folder holds the model dfseg ships (``dfseg predict``'s default).
SHIPPED_BUNDLE = "dfseg_attention_unet"
#: Files of a packaged model folder (a training run folder reduced to what ``dfseg predict`` reads).
MODEL_FILES = ("model.pt", "run_info.json", "calibration.json")
#: The ``dfseg demo`` settings a shipped model was made with, in its folder (:func:`ship_model`).
SHIPPED_COHORT = "demo_config.json"


def shipped_model() -> Path:
    """The model folder dfseg ships: ``bundles/dfseg_attention_unet/models`` (``make model`` writes it)."""
    path = bundle_dir(SHIPPED_BUNDLE) / "models"
    if not (path / "model.pt").is_file():
        raise DfsegError(path, "no shipped model here; give --model RUN_DIR (a training run folder) or run make model")
    return path


def package_model(run_dir: str | os.PathLike, calibration: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Reduce a training run to a model folder that works on any machine: ``model.pt`` (the
    network's state_dict, as the MONAI Model Zoo ships weights),
    ``run_info.json`` whose calibration is named relative to the folder, and ``calibration.json``.

    Args:
        run_dir: the training run folder (``model.pt``, ``run_info.json`` with a ``predict`` entry).
        calibration: the calibration the run's scans were corrected with (its sha256 must match the record).
        dest: the model folder to write (files in it are replaced).
    """
    run_dir, dest = Path(run_dir), Path(dest)
    record = read_json(run_dir / "run_info.json")
    recorded = ((record.get("predict") or {}).get("correction") or {}).get("calibration") or {}
    if recorded.get("sha256") and sha256_file(calibration) != recorded["sha256"]:
        raise DfsegError(calibration, "is not the calibration the run recorded (sha256 differs)")
    recorded["path"] = "calibration.json"
    import torch

    from dfseg.training.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "model.pt")
    if isinstance(state.get("model"), dict):  # BestModelSaver's {"model": state_dict}
        state = state["model"]
    # the Model Zoo's layout: models/model.pt is the network's state_dict itself, so ckpt_export and
    # CheckpointLoader take it with their default arguments
    with atomic_write(dest / "model.pt") as fh:
        torch.save(state, fh)
    with open(calibration, "rb") as src, atomic_write(dest / "calibration.json") as fh:
        shutil.copyfileobj(src, fh)
    write_json(dest / "run_info.json", record)
    return dest


#: metadata ``eval_metrics`` key -> the row of the model card (test split) it copies
EVAL_METRIC_ROWS = {
    "test_presence_auroc": "per-volume lesion presence: AUROC",
    "test_presence_sensitivity_at_95_specificity": "per-volume lesion presence: sensitivity at 95% specificity",
    "test_presence_average_precision": "per-volume lesion presence: average precision",
    "test_patch_presence_auroc": "per-patch lesion presence: AUROC",
    "test_lesion_sensitivity": "lesion-wise detection: lesion sensitivity",
    "test_lesion_sensitivity_0.5_1mm": "lesion-wise detection: sensitivity, 0.5-1 mm",
    "test_lesion_sensitivity_1_2mm": "lesion-wise detection: sensitivity, 1-2 mm",
    "test_lesion_sensitivity_2_3mm": "lesion-wise detection: sensitivity, 2-3 mm",
    "test_false_positive_components_per_scan": "lesion-wise detection: false-positive components per scan",
    "test_froc_cpm": "lesion-wise detection: FROC CPM",
    "test_mean_dice_scans_with_tumour": "segmentation: Dice (mean over scans with tumour)",
    "test_per_lesion_dice": "segmentation: per-lesion Dice",
    "test_brier_score": "calibration: Brier score, lung voxels",
    "test_expected_calibration_error": "calibration: expected calibration error, lung voxels",
}

LARGE_FILES = """# The weights live in the repository (no download); path and hash as the MONAI model zoo lists them.
large_files:
  - path: "models/model.pt"
    url: ""
    hash_val: "{sha256}"
    hash_type: "sha256"
"""


def card_metrics(card: str) -> dict[str, float]:
    """The ``eval_metrics`` of a model card's text: the estimate of each row of :data:`EVAL_METRIC_ROWS`."""
    rows = dict(re.findall(r"^\| (.+?) \| ([0-9.]+) \| \[", card, re.M))
    missing = [row for row in EVAL_METRIC_ROWS.values() if row not in rows]
    if missing:
        raise DfsegError("model_card.md", f"has no row {missing[0]!r}")
    return {key: float(rows[row]) for key, row in EVAL_METRIC_ROWS.items()}


def ship_model(run: str | os.PathLike, bundle: str | os.PathLike) -> Path:
    """Make a ``dfseg demo`` run the model a bundle ships: :func:`package_model` into ``bundle/models``,
    the run's model card and ``demo_config.json`` (the cohort and training it was made with: seed,
    mice, variants, randomised share) beside it, ``models/large_files.yml`` with the weights' sha256,
    and ``configs/metadata.json``'s ``eval_metrics`` copied from the card (``make model``)."""
    run, bundle = Path(run), Path(bundle)
    card = (run / "model_card" / "model_card.md").read_text()
    metrics = card_metrics(card)
    config = read_json(run / "demo_config.json")
    dest = package_model(run / "train", run / "calibration.json", bundle / "models")
    with atomic_write(dest / "model_card.md", "w") as fh:
        fh.write(card)
    write_json(dest / SHIPPED_COHORT, config)
    with atomic_write(dest / "large_files.yml", "w") as fh:
        fh.write(LARGE_FILES.format(sha256=sha256_file(dest / "model.pt")))
    meta_path = bundle / "configs" / "metadata.json"
    text = meta_path.read_text()
    meta = json.loads(text)
    meta["eval_metrics"] = metrics
    indent = len(text.splitlines()[1]) - len(text.splitlines()[1].lstrip(" "))  # keep the file's own indent
    with atomic_write(meta_path, "w") as fh:
        fh.write(json.dumps(meta, indent=indent, ensure_ascii=False) + "\n")
    return dest
