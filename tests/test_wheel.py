"""The wheel: built from the sources, it carries the bundles and the licence; installed into a fresh
virtual environment outside the repository, dfseg finds its bundles there (importlib.resources) and
runs the shipped model's inference workflow on a tiny cohort."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dfseg.io import load_nifti

sys.path.insert(0, str(Path(__file__).parent / "training"))
from cohort import make_cohort  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: what a build reads (the rest of the checkout, .venv and runs/ among it, stays behind)
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CITATION.cff", "CHANGELOG.md",
           "dfseg", "bundles")
BUNDLE_FILES = ("configs/train.yaml", "configs/inference.yaml", "configs/evaluate.yaml",
                "configs/multi_gpu_train.yaml", "configs/metadata.json", "configs/logging.conf",
                "docs/README.md", "LICENSE")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the sources (the build's scratch files stay out of the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "runs", "*.egg-info", "build")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
          "-w", str(tmp / "dist")], cwd=tmp)
    (built,) = (tmp / "dist").glob("dfseg-*.whl")
    return built


def test_wheel_holds_bundles_and_licence(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundle in ("dfseg_attention_unet", "dfseg_swinunetr"):
        missing = [f for f in BUNDLE_FILES if f"dfseg/bundles/{bundle}/{f}" not in names]
        assert missing == [], (bundle, missing)
    assert {"dfseg/bundles/schema/meta_schema_20240725.json", "dfseg/bundles/dfseg_attention_unet/models/model.pt",
            "dfseg/schemas/manifest.schema.json"} <= names
    licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert len(licence) == 1
    text = zipfile.ZipFile(wheel).read(licence[0])
    assert text == (REPO / "LICENSE").read_bytes() and b"Apache License" in text
    assert not [n for n in names if "__pycache__" in n or "/runs/" in n]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


def _fresh_venv(path: Path) -> tuple[Path, dict[str, str]]:
    """A new virtual environment (no pip of its own: the running pip installs into it, 16 s less); the
    running interpreter's packages (torch, MONAI) are reachable from it by a .pth line (after its own
    site-packages), so nothing is downloaded."""
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(path)], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=path.parent).strip())
    (purelib / "outer_site_packages.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DFSEG_BUNDLES", "VIRTUAL_ENV")}
    env.update(PATH=f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="2")
    return python, env


@pytest.mark.slow  # build, venv, install, one inference run: 25-60 s on 2 cores
def test_wheel_installs_and_runs_a_bundle_outside_the_repo(wheel, tmp_path):
    python, env = _fresh_venv(tmp_path / "venv")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-build-isolation",
          str(wheel)], cwd=tmp_path, env=env)
    work = tmp_path / "work"  # outside the repository: nothing there to fall back on
    manifest = make_cohort(work / "cohort", n_subjects=8)  # 2 test scans
    script = f"""
import json, socket
import dfseg, dfseg.resources as r
from monai.bundle import verify_metadata

def refuse(*args, **kwargs):
    raise RuntimeError("network access")
socket.socket.connect = refuse

bundle = r.bundle_dir("dfseg_attention_unet")
for name in r.BUNDLES:
    verify_metadata(meta_file=str(r.bundle_dir(name) / "configs" / "metadata.json"), filepath=str(r.metadata_schema()))
r.run_bundle("dfseg_attention_unet", "inference", manifest={str(manifest)!r}, output_dir="run", split="test",
             predictions_dir="pred", ckpt_path=str(r.shipped_model() / "model.pt"), channels="[8, 16, 32, 64]",
             patch_size=32, device="cpu", num_workers=0, sw_batch_size=1)
print(json.dumps({{"dfseg": dfseg.__file__, "bundle": str(bundle), "schema": str(r.metadata_schema())}}))
"""
    out = json.loads(_run([str(python), "-c", script], cwd=work, env=env).strip().splitlines()[-1])
    venv = (tmp_path / "venv").resolve()
    for key in ("dfseg", "bundle", "schema"):
        path = Path(out[key]).resolve()
        assert path.is_relative_to(venv) and not path.is_relative_to(REPO), (key, path)
    assert Path(out["bundle"]).parts[-3:] == ("dfseg", "bundles", "dfseg_attention_unet")

    test_ids = [e["scan_id"] for e in json.loads(manifest.read_text())["test"]]
    probs = sorted((work / "pred").glob("*_prob.nii.gz"))
    assert [p.name for p in probs] == sorted(f"{s}_prob.nii.gz" for s in test_ids) and probs
    arr, _ = load_nifti(probs[0])
    assert arr.shape == (32, 32, 32)
    assert 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0 and float(np.std(arr)) > 0
