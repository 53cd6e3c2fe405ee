from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dfseg.cli import COMMANDS, _command_parser, main

#: sub-commands that write a file or folder: they take -o/--out
WRITES = {"simulate", "import", "calibrate", "preprocess", "register", "cv", "evaluate", "predict", "study",
          "model-card", "demo", "train", "export", "retrieve"}
#: sub-commands that only print
PRINTS = {"validate-manifest", "doctor"}
#: sub-commands that show progress bars: they take --no-progress
PROGRESS = {"simulate", "preprocess", "cv", "evaluate", "predict", "study", "demo", "train", "retrieve"}
#: the smallest argument lists of this repository's commands, old output spellings included
MINIMAL = {"simulate": [], "calibrate": ["phantoms"], "preprocess": ["m.json", "--calibration", "c.json"],
           "register": ["--fixed", "f.nii.gz", "--moving", "m.nii.gz"], "cv": ["--bundle", "b", "--manifest", "m.json"],
           "evaluate": ["--predictions", "p", "--manifest", "m.json"], "predict": [], "import": ["src"],
           "model-card": ["run"], "demo": [], "retrieve": ["layout.yaml"]}


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "dfseg.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_spells_output_and_progress_the_same(name):
    assert name in WRITES | PRINTS, f"dfseg {name}: add it to WRITES or PRINTS (and PROGRESS if it shows bars)"
    parser, _ = _command_parser(name)
    options = parser._option_string_actions
    if name in WRITES:
        assert "-o" in options and options["-o"] is options.get("--out"), f"dfseg {name}: -o and --out differ"
        assert options["-o"].dest == "out", f"dfseg {name}: -o/--out should be read as args.out"
    if name in PROGRESS:
        flag = options.get("--no-progress")
        assert flag is not None and flag.dest == "no_progress" and flag.const is True and flag.default is False, \
            f"dfseg {name}: no --no-progress switch"


@pytest.mark.parametrize("name", sorted(MINIMAL))
@pytest.mark.parametrize("spelling", ["-o", "--out", "--output"])
def test_output_spellings_land_in_args_out(name, spelling):
    parser, _ = _command_parser(name)
    args = parser.parse_args([*MINIMAL[name], spelling, "dest"])
    assert str(args.out) == "dest" and Path(args.out) == Path("dest")
    assert getattr(args, "no_progress", False) is False


@pytest.mark.parametrize("name", sorted(MINIMAL.keys() & PROGRESS))
def test_no_progress_switch(name):
    parser, _ = _command_parser(name)
    assert parser.parse_args([*MINIMAL[name], "-o", "x", "--no-progress"]).no_progress is True
    assert parser.parse_args([*MINIMAL[name], "-o", "x"]).no_progress is False


def test_old_quiet_switch_of_evaluate_still_works():
    parser, _ = _command_parser("evaluate")
    assert parser.parse_args([*MINIMAL["evaluate"], "-o", "x", "--quiet"]).no_progress is True
