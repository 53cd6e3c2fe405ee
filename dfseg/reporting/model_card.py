"""Model cards: ``model_card.json`` + ``model_card.md`` of a training run, and a bundle README from a card.

What :func:`write_model_card` reads from ``RUN_DIR``:

``run_info.json`` (written at training start by ``dfseg.training.RunInfoWriter``; required keys marked *):

- ``bundle``\\* (str): bundle name, e.g. ``dfseg_attention_unet``.
- ``modality``\\* (str): ``attn`` | ``df`` | ``combined``; ``input_channels`` (list of channel names),
  ``in_channels`` (int).
- ``network``\\* (dict): ``name`` (``dfseg.networks.build`` name) plus its constructor arguments
  (``channels``, ``strides``, ...); optional ``parameter_count`` (int). Without it the card builds
  the network with ``dfseg.networks.build(name, in_channels, **rest)`` and counts the parameters.
- ``hyper_parameters`` (dict): free-form (``max_epochs``, ``patch_size``, ``batch_size``,
  ``learning_rate``, ...).
- ``seed`` (int) and/or ``seeds`` (dict name -> int).
- ``manifest`` (dict): ``path``, ``sha256`` of the cohort manifest; ``fold`` (int or null);
  ``calibration`` ({``path``, ``sha256``} or null); ``preprocessed`` (bool).
- ``hardware`` (dict): ``platform``, ``cpu_count``, ``cuda``, ``gpus`` (list of names), ...
- ``versions`` (dict): ``python``, ``torch``, ``monai``, ``dfseg``, ... at training time
  (the card falls back to this environment's versions, and says so).
- ``started_utc``, ``finished_utc``, ``completed_epochs``, ``geometry`` (``ct`` | ``radiograph``): optional.

Metrics: the ``metrics.json`` written by ``dfseg evaluate`` (recognised by ``created_by ==
"dfseg evaluate"``), looked up as the ``metrics`` argument, then ``RUN_DIR/metrics.json``, then
``RUN_DIR/evaluation/metrics.json``; without one the card says the model is not evaluated.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from dfseg import __version__
from dfseg.errors import InputError
from dfseg.io import atomic_write, read_json, refuse_existing, write_json
from dfseg.networks import build, count_parameters
from dfseg.reporting.report import SECTIONS, fmt_ci

REQUIRED_KEYS = ("bundle", "modality", "network")

INTENDED_USE = (
    "Research use: detecting and outlining early-stage (0.5-3 mm) lung tumours in preclinical X-ray "
    "dark-field (and attenuation) CT or radiographs of mice acquired with a Talbot-Lau grating "
    "interferometer, as a second reader or for quantitative studies. Not for clinical use, not for humans."
)
LIMITATIONS = (
    "Trained and evaluated on the data named by the manifest hash (simulated unless stated otherwise); "
    "performance on real scanners, other grating designs, energies, voxel sizes or mouse strains is unknown "
    "until evaluated there.",
    "Lesions below about two voxels in diameter cannot be resolved; detection of 0.5-1 mm lesions is "
    "reported separately and is the least reliable.",
    "Probabilities are calibrated only as well as the reported ECE / reliability curve show; recalibrate "
    "before using them as risks.",
    "Confidence intervals resample subjects of one cohort; they do not cover shifts between cohorts.",
)


def _find_metrics(run_dir: Path, metrics: str | os.PathLike | None) -> tuple[dict | None, Path | None]:
    candidates = [Path(metrics)] if metrics is not None else [run_dir / "metrics.json",
                                                               run_dir / "evaluation" / "metrics.json"]
    for path in candidates:
        if path.is_file():
            doc = read_json(path)
            if isinstance(doc, dict) and doc.get("created_by") == "dfseg evaluate":
                return doc, path
            if metrics is not None:
                raise InputError(path, "not a metrics.json written by dfseg evaluate")
        elif metrics is not None:
            raise InputError(path, "file not found")
    return None, None


def _parameter_count(info: Mapping[str, Any]) -> tuple[int | None, str]:
    network = dict(info.get("network") or {})
    if isinstance(network.get("parameter_count"), int):
        return network["parameter_count"], "run_info.json"
    try:
        name = network.pop("name")
        network.pop("parameter_count", None)
        in_channels = int(info.get("in_channels") or len(info.get("input_channels") or []) or 1)
        model = build(name, in_channels, **network)
        return int(count_parameters(model)), "counted by building the network from run_info.json"
    except Exception as err:  # noqa: BLE001 - a card without a count beats no card
        return None, f"unknown ({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''})"


def _current_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "dfseg": __version__, "numpy": np.__version__}


def build_model_card(run_dir: str | os.PathLike, *, metrics: str | os.PathLike | None = None) -> dict:
    """The model-card document of a run (see the module docstring for what it reads)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "run directory not found")
    info = read_json(run_dir / "run_info.json")
    if not isinstance(info, dict):
        raise InputError(run_dir / "run_info.json", "expected a JSON object")
    for key in REQUIRED_KEYS:
        if key not in info:
            raise InputError(f"{run_dir / 'run_info.json'}:{key}", "missing (written by the training bundle)")
    if not isinstance(info["network"], dict) or "name" not in info["network"]:
        raise InputError(f"{run_dir / 'run_info.json'}:network.name", "missing")
    n_params, n_params_source = _parameter_count(info)
    versions = info.get("versions")
    versions_source = "run_info.json"
    if not versions:
        versions, versions_source = _current_versions(), "this environment (run_info.json has none)"
    versions = dict(versions)
    versions.setdefault("python", (info.get("hardware") or {}).get("python"))
    seeds = dict(info.get("seeds") or {})
    if "seed" in info:
        seeds.setdefault("seed", info["seed"])
    eval_doc, eval_path = _find_metrics(run_dir, metrics)
    card: dict[str, Any] = {
        "model_card_version": 1,
        "bundle": info["bundle"],
        "modality": info["modality"],
        "input_channels": info.get("input_channels"),
        "geometry": info.get("geometry", "ct"),
        "architecture": {"name": info["network"]["name"],
                         "config": {k: v for k, v in info["network"].items() if k not in ("name", "parameter_count")},
                         "parameter_count": n_params, "parameter_count_source": n_params_source},
        "hyper_parameters": info.get("hyper_parameters", {}),
        "seeds": seeds,
        "training": {k: info.get(k) for k in ("fold", "started_utc", "finished_utc", "completed_epochs",
                                              "preprocessed", "calibration")},
        "data": {"manifest": info.get("manifest"),
                 "evaluation_manifest": (eval_doc or {}).get("manifest"),
                 "evaluation_split": (eval_doc or {}).get("split")},
        "hardware": info.get("hardware"),
        "software": versions,
        "software_source": versions_source,
        "metrics": None,
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "run_dir": str(run_dir.resolve()),
    }
    if eval_doc is not None:
        card["metrics"] = {
            "source": str(eval_path.resolve()), "threshold": eval_doc.get("threshold"),
            "n_scans": eval_doc.get("n_scans"), "n_subjects": eval_doc.get("n_subjects"),
            "n_lesions": eval_doc.get("n_lesions"), "confidence": eval_doc.get("confidence"),
            "n_bootstrap": eval_doc.get("n_bootstrap"), "values": eval_doc.get("metrics", {}),
            "lesion_rule": (eval_doc.get("rules") or {}).get("lesion"),
            "matching_rule": (eval_doc.get("rules") or {}).get("matching"),
        }
    return card


