"""Shared helpers for bundle tests: locate bundles, run ``python -m monai.bundle`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
SCHEMA = REPO / "bundles" / "schema" / "meta_schema_20240725.json"  # = dfseg.resources.metadata_schema()

#: Tiny-network overrides per bundle (CPU tests). SwinUNETR's bottleneck is patch/32 voxels and its
#: instance norm needs more than one voxel there, so its smallest patch is 64 (the 32^3 cohort is padded).
TINY: dict[str, list[str]] = {
    "dfseg_attention_unet": ["--channels", "[4,8,16]", "--strides", "[2,2]", "--patch_size", "32"],
    "dfseg_swinunetr": ["--feature_size", "12", "--depths", "[1,1,1,1]", "--patch_size", "64"],
}
COMMON = ["--num_workers", "0", "--device", "cpu", "--sw_batch_size", "1"]
TRAIN = ["--batch_size", "1", "--num_samples", "1", "--synthetic_tumour_prob", "0"]
try:  # the bundles use dfseg.losses.SegmentationLoss; until it exists, tests train with MONAI's DiceFocal
    from dfseg.losses import SegmentationLoss  # noqa: F401
except ImportError:
    # (MONAI's loss takes one tensor, so the U-Net's deep-supervision list output is switched off too)
    TRAIN += ["--loss", "$monai.losses.DiceFocalLoss(sigmoid=True)"]
    TINY["dfseg_attention_unet"] += ["--deep_supervision", "False"]


def overrides(bundle: str, *lists: list[str]) -> dict[str, object]:
    """``--key value`` lists as a dict of Python values (for in-process ``ConfigWorkflow`` / parser use)."""
    import ast

    items = [x for lst in (TINY[bundle], *lists) for x in lst]
    out: dict[str, object] = {}
    for key, value in zip(items[::2], items[1::2]):
        try:
            out[key.lstrip("-")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.lstrip("-")] = value
    return out


def bundle_cmd(bundle: str, config: str | Sequence[str], *args: str, module: str = "run") -> list[str]:
    """``python -m monai.bundle <module>`` with config file(s) of ``configs/`` (several are merged left to
    right; ``dfseg.resources.WORKFLOWS`` names the lists)."""
    root = BUNDLES / bundle
    configs = [config] if isinstance(config, str) else list(config)
    files = [str(root / "configs" / c) for c in configs]
    cfg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    return [sys.executable, "-m", "monai.bundle", module, "--config_file", cfg, "--bundle_root", str(root),
            "--meta_file", str(root / "configs" / "metadata.json"), *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "2")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` with the test environment; fail with its output tail on a non-zero exit."""
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc
