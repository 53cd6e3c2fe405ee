"""Ignite/MONAI pieces the bundles wire: deterministic data feeding, transform chains, resumable
checkpoints, run records, prediction writers, the progress bar, TensorBoard images, DDP set-up and the
values the configs derive (ROI size, network). The bundle YAML only calls these."""

from __future__ import annotations

from dfseg.training.checkpoint import BestModelSaver, CheckpointLoader, ResumableCheckpoint, load_checkpoint
from dfseg.training.data import (
    EpochSampler,
    SeededCacheDataset,
    at_least_as_good,
    cohort_value,
    datalist,
    derive_seed,
    is_preprocessed,
    require_valid_manifest,
    resolve,
    validation_score,
)
from dfseg.training.distributed import (
    ddp,
    destroy_distributed,
    handlers_for_rank,
    init_distributed,
    is_rank0,
    rank_device,
)
from dfseg.training.handlers import (
    MetricsWriter,
    NullSummaryWriter,
    ProbabilityWriter,
    RunInfoWriter,
    TimeBudget,
    TrainingProgress,
    lr_writer,
    run_info,
    summary_writer,
)
from dfseg.training.inferers import (
    LEGACY_MIRROR_AXES,
    MirroredInferer,
    check_mirror_axes,
    mirrored,
    recorded_mirror_axes,
)
from dfseg.training.overlays import TensorBoardOverlays
from dfseg.training.settings import build_network, output_dir, roi_size, trained_mirror_axes, trained_roi_size
from dfseg.training.transforms import (
    MODALITY_CHANNELS,
    PresenceScored,
    eval_postprocessing,
    eval_transforms,
    flip_axes,
    in_channels,
    train_transforms,
)

__all__ = [
    "LEGACY_MIRROR_AXES", "MODALITY_CHANNELS", "BestModelSaver", "CheckpointLoader", "EpochSampler", "MetricsWriter", "MirroredInferer", "NullSummaryWriter",
    "PresenceScored", "ProbabilityWriter", "ResumableCheckpoint", "RunInfoWriter", "SeededCacheDataset",
    "TensorBoardOverlays", "TimeBudget", "TrainingProgress", "at_least_as_good", "build_network", "check_mirror_axes", "cohort_value", "datalist", "ddp",
    "derive_seed", "destroy_distributed", "eval_postprocessing", "eval_transforms", "flip_axes", "handlers_for_rank",
    "in_channels", "init_distributed", "is_preprocessed", "is_rank0", "load_checkpoint", "lr_writer", "mirrored", "output_dir",
    "recorded_mirror_axes",
    "rank_device", "require_valid_manifest", "resolve", "roi_size", "run_info", "summary_writer", "train_transforms",
    "trained_mirror_axes", "trained_roi_size", "validation_score",
]
