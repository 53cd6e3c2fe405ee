"""Ignite/MONAI pieces the bundles wire: deterministic data feeding, transform chains, resumable
checkpoints, run records and prediction writers. The bundle YAML only calls these."""

from __future__ import annotations

from dfseg.training.checkpoint import BestModelSaver, CheckpointLoader, ResumableCheckpoint, load_checkpoint
from dfseg.training.data import (
    EpochSampler,
    SeededCacheDataset,
    at_least_as_good,
    datalist,
    derive_seed,
    is_preprocessed,
    require_valid_manifest,
    resolve,
)
from dfseg.training.handlers import (
    MetricsWriter,
    NullSummaryWriter,
    ProbabilityWriter,
    RunInfoWriter,
    run_info,
    summary_writer,
)
from dfseg.training.transforms import (
    MODALITY_CHANNELS,
    PresenceScored,
    eval_postprocessing,
    eval_transforms,
    in_channels,
    train_transforms,
)

__all__ = [
    "MODALITY_CHANNELS", "BestModelSaver", "EpochSampler", "MetricsWriter", "NullSummaryWriter", "PresenceScored",
    "ProbabilityWriter", "ResumableCheckpoint", "RunInfoWriter", "SeededCacheDataset", "datalist",
    "derive_seed", "eval_postprocessing", "eval_transforms", "in_channels", "is_preprocessed",
    "CheckpointLoader", "load_checkpoint", "resolve", "run_info", "summary_writer", "train_transforms", "at_least_as_good",
    "require_valid_manifest",
]
