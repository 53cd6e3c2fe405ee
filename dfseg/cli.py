"""The ``dfseg`` command: one entry point, one sub-command per pipeline stage.

Each sub-command lives in ``dfseg/commands/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so ``dfseg --help`` is fast and a broken stage never breaks the others.

Errors a user can fix (:class:`dfseg.errors.DfsegError`) print as one line on stderr with a
non-zero exit; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from dfseg import __version__
from dfseg.errors import DfsegError

#: sub-command -> (module under dfseg.commands, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulate", "simulate a dark-field CT (or radiograph) mouse cohort with calibration phantoms"),
    "validate-manifest": ("validate_manifest", "check a cohort manifest and every file it names"),
    "import": ("import_scans", "build a manifest for a folder of your own scans (any format dfseg reads; labels optional)"),
    "calibrate": ("calibrate", "fit beam-hardening curves and the energy exponent from phantom scans"),
    "preprocess": ("preprocess", "correct, reconstruct and decompose a cohort into network-ready volumes"),
    "register": ("register", "register a histology label volume to an image (rigid then B-spline)"),
    "train": ("train", "train one model with a bundle (short for python -m monai.bundle run ... train.yaml)"),
    "cv": ("cv", "subject-level k-fold cross-validation of a bundle"),
    "evaluate": ("evaluate", "detection, segmentation and calibration metrics with bootstrap CIs, report"),
    "predict": ("predict", "run a trained model on scans: probability map, lesion masks and list, montage"),
    "study": ("study", "attenuation vs dark-field vs combined: train and compare one model per modality"),
    "export": ("export", "export a checkpoint's network to TorchScript and ONNX, each checked against the network"),
    "model-card": ("model_card", "write the model card (JSON + Markdown) of a training run"),
    "demo": ("demo", "run the whole pipeline on a built-in simulated cohort"),
    "doctor": ("doctor", "report the environment (versions, CUDA, threads, disk) and what is missing"),
    "retrieve": ("retrieve", "retrieve proj_T / proj_D (and attn / df) from a Talbot-Lau scanner's raw phase-stepping frames"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfseg",
        description="Early-stage lung tumour detection in preclinical X-ray dark-field CT.",
    )
    parser.add_argument("--version", action="version", version=f"dfseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(f"dfseg.commands.{module_name}")
    parser = argparse.ArgumentParser(prog=f"dfseg {name}", description=help_text)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    module.add_arguments(parser)
    return parser, module


def _user_error(err: BaseException) -> DfsegError | None:
    """The DfsegError somewhere in ``err``'s chain of causes, if any."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DfsegError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    top = build_parser()
    # the top-level parser only picks the command; the command's own parser reads the rest
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is None or argv[first] not in COMMANDS:
        try:
            top.parse_args(argv if argv else ["--help"])
        except SystemExit as exit_:
            return int(exit_.code or 0)
        top.print_help()
        return 2
    name = argv[first]
    rest = argv[:first] + argv[first + 1:]
    try:
        parser, module = _command_parser(name)
        try:
            args = parser.parse_args(rest)
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return int(module.run(args) or 0)
    except DfsegError as err:
        if debug:
            traceback.print_exc()
        print(f"dfseg {name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dfseg {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if debug:
            traceback.print_exc()
        cause = _user_error(err)
        if cause is not None:  # a DfsegError wrapped by a library (e.g. MONAI's "applying transform ...")
            print(f"dfseg {name}: error: {cause}", file=sys.stderr)
            return 1
        msg = str(err).splitlines()[0] if str(err) else ""
        print(f"dfseg {name}: error: {type(err).__name__}: {msg} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
