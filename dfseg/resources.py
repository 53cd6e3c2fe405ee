"""Where dfseg finds the files it ships beside the package (the MONAI bundles)."""

from __future__ import annotations

import os
from pathlib import Path

from dfseg.errors import DfsegError

BUNDLES = ("dfseg_attention_unet", "dfseg_swinunetr")


def bundles_root() -> Path:
    """The ``bundles/`` folder: ``$DFSEG_BUNDLES``, else the repository checkout dfseg runs from,
    else ``/opt/dfseg/bundles`` (the Docker image)."""
    candidates = []
    if os.environ.get("DFSEG_BUNDLES"):
        candidates.append(Path(os.environ["DFSEG_BUNDLES"]))
    candidates += [Path(__file__).resolve().parents[1] / "bundles", Path("/opt/dfseg/bundles")]
    for path in candidates:
        if (path / BUNDLES[0] / "configs").is_dir():
            return path
    raise DfsegError("bundles/", "MONAI bundles not found; set DFSEG_BUNDLES to the repository's bundles/ folder")


def bundle_dir(name: str) -> Path:
    """Root of one bundle, e.g. ``bundle_dir("dfseg_attention_unet")``; a path is returned as is."""
    path = Path(name)
    if (path / "configs").is_dir():
        return path.resolve()
    root = bundles_root() / name
    if not (root / "configs").is_dir():
        raise DfsegError(name, f"no such bundle; known: {', '.join(BUNDLES)}")
    return root


def run_bundle(bundle: str | os.PathLike, config: str | list[str], **overrides: object) -> None:
    """Run bundle config(s) in a subprocess, exactly as a user would with ``python -m monai.bundle run``.

    Args:
        bundle: bundle name (``dfseg_attention_unet``) or folder.
        config: config file name(s) in ``configs/`` (several are merged left to right).
        overrides: ``--key value`` overrides; ``None`` values are left out.
    """
    import subprocess
    import sys

    root = bundle_dir(str(bundle))
    files = [str(root / "configs" / c) for c in ([config] if isinstance(config, str) else config)]
    cmd = [sys.executable, "-m", "monai.bundle", "run",
           "--config_file", files[0] if len(files) == 1 else repr(files),
           "--bundle_root", str(root), "--meta_file", str(root / "configs" / "metadata.json"),
           "--logging_file", str(root / "configs" / "logging.conf")]
    for key, value in overrides.items():
        if value is not None:
            cmd += [f"--{key}", str(value)]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise DfsegError(f"{root.name}/configs/{files[0].rsplit('/', 1)[-1]}",
                         f"bundle run failed with exit code {result.returncode} (messages above)")
