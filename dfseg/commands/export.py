"""``dfseg export``: TorchScript and ONNX of a trained network (:mod:`dfseg.networks.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfseg.commands import add_out
from dfseg.errors import InputError
from dfseg.networks.export import FORMATS, TOLERANCE, check_formats, export_checkpoint

HELP = "export a checkpoint's network to TorchScript and ONNX, each checked against the network"


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError("--input-size", f"expected sizes such as 64,64,64, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise InputError("--input-size", f"expected positive sizes such as 64,64,64, got {text!r}")
    return sizes


def _diff(value: float | None) -> str:
    return "unchecked (no onnxruntime)" if value is None else f"{value:.2g}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="model.pt (or last.pt) of a training run; run_info.json beside it names the network")
    add_out(parser, "output folder: model.ts, model.onnx, export.json", type=Path, required=True)
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated formats from {', '.join(FORMATS)} (default: both)")
    parser.add_argument("--run-info", type=Path, help="run_info.json of the run (default: beside the checkpoint)")
    parser.add_argument("--input-size", type=_sizes, metavar="X,Y,Z",
                        help="spatial input size of the export (default: the training patch size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check input (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    formats = check_formats(args.format)
    record = export_checkpoint(args.checkpoint, args.out, formats, run_info=args.run_info,
                               input_size=args.input_size, overwrite=args.overwrite, seed=args.seed,
                               log=lambda line: print(f"dfseg export: {line}", flush=True))
    checks = ", ".join(f"{fmt} {_diff(r['max_abs_diff'])}" for fmt, r in record["exports"].items())
    print(f"dfseg export: {len(formats)} export(s) of input {record['input']['shape']} -> {args.out} "
          f"(max |diff| vs the network, tolerance {TOLERANCE:g}: {checks})")
    return 0
