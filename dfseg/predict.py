"""The prediction stage: a trained model on a lab's own scans, a lesion list per scan.

:func:`predict` takes a training run folder (``model.pt`` + ``run_info.json``, as the bundles write
to their ``output_dir`` and ``dfseg demo`` to ``<out>/train``) and scans given as scan folders
(``attn.*``, ``df.*``, ``sidecar.json``, optional ``lung_mask.*``; ``label.*`` is ignored), folders
of scan folders, manifests (every split) or one pair of image files. For each scan:

1. **Read** with :class:`dfseg.data.scan.LoadScand` (each image on its own affine); attn, df and the
   lung mask must share one grid.
2. **Correct** as the model's training scans were, read from the run record's ``predict`` entry
   (:func:`dfseg.training.handlers.prediction_record`): a scan written by ``dfseg preprocess`` is
   used as it is; a raw reconstruction goes through the recorded calibration's chains
   (:func:`dfseg.preprocess.build_chains`), or those of a lab's own calibration (``calibration=``):
   the projection chain when the model's scans were
   preprocessed in the projection domain and the scan has ``proj_T``/``proj_D``, else the volume chain.
   Any calibration other than the model's own, given or named by a preprocessed scan, must state
   dark-field at the model's reference energy (``dfseg calibrate --e-ref-kev``): the same units.
3. **Lung mask**: the scan's own, else :class:`dfseg.transforms.lung.LungMaskd` on the corrected
   image (docs/lung_mask.md); a scan in which neither finds a lung is refused.
4. **Resample** attn and df to the training voxel size (``monai.transforms.Spacing``, which keeps
   origin and direction), build the network input with training's evaluation chain
   (:func:`dfseg.training.eval_transforms`: modality channels scaled as the model records,
   ``run_info.json["normalisation"]``), run
   the bundles' inference inferer, :class:`dfseg.training.MirroredInferer`, with the training ROI
   (MONAI's sliding window, Gaussian blending, overlap 0.25; each window also predicted mirrored
   along the axes the model was trained flipping, the record's ``predict.mirror_axes``, and the
   logits averaged, nnU-Net's test-time mirroring, unless ``mirror=False``; CUDA when present, AMP only on CUDA), sigmoid, and resample the
   probabilities back onto the input grid (``ResampleToMatch``).
5. **Lesions**: ``prob >= threshold`` inside the lung, 26-connected components of at least
   half a 0.5 mm sphere, less those smaller than a 1 mm sphere that are more than three times as long
   as they are wide (vessel segments; :func:`dfseg.evaluation.lesions.lesion_mask`, the evaluation's
   rule), numbered by decreasing maximum probability. The presence score is the maximum probability
   inside the lung outside the components that are not lesions (the evaluation's score).

Outputs, per scan, in ``OUT/<scan_id>/`` on the input's own grid and affine::

    prob.nii.gz        float32 tumour probability (the whole image; not gated by the lung mask)
    mask.nii.gz        uint8 the lesions: prob >= threshold inside the lung, lesion_mask's components
    lesions.nii.gz     uint16 lesion ids (0 = background), ids as in lesions.csv
    lesions.seg.nrrd   the same labels as a 3D Slicer segmentation (one segment per lesion, up to
                       SEG_NRRD_SEGMENTS; ITK-SNAP opens it too)
    lesions.csv        id, centroid (RAS world mm and voxel indices), volume_mm3, equivalent_diameter_mm,
                       max_prob, mean_prob
    lesions.png        attenuation and dark-field c0 through each lesion (at most MONTAGE_LESIONS)
    summary.json       scan id, presence score, lesion count, threshold, model, correction, files

and ``OUT/scans.csv`` (one row per scan). Everything is written through
:func:`dfseg.io.atomic_directory`: a failure on any scan leaves no output.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch, Spacing
from scipy import ndimage
from tqdm import tqdm

from dfseg.calibration.io import reference_energy_kev
from dfseg.channels import DF_CHANNELS
from dfseg.data.importer import resolve_image
from dfseg.data.manifest import SPLITS, load_manifest
from dfseg.data.scan import LoadScand, scan_meta
from dfseg.errors import InputError
from dfseg.evaluation.lesions import (
    MAX_LESION_ELONGATION,
    connected_components,
    equivalent_diameter_mm,
    lesion_mask,
    lesion_probabilities,
    lesion_rule,
)
from dfseg.evaluation.plots import PREDICTION_COLOUR
from dfseg.io import (
    atomic_directory,
    atomic_path,
    atomic_write,
    read_json,
    save_nifti,
    sha256_file,
    voxel_size,
    write_json,
)
from dfseg.preprocess import CalibrationChains, build_chains
from dfseg.training import (
    LEGACY_MIRROR_AXES,
    MirroredInferer,
    build_network,
    eval_transforms,
    load_checkpoint,
    recorded_mirror_axes,
)
from dfseg.training.handlers import prediction_record
from dfseg.transforms.intensity import check_normalisation
from dfseg.transforms.lung import LungMaskd

__all__ = ["CSV_COLUMNS", "MONTAGE_LESIONS", "Model", "find_scans", "lesion_table", "load_model", "predict",
           "predict_scan", "scan_from_files"]

#: Columns of ``lesions.csv``.
CSV_COLUMNS: tuple[str, ...] = ("id", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "centroid_i", "centroid_j",
                                "centroid_k", "n_voxels", "volume_mm3", "equivalent_diameter_mm", "max_prob",
                                "mean_prob")
#: Lesions drawn in ``lesions.png`` (the most probable ones).
MONTAGE_LESIONS = 12
#: Most lesions described as named segments in ``lesions.seg.nrrd`` (more: the labelmap alone).
SEG_NRRD_SEGMENTS = 256
#: Largest difference (mm) between two affines that still counts as one grid.
GRID_TOL_MM = 1e-4
#: Files that hold the pixel data of a header file (``attn.mhd`` + ``attn.raw``): never an image key's file.
_RUN_FILES = "a training run folder (model.pt and run_info.json, as a bundle's output_dir or <demo out>/train)"


@dataclass
class Model:
    """A trained network and how to feed it (:func:`load_model`)."""

    run_dir: Path
    record: dict
    network: torch.nn.Module
    modality: str
    normalisation: str
    roi_size: list[int]
    voxel_mm: list[float] | None
    correction: dict
    device: torch.device
    model_sha256: str
    calibration: Path | None = None
    reference_energy_kev: float | None = None
    mirror_axes: tuple[int, ...] = LEGACY_MIRROR_AXES
    _chains: CalibrationChains | None = field(default=None, repr=False)

    def chains(self, where: str | os.PathLike) -> CalibrationChains:
        """The recorded calibration's correction chains (loaded once); ``where`` names the raw scan asking."""
        if self._chains is None:
            if self.calibration is None:
                raise InputError(where, "raw reconstruction (its sidecar lacks preprocessed: true) but the model's run "
                                        "records no calibration to correct it with; give --calibration or preprocess "
                                        "the scan with dfseg preprocess")
            self._chains = build_chains(self.calibration,
                                        aluminium_weight=float(self.correction.get("aluminium_weight") or 0.0),
                                        bone_correction=bool(self.correction.get("bone_correction")))
        return self._chains


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but torch sees no CUDA device")
    return torch.device(name)


