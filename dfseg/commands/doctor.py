"""``dfseg doctor``: what this environment has, and what dfseg still needs."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from dfseg import __version__

HELP = "report the environment (versions, CUDA, threads, disk) and what is missing"

#: import name -> distribution name, for everything dfseg needs at run time
REQUIRED = {
    "torch": "torch",
    "monai": "monai",
    "ignite": "pytorch-ignite",
    "nibabel": "nibabel",
    "SimpleITK": "SimpleITK",
    "numpy": "numpy",
    "scipy": "scipy",
    "spekpy": "spekpy",
    "xraydb": "xraydb",
    "tensorboard": "tensorboard",
    "yaml": "pyyaml",
    "fire": "fire",
    "jsonschema": "jsonschema",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
}
OPTIONAL = {"pytest": "pytest", "hypothesis": "hypothesis", "ruff": "ruff"}
#: free disk below which a demo run (cohort, checkpoints, report) may not fit
MIN_FREE_GB = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--path", default=".", help="directory whose free disk space to report (default: .)")
    parser.add_argument("--require-cuda", action="store_true",
                        help="exit 1 unless torch sees a CUDA device (checks a container: docker run --gpus all "
                             "dfseg:0.1.0 doctor --require-cuda)")


def _version(module_name: str) -> str | None:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - any import failure means "missing" here
        return None
    return str(getattr(module, "__version__", "installed"))


def collect(path: str | os.PathLike = ".") -> dict:
    """Gather versions, accelerator, threads and disk; list what is missing."""
    packages = {dist: _version(mod) for mod, dist in REQUIRED.items()}
    optional = {dist: _version(mod) for mod, dist in OPTIONAL.items()}
    missing = [dist for dist, ver in packages.items() if ver is None]
    report: dict = {
        "dfseg": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        "optional": optional,
        "missing": missing,
        "warnings": [],
    }
    if packages["torch"]:
        import torch  # reason: doctor runs without torch and reports it missing

        cuda = torch.cuda.is_available()
        report["torch_threads"] = torch.get_num_threads()
        report["cuda"] = {
            "available": cuda,
            "torch_cuda_build": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        }
        if not cuda:
            report["warnings"].append("no CUDA device: training and simulation run on the CPU (slower, AMP off)")
    if packages["spekpy"] and packages["xraydb"]:
        try:
            # reason: importing physics is part of the check (doctor runs when xraydb or SpekPy is broken)
            from dfseg.physics import mu, tube_spectrum

            spectrum = tube_spectrum(70.0)
            report["physics"] = {
                "spectrum_70kvp_mean_kev": round(float((spectrum.energies_kev * spectrum.weights).sum()), 2),
                "water_mu_30kev_per_mm": round(float(mu("water", [30.0])[0]), 5),
            }
        except Exception as err:  # noqa: BLE001 - reported, not raised
            report["warnings"].append(f"physics self-check failed: {type(err).__name__}: {err}")
    usage = shutil.disk_usage(Path(path).resolve())
    report["disk"] = {"path": str(Path(path).resolve()), "free_gb": round(usage.free / 2**30, 1)}
    if usage.free / 2**30 < MIN_FREE_GB:
        report["warnings"].append(f"only {usage.free / 2**30:.1f} GB free at {path}: a demo run needs about {MIN_FREE_GB} GB")
    return report


def run(args: argparse.Namespace) -> int:
    report = collect(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"dfseg {report['dfseg']}  python {report['python']}  {report['platform']}")
        print(f"cpus {report['cpu_count']}  torch threads {report.get('torch_threads', '-')}")
        cuda = report.get("cuda", {})
        print(f"cuda: {'yes ' + ', '.join(cuda['devices']) if cuda.get('available') else 'no'}")
        for dist, ver in {**report["packages"], **report["optional"]}.items():
            print(f"  {dist:<14} {ver or 'MISSING'}")
        if "physics" in report:
            print(f"physics: {report['physics']}")
        print(f"disk: {report['disk']['free_gb']} GB free at {report['disk']['path']}")
        for w in report["warnings"]:
            print(f"warning: {w}")
        if report["missing"]:
            print(f"missing: {', '.join(report['missing'])} (run `make install` or `pip install -e .`)")
        else:
            print("ok: everything dfseg needs is installed")
    if args.require_cuda and not report.get("cuda", {}).get("available"):
        build = report.get("cuda", {}).get("torch_cuda_build")
        print(f"error: no CUDA device visible to torch (torch CUDA build: {build or 'none, a CPU-only torch'}); "
              "in Docker: run with --gpus all, and check the host driver with nvidia-smi", file=sys.stderr)
        return 1
    return 1 if report["missing"] else 0