def render_model_card(card: Mapping[str, Any], *, title: str | None = None) -> str:
    """Markdown of a model card (also the body of a bundle's docs/README.md)."""
    arch = card["architecture"]
    n = arch.get("parameter_count")
    lines = [f"# {title or 'Model card: ' + card['bundle']} ({card['modality']} input)", "",
             "## Intended use", "", card["intended_use"], "",
             "## Model", "",
             f"- bundle: `{card['bundle']}`; geometry: {card.get('geometry')}",
             f"- input modality: `{card['modality']}`, channels: {', '.join(card.get('input_channels') or []) or 'n/a'}",
             f"- architecture: `{arch['name']}`, parameters: {f'{n:,}' if n is not None else 'unknown'} "
             f"({arch.get('parameter_count_source')})",
             f"- network configuration: `{arch.get('config')}`", "",
             "## Training", ""]
    lines += [f"- {k}: `{v}`" for k, v in (card.get("hyper_parameters") or {}).items()]
    lines += [f"- seeds: `{card.get('seeds')}`"]
    lines += [f"- {k}: `{v}`" for k, v in (card.get("training") or {}).items() if v is not None]
    manifest = (card.get("data") or {}).get("manifest") or {}
    lines += ["", "## Data", "", f"- training manifest: `{manifest.get('path')}`",
              f"- training manifest sha256: `{manifest.get('sha256')}`"]
    ev = (card.get("data") or {}).get("evaluation_manifest")
    if ev:
        lines += [f"- evaluation manifest sha256: `{ev.get('sha256')}` (split `{card['data'].get('evaluation_split')}`)"]
    hw = card.get("hardware") or {}
    lines += ["", "## Hardware and software", ""]
    lines += [f"- {k}: `{v}`" for k, v in hw.items()]
    lines += [f"- {k}: `{v}`" for k, v in (card.get("software") or {}).items()]
    lines += [f"- versions from: {card.get('software_source')}", "", "## Metrics", ""]
    metrics = card.get("metrics")
    if not metrics:
        lines += ["Not evaluated: run `dfseg evaluate` and `dfseg model-card RUN_DIR --metrics OUT/metrics.json`.", ""]
    else:
        conf = int(round(100 * (metrics.get("confidence") or 0.95)))
        lines += [f"{metrics.get('n_scans')} scans of {metrics.get('n_subjects')} subjects, "
                  f"{metrics.get('n_lesions')} lesions; threshold {metrics.get('threshold')}; {conf}% CIs from "
                  f"{metrics.get('n_bootstrap')} subject-bootstrap resamples. Source: `{metrics.get('source')}`.", "",
                  f"| metric | estimate | {conf}% CI |", "|---|---:|---|"]
        values = metrics.get("values") or {}
        for section, rows in SECTIONS:
            for key, label in rows:
                if key in values:
                    est, ci = fmt_ci(values[key])
                    lines.append(f"| {section.lower()}: {label} | {est} | {ci} |")
        lines.append("")
        if metrics.get("lesion_rule"):
            lines += [f"What counts as a lesion: {metrics['lesion_rule']}", ""]
        if metrics.get("matching_rule"):
            lines += [f"Lesion matching rule: {metrics['matching_rule']}", ""]
    lines += ["## Limitations", ""] + [f"- {x}" for x in card.get("limitations") or []] + [""]
    return "\n".join(lines)


