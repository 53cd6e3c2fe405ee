"""Small Ignite handlers the bundles wire: run_info.json, probability maps, metrics JSON, the training
progress bar and its one line per epoch."""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite
import monai
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from torch.utils.tensorboard import SummaryWriter

from dfseg import __version__ as dfseg_version
from dfseg.channels import MODALITY_CHANNELS
from dfseg.data.manifest import SPLITS, load_manifest
from dfseg.data.scan import as_floats, scan_meta
from dfseg.io import read_json, save_nifti, sha256_file, write_json
from dfseg.networks import count_parameters
from dfseg.training.distributed import is_rank0
from dfseg.training.transforms import flip_axes
from dfseg.transforms.intensity import check_normalisation

__all__ = ["MetricsWriter", "NullSummaryWriter", "ProbabilityWriter", "RunInfoWriter", "TimeBudget", "TrainingProgress",
           "epoch_line",
           "hardware_info", "lr_writer", "prediction_record", "run_info", "summary_writer"]


class NullSummaryWriter:
    """A TensorBoard writer that writes nothing (every method is a no-op).

    Given to MONAI's TensorBoard handlers on DDP ranks other than 0: a handler built with
    ``summary_writer=None`` creates its own ``SummaryWriter`` and a stray ``./runs`` folder.
    """

    log_dir = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def summary_writer(log_dir: str | os.PathLike) -> Any:
    """``SummaryWriter(log_dir)`` on rank 0 (or without DDP), :class:`NullSummaryWriter` on other ranks."""
    if not is_rank0():
        return NullSummaryWriter()
    return SummaryWriter(log_dir=str(log_dir))


def lr_writer(optimizer: torch.optim.Optimizer) -> Any:
    """An ``epoch_event_writer`` for MONAI's ``TensorBoardStatsHandler``: scalar ``lr`` (first
    parameter group) at every epoch."""

    def write(engine: Engine, writer: Any) -> None:
        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], engine.state.epoch)

    return write


def hardware_info() -> dict[str, Any]:
    """CPU/GPU description recorded with every run."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries a run depends on."""
    return {"python": sys.version.split()[0], "dfseg": dfseg_version, "torch": torch.__version__,
            "monai": monai.__version__,
            "ignite": ignite.__version__, "numpy": np.__version__}


def _file_record(path: str | os.PathLike | None, base: Path) -> dict[str, Any] | None:
    """``{path, sha256}`` of a file named as given or relative to ``base``; ``{path, sha256: None}`` when
    it is not found here; None when no path is given."""
    if path in (None, "", "None"):
        return None
    for candidate in (Path(path), base / Path(path)):
        if candidate.is_file():
            return {"path": str(candidate.resolve()), "sha256": sha256_file(candidate)}
    return {"path": str(path), "sha256": None}


