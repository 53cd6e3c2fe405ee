"""Synthetic tumour: physics of the inserted lesion, determinism, random sampling, types."""

from __future__ import annotations

import numpy as np
import pytest
from testkit import DEVICES, KINDS, as_kind

from dfseg.errors import InputError
from dfseg.simulate.tumours import occupancy, sample_shape
from dfseg.transforms.decomposition import DirectionalDecomposition
from dfseg.transforms.tumour import (
    LESION_MODELS,
    RandSyntheticTumourd,
    SyntheticTumour,
    estimate_tissue_df,
    estimate_tissue_mu,
    lesion_shape,
)

MU_T, MU_LUNG, VOX = 0.02, 0.006, 0.25
ANGLES = [0, 45, 90, 135]
#: the lesion physics without the measured look: a sharp edge, every value replaced, no texture
EXACT = {"psf_sigma_vox": 0.0, "noise_scale_vox": 0.0, "density_sd": 0.0}


def _phantom(kind="numpy", device="cpu"):
    """32^3: air outside a body box of soft tissue (mu 0.02) holding a lung box (mu 0.006)."""
    attn = np.zeros((1, 32, 32, 32), np.float32)
    attn[:, 2:30, 2:30, 2:30] = MU_T
    lung = np.zeros((1, 32, 32, 32), np.uint8)
    lung[:, 6:26, 6:26, 6:26] = 1
    attn[lung > 0] = MU_LUNG
    w = np.deg2rad(ANGLES)[:, None, None, None]
    orient = (0.3 + 0.06 * np.cos(2 * (w - np.deg2rad(20)))) * lung  # c0 0.3, |c2| 0.06 in lung
    orient = orient.astype(np.float32)
    df = DirectionalDecomposition(ANGLES)(orient)
    label = np.zeros((1, 32, 32, 32), np.uint8)
    label[0, 8, 8, 8] = 1  # an existing lesion voxel that must survive
    out = {"attn": attn, "df": df, "orient": orient, "label": label, "lung_mask": lung}
    return {k: as_kind(kind, v, device) for k, v in out.items()}


def test_estimate_tissue_mu_from_body():
    p = _phantom()
    assert estimate_tissue_mu(p["attn"], p["lung_mask"]) == pytest.approx(MU_T, rel=1e-6)


def _lesion_label(model, seed, diameter=3.0):
    """The label of one lesion inserted at the grid centre of an all-lung 32^3 volume."""
    label = np.zeros((1, 32, 32, 32), np.uint8)
    tumour = SyntheticTumour((16, 16, 16), diameter, VOX, shape_model=model, shape_seed=seed, tissue_mu=MU_T)
    return tumour(None, None, label, np.ones_like(label))[2][0]


@pytest.mark.parametrize("model", LESION_MODELS)
def test_equivalent_diameter_and_partial_volume(model):
    label = _lesion_label(model, 7)
    d = (6 * label.sum() * VOX**3 / np.pi) ** (1 / 3)
    assert abs(d / 3.0 - 1) < 0.15
    attn = np.full((1, 32, 32, 32), MU_LUNG, np.float32)
    attn, _, _ = SyntheticTumour((16, 16, 16), 3.0, VOX, shape_model=model, shape_seed=7, tissue_mu=MU_T, **EXACT)(
        attn, None, None, np.ones((1, 32, 32, 32), np.uint8))
    partial = (attn > MU_LUNG + 1e-6) & (attn < MU_T - 1e-6)
    assert partial.sum() > 20 and attn.max() == pytest.approx(MU_T)


