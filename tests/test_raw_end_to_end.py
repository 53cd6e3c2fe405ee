"""Issue #20 acceptance: a Talbot-Lau scanner's raw stepping frames -> ``dfseg retrieve`` -> reconstruction.

Parallel beam and cone beam (magnification 2), each a 360 degree scan of 120 angles with the rotation
axis off the detector centre (2.6 and -1.7 detector columns; the layout does not say so), 2 grating
orientations, 5 phase steps with 0.1 rad jitter per frame, a 2 % dose fluctuation per frame, a 2 %
flux drift and a 0.1 rad interferometer-phase drift over the scan, flats every 30 projections, dark
frames, uint16 counts of 2e5 photons per pixel (HDF5). The object is an analytic ellipsoid phantom
(:mod:`dfseg.tomo.phantom`, exact line integrals in either geometry): T = exp(-P mu), D = exp(-P eps)
with eps scaled 0.8 / 1.2 for the two orientations.

Measured (OMP_NUM_THREADS=1: about 2 s per geometry after imports):

==========================================  ============  ============
                                            parallel      cone
==========================================  ============  ============
centre of rotation, estimated - true (px)   -0.005        -0.005
ln T rms error / predicted Poisson std      0.995         1.001
ln D rms error / predicted Poisson std      0.999         1.007
attn: relative RMSE vs the direct path      0.0154        0.0153
  (attn.nii.gz as written, no flux norm.)   0.0156        0.0154
df: relative RMSE vs the direct path        0.357         0.347
attn: RMSE / predicted reconstructed noise  0.984         1.007
df: RMSE / predicted reconstructed noise    0.977         0.976
==========================================  ============  ============

"Predicted Poisson std": the delta method per pixel, sample plus the flat interpolated in time
(``((1 - w)^2 + w^2)`` times one flat's variance). "Direct path": the same reconstruction (parallel
FBP or FDK, true geometry) of the noise-free ``-ln T``, ``-ln D``. Relative RMSE over the body, in
the volumes the projection chain's front (flux normalisation -> -ln -> ``FBPReconstructiond`` in the
sidecar's ``beam`` geometry) makes of the written scan; the df's 0.35 is photon noise (D's noise
0.014 on line integrals up to 0.14), which the last rows pin down: the error is what the predicted
noise of the projections, flats shared between projections included, gives through the same
reconstruction.
"""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.cli import main
from dfseg.data.scan import LoadScand
from dfseg.io import load_nifti, read_json
from dfseg.physics.forward import visibility_log_variance
from dfseg.simulate.raw import write_raw_scan
from dfseg.tomo import Ellipsoid, Geometry, ellipsoid_projections, ellipsoid_volume
from dfseg.transforms.flux import FluxNormalizationd
from dfseg.transforms.reconstruction import FBPReconstruction, FBPReconstructiond, NegativeLogd

N_U, N_Z, N_A, AIR, STEPS = 48, 16, 120, 4, 5
PHOTONS, V_REF, FLAT_EVERY = 2.0e5, 0.3, 30
ORIENTATIONS, EPS_SCALE = [0.0, 90.0], np.array([0.8, 1.2])
BODY = Ellipsoid(0.04, (0.0, 0.0, 0.0), (4.0, 3.0, 8.0), 20.0)
MU = [BODY, Ellipsoid(0.03, (1.5, -1.0, 0.5), (1.0, 0.8, 1.5)), Ellipsoid(-0.02, (-1.5, 1.0, 0.0), (1.2, 1.0, 1.5))]
EPS = [Ellipsoid(0.03, (-1.6, 0.5, 0.0), (1.5, 1.8, 8.0), 10.0, "quadratic"),
       Ellipsoid(0.03, (1.6, 0.3, 0.0), (1.4, 1.8, 8.0), -10.0, "quadratic")]
