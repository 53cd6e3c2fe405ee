"""What TensorBoard shows of a validation: the slice through a lesion of the attenuation and dark-field
``c0`` channels with the label and prediction outlined, and the attention U-Net's gate coefficients
there.

Images are RGB, ``(H, W, 3)`` uint8, displayed with X across and Y up (rows from high to low Y,
anterior at the top for RAS scans), upscaled by a whole factor to about :data:`DISPLAY_PX` pixels so
that one-pixel lesions stay visible. Colours are Okabe-Ito (safe for red-green colour blindness):
label sky blue, prediction orange; gate coefficients in ``cividis`` on a fixed [0, 1] scale, so
epochs compare.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from scipy import ndimage

from dfseg.channels import MODALITY_CHANNELS
from dfseg.networks.attention_resunet import AttentionResUNet

__all__ = ["LABEL_RGB", "PRED_RGB", "TensorBoardOverlays", "attention_panel", "contour", "display",
           "gate_coefficients", "lesion_centre", "overlay_panel"]

#: Okabe-Ito sky blue: the reference label's outline
LABEL_RGB = (86, 180, 233)
#: Okabe-Ito orange: the prediction's outline (probability >= threshold)
PRED_RGB = (230, 159, 0)
#: outline of the label over the gate-coefficient map (cividis holds blue and yellow already)
LABEL_ON_MAP_RGB = (255, 255, 255)
#: target size of the longer image side, in display pixels
DISPLAY_PX = 256


def display(plane: np.ndarray, scale: int) -> np.ndarray:
    """A ``(X, Y)`` plane as displayed: ``(Y, X)`` with Y up, each voxel a ``scale x scale`` block."""
    shown = np.asarray(plane).T[::-1]
    return np.repeat(np.repeat(shown, scale, axis=0), scale, axis=1)


def display_scale(shape: Sequence[int]) -> int:
    """Whole upscaling factor bringing the longer side of ``shape`` to about :data:`DISPLAY_PX`."""
    return max(1, DISPLAY_PX // max(int(s) for s in shape))


def contour(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The inner outline of a boolean mask, ``width`` pixels wide (every pixel of parts thinner than that)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def _grey(plane: np.ndarray) -> np.ndarray:
    """``plane`` windowed to its 1st-99th percentile, as RGB uint8."""
    plane = np.asarray(plane, dtype=np.float64)
    lo, hi = np.percentile(plane, [1, 99]) if plane.size else (0.0, 1.0)
    grey = np.clip((plane - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(plane)
    return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _outline(rgb: np.ndarray, mask: np.ndarray, colour: Sequence[int], scale: int) -> np.ndarray:
    rgb[contour(display(mask, scale), width=max(1, scale // 4))] = colour
    return rgb


def overlay_panel(image: np.ndarray, label: np.ndarray | None, prob: np.ndarray | None,
                  threshold: float = 0.5) -> np.ndarray:
    """One channel's ``(X, Y)`` slice in grey with the label (sky blue) and prediction (orange) outlined.

    Args:
        image: ``(X, Y)`` slice of one input channel (any units; windowed to its 1-99th percentile).
        label: ``(X, Y)`` reference label (> 0 is lesion), or None.
        prob: ``(X, Y)`` tumour probability, or None; outlined where ``>= threshold``.
        threshold: probability threshold of the prediction outline.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    scale = display_scale(np.shape(image))
    rgb = _grey(display(image, scale))
    if label is not None:
        _outline(rgb, np.asarray(label) > 0, LABEL_RGB, scale)
    if prob is not None:  # drawn last: where both outlines meet, the prediction's shows
        _outline(rgb, np.asarray(prob) >= threshold, PRED_RGB, scale)
    return rgb


