"""Parallel-beam projector and its exact adjoint, applied block by block with bounded memory (torch).

Geometry (docs/ARCHITECTURE.md): images are ``(..., X, Y)`` with pixel centres at
``(i - (X-1)/2) * pixel_mm``; the ray at angle t travels along ``(cos t, sin t)``; the detector
coordinate is ``u = -x sin t + y cos t`` with U = X bins of the pixel size. Sinograms are
``(..., A, U)``.

The projector is Joseph's method: along each ray, step one pixel at a time along the axis the ray
is closest to, interpolate linearly across the other axis and weight by the path length per step
``pixel / max(|cos t|, |sin t|)``. Its system matrix (A*U, X*Y) is split into blocks of
consecutive angles. Each block is a torch CSR matrix (values in the input's dtype, int32 indices
while they fit) built directly for its angles and applied to all leading elements at once
(sparse @ dense, the images as the dense columns); ``project`` writes each block's rows of the
sinogram, ``backproject`` sums the products of the transposed blocks, so it is the exact adjoint.
FBP (:mod:`dfseg.tomo.fbp`) uses a pixel-driven back-projector split the same way.

Memory is bounded by a byte budget, whatever X, Y and A are (``budget_bytes``, default
:data:`OPERATOR_BUDGET_BYTES`):

* a block holds as many angles as fit the budget while it is built (float64 weights, masks and
  index arrays included), and at least one;
* the dense operands and products of a block are taken over batches of leading elements that fit
  the budget;
* built blocks are cached per (kind, shape, angles, block, dtype, device) only when the whole
  operator fits the cache budget, and the cache is kept within it (least recently used first
  out). The cache budget is :data:`OPERATOR_CACHE_BYTES` by default and ``budget_bytes`` when a
  call states one.

So a call needs its input and output plus at most the cache budget and two budgets (one block
being built, dense temporaries); :func:`operator_cache_bytes` and :func:`operator_stats` report
what is held and the largest block built. Operators that fit the cache stay cached and are
applied without rebuilding (a projector and its FBP of 260 x 260 pixels and 360 angles take
0.8 GB together); larger ones are rebuilt block by block on every call, which suits callers
that project all their slices in one call.

:func:`joseph_matrix` and :func:`pixel_backprojection_matrix` build the whole systems with scipy
in float64, one angle at a time: the reference the blocks are checked against.
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from dfseg.errors import InputError

#: Default byte budget for one operator block (while built) and the dense temporaries of one block
#: product. Override per call with ``budget_bytes``.
OPERATOR_BUDGET_BYTES = 256 * 2**20

#: Default byte budget of the cache of built blocks (a call that states ``budget_bytes`` keeps its
#: cache within that instead). A slab-by-slab CT of 260 x 260 x 360 angles keeps its projector and
#: FBP blocks (0.8 GB) instead of rebuilding them for every slab.
OPERATOR_CACHE_BYTES = 1024 * 2**20

# Bytes a block build needs per (angle, detector bin, step) sample, by value size (float32,
# float64): float64 fractional indices, the weights and column indices of both neighbours, masks,
# the CSR arrays and, for the transposed operator, its transpose. Measured peaks with tracemalloc
# are 27-34 and 40-42 (tests/tomo/test_memory.py checks that builds stay within the budget).
_BUILD_BYTES_PER_SAMPLE = {4: 40, 8: 48}

# Dense operands get a multiple of this many columns (see apply_operator).
_LANES = 16


def projection_angles(n_angles: int) -> np.ndarray:
    """Equally spaced projection angles ``pi * a / A`` over [0, pi), radians, shape (A,)."""
    if n_angles < 1:
        raise InputError("n_angles", f"need at least one projection angle, got {n_angles}")
    return np.pi * np.arange(n_angles, dtype=np.float64) / n_angles


def _angles_array(angles) -> np.ndarray:
    if isinstance(angles, torch.Tensor):
        angles = angles.detach().cpu().numpy()
    a = np.atleast_1d(np.asarray(angles, dtype=np.float64))
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError("angles", "expected a non-empty 1-D array of finite angles in radians")
    return a


def _size_xy(size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    x, y = (int(s) for s in size)
    return x, y


# --------------------------------------------------------------------------- scipy references


def _joseph_hits(n_primary: int, n_secondary: int, u: np.ndarray, slope: float, cosine: float, *,
                 sign: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Joseph weights of one angle, marching along the axis the ray crosses most steeply.

    The ray of detector bin k crosses primary coordinate p at secondary coordinate
    ``p * slope + sign * u_k / cosine``; the two secondary pixels around it share the step length
    ``1 / |cosine|`` by linear interpolation. Returns ``(bin, primary, secondary, weight)`` arrays
    of the non-zero weights, lower neighbour first.
    """
    p = np.arange(n_primary) - (n_primary - 1) / 2
    f = p[None, :] * slope + sign * (u[:, None] / cosine) + (n_secondary - 1) / 2  # (U, P) fractional index
    step = 1.0 / abs(cosine)
    kk, pp = np.meshgrid(np.arange(len(u)), np.arange(n_primary), indexing="ij")
    s0 = np.floor(f).astype(np.int64)
    frac = f - s0
    hits = []
    for ss, wt in ((s0, 1.0 - frac), (s0 + 1, frac)):
        ok = (ss >= 0) & (ss < n_secondary) & (wt > 0)
        hits.append((kk[ok], pp[ok], ss[ok], (wt * step)[ok]))
    return hits