ACQUISITION = {"kvp": 40.0, "filtration_mm": {"Al": 0.5},
               "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0}, "air_columns": AIR}
#: (geometry of the truth, the layout's beam block: no centre of rotation)
SCANS = {
    "parallel": (Geometry(kind="parallel", scan_deg=360, detector_pixel_mm=0.25, cor_offset_px=2.6,
                          detector_shape=(N_U, N_Z)), {"type": "parallel"}),
    "cone": (Geometry(kind="cone", scan_deg=360, source_object_mm=60.0, source_detector_mm=120.0, detector_pixel_mm=0.5,
                      cor_offset_px=-1.7, detector_shape=(N_U, N_Z)),
             {"type": "cone", "source_object_mm": 60.0, "source_detector_mm": 120.0}),
}


def rel_rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64)[:, mask], np.asarray(b, np.float64)[:, mask]
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


def rms(a: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(a, np.float64)[:, mask] ** 2)))


def noise_model(T: np.ndarray, D: np.ndarray, flat_indices: np.ndarray, rng: np.random.Generator) -> dict:
    """Predicted per-pixel variances of ln T and ln D and one Gaussian draw of the retrieval's noise.

    Each projection's reference is its two neighbouring flats interpolated in time, weights 1 - w and w, so a
    flat's noise is shared by the projections it serves: the draw keeps that (sample noise independent,
    flat noise ``(1 - w) e_lo + w e_hi``), which is what shapes the reconstructed noise.
    """
    a = np.arange(T.shape[1])
    hi = np.searchsorted(flat_indices, a, side="right")
    lo = hi - 1
    w = ((a - flat_indices[lo]) / (flat_indices[hi] - flat_indices[lo]))[None, :, None, None]
    n_s = PHOTONS * T
    sample = {"T": 1 / n_s, "D": visibility_log_variance(n_s, V_REF * D)}
    flat = {"T": 1 / PHOTONS, "D": visibility_log_variance(PHOTONS, V_REF)}
    out = {}
    for key in ("T", "D"):
        e_flat = np.sqrt(flat[key]) * rng.standard_normal((T.shape[0], flat_indices.size, *T.shape[2:]))
        draw = np.sqrt(sample[key]) * rng.standard_normal(T.shape) - ((1 - w) * e_flat[:, lo] + w * e_flat[:, hi])
        out[key] = {"var": sample[key] + ((1 - w) ** 2 + w**2) * flat[key], "draw": draw}
    return out