#: Two calibrations state dark-field in the same units when their reference energies agree to this (keV).
E_REF_TOL_KEV = 0.01


def _same_units(path: str | os.PathLike, model_kev: float, what: str) -> None:
    """Refuse a calibration whose dark-field is stated at another energy than the model's."""
    kev = reference_energy_kev(path)
    if abs(kev - model_kev) > E_REF_TOL_KEV:
        raise InputError(path, f"{what} states dark-field at {kev:.2f} keV, the model's at {model_kev:.2f} keV; "
                               f"make it with dfseg calibrate PHANTOMS -o OUT --e-ref-kev {model_kev:.4f}")


def _calibration(correction: Mapping[str, Any], given: str | os.PathLike | None,
                 info_path: Path) -> tuple[Path | None, float | None]:
    """The calibration to correct raw scans with and the energy the model's dark-field is stated at.

    The model's own calibration is the recorded one (its sha256 checked). ``given`` (``--calibration``)
    replaces it: the same file moved elsewhere, or a lab's own calibration (its phantoms, its spectra)
    that states dark-field at the model's reference energy, so the network sees the units it was
    trained on.
    """
    recorded = correction.get("calibration") or None
    own = None
    if recorded:
        path = Path(recorded["path"])
        if not path.is_absolute():  # a packaged model names its calibration relative to its folder
            path = info_path.parent / path
        if path.is_file():
            if not recorded.get("sha256") or sha256_file(path) == recorded["sha256"]:
                own = path
            elif given is None:
                raise InputError(path, f"changed since training (sha256 recorded in {info_path} differs); "
                                       "give the original with --calibration")
    model_kev = reference_energy_kev(own) if own is not None else None
    if given is None:
        return own, model_kev
    given = Path(given)
    if not given.is_file():
        raise InputError(given, "calibration file not found")
    if not recorded or (recorded.get("sha256") and sha256_file(given) == recorded["sha256"]):
        return given, reference_energy_kev(given)
    if model_kev is None:
        raise InputError(given, f"is not the calibration the model was trained with, and that one ({recorded['path']}) "
                                "is not here to compare reference energies with; give the model's own calibration")
    _same_units(given, model_kev, "this calibration")
    return given, model_kev