def joseph_matrix(nx: int, ny: int, angles: np.ndarray) -> sp.csr_matrix:
    """Joseph projector in pixel units, scipy CSR of shape (A*U, X*Y), U = X, float64.

    Row ``a*U + k`` holds the weights of detector bin k at angle a; column ``i*Y + j`` is pixel
    (i, j) of a C-ordered (X, Y) image. Built one angle at a time for the whole system: the
    reference for the blocks of :func:`project` (tests), not used by it.
    """
    nu = nx
    rows, cols, vals = [], [], []
    u = np.arange(nu) - (nu - 1) / 2
    for a, t in enumerate(angles):
        c, s = np.cos(t), np.sin(t)
        march_x = abs(c) >= abs(s)
        # Marching over columns i (x), the ray crosses x at y = x tan t + u / cos t; over rows j (y),
        # it crosses y at x = y cot t - u / sin t.
        hits = _joseph_hits(nx, ny, u, s / c, c, sign=1.0) if march_x else _joseph_hits(ny, nx, u, c / s, s, sign=-1.0)
        for kk, primary, secondary, weight in hits:
            i, j = (primary, secondary) if march_x else (secondary, primary)
            rows.append(a * nu + kk)
            cols.append(i * ny + j)
            vals.append(weight)
    mat = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(angles) * nu, nx * ny),
    )
    return mat.tocsr()


def pixel_backprojection_matrix(nx: int, ny: int, angles: np.ndarray) -> sp.csr_matrix:
    """Pixel-driven back-projector (linear interpolation on the detector), CSR (X*Y, A*U), float64.

    Used by FBP: each pixel reads the filtered sinogram at its own detector coordinate, which
    has unit gain at every angle (the transpose of Joseph's method does not). Built for the whole
    system: the reference for the blocks :func:`dfseg.tomo.fbp` applies (tests), not used by it.
    """
    nu = nx
    x = (np.arange(nx) - (nx - 1) / 2)[:, None]
    y = (np.arange(ny) - (ny - 1) / 2)[None, :]
    pix = np.broadcast_to(np.arange(nx * ny).reshape(nx, ny), (nx, ny))
    rows, cols, vals = [], [], []
    for a, t in enumerate(angles):
        f = -x * np.sin(t) + y * np.cos(t) + (nu - 1) / 2
        k0 = np.floor(f).astype(np.int64)
        frac = f - k0
        for kk, wt in ((k0, 1.0 - frac), (k0 + 1, frac)):
            ok = (kk >= 0) & (kk < nu) & (wt > 0)
            rows.append(pix[ok])
            cols.append((a * nu + kk)[ok])
            vals.append(wt[ok])
    mat = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(nx * ny, len(angles) * nu),
    )
    return mat.tocsr()


