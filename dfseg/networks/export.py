"""Export a trained network to TorchScript and ONNX, each checked against the eager network.

A checkpoint (``model.pt``, ``{"model": state_dict}`` as ``BestModelSaver`` writes it, or ``last.pt``,
``{"network": ...}``) holds weights only; the network they fit is the one ``run_info.json`` beside it
records (``network``, ``modality`` / ``in_channels``, ``hyper_parameters.patch_size``). The exports take
the training patch, ``(B, C, *patch)`` with a free batch size B (sliding-window inference feeds
``sw_batch_size`` patches at once), and return the logits ``(B, 1, *patch)`` of the eval-mode network.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfseg.errors import InputError
from dfseg.io import atomic_directory, atomic_path, read_json, refuse_non_empty, sha256_file, write_json
from dfseg.networks.factory import build

__all__ = ["FILE_NAMES", "FORMATS", "TOLERANCE", "check_formats", "export_checkpoint", "export_onnx",
           "export_record", "export_torchscript", "load_network", "max_abs_difference", "network_record",
           "random_input"]

FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}
#: Largest accepted |export - eager| on a random input.
TOLERANCE = 1e-4
ONNX_OPSET = 18


def network_record(run_info: str | os.PathLike) -> tuple[dict, int, list[int]]:
    """The network arguments, input channels and patch size ``run_info.json`` records.

    Raises:
        InputError: the file is missing or records no network, channels or patch size.
    """
    from dfseg.training.transforms import in_channels

    path = Path(run_info)
    if not path.is_file():
        raise InputError(path, "missing: the network is rebuilt from the run_info.json written beside the "
                               "checkpoint (give --run-info if it lives elsewhere)")
    record = read_json(path)
    if not isinstance(record, Mapping) or not isinstance(record.get("network"), Mapping):
        raise InputError(path, "not a dfseg run record (no 'network' entry)")
    args = {k: v for k, v in record["network"].items() if k != "parameter_count"}
    if "name" not in args:
        raise InputError(path, "its 'network' entry names no network ('name')")
    channels = record.get("in_channels")
    if channels is None and record.get("modality"):
        channels = in_channels(str(record["modality"]))
    if channels is None:
        raise InputError(path, "records neither in_channels nor modality")
    patch = (record.get("predict") or {}).get("roi_size") or (record.get("hyper_parameters") or {}).get("patch_size")
    if not patch:
        raise InputError(path, "records no patch size (hyper_parameters.patch_size); give --input-size")
    dims = int(args.get("spatial_dims", 3))
    return args, int(channels), [int(v) for v in np.broadcast_to(np.ravel(patch), (dims,))]


def _state_dict(checkpoint: Path) -> Mapping[str, torch.Tensor]:
    from dfseg.training.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    for key in ("model", "network"):  # BestModelSaver's model.pt, ResumableCheckpoint's last.pt
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(checkpoint, "holds no network weights (expected a state dict, or one under 'model' or 'network')")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped network
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_network(checkpoint: str | os.PathLike, run_info: str | os.PathLike | None = None,
                 input_size: Sequence[int] | None = None) -> tuple[torch.nn.Module, list[int]]:
    """The eval-mode CPU network of ``checkpoint`` and its input shape ``[1, C, *patch]``.

    Args:
        checkpoint: ``model.pt`` or ``last.pt`` of a training run.
        run_info: the run's ``run_info.json`` (default: beside ``checkpoint``).
        input_size: spatial size of the exported input (default: the recorded patch size).

    Raises:
        InputError: a missing or unreadable file, or weights that do not fit the recorded network.
    """
    checkpoint = Path(checkpoint)
    info = Path(run_info) if run_info is not None else checkpoint.parent / "run_info.json"
    args, channels, patch = network_record(info)
    if input_size is not None:
        if len(input_size) != len(patch):
            raise InputError("--input-size", f"the network is {len(patch)}D, got {len(input_size)} sizes")
        patch = [int(v) for v in input_size]
    try:
        network = build(in_channels=channels, img_size=patch, **args)
    except (TypeError, ValueError) as err:
        raise InputError(info, f"cannot build the recorded network ({str(err).splitlines()[0]})") from None
    try:
        network.load_state_dict(_state_dict(checkpoint))
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or ["mismatch"])[0]
        raise InputError(checkpoint, f"weights do not fit the network recorded in {info.name} ({first[:160]})") from None
    return network.eval(), [1, channels, *patch]


def random_input(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A standard-normal float32 tensor of ``shape`` (the z-scored network input), reproducible by ``seed``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def export_torchscript(network: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace ``network`` on ``example`` and save it (``torch.jit.load`` reads it; no dfseg needed).

    Tracing, not scripting: SwinUNETR's Python control flow does not script. The trace holds for inputs of
    ``example``'s spatial size; the batch size is free.
    """
    with torch.no_grad(), warnings.catch_warnings():
        # SwinUNETR's size-dependent padding is fixed by the trace, as intended: the input size is fixed
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(network.eval(), example, check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    return Path(path)


def export_onnx(network: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Export ``network`` with ``torch.onnx`` (the ``torch.export`` based exporter, opset 18), input
    ``image`` ``(batch, C, *spatial)`` with a free batch size, output ``logits``; checked by
    ``onnx.checker`` before it is written.

    Raises:
        InputError: ``onnx`` / ``onnxscript`` are not installed (``pip install 'dfseg[export]'``).
    """
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError("--format onnx", f"needs {' and '.join(missing)}: pip install 'dfseg[export]'")
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its steps
        program = torch.onnx.export(network.eval(), (example,), dynamo=True, input_names=["image"],
                                    output_names=["logits"], opset_version=ONNX_OPSET,
                                    dynamic_shapes=({0: batch},), verbose=False)
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
    return Path(path)


def _run_export(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray | None:
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path), map_location="cpu")(x).numpy()
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def max_abs_difference(network: torch.nn.Module, fmt: str, path: str | os.PathLike, x: torch.Tensor) -> float | None:
    """``max |export(x) - network(x)|`` for an exported file (ONNX runs in onnxruntime; ``None`` when
    onnxruntime is not installed)."""
    got = _run_export(fmt, Path(path), x)
    if got is None:
        return None
    with torch.no_grad():
        expected = network.eval()(x).numpy()
    if got.shape != expected.shape:
        raise InputError(path, f"export gives shape {list(got.shape)}, the network {list(expected.shape)}")
    return float(np.abs(got - expected).max())


def check_formats(text: str) -> list[str]:
    """``"torchscript,onnx"`` -> ``["torchscript", "onnx"]``; unknown or repeated names are refused."""
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats or len(set(formats)) != len(formats):
        raise InputError("--format", f"expected distinct names from {', '.join(FORMATS)}, got {text!r}")
    return formats


def export_record(checkpoint: Path, shape: Sequence[int], results: Mapping[str, Any]) -> dict:
    """What ``export.json`` says: the checkpoint, input shape, and per format the file and its check."""
    return {"checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)},
            "input": {"name": "image", "shape": list(shape), "batch": "free"},
            "output": {"name": "logits", "meaning": "tumour logits; sigmoid gives the probability"},
            "tolerance": TOLERANCE, "torch": torch.__version__, "exports": dict(results)}


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, formats: Sequence[str] = FORMATS, *,
                      run_info: str | os.PathLike | None = None, input_size: Sequence[int] | None = None,
                      overwrite: bool = False, seed: int = 0, log: Any = print) -> dict:
    """Write ``model.ts`` / ``model.onnx`` and ``export.json`` into ``out``, each export checked against
    the eager network on a random input of another batch size than the one exported with.

    Args:
        checkpoint: ``model.pt`` or ``last.pt``; ``run_info.json`` beside it (or ``run_info``) names the network.
        out: output folder; written whole or not at all.
        formats: names from :data:`FORMATS`.
        input_size: spatial size of the exported input (default: the recorded patch size).
        overwrite: replace a non-empty ``out``.
        seed: seed of the check input.
        log: called with one progress line per step.

    Returns:
        The ``export.json`` document.

    Raises:
        InputError: unreadable inputs, or an export that differs from the eager network by more than
            :data:`TOLERANCE` (nothing is written then).
    """
    checkpoint = Path(checkpoint)
    refuse_non_empty(out, overwrite=overwrite)
    network, shape = load_network(checkpoint, run_info, input_size)
    # batch 2 to export (torch.export fixes a batch of 1 as a constant), batch 1 to check: the batch is free
    example = random_input([2, *shape[1:]], seed)
    check = random_input(shape, seed + 1)
    results: dict[str, Any] = {}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for fmt in formats:
            log(f"{fmt}: exporting {type(network).__name__} at input {shape} ...")
            path = tmp / FILE_NAMES[fmt]
            (export_torchscript if fmt == "torchscript" else export_onnx)(network, example, path)
            diff = max_abs_difference(network, fmt, path, check)
            if diff is not None and not diff <= TOLERANCE:
                raise InputError(checkpoint, f"{fmt} export differs from the network by {diff:.3g} "
                                             f"(> {TOLERANCE:g}) on a random input; nothing written")
            checked = "unchecked (onnxruntime not installed)" if diff is None else f"max |diff| {diff:.2g}"
            log(f"{fmt}: {FILE_NAMES[fmt]}, {checked}")
            results[fmt] = {"file": FILE_NAMES[fmt], "max_abs_diff": diff, "check_input_shape": list(check.shape)}
        record = export_record(checkpoint, shape, results)
        write_json(tmp / "export.json", record)
    return record
