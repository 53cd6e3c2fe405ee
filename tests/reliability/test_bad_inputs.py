"""Every bad-input case against every entry point that can meet it (issue 9, item 1).

For each (case, entry point): a non-zero exit, exactly one line on stderr naming the file and the
problem, no traceback (unless ``--debug``), and no partial output (the output folder is absent or
empty, or, when it held results before, unchanged).

``dfseg`` commands run in-process through :func:`dfseg.cli.main` (what the console script calls),
so stdout/stderr are exactly what a user sees; one test runs the real executable to prove it.
Bundles run ``python -m monai.bundle run`` in a subprocess (slow).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402
from corpus import CASES, Expect, make_cohort, snapshot, visible_files  # noqa: E402

from dfseg.cli import main  # noqa: E402


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``dfseg <argv>`` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


_PROGRESS = re.compile(r"\d+%\|.*\|")


def error_lines(err: str) -> list[str]:
    """stderr lines other than tqdm progress bars (``test_no_progress_bar_when_not_a_tty`` checks
    those separately: a bar on a terminal is fine, in a log file it is noise)."""
    parts = [p for line in err.splitlines() for p in line.split("\r")]
    return [p for p in parts if p.strip() and not _PROGRESS.search(p)]


def assert_one_line_error(rc: int, out: str, err: str, expect: Expect, *, command: str) -> str:
    """The common contract; returns the error line."""
    assert rc != 0, f"exit 0 on bad input; stdout: {out!r}"
    assert "Traceback" not in out + err, err
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith(f"dfseg {command}: error: "), line
    assert expect.matches(line), f"{line!r} does not name {expect.where.name} and one of {expect.any_of}"
    return line


@pytest.fixture(scope="module")
def clean_cohort(tmp_path_factory) -> corpus.Cohort:
    """One clean cohort per module (the manifest's paths are relative, so a copy is a cohort too)."""
    return make_cohort(tmp_path_factory.mktemp("clean") / "cohort")


@pytest.fixture
def cohort(clean_cohort: corpus.Cohort, tmp_path: Path) -> corpus.Cohort:
    """A private copy of the clean cohort, for a case to break."""
    root = tmp_path / "cohort"
    shutil.copytree(clean_cohort.root, root)
    return corpus.Cohort(root, root / clean_cohort.manifest.name, root / clean_cohort.calibration.name,
                         root / clean_cohort.predictions.name)


# -------------------------------------------------------------------------------------------------
# dfseg validate-manifest: prints every problem on stdout (one line each), a summary line on stderr

VALIDATE_CASES = [name for name in CASES if name != "calibration_other_spectrum"]


def test_clean_corpus_validates(cohort, capsys):
    rc, out, err = run_cli(["validate-manifest", str(cohort.manifest)], capsys)
    assert rc == 0, out + err
    assert "ok, 8 scans, 4 subjects, 2 folds, 0 problems" in out


@pytest.mark.parametrize("case", VALIDATE_CASES)
def test_validate_manifest(case, cohort, capsys):
    expect = CASES[case](cohort)
    before = snapshot(cohort.root)
    rc, out, err = run_cli(["validate-manifest", str(cohort.manifest)], capsys)
    assert rc == 1
    assert "Traceback" not in out + err
    # by design it lists every problem on stdout and ends with one summary line on stderr
    assert err.strip().splitlines() == [f"{cohort.manifest}: {len(out.strip().splitlines())} problem"
                                        + ("s" if len(out.strip().splitlines()) != 1 else "")]
    hits = [line for line in out.splitlines() if expect.matches(line)]
    assert hits, f"no stdout line names {expect.where.name} and one of {expect.any_of}:\n{out}"
    assert snapshot(cohort.root) == before  # a validator writes nothing


# -------------------------------------------------------------------------------------------------
# dfseg evaluate: reads predictions, label, lung_mask and the manifest

#: (case, key it breaks); sidecars and attn/df are never read by evaluate
EVALUATE_CASES = [
    ("missing_file", "label"), ("missing_file", "prediction"), ("truncated_nifti", "label"),
    ("truncated_nifti", "prediction"), ("corrupt_nifti", "prediction"), ("corrupt_nifti", "lung_mask"),
    ("wrong_dimensionality", "prediction"), ("wrong_dimensionality", "label"), ("nan_voxels", "prediction"),
    ("inf_voxels", "prediction"), ("huge_header", "prediction"), ("spacing_mismatch", "prediction"),
    ("affine_mismatch", "prediction"), ("spacing_mismatch", "label"), ("nonbinary_label", "label"),
    ("empty_label", "label"), ("duplicate_scan_ids", "manifest"), ("subject_leakage", "manifest"),
]

def _evaluate_argv(c: corpus.Cohort, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--predictions", str(c.predictions), "--manifest", str(c.manifest), "-o", str(out),
            "--split", "all", "--bootstrap", "5", "--quiet", *extra]


@pytest.mark.parametrize(("case", "key"), EVALUATE_CASES)
def test_evaluate(case, key, cohort, tmp_path, capsys):
    expect = CASES[case](cohort, key)
    out_dir = tmp_path / "eval"
    rc, out, err = run_cli(_evaluate_argv(cohort, out_dir), capsys)
    assert_one_line_error(rc, out, err, expect, command="evaluate")
    assert visible_files(out_dir) == []


def test_evaluate_overwrite_keeps_old_results_on_bad_input(cohort, tmp_path, capsys):
    """``--overwrite`` with bad input must not have deleted the previous results."""
    out_dir = tmp_path / "eval"
    rc, out, err = run_cli(_evaluate_argv(cohort, out_dir), capsys)
    assert rc == 0, err
    before = snapshot(out_dir)
    assert "metrics.json" in before
    expect = CASES["nan_voxels"](cohort, "prediction")
    rc, out, err = run_cli(_evaluate_argv(cohort, out_dir, "--overwrite"), capsys)
    assert_one_line_error(rc, out, err, expect, command="evaluate")
    assert snapshot(out_dir) == before


def test_evaluate_debug_shows_traceback(cohort, tmp_path, capsys):
    CASES["missing_file"](cohort, "prediction")
    rc, out, err = run_cli(["--debug", *_evaluate_argv(cohort, tmp_path / "eval")], capsys)
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("dfseg evaluate: error: ")


def test_console_script_prints_one_line(cohort, tmp_path):
    """The real executable (a fresh interpreter) behaves as the in-process runs above."""
    expect = CASES["corrupt_nifti"](cohort, "prediction")
    code = "import sys; from dfseg.cli import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, *_evaluate_argv(cohort, tmp_path / "eval")],
                       capture_output=True, text=True, timeout=120)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, expect, command="evaluate")


