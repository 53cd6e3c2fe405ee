"""FBPReconstruction(d) with a scan geometry: the default path is unchanged bit for bit, a sidecar
``geometry`` block dispatches to parallel FBP or cone-beam FDK."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from testkit import KINDS, as_kind

from dfseg.errors import InputError
from dfseg.tomo import Ellipsoid, Geometry, ellipsoid_projections, fbp_parallel, fdk
from dfseg.transforms.reconstruction import FBPReconstruction, FBPReconstructiond

VOXEL = 0.5
PHANTOM = [Ellipsoid(0.02, (0.0, 0.0, 0.0), (6.0, 5.0, 3.0), 20.0), Ellipsoid(0.01, (2.0, -1.0, 0.5), (2.0, 1.5, 1.5))]
CONE = Geometry(kind="cone", scan_deg=360, source_object_mm=60, source_detector_mm=120, detector_pixel_mm=1.0,
                cor_offset_px=1.5, detector_shape=(40, 16))


def stack(geometry: Geometry, n_angles: int | None = None, channels: int = 2) -> np.ndarray:
    """(N, A, U, Z) line integrals of the phantom, the second channel half the first."""
    p = ellipsoid_projections(PHANTOM, geometry, n_angles=n_angles).astype(np.float32)
    return np.stack([p * (1 + 0.5 * (-1) ** c) for c in range(channels)])


@pytest.mark.parametrize("kind", KINDS)
def test_default_path_is_unchanged(kind):
    proj = as_kind(kind, stack(Geometry(detector_pixel_mm=VOXEL, detector_shape=(32, 4)), n_angles=48))
    ref = FBPReconstruction(VOXEL)(proj)
    for geometry in (Geometry(), "ct", {"kind": "parallel"}):
        out = FBPReconstruction(VOXEL, geometry=geometry)(proj)
        assert type(out) is type(ref)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    d = {"proj_T": proj, "meta": {"voxel_mm": VOXEL, "orientations_deg": [0, 90], "geometry": "ct"}}
    np.testing.assert_array_equal(np.asarray(FBPReconstructiond(keys="proj_T")(d)["proj_T"]), np.asarray(ref))


@pytest.mark.parametrize("kind", KINDS)
def test_sidecar_cone_geometry_runs_fdk(kind):
    proj = stack(CONE, n_angles=90)
    meta = {"voxel_mm": VOXEL, "orientations_deg": [0, 90], "geometry": "ct", "beam": CONE.describe()}
    d = {"proj_D": as_kind(kind, proj), "meta": meta}
    out = FBPReconstructiond(keys="proj_D", output_keys="df")(d)
    assert "proj_D" not in out and type(out["df"]) is type(d["proj_D"])
    ref = fdk(proj, CONE, VOXEL)
    assert ref.shape == (2, 40, 40, 16)  # (N, X, Y, Z): the detector seen at the axis, one voxel per pixel
    np.testing.assert_allclose(np.asarray(out["df"]), ref, rtol=1e-5, atol=1e-6)
    avg = FBPReconstructiond(keys="proj_D", average_keys="proj_D", volume_shape=(24, 24, 8))(d)["proj_D"]
    assert tuple(avg.shape) == (1, 24, 24, 8)


def test_parallel_360_offset_geometry_and_explicit_argument():
    g = Geometry(scan_deg=360, detector_pixel_mm=(0.4, VOXEL), cor_offset_px=-2.0, detector_shape=(48, 6))
    proj = stack(g, n_angles=120)
    mt = MetaTensor(torch.from_numpy(proj))  # what LoadScand gives
    out = FBPReconstruction(VOXEL, geometry=g, volume_shape=(40, 40, 6))(mt)
    assert isinstance(out, MetaTensor) and tuple(out.shape) == (2, 40, 40, 6)
    np.testing.assert_allclose(out.numpy(), fbp_parallel(proj, g, VOXEL, volume_shape=(40, 40, 6)), rtol=1e-5, atol=1e-6)
    # the explicit geometry wins over the sidecar's
    d = {"proj_T": proj, "meta": {"voxel_mm": VOXEL, "geometry": CONE.describe()}}
    out = FBPReconstructiond(keys="proj_T", geometry=g, volume_shape=(40, 40, 6), check_orientations=False)(d)
    np.testing.assert_allclose(out["proj_T"], fbp_parallel(proj, g, VOXEL, volume_shape=(40, 40, 6)), rtol=1e-5, atol=1e-6)


def test_geometry_errors_name_the_key():
    proj = stack(CONE, n_angles=90)
    bad_angles = dict(CONE.describe(), angles_deg=list(range(0, 360, 5)))  # 72 angles for 90 projections
    with pytest.raises(InputError, match=r"^proj_D: geometry\.angles_deg lists 72 angles but the projections have 90$"):
        FBPReconstructiond(keys="proj_D")({"proj_D": proj, "meta": {"voxel_mm": VOXEL, "geometry": bad_angles}})
    with pytest.raises(InputError, match=r"^meta\.geometry\.kind: unknown geometry 'helical'"):
        FBPReconstructiond(keys="proj_D")({"proj_D": proj, "meta": {"voxel_mm": VOXEL, "geometry": {"kind": "helical"}}})
    with pytest.raises(InputError, match=r"^meta\.beam\.kind: unknown geometry 'helical'"):
        FBPReconstructiond(keys="proj_D")({"proj_D": proj, "meta": {"voxel_mm": VOXEL, "beam": {"kind": "helical"}}})
    with pytest.raises(InputError, match=r"^geometry: 'radiograph' scans have no reconstruction geometry"):
        FBPReconstruction(VOXEL, geometry="radiograph")
