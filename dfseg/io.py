"""File I/O at the edges of the pipeline: atomic writes, NIfTI, JSON, hashes, output directories.

Every file dfseg writes goes through :func:`atomic_write` (temporary name in the same directory,
fsync, rename), so an interrupted run leaves the old file or the new one, never half of one.
A directory that is written as a whole (a preprocessed cohort) goes through
:func:`atomic_directory` the same way.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.filebasedimages import ImageFileError as _ImageFileError

from dfseg.errors import InputError, OutputExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions of files dfseg writes: what ``open()`` would give (mkstemp alone gives 0600)
FILE_MODE = 0o666 & ~_umask()

#: Largest image dfseg will read, in voxels (a header that declares more is refused before allocation).
MAX_VOXELS = 2**31 // 4


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for writers that need a file name (nibabel, torch.save,
    matplotlib); rename it onto ``path`` only if the block succeeds. The suffix is kept so writers
    that infer a format from it keep working."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; it replaces ``path`` only if the block succeeds.

    The directory is hidden (``.<name>.<random>.tmp``) until the final rename, and removed with
    everything in it when the block raises, so a failure leaves no partial output and keeps what
    ``path`` held before.

    Args:
        path: the output directory.
        overwrite: replace a ``path`` that already holds files (otherwise refused on entry).

    Raises:
        OutputExistsError: ``path`` exists and is not empty, without ``overwrite``.
    """
    refuse_non_empty(path, overwrite=overwrite)
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    with atomic_write(path, "w") as fh:
        fh.write(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_nifti(path: str | os.PathLike, array: np.ndarray, grid: float | tuple[float, ...] | np.ndarray,
               dtype: np.dtype | type | None = None) -> None:
    """Write a 3D/4D array as NIfTI, atomically and byte-reproducibly.

    Args:
        path: output ``.nii.gz`` path.
        array: (X, Y, Z) or (X, Y, Z, C) array; channels last on disk, as NIfTI expects.
        grid: the image's 4x4 affine (RAS, mm), or an isotropic voxel size or per-axis sizes in mm
            (affine ``diag(voxel_mm, 1)``).
        dtype: on-disk dtype (default: float32 for floats, uint8 for bool).
    """
    import nibabel as nib

    array = np.asarray(array)
    if dtype is None:
        dtype = np.uint8 if array.dtype == bool else (np.float32 if array.dtype.kind == "f" else array.dtype)
    img = nib.Nifti1Image(array.astype(dtype), _affine(grid))
    img.header.set_xyzt_units("mm")
    # gzip with neither a timestamp nor a file name in its header, so the same array gives byte-identical files.
    with atomic_write(path, "wb") as fh:
        with gzip.GzipFile(filename="", fileobj=fh, mode="wb", mtime=0, compresslevel=6) as gz:
            gz.write(img.to_bytes())


def _affine(grid: float | tuple[float, ...] | np.ndarray) -> np.ndarray:
    """A 4x4 affine from an affine (passed through) or voxel size(s) in mm (diagonal)."""
    values = np.asarray(grid, dtype=float)
    if values.shape == (4, 4):
        return values
    spacing = np.broadcast_to(values, (3,)) if values.ndim == 0 else values[:3]
    return np.diag([*spacing, 1.0])


def load_nifti(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read an image (NIfTI, or anything SimpleITK reads) and return ``(array, affine)``.

    Refuses, with an :class:`InputError` naming the file: a missing file, a corrupt or truncated file,
    a header that declares more than :data:`MAX_VOXELS` voxels, and NaN/Inf voxels (unless allowed).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            n = int(np.prod(img.shape, dtype=np.int64))
            if n > MAX_VOXELS:
                raise InputError(path, f"header declares {img.shape} = {n} voxels, more than dfseg reads ({MAX_VOXELS})")
            offset = int(getattr(img.dataobj, "offset", 0))  # where the voxels start in the file
            _check_declared_size(path, n * img.get_data_dtype().itemsize + offset)
            array = np.asarray(img.dataobj)
            affine = np.asarray(img.affine, dtype=float)
            expected = n * img.get_data_dtype().itemsize
            if array.nbytes < expected:
                raise InputError(path, "truncated file")
        else:
            array, affine = _load_sitk(path)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, RuntimeError, _ImageFileError) as err:
        raise InputError(path, f"cannot read image ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    if array.dtype.kind == "f" and not allow_nonfinite and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(path, f"{bad} NaN/Inf voxels")
    return array, affine


def _check_declared_size(path: Path, declared_bytes: int) -> None:
    """Refuse a gzip NIfTI whose header declares more bytes than the file holds, before reading it.

    The gzip trailer stores the uncompressed size modulo 2**32, so the check is exact for files
    whose uncompressed size is below 4 GiB and skipped otherwise."""
    if not path.name.lower().endswith(".gz"):
        if declared_bytes > path.stat().st_size:
            raise InputError(path, f"header declares {declared_bytes} bytes but the file holds {path.stat().st_size}")
        return
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 18:
            raise InputError(path, "truncated file")
        fh.seek(-4, os.SEEK_END)
        stored = int.from_bytes(fh.read(4), "little")
    if declared_bytes < 2**32 and declared_bytes > stored:
        raise InputError(path, f"header declares {declared_bytes} bytes of image data but the file holds {stored}"
                         " (truncated file or bogus header)")


def _load_sitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    ncomp = reader.GetNumberOfComponents()
    n = int(np.prod(size, dtype=np.int64)) * ncomp
    if n > MAX_VOXELS:
        raise InputError(path, f"header declares {size} x {ncomp} voxels, more than dfseg reads")
    img = reader.Execute()
    array = sitk.GetArrayFromImage(img)  # (Z, Y, X[, C])
    array = np.transpose(array, (2, 1, 0, 3) if array.ndim == 4 else (2, 1, 0))
    spacing = np.asarray(img.GetSpacing()[:3], float)
    direction = np.asarray(img.GetDirection(), float).reshape(img.GetDimension(), img.GetDimension())[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = img.GetOrigin()[:3]
    # ITK uses LPS, NIfTI RAS
    affine[:2] *= -1
    return array, affine


def voxel_size(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing in mm from an affine (column norms of its 3x3 part)."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def prepare_output_dir(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``path`` for outputs; refuse one that already holds files unless told otherwise.

    ``overwrite`` empties it first; ``resume`` keeps what is there.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(path, "exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            raise OutputExistsError(path, "directory is not empty; pass --overwrite to replace it or --resume to continue")
    path.mkdir(parents=True, exist_ok=True)
    return path


def refuse_non_empty(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse an output directory that already holds files (or is a file) unless ``overwrite``."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise OutputExistsError(path, "exists and is not empty; pass --overwrite to replace it")
    return path


def refuse_existing(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse to replace an existing output file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path, "already exists; pass --overwrite to replace it")
    return path
