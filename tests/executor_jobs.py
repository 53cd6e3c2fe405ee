"""Job functions for tests/simulate/test_executors.py: a module (not a test file) so spawned and
Dask worker processes import it by name (tests/conftest.py puts tests/ on sys.path; they inherit it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dfseg.errors import InputError


def square(job: dict) -> int:
    if job.get("fail") == "input":
        raise InputError(f"subject-{job['index']}.json", "no such subject")
    if job.get("fail") == "value":
        raise ValueError(f"bad value in job {job['index']}")
    return job["index"] ** 2


def write_bytes(job: dict) -> str:
    """Write 4 KiB from ``default_rng(SeedSequence([seed, index]))`` into ``job['folder']``."""
    rng = np.random.default_rng(np.random.SeedSequence([job["seed"], job["index"]]))
    path = Path(job["folder"]) / f"job-{job['index']:03d}.bin"
    path.write_bytes(rng.random(512).tobytes())
    return path.name


def pid(job) -> int:
    return os.getpid()
