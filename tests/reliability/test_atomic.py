"""Atomic outputs (issue 9, item 2): an interrupted write leaves the old file or the new one, and
every command that writes refuses an output that already holds results unless told otherwise.

Two kinds of interruption: an exception raised inside the writer (the in-process crash, e.g. a
full disk or a bug), and SIGKILL of a process that writes large files in a loop (the power cut:
no ``finally`` runs). After either, the target must be absent, the old content, or the complete new
content; leftovers are hidden temporaries (``.<name>.<random>.tmp...``) that no result glob matches.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from corpus import make_cohort, snapshot  # noqa: E402

from dfseg.cli import main  # noqa: E402
from dfseg.errors import OutputExistsError  # noqa: E402
from dfseg.io import (  # noqa: E402
    atomic_directory,
    atomic_path,
    atomic_write,
    load_nifti,
    read_json,
    save_nifti,
    write_json,
)


class Crash(Exception):
    """Stands for anything that stops a write half-way."""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _is_hidden_temp(name: str) -> bool:
    return name.startswith(".") and ".tmp" in name


# ------------------------------------------------------------------------------------------------
# in-process crashes inside each writer


def test_atomic_write_crash_keeps_old_file(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old\n")
    with pytest.raises(Crash), atomic_write(target, "w") as fh:
        fh.write("new, half")
        raise Crash
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path, {"report.md"}) == []


def test_atomic_write_crash_without_old_file_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    with pytest.raises(Crash), atomic_write(target, "w") as fh:
        fh.write("{")
        raise Crash
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def _old_directory(folder: Path) -> Path:
    (folder / "scans").mkdir(parents=True)
    (folder / "scans" / "old.txt").write_text("old\n")
    return folder


def test_atomic_directory_crash_leaves_nothing(tmp_path):
    out = tmp_path / "cohort"
    with pytest.raises(Crash), atomic_directory(out) as tmp:
        _old_directory(tmp)
        raise Crash
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_crash_keeps_old_directory(tmp_path):
    out = _old_directory(tmp_path / "cohort")
    with pytest.raises(Crash), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "manifest.json").write_text("{")
        raise Crash
    assert _leftovers(tmp_path, {"cohort"}) == []
    assert snapshot(out) == {"scans/old.txt": _sha(out / "scans" / "old.txt")}


def test_atomic_directory_success_replaces(tmp_path):
    out = _old_directory(tmp_path / "cohort")
    with atomic_directory(out, overwrite=True) as tmp:
        assert tmp.parent == out.parent.resolve() and _is_hidden_temp(tmp.name) and not any(tmp.iterdir())
        (tmp / "manifest.json").write_text("{}\n")
        assert (out / "scans" / "old.txt").is_file()  # the old directory stays until the block succeeds
    assert _leftovers(tmp_path, {"cohort"}) == []
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_atomic_directory_refuses_non_empty_without_overwrite(tmp_path):
    out = _old_directory(tmp_path / "cohort")
    with pytest.raises(OutputExistsError, match="--overwrite"), atomic_directory(out):
        pytest.fail("the block must not run")
    assert _leftovers(tmp_path, {"cohort"}) == [] and (out / "scans" / "old.txt").is_file()
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:  # an empty directory is no result to protect
        (tmp / "new.txt").write_text("new\n")
    assert (tmp_path / "empty" / "new.txt").is_file()


def test_atomic_path_crash_keeps_old_file(tmp_path):
    target = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, target)
    old = _sha(target)
    with pytest.raises(Crash), atomic_path(target) as tmp:
        torch.save({"w": torch.ones(1000)}, tmp)
        raise Crash
    assert _sha(target) == old
    assert _leftovers(tmp_path, {"model.pt"}) == []


def test_atomic_path_keeps_the_suffix_writers_need(tmp_path):
    with atomic_path(tmp_path / "fig.png") as tmp:
        assert tmp.name.endswith(".png") and _is_hidden_temp(tmp.name)
        tmp.write_bytes(b"x")
    assert (tmp_path / "fig.png").read_bytes() == b"x"


def test_save_nifti_crash_mid_stream_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "attn.nii.gz"
    old = np.full((8, 8, 8), 0.5, np.float32)
    save_nifti(target, old, 0.1)
    old_sha = _sha(target)
    real_write = gzip.GzipFile.write

    def half_then_crash(self, data):
        real_write(self, bytes(data)[: len(data) // 2])
        raise Crash

    monkeypatch.setattr(gzip.GzipFile, "write", half_then_crash)
    with pytest.raises(Crash):
        save_nifti(target, np.ones((16, 16, 16), np.float32), 0.1)
    monkeypatch.undo()
    assert _sha(target) == old_sha
    np.testing.assert_array_equal(load_nifti(target)[0], old)
    assert _leftovers(tmp_path, {"attn.nii.gz"}) == []


@pytest.mark.parametrize("writer", ["write_json", "save_nifti", "atomic_write", "atomic_path"])
def test_crash_at_fsync_keeps_old_file(writer, tmp_path, monkeypatch):
    """The last moment before the rename: data fully written to the temporary, fsync fails."""
    target = tmp_path / ("out.nii.gz" if writer == "save_nifti" else "out.json")
    write_json(target, {"v": "old"}) if writer != "save_nifti" else save_nifti(target, np.zeros((4, 4, 4)), 1.0)
    old = _sha(target)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        if writer == "write_json":
            write_json(target, {"v": "new"})
        elif writer == "save_nifti":
            save_nifti(target, np.ones((4, 4, 4)), 1.0)
        elif writer == "atomic_write":
            with atomic_write(target, "w") as fh:
                fh.write('{"v": "new"}')
        else:
            with atomic_path(target) as tmp:
                tmp.write_text('{"v": "new"}')
    monkeypatch.undo()
    assert _sha(target) == old
    assert _leftovers(tmp_path, {target.name}) == []


# ------------------------------------------------------------------------------------------------
# SIGKILL of a process writing in a loop

_WRITER = textwrap.dedent("""
    import sys, numpy as np, torch
    from pathlib import Path
    from dfseg.io import atomic_path, save_nifti, write_json
    folder = Path(sys.argv[1])
    SHAPE = (48, 48, 48, 2)
    arrays = [np.random.default_rng(k).random(SHAPE, dtype=np.float32) for k in (0, 1)]
    i = 0
    while True:
        k = i % 2
        save_nifti(folder / "df.nii.gz", arrays[k], 0.1)
        write_json(folder / "records.json", {"k": k, "values": arrays[k][:16, :16, :16, 0].ravel().tolist()})
        with atomic_path(folder / "last.pt") as tmp:
            torch.save({"k": k, "w": torch.from_numpy(arrays[k][:32])}, tmp)
        i += 1
        print(i, flush=True)