# -------------------------------------------------------------------------------------------------
# dfseg preprocess --domain volume (reconstructions + calibration -> decomposed volumes)

PREPROCESS_CASES = list(CASES)

def _preprocess_argv(c: corpus.Cohort, out: Path, *extra: str) -> list[str]:
    return ["preprocess", str(c.manifest), "-o", str(out), "--calibration", str(c.calibration),
            "--domain", "volume", *extra]


def test_preprocess_clean_corpus(cohort, tmp_path, capsys):
    rc, out, err = run_cli(_preprocess_argv(cohort, tmp_path / "pre"), capsys)
    assert rc == 0, err
    assert (tmp_path / "pre" / "manifest.json").is_file()


@pytest.mark.parametrize("case", PREPROCESS_CASES)
def test_preprocess(case, cohort, tmp_path, capsys):
    expect = CASES[case](cohort)
    out_dir = tmp_path / "pre"
    rc, out, err = run_cli(_preprocess_argv(cohort, out_dir), capsys)
    assert_one_line_error(rc, out, err, expect, command="preprocess")
    assert visible_files(out_dir) == [], "partial output left behind"


def test_preprocess_overwrite_keeps_old_results_on_bad_input(cohort, tmp_path, capsys):
    out_dir = tmp_path / "pre"
    rc, out, err = run_cli(_preprocess_argv(cohort, out_dir), capsys)
    assert rc == 0, err
    before = snapshot(out_dir)
    expect = CASES["nan_voxels"](cohort)
    rc, out, err = run_cli(_preprocess_argv(cohort, out_dir, "--overwrite"), capsys)
    assert_one_line_error(rc, out, err, expect, command="preprocess")
    assert snapshot(out_dir) == before


def test_no_progress_bar_when_not_a_tty(cohort, tmp_path, capsys):
    """Piped stderr (logs, CI) gets no progress bar: only errors go there."""
    rc, out, err = run_cli(_preprocess_argv(cohort, tmp_path / "pre"), capsys)
    assert rc == 0
    assert err == ""


# -------------------------------------------------------------------------------------------------
# bundles: python -m monai.bundle run (subprocess), a few representative cases

_spec = importlib.util.spec_from_file_location("bundle_helpers", Path(__file__).parents[1] / "bundles" / "helpers.py")
bundle_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bundle_helpers)
sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from cohort import make_cohort as make_preprocessed_cohort  # noqa: E402

BUNDLE = "dfseg_attention_unet"
BUNDLE_CASES = ["missing_file", "corrupt_nifti", "nan_voxels"]


def _bundle_train(manifest: Path, out: Path) -> list[str]:
    return bundle_helpers.bundle_cmd(
        BUNDLE, "train.yaml", "--manifest", str(manifest), "--output_dir", str(out), "--max_epochs", "1",
        *bundle_helpers.COMMON, *bundle_helpers.TRAIN, *bundle_helpers.TINY[BUNDLE])


