"""``dfseg register``: end to end on NIfTI files, refusal to overwrite, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.cli import main
from dfseg.io import load_nifti, save_nifti
from dfseg.transforms.registration import mean_surface_distance


def _ellipsoid(n=32, axes=(10, 7, 5), shift=(0, 0, 0)):
    g = np.indices((n, n, n)).astype(float) - (n - 1) / 2
    g = g - np.asarray(shift, float)[:, None, None, None]
    return ((g[0] / axes[0]) ** 2 + (g[1] / axes[1]) ** 2 + (g[2] / axes[2]) ** 2 <= 1).astype(np.uint8)


@pytest.fixture
def files(tmp_path):
    fixed, moving = _ellipsoid(), _ellipsoid(shift=(3, -2, 1))
    save_nifti(tmp_path / "fixed.nii.gz", fixed, 0.1)
    save_nifti(tmp_path / "histo.nii.gz", moving, 0.1)
    return tmp_path, fixed


def test_register_writes_aligned_label(files, capsys):
    tmp, fixed = files
    out = tmp / "out" / "reg.nii.gz"
    rc = main(["register", "--fixed", str(tmp / "fixed.nii.gz"), "--moving", str(tmp / "histo.nii.gz"),
               "-o", str(out), "--no-bspline", "--transform", str(tmp / "t.tfm")])
    assert rc == 0
    label, affine = load_nifti(out)
    assert label.dtype == np.uint8 and np.allclose(np.diag(affine)[:3], 0.1)
    assert mean_surface_distance(_ellipsoid(shift=(3, -2, 1)), fixed) > 1.2
    assert mean_surface_distance(label, fixed) < 0.5
    assert (tmp / "t.tfm").is_file()
    # a second run refuses to overwrite, then --overwrite replaces
    args = ["register", "--fixed", str(tmp / "fixed.nii.gz"), "--moving", str(tmp / "histo.nii.gz"), "-o", str(out),
            "--no-bspline"]
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_register_rejects_non_binary_and_missing(files, capsys):
    tmp, fixed = files
    save_nifti(tmp / "bad.nii.gz", fixed * 3, 0.1)
    assert main(["register", "--fixed", str(tmp / "fixed.nii.gz"), "--moving", str(tmp / "bad.nii.gz"),
                 "-o", str(tmp / "o.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "bad.nii.gz: histology label must hold only 0 and 1" in err and len(err.strip().splitlines()) == 1
    assert main(["register", "--fixed", str(tmp / "nope.nii.gz"), "--moving", str(tmp / "histo.nii.gz"),
                 "-o", str(tmp / "o.nii.gz")]) == 1
    assert "nope.nii.gz: file not found" in capsys.readouterr().err
    assert not (tmp / "o.nii.gz").exists()
