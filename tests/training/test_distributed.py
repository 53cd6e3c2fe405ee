"""DDP pieces: each process's CUDA device comes from LOCAL_RANK (its index on its node), not the global
rank, so training across several nodes picks GPUs that exist. (The torchrun/gloo run itself:
tests/bundles/test_train_resume.py::test_torchrun_gloo_two_processes.)"""

from __future__ import annotations

import pytest
import torch

from dfseg.errors import InputError
from dfseg.training import distributed


@pytest.fixture
def four_gpus(monkeypatch):
    """A node with 4 CUDA devices, as torch would report it (no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.mark.parametrize(("rank", "local_rank"), [(5, 1), (7, 3), (4, 0), (1, 1)])
def test_device_from_local_rank_not_global_rank(four_gpus, monkeypatch, rank, local_rank):
    # node 1 of 2 nodes x 4 GPUs: global rank 5 is the second process on its node
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setattr(distributed.dist, "get_rank", lambda *a, **k: rank)
    assert distributed.rank_device() == torch.device(f"cuda:{local_rank}")


def test_init_distributed_selects_the_local_gpu(four_gpus, monkeypatch):
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # process group already joined
    monkeypatch.setattr(distributed.dist, "get_rank", lambda *a, **k: 6)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    distributed.init_distributed()
    assert chosen == [torch.device("cuda:2")]


def test_local_rank_beyond_the_node_gpus_is_refused(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(InputError, match=r"LOCAL_RANK 4: this machine has 4 CUDA device\(s\)"):
        distributed.rank_device()
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(InputError, match="LOCAL_RANK: expected a non-negative integer"):
        distributed.rank_device()


def test_cpu_and_single_process(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.local_rank() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.rank_device() == torch.device("cpu")  # gloo on CPU: every process on the CPU