def load_model(run_dir: str | os.PathLike, *, calibration: str | os.PathLike | None = None,
               device: str | None = None) -> Model:
    """Read a training run: its record, the network it declares and ``model.pt`` (weights only).

    Args:
        run_dir: the run folder.
        calibration: the calibration file for raw scans, when the recorded path is not on this machine
            (it must be the same file: its sha256 is checked against the record).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    Raises:
        InputError: a missing or unreadable file, a radiograph model, weights that do not fit the
            recorded network.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, f"not a folder; --model takes {_RUN_FILES}")
    info_path, model_path = run_dir / "run_info.json", run_dir / "model.pt"
    for path in (info_path, model_path):
        if not path.is_file():
            raise InputError(path, f"missing; --model takes {_RUN_FILES}")
    record = read_json(info_path)
    if not isinstance(record, Mapping) or not isinstance(record.get("network"), Mapping) or not record.get("modality"):
        raise InputError(info_path, "not a dfseg run record (no network or modality)")
    if record.get("geometry") == "radiograph":
        raise InputError(info_path, "a radiograph (2D) model; dfseg predict runs CT models only")
    plan = record.get("predict")
    if plan is None:  # a run recorded before run_info carried "predict": derive it from its manifest now
        manifest = (record.get("manifest") or {}).get("path")
        if not manifest or not Path(manifest).is_file():
            raise InputError(info_path, f"records no 'predict' entry and its training manifest {manifest} is gone; "
                                        "retrain with this version of dfseg")
        plan = prediction_record(manifest, calibration=(record.get("calibration") or {}).get("path"),
                                 preprocessed=record.get("preprocessed"),
                                 roi_size=(record.get("hyper_parameters") or {}).get("patch_size"))
    roi = plan.get("roi_size") or (record.get("hyper_parameters") or {}).get("patch_size")
    if not roi:
        raise InputError(info_path, "records no ROI size (predict.roi_size or hyper_parameters.patch_size)")
    roi = [int(v) for v in np.broadcast_to(np.ravel(roi), (3,))]
    try:  # the axes training flipped; records from before training flipped Z name none
        mirror_axes = recorded_mirror_axes(plan, 3)
    except ValueError as err:
        raise InputError(info_path, f"predict.mirror_axes: {err}") from None
    modality = str(record["modality"])
    try:  # records written before the physical scaling trained on a per-volume z-score
        normalisation = check_normalisation(str(record.get("normalisation", "zscore")))
    except InputError as err:
        raise InputError(info_path, err.problem) from None
    args = {k: v for k, v in record["network"].items() if k != "parameter_count"}
    try:
        network = build_network(args, modality, roi)
    except (TypeError, ValueError) as err:
        raise InputError(info_path, f"cannot build the recorded network ({err})") from None
    state = load_checkpoint(model_path)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # BestModelSaver writes {"model": state_dict}
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(model_path, f"weights do not fit the network recorded in run_info.json ({first[:160]})") from None
    dev = _device(device)
    network.to(dev).eval()
    correction = dict(plan.get("correction") or {})
    cal_path, model_kev = _calibration(correction, calibration, info_path)
    return Model(run_dir=run_dir.resolve(), record=dict(record), network=network, modality=modality,
                 normalisation=normalisation, roi_size=roi,
                 voxel_mm=None if plan.get("voxel_mm") is None else [float(v) for v in plan["voxel_mm"]],
                 correction=correction, device=dev, model_sha256=sha256_file(model_path),
                 calibration=cal_path, reference_energy_kev=model_kev, mirror_axes=mirror_axes)


# -- finding scans --------------------------------------------------------------------------------

def _sidecar_id(sidecar: Path, fallback: str) -> str:
    meta = read_json(sidecar)
    if not isinstance(meta, Mapping):
        raise InputError(sidecar, f"sidecar must be a JSON object, found {type(meta).__name__}")
    return str(meta.get("scan_id") or fallback)


def scan_from_files(attn: str | os.PathLike, df: str | os.PathLike | None, sidecar: str | os.PathLike | None,
                    lung_mask: str | os.PathLike | None = None, scan_id: str | None = None) -> dict:
    """One scan from its files (the ``--attn/--df/--sidecar`` form); the scan id defaults to the sidecar's."""
    if df is None:
        raise InputError(attn, "no dark-field image given with it (--df)")
    if sidecar is None:
        raise InputError(attn, "no sidecar given with it (--sidecar: kVp, filtration, visibility, orientations, "
                               "voxel size; preprocessed: true for scans written by dfseg preprocess)")
    for path in (attn, df, sidecar, lung_mask):
        if path is not None and not Path(path).exists():
            raise InputError(path, "file not found")
    entry = {"attn": str(attn), "df": str(df), "sidecar": str(sidecar)}
    if lung_mask is not None:
        entry["lung_mask"] = str(lung_mask)
    entry["scan_id"] = scan_id or _sidecar_id(Path(sidecar), Path(attn).name.split(".")[0])
    return entry


