"""File I/O at the edges of the pipeline: atomic writes, images, JSON, hashes, output directories.

Images are read by :func:`load_nifti` from NIfTI (nibabel), from anything SimpleITK reads (MHA/MHD,
NRRD, ...), from a DICOM series (a folder) and from a TIFF stack (tifffile); see :data:`IMAGE_FORMATS`.

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
import tifffile
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
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds.

    Text modes write UTF-8 whatever the process locale (a C library may have switched it to C).
    """
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
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
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes; of a folder (a DICOM series), of its files' relative names and hashes."""
    if Path(path).is_dir():
        h = hashlib.sha256()
        root = Path(path)
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(f"{file.relative_to(root).as_posix()}\0{sha256_file(file, chunk)}\n".encode())
        return h.hexdigest()
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
    # gzip with neither a timestamp nor a file name in its header, so the same array gives byte-identical
    # files; level 1: noisy float images compress as well as at level 6 (about 0.76) in a quarter of the time.
    with atomic_write(path, "wb") as fh:
        with gzip.GzipFile(filename="", fileobj=fh, mode="wb", mtime=0, compresslevel=1) as gz:
            gz.write(img.to_bytes())


def _affine(grid: float | tuple[float, ...] | np.ndarray) -> np.ndarray:
    """A 4x4 affine from an affine (passed through) or voxel size(s) in mm (diagonal)."""
    values = np.asarray(grid, dtype=float)
    if values.shape == (4, 4):
        return values
    spacing = np.broadcast_to(values, (3,)) if values.ndim == 0 else values[:3]
    return np.diag([*spacing, 1.0])


#: Image formats :func:`load_nifti` reads, by file name ending (a folder is a DICOM series).
IMAGE_FORMATS: dict[str, str] = {
    ".nii.gz": "NIfTI", ".nii": "NIfTI", ".mha": "MetaImage", ".mhd": "MetaImage", ".nrrd": "NRRD",
    ".nhdr": "NRRD", ".tif": "TIFF stack", ".tiff": "TIFF stack",
}
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


def is_image_path(path: str | os.PathLike) -> bool:
    """``path`` is a file with a name ending of :data:`IMAGE_FORMATS` or a folder (a DICOM series)."""
    path = Path(path)
    return path.is_dir() or (path.is_file() and path.name.lower().endswith(tuple(IMAGE_FORMATS)))