def prediction_record(manifest: str | os.PathLike, *, calibration: str | os.PathLike | None,
                      preprocessed: bool | None, roi_size: Any = None,
                      mirror_axes: Any = None) -> dict[str, Any] | None:
    """What ``dfseg predict`` needs to feed new scans as the run fed its training scans.

    Returns ``{"voxel_mm", "roi_size", "mirror_axes", "correction"}`` (None when ``manifest`` is not
    a file):

    - ``voxel_mm``: the training scans' voxel size, the per-axis median over every scan of the
      manifest (sidecar ``voxel_mm``);
    - ``roi_size``: the sliding-window ROI (the training patch);
    - ``mirror_axes``: the axes training flipped, which inference mirrors (None: not recorded);
    - ``correction``: how raw reconstructions became network input. ``preprocessed`` true: the
      scans were written by ``dfseg preprocess`` and ``domain`` (``projection`` when any scan went
      through the projection chain, else ``volume``), ``calibration`` {path, sha256},
      ``aluminium_weight`` and ``bone_correction`` come from their sidecars' ``preprocessing``;
      false: the bundle ran ``volume_chain(calibration)`` with the run's ``calibration``.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        return None
    doc = load_manifest(manifest)
    metas = [scan_meta(e) for split in SPLITS for e in doc.get(split) or []]
    spacings = [np.broadcast_to(as_floats(m["voxel_mm"]), (3,)) for m in metas if m.get("voxel_mm") is not None]
    voxel = [float(v) for v in np.median(spacings, axis=0)] if spacings else None
    if preprocessed is None:
        preprocessed = bool(metas) and all(bool(m.get("preprocessed")) for m in metas)
    if preprocessed:
        steps = [m.get("preprocessing") or {} for m in metas]
        domains = {s.get("domain") for s in steps if s.get("domain")}
        cals = sorted({str(s["calibration"]) for s in steps if s.get("calibration")})
        correction = {"preprocessed": True, "domain": "projection" if "projection" in domains else "volume",
                      "calibration": _file_record(cals[0], manifest.parent) if cals else None,
                      "aluminium_weight": float(next((s["aluminium_weight"] for s in steps
                                                      if s.get("aluminium_weight") is not None), 0.0)),
                      "bone_correction": any(bool(s.get("bone_correction")) for s in steps)}
        if len(cals) > 1:
            correction["calibrations"] = cals
    else:
        correction = {"preprocessed": False, "domain": "volume",
                      "calibration": _file_record(calibration, Path.cwd()),
                      "aluminium_weight": 0.0, "bone_correction": False}
    roi = None if roi_size is None else [int(v) for v in np.ravel(roi_size)]
    mirror = None if mirror_axes is None else [int(a) for a in mirror_axes]
    return {"voxel_mm": voxel, "roi_size": roi, "mirror_axes": mirror, "correction": correction}


def run_info(*, bundle: str, manifest: str | os.PathLike, fold: int | None, modality: str, seed: int,
             hyper_parameters: Mapping[str, Any], network: Mapping[str, Any],
             calibration: str | os.PathLike | None = None, preprocessed: bool | None = None,
             model: torch.nn.Module | None = None, spatial_dims: int | None = None,
             normalisation: str = "lung_reference", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``run_info.json`` record of a training run (the keys ``dfseg.reporting.model_card`` reads).

    Keys: ``bundle``, ``started_utc``, ``manifest`` {path, sha256}, ``fold``, ``modality``,
    ``input_channels`` (names), ``in_channels``, ``seed``, ``hyper_parameters``, ``network``
    (``name`` + constructor arguments, and ``parameter_count`` when ``model`` is given),
    ``calibration`` {path, sha256} or None, ``preprocessed``, ``geometry`` (``ct`` for
    ``spatial_dims`` 3, ``radiograph`` for 2), ``normalisation`` (the network-input scaling,
    :data:`dfseg.transforms.intensity.NORMALISATIONS`; a record without it means ``zscore``), ``predict`` (:func:`prediction_record`: training voxel
    size, ROI, the axes training flipped, correction chain), ``hardware``, ``versions``, ``command`` (argv), plus ``extra``. ``RunInfoWriter`` adds ``max_epochs``, ``completed_epochs``, ``finished_utc`` and
    ``resumed_at_iteration``.
    """
    manifest = Path(manifest).resolve()
    cal = None
    if calibration not in (None, "", "None") and Path(calibration).is_file():
        cal = {"path": str(Path(calibration).resolve()), "sha256": sha256_file(calibration)}
    net = dict(network)
    if model is not None:
        net["parameter_count"] = int(count_parameters(model.module if hasattr(model, "module") else model))
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
        "network": net,
        "calibration": cal,
        "preprocessed": preprocessed,
        "geometry": None if spatial_dims is None else ("ct" if int(spatial_dims) == 3 else "radiograph"),
        "normalisation": check_normalisation(normalisation),
        "presence_score": "maximum tumour probability inside the lung mask (per volume)",
        "predict": prediction_record(manifest, calibration=calibration, preprocessed=preprocessed,
                                     roi_size=hyper_parameters.get("patch_size"),
                                     mirror_axes=flip_axes(3 if spatial_dims is None else int(spatial_dims))),
        "hardware": hardware_info(),
        "versions": versions(),
        "command": list(sys.argv),
    }
    if extra:
        info.update(dict(extra))
    return info