# --------------------------------------------------------------------------- block builders

KINDS = ("project", "backproject", "fbp")


def _index_dtype(*extents: int):
    """int32 when every index, pointer and count fits, else int64 (numpy dtype)."""
    return np.int32 if max(extents) < 2**31 - 1 else np.int64


def _joseph_run(nx: int, ny: int, t: np.ndarray, march_x: bool, vdtype, idtype):
    """Joseph weights of consecutive angles ``t`` that all march along the same axis.

    Vectorised over (angle, bin, step, neighbour) in that order, so each row's entries come out
    in one contiguous run. Returns ``(data, indices, counts)``: the non-zero weights (``vdtype``,
    computed in float64 as :func:`joseph_matrix` does), their pixel columns and the number of
    entries per row ``a*U + k`` (rows of this run only).
    """
    nu = nx
    u = np.arange(nu) - (nu - 1) / 2
    c, s = np.cos(t), np.sin(t)
    if march_x:
        n_p, n_s, slope, cosine, sign = nx, ny, s / c, c, 1.0
    else:
        n_p, n_s, slope, cosine, sign = ny, nx, c / s, s, -1.0
    p = np.arange(n_p) - (n_p - 1) / 2
    f = p[None, None, :] * slope[:, None, None] + sign * (u[None, :, None] / cosine[:, None, None]) + (n_s - 1) / 2
    s0 = np.floor(f)
    f -= s0  # fractional part
    shape = (t.size, nu, n_p, 2)
    sec = np.empty(shape, idtype)
    sec[..., 0] = s0
    del s0
    sec[..., 1] = sec[..., 0]
    sec[..., 1] += 1
    step = (1.0 / np.abs(cosine))[:, None, None]
    w = np.empty(shape, vdtype)
    ok = np.empty(shape, bool)
    wt = np.subtract(1.0, f)
    np.greater(wt, 0, out=ok[..., 0])
    np.multiply(wt, step, out=w[..., 0], casting="same_kind")
    del wt
    np.greater(f, 0, out=ok[..., 1])
    np.multiply(f, step, out=w[..., 1], casting="same_kind")
    del f
    ok &= sec >= 0
    ok &= sec < n_s
    prim = np.arange(n_p, dtype=idtype)[None, None, :, None]
    if march_x:  # pixel (i, j) = (primary, secondary)
        sec += prim * idtype(ny)
    else:  # pixel (i, j) = (secondary, primary)
        sec *= idtype(ny)
        sec += prim
    data = w[ok]
    del w
    indices = sec[ok]
    del sec
    counts = ok.reshape(t.size * nu, -1).sum(axis=1)
    return data, indices, counts


def _joseph_block_csr(nx: int, ny: int, angles: np.ndarray, vdtype) -> sp.csr_matrix:
    """Rows ``a*U + k`` of :func:`joseph_matrix` for the given angles, CSR with sorted columns."""
    nu = nx
    n_rows = angles.size * nu
    idtype = _index_dtype(nx * ny, n_rows, 2 * n_rows * max(nx, ny))
    march_x = np.abs(np.cos(angles)) >= np.abs(np.sin(angles))
    cuts = np.flatnonzero(np.diff(march_x.astype(np.int8))) + 1
    parts = [
        _joseph_run(nx, ny, angles[a0:a1], bool(march_x[a0]), vdtype, idtype)
        for a0, a1 in zip(np.r_[0, cuts], np.r_[cuts, angles.size], strict=True)
    ]
    data, indices, counts = (np.concatenate(x) if len(parts) > 1 else x[0] for x in zip(*parts, strict=True))
    del parts
    indptr = np.zeros(n_rows + 1, idtype)
    np.cumsum(counts, out=indptr[1:])
    m = sp.csr_matrix((data, indices, indptr), shape=(n_rows, nx * ny), copy=False)
    m.sort_indices()  # rows marching along y are not column-ordered
    return m