def load_nifti(path: str | os.PathLike, *, allow_nonfinite: bool = False,
               voxel_mm: float | tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and return ``(array (X, Y, Z[, C]), 4x4 RAS affine in mm)``.

    Formats: NIfTI; anything SimpleITK reads (MHA/MHD, NRRD, ...; ITK's LPS turned into RAS); a
    folder holding one DICOM series (:func:`_load_dicom_series`, origin and direction kept, LPS ->
    RAS); a TIFF stack ``.tif``/``.tiff`` (:func:`_load_tiff`: stored ``(Z, Y, X)`` or ``(Z, C, Y, X)``,
    no origin or direction, spacing from the ImageJ/OME metadata, else ``voxel_mm``).

    Args:
        path: the image file, or the folder of a DICOM series.
        allow_nonfinite: accept NaN/Inf voxels (an image only displayed, never computed on).
        voxel_mm: voxel size for a TIFF stack whose metadata gives none (the sidecar's ``voxel_mm``);
            ignored by the other formats, which carry their own.

    Refuses, with an :class:`InputError` naming the file: a missing file, a corrupt or truncated file,
    a header that declares more than :data:`MAX_VOXELS` voxels, a folder without exactly one DICOM
    series, a TIFF stack without a voxel size, and NaN/Inf voxels (unless allowed).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    name = path.name.lower()
    try:
        if path.is_dir():
            array, affine = _load_dicom_series(path)
        elif name.endswith(TIFF_SUFFIXES):
            array, affine = _load_tiff(path, voxel_mm)
        elif name.endswith((".nii", ".nii.gz")):
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


def read_image_header(path: str | os.PathLike, *,
                      voxel_mm: float | tuple[float, ...] | None = None) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape ``(X, Y, Z[, C])`` and affine of a DICOM series or a TIFF stack without reading voxels.

    The affine is the one :func:`load_nifti` returns for the same image (NIfTI and the SimpleITK
    formats are read by ``dfseg.data.validate.read_header``).
    """
    path = Path(path)
    if path.is_dir():
        return _dicom_series_header(path)[:2]
    return _tiff_header(path, voxel_mm)


def _ras_affine(spacing: np.ndarray, direction: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """The RAS affine of an ITK (LPS) geometry."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, float) * np.asarray(spacing, float)
    affine[:3, 3] = np.asarray(origin, float)
    affine[:2] *= -1  # ITK uses LPS, NIfTI RAS
    return affine


def _dicom_series_header(folder: Path) -> tuple[tuple[int, ...], np.ndarray, list[str]]:
    """Shape, RAS affine and sorted file names of the one DICOM series in ``folder``.

    The geometry is ITK's ``ImageSeriesReader``'s: origin and in-plane direction of the first slice,
    the slice axis and spacing from the first and last slice positions (GDCM sorts the slices).
    """
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(folder, "no DICOM series in this folder")
    if len(ids) > 1:
        raise InputError(folder, f"{len(ids)} DICOM series in one folder; put each series in its own folder")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))

    def info(file: str) -> sitk.ImageFileReader:
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        reader.ReadImageInformation()
        return reader

    first = info(files[0])
    size = first.GetSize()
    ncomp = int(first.GetNumberOfComponents())
    spacing = np.asarray(first.GetSpacing()[:3], float)
    direction = np.asarray(first.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(first.GetOrigin()[:3], float)
    if len(files) > 1:
        step = np.asarray(info(files[-1]).GetOrigin()[:3], float) - origin
        norm = float(np.linalg.norm(step))
        if norm > 0:
            spacing[2] = norm / (len(files) - 1)
            direction[:, 2] = step / norm
    shape = (int(size[0]), int(size[1]), len(files)) + ((ncomp,) if ncomp > 1 else ())
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_VOXELS:
        raise InputError(folder, f"DICOM series declares {shape} = {n} voxels, more than dfseg reads ({MAX_VOXELS})")
    return shape, _ras_affine(spacing, direction, origin), files


def _load_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The one DICOM series in ``folder`` as ``(array (X, Y, Z[, C]), RAS affine)`` (rescale slope applied)."""
    import SimpleITK as sitk

    _shape, _affine_header, files = _dicom_series_header(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    img = reader.Execute()
    array = sitk.GetArrayFromImage(img)  # (Z, Y, X[, C])
    array = np.transpose(array, (2, 1, 0, 3) if array.ndim == 4 else (2, 1, 0))
    direction = np.asarray(img.GetDirection(), float).reshape(3, 3)
    return array, _ras_affine(np.asarray(img.GetSpacing(), float), direction, np.asarray(img.GetOrigin(), float))


#: TIFF length units -> mm (ImageJ ``unit``, OME ``PhysicalSize*Unit``).
_TIFF_UNITS_MM: dict[str, float] = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 1e-3, "\u00b5m": 1e-3, "\u03bcm": 1e-3,
                                    "\\u00b5m": 1e-3, "micron": 1e-3, "microns": 1e-3, "nm": 1e-6}


def _tiff_axes(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The transpose that turns a TIFF series ``(Z, Y, X)`` / ``(Z, C, Y, X)`` into ``(X, Y, Z[, C])``."""
    # a TIFF without ImageJ/OME axes names them Q (unknown) or I: the first is Z, a second C (ImageJ's order)
    axes = axes.upper().replace("I", "Q").replace("S", "C").replace("Q", "Z", 1).replace("Q", "C", 1)
    if sorted(axes) not in (sorted("ZYX"), sorted("ZCYX")):
        raise InputError(path, f"TIFF stack with axes {axes} {tuple(shape)}: expected (Z, Y, X) or (Z, C, Y, X)")
    return tuple(axes.index(a) for a in ("X", "Y", "Z", "C") if a in axes)


def _tiff_spacing(path: Path, tif: tifffile.TiffFile, voxel_mm: float | tuple[float, ...] | None) -> np.ndarray:
    """Voxel size (X, Y, Z) in mm of a TIFF stack: OME or ImageJ metadata, else ``voxel_mm``, else refused."""
    if tif.is_ome and tif.ome_metadata:
        image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        sizes = [pixels.get(f"PhysicalSize{a}") for a in "XYZ"]
        units = [str(pixels.get(f"PhysicalSize{a}Unit", "\u00b5m")).lower() for a in "XYZ"]
        if all(s is not None for s in sizes) and all(u in _TIFF_UNITS_MM for u in units):
            return np.asarray([float(s) * _TIFF_UNITS_MM[u] for s, u in zip(sizes, units)])
    meta = tif.imagej_metadata if tif.is_imagej else None
    if meta and str(meta.get("unit", "")).lower() in _TIFF_UNITS_MM and meta.get("spacing") is not None:
        scale = _TIFF_UNITS_MM[str(meta["unit"]).lower()]
        page = tif.pages[0]
        spacing = []
        for tag in ("XResolution", "YResolution"):
            num, den = page.tags[tag].value if tag in page.tags else (0, 1)
            if not num:
                break
            spacing.append(den / num * scale)
        if len(spacing) == 2:
            return np.asarray([*spacing, float(meta["spacing"]) * scale])
    if voxel_mm is not None:
        values = np.asarray(voxel_mm, float)
        return np.broadcast_to(values, (3,)).astype(float) if values.ndim == 0 else values[:3].astype(float)
    raise InputError(path, "TIFF stack without a voxel size (no ImageJ/OME spacing); put voxel_mm in the scan's sidecar")


def _tiff_header(path: Path, voxel_mm: float | tuple[float, ...] | None) -> tuple[tuple[int, ...], np.ndarray]:
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            axes, dims = series.axes, tuple(series.shape)
            if len(axes) == 2:  # one page: a single slice
                axes, dims = "Z" + axes, (1, *dims)
            shape = tuple(int(dims[i]) for i in _tiff_axes(path, axes, dims))
            spacing = _tiff_spacing(path, tif, voxel_mm)
    except InputError:
        raise
    except (OSError, ValueError, IndexError, KeyError, tifffile.TiffFileError) as err:
        raise InputError(path, f"cannot read TIFF header ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_VOXELS:
        raise InputError(path, f"header declares {shape} = {n} voxels, more than dfseg reads ({MAX_VOXELS})")
    return shape, np.diag([*spacing, 1.0])


def _load_tiff(path: Path, voxel_mm: float | tuple[float, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """A TIFF stack as ``(array (X, Y, Z[, C]), affine diag(spacing))``: TIFF has no origin or direction."""
    _shape, affine = _tiff_header(path, voxel_mm)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            array = series.asarray()
            axes = series.axes
    except (OSError, ValueError, IndexError, KeyError, tifffile.TiffFileError) as err:
        raise InputError(path, f"cannot read TIFF stack ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    if array.ndim == 2:
        array, axes = array[None], "Z" + axes
    return np.transpose(array, _tiff_axes(path, axes, array.shape)), affine


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
    return array, _ras_affine(spacing, direction, np.asarray(img.GetOrigin()[:3], float))


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
