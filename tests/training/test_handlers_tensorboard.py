"""TensorBoard images of a validation (dfseg.training.overlays) and the training console
(dfseg.training.TrainingProgress), on a tiny attention U-Net trained in-process for two epochs."""

from __future__ import annotations

import io
import logging
import re

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, TensorBoardStatsHandler, ValidationHandler, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose, CopyItemsd
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from dfseg.networks import build
from dfseg.training import TensorBoardOverlays, TrainingProgress
from dfseg.training.handlers import epoch_line
from dfseg.training.overlays import (
    DISPLAY_PX,
    LABEL_RGB,
    PRED_RGB,
    attention_panel,
    contour,
    gate_coefficients,
    lesion_centre,
    overlay_panel,
)

SIZE = 16  # voxels per axis of the test volumes; the display scale is DISPLAY_PX // SIZE = 16
LESION = (slice(4, 8), slice(9, 13), slice(5, 8))  # x 4-7, y 9-12, z 5-7


def _volumes() -> list[dict]:
    """Three combined-input volumes (5 channels): ``b`` and ``c`` hold the cube LESION, ``a`` none."""
    rng = np.random.default_rng(0)
    items = []
    for scan_id, lesion in (("a", False), ("b", True), ("c", True)):
        label = torch.zeros(1, SIZE, SIZE, SIZE)
        if lesion:
            label[(0, *LESION)] = 1
        image = torch.as_tensor(rng.normal(0, 0.1, (5, SIZE, SIZE, SIZE)), dtype=torch.float32) + label
        items.append({"image": image, "label": label, "scan_id": scan_id})
    return items


