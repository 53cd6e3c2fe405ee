"""Helpers shared by the test modules: the devices to run on and array-type conversion.

``tests/conftest.py`` puts this folder on ``sys.path``, so a test module imports it as
``from testkit import DEVICES, KINDS, as_kind``.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

#: torch devices every device-parametrised test runs on: the CPU, and CUDA when there is one
DEVICES: list[str] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

#: the array types every transform accepts and gives back
KINDS: list[str] = ["numpy", "torch"]


def as_kind(kind: str, x: Any, device: str = "cpu") -> Any:
    """``x`` as a numpy array (``kind="numpy"``) or a torch tensor on ``device`` (``kind="torch"``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return torch.as_tensor(x, device=device) if kind == "torch" else np.asarray(x)


def astra_parallel_fbp(sino: np.ndarray, angles: np.ndarray, du: float, n: int, voxel: float) -> np.ndarray:
    """ASTRA's CPU FBP (strip projector, Ram-Lak) of a centred parallel sinogram (A, U) -> (n, n) in 1/mm,
    on voxels of ``voxel`` mm with detector bins of ``du`` mm.

    ASTRA's 2D frame: x along columns, y up the rows, voxel = 1; its ray at angle a runs along
    (sin a, -cos a) with the detector along (cos a, sin a), so a = t + pi/2 is dfseg's angle t and
    ``arr[row, col] = img[col, n - 1 - row]``.
    """
    import astra  # the dev extra's oracle toolbox (CPU FBP of parallel beams)

    pg = astra.create_proj_geom("parallel", du / voxel, sino.shape[1], angles + math.pi / 2)
    vg = astra.create_vol_geom(n, n)
    pid = astra.create_projector("strip", pg, vg)
    sid = astra.data2d.create("-sino", pg, sino.astype(np.float32))
    rid = astra.data2d.create("-vol", vg, 0)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=rid)
    aid = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(aid)
        return astra.data2d.get(rid)[::-1].T / voxel
    finally:
        astra.algorithm.delete(aid)
        astra.data2d.delete([sid, rid])
        astra.projector.delete(pid)


def rel_rmse(a, b, mask=None) -> float:
    """Relative RMSE of ``a`` against the reference ``b`` (over ``mask`` when given)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


def flat(img: np.ndarray, width: int = 5) -> np.ndarray:
    """Inside the object and at least width // 2 voxels from any edge of the phantom."""
    from scipy.ndimage import maximum_filter, minimum_filter

    return ((maximum_filter(img, width) - minimum_filter(img, width)) < 1e-9) & (img > 0)


#: the repository's bench/ folder: benchmark scripts, importable as modules by :func:`bench_module`
BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str) -> ModuleType:
    """``bench/<name>.py`` imported as a module (bench/ on ``sys.path`` only while it imports, for its siblings)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH_DIR))
