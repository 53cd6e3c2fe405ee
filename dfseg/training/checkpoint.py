"""Crash-safe checkpoints that resume to the same final weights as an uninterrupted run.

``last.pt`` holds everything the rest of a run depends on: network, optimizer, LR scheduler,
trainer counters (Ignite ``state_dict``), the evaluator's best metric, early-stopping counters and
the torch / numpy / Python RNG states. It is written atomically (temporary file, fsync, rename),
every ``every_n_iterations`` iterations and after every epoch's validation, and read back with
``torch.load(weights_only=True)`` (no unpickling of arbitrary objects).

Why the weights come out identical after a SIGKILL: the data of epoch ``e`` is a pure function of
``(seed, e)`` (:mod:`dfseg.training.data`), torch's global generator is re-seeded from
``(seed, iteration)`` before every iteration, and a resumed epoch skips exactly the samples it
had consumed. Iteration checkpoints are never taken on an epoch's last iteration: that state
precedes the epoch-end handlers (LR step, validation), which a resume would otherwise skip.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import monai.handlers
import numpy as np
import torch
from ignite.engine import Engine, Events

from dfseg.errors import InputError
from dfseg.io import atomic_path
from dfseg.training.data import EpochSampler, torch_seed_for_iteration
from dfseg.training.distributed import is_rank0

__all__ = ["BestModelSaver", "CheckpointLoader", "ResumableCheckpoint", "get_rng_state", "load_checkpoint", "set_rng_state"]

logger = logging.getLogger(__name__)


def get_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy legacy and Python RNG states as tensors/lists (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": [int(v) for v in internal],
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unreadable(path: str | os.PathLike, err: BaseException) -> InputError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return InputError(path, f"not a readable weights-only checkpoint ({type(err).__name__}: {first[:160]}); "
                            "dfseg never unpickles arbitrary objects")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never pickled objects.

    Raises:
        InputError: naming ``path``, when the file is missing, truncated, not a checkpoint, or holds
            objects that a weights-only load refuses.
    """
    if not Path(path).is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, truncated zip, not a checkpoint: all one line
        raise _unreadable(path, err) from None


class CheckpointLoader(monai.handlers.CheckpointLoader):
    """MONAI ``CheckpointLoader`` whose unreadable or refused checkpoint is a one-line ``InputError``
    naming the file (MONAI raises the raw ``UnpicklingError`` with a multi-line explanation)."""

    def __call__(self, engine: Any) -> None:
        load_checkpoint(self.load_path, self.map_location)  # readable and weights-only, else one line
        super().__call__(engine)


def _state(obj: Any) -> Any:
    return obj.state_dict()