def _scan_folder(folder: Path) -> dict:
    attn, df = resolve_image(folder, "attn", "attn"), resolve_image(folder, "df", "df")
    if df is None:
        raise InputError(folder, "no df.* image (the dark-field reconstruction) in the scan folder")
    sidecar = folder / "sidecar.json"
    if not sidecar.is_file():
        raise InputError(folder, "no sidecar.json in the scan folder (kVp, filtration, visibility, orientations, "
                                 "voxel size)")
    entry = {"attn": str(attn), "df": str(df), "sidecar": str(sidecar), "scan_id": _sidecar_id(sidecar, folder.name)}
    for key in ("lung_mask", "proj_T", "proj_D"):
        path = resolve_image(folder, key, key)
        if path is not None:
            entry[key] = str(path)
    return entry


def find_scans(inputs: Sequence[str | os.PathLike]) -> list[dict]:
    """Scan entries (paths, ``scan_id``, ``sidecar``) of every input, in order.

    An input is a scan folder (it holds ``attn.*``), a folder of scan folders, or a manifest
    (``*.json``: every split's entries). Labels are never read.

    Raises:
        InputError: an input that is none of these, a scan folder without ``df.*`` or
            ``sidecar.json``, two scans with one id.
    """
    entries: list[dict] = []
    for item in map(Path, inputs):
        if item.is_file() and item.suffix.lower() == ".json":
            doc = load_manifest(item)
            entries += [{k: v for k, v in e.items() if k != "label"} for split in SPLITS for e in doc.get(split) or []]
        elif item.is_dir() and resolve_image(item, "attn", "attn") is not None:
            entries.append(_scan_folder(item))
        elif item.is_dir():
            subs = [d for d in sorted(item.iterdir()) if d.is_dir() and not d.name.startswith(".")
                    and resolve_image(d, "attn", "attn") is not None]
            if not subs:
                raise InputError(item, "neither a scan folder (attn.*, df.*, sidecar.json) nor a folder of scan folders")
            entries += [_scan_folder(d) for d in subs]
        elif not item.exists():
            raise InputError(item, "not found")
        else:
            raise InputError(item, "not a scan folder, a folder of scans or a manifest.json")
    seen: dict[str, str] = {}
    for entry in entries:
        sid = str(entry["scan_id"])
        if sid in seen:
            raise InputError(entry.get("attn"), f"scan id {sid!r} also used by {seen[sid]}; scan ids must be unique")
        seen[sid] = str(entry.get("attn"))
    if not entries:
        raise InputError("INPUT", "no scans given")
    return entries


# -- one scan -------------------------------------------------------------------------------------

def _same_grid(ref: MetaTensor, img: MetaTensor, ref_path: Any, path: Any) -> None:
    if tuple(ref.shape[1:]) != tuple(img.shape[1:]):
        raise InputError(path, f"grid {tuple(img.shape[1:])} differs from {ref_path}'s {tuple(ref.shape[1:])}")
    a, b = np.asarray(ref.affine, float), np.asarray(img.affine, float)
    if not np.allclose(a, b, rtol=0, atol=GRID_TOL_MM):
        sa, sb = voxel_size(a), voxel_size(b)
        what = (f"voxel size {np.round(sb, 6).tolist()} mm differs from {ref_path}'s {np.round(sa, 6).tolist()}"
                if not np.allclose(sa, sb, rtol=0, atol=GRID_TOL_MM) else f"affine (origin/direction) differs from {ref_path}'s")
        raise InputError(path, what)


def _input_calibration(meta: Mapping[str, Any], sidecar: Any) -> Path | None:
    """The calibration a preprocessed input was corrected with, when its file is here."""
    cal = (meta.get("preprocessing") or {}).get("calibration")
    if not cal:
        return None
    for candidate in (Path(cal), Path(str(sidecar)).parent / cal):
        if candidate.is_file():
            return candidate
    return None


