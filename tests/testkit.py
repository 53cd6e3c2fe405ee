"""Helpers shared by the test modules: the devices to run on and array-type conversion.

``tests/conftest.py`` puts this folder on ``sys.path``, so a test module imports it as
``from testkit import DEVICES, KINDS, as_kind``.
"""

from __future__ import annotations

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
