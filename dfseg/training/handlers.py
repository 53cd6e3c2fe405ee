"""Small Ignite handlers the bundles wire: run_info.json, probability maps, metrics JSON."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from dfseg.io import save_nifti, sha256_file, voxel_size, write_json

__all__ = ["MetricsWriter", "ProbabilityWriter", "RunInfoWriter", "hardware_info", "run_info"]


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def hardware_info() -> dict[str, Any]:
    """CPU/GPU description recorded with every run."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def versions() -> dict[str, str]:
    import ignite
    import monai

    import dfseg

    return {"dfseg": dfseg.__version__, "torch": torch.__version__, "monai": monai.__version__,
            "ignite": ignite.__version__, "numpy": np.__version__}


def run_info(*, bundle: str, manifest: str | os.PathLike, fold: int | None, modality: str, seed: int,
             hyper_parameters: Mapping[str, Any], network: Mapping[str, Any],
             calibration: str | os.PathLike | None = None, preprocessed: bool | None = None,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``run_info.json`` record of a training run (what ``dfseg model-card`` reads).

    Keys: ``bundle``, ``started_utc``, ``manifest`` {path, sha256}, ``fold``, ``modality``,
    ``in_channels``, ``seed``, ``hyper_parameters``, ``network``, ``calibration`` {path, sha256}
    or None, ``preprocessed``, ``hardware``, ``versions``, ``command`` (argv), plus ``extra``.
    """
    from dfseg.training.transforms import MODALITY_CHANNELS

    manifest = Path(manifest).resolve()
    cal = None
    if calibration not in (None, "", "None") and Path(calibration).is_file():
        cal = {"path": str(Path(calibration).resolve()), "sha256": sha256_file(calibration)}
    info = {
        "bundle": bundle,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "manifest": {"path": str(manifest), "sha256": sha256_file(manifest) if manifest.is_file() else None},
        "fold": None if fold is None else int(fold),
        "modality": modality,
        "input_channels": list(MODALITY_CHANNELS.get(modality, ())),
        "in_channels": len(MODALITY_CHANNELS.get(modality, ())),
        "seed": int(seed),
        "hyper_parameters": dict(hyper_parameters),
        "network": dict(network),
        "calibration": cal,
        "preprocessed": preprocessed,
        "presence_score": "maximum tumour probability inside the lung mask (per volume)",
        "hardware": hardware_info(),
        "versions": versions(),
        "command": list(sys.argv),
    }
    if extra:
        info.update(dict(extra))
    return info


class RunInfoWriter:
    """Write ``run_info.json`` into the run directory when training starts (rank 0).

    Args:
        output_dir: run directory.
        info: the record (see :func:`run_info`); ``resumed_at_iteration`` is added on a resume.
    """

    def __init__(self, output_dir: str | os.PathLike, info: Mapping[str, Any]) -> None:
        self.path = Path(output_dir) / "run_info.json"
        self.info = dict(info)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        if not _is_rank0():
            return
        if engine.state.iteration:
            self.info.setdefault("resumed_at_iteration", []).append(int(engine.state.iteration))
        self.info["max_epochs"] = int(engine.state.max_epochs or 0)
        write_json(self.path, self.info)

    def _completed(self, engine: Engine) -> None:
        if not _is_rank0():
            return
        self.info["completed_epochs"] = int(engine.state.epoch)
        self.info["completed_iterations"] = int(engine.state.iteration)
        self.info["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(self.path, self.info)


class ProbabilityWriter:
    """Write ``<output_dir>/<scan_id>_prob.nii.gz`` (float32 probabilities, scan grid) per volume.

    Attach to an evaluator whose post-processing produced ``pred`` as probabilities (1, X, Y, Z);
    the scan id comes from the batch's ``scan_id``. Voxel size from the image affine.
    """

    def __init__(self, output_dir: str | os.PathLike, pred_key: str = "pred") -> None:
        self.output_dir = Path(output_dir)
        self.pred_key = pred_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        items = zip(batch, output) if isinstance(output, list) else [(batch, output)]
        for b, o in items:
            pred = o[self.pred_key]
            affine = getattr(pred, "affine", None)
            if affine is None:
                affine = getattr(b.get("image"), "affine", torch.eye(4))
            voxel = voxel_size(np.asarray(torch.as_tensor(affine).cpu(), dtype=float))
            prob = np.asarray(torch.as_tensor(pred).detach().cpu().float())[0]
            save_nifti(self.output_dir / f"{b['scan_id']}_prob.nii.gz", prob, tuple(voxel), np.float32)


class MetricsWriter:
    """Write the evaluator's metrics (and per-volume presence scores) to a JSON file on completion."""

    def __init__(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.extra = dict(extra or {})
        self.scores: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        items = zip(batch, output) if isinstance(output, list) else [(batch, output)]
        for b, o in items:
            if "presence" in o:
                self.scores.append({"scan_id": b.get("scan_id"), "score": float(o["presence"].reshape(-1)[0]),
                                    "has_tumour": bool(o.get("presence_label", torch.zeros(1)).reshape(-1)[0] > 0)})

    def _write(self, engine: Engine) -> None:
        if not _is_rank0():
            return
        metrics = {k: float(v) if np.ndim(v) == 0 else np.asarray(v).tolist() for k, v in engine.state.metrics.items()}
        write_json(self.path, {**self.extra, "metrics": metrics, "volumes": self.scores})