def bundle_error_line(stderr: str) -> str:
    """The last non-empty stderr line of a failed bundle run."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.slow
@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_bundle_train_bad_input(case, tmp_path):
    manifest = make_preprocessed_cohort(tmp_path / "cohort", n_subjects=4)
    c = corpus.Cohort(manifest.parent, manifest, manifest.parent / "none.json", manifest.parent / "predictions")
    expect = CASES[case](c, "attn")
    out_dir = tmp_path / "run"
    r = subprocess.run(_bundle_train(manifest, out_dir), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    last = bundle_error_line(r.stderr)
    # what a user sees last must name the file and the problem ...
    assert expect.matches(last), f"last stderr line: {last!r}"
    # ... with no traceback and nothing written
    assert "Traceback" not in r.stderr
    assert visible_files(out_dir) == []


# -------------------------------------------------------------------------------------------------
# dfseg import: a lab's folder of scans in other formats (MHA, DICOM series, TIFF stack)

import numpy as np  # noqa: E402
from image_formats import dicom_values, write_dicom_series, write_mha, write_tiff  # noqa: E402

from dfseg.data.importer import TEMPLATE  # noqa: E402
from dfseg.io import write_json  # noqa: E402

_IMPORT_SHAPE = (6, 5, 8)


def _lab_folder(root: Path) -> tuple[Path, Path]:
    """Two clean scans (MHA; a DICOM attn folder with an MHA df) and an acquisition template."""
    rng = np.random.default_rng(0)
    for scan in ("a", "b"):
        write_mha(root / "src" / scan / "df.mha", rng.uniform(0, 0.02, (*_IMPORT_SHAPE, 4)).astype(np.float32))
    write_mha(root / "src" / "a" / "attn.mha", rng.uniform(0, 0.05, _IMPORT_SHAPE).astype(np.float32))
    write_dicom_series(root / "src" / "b" / "attn", dicom_values(rng, _IMPORT_SHAPE))
    template = root / "acq.json"
    write_json(template, TEMPLATE)
    return root / "src", template


def _break_import(case: str, src: Path, template: Path) -> Expect:
    """Break the lab folder as ``case`` says; return what the one error line must name."""
    attn, df = src / "a" / "attn.mha", src / "a" / "df.mha"
    if case == "missing_df":
        df.unlink()
        return Expect(src / "a", ("no df",))
    if case == "corrupt_mha":
        attn.write_bytes(attn.read_bytes()[:120])
        return Expect(attn, ("cannot read", "truncated"))
    if case == "nan_voxels":
        write_mha(attn, np.full(_IMPORT_SHAPE, np.nan, np.float32))
        return Expect(attn, ("nan/inf",))
    if case == "spacing_mismatch":
        write_mha(df, np.zeros((*_IMPORT_SHAPE, 4), np.float32), spacing=(0.5, 0.5, 0.5))
        return Expect(df, ("voxel spacing",))
    if case == "channels_disagree_with_sidecar":
        write_mha(df, np.zeros((*_IMPORT_SHAPE, 3), np.float32))
        return Expect(df, ("orientation channels",))
    if case == "two_dicom_series":
        write_dicom_series(src / "b" / "attn", dicom_values(np.random.default_rng(1), _IMPORT_SHAPE),
                           series_uid="1.2.826.0.1.3680043.2.1125.9")
        for k in range(_IMPORT_SHAPE[2]):  # the second series wrote over the first's names: rename it back in
            (src / "b" / "attn" / f"slice{k:03d}.dcm").rename(src / "b" / "attn" / f"second{k:03d}.dcm")
        write_dicom_series(src / "b" / "attn", dicom_values(np.random.default_rng(2), _IMPORT_SHAPE))
        return Expect(src / "b" / "attn", ("2 dicom series",))
    if case == "tiff_without_voxel_size":
        attn.unlink()
        write_tiff(src / "a" / "attn.tif", np.zeros(_IMPORT_SHAPE, np.float32))
        return Expect(src / "a" / "attn.tif", ("without a voxel size",))
    if case == "garbage_sidecar":
        (src / "a" / "sidecar.json").write_text("{kvp: 70")
        return Expect(src / "a" / "sidecar.json", ("not valid json",))
    raise AssertionError(case)


IMPORT_CASES = ["missing_df", "corrupt_mha", "nan_voxels", "spacing_mismatch", "channels_disagree_with_sidecar",
                "two_dicom_series", "tiff_without_voxel_size", "garbage_sidecar"]


def test_import_clean_lab_folder(tmp_path, capsys):
    src, template = _lab_folder(tmp_path)
    rc, out, err = run_cli(["import", str(src), "-o", str(tmp_path / "out"), "--sidecar-template", str(template)],
                           capsys)
    assert rc == 0, err
    assert out.endswith("inference manifest, 2 scans, 2 subjects, 0 labelled\n") and err == ""


@pytest.mark.parametrize("case", IMPORT_CASES)
def test_import(case, tmp_path, capsys):
    src, template = _lab_folder(tmp_path)
    expect = _break_import(case, src, template)
    before = snapshot(src)
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(["import", str(src), "-o", str(out_dir), "--sidecar-template", str(template)], capsys)
    assert_one_line_error(rc, out, err, expect, command="import")
    assert visible_files(out_dir) == [], "partial output left behind"
    assert snapshot(src) == before  # the scans are never touched