@pytest.mark.parametrize("kind", sorted(SCANS))
def test_raw_frames_to_volumes(kind, tmp_path, capsys):
    truth_geometry, beam = SCANS[kind]
    line_mu = ellipsoid_projections(MU, truth_geometry, n_angles=N_A)  # (A, U, Z)
    line_eps = ellipsoid_projections(EPS, truth_geometry, n_angles=N_A)
    assert line_mu[:, :AIR].max() == 0 and line_mu[:, -AIR:].max() == 0  # the air columns see air
    T = np.broadcast_to(np.exp(-line_mu), (len(ORIENTATIONS), *line_mu.shape))
    D = np.exp(-line_eps[None] * EPS_SCALE[:, None, None, None])
    uu, zz = np.meshgrid(np.arange(N_U), np.arange(N_Z), indexing="ij")
    written = write_raw_scan(
        tmp_path / "raw", T, D, v_ref=V_REF, photons_per_pixel=PHOTONS, pixel_mm=truth_geometry.detector_pixel_mm[0],
        steps=STEPS, jitter_rad=0.1, dose_std=0.02, flat_every=FLAT_EVERY, drift_a0=0.02, drift_phase_rad=0.1,
        ref_phase=2 * np.pi * (2.3 * uu / N_U + 0.7 * zz / N_Z), angles_deg=np.degrees(truth_geometry.angles(N_A)),
        orientations_deg=ORIENTATIONS, beam=beam, meta=ACQUISITION, seed=3)

    out = tmp_path / "scan"
    assert main(["retrieve", str(written["layout"]), "-o", str(out), "--estimate-phases", "--estimate-cor",
                 "--no-progress"]) == 0
    capsys.readouterr()
    sidecar = read_json(out / "sidecar.json")
    geometry = Geometry.from_meta(sidecar["beam"])
    cor_error = geometry.cor_offset_px - truth_geometry.cor_offset_px
    assert geometry.kind == kind and sidecar["retrieval"]["cor_source"] == "estimated"

    # retrieved projections against the noise-free ones, through the projection chain's front
    entry = {"proj_T": str(out / "proj_T.nii.gz"), "proj_D": str(out / "proj_D.nii.gz"),
             "sidecar": str(out / "sidecar.json")}
    data = FluxNormalizationd("proj_T")(LoadScand(("proj_T", "proj_D"), check_orientations=True)(entry))
    noise = noise_model(T, D, written["truth"]["flat_indices"], np.random.default_rng(11))
    ratio = {}
    for key, truth in (("T", T), ("D", D)):
        err = np.log(np.asarray(data[f"proj_{key}"], np.float64)) - np.log(truth)
        ratio[key] = float(np.sqrt(np.mean(err**2) / np.mean(noise[key]["var"])))
        assert abs(err.mean()) < 0.05 * np.sqrt(np.mean(noise[key]["var"])), key

    # reconstruction: the chain's FBP in the sidecar's geometry vs the direct path (noise-free, true geometry)
    rec = FBPReconstructiond(("proj_T", "proj_D"), ("attn", "df"), average_keys="proj_T")(NegativeLogd()(data))
    voxel = sidecar["voxel_mm"]
    direct = {"attn": FBPReconstruction(voxel, geometry=truth_geometry, average_channels=True),
              "df": FBPReconstruction(voxel, geometry=truth_geometry)}
    lines = {"attn": -np.log(T), "df": -np.log(D)}
    inside = Ellipsoid(1.0, BODY.centre_mm, BODY.axes_mm, BODY.phi_deg)
    body = ellipsoid_volume([inside], rec["attn"].shape[1:], voxel) > 0.99
    rel, noise_ratio = {}, {}
    for name, key in (("attn", "T"), ("df", "D")):
        expected = np.asarray(direct[name](lines[name].astype(np.float32)))
        predicted = np.asarray(direct[name](noise[key]["draw"].astype(np.float32)))
        got = np.asarray(rec[name])
        assert got.shape == expected.shape
        rel[name] = rel_rmse(got, expected, body)
        noise_ratio[name] = rms(got - expected, body) / rms(predicted, body)
    # the volumes dfseg retrieve wrote: no flux normalisation (as a scanner gives them), else the same
    attn_file, _ = load_nifti(out / "attn.nii.gz")
    df_file, _ = load_nifti(out / "df.nii.gz")
    np.testing.assert_allclose(np.moveaxis(df_file, -1, 0), np.asarray(rec["df"]), atol=1e-6)
    rel_file = rel_rmse(attn_file[None], direct["attn"](lines["attn"].astype(np.float32)), body)

    print(f"\n{kind}: centre of rotation {geometry.cor_offset_px:+.3f} px (true {truth_geometry.cor_offset_px:+.1f}, "
          f"error {cor_error:+.3f}); rms error / predicted std: ln T {ratio['T']:.3f}, ln D {ratio['D']:.3f}; "
          f"relative RMSE vs direct: attn {rel['attn']:.4f} (file, no flux normalisation: {rel_file:.4f}), "
          f"df {rel['df']:.3f}; RMSE / predicted reconstructed noise: attn {noise_ratio['attn']:.3f}, "
          f"df {noise_ratio['df']:.3f}")
    assert abs(cor_error) < 0.5
    assert 0.9 < ratio["T"] < 1.1 and 0.9 < ratio["D"] < 1.1
    assert rel["attn"] < 0.025 and rel["df"] < 0.45 and rel_file < 0.03
    assert 0.8 < noise_ratio["attn"] < 1.25 and 0.8 < noise_ratio["df"] < 1.25
