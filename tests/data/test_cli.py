"""``dfseg validate-manifest``: exit codes and one-line outputs."""

from __future__ import annotations

import json

import numpy as np

from dfseg.cli import main
from dfseg.io import save_nifti


def test_clean_manifest_prints_one_summary_line(cohort, capsys):
    assert main(["validate-manifest", str(cohort)]) == 0
    out, err = capsys.readouterr()
    # 6 subjects x 2 scans, 2 folds
    assert out == f"{cohort}: ok, 12 scans, 6 subjects, 2 folds, 0 problems\n"
    assert err == ""


def test_problems_print_one_line_each_and_exit_1(cohort, capsys):
    m = json.loads(cohort.read_text())
    (cohort.parent / m["training"][0]["label"]).unlink()
    save_nifti(cohort.parent / m["training"][1]["attn"], np.full((8, 8, 8), np.nan), 0.1)
    assert main(["validate-manifest", str(cohort), "--no-hashes"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"label.nii.gz: file not found (named by {cohort}:training[0].label)")
    assert lines[1].endswith("attn.nii.gz: 512 NaN/Inf voxels")
    assert err == f"{cohort}: 2 problems\n" and "Traceback" not in out + err


def test_hash_problems_only_without_no_hashes(cohort, capsys):
    m = json.loads(cohort.read_text())
    save_nifti(cohort.parent / m["training"][0]["attn"], np.full((8, 8, 8), 0.03), 0.1)
    assert main(["validate-manifest", str(cohort)]) == 1
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "sha256 mismatch" in out
    assert main(["validate-manifest", str(cohort), "--no-hashes"]) == 0


def test_missing_or_garbage_manifest(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["validate-manifest", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{missing}: file not found\n" and "Traceback" not in err
    garbage = tmp_path / "garbage.json"
    garbage.write_text("[1, 2")
    assert main(["validate-manifest", str(garbage)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "not valid JSON" in out and "Traceback" not in err
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[]")
    assert main(["validate-manifest", str(wrong)]) == 1
    out, _ = capsys.readouterr()
    assert out == f"{wrong}: [] is not of type 'object'\n"
