"""Projector memory: angle blocks within the budget, same operators as the whole-system references."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dfseg.tomo import (
    backproject,
    clear_operator_cache,
    fbp,
    filter_sinogram,
    operator_cache_bytes,
    operator_stats,
    project,
    projection_angles,
)
from dfseg.tomo.projector import (
    OPERATOR_BUDGET_BYTES,
    angle_blocks,
    build_block,
    joseph_matrix,
    pixel_backprojection_matrix,
)

MIB = 2**20


@pytest.mark.parametrize("size", [(16, 16), (16, 24), (24, 16)])
def test_blocks_stack_to_reference_matrices(size):
    nx, ny = size
    angles = np.random.default_rng(0).uniform(0, np.pi, 23)
    blocks = angle_blocks(nx, ny, angles.size, torch.float64, 20_000)
    assert len(blocks) > 3 and blocks[0][0] == 0 and blocks[-1][1] == angles.size
    ref = joseph_matrix(nx, ny, angles)
    fwd = sp.vstack([build_block("project", nx, ny, angles[a0:a1]) for a0, a1 in blocks]).tocsr()
    adj = sp.hstack([build_block("backproject", nx, ny, angles[a0:a1]) for a0, a1 in blocks]).tocsr()
    pix = sp.hstack([build_block("fbp", nx, ny, angles[a0:a1]) for a0, a1 in blocks]).tocsr()
    assert fwd.nnz == ref.nnz and abs(fwd - ref).max() == 0
    assert abs(adj - ref.T).max() == 0
    pref = pixel_backprojection_matrix(nx, ny, angles)
    assert pix.nnz == pref.nnz and abs(pix - pref).max() == 0
    one = build_block("project", nx, ny, angles[:5], torch.float32)
    assert one.dtype == np.float32 and one.indices.dtype == np.int32 and one.has_sorted_indices


@pytest.mark.parametrize("size", [(20, 20), (20, 28)])
def test_blocked_backproject_is_exact_adjoint_in_float64(size):
    rng = np.random.default_rng(1)
    angles = rng.uniform(0, np.pi, 31)
    budget = 40_000  # several angle blocks and several batches of images
    assert len(angle_blocks(*size, angles.size, torch.float64, budget)) > 3
    x = rng.normal(size=(40, *size))
    y = rng.normal(size=(40, 31, size[0]))
    ax = project(x, angles, pixel_mm=0.3, budget_bytes=budget)
    aty = backproject(y, angles, size, pixel_mm=0.3, budget_bytes=budget)
    lhs, rhs = np.sum(ax * y), np.sum(x * aty)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # and the products equal the whole-system reference
    ref = joseph_matrix(*size, angles) * 0.3
    np.testing.assert_allclose(ax.reshape(40, -1), (ref @ x.reshape(40, -1).T).T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(aty.reshape(40, -1), (ref.T @ y.reshape(40, -1).T).T, rtol=1e-12, atol=1e-12)


def test_fbp_and_project_match_references_for_any_budget():
    n, pixel = 32, 0.2
    angles = projection_angles(60)
    rng = np.random.default_rng(2)
    img = rng.random((3, 5, n, n)).astype(np.float32)
    sino64 = (joseph_matrix(n, n, angles) @ img.reshape(15, -1).T.astype(np.float64)).T * pixel
    q = filter_sinogram(torch.from_numpy(sino64.reshape(15, 60, n)), "hann").numpy()
    rec64 = (pixel_backprojection_matrix(n, n, angles) @ q.reshape(15, -1).T).T * (np.pi / 60 / pixel)
    for budget in (30_000, 300_000, None):
        sino = project(img, angles, pixel_mm=pixel, budget_bytes=budget)
        assert sino.dtype == np.float32 and sino.shape == (3, 5, 60, n)
        scale = np.abs(sino64).max()
        assert np.abs(sino.reshape(15, -1) - sino64).max() < 1e-6 * scale
        rec = fbp(sino64.reshape(3, 5, 60, n).astype(np.float32), angles, n, pixel_mm=pixel, filter_name="hann",
                  budget_bytes=budget)
        assert rec.dtype == np.float32 and rec.shape == (3, 5, n, n)
        assert np.abs(rec.reshape(15, -1) - rec64).max() < 1e-5 * np.abs(rec64).max()


def test_blocks_and_cache_stay_within_budget():
    budget = 4 * MIB
    angles = projection_angles(180)
    for n in (48, 96, 160):
        clear_operator_cache()
        x = torch.rand(3, n, n)
        s = project(x, angles, budget_bytes=budget)
        backproject(s, angles, n, budget_bytes=budget)
        fbp(s, angles, n, budget_bytes=budget)
        stats = operator_stats()
        assert 0 < stats["largest_block_bytes"] <= budget, (n, stats)
        assert operator_cache_bytes() == stats["cache_bytes"] <= budget
        if n == 160:  # the operators do not fit: many blocks, none cached
            assert stats["blocks_built"] > 3 * 20 and stats["cache_bytes"] == 0
    # a small operator stays cached: a second call builds nothing
    clear_operator_cache()
    x = torch.rand(2, 24, 24)
    project(x, angles, budget_bytes=budget)
    built = operator_stats()["blocks_built"]
    assert operator_cache_bytes() > 0
    project(x, angles, budget_bytes=budget)
    assert operator_stats()["blocks_built"] == built
    clear_operator_cache()
    assert operator_cache_bytes() == 0


@pytest.mark.parametrize("kind", ["project", "backproject", "fbp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_build_peak_within_budget(kind, dtype):
    """The tracemalloc peak of building the largest block (numpy, scipy) stays within the budget."""
    for budget, (nx, ny) in ((2 * MIB, (96, 96)), (2 * MIB, (64, 112)), (8 * MIB, (112, 64))):
        a0, a1 = angle_blocks(nx, ny, 360, dtype, budget)[0]
        assert a1 - a0 > 1
        tracemalloc.start()
        try:
            m = build_block(kind, nx, ny, projection_angles(360)[a0:a1], dtype)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert m.nnz > 0 and peak <= budget, (kind, dtype, nx, ny, peak)


_RSS_SCRIPT = r"""
import sys
import numpy as np, torch
torch.set_num_threads(1)
from dfseg.tomo import backproject, fbp, project, projection_angles

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