def _correct(entry: Mapping[str, Any], model: Model) -> tuple[dict, str]:
    """Read the scan and bring it to the model's input domain; returns ``(data, what was done)``.

    ``data`` holds ``attn`` (1, X, Y, Z) and ``df`` (5, X, Y, Z) corrected MetaTensors on the attn
    file's affine, ``meta``, and ``lung_mask`` when the scan has one.
    """
    keys = ("attn", "df") + (("lung_mask",) if entry.get("lung_mask") else ())
    meta = scan_meta(entry)
    preprocessed = bool(meta.get("preprocessed"))
    data = LoadScand(keys, check_orientations=not preprocessed)(entry)
    for key in keys[1:]:
        _same_grid(data["attn"], data[key], entry["attn"], entry[key])
    if preprocessed:
        if data["df"].shape[0] != len(DF_CHANNELS):
            raise InputError(entry["df"], f"sidecar says preprocessed, so df must hold the {len(DF_CHANNELS)} decomposed "
                                          f"channels {DF_CHANNELS}; found {data['df'].shape[0]}")
        recorded = (model.correction.get("calibration") or {}).get("sha256")
        used = _input_calibration(meta, entry["sidecar"])
        if recorded and used is not None and sha256_file(used) != recorded:
            # another calibration (a lab's own phantoms) is fine when it states dark-field in the model's units
            if model.reference_energy_kev is None:
                raise InputError(entry["sidecar"], "preprocessed with another calibration than the model's training "
                                                   f"scans ({(model.correction.get('calibration') or {}).get('path')}), "
                                                   "which is not here to compare reference energies with")
            try:
                _same_units(used, model.reference_energy_kev, "the calibration it was preprocessed with")
            except InputError as err:
                raise InputError(entry["sidecar"], f"{err.where}: {err.problem}") from None
        return data, "none: the scan was written by dfseg preprocess"
    book = model.chains(entry["sidecar"])
    use_projections = model.correction.get("domain") == "projection" and all(entry.get(k) for k in ("proj_T", "proj_D"))
    work = {"meta": data["meta"]}
    work["meta"].setdefault("voxel_mm", float(voxel_size(np.asarray(data["attn"].affine))[0]))
    if use_projections:
        work.update(LoadScand(("proj_T", "proj_D"), check_orientations=True)(entry))
        work["meta"] = data["meta"]
        keys_in = ("proj_T", "proj_D")
    else:
        keys_in = ("attn", "df")
        work.update({k: data[k] for k in keys_in})
    for key in keys_in:
        work[key] = np.asarray(work[key])  # the chains' numpy path, as dfseg preprocess runs them
    try:  # the scan's spectrum's calibration (refused when there is none)
        chains = book.for_scan(work["meta"])
    except InputError as err:
        hint = (f"; then give it with --calibration (dfseg calibrate --e-ref-kev {model.reference_energy_kev:.4f}: "
                "the model's units)" if model.reference_energy_kev is not None else "")
        raise InputError(err.where, f"{err.problem} ({entry['sidecar']}){hint}") from None
    try:
        out = (chains.projection if use_projections else chains.volume)(work)
    except InputError as err:
        where = err.where or ""
        raise InputError(entry.get(where, entry.get("sidecar") if where.startswith("meta") else where), err.problem) from None
    affine = data["attn"].affine
    for key in ("attn", "df"):
        array = np.asarray(out[key], dtype=np.float32)
        if array.shape[1:] != tuple(data["attn"].shape[1:]):
            raise InputError(entry[keys_in[0]], f"the projection chain reconstructs {array.shape[1:]}, the attn image "
                                                f"is {tuple(data['attn'].shape[1:])}")
        if not np.isfinite(array).all():
            raise InputError(entry[key], "the correction chain produced NaN/Inf values")
        data[key] = MetaTensor(torch.from_numpy(array), affine=affine.clone())
    chain = "projection" if use_projections else "volume"
    return data, f"{chain} chain of dfseg preprocess with {chains.calibration_path}"


def _lung(data: dict, entry: Mapping[str, Any]) -> tuple[np.ndarray, str]:
    """The (X, Y, Z) boolean lung mask on the input grid and where it came from."""
    if data.get("lung_mask") is not None:
        lung = np.asarray(data["lung_mask"])[0] > 0
        source = f"given: {entry['lung_mask']}"
        where = entry["lung_mask"]
    else:
        spacing = tuple(float(v) for v in voxel_size(np.asarray(data["attn"].affine)))  # the file's grid, not the sidecar
        try:
            made = LungMaskd(attn_key="attn", df_key="df", df_channel=DF_CHANNELS.index("c0"), output_key="lung_mask",
                             voxel_mm=spacing)({"attn": data["attn"], "df": data["df"]})
        except InputError as err:  # name the scan's file, not the data-dict keys
            raise InputError(entry["attn"], f"no lung mask given and none found in the image ({err.problem})") from None
        lung = np.asarray(made["lung_mask"])[0] > 0
        source = "from the image: dfseg.transforms.lung.LungMaskd"
        where = entry["attn"]
    if not lung.any():
        raise InputError(where, "the lung mask is empty")
    return lung, source


def _resample_needed(native: Sequence[float], target: Sequence[float] | None) -> bool:
    return target is not None and not np.allclose(native, target, rtol=1e-3, atol=0)


