"""``dfseg model-card``: write the model card (JSON + Markdown) of a training run."""

from __future__ import annotations

import argparse

from dfseg.commands import add_out
from dfseg.reporting.model_card import write_model_card

HELP = "write the model card (JSON + Markdown) of a training run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (holds run_info.json)")
    add_out(parser, "output folder for model_card.json / model_card.md (default: RUN_DIR)", metavar="OUT",
            default=None)
    parser.add_argument("--metrics", metavar="METRICS_JSON", default=None,
                        help="metrics.json of dfseg evaluate (default: RUN_DIR/metrics.json or RUN_DIR/evaluation/)")
    parser.add_argument("--bundle-readme", metavar="README", default=None,
                        help="also write a bundle docs/README.md generated from the card")
    parser.add_argument("--overwrite", action="store_true", help="replace existing model card files")


def run(args: argparse.Namespace) -> int:
    json_path, md_path = write_model_card(args.run_dir, args.out, metrics=args.metrics,
                                          bundle_readme=args.bundle_readme, overwrite=args.overwrite)
    print(f"wrote {json_path} and {md_path}")
    return 0
