"""Deterministic, resumable data feeding for the bundles.

Every random draw of the training data is a pure function of ``(seed, epoch, item index)``:

* :class:`EpochSampler` gives each epoch a permutation drawn from ``default_rng((seed, epoch))``
  and yields *encoded* indices ``epoch * n + i``;
* :class:`SeededCacheDataset` decodes them and re-seeds the random transforms from
  ``(seed, epoch, i)`` before running them on the cached item.

So the batches of epoch ``e`` do not depend on how many epochs ran before in this process, on the
number of DataLoader workers, or on prefetching, and a training resumed mid-epoch can skip exactly
the batches it already consumed (``EpochSampler.set_epoch(epoch, skip=...)``). This is what lets a
run killed with SIGKILL end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import CacheDataset
from monai.transforms import Compose
from torch.utils.data.distributed import DistributedSampler

from dfseg.data import validate
from dfseg.data.datasets import datalist_for_fold
from dfseg.data.manifest import load_manifest
from dfseg.data.scan import scan_value
from dfseg.errors import InputError

__all__ = ["EpochSampler", "SeededCacheDataset", "cohort_value", "datalist", "derive_seed", "is_preprocessed"]

_MAX_SEED = 2**32 - 1


def derive_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (numpy ``SeedSequence``, so nearby tuples decorrelate)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def datalist(manifest: str | os.PathLike, fold: int | None, split: str) -> list[dict]:
    """The MONAI datalist of one split (``train``/``val``/``test``) of one fold, absolute paths.

    Thin wrapper over :func:`dfseg.data.datasets.datalist_for_fold` that refuses an empty split
    with a message naming the manifest (an empty validation fold would make AUROC undefined).
    """
    items = datalist_for_fold(manifest, None if fold is None or int(fold) < 0 else int(fold), split)
    if not items:
        raise InputError(manifest, f"split {split!r} of fold {fold} has no entries")
    return items


def cohort_value(manifest: str | os.PathLike, name: str, default: Any, *, mixed: str) -> Any:
    """The value of sidecar field ``name`` that every scan of ``manifest`` shares (``meta[name]``, else
    ``default``; ``default`` for a manifest without scans).

    Args:
        manifest: the cohort manifest.
        name: the sidecar field (``preprocessed``, ``geometry``, ...).
        default: the value of a scan whose ``meta`` does not name it.
        mixed: what the user should do when the scans disagree.

    Raises:
        InputError: naming the manifest, when its scans disagree.
    """
    doc = load_manifest(manifest)
    values = {scan_value(e, name, default=default) for split in ("training", "validation", "test")
              for e in doc.get(split) or []}
    if len(values) > 1:
        raise InputError(manifest, f"mixes {name} values {sorted(map(str, values))}; {mixed}")
    return values.pop() if values else default


def is_preprocessed(manifest: str | os.PathLike) -> bool:
    """True when the manifest's scans were written by ``dfseg preprocess`` (``meta.preprocessed``).

    Preprocessed scans are already corrected and decomposed (attn 1 channel, df 5 channels), so the
    bundles skip the volume correction chain; raw reconstructions need it (and a calibration).
    Mixed manifests are refused: one network input must mean one thing.
    """
    return bool(cohort_value(manifest, "preprocessed", False, mixed="preprocess the whole cohort"))


class SeededCacheDataset(CacheDataset):
    """A :class:`monai.data.CacheDataset` whose random transforms are seeded per (epoch, item).

    Plain integer indices ``0..n-1`` behave as in ``CacheDataset`` (random state untouched);
    an encoded index ``epoch * n + i`` (from :class:`EpochSampler`) first seeds every random
    transform of the chain from ``derive_seed(seed, epoch, i)``.

    Args:
        data: the datalist.
        transform: a ``monai.transforms.Compose``; its deterministic prefix is cached.
        seed: base seed of the run.
        **kwargs: passed to ``CacheDataset`` (``cache_rate``, ``num_workers``, ...).
    """

    def __init__(self, data: Sequence[Any], transform: Compose, seed: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("progress", False)
        super().__init__(data=data, transform=transform, **kwargs)
        self.seed = int(seed)

    def __getitem__(self, index: Any) -> Any:  # type: ignore[override]
        if isinstance(index, (int, np.integer)) and int(index) >= len(self):
            epoch, i = divmod(int(index), len(self))
            self.transform.set_random_state(seed=derive_seed(self.seed, epoch, i))
            return self._transform(i)
        return super().__getitem__(index)


class EpochSampler(DistributedSampler):
    """Per-epoch permutation ``default_rng((seed, epoch))``, sharded over DDP ranks, resumable.

    Yields encoded indices ``epoch * n + i`` for :class:`SeededCacheDataset`. Works without an
    initialised process group (one replica). A ``DistributedSampler`` so MONAI's workflows and
    DDP treat it as one.

    Args:
        dataset: the dataset (its length ``n``).
        seed: base seed.
        shuffle: permute each epoch (training) or keep the datalist order.
        num_replicas, rank: DDP world size and rank (default: from ``torch.distributed`` if
            initialised, else 1 and 0).
    """

    def __init__(self, dataset: Any, seed: int = 0, shuffle: bool = True,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select ``epoch`` (1-based, as Ignite counts) and skip its first ``skip`` samples of this rank."""
        self.epoch = int(epoch)
        self.skip = int(skip)

    def _indices(self) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n).tolist()
        else:
            order = list(range(n))
        # pad to a multiple of the world size (as DistributedSampler does), then shard
        order += order[: self.total_size - n]
        return order[self.rank: self.total_size: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        own = self._indices()[self.skip:]
        self.skip = 0  # only the first pass after a resume skips
        return iter([self.epoch * n + i for i in own])

    def __len__(self) -> int:
        return self.num_samples


def torch_seed_for_iteration(seed: int, iteration: int) -> None:
    """Seed torch's global generator (dropout, ...) from ``(seed, iteration)``; called per iteration."""
    torch.manual_seed(derive_seed(seed, 1_000_003, iteration))


def resolve(path: str | os.PathLike | None) -> Path | None:
    """``Path(path).resolve()`` or ``None``; configs pass CLI strings through it."""
    return None if path in (None, "", "None") else Path(path).expanduser().resolve()


def require_valid_manifest(manifest: str | os.PathLike | None, *, check_hashes: bool = False) -> None:
    """Stop a bundle run before it builds anything when the manifest or its files are bad.

    The checks of :func:`dfseg.data.validate.require_valid_manifest` (projections aside: the bundles
    do not read them). Prints the first problem as one line (``dfseg bundle: error: <file>:
    <problem>``) and exits 1. ``SystemExit`` is not an ``Exception``, so it passes through
    ``monai.bundle``'s wrapping of config errors, and the user sees one line instead of a chain of
    tracebacks.
    """
    try:
        if manifest in (None, "", "None"):
            raise InputError("manifest", "not given; pass --manifest path/to/manifest.json")
        validate.require_valid_manifest(manifest, check_projections=False, check_hashes=check_hashes)
    except InputError as err:
        print(f"dfseg bundle: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def validation_score(auroc: Any, dice: Any) -> Any:
    """The validation key metric: the mean of the lesion-presence AUROC and the mean Dice.

    It picks ``model.pt`` and drives early stopping. The presence AUROC on a few validation mice
    ranks volumes by their highest lung probability; it is coarse (one swapped pair moves it by
    1/(n_pos n_neg)) and can peak in the first epochs, before the network segments well (a model
    with many false-positive blobs can still rank the volumes). The mean Dice over the volumes
    with tumours measures the segmentation. Their mean asks for both. A metric that is undefined
    (no tumour-free or no tumour-bearing validation volume) is left out of the mean.

    Args:
        auroc, dice: Ignite metrics (MONAI ``ROCAUC`` and ``MeanDice`` handlers).

    Returns:
        an Ignite ``MetricsLambda``.
    """
    from ignite.metrics import MetricsLambda

    def mean(a: Any, d: Any) -> float:
        values = [float(v) for v in (a, d) if np.isfinite(float(v))]
        return float(np.mean(values)) if values else 0.0

    return MetricsLambda(mean, auroc, dice)


def at_least_as_good(current: float, best: float) -> bool:
    """Key-metric comparison for the best-model checkpoint: a tie replaces the earlier model.

    Presence AUROC on a small validation set saturates (1.0) long before segmentation converges;
    with ties kept by the later epoch, ``model.pt`` is the most trained of the best-ranking models.
    """
    return current >= best