def _pixel_block_csr(nx: int, ny: int, angles: np.ndarray, vdtype) -> sp.csr_matrix:
    """Columns ``a*U + k`` of :func:`pixel_backprojection_matrix` for the given angles, CSR (X*Y, n*U).

    Vectorised over (pixel, angle, neighbour) in that order: rows come out contiguous and their
    columns sorted.
    """
    nu = nx
    n = angles.size
    idtype = _index_dtype(nx * ny * 2 * n, n * nu)
    x = (np.arange(nx) - (nx - 1) / 2)[:, None, None]
    y = (np.arange(ny) - (ny - 1) / 2)[None, :, None]
    f = -x * np.sin(angles) + y * np.cos(angles) + (nu - 1) / 2  # (X, Y, n)
    k0 = np.floor(f)
    f -= k0
    shape = (nx, ny, n, 2)
    kk = np.empty(shape, idtype)
    kk[..., 0] = k0
    del k0
    kk[..., 1] = kk[..., 0]
    kk[..., 1] += 1
    w = np.empty(shape, vdtype)
    ok = np.empty(shape, bool)
    wt = np.subtract(1.0, f)
    np.greater(wt, 0, out=ok[..., 0])
    w[..., 0] = wt
    del wt
    np.greater(f, 0, out=ok[..., 1])
    w[..., 1] = f
    del f
    ok &= kk >= 0
    ok &= kk < nu
    kk += (np.arange(n, dtype=idtype) * idtype(nu))[:, None]
    data = w[ok]
    del w
    indices = kk[ok]
    del kk
    indptr = np.zeros(nx * ny + 1, idtype)
    np.cumsum(ok.reshape(nx * ny, -1).sum(axis=1), out=indptr[1:])
    return sp.csr_matrix((data, indices, indptr), shape=(nx * ny, n * nu), copy=False)


def build_block(kind: str, nx: int, ny: int, angles: np.ndarray, dtype: torch.dtype = torch.float64) -> sp.csr_matrix:
    """One block of an operator for ``angles`` (a run of the call's angles), scipy CSR, pixel units.

    ``"project"``: Joseph rows (n*U, X*Y); ``"backproject"``: their transpose (X*Y, n*U);
    ``"fbp"``: the pixel-driven back-projector (X*Y, n*U). Values in ``dtype``, int32 indices
    while they fit. Stacking the blocks of consecutive angle runs gives :func:`joseph_matrix`
    (rows), its transpose or :func:`pixel_backprojection_matrix` (columns).
    """
    vdtype = torch.empty((), dtype=dtype).numpy().dtype
    angles = np.asarray(angles, dtype=np.float64)
    if kind == "project":
        return _joseph_block_csr(nx, ny, angles, vdtype)
    if kind == "backproject":
        m = _joseph_block_csr(nx, ny, angles, vdtype)
        return m.T.tocsr()
    if kind == "fbp":
        return _pixel_block_csr(nx, ny, angles, vdtype)
    raise ValueError(f"unknown operator kind {kind!r}; one of {KINDS}")


# --------------------------------------------------------------------------- block plan and cache


def _budget(budget_bytes: int | None) -> int:
    b = OPERATOR_BUDGET_BYTES if budget_bytes is None else int(budget_bytes)
    if b < 1:
        raise InputError("budget_bytes", f"must be a positive number of bytes, got {budget_bytes}")
    return b


def _samples_per_angle(nx: int, ny: int) -> int:
    """Upper bound of (bin, step) samples per angle; each gives at most two non-zeros."""
    return nx * max(nx, ny)


def _build_bytes_per_angle(nx: int, ny: int, dtype: torch.dtype) -> int:
    return _samples_per_angle(nx, ny) * _BUILD_BYTES_PER_SAMPLE[torch.empty((), dtype=dtype).element_size()]