def _probabilities(data: dict, lung: np.ndarray, model: Model, sw_batch_size: int, mirror: bool = True) -> np.ndarray:
    """Tumour probabilities (X, Y, Z) float32 on the input grid (module docstring, step 4)."""
    native = voxel_size(np.asarray(data["attn"].affine))
    resample = _resample_needed(native, model.voxel_mm)
    lung_t = MetaTensor(torch.from_numpy(lung[None].astype(np.float32)), affine=data["attn"].affine.clone())
    feed = {"attn": data["attn"], "df": data["df"], "lung_mask": lung_t}
    if resample:
        image_sp, mask_sp = Spacing(pixdim=model.voxel_mm, mode="bilinear"), Spacing(pixdim=model.voxel_mm, mode="nearest")
        feed = {"attn": image_sp(data["attn"]), "df": image_sp(data["df"]), "lung_mask": mask_sp(lung_t)}
    image = eval_transforms(model.modality, preprocessed=True, with_label=False, spatial_dims=3,
                            normalisation=model.normalisation)(feed)["image"]
    x = torch.as_tensor(image, dtype=torch.float32).as_subclass(torch.Tensor)[None].to(model.device)
    amp = model.device.type == "cuda"
    with torch.no_grad(), (torch.autocast("cuda") if amp else contextlib.nullcontext()):
        inferer = MirroredInferer(model.roi_size, sw_batch_size, overlap=0.25, mode="gaussian",
                                  mirror_axes=model.mirror_axes if mirror else ())
        logits = inferer(x, model.network)
    prob = torch.sigmoid(torch.as_tensor(logits).float()).cpu()[0]
    if resample:
        prob = ResampleToMatch(mode="bilinear")(MetaTensor(prob, affine=image.affine), img_dst=data["attn"][:1])
    out = np.asarray(torch.as_tensor(prob).as_subclass(torch.Tensor), dtype=np.float32)[0]
    return np.clip(out, 0.0, 1.0)


def lesion_table(prob: np.ndarray, lung: np.ndarray, affine: np.ndarray, threshold: float,
                 max_elongation: float | None = MAX_LESION_ELONGATION) -> tuple[np.ndarray, list[dict]]:
    """Lesions of one scan: ``prob >= threshold`` inside ``lung``, the 26-connected components that are
    lesions (:func:`~dfseg.evaluation.lesions.lesion_mask`: at least
    :data:`dfseg.evaluation.lesions.MIN_LESION_MM3`, and small ones no more elongated than ``max_elongation``).

    Returns:
        ``(labels, rows)``: uint16 (X, Y, Z) lesion ids 1..n, numbered by decreasing maximum
        probability (then size), and one row per lesion with the :data:`CSV_COLUMNS` (centroid in
        RAS world mm through ``affine``, and in voxel indices).
    """
    spacing = tuple(float(v) for v in np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0))
    mask = lesion_mask((prob >= threshold) & lung, spacing, max_elongation=max_elongation)
    labels, n = connected_components(mask)
    if n > np.iinfo(np.uint16).max:
        raise InputError("--threshold", f"{n} components above {threshold}; too many to label (raise the threshold)")
    if n == 0:
        return np.zeros(prob.shape, np.uint16), []
    index = np.arange(1, n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    max_p = np.asarray(ndimage.maximum(prob, labels, index), float)
    mean_p = np.asarray(ndimage.mean(prob, labels, index), float)
    centroids = np.asarray(ndimage.center_of_mass(mask, labels, index), float).reshape(n, 3)
    order = np.lexsort((-sizes, -max_p))  # by max probability, then size, both decreasing
    lookup = np.zeros(n + 1, np.uint16)
    lookup[order + 1] = np.arange(1, n + 1, dtype=np.uint16)
    affine = np.asarray(affine, float)
    spacing = voxel_size(affine)
    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))
    rows = []
    for new_id, old in enumerate(order, start=1):
        ijk = centroids[old]
        xyz = affine[:3, :3] @ ijk + affine[:3, 3]
        rows.append({"id": new_id, "centroid_x_mm": float(xyz[0]), "centroid_y_mm": float(xyz[1]),
                     "centroid_z_mm": float(xyz[2]), "centroid_i": float(ijk[0]), "centroid_j": float(ijk[1]),
                     "centroid_k": float(ijk[2]), "n_voxels": int(sizes[old]),
                     "volume_mm3": float(sizes[old] * voxel_volume),
                     "equivalent_diameter_mm": equivalent_diameter_mm(int(sizes[old]), tuple(spacing)),
                     "max_prob": float(max_p[old]), "mean_prob": float(mean_p[old])})
    return lookup[labels], rows


# -- writers --------------------------------------------------------------------------------------

def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in columns})
    with atomic_write(path, "w") as fh:
        fh.write(text.getvalue())