n, budget = int(sys.argv[1]), int(sys.argv[2])
warm = projection_angles(4)
fbp(backproject(project(np.ones((2, 8, 8), np.float32), warm), warm, 8)[:, :4], warm, 8)  # load the kernels
x = np.random.default_rng(0).random((2, n, n)).astype(np.float32)
angles = projection_angles(180)
try:  # restart the high-water mark here; without it, it also counts the imports (a larger bound)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status_kb("VmRSS")
s = project(x, angles, budget_bytes=budget)
b = backproject(s, angles, n, budget_bytes=budget)
r = fbp(s, angles, n, budget_bytes=budget)
print((status_kb("VmHWM") - base) * 1024, s.nbytes + b.nbytes + r.nbytes)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("n", [48, 96, 160])
def test_peak_memory_bounded_as_grid_grows(n):
    """Peak resident memory beyond the inputs and outputs stays under 3 budgets + 16 MiB.

    At 160 x 160 and 180 angles each whole operator alone would take over 70 MiB (float32,
    int32 indices), the float64 build of the whole Joseph system several times that. The peak is
    the process's VmHWM, restarted after the imports: ``getrusage(RUSAGE_SELF).ru_maxrss`` of a
    child also keeps the resident size of the parent (pytest) it was forked from.
    """
    budget = 4 * MIB
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(n), str(budget)],
                         capture_output=True, text=True, timeout=120, check=True)
    growth, outputs = (int(v) for v in out.stdout.split())
    assert growth - outputs <= 3 * budget + 16 * MIB, (n, growth / MIB)


def test_default_budget():
    assert OPERATOR_BUDGET_BYTES == 256 * MIB
    with pytest.raises(Exception, match="budget_bytes"):
        project(np.zeros((4, 4)), [0.0], budget_bytes=0)
