"""Test-suite settings shared by every test directory.

Hypothesis runs derandomized by default, so `make test` (and CI) tries the same examples on every
run and a red build always reproduces. To explore new examples, as a fuzzing session would:

    HYPOTHESIS_PROFILE=explore .venv/bin/python -m pytest tests/reliability/test_fuzz.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import settings

# shared test helpers (tests/testkit.py): tests/ has no __init__.py and pytest imports in importlib mode
sys.path.insert(0, str(Path(__file__).parent))

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
