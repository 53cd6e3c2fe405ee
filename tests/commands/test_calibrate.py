"""``dfseg calibrate`` end to end, refusals and one-line errors."""

from __future__ import annotations

import json
import shutil

from dfseg.cli import main
from dfseg.simulate.phantoms import write_phantom_scans


def test_calibrate_cli(tmp_path, capsys):
    ph = tmp_path / "phantoms"
    write_phantom_scans(ph, {"kvp": 70.0, "noise": False}, seed=0)
    out = tmp_path / "calibration.json"
    assert main(["calibrate", str(ph), "-o", str(out)]) == 0
    cal = json.loads(out.read_text())
    assert cal["reference"]["kvp"] == 70.0 and "n" in cal["energy_exponent"]
    assert main(["calibrate", str(ph), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert main(["calibrate", str(ph), "-o", str(out), "--overwrite"]) == 0
    shutil.rmtree(ph / "microspheres_80kvp")
    assert main(["calibrate", str(ph), "-o", str(tmp_path / "c2.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two tube voltages" in err[0]
    assert not (tmp_path / "c2.json").exists()