class ResumableCheckpoint:
    """Save and automatically resume ``last.pt`` (see the module docstring).

    Args:
        save_dir: run directory; ``last.pt`` lives there.
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (network, optimizer,
            lr scheduler). The trainer itself is added as ``"trainer"``.
        seed: the run's seed (iteration re-seeding of torch's generator).
        sampler: the training :class:`EpochSampler` (its epoch and resume offset are set here).
        batch_size: training batch size (to skip the consumed samples of a resumed epoch).
        every_n_iterations: also save every N iterations (0: epoch ends only).
        evaluator: the validation engine; its ``best_metric``/``best_metric_epoch`` are kept.
        early_stop: MONAI ``EarlyStopHandler``; its counter and best score are kept.
        filename: checkpoint file name.
        resume: load an existing checkpoint at start (the bundles' default).
    """

    def __init__(self, save_dir: str | os.PathLike, save_dict: dict[str, Any], seed: int = 0,
                 sampler: EpochSampler | None = None, batch_size: int = 1, every_n_iterations: int = 0,
                 evaluator: Engine | None = None, early_stop: Any = None, filename: str = "last.pt",
                 resume: bool = True) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.seed = int(seed)
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.every = int(every_n_iterations)
        self.evaluator = evaluator
        self.early_stop = early_stop
        self.resume = bool(resume)
        self.trainer: Engine | None = None
        self.resumed_from: int | None = None

    def attach(self, engine: Engine) -> None:
        """Register on the trainer; attach it after the validation and LR-schedule handlers."""
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        if self.every > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self._iteration_save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    # -- events -------------------------------------------------------------------------------
    def _epoch_started(self, engine: Engine) -> None:
        within = engine.state.iteration % engine.state.epoch_length if engine.state.epoch_length else 0
        if self.sampler is not None:
            self.sampler.set_epoch(engine.state.epoch, skip=within * self.batch_size)

    def _iteration_started(self, engine: Engine) -> None:
        torch_seed_for_iteration(self.seed, engine.state.iteration)

    def _iteration_save(self, engine: Engine) -> None:
        if engine.state.epoch_length and engine.state.iteration % engine.state.epoch_length == 0:
            return  # epoch-end handlers have not run yet; the EPOCH_COMPLETED save covers it
        self.save(engine)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self, engine: Engine) -> dict[str, Any]:
        ckpt: dict[str, Any] = {name: _state(obj) for name, obj in self.save_dict.items()}
        ckpt["trainer"] = engine.state_dict()
        ckpt["rng"] = get_rng_state()
        if self.evaluator is not None:
            best = getattr(self.evaluator.state, "best_metric", -1)
            ckpt["evaluator"] = {"best_metric": float(best),
                                 "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1))}
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None:
            ckpt["early_stop"] = {"counter": int(stopper.counter),
                                  "best_score": None if stopper.best_score is None else float(stopper.best_score)}
        return ckpt

    def save(self, engine: Engine) -> None:
        """Write the checkpoint atomically (rank 0 only)."""
        if not is_rank0():
            return
        ckpt = self.state_dict(engine)
        with atomic_path(self.path) as tmp:
            torch.save(ckpt, tmp)

    def load(self, engine: Engine) -> None:
        """Resume from ``last.pt`` if it exists (``weights_only=True``).

        Temporary files of a write that was killed (``.last.pt.*.tmp*``; ``last.pt`` itself is then
        the previous, complete checkpoint) are removed first.
        """
        if is_rank0():
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp*"):
                stale.unlink(missing_ok=True)
        if not (self.resume and self.path.is_file()):
            return
        ckpt = load_checkpoint(self.path)
        for name, obj in self.save_dict.items():
            if name not in ckpt:
                raise KeyError(f"{self.path}: checkpoint has no {name!r}")
            obj.load_state_dict(ckpt[name])
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(ckpt["trainer"])
        engine.state.max_epochs = max_epochs  # the command line may extend a finished run
        engine._init_iter = None  # recompute the position inside the epoch from the restored iteration
        if self.evaluator is not None and "evaluator" in ckpt:
            self.evaluator.state.best_metric = ckpt["evaluator"]["best_metric"]
            self.evaluator.state.best_metric_epoch = ckpt["evaluator"]["best_metric_epoch"]
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None and "early_stop" in ckpt:
            stopper.counter = ckpt["early_stop"]["counter"]
            stopper.best_score = ckpt["early_stop"]["best_score"]
        set_rng_state(ckpt["rng"])
        self.resumed_from = int(engine.state.iteration)
        logger.info("resumed from %s at epoch %d, iteration %d", self.path, engine.state.epoch,
                    engine.state.iteration)


class BestModelSaver:
    """Save the network's ``state_dict`` to ``model.pt`` whenever validation sets a new best key metric.

    Relies on MONAI's evaluator bookkeeping (``state.best_metric_epoch``), which survives a resume
    through :class:`ResumableCheckpoint`, so a restarted run never replaces a better model with a
    worse one. Written atomically, rank 0 only. (MONAI's ``CheckpointSaver`` writes non-atomically
    and forgets its best score on restart, hence this handler.)
    """

    def __init__(self, save_dir: str | os.PathLike, network: torch.nn.Module, filename: str = "model.pt",
                 key: str | None = "model") -> None:
        self.path = Path(save_dir) / filename
        self.network = network
        self.key = key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_rank0() or engine.state.best_metric_epoch != engine.state.epoch:
            return
        net = self.network.module if hasattr(self.network, "module") else self.network
        state = net.state_dict()
        with atomic_path(self.path) as tmp:
            torch.save({self.key: state} if self.key else state, tmp)
