from __future__ import annotations

import json

from dfseg.cli import main
from dfseg.commands import doctor


def test_doctor_reports_versions_and_nothing_missing(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == []
    assert report["packages"]["monai"].startswith("1.")
    assert report["cpu_count"] >= 1
    assert report["disk"]["free_gb"] > 0


def test_doctor_flags_a_missing_package(monkeypatch, capsys):
    monkeypatch.setitem(doctor.REQUIRED, "dfseg_no_such_module", "no-such-dist")
    assert main(["doctor"]) == 1
    assert "missing: no-such-dist" in capsys.readouterr().out