def test_same_shape_model_as_the_simulator():
    """The lesion is the simulator's tumour: SyntheticTumour's occupancy is simulate.tumours.occupancy."""
    shape = sample_shape(np.random.default_rng(5), "lobulated")
    box, frac = occupancy((32, 32, 32), VOX, ((16 - 15.5) * VOX,) * 3, 2.5, shape)
    attn = np.full((1, 32, 32, 32), MU_LUNG)
    attn, _, _ = SyntheticTumour((16, 16, 16), 2.5, VOX, shape_model="lobulated", shape_seed=5, tissue_mu=MU_T, **EXACT)(
        attn, None, None, np.ones((1, 32, 32, 32), np.uint8))
    occ = np.zeros((32, 32, 32))
    occ[box] = frac
    np.testing.assert_allclose((attn[0] - MU_LUNG) / (MU_T - MU_LUNG), occ, atol=1e-6)


def test_shape_depends_on_seed_and_model():
    a, b, c = _lesion_label("smooth", 1), _lesion_label("smooth", 2), _lesion_label("smooth", 1)
    assert np.array_equal(a, c)
    assert ((a > 0) ^ (b > 0)).sum() > 50
    assert ((a > 0) ^ (_lesion_label("spiculated", 1) > 0)).sum() > 50
    with pytest.raises(InputError, match="unknown lesion shape model 'blob'"):
        lesion_shape("blob", 0)
    with pytest.raises(ValueError, match="shape_models"):
        RandSyntheticTumourd(shape_models=("blob",))


