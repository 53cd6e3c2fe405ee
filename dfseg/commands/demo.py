"""``dfseg demo``: the whole pipeline on a built-in simulated cohort.

The cohort is the ``standard`` phantom on the demo protocol's scanner unless ``--variant`` deals other
phantom variants and ``--randomise-fraction`` puts a share of the mice on domain-randomised scanners
and animals (``make model``'s cohort; the calibration is then a set, one entry per spectrum).

simulate -> calibrate -> preprocess -> train (the attention U-Net bundle, or ``--bundle dfseg_swinunetr``;
combined input) -> infer -> evaluate -> report, each stage timed, into ``runs/demo-<timestamp>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from dfseg.calibration.energy import scan_effective_energy
from dfseg.cli import main
from dfseg.commands import add_no_progress, add_out
from dfseg.errors import DfsegError, InputError
from dfseg.io import prepare_output_dir, read_json, write_json
from dfseg.resources import bundle_dir, run_bundle
from dfseg.simulate.acquisition import AcquisitionConfig
from dfseg.simulate.domain import check_randomise_fraction, load_ranges
from dfseg.simulate.protocols import get_protocol
from dfseg.simulate.variants import VARIANTS

HELP = "run the whole pipeline on a built-in simulated cohort"


@dataclass(frozen=True)
class DemoConfig:
    """Demo-size cohort and training budget (simulator physics stays at its defaults).

    ``time_budget_min`` bounds the training's wall clock: as many epochs as fit (at most
    ``max_epochs``), the learning-rate schedule ending with them, so the demo finishes in its 15
    minutes on a slower machine too; None trains exactly ``max_epochs``.
    """

    subjects: int = 40
    protocol: str = "demo"
    folds: int = 5
    max_epochs: int = 150
    time_budget_min: float | None = 8.0
    val_interval: int = 5
    patch_size: int = 32
    batch_size: int = 4
    num_samples: int = 4
    channels: tuple[int, ...] = (8, 16, 32, 64)
    learning_rate: float = 3e-3
    seed: int = 0
    variants: tuple[str, ...] = ("standard",)
    randomise_fraction: float = 0.0
    randomise_ranges: str | None = None


DEFAULT = DemoConfig()
SUMMARY_METRICS = ("volume_auroc", "volume_sens_at_95spec", "volume_sensitivity", "volume_specificity", "dice")
QUICK = DemoConfig(subjects=12, protocol="quick", folds=3, max_epochs=4, time_budget_min=None, val_interval=2)
#: The bundles the demo trains (``--bundle``). The cohort, folds, schedule and batch are the demo's own;
#: the U-Net gets the demo's network and patch, SwinUNETR its bundle's defaults (the shipped model's).
BUNDLES = ("dfseg_attention_unet", "dfseg_swinunetr")
VARIANT_NAMES = tuple(sorted(VARIANTS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out(parser, "output folder (default: runs/demo-<timestamp>)", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="a smaller cohort and a short training (about 1 min on CPU)")
    parser.add_argument("--subjects", type=int, help=f"number of simulated mice (default {DEFAULT.subjects}, quick {QUICK.subjects})")
    parser.add_argument("--max-epochs", type=int, help=f"training epochs (default {DEFAULT.max_epochs}, quick {QUICK.max_epochs})")
    parser.add_argument("--seed", type=int, default=0, help="seed for simulation, folds and training (default 0)")
    parser.add_argument("--variant", nargs="+", choices=VARIANT_NAMES, metavar="V",
                        help="phantom variant(s) dealt to the mice in turn, as dfseg simulate's --variant "
                             f"({', '.join(VARIANT_NAMES)}; default standard)")
    parser.add_argument("--randomise-fraction", type=float, default=0.0, metavar="F",
                        help="share of the mice whose scanner and animal are drawn from the domain-randomisation "
                             "ranges (dfseg simulate --randomise; docs/domain_randomisation.md); default 0: every "
                             "mouse on the protocol's scanner")
    parser.add_argument("--randomise-ranges", type=Path, metavar="FILE.yaml",
                        help="ranges replacing the documented defaults for the randomised mice (with "
                             "--randomise-fraction)")
    parser.add_argument("--bundle", default=BUNDLES[0], choices=BUNDLES,
                        help=f"network to train (default {BUNDLES[0]}; {BUNDLES[1]} wants a GPU)")
    parser.add_argument("--time-budget", type=float, metavar="MIN",
                        help=f"wall-clock minutes of training: as many epochs as fit, at most --max-epochs "
                             f"(default {DEFAULT.time_budget_min:g}, quick none; 0: none, exactly --max-epochs)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (default: CUDA if present)")
    parser.add_argument("--workers", type=int, default=2, help="simulation worker processes (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already holds results")
    add_no_progress(parser)


def demo_reference_energy_kev() -> float:
    """The energy dark-field is stated at in every demo calibration: the effective energy of the demo
    scanner (70 kVp + 1 mm Al, its visibility spectrum), about 34.3 keV. A cohort of one spectrum at
    that scanner is left unchanged by it; a cohort over several spectra (``--variant``,
    ``--randomise-fraction``) comes out on that scale too, so every demo-made model reads the same units."""
    scanner = AcquisitionConfig()
    return scan_effective_energy(scanner.kvp, scanner.filtration_mm, scanner.visibility)


def _stage(n: int, total: int, name: str) -> float:
    print(f"\n[{n}/{total}] {name}", flush=True)
    return time.perf_counter()


def _dfseg(*argv: str) -> None:
    """Run a dfseg sub-command in-process; a failure stops the demo with that command's message."""
    code = main([str(a) for a in argv])
    if code != 0:
        raise DfsegError(f"dfseg {argv[0]}", f"stage failed with exit code {code} (message above)")


