"""Benchmark: what each domain-randomisation factor does to a model, against a fixed-scanner control (issue #17).

Usage: ``python bench/randomisation_ablation.py OUT [--fixed N] [--randomised N] [--ablations A ...]``.

Switches the randomisation's factors off one at a time and trains the same recipe on each mix, to
tell which factor a change in false positives or sensitivity comes from (docs/generalisation.md:
scored in the trained window, no factor changes them measurably):

- one fixed-scanner cohort (``--fixed`` mice per variant, every variant at its own scanner);
- ``nominal``: a second fixed-scanner cohort (another seed, ``--randomised`` mice per variant): the
  mix's size and training iterations without its variety, the control for every ablation;
- one randomised cohort per ablation (``--randomised`` mice per variant, the same seed: every
  subject draws the same scanner and animal, the ablated factor excepted, because
  :func:`dfseg.simulate.domain.sample_domain` draws every field in a fixed order), voxel fixed
  at the protocol's 0.15 mm as in ``bench/generalisation.py``:

  - ``randomised``: the documented ranges (the reference mix);
  - ``no-psf``: no detector point-spread function (``psf_sigma_px: [0, 0]``);
  - ``no-crop``: every field of view the whole thorax (``lung_crop_probability: 0``);
  - ``no-tree``: no airway and vessel tree (``tree_probability: 0``);
  - ``no-rings``: no ring artefacts (``ring_gain_sd: [0, 0]``, ``flat_exposures`` 10^6);
  - ``nominal-dose``: the protocol's dose (``dose_scale: [1, 1]``);
  - ``nominal-noise``: the nominal scanner's noise: protocol dose, the standard variant's
    spectrum-weighted visibility (0.19), 4 grating orientations, no rings;
  - ``nominal-anatomy``: the reference mouse's body, lungs and heart (no size or position jitter);
  - ``standard-micro``: the standard variant's lung micro-structure in every mouse.

Half of every (cohort, variant, tumour yes/no) group is held out for testing. Models (the demo's
recipe: attention U-Net, combined input, a fixed 60 epochs, fold 0 validating, ``model.pt`` by validation
score): ``fixed-only`` (fixed training mice), and for each ablation A the fixed training mice plus
A's randomised training mice. Every model is scored by ``dfseg evaluate`` on the same fixed-scanner
test mice, and each mix also on its own randomised test mice. The JSON printed (and
``OUT/ablation.json``) gives per model and test group: false-positive components per scan, lesion
sensitivity (>= 1 mm and per size bin), volume AUROC and Dice, with 95 % subject-bootstrap CIs.
Stages already finished in OUT are reused, and models scored by an earlier call on OUT stay in the report.

About 5 minutes per model (training 4-5) and 2 per cohort on 2 CPU cores with the defaults: an hour for all ten.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generalisation import (  # noqa: E402
    EPOCHS,
    VARIANTS,
    _dfseg,
    _log,
    cohort_entries,
    demo_recipe,
    mark_test,
    summarise,
    train_and_predict,
    write_split_manifest,
)

from dfseg.io import read_json, write_json  # noqa: E402
from dfseg.resources import bundle_dir  # noqa: E402
from dfseg.simulate.protocols import get_protocol  # noqa: E402

#: ablation name -> ``--randomise-ranges`` lines on top of the fixed voxel
#: (``nominal`` is no randomisation at all: a second fixed-scanner cohort, the mix's size without its variety)
ABLATIONS: dict[str, str | None] = {
    "nominal": None,
    "randomised": "",
    "no-psf": "psf_sigma_px: [0, 0]\n",
    "no-crop": "lung_crop_probability: 0\n",
    "no-tree": "tree_probability: 0\n",
    "no-rings": "ring_gain_sd: [0, 0]\nflat_exposures: [1000000, 1000000]\n",
    "nominal-dose": "dose_scale: [1, 1]\n",
    "nominal-noise": "dose_scale: [1, 1]\nreference_visibility: [0.19, 0.19]\norientations: [4, 4]\n"
                     "ring_gain_sd: [0, 0]\nflat_exposures: [1000000, 1000000]\n",
    "nominal-anatomy": "".join(f"{k}: [{v}, {v}]\n" for k, v in (
        ("body_width_scale", 1), ("body_depth_scale", 1), ("lung_scale", 1), ("lung_shift_mm", 0),
        ("heart_scale", 1), ("heart_shift_mm", 0))),
    "standard-micro": "alveolar_radius_um: [30, 30]\nair_fraction: [0.75, 0.75]\nanisotropy: [0.25, 0.25]\n"
                      "correlation_mm: [1.5, 1.5]\n",
}


def make_cohort(out: Path, name: str, n: int, seed: int, workers: int, protocol: str, e_ref: float | None,
                times: dict[str, float]) -> Path:
    """Simulate, calibrate and preprocess one cohort (``fixed`` or an ablation), unless an earlier call
    did; its preprocessed manifest. The time it took goes to ``times``."""
    pre = out / "cohorts" / name / "preprocessed" / "manifest.json"
    if pre.is_file():
        return pre
    t = time.perf_counter()
    root = out / "cohorts" / name
    extra: list[Any] = []
    if ABLATIONS.get(name) is not None:
        ranges = root / "randomise_ranges.yaml"
        ranges.parent.mkdir(parents=True, exist_ok=True)
        voxel = get_protocol(protocol).voxel_mm
        ranges.write_text(f"voxel_mm: [{voxel}, {voxel}]\n{ABLATIONS[name]}")
        extra = ["--randomise-ranges", ranges]
    _log(f"simulate {name}: {n * len(VARIANTS)} mice")
    _dfseg("simulate", "-o", root / "cohort", "--protocol", protocol, "--subjects", n * len(VARIANTS),
           "--variant", *VARIANTS, "--seed", seed + (name != "fixed"), "--workers", workers, "--test-by", "none",
           "--no-progress", "--overwrite", *extra)
    energy = [] if e_ref is None else ["--e-ref-kev", e_ref]
    _dfseg("calibrate", root / "cohort" / "phantoms", "-o", root / "calibration.json", "--overwrite", *energy)
    _log(f"preprocess {name}")
    _dfseg("preprocess", root / "cohort" / "manifest.json", "-o", root / "preprocessed", "--calibration",
           root / "calibration.json", "--workers", workers, "--no-progress", "--overwrite")
    times[f"cohort_{name}"] = time.perf_counter() - t
    return pre


def entries(manifest: Path, name: str, out: Path) -> list[dict]:
    """The cohort's scans, ids prefixed by its name, half of every (variant, tumour) stratum ``test``."""
    return mark_test(cohort_entries(manifest, name, name, out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for cohorts, models, predictions and evaluations")
    parser.add_argument("--fixed", type=int, default=8, help="fixed-scanner mice per variant (default 8)")
    parser.add_argument("--randomised", type=int, default=8, help="randomised mice per variant and ablation (default 8)")
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS),
                        help="mixes to train (default: all)")
    parser.add_argument("--max-epochs", type=int, default=EPOCHS, help=f"training epochs per model (default {EPOCHS})")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--train-seed", type=int, help="training seed (default: --seed); a second seed on the same cohorts")
    parser.add_argument("--protocol", default="demo", help="simulation protocol (default demo; quick for a smoke test)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    fixed = entries(make_cohort(out, "fixed", args.fixed, args.seed, args.workers, args.protocol, None, times),
                    "fixed", out)
    e_ref = next(iter(read_json(out / "cohorts" / "fixed" / "calibration.json")["calibrations"].values()))[
        "reference"]["e_ref_kev"]
    bundle = bundle_dir("dfseg_attention_unet")
    recipe = demo_recipe(args.max_epochs, args.seed if args.train_seed is None else args.train_seed)
    # models scored by an earlier call on OUT stay in the report
    previous = read_json(out / "ablation.json") if (out / "ablation.json").is_file() else {}
    results: dict[str, Any] = previous.get("results", {})
    times.update(previous.get("seconds", {}))
    for name in ["fixed-only", *[a for a in ABLATIONS if a in args.ablations]]:
        extra: list[dict] = []
        if name != "fixed-only":
            extra = entries(make_cohort(out, name, args.randomised, args.seed, args.workers, args.protocol,
                                        e_ref, times), name, out)
        train = [e for e in fixed + extra if not e["test"]]
        test = [e for e in fixed + extra if e["test"]]
        folder = out / "models" / name
        manifest = write_split_manifest(folder / "manifest.json", train, test, args.seed)
        train_and_predict(bundle, name, folder, manifest, len(train), len(test), recipe, times)
        for group in {"fixed", name} - {"fixed-only"}:
            chosen = [e for e in test if e["group"] == group]
            evaluation = folder / "evaluation" / group
            if not (evaluation / "metrics.json").is_file():
                sub = write_split_manifest(folder / "eval" / group / "manifest.json", train, chosen, args.seed)
                _dfseg("evaluate", "--predictions", folder / "predictions", "--manifest", sub, "-o", evaluation,
                       "--split", "test", "--seed", args.seed, "--no-progress", "--overwrite")
            results.setdefault(name, {})["fixed" if group == "fixed" else "own_randomised"] = summarise(
                read_json(evaluation / "metrics.json"))
        report = {"settings": vars(args) | {"out": str(out)}, "seconds": {k: round(v, 1) for k, v in times.items()},
                  "results": results}
        write_json(out / "ablation.json", report)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
