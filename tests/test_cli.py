from __future__ import annotations

import subprocess
import sys

from dfseg.cli import COMMANDS, main


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "dfseg.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["no-such-command"]) == 2
