"""Benchmark: the demo without the phantom's straight vessels, and what its model fits.

Usage: ``python bench/vessel_ablation.py OUT [--seed 0]``. Runs ``dfseg demo`` (defaults: 40 mice of
the ``demo`` protocol, an 8-minute training budget) with one change to the simulator: the reference phantom's
straight vessels (``build_anatomy``'s ``n_vessels`` solid tubes per lung, 0.3-0.7 mm across,
radiating from the hilum) are left out, so the lung holds no solid structure but the tumours.
Everything else (scanner, dose, tumours' sizes and shapes, recipe) is the demo's; the random
draws after the vessels differ, so the mice are other mice. Then runs ``bench/lesion_fit.py`` on
the run (``OUT/fit``) and prints its JSON: which lesion sizes the model fits on its own training
mice, and where its false positives lie.

The cohort is simulated in this process (``--workers 1``: the change is made here, and spawned
workers would not see it); a cohort's files do not depend on the worker count. About 12 minutes on
2 CPU cores; ``make bench`` leaves it out.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
from pathlib import Path

import dfseg.simulate.cohort as cohort
from dfseg.cli import main as dfseg_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="new folder: OUT/demo (the run) and OUT/fit (bench/lesion_fit.py)")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (default 0)")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out}: not empty")
    cohort.build_anatomy = functools.partial(cohort.build_anatomy, n_vessels=0)
    code = dfseg_main(["demo", "-o", str(args.out / "demo"), "--seed", str(args.seed), "--workers", "1",
                       "--no-progress"])
    if code:
        raise SystemExit(code)
    fit = subprocess.run([sys.executable, str(Path(__file__).with_name("lesion_fit.py")), str(args.out / "demo"),
                          str(args.out / "fit")])
    raise SystemExit(fit.returncode)


if __name__ == "__main__":
    main()