def _operator_bytes(nx: int, ny: int, n_angles: int, dtype: torch.dtype) -> int:
    """Upper bound of the bytes of a whole operator's CSR blocks (values, indices, pointers)."""
    item = torch.empty((), dtype=dtype).element_size()
    nnz = 2 * _samples_per_angle(nx, ny) * n_angles
    idx = 4 if _index_dtype(nnz, nx * ny, n_angles * nx) == np.int32 else 8
    return nnz * (item + idx) + (n_angles * nx + nx * ny + 1) * idx


def angle_blocks(nx: int, ny: int, n_angles: int, dtype: torch.dtype = torch.float32,
                 budget_bytes: int | None = None) -> list[tuple[int, int]]:
    """Consecutive angle ranges ``[(a0, a1), ...]`` whose blocks fit the budget while built.

    Each block holds as many angles as fit (at least one); the angles are shared out evenly.
    """
    budget = _budget(budget_bytes)
    per_block = max(1, budget // _build_bytes_per_angle(nx, ny, dtype))
    n_blocks = math.ceil(n_angles / per_block)
    size = math.ceil(n_angles / n_blocks)
    return [(a0, min(a0 + size, n_angles)) for a0 in range(0, n_angles, size)]


_LOCK = threading.Lock()
_CACHE: collections.OrderedDict[tuple, tuple[torch.Tensor, int]] = collections.OrderedDict()
_STATS = {"blocks_built": 0, "largest_block_bytes": 0, "cache_bytes": 0}


def operator_cache_bytes() -> int:
    """Bytes of the operator blocks held in the cache (all devices)."""
    with _LOCK:
        return _STATS["cache_bytes"]


def operator_stats() -> dict[str, int]:
    """``blocks_built`` (since the last :func:`clear_operator_cache`), ``largest_block_bytes``
    (the largest CSR block built since then) and ``cache_bytes``."""
    with _LOCK:
        return dict(_STATS)


def clear_operator_cache() -> None:
    """Drop every cached block and reset :func:`operator_stats`."""
    with _LOCK:
        _CACHE.clear()
        _STATS.update(blocks_built=0, largest_block_bytes=0, cache_bytes=0)


def _tensor_bytes(m: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in (m.crow_indices(), m.col_indices(), m.values()))


def _to_torch(m: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR is beta" / invariant-check notices
        t = torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr),
            torch.from_numpy(m.indices),
            torch.from_numpy(m.data),
            size=m.shape,
            check_invariants=False,
        )
        return t.to(device)


def _block(kind: str, nx: int, ny: int, angles: np.ndarray, akey: str, a0: int, a1: int,
           dtype: torch.dtype, device: torch.device, budget: int, cacheable: bool) -> torch.Tensor:
    key = (kind, nx, ny, akey, a0, a1, dtype, str(device))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit[0]
    mat = _to_torch(build_block(kind, nx, ny, angles[a0:a1], dtype), device)
    nbytes = _tensor_bytes(mat)
    with _LOCK:
        _STATS["blocks_built"] += 1
        _STATS["largest_block_bytes"] = max(_STATS["largest_block_bytes"], nbytes)
        if cacheable and nbytes <= budget:
            while _CACHE and _STATS["cache_bytes"] + nbytes > budget:
                _, (_, old) = _CACHE.popitem(last=False)
                _STATS["cache_bytes"] -= old
            _CACHE[key] = (mat, nbytes)
            _STATS["cache_bytes"] += nbytes
    return mat


def _angles_key(angles: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(angles, dtype=np.float64).tobytes()).hexdigest()


# --------------------------------------------------------------------------- application


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    """Input as a floating tensor, and whether the caller gave numpy (to convert back)."""
    if isinstance(x, torch.Tensor):
        t, was_numpy = x, False
    else:
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(np.asarray(x))), True
    if not torch.is_floating_point(t):
        t = t.to(torch.float64 if was_numpy else torch.get_default_dtype())
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t, was_numpy


def _out(t: torch.Tensor, was_numpy: bool):
    return t.cpu().numpy() if was_numpy else t


