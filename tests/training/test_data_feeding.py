"""EpochSampler / SeededCacheDataset: data of an epoch is a pure function of (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandGaussianNoised

from dfseg.training.data import EpochSampler, SeededCacheDataset, derive_seed


def _dataset(seed=3):
    data = [{"x": torch.zeros(4)} for _ in range(5)]
    return SeededCacheDataset(data, Compose([RandGaussianNoised(keys="x", prob=1.0, std=1.0)]), seed=seed)


def test_sampler_permutation_per_epoch_and_skip():
    ds = _dataset()
    s = EpochSampler(ds, seed=7)
    s.set_epoch(2)
    full = list(iter(s))
    assert sorted(i - 2 * 5 for i in full) == [0, 1, 2, 3, 4]
    s.set_epoch(2, skip=3)
    assert list(iter(s)) == full[3:]
    assert list(iter(s)) == full  # skip applies to one pass only
    s.set_epoch(3)
    assert list(iter(s)) != full


def test_sampler_shards_cover_dataset():
    ds = _dataset()
    shards = [list(EpochSampler(ds, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 3
    assert set(shards[0]) | set(shards[1]) == set(range(5))


def test_item_randomness_depends_only_on_seed_epoch_index():
    a, b = _dataset(), _dataset()
    x1 = a[2 * 5 + 1]["x"]
    _ = b[3 * 5 + 4]  # other draws first must not change the result
    x2 = b[2 * 5 + 1]["x"]
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, a[3 * 5 + 1]["x"])
    assert not torch.equal(x1, _dataset(seed=4)[2 * 5 + 1]["x"])
    assert float(x1.std()) > 0.1


def test_derive_seed_distinct():
    seeds = {derive_seed(0, e, i) for e in range(10) for i in range(10)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_do_not_change_batches(workers):
    from monai.data import DataLoader

    ds = _dataset()
    s = EpochSampler(ds, seed=5)
    s.set_epoch(1)
    ref = np.concatenate([b["x"].numpy() for b in DataLoader(ds, sampler=s, batch_size=2, num_workers=0)])
    s.set_epoch(1)
    got = np.concatenate([b["x"].numpy() for b in DataLoader(ds, sampler=s, batch_size=2, num_workers=workers)])
    np.testing.assert_array_equal(ref, got)