""")

SHAPE = (48, 48, 48, 2)
#: seconds after the first completed round at which the writer is killed (6 kill points)
KILL_AFTER_S = (0.0, 0.05, 0.13, 0.29, 0.47, 0.71)


@pytest.fixture(scope="module")
def reference_hashes(tmp_path_factory) -> dict[str, set[str]]:
    """sha256 of every complete version the writer can leave (two per file)."""
    folder = tmp_path_factory.mktemp("ref")
    code = _WRITER.replace("while True:", "for i in range(2):").replace("i += 1\n", "")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, capture_output=True, timeout=120)
    hashes: dict[str, set[str]] = {}
    # torch.save names its zip records after the (temporary) file name, so checkpoints are compared
    # by content below, not by bytes
    for name in ("df.nii.gz", "records.json"):
        hashes[name] = {_sha(folder / name)}
    code_one = code.replace("for i in range(2):", "for i in range(1):")
    folder0 = tmp_path_factory.mktemp("ref0")
    subprocess.run([sys.executable, "-c", code_one, str(folder0)], check=True, capture_output=True, timeout=120)
    for name in hashes:
        hashes[name].add(_sha(folder0 / name))
    assert all(len(h) == 2 for h in hashes.values()), "the two versions must differ for the test to mean anything"
    return hashes


@pytest.mark.slow
@pytest.mark.parametrize("delay", KILL_AFTER_S)
def test_sigkill_leaves_old_or_new(delay, tmp_path, reference_hashes):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # one complete round, so the targets exist
        assert first.strip() == "1", proc.stderr.read()
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    for name, versions in reference_hashes.items():
        assert _sha(tmp_path / name) in versions, f"{name} is neither the old nor the new version"
    # each file is loadable through dfseg's readers
    assert load_nifti(tmp_path / "df.nii.gz")[0].shape == SHAPE
    assert read_json(tmp_path / "records.json")["k"] in (0, 1)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    expected = np.random.default_rng(ckpt["k"]).random(SHAPE, dtype=np.float32)[:32]
    np.testing.assert_array_equal(ckpt["w"].numpy(), expected)
    # a kill mid-write may leave a temporary (nothing runs after SIGKILL), but only a hidden one
    others = _leftovers(tmp_path, {*reference_hashes, "last.pt"})
    assert all(_is_hidden_temp(n) for n in others), others
    assert sorted(p.name for p in tmp_path.glob("[!.]*")) == ["df.nii.gz", "last.pt", "records.json"]


# ------------------------------------------------------------------------------------------------
# output directories/files that already hold results are refused without --overwrite/--resume




def _refusal(argv: list[str], capsys) -> str:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "--overwrite" in lines[0], lines[0]
    return lines[0]


def _occupied(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "previous_result.json").write_text('{"keep": true}\n')
    return snapshot(folder)


def test_simulate_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "cohort"
    before = _occupied(out)
    line = _refusal(["simulate", "--out", str(out), "--subjects", "1", "--size", "16", "--angles", "8"], capsys)
    assert str(out) in line
    assert snapshot(out) == before


def test_calibrate_refuses_existing_file(tmp_path, capsys):
    out = tmp_path / "calibration.json"
    out.write_text('{"old": 1}\n')
    (tmp_path / "phantoms").mkdir()
    line = _refusal(["calibrate", str(tmp_path / "phantoms"), "-o", str(out)], capsys)
    assert str(out) in line and "already exists" in line
    assert json.loads(out.read_text()) == {"old": 1}


def test_preprocess_refuses_non_empty_out(tmp_path, capsys):
    c = make_cohort(tmp_path / "cohort")
    out = tmp_path / "pre"
    before = _occupied(out)
    line = _refusal(["preprocess", str(c.manifest), "-o", str(out), "--calibration", str(c.calibration),
                     "--domain", "volume"], capsys)
    assert str(out) in line
    assert snapshot(out) == before


def test_evaluate_refuses_non_empty_out(tmp_path, capsys):
    c = make_cohort(tmp_path / "cohort")
    out = tmp_path / "eval"
    before = _occupied(out)
    line = _refusal(["evaluate", "--predictions", str(c.predictions), "--manifest", str(c.manifest), "-o", str(out),
                     "--split", "all", "--bootstrap", "5", "--quiet"], capsys)
    assert str(out) in line
    assert snapshot(out) == before


def test_register_refuses_existing_file(tmp_path, capsys):
    fixed, moving, out = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", tmp_path / "reg.nii.gz"
    label = np.zeros((12, 12, 12), np.uint8)
    label[4:8, 4:8, 4:8] = 1
    save_nifti(fixed, label, 0.1)
    save_nifti(moving, label, 0.1)
    save_nifti(out, np.zeros((12, 12, 12), np.uint8), 0.1)
    old = _sha(out)
    line = _refusal(["register", "--fixed", str(fixed), "--moving", str(moving), "-o", str(out)], capsys)
    assert str(out) in line
    assert _sha(out) == old


def test_model_card_refuses_existing_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_card.json").write_text('{"old": 1}\n')
    before = snapshot(run)
    line = _refusal(["model-card", str(run)], capsys)
    assert "model_card.json" in line
    assert snapshot(run) == before


def test_save_nifti_bytes_do_not_depend_on_the_path(tmp_path):
    """The temporary file name must not reach the gzip header: same array, same bytes, any path."""
    array = np.random.default_rng(0).random((6, 5, 4), dtype=np.float32)
    save_nifti(tmp_path / "a.nii.gz", array, 0.1)
    save_nifti(tmp_path / "sub" / "other_name.nii.gz", array, 0.1)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "sub" / "other_name.nii.gz").read_bytes()


def test_text_outputs_are_utf8_under_a_c_locale(tmp_path):
    """A C library (GDCM) can switch the process to the C locale; a report with a dash must still be written."""
    code = ("import locale, sys\nlocale.setlocale(locale.LC_ALL, 'C')\nfrom dfseg.io import atomic_write\n"
            "with atomic_write(sys.argv[1], 'w') as fh:\n    fh.write('0.5\\u20131 mm')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING")}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "report.md")], capture_output=True,
                            text=True, env={**env, "PYTHONUTF8": "0"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.md").read_bytes() == "0.5\u20131 mm".encode()