def _operand(rows: torch.Tensor, lanes: int) -> torch.Tensor:
    """``(n, k)`` -> contiguous ``(k, n')``, n' = n rounded up to a multiple of ``lanes`` (zero columns)."""
    n, k = rows.shape
    width = -(-n // lanes) * lanes
    op = rows.new_empty((k, width))
    op[:, :n] = rows.T
    op[:, n:] = 0
    return op


def apply_operator(kind: str, x: torch.Tensor, nx: int, ny: int, angles, *, budget_bytes: int | None = None,
                   prepare=None, prepare_bytes: int = 0) -> torch.Tensor:
    """Apply an operator, block by block, to the rows of ``x`` (flattened leading elements; pixel units).

    ``"project"``: ``x (N, X*Y) -> (N, A*U)``, each block writing its columns of the output;
    ``"backproject"`` / ``"fbp"``: ``x (N, A*U) -> (N, X*Y)``, the blocks' products summed.
    Dense operands and products are taken over batches of rows that fit the budget; batches of
    16 or more are made multiples of 16 columns (the last one padded with zeros), which the CPU
    sparse-dense product runs up to twice as fast as odd widths.

    Args:
        prepare: for ``"backproject"`` / ``"fbp"``, maps a block's sinogram columns
            ``(n, n_angles*U)`` and ``n_angles`` to the ``(n, n_angles*U)`` rows its block
            multiplies (the FBP filter); default: the columns as they are.
        prepare_bytes: temporary bytes ``prepare`` needs per row and angle (sizes the batches).
    """
    a = _angles_array(angles)
    akey = _angles_key(a)
    budget = _budget(budget_bytes)
    cache_budget = OPERATOR_CACHE_BYTES if budget_bytes is None else budget
    nu, npix, n_ang = nx, nx * ny, a.size
    n = x.shape[0]
    item = x.element_size()
    cacheable = _operator_bytes(nx, ny, n_ang, x.dtype) <= cache_budget
    out = x.new_empty((n, n_ang * nu)) if kind == "project" else x.new_zeros((n, npix))
    xt_all = None  # project: the transposed images, kept over the blocks when they fit one batch
    for a0, a1 in angle_blocks(nx, ny, n_ang, x.dtype, budget):
        mat = _block(kind, nx, ny, a, akey, a0, a1, x.dtype, x.device, cache_budget, cacheable)
        cols = slice(a0 * nu, a1 * nu)
        rows = (a1 - a0) * nu
        per_row = (npix + rows) * item + (prepare_bytes * (a1 - a0) if kind != "project" else 0)
        batch = max(1, budget // per_row)
        lanes = _LANES if batch >= _LANES else 1
        batch -= batch % lanes
        for b0 in range(0, n, batch):
            b1 = min(b0 + batch, n)
            if kind == "project":
                if batch >= n:
                    xt_all = _operand(x, lanes) if xt_all is None else xt_all
                    xt = xt_all
                else:
                    xt = _operand(x[b0:b1], lanes)
                out[b0:b1, cols] = (mat @ xt)[:, : b1 - b0].T
            else:
                seg = x[b0:b1, cols]
                xt = _operand(seg if prepare is None else prepare(seg, a1 - a0), lanes)
                out[b0:b1] += (mat @ xt)[:, : b1 - b0].T
            xt = None
        mat = None
    return out


def project(images, angles, *, pixel_mm: float = 1.0, budget_bytes: int | None = None):
    """Parallel-beam line integrals.

    Args:
        images: ``(..., X, Y)`` values per unit length (e.g. mu in 1/mm); numpy or torch.
        angles: projection angles in radians, shape (A,).
        pixel_mm: pixel size in mm (line integrals are scaled by it).
        budget_bytes: memory budget of the operator blocks, their cache and the dense
            temporaries (default :data:`OPERATOR_BUDGET_BYTES`).

    Returns:
        Sinograms ``(..., A, U)`` with U = X; numpy in -> numpy out, tensors stay on their device.
    """
    x, was_numpy = _as_tensor(images)
    if x.ndim < 2:
        raise InputError("project", f"images must be (..., X, Y), got shape {tuple(x.shape)}")
    nx, ny = x.shape[-2:]
    a = _angles_array(angles)
    sino = apply_operator("project", x.reshape(-1, nx * ny), nx, ny, a, budget_bytes=budget_bytes)
    sino.mul_(pixel_mm)
    return _out(sino.reshape(*x.shape[:-2], a.size, nx), was_numpy)


def backproject(sino, angles, size, *, pixel_mm: float = 1.0, budget_bytes: int | None = None):
    """Exact adjoint of :func:`project` (same ``pixel_mm``): ``(..., A, U) -> (..., X, Y)``.

    Args:
        sino: sinograms ``(..., A, U)``.
        angles: radians, shape (A,).
        size: X (square image) or ``(X, Y)``; U must equal X.
        pixel_mm: pixel size in mm.
        budget_bytes: memory budget, as for :func:`project`.
    """
    s, was_numpy = _as_tensor(sino)
    nx, ny = _size_xy(size)
    a = _angles_array(angles)
    if s.ndim < 2 or s.shape[-2:] != (a.size, nx):
        raise InputError(
            "backproject", f"sinogram shape {tuple(s.shape)} does not end in (A={a.size}, U={nx})"
        )
    img = apply_operator("backproject", s.reshape(-1, a.size * nx), nx, ny, a, budget_bytes=budget_bytes)
    img.mul_(pixel_mm)
    return _out(img.reshape(*s.shape[:-2], nx, ny), was_numpy)


def tensor_projection_weights(angles, orientations_rad) -> np.ndarray:
    """Weights (N, A, 6) so that s^T S s = sum_c w[n, a, c] * S_c for s(t, w) = cos w u(t) + sin w z.

    Component order (Sxx, Syy, Szz, Sxy, Sxz, Syz); u(t) = (-sin t, cos t, 0).
    """
    t = _angles_array(angles)[None, :]
    w = np.atleast_1d(np.asarray(orientations_rad, dtype=np.float64))[:, None]
    st, ct, sw, cw = np.sin(t), np.cos(t), np.sin(w), np.cos(w)
    ones = np.ones_like(st * sw)
    return np.stack(
        [
            cw**2 * st**2 * ones,  # Sxx: (cos w)^2 u_x^2
            cw**2 * ct**2 * ones,  # Syy
            sw**2 * ones,  # Szz
            -2 * cw**2 * st * ct,  # Sxy: 2 u_x u_y
            -2 * sw * cw * st,  # Sxz: 2 (cos w u_x)(sin w)
            2 * sw * cw * ct,  # Syz
        ],
        axis=-1,
    )


def project_tensor(S6, angles, orientations_rad, *, pixel_mm: float = 1.0, budget_bytes: int | None = None):
    """Directional dark-field projections of a per-pixel scattering tensor (X-ray tensor tomography).

    Each ray with sensitivity direction s(t, w) integrates s^T S s; this is linear in the six
    components, so they are projected once and combined per angle and orientation.

    Args:
        S6: ``(..., 6, X, Y)`` tensor components (Sxx, Syy, Szz, Sxy, Sxz, Syz), 1/mm.
        angles: projection angles t in radians, shape (A,).
        orientations_rad: grating orientations w in radians, shape (N,).
        pixel_mm: pixel size in mm.
        budget_bytes: memory budget of the projector, as for :func:`project`.

    Returns:
        ``(..., N, A, U)`` dark-field line integrals; numpy in -> numpy out.
    """
    x, was_numpy = _as_tensor(S6)
    if x.ndim < 3 or x.shape[-3] != 6:
        raise InputError("project_tensor", f"S6 must be (..., 6, X, Y), got shape {tuple(x.shape)}")
    comp = project(x, angles, pixel_mm=pixel_mm, budget_bytes=budget_bytes)  # (..., 6, A, U)
    w = torch.as_tensor(tensor_projection_weights(angles, orientations_rad), dtype=x.dtype, device=x.device)
    out = torch.einsum("...cau,nac->...nau", comp, w)
    return _out(out, was_numpy)