def attention_panel(image: np.ndarray, alpha: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    """The input slice (grey) beside the gate coefficients (cividis, 0 to 1), the label outlined on both.

    Args:
        image: ``(X, Y)`` slice of the network input the gate saw.
        alpha: ``(X, Y)`` gate coefficients in [0, 1] on the same grid.
        label: ``(X, Y)`` reference label, or None.

    Returns:
        ``(H, 2 W, 3)`` uint8.
    """
    from matplotlib import colormaps  # reason: matplotlib only when images are drawn

    scale = display_scale(np.shape(image))
    left = _grey(display(image, scale))
    right = (colormaps["cividis"](np.clip(display(alpha, scale), 0, 1))[..., :3] * 255).round().astype(np.uint8)
    if label is not None:
        _outline(left, np.asarray(label) > 0, LABEL_RGB, scale)
        _outline(right, np.asarray(label) > 0, LABEL_ON_MAP_RGB, scale)
    return np.concatenate([left, right], axis=1)


def lesion_centre(label: np.ndarray | None, prob: np.ndarray) -> tuple[int, ...]:
    """Voxel through which to slice: the centroid, within its largest cross-section along the last axis,
    of the label; without a lesion, the most probable voxel (where a false positive would be).

    Args:
        label: ``(X, Y[, Z])`` reference label, or None.
        prob: ``(X, Y[, Z])`` tumour probability.
    """
    if label is not None and np.any(np.asarray(label) > 0):
        mask = np.asarray(label) > 0
        if mask.ndim == 3:
            z = int(np.argmax(mask.sum(axis=(0, 1))))
            xy = np.argwhere(mask[..., z]).mean(axis=0).round().astype(int)
            return int(xy[0]), int(xy[1]), z
        return tuple(int(v) for v in np.argwhere(mask).mean(axis=0).round().astype(int))
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(prob)), np.shape(prob)))