def render_bundle_readme(card: Mapping[str, Any]) -> str:
    """A bundle's ``docs/README.md`` generated from a model card: how to run it, then the card."""
    bundle = card["bundle"]
    head = [f"# {bundle}", "",
            "Generated by `dfseg model-card` from a training run; do not edit by hand.", "",
            "## Run", "", "```bash",
            "python -m monai.bundle run --config_file configs/train.yaml --bundle_root . --manifest M.json",
            "python -m monai.bundle run --config_file \"['configs/train.yaml','configs/inference.yaml']\" "
            "--bundle_root . --manifest M.json",
            "dfseg evaluate --predictions PRED --manifest M.json -o EVAL", "```", ""]
    body = render_model_card(card, title="Model card")
    return "\n".join(head) + "\n" + body.replace("\n## ", "\n### ").replace("# Model card", "## Model card", 1)


def write_model_card(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                     metrics: str | os.PathLike | None = None, bundle_readme: str | os.PathLike | None = None,
                     overwrite: bool = True) -> tuple[Path, Path]:
    """Write ``model_card.json`` and ``model_card.md`` of a run (and optionally a bundle README).

    Args:
        run_dir: training run directory holding ``run_info.json``.
        out: output folder (default: ``run_dir``).
        metrics: ``metrics.json`` of ``dfseg evaluate`` (default: looked up in ``run_dir``).
        bundle_readme: also write :func:`render_bundle_readme` of the card to this path.
        overwrite: replace existing files; ``False`` refuses them before anything is read or written.

    Returns:
        Paths of the JSON and Markdown files.
    """
    out_dir = Path(run_dir if out is None else out)
    json_path, md_path = out_dir / "model_card.json", out_dir / "model_card.md"
    for path in (json_path, md_path, *([bundle_readme] if bundle_readme else [])):
        refuse_existing(path, overwrite=overwrite)
    card = build_model_card(run_dir, metrics=metrics)
    write_json(json_path, card)
    with atomic_write(md_path, "w") as fh:
        fh.write(render_model_card(card))
    if bundle_readme:
        with atomic_write(bundle_readme, "w") as fh:
            fh.write(render_bundle_readme(card))
    return json_path, md_path