@pytest.mark.parametrize("kind", KINDS)
def test_lesion_physics_decomposed(kind):
    p = _phantom(kind)
    attn, df, label = SyntheticTumour((16, 16, 16), 3.0, VOX, shape_seed=3, **EXACT)(
        p["attn"], p["df"], p["label"], p["lung_mask"])
    for new, old in ((attn, p["attn"]), (df, p["df"]), (label, p["label"])):
        assert type(new) is type(old) and new.dtype == old.dtype and new.shape == old.shape
    attn, df, label = (np.asarray(x) for x in (attn, df, label))
    centre = (slice(None), 16, 16, 16)
    assert attn[centre][0] == pytest.approx(MU_T, rel=1e-5)  # raised to solid tissue
    assert np.abs(df[centre]).max() < 1e-6  # c0, amp, aniso, cos, sin all gone
    assert label[0, 16, 16, 16] == 1 and label[0, 8, 8, 8] == 1
    changed = np.abs(attn - np.asarray(p["attn"]))[0] > 1e-7
    assert changed.sum() > 50
    assert np.all(np.asarray(p["lung_mask"])[0][changed] == 1)  # only lung is replaced
    new_label = (label[0] == 1) & (np.asarray(p["label"])[0] == 0)
    assert np.all(changed[new_label])  # every new label voxel got denser
    # label = occupancy >= 0.5: attenuation at least half-way to tissue there
    assert np.all(attn[0][new_label] >= MU_LUNG + 0.5 * (MU_T - MU_LUNG) - 1e-7)
    far = (slice(None), 24, 24, 8)
    assert np.array_equal(df[far], np.asarray(p["df"])[far]) and attn[0, 24, 24, 8] == MU_LUNG
    # attenuation never exceeds tissue, dark-field never rises, anisotropy stays consistent
    assert attn.max() <= MU_T + 1e-7
    assert np.all(df[0] <= np.asarray(p["df"])[0] + 1e-7)
    np.testing.assert_allclose(df[1], np.hypot(df[3], df[4]), atol=1e-6)
    ok = df[0] > 1e-3
    np.testing.assert_allclose(df[2][ok], df[1][ok] / df[0][ok], rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_orientation_layout_scales_channels(kind):
    p = _phantom(kind)
    _, orient, _ = SyntheticTumour((16, 16, 16), 2.0, VOX, tissue_mu=MU_T, df_layout="orientations", **EXACT)(
        None, p["orient"], None, p["lung_mask"])
    orient = np.asarray(orient)
    assert np.abs(orient[:, 16, 16, 16]).max() < 1e-7
    assert np.array_equal(orient[:, 24, 24, 8], np.asarray(p["orient"])[:, 24, 24, 8])


def test_lesion_stays_in_lung():
    p = _phantom()
    _, _, label = SyntheticTumour((6, 16, 16), 3.0, VOX, tissue_mu=MU_T)(None, None, p["label"], p["lung_mask"])
    assert label[0, :6].sum() == 0 and label[0, 6:].sum() > 30


def test_lesion_outside_the_volume_changes_nothing():
    p = _phantom()
    attn, _, label = SyntheticTumour((-40, 16, 16), 2.0, VOX, tissue_mu=MU_T)(p["attn"], None, p["label"], p["lung_mask"])
    assert np.array_equal(attn, p["attn"]) and np.array_equal(label, p["label"])


def test_missing_mask_and_tissue_mu():
    with pytest.raises(InputError, match="tissue_mu"):
        SyntheticTumour((16, 16, 16), 1.0, VOX)(_phantom()["attn"])


@pytest.mark.parametrize("kind", KINDS)
def test_rand_reproducible_and_replayable(kind):
    p = _phantom(kind)
    t = RandSyntheticTumourd(prob=1.0, diameter_range_mm=(1.0, 2.0), voxel_mm=VOX)
    t.set_random_state(7)
    out1 = t(p)
    params = dict(t.last_params)
    assert 1.0 <= params["diameter_mm"] <= 2.0
    cx, cy, cz = (int(c) for c in params["centre_vox"])
    assert int(np.asarray(p["lung_mask"])[0, cx, cy, cz]) == 1
    assert np.asarray(out1["label"]).sum() > np.asarray(p["label"]).sum()
    t.set_random_state(7)
    out2 = t(p)
    assert np.array_equal(np.asarray(out1["df"]), np.asarray(out2["df"]))
    replay = SyntheticTumour(**params)(p["attn"], p["df"], p["label"], p["lung_mask"])
    assert np.array_equal(np.asarray(replay[0]), np.asarray(out1["attn"]))


def test_rand_prob_zero_is_identity():
    p = _phantom()
    t = RandSyntheticTumourd(prob=0.0, voxel_mm=VOX)
    out = t(p)
    assert t.last_params is None and out["attn"] is p["attn"]


def test_rand_reads_voxel_size_from_meta():
    p = _phantom()
    p["meta"] = {"voxel_mm": 0.5}
    t = RandSyntheticTumourd(prob=1.0)
    t.set_random_state(0)
    t(p)
    assert t.last_params["voxel_mm"] == 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_torch_device(device):
    p = _phantom("torch", device)
    out = RandSyntheticTumourd(prob=1.0, voxel_mm=VOX)(p)
    assert all(out[k].device == p[k].device for k in ("attn", "df", "label"))


def test_lesion_keeps_the_scan_noise():
    """On a noisy scan the lesion carries the scan's noise (what varies faster than the local mean),
    not a flat plateau; its mean is the tissue value."""
    rng = np.random.default_rng(0)
    attn = np.full((1, 40, 40, 40), MU_LUNG, np.float32) + rng.normal(0, 0.002, (1, 40, 40, 40)).astype(np.float32)
    lung = np.ones((1, 40, 40, 40), np.uint8)
    out, _, label = SyntheticTumour((20, 20, 20), 6.0, VOX, tissue_mu=MU_T, density_sd=0.0)(
        attn, None, np.zeros_like(lung), lung)
    from scipy import ndimage
    inner = ndimage.binary_erosion(label[0] > 0, iterations=3)
    assert inner.sum() > 300
    assert float(out[0][inner].mean()) == pytest.approx(MU_T, rel=0.02)
    # white noise minus its Gaussian local mean (sigma 2 voxels) keeps about 0.97 of its std
    assert 0.85 * 0.002 < float(out[0][inner].std()) < 1.05 * 0.002
    flat, _, _ = SyntheticTumour((20, 20, 20), 6.0, VOX, tissue_mu=MU_T, **EXACT)(attn, None, None, lung)
    assert float(flat[0][inner].std()) < 1e-6  # the plateau this replaces


def test_lesion_edge_has_the_requested_blur():
    """The occupancy is blurred by a Gaussian PSF: a wider PSF gives a wider 10-90 % edge."""
    lung = np.ones((1, 40, 40, 40), np.uint8)
    attn = np.full((1, 40, 40, 40), MU_LUNG, np.float32)

    def edge_width(psf):
        out = SyntheticTumour((20, 20, 20), 6.0, VOX, tissue_mu=MU_T, shape_model="sphere", psf_sigma_vox=psf,
                              noise_scale_vox=0.0)(attn, None, None, lung)[0]
        profile = (np.asarray(out)[0, 20:, 20, 20] - MU_LUNG) / (MU_T - MU_LUNG)
        return float(np.interp(0.1, profile[::-1], np.arange(20)[::-1]) - np.interp(0.9, profile[::-1], np.arange(20)[::-1]))

    sharp, blurred = edge_width(0.0), edge_width(1.5)
    # a Gaussian of sigma s alone has a 10-90 % width of 2.563 s; widths of convolved edges add
    # about in quadrature
    assert sharp < 2.0
    assert blurred == pytest.approx(np.hypot(sharp, 2.563 * 1.5), rel=0.1)


def test_tissue_dark_field_is_the_floor():
    """Inside the lesion the dark-field falls to the scan's solid-tissue level, not to zero."""
    p = _phantom()
    df = np.asarray(p["df"]).copy()
    body = (np.asarray(p["attn"])[0] >= MU_T) & (np.asarray(p["lung_mask"])[0] == 0)
    df[0][body] = 0.01  # c0 of solid tissue (visibility hardening, the bias of -ln D)
    np.testing.assert_allclose(estimate_tissue_df(df, p["attn"], p["lung_mask"])[0].item(), 0.01, rtol=1e-6)
    _, out, _ = SyntheticTumour((16, 16, 16), 3.0, VOX, tissue_mu=MU_T, density_sd=0.0)(
        p["attn"], df, None, p["lung_mask"])
    assert float(out[0, 16, 16, 16]) == pytest.approx(0.01, abs=1e-4)


def test_rand_centres_leave_room_like_the_simulator():
    """Centres lie at least one radius + one voxel inside the lung, away from the grid's faces and
    labelled tumours (the simulator's rule), so no inserted lesion is cut by the pleura; a lung too
    thin for the lesion gets it at its deepest voxels. The cached room map gives the same draws."""
    from dfseg.simulate.tumours import boundary_depth
    from dfseg.transforms.tumour import LesionRoomd, lesion_room

    p = _phantom()
    room = boundary_depth((p["lung_mask"][0] > 0) & (p["label"][0] == 0))
    assert np.array_equal(lesion_room(p["lung_mask"], p["label"]).numpy(), room.astype(np.float32))
    t = RandSyntheticTumourd(prob=1.0, diameter_range_mm=(1.0, 2.5), voxel_mm=VOX)
    t.set_random_state(11)
    for _ in range(40):
        t(p)
        c = tuple(int(v) for v in t.last_params["centre_vox"])
        assert room[c] >= t.last_params["diameter_mm"] / 2 / VOX + 1
    cached = LesionRoomd()(p)
    a, b = RandSyntheticTumourd(prob=1.0, voxel_mm=VOX), RandSyntheticTumourd(prob=1.0, voxel_mm=VOX)
    a.set_random_state(3)
    b.set_random_state(3)
    a(p)
    b(cached)
    assert a.last_params == b.last_params
    # a lung 3 voxels thick cannot hold a 2 mm lesion at 0.25 mm: its deepest voxels are used
    thin = dict(p, lung_mask=np.zeros_like(p["lung_mask"]))
    thin["lung_mask"][:, 6:26, 6:26, 14:17] = 1
    t = RandSyntheticTumourd(prob=1.0, diameter_range_mm=(2.0, 2.0), voxel_mm=VOX)
    t.set_random_state(0)
    t(thin)
    assert int(t.last_params["centre_vox"][2]) == 15
