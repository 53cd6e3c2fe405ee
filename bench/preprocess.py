"""Benchmark of the volume-domain chain; prints JSON.

Chain on a 128^3 volume with 1 attenuation + 4 orientation channels: first-order beam-hardening
correction -> spectrum-aware normalization -> directional decomposition -> differential dark-field
feature (DF/attenuation ratio) -> SelectModality("combined"); the differential dark-field
feature (a local-mean filter) is timed on its own. Compared with a straightforward per-voxel
``numpy.linalg.lstsq`` decomposition, timed on a random subset of voxels and extrapolated.

The calibration is a fixed illustrative dictionary (fitting phantoms is not what is timed) and the
effective energy is given, so no spectrum is computed inside the timed loop.

With ``--projection`` it also times the projection-domain beam-hardening step on one simulated
demo-size scan (64^3 at 0.4 mm, 120 angles, 4 orientations; calibration fitted from noise-free
phantom scans outside the timing): the water curve alone against the two-pass bone correction
(``BeamHardeningCorrectiond(bone_correction=True)``: first-pass FBP, re-projection, per-ray mix and
per-ray energy factor).

Usage: ``python bench/preprocess.py [--size 128] [--threads 2] [--repeats 5] [--lstsq-voxels 4000] [--projection]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

ANGLES = [0.0, 45.0, 90.0, 135.0]
CALIBRATION = {
    "format_version": 1,
    "reference": {"kvp": 70.0, "filtration_mm": {"Al": 1.0}, "visibility": {}, "e_ref_kev": 35.0},
    "beam_hardening": {"water": {"coefficients": [0.01, 0.001], "first_order_c1": 0.01},
                       "aluminium": {"coefficients": [0.02, 0.002], "first_order_c1": 0.02}},
    "linearisation": {"water": {"coefficients": [1.0]}},
    "energy_exponent": {"n": -2.0},
}


def make_volume(size: int, seed: int = 0) -> dict:
    """Random-but-plausible (1, S, S, S) attn and (4, S, S, S) df with a lung mask."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    attn = rng.uniform(0.005, 0.02, (1, *shape)).astype(np.float32)
    w = np.deg2rad(ANGLES)[:, None, None, None]
    theta = rng.uniform(0, np.pi, shape)[None]
    df = (0.3 + 0.05 * np.cos(2 * (w - theta)) + rng.normal(0, 0.01, (4, *shape))).astype(np.float32)
    lung = np.zeros((1, *shape), np.uint8)
    lung[:, size // 8: -size // 8, size // 8: -size // 8, size // 8: -size // 8] = 1
    return {"attn": attn, "df": df, "lung_mask": lung, "meta": {"orientations_deg": ANGLES, "voxel_mm": 0.1}}


def build_chain(with_corrections: bool):
    from monai.transforms import Compose

    from dfseg.transforms.decomposition import DirectionalDecompositiond
    from dfseg.transforms.features import DarkFieldAttenuationRatiod
    from dfseg.transforms.modality import SelectModalityd

    steps = []
    if with_corrections:
        from dfseg.transforms.beam_hardening import BeamHardeningCorrectiond
        from dfseg.transforms.spectrum import SpectrumAwareNormalizationd

        steps += [BeamHardeningCorrectiond("df", CALIBRATION, attn_key="attn", domain="volume"),
                  SpectrumAwareNormalizationd("df", CALIBRATION, e_eff_kev=40.0)]
    steps += [DirectionalDecompositiond("df"),
              DarkFieldAttenuationRatiod("df", "attn", output_key="ratio"),
              SelectModalityd(("attn", "df"), "combined", extra_keys=("ratio",))]
    return Compose(steps)


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def lstsq_seconds_per_voxel(df: np.ndarray, n_voxels: int, seed: int = 0) -> float:
    """Straightforward reference: one ``numpy.linalg.lstsq`` per voxel."""
    w = np.deg2rad(ANGLES)
    x = np.stack([np.ones_like(w), np.cos(2 * w), np.sin(2 * w)], axis=1)
    flat = df.reshape(df.shape[0], -1)
    idx = np.random.default_rng(seed).choice(flat.shape[1], n_voxels, replace=False)
    t0 = time.perf_counter()
    for i in idx:
        np.linalg.lstsq(x, flat[:, i], rcond=None)
    return (time.perf_counter() - t0) / n_voxels


def projection_bone_timing(repeats: int) -> dict:
    """Seconds per scan of the water-curve and two-pass bone beam-hardening corrections."""
    import tempfile

    from dfseg.calibration.fit import fit_calibration
    from dfseg.simulate.acquisition import AcquisitionConfig, acquire_ct
    from dfseg.simulate.anatomy import build_anatomy
    from dfseg.simulate.phantoms import write_phantom_scans
    from dfseg.transforms.beam_hardening import BeamHardeningCorrectiond
    from dfseg.transforms.flux import FluxNormalizationd
    from dfseg.transforms.reconstruction import NegativeLogd

    size, voxel, cfg = 64, 0.4, AcquisitionConfig(n_angles=120)
    with tempfile.TemporaryDirectory() as tmp:
        write_phantom_scans(tmp, {**cfg.describe(), "noise": False, "voxel_mm": voxel}, seed=0)
        cal = fit_calibration(tmp)
    scan = acquire_ct(build_anatomy(size, voxel, np.random.default_rng(0)), cfg, np.random.default_rng(1))
    meta = {"voxel_mm": voxel, "air_columns": cfg.air_columns, "kvp": cfg.kvp,
            "filtration_mm": dict(cfg.filtration_mm), "visibility": dict(cfg.visibility)}
    data = NegativeLogd()(FluxNormalizationd("proj_T")({"proj_T": scan["proj_T"], "proj_D": scan["proj_D"], "meta": meta}))
    water = BeamHardeningCorrectiond("proj_D", cal)
    bone = BeamHardeningCorrectiond("proj_D", cal, bone_correction=True)
    return {
        "projections": list(np.shape(data["proj_D"])),
        "water_curve_seconds_cpu": timed(lambda: water(data), repeats),
        "two_pass_bone_seconds_cpu": timed(lambda: bone(data), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lstsq-voxels", type=int, default=4000)
    parser.add_argument("--projection", action="store_true", help="also time the projection-domain bone correction")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dfseg.transforms.decomposition import DirectionalDecomposition
    from dfseg.transforms.features import DifferentialDarkField

    data = make_volume(args.size)
    try:
        chain, corrections = build_chain(True), "first-order beam hardening + spectrum normalization included"
    except ImportError as err:
        chain, corrections = build_chain(False), f"corrections not available ({err}); chain without them"
    n_vox = args.size**3
    result: dict = {
        "volume": [1 + 4, args.size, args.size, args.size],
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "corrections": corrections,
        "chain": [type(t).__name__ for t in chain.transforms],
    }
    result["chain_seconds_cpu"] = timed(lambda: chain(data), args.repeats)
    decomp = DirectionalDecomposition(ANGLES)
    ddf = DifferentialDarkField(0.5, 0.1, append=False)
    result["differential_darkfield_seconds_cpu"] = timed(lambda: ddf(data["df"][:1], data["lung_mask"]), args.repeats)
    result["decomposition_seconds_cpu"] = timed(lambda: decomp(data["df"]), args.repeats)
    per_voxel = lstsq_seconds_per_voxel(data["df"], min(args.lstsq_voxels, n_vox))
    result["lstsq_seconds_extrapolated"] = per_voxel * n_vox
    result["lstsq_note"] = f"per-voxel numpy.linalg.lstsq timed on {min(args.lstsq_voxels, n_vox)} random voxels, extrapolated to {n_vox}"
    result["speedup_decomposition_vs_lstsq"] = result["lstsq_seconds_extrapolated"] / result["decomposition_seconds_cpu"]
    result["speedup_chain_vs_lstsq"] = result["lstsq_seconds_extrapolated"] / result["chain_seconds_cpu"]
    result["targets"] = {"chain_seconds_cpu_max": 0.3, "speedup_min": 100}
    result["meets_targets"] = bool(result["chain_seconds_cpu"] <= 0.3 and result["speedup_chain_vs_lstsq"] >= 100)
    if torch.cuda.is_available():
        gpu = {k: (torch.as_tensor(v, device="cuda") if isinstance(v, np.ndarray) else v) for k, v in data.items()}
        result["gpu"] = torch.cuda.get_device_name(0)
        result["chain_seconds_gpu"] = timed(lambda: chain(gpu), args.repeats)
        result["decomposition_seconds_gpu"] = timed(lambda: decomp(gpu["df"]), args.repeats)
    else:
        result["gpu"] = None
    if args.projection:
        result["projection_beam_hardening"] = projection_bone_timing(args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