def _write_seg_nrrd(path: Path, labels: np.ndarray, affine: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> None:
    """The lesion labels as a 3D Slicer segmentation (``.seg.nrrd``: a labelmap plus ``Segment<i>_*``
    fields, one segment per lesion; above :data:`SEG_NRRD_SEGMENTS` lesions the labelmap alone, which
    Slicer and ITK-SNAP open as a label volume), on the scan's grid (RAS affine -> ITK's LPS)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(labels.astype(np.uint16), (2, 1, 0))))
    lps = np.asarray(affine, float).copy()
    lps[:2] *= -1
    spacing = voxel_size(lps)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    if len(rows) > SEG_NRRD_SEGMENTS:  # ITK writes thousands of header fields slowly; the labels alone then
        rows = []
    img.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    img.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    img.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    boxes = ndimage.find_objects(labels)  # one pass over the volume, box i-1 holds lesion i
    for i, row in enumerate(rows):
        box = boxes[row["id"] - 1]
        extent = " ".join(f"{int(b.start)} {int(b.stop) - 1}" for b in box)
        fields = {"ID": f"lesion_{row['id']}", "Name": f"lesion {row['id']}", "LabelValue": str(row["id"]),
                  "Layer": "0", "Color": "1 0.2 0.2", "Extent": extent,
                  "Tags": f"max_prob:{row['max_prob']:.3f}|"}
        for key, value in fields.items():
            img.SetMetaData(f"Segment{i}_{key}", value)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)


def _panel(volume: np.ndarray, k: int, window: np.ndarray, edge: np.ndarray | None) -> np.ndarray:
    """One axial slice as RGB in [0, 1] (rows = Y from top to bottom, so anterior/up is up), the lesion
    outline in the evaluation's colour-blind-safe prediction colour (Okabe-Ito orange)."""
    lo, hi = window
    grey = np.clip((volume[:, :, k] - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if edge is not None:
        rgb[edge] = to_rgb(PREDICTION_COLOUR)
    return np.transpose(rgb, (1, 0, 2))[::-1]


def _write_montage(path: Path, attn: np.ndarray, c0: np.ndarray, labels: np.ndarray,
                   rows: Sequence[Mapping[str, Any]], scan_id: str) -> None:
    """Attenuation and dark-field c0 side by side, the axial slice through each lesion's centroid
    (lesion outline in orange), one row per lesion (at most :data:`MONTAGE_LESIONS`); the middle slice
    and "no lesion" when there is none. The panels are tiled into one image (one ``imshow``: fast)."""
    shown = list(rows[:MONTAGE_LESIONS]) or [None]
    windows = [np.percentile(v, (1, 99)) for v in (attn, c0)]
    gap = 2
    x, y = attn.shape[:2]
    tile = np.ones((len(shown) * (y + gap), 2 * x + gap, 3))
    captions = []
    for r, row in enumerate(shown):
        k = int(round(row["centroid_k"])) if row else attn.shape[2] // 2
        mask = labels[:, :, k] == row["id"] if row else None
        edge = mask & ~ndimage.binary_erosion(mask) if row else None
        for c, volume in enumerate((attn, c0)):
            tile[r * (y + gap):r * (y + gap) + y, c * (x + gap):c * (x + gap) + x] = _panel(volume, k, windows[c], edge)
        captions.append(f"lesion {row['id']}: slice k={k}, {row['equivalent_diameter_mm']:.2f} mm, "
                        f"max p {row['max_prob']:.2f}" if row else f"{scan_id}: slice k={k}, no lesion above the threshold")
    width = 6.0
    height = width * tile.shape[0] / tile.shape[1] + 0.3
    fig = Figure(figsize=(width, height), dpi=max(72, int(np.ceil(2 * x / width))))
    FigureCanvasAgg(fig)
    top = 1 - 0.3 / height
    ax = fig.add_axes((0, 0, 1, top))
    ax.imshow(tile, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    fig.text(0.25, 1 - 0.15 / height, "attenuation", ha="center", va="center", fontsize=8)
    fig.text(0.75, 1 - 0.15 / height, "dark-field c0", ha="center", va="center", fontsize=8)
    for r, caption in enumerate(captions):
        fig.text(0.01, top * (1 - r / len(shown)) - 0.005, caption, ha="left", va="top", fontsize=6,
                 color="yellow")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def predict_scan(entry: Mapping[str, Any], model: Model, folder: Path, *, threshold: float = 0.5,
                 sw_batch_size: int = 2, mirror: bool = True,
                 max_elongation: float | None = MAX_LESION_ELONGATION) -> dict:
    """Run ``model`` on one scan and write its outputs into ``folder`` (module docstring); return its summary."""
    data, correction = _correct(entry, model)
    lung, lung_source = _lung(data, entry)
    prob = _probabilities(data, lung, model, sw_batch_size, mirror)
    affine = np.asarray(data["attn"].affine, float)
    labels, rows = lesion_table(prob, lung, affine, threshold, max_elongation)
    folder.mkdir(parents=True, exist_ok=True)
    save_nifti(folder / "prob.nii.gz", prob, affine, np.float32)
    save_nifti(folder / "mask.nii.gz", labels > 0, affine, np.uint8)
    save_nifti(folder / "lesions.nii.gz", labels, affine, np.uint16)
    _write_seg_nrrd(folder / "lesions.seg.nrrd", labels, affine, rows)
    _write_csv(folder / "lesions.csv", rows, CSV_COLUMNS)
    _write_montage(folder / "lesions.png", np.asarray(data["attn"])[0], np.asarray(data["df"])[DF_CHANNELS.index("c0")],
                   labels, rows, str(entry["scan_id"]))
    native = voxel_size(affine)
    files = ["prob.nii.gz", "mask.nii.gz", "lesions.nii.gz", "lesions.seg.nrrd", "lesions.csv", "lesions.png",
             "summary.json"]
    summary = {
        "scan_id": str(entry["scan_id"]),
        "presence_score": float(lesion_probabilities(prob, lung, threshold, voxel_size(affine), max_elongation).max()),
        "presence_score_definition": "maximum tumour probability inside the lung mask, outside the components above "
                                     "the threshold that are not lesions (the evaluation's score)",
        "lesion_rule": lesion_rule(max_elongation),
        "n_lesions": len(rows),
        "threshold": float(threshold),
        "lesions": rows,
        "model": {"run_dir": str(model.run_dir), "model_sha256": model.model_sha256,
                  "bundle": model.record.get("bundle"), "modality": model.modality,
                  "network": model.record["network"].get("name"), "roi_size": model.roi_size,
                  "mirror_axes": list(model.mirror_axes) if mirror else [], "voxel_mm": model.voxel_mm, "device": str(model.device)},
        "input": {k: str(entry[k]) for k in ("attn", "df", "sidecar", "lung_mask") if entry.get(k)}
        | {"shape": list(prob.shape), "voxel_mm": [float(v) for v in native], "affine": affine.tolist()},
        "correction": correction,
        "resampled_to_model_voxel": _resample_needed(native, model.voxel_mm),
        "lung_mask": lung_source,
        "files": files,
    }
    write_json(folder / "summary.json", summary)
    return summary


def predict(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, model_dir: str | os.PathLike, *,
            single: Mapping[str, Any] | None = None, threshold: float = 0.5,
            calibration: str | os.PathLike | None = None, device: str | None = None, sw_batch_size: int = 2,
            mirror: bool = True, overwrite: bool = False, progress: bool | None = None,
            max_elongation: float | None = MAX_LESION_ELONGATION) -> list[dict]:
    """Run a trained model on scans and write a lesion list per scan (module docstring).

    Args:
        inputs: scan folders, folders of scan folders, manifests.
        out: the output folder (refused when it holds files, unless ``overwrite``).
        model_dir: the training run folder (``model.pt`` + ``run_info.json``).
        single: one more scan from files: ``attn``, ``df``, ``sidecar``, optional ``lung_mask`` and
            ``scan_id`` (:func:`scan_from_files`).
        threshold: probability threshold of the lesion mask.
        calibration: the calibration for raw scans when the recorded path is not on this machine.
        device: ``auto``, ``cpu`` or ``cuda``.
        sw_batch_size: sliding-window ROIs per forward pass.
        mirror: test-time mirroring along the axes the model was trained flipping (every axis:
            8 passes per window); False: one pass.
        overwrite: replace a non-empty ``out``.
        progress: show a progress bar over scans (default: when stderr is a terminal).
        max_elongation: most elongated small lesion (:func:`dfseg.evaluation.lesions.lesion_rule`);
            ``None`` lists every shape.

    Returns:
        The per-scan summaries.

    Raises:
        InputError: bad input (one line naming the file and the problem); nothing is written.
        OutputExistsError: ``out`` is not empty and ``overwrite`` is not set.
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise InputError("--threshold", f"must be in (0, 1], got {threshold}")
    entries = find_scans(inputs) if inputs else []
    if single:
        entries += [scan_from_files(**single)]
        if len({e["scan_id"] for e in entries}) != len(entries):
            raise InputError(single["attn"], f"scan id {entries[-1]['scan_id']!r} is used twice")
    if not entries:
        raise InputError("INPUT", "no scans given (a scan folder, a folder of scans, a manifest, or --attn/--df/--sidecar)")
    model = load_model(model_dir, calibration=calibration, device=device)
    summaries: list[dict] = []
    show = sys.stderr.isatty() if progress is None else progress
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for entry in tqdm(entries, desc="predict", unit="scan", file=sys.stderr, disable=not show):
            summaries.append(predict_scan(entry, model, tmp / str(entry["scan_id"]), threshold=threshold,
                                          sw_batch_size=sw_batch_size, mirror=mirror,
                                          max_elongation=max_elongation))
        _write_csv(tmp / "scans.csv", [{"scan_id": s["scan_id"], "presence_score": s["presence_score"],
                                        "n_lesions": s["n_lesions"]} for s in summaries],
                   ("scan_id", "presence_score", "n_lesions"))
    return summaries