class RunInfoWriter:
    """Write ``run_info.json`` into the run directory when training starts (rank 0).

    Attach it after :class:`dfseg.training.ResumableCheckpoint` so that, on a resume, the restored
    iteration is known; the interrupted run's ``started_utc`` and ``resumed_at_iteration`` are kept.

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
        # attach after ResumableCheckpoint: a resumed run has its restored iteration by now
        if not is_rank0():
            return
        if engine.state.iteration:
            if self.path.is_file():  # keep the history of the interrupted run(s)
                previous = read_json(self.path)
                self.info["started_utc"] = previous.get("started_utc", self.info.get("started_utc"))
                self.info["resumed_at_iteration"] = list(previous.get("resumed_at_iteration", []))
            self.info.setdefault("resumed_at_iteration", []).append(int(engine.state.iteration))
        self.info["max_epochs"] = int(engine.state.max_epochs or 0)
        write_json(self.path, self.info)

    def _completed(self, engine: Engine) -> None:
        if not is_rank0():
            return
        self.info["completed_epochs"] = int(engine.state.epoch)
        self.info["completed_iterations"] = int(engine.state.iteration)
        self.info["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(self.path, self.info)


class TimeBudget:
    """Fit a training run into a wall-clock budget: as many epochs as the budget holds, on a full schedule.

    After the first validation interval (so that the estimate includes a validation), the run's epoch
    count becomes ``floor(budget / mean epoch time)`` (at least the epochs done, at most the configured
    ``max_epochs``), and a cosine ``lr_scheduler`` is re-aimed
    at the new end: ``T_max`` is set and the current learning rate put on the closed-form cosine for
    it, so the schedule still anneals to its minimum at the last epoch. After every later epoch the
    run stops if the next epoch would not finish inside the budget. Attach after the
    ``ValidationHandler`` and the ``LrScheduleHandler``, before :class:`TrainingProgress`.

    The last epoch is always validated: when it is not on the validation interval, ``validator``
    runs on it here (so the best-model checkpoint also sees the end of the schedule, and a budget
    shorter than one validation interval still leaves a model).

    Args:
        minutes: the budget for this run (from the trainer's ``STARTED``); None or <= 0: no budget.
        lr_scheduler: a ``CosineAnnealingLR`` to re-aim, or None.
        validator: the validation engine (``run(epoch)``), or None.
        val_interval: epochs between the ``ValidationHandler``'s runs; the estimate is made after the first.
    """

    def __init__(self, minutes: float | None, lr_scheduler: Any = None, validator: Any = None,
                 val_interval: int = 1) -> None:
        self.seconds = 60.0 * float(minutes) if minutes else None
        self.lr_scheduler = lr_scheduler
        self.validator = validator
        self.val_interval = max(int(val_interval), 1)
        self._start = 0.0
        self._first_epoch = 0
        self.planned_epochs: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.seconds is None or self.seconds <= 0:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._start, self._first_epoch = time.perf_counter(), int(engine.state.epoch)

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        done = epoch - self._first_epoch
        elapsed = time.perf_counter() - self._start
        per_epoch = elapsed / max(done, 1)
        if self.planned_epochs is None and done >= self.val_interval:
            cap = int(engine.state.max_epochs or epoch)
            self.planned_epochs = min(max(epoch + int((self.seconds - elapsed) / per_epoch), epoch), cap)
            engine.state.max_epochs = self.planned_epochs
            self._reaim(self.planned_epochs)
            engine.logger.warning("time budget %.0f s: %d epochs of %.1f s planned", self.seconds,
                                  self.planned_epochs, per_epoch)
        elif elapsed + per_epoch > self.seconds and epoch < int(engine.state.max_epochs or 0):
            engine.logger.warning("time budget %.0f s: stopping after epoch %d (%.0f s used)", self.seconds, epoch,
                                  elapsed)
            engine.state.max_epochs = epoch
        last = epoch >= int(engine.state.max_epochs or 0)
        if last and self.validator is not None and epoch % self.val_interval:
            self.validator.run(epoch)

    def _reaim(self, total: int) -> None:
        sched = self.lr_scheduler
        if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            return
        sched.T_max = max(int(total), 1)
        frac = min(sched.last_epoch / sched.T_max, 1.0)
        for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
            group["lr"] = sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * frac)) / 2


class ProbabilityWriter:
    """Write ``<output_dir>/<scan_id>_prob.nii.gz`` (float32 probabilities, scan grid) per volume.

    Attach to an evaluator whose post-processing produced ``pred`` as probabilities (1, X, Y, Z),
    or (1, X, Y) from a 2D network on radiographs (written as (X, Y, 1));
    the scan id comes from the batch's ``scan_id``. A volume is written with its image's affine
    (origin, direction and spacing: the scanner's geometry, e.g. a lung crop's shifted origin); a
    radiograph with its pixel size.
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
            affine = np.asarray(torch.as_tensor(affine).cpu(), dtype=float)
            prob = np.asarray(torch.as_tensor(pred).detach().cpu().float())[0]
            if prob.ndim == 2:
                # radiograph (2D network): back to the (X, Y, 1) layout of the input files; the 2D
                # affine is 3x3, its Z pixel size is gone, so the in-plane x size stands in.
                prob = prob[..., None]
                xy = np.sqrt((affine[:2, :2] ** 2).sum(axis=0))
                voxel = np.array([xy[0], xy[1], xy[0]])
                grid: np.ndarray | tuple = tuple(voxel)
            else:
                grid = affine
            save_nifti(self.output_dir / f"{b['scan_id']}_prob.nii.gz", prob, grid, np.float32)


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
        if not is_rank0():
            return
        metrics = {k: float(v) if np.ndim(v) == 0 else np.asarray(v).tolist() for k, v in engine.state.metrics.items()}
        write_json(self.path, {**self.extra, "metrics": metrics, "volumes": self.scores})


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def epoch_line(epoch: int, max_epochs: int, *, loss: float | None, lr: float | None, metrics: Mapping[str, float],
               best: tuple[str, float, int] | None, seconds: float, eta_seconds: float | None) -> str:
    """The one line a training run prints per epoch, e.g.
    ``epoch 3/100  loss 0.4123  lr 1.00e-03  val_score 0.6100  val_auroc 0.8125  val_mean_dice 0.4100  best val_score 0.6300
    (epoch 2)  12.3 s  ETA 0:19:56``.

    Args:
        epoch, max_epochs: the epoch just finished (1-based) and the run's last.
        loss: mean training loss over the epoch's iterations (None: none recorded).
        lr: learning rate the epoch trained with.
        metrics: validation metrics of this epoch (empty when it did not validate).
        best: ``(key metric, best value, its epoch)``, or None.
        seconds: the epoch's wall time, validation included.
        eta_seconds: estimated time to the last epoch, or None.
    """
    parts = [f"epoch {epoch}/{max_epochs}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if lr is not None:
        parts.append(f"lr {lr:.2e}")
    parts += [f"{name} {float(value):.4f}" for name, value in metrics.items() if np.ndim(value) == 0]
    if best is not None and best[2] > 0:
        parts.append(f"best {best[0]} {best[1]:.4f} (epoch {best[2]})")
    parts.append(f"{seconds:.1f} s")
    if eta_seconds is not None and epoch < max_epochs:
        parts.append(f"ETA {_clock(eta_seconds)}")
    return "  ".join(parts)


class TrainingProgress:
    """What a training run shows on the console: a progress bar with ETA over each epoch's iterations
    (and one over each validation), and one :func:`epoch_line` per epoch.

    Attach to the trainer after the ``ValidationHandler`` (its line then holds that epoch's
    validation metrics) on every rank: it turns the trainer's and evaluator's Ignite loggers down to
    WARNING everywhere (their per-epoch INFO lines are what the one line replaces), and shows the bars
    and lines on rank 0 only. The bars are drawn on ``stream`` only when it is a terminal, so logs
    redirected to a file get the lines alone.

    Args:
        evaluator: the validation engine (its ``state.metrics``, ``best_metric``, ``best_metric_epoch``),
            or None.
        optimizer: its first parameter group's learning rate is reported, or None.
        progress: False: no bars (``--no-progress``); the epoch lines stay.
        stream: where bars and lines go (default ``sys.stderr`` for bars, ``sys.stdout`` for lines).
        output_transform: training loss from the trainer's output (default: ``loss`` of the first item).
    """

    def __init__(self, evaluator: Engine | None = None, optimizer: torch.optim.Optimizer | None = None, *,
                 progress: bool = True, stream: Any = None, output_transform: Any = None) -> None:
        self.evaluator = evaluator
        self.optimizer = optimizer
        self.progress = bool(progress)
        self.stream = stream
        self.output_transform = output_transform or _first_loss
        self.bars: list[ProgressBar] = []
        self._losses: list[float] = []
        self._lr: float | None = None
        self._epoch_start = self._run_start = 0.0
        self._run_first_epoch = 0

    def attach(self, engine: Engine) -> None:
        for eng in (engine, self.evaluator):
            if eng is not None:
                eng.logger.setLevel(max(eng.logger.getEffectiveLevel(), logging.WARNING))
        if not is_rank0():
            return
        bar_stream = self.stream or sys.stderr
        if self.progress and bool(getattr(bar_stream, "isatty", lambda: False)()):
            train_bar = ProgressBar(persist=False, desc="train", file=bar_stream)
            train_bar.attach(engine, output_transform=lambda out: {"loss": self.output_transform(out)})
            self.bars.append(train_bar)
            if self.evaluator is not None:
                val_bar = ProgressBar(persist=False, desc="validate", file=bar_stream)
                val_bar.attach(self.evaluator)
                self.bars.append(val_bar)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _print(self, text: str) -> None:
        from tqdm import tqdm  # reason: tqdm.write keeps an open bar below the line

        tqdm.write(text, file=self.stream or sys.stdout)
        (self.stream or sys.stdout).flush()

    def _started(self, engine: Engine) -> None:
        self._run_start, self._run_first_epoch = time.perf_counter(), int(engine.state.epoch)
        if engine.state.iteration:
            self._print(f"resuming at epoch {engine.state.epoch + 1}/{engine.state.max_epochs} "
                        f"(iteration {engine.state.iteration})")

    def _epoch_started(self, engine: Engine) -> None:
        self._losses = []
        self._epoch_start = time.perf_counter()
        self._lr = float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else None

    def _iteration(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        if loss is not None:
            self._losses.append(float(loss))

    def _epoch_completed(self, engine: Engine) -> None:
        now, epoch, max_epochs = time.perf_counter(), int(engine.state.epoch), int(engine.state.max_epochs or 0)
        metrics: Mapping[str, Any] = {}
        best = None
        ev = self.evaluator
        if ev is not None and ev.state is not None and int(ev.state.epoch or 0) == epoch:
            metrics = ev.state.metrics
        if ev is not None and getattr(ev.state, "key_metric_name", None) is not None:
            best = (ev.state.key_metric_name, float(ev.state.best_metric), int(ev.state.best_metric_epoch))
        done = epoch - self._run_first_epoch
        eta = (now - self._run_start) / done * (max_epochs - epoch) if done > 0 else None
        self._print(epoch_line(epoch, max_epochs, loss=float(np.mean(self._losses)) if self._losses else None,
                               lr=self._lr, metrics=metrics, best=best, seconds=now - self._epoch_start,
                               eta_seconds=eta))


def _first_loss(output: Any) -> float | None:
    """``loss`` of a MONAI trainer's output (a list of per-item dicts, or one dict)."""
    item = output[0] if isinstance(output, list) and output else output
    if isinstance(item, Mapping) and item.get("loss") is not None:
        return float(torch.as_tensor(item["loss"]).detach().float().mean())
    return None