def _train(tmp_path, epochs: int = 2, *, stream=None, progress: bool = True, max_volumes: int = 1):
    torch.manual_seed(0)
    net = build("attention_unet", 5, channels=[4, 8, 16], strides=[2, 2], deep_supervision=False)
    data = DataLoader(_volumes(), batch_size=1)
    writer = SummaryWriter(str(tmp_path / "tb"))
    post = Compose([Activationsd(keys="pred", sigmoid=True), CopyItemsd(keys="pred", names="pred_bin"),
                    AsDiscreted(keys="pred_bin", threshold=0.5)])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=data, network=net, postprocessing=post,
        key_val_metric={"val_mean_dice": MeanDice(output_transform=from_engine(["pred_bin", "label"]))},
        val_handlers=[TensorBoardStatsHandler(summary_writer=writer, iteration_log=False),
                      TensorBoardOverlays(writer, net, modality="combined", roi_size=SIZE, max_volumes=max_volumes)])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    progress_handler = TrainingProgress(evaluator, optimizer, progress=progress, stream=stream)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=data, network=net, optimizer=optimizer,
        loss_function=torch.nn.BCEWithLogitsLoss(),
        train_handlers=[ValidationHandler(validator=evaluator, epoch_level=True, interval=1), progress_handler])
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    trainer.run()
    writer.close()
    return trainer, evaluator, losses


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb")
    stream = io.StringIO()
    trainer, evaluator, losses = _train(tmp, stream=stream)
    acc = EventAccumulator(str(tmp / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    return {"acc": acc, "stream": stream.getvalue(), "losses": losses, "evaluator": evaluator, "trainer": trainer}


def test_event_files_hold_overlays_gate_maps_and_epoch_metrics(run):
    acc = run["acc"]
    tags = acc.Tags()
    # one lesion volume shown (max_volumes=1): the first one with a lesion, b; a (no lesion) is not
    assert sorted(tags["images"]) == ["attention_gate0/b", "attention_gate1/b", "overlay_attn/b", "overlay_c0/b"]
    for tag in ("overlay_attn/b", "overlay_c0/b"):
        assert [(e.step, e.width, e.height) for e in acc.Images(tag)] == [(1, DISPLAY_PX, DISPLAY_PX),
                                                                         (2, DISPLAY_PX, DISPLAY_PX)]
    for tag in ("attention_gate0/b", "attention_gate1/b"):  # input slice | gate map, side by side
        assert [(e.step, e.width, e.height) for e in acc.Images(tag)] == [(1, 2 * DISPLAY_PX, DISPLAY_PX),
                                                                         (2, 2 * DISPLAY_PX, DISPLAY_PX)]
    assert [e.step for e in acc.Scalars("val_mean_dice")] == [1, 2]
    assert [e.value for e in acc.Scalars("val_mean_dice")][-1] == pytest.approx(
        run["evaluator"].state.metrics["val_mean_dice"], abs=1e-6)


def test_overlay_outlines_the_lesion_where_it_is(run):
    png = run["acc"].Images("overlay_attn/b")[-1].encoded_image_string
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    rows, cols = np.nonzero(np.all(rgb == LABEL_RGB, axis=-1))
    scale = DISPLAY_PX // SIZE
    # x 4-7 across, y 9-12 up (rows count down from y = 15); the outline lies on the lesion's edge
    assert (cols.min(), cols.max() + 1) == (4 * scale, 8 * scale)
    assert (rows.min(), rows.max() + 1) == ((SIZE - 13) * scale, (SIZE - 9) * scale)


def test_overlay_panel_colours_label_and_prediction_outlines():
    image = np.zeros((16, 16))
    label = np.zeros((16, 16))
    label[2:6, 2:6] = 1
    prob = np.zeros((16, 16))
    prob[10:14, 8:12] = 0.9
    rgb = overlay_panel(image, label, prob)
    assert rgb.shape == (DISPLAY_PX, DISPLAY_PX, 3) and rgb.dtype == np.uint8
    scale = DISPLAY_PX // 16
    ring = 4 * 4 * scale * scale - (4 * scale - 2 * (scale // 4)) ** 2  # a 4x4-voxel square's outline
    assert np.all(rgb == LABEL_RGB, axis=-1).sum() == ring
    assert np.all(rgb == PRED_RGB, axis=-1).sum() == ring
    assert not np.all(overlay_panel(image, label, prob, threshold=0.95) == PRED_RGB, axis=-1).any()
    # colour-blind safe: neither outline is pure red or green
    assert LABEL_RGB != (255, 0, 0) and PRED_RGB != (0, 255, 0)


def test_contour_and_lesion_centre():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    assert contour(mask, width=1).sum() == 16 and not contour(mask, width=1)[3, 3]
    label = np.zeros((16, 16, 16))
    label[LESION] = 1
    label[12:14, 2:4, 14] = 1  # a smaller lesion: the cut goes through the larger cross-section
    assert lesion_centre(label, np.zeros_like(label)) == (6, 10, 5)  # round(5.5) = 6, round(10.5) = 10
    prob = np.zeros((16, 16, 16))
    prob[3, 4, 5] = 0.7
    assert lesion_centre(None, prob) == (3, 4, 5) == lesion_centre(np.zeros_like(prob), prob)


def test_gate_hooks_capture_what_attention_maps_returns():
    torch.manual_seed(0)
    net = build("attention_unet", 5, channels=[4, 8, 16], strides=[2, 2]).eval()
    x = torch.randn(1, 5, 16, 16, 16)
    with torch.no_grad(), gate_coefficients(net) as maps:
        logits = net(x)
    expected = net.attention_maps(x)
    assert [tuple(m.shape) for m in maps[::-1]] == [(1, 1, 16, 16, 16), (1, 1, 8, 8, 8)]
    for got, want in zip(maps[::-1], expected):
        assert torch.equal(got, want)
    assert all(not level._forward_hooks for level in net.decoder)  # removed on leaving the block
    with torch.no_grad():
        assert torch.equal(net(x), logits)  # the hooks leave the output alone


def test_attention_panel_maps_coefficients_on_a_fixed_scale():
    alpha = np.zeros((8, 8))
    alpha[4:, :] = 1.0
    rgb = attention_panel(np.zeros((8, 8)), alpha, None)
    assert rgb.shape == (DISPLAY_PX, 2 * DISPLAY_PX, 3)
    right = rgb[:, DISPLAY_PX:]
    # x >= 4 is the right half of the display: cividis(1) is yellow, cividis(0) dark blue
    low, high = right[DISPLAY_PX // 2, 0], right[DISPLAY_PX // 2, -1]
    assert high[0] > 200 and high[2] < 100 and low[2] > low[0]


def test_one_line_per_epoch_with_validation_metrics(run):
    lines = run["stream"].splitlines()
    assert len(lines) == 2, lines
    state = run["evaluator"].state
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {epoch}/2  loss ")
        loss = float(re.search(r"loss (\S+)", line).group(1))
        assert loss == pytest.approx(np.mean(run["losses"][3 * (epoch - 1):3 * epoch]), abs=1e-4)
        assert "lr 1.00e-01" in line and "val_mean_dice" in line
    assert f"val_mean_dice {state.metrics['val_mean_dice']:.4f}" in lines[-1]
    assert f"best val_mean_dice {state.best_metric:.4f} (epoch {state.best_metric_epoch})" in lines[-1]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]  # nothing left after the last epoch
    for engine in (run["trainer"], run["evaluator"]):  # Ignite's own per-epoch INFO lines are off
        assert engine.logger.getEffectiveLevel() >= logging.WARNING


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_on_a_terminal_unless_switched_off(tmp_path, progress):
    stream = _Terminal()
    _train(tmp_path, epochs=1, stream=stream, progress=progress)
    text = stream.getvalue()
    lines = [line for line in re.split(r"[\r\n]", text) if line.startswith("epoch ")]
    assert len(lines) == 1
    # Ignite's bar: "train[3/3] 100%|...| [00:00<00:00]", its ETA after the "<"
    bar = re.search(r"train\[(\d)/3\].*\[\d\d:\d\d<\d\d:\d\d", text)
    assert (bar is not None) == progress, text
    assert ("validate[" in text) == progress


def test_epoch_line_known_values():
    line = epoch_line(3, 10, loss=0.5, lr=1e-3, metrics={"val_auroc": 0.75, "curve": [1, 2]},
                      best=("val_auroc", 0.8, 2), seconds=12.34, eta_seconds=3725)
    assert line == ("epoch 3/10  loss 0.5000  lr 1.00e-03  val_auroc 0.7500  best val_auroc 0.8000 (epoch 2)"
                    "  12.3 s  ETA 1:02:05")
    assert epoch_line(1, 1, loss=None, lr=None, metrics={}, best=("val_auroc", -1, -1), seconds=1,
                      eta_seconds=None) == "epoch 1/1  1.0 s"
