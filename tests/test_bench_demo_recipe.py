"""bench/demo_recipe.py: its settings parse as bundle values, and a folder that is no demo run is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
from testkit import BENCH_DIR, bench_module

BENCH = BENCH_DIR / "demo_recipe.py"


def test_settings_are_json_values_and_bad_runs_are_refused(tmp_path):
    demo_recipe = bench_module("demo_recipe")
    assert demo_recipe._setting("blob_weight=1.0") == ("blob_weight", 1.0)
    assert demo_recipe._setting('network_args#channels=[8,16]') == ("network_args#channels", [8, 16])
    assert demo_recipe._setting("modality=attn") == ("modality", "attn")
    with pytest.raises(Exception, match="KEY=JSON"):
        demo_recipe._setting("blob_weight")
    done = subprocess.run([sys.executable, str(BENCH), str(tmp_path / "nothing"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not found" in done.stderr
    assert not (tmp_path / "out").exists()