@contextmanager
def gate_coefficients(network: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the attention gates' coefficients of every forward pass run inside the block.

    Forward hooks on the decoder levels of an :class:`~dfseg.networks.AttentionResUNet` (plain or
    DDP-wrapped) record each level's ``alpha`` ``(B, 1, *spatial of its skip)``, coarsest gate first
    within a pass; the hooks are removed on leaving the block. Any other network yields an empty list.
    """
    net = getattr(network, "module", network)
    maps: list[torch.Tensor] = []
    levels = net.decoder if isinstance(net, AttentionResUNet) else []
    handles = [level.register_forward_hook(lambda _module, _args, out: maps.append(out[1].detach()))
               for level in levels]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def _patch(image: torch.Tensor, centre: Sequence[int], roi: Sequence[int]) -> tuple[torch.Tensor, list[slice]]:
    """The ``roi``-sized window of ``image`` (C, *spatial) around ``centre``, zero-padded where the image is
    smaller, and the window's slices in image coordinates."""
    spatial = image.shape[1:]
    pads: list[int] = []
    for size, r in zip(reversed(spatial), reversed(roi)):
        pads += [0, max(0, int(r) - int(size))]
    padded = F.pad(image, pads)
    window = []
    for c, size, r in zip(centre, padded.shape[1:], roi):
        start = int(np.clip(int(c) - int(r) // 2, 0, int(size) - int(r)))
        window.append(slice(start, start + int(r)))
    return padded[(slice(None), *window)], window


class TensorBoardOverlays:
    """TensorBoard images of each validation: what a scientist checks a segmentation against.

    Attach to the evaluator (rank 0). For the first ``max_volumes`` validation volumes with a lesion
    (the same volumes every epoch; without any lesion, the first volume at its most probable voxel),
    at the slice through the largest cross-section of the label, it writes at the trainer's epoch:

    - ``overlay_attn/<scan_id>``, ``overlay_c0/<scan_id>``: the attenuation and dark-field ``c0``
      input channels (those the modality has) with the label (sky blue) and the prediction
      (orange, probability >= ``threshold``) outlined (:func:`overlay_panel`);
    - ``attention_gate<k>/<scan_id>`` for an attention U-Net: the input's first channel beside gate
      ``k``'s coefficients (``k = 0`` the finest skip, upsampled to the input grid) over the ``roi_size``
      window around that voxel, from one extra forward pass with :func:`gate_coefficients` hooks
      (:func:`attention_panel`).

    Args:
        summary_writer: a ``SummaryWriter`` (or :class:`dfseg.training.NullSummaryWriter`).
        network: the evaluated network (plain or DDP-wrapped); needed for the gate maps only.
        modality: ``attn``, ``df`` or ``combined``: names the input channels.
        roi_size: the network's window (the training patch), voxels per spatial axis.
        max_volumes: volumes shown per validation.
        threshold: probability threshold of the prediction outline.
    """

    def __init__(self, summary_writer: Any, network: torch.nn.Module | None = None, *, modality: str = "combined",
                 roi_size: Sequence[int] | int | None = None, max_volumes: int = 2, threshold: float = 0.5) -> None:
        if modality not in MODALITY_CHANNELS:
            raise ValueError(f"modality: expected one of {sorted(MODALITY_CHANNELS)}, got {modality!r}")
        self.writer = summary_writer
        self.network = network
        self.channels = MODALITY_CHANNELS[modality]
        self.roi_size = roi_size
        self.max_volumes = int(max_volumes)
        self.threshold = float(threshold)
        self._shown: list[dict[str, np.ndarray]] = []  # per lesion volume, its tagged images
        self._fallback: dict[str, np.ndarray] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._shown, self._fallback = [], {}

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        items = zip(batch, output) if isinstance(output, list) else [(batch, output)]
        for b, o in items:
            label = o.get("label", b.get("label"))
            if label is not None and bool((torch.as_tensor(label) > 0).any()):
                if len(self._shown) < self.max_volumes:
                    self._shown.append(self.images(b, o))
            elif not self._shown and not self._fallback:
                self._fallback = self.images(b, o)

    def images(self, batch_item: dict, output_item: dict) -> dict[str, np.ndarray]:
        """The tagged ``(H, W, 3)`` images of one volume.

        Args:
            batch_item: the volume's data dictionary (``scan_id``; ``image``, ``label`` when the output
                lacks them).
            output_item: the evaluator's output for it: ``image`` (C, *spatial), ``label`` and ``pred``
                (1, *spatial), ``pred`` as probabilities.
        """
        image = torch.as_tensor(output_item.get("image", batch_item.get("image"))).detach().float()
        image = image.as_tensor() if hasattr(image, "as_tensor") else image  # a plain tensor, not a MetaTensor
        label_t = output_item.get("label", batch_item.get("label"))
        label = None if label_t is None else np.asarray(torch.as_tensor(label_t).detach().cpu().float())[0]
        prob = np.asarray(torch.as_tensor(output_item["pred"]).detach().cpu().float())[0]
        scan_id = str(batch_item.get("scan_id", "volume"))
        centre = lesion_centre(label, prob)
        arr = np.asarray(image.cpu())
        out = {}
        for name in ("attn", "c0"):
            if name in self.channels:
                cut = _plane(centre)
                out[f"overlay_{name}/{scan_id}"] = overlay_panel(arr[self.channels.index(name)][cut],
                                                                 None if label is None else label[cut],
                                                                 prob[cut], self.threshold)
        for k, (window, alpha) in enumerate(self.gate_maps(image, centre)):
            cut = _plane([c - w.start for c, w in zip(centre, window)])
            patch_label = None if label is None else label[tuple(window)][cut]
            out[f"attention_gate{k}/{scan_id}"] = attention_panel(arr[0][tuple(window)][cut], alpha[cut], patch_label)
        return out

    def gate_maps(self, image: torch.Tensor, centre: Sequence[int]) -> list[tuple[list[slice], np.ndarray]]:
        """Gate coefficients of the attention U-Net around ``centre``, finest gate first.

        Args:
            image: the network input ``(C, *spatial)``.
            centre: voxel the ``roi_size`` window is centred on (moved inside the image at its borders).

        Returns:
            ``(window, alpha)`` per gate: the window's slices in image coordinates (clipped to the
            image) and alpha on that window of the input grid; empty for any other network.
        """
        net = getattr(self.network, "module", self.network)
        if not isinstance(net, AttentionResUNet):
            return []
        spatial = [int(s) for s in image.shape[1:]]
        roi = spatial if self.roi_size is None else [int(r) for r in np.broadcast_to(self.roi_size, (len(spatial),))]
        patch, window = _patch(image, centre, roi)
        device = next(net.parameters()).device
        with torch.no_grad(), gate_coefficients(net) as maps:
            net(patch[None].to(device))
        mode = "trilinear" if len(spatial) == 3 else "bilinear"
        # the window may reach into the zero padding of an image smaller than the ROI: keep the image part
        inside = tuple(slice(0, min(w.stop, s) - w.start) for w, s in zip(window, spatial))
        clipped = [slice(w.start, w.start + i.stop) for w, i in zip(window, inside)]
        maps = maps[::-1]  # the hooks record the coarsest gate first
        return [(clipped, np.asarray(F.interpolate(a.float(), size=roi, mode=mode, align_corners=False)[0, 0].cpu())[inside])
                for a in maps]

    def _write(self, engine: Engine) -> None:
        step = int(engine.state.epoch)
        images = {tag: rgb for volume in self._shown for tag, rgb in volume.items()} or self._fallback
        for tag, rgb in images.items():
            self.writer.add_image(tag, rgb, step, dataformats="HWC")
        flush = getattr(self.writer, "flush", None)
        if callable(flush):
            flush()


def _plane(centre: Sequence[int]) -> tuple[slice | int, ...]:
    """Index of the ``(X, Y)`` plane through ``centre``: the whole image in 2D, slice ``z`` in 3D."""
    return (slice(None), slice(None), int(centre[2])) if len(centre) == 3 else (slice(None), slice(None))
