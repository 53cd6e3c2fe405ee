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