def run(args: argparse.Namespace) -> int:
    cfg = QUICK if args.quick else DEFAULT
    budget = cfg.time_budget_min if args.time_budget is None else (args.time_budget if args.time_budget > 0 else None)
    # checked before the output folder exists, so a bad value leaves nothing behind
    check_randomise_fraction(args.randomise_fraction, "--randomise-fraction")
    if args.randomise_ranges is not None:
        if args.randomise_fraction == 0.0:
            raise InputError("--randomise-ranges", "given without --randomise-fraction (no mouse is randomised)")
        load_ranges(args.randomise_ranges)
    cfg = replace(cfg, seed=args.seed, subjects=args.subjects or cfg.subjects,
                  max_epochs=args.max_epochs or cfg.max_epochs, time_budget_min=budget,
                  variants=tuple(args.variant or cfg.variants), randomise_fraction=args.randomise_fraction,
                  randomise_ranges=str(args.randomise_ranges) if args.randomise_ranges else None)
    out = args.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    out = prepare_output_dir(out, overwrite=args.overwrite)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    # on a CPU, data-loader worker processes only steal cores from the network's own threads
    loader_workers = min(8, max(2, (os.cpu_count() or 2) - 2)) if device == "cuda" else 0
    unet = args.bundle == "dfseg_attention_unet"
    network = ({"patch_size": cfg.patch_size, "channels": list(cfg.channels), "learning_rate": cfg.learning_rate}
               if unet else {})
    # the record names the network settings the run was given (none for SwinUNETR: its bundle's defaults)
    recorded = {k: v for k, v in asdict(cfg).items() if unet or k not in ("patch_size", "channels", "learning_rate")}
    write_json(out / "demo_config.json", {**recorded, "bundle": args.bundle, "network": network,
                                          "device": device, "quick": bool(args.quick)})
    proto = get_protocol(cfg.protocol)
    epochs = (f"{cfg.max_epochs} epochs" if cfg.time_budget_min is None
              else f"{cfg.time_budget_min:g} min of training, at most {cfg.max_epochs} epochs")
    mix = "" if cfg.variants == ("standard",) else f" over variants {', '.join(cfg.variants)}"
    mix += f", {cfg.randomise_fraction:.0%} on randomised scanners" if cfg.randomise_fraction else ""
    print(f"dfseg demo -> {out}  ({'quick, ' if args.quick else ''}{cfg.subjects} mice{mix}, protocol {proto.name}: "
          f"{' x '.join(map(str, proto.grid()))} voxels of {proto.voxel_mm} mm, {epochs}, device {device})")
    total, times = 7, {}
    cohort, pre, train_dir = out / "cohort", out / "preprocessed", out / "train"
    bundle = bundle_dir(args.bundle)

    t = _stage(1, total, "simulate: mouse thorax phantoms, tumours, Talbot-Lau CT acquisition, phantoms")
    quiet = ["--no-progress"] if args.no_progress else []
    randomise = []
    if cfg.randomise_fraction > 0:
        randomise = ["--randomise", "--randomise-fraction", cfg.randomise_fraction]
        randomise += ["--randomise-ranges", cfg.randomise_ranges] if cfg.randomise_ranges else []
    _dfseg("simulate", "-o", cohort, "--subjects", cfg.subjects, "--protocol", cfg.protocol,
           "--variant", *cfg.variants, *randomise,
           "--seed", cfg.seed, "--workers", args.workers, "--folds", cfg.folds, *quiet)
    times["simulate"] = time.perf_counter() - t

    t = _stage(2, total, "calibrate: beam-hardening curves and energy exponent from the phantom scans")
    _dfseg("calibrate", cohort / "phantoms", "-o", out / "calibration.json", "--e-ref-kev", demo_reference_energy_kev())
    times["calibrate"] = time.perf_counter() - t

    t = _stage(3, total, "preprocess: flux/drift -> beam hardening -> FBP -> spectrum -> decomposition")
    _dfseg("preprocess", cohort / "manifest.json", "-o", pre, "--calibration", out / "calibration.json", *quiet)
    times["preprocess"] = time.perf_counter() - t

    t = _stage(4, total, f"train: {args.bundle} bundle, combined input (TensorBoard logs in train/)")
    run_bundle(bundle, "train", manifest=pre / "manifest.json", fold=0, modality="combined",
            max_epochs=cfg.max_epochs, time_budget=cfg.time_budget_min, val_interval=cfg.val_interval,
            patience=cfg.max_epochs, batch_size=cfg.batch_size, num_samples=cfg.num_samples, **network,
            device=device, output_dir=train_dir, seed=cfg.seed, num_workers=loader_workers,
            progress=not args.no_progress)
    times["train"] = time.perf_counter() - t

    t = _stage(5, total, "infer: sliding-window inference on the held-out test subjects")
    run_bundle(bundle, "inference", manifest=pre / "manifest.json", modality="combined", split="test",
            **({"channels": network["channels"]} if unet else {}), device=device, output_dir=train_dir,
            predictions_dir=out / "predictions", num_workers=loader_workers)
    times["infer"] = time.perf_counter() - t

    t = _stage(6, total, "evaluate: detection, segmentation and calibration metrics with bootstrap CIs")
    _dfseg("evaluate", "--predictions", out / "predictions", "--manifest", pre / "manifest.json",
           "-o", out / "evaluation", "--split", "test", "--seed", cfg.seed, *quiet)
    times["evaluate"] = time.perf_counter() - t

    t = _stage(7, total, "report: model card")
    _dfseg("model-card", train_dir, "-o", out / "model_card", "--metrics", out / "evaluation" / "metrics.json")
    times["report"] = time.perf_counter() - t

    metrics = read_json(out / "evaluation" / "metrics.json")
    write_json(out / "demo_summary.json", {"stage_seconds": times, "metrics_file": str(out / "evaluation" / "metrics.json")})
    _summary(out, metrics, times)
    return 0


def _summary(out: Path, metrics: dict, times: dict[str, float]) -> None:
    print("\n== dfseg demo finished ==")
    for name, sec in times.items():
        print(f"  {name:<11} {sec:7.1f} s")
    table = metrics.get("metrics", {})
    for key in SUMMARY_METRICS:
        value = table.get(key)
        if isinstance(value, dict) and value.get("estimate") is not None:
            print(f"  {key:<24} {value['estimate']:.3f}  (95% CI {value.get('ci_low', float('nan')):.3f}"
                  f" to {value.get('ci_high', float('nan')):.3f})")
    print(f"  report:      {out / 'evaluation' / 'report.md'}")
    print(f"  TensorBoard: tensorboard --logdir {out / 'train'}")
