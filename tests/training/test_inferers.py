"""Test-time mirroring (:mod:`dfseg.training.inferers`) against known answers."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import RandFlipd

from dfseg.training import (
    LEGACY_MIRROR_AXES,
    MirroredInferer,
    check_mirror_axes,
    flip_axes,
    mirrored,
    recorded_mirror_axes,
    train_transforms,
)


def _ramp_net(shape):
    """f(x) = x + r with r a ramp 0, 1, 2, ... along X: mirroring X averages r with its mirror image."""
    ramp = torch.arange(shape[0], dtype=torch.float32).reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    return (lambda x: x + ramp), ramp


def test_mirrored_averages_the_flipped_outputs():
    x = torch.rand(1, 1, 5, 4, 3)
    net, ramp = _ramp_net((5, 4, 3))
    # X among the axes: half the passes see the ramp reversed, so the output is x + (r + flip r) / 2 = x + 2
    for axes in ((0,), (0, 1), (0, 1, 2)):
        torch.testing.assert_close(mirrored(net, axes)(x), x + 2.0)
    # the ramp is constant along Y and Z: mirroring them changes nothing
    torch.testing.assert_close(mirrored(net, (1, 2))(x), x + ramp)
    assert mirrored(net, ()) is net


def test_mirrored_runs_two_to_the_k_passes():
    calls = []

    def net(x):
        calls.append(x.clone())
        return x

    x = torch.rand(1, 1, 4, 4, 4)
    torch.testing.assert_close(mirrored(net, (0, 1, 2))(x), x)  # every flip is undone: the identity survives
    assert len(calls) == 8
    assert sum(torch.equal(c, x) for c in calls) == 1  # the input itself once, its 7 mirror images once each
    assert len({tuple(c.flatten().tolist()) for c in calls}) == 8


def test_mirrored_inferer_is_sliding_window_inference_over_mirror_images():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)  # an asymmetric kernel: not flip-equivariant
    x = torch.rand(1, 1, 16, 16, 8)
    plain = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        none = MirroredInferer((8, 8, 8), 2, overlap=0.25, mode="gaussian", mirror_axes=())(x, conv)
        torch.testing.assert_close(none, plain(x, conv))
        full = MirroredInferer((8, 8, 8), 2, overlap=0.25, mode="gaussian", mirror_axes=(0, 1, 2))(x, conv)
        # a convolution's mirror image is the mirrored kernel's convolution: the average of the 8 mirrored
        # kernels, inferred plainly, is the known answer
        avg = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
        avg.weight.copy_(torch.stack([torch.flip(conv.weight, d) for d in
                                      ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))]).mean(0))
        torch.testing.assert_close(full, plain(x, avg), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(full, none, atol=1e-3)
        assert MirroredInferer(8).mirror_axes == (0, 1, 2)  # nnU-Net's default: every axis
        # X and Y only: the 4 kernels mirrored in X and Y
        xy = MirroredInferer((8, 8, 8), 2, overlap=0.25, mode="gaussian", mirror_axes=(0, 1))(x, conv)
        avg.weight.copy_(torch.stack([torch.flip(conv.weight, d) for d in ((), (2,), (3,), (2, 3))]).mean(0))
        torch.testing.assert_close(xy, plain(x, avg), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", [3, 2])
def test_training_flips_every_axis(dims):
    """Training flips each spatial axis (what inference then mirrors), as nnU-Net does."""
    chain = train_transforms("combined", patch_size=16, preprocessed=True, spatial_dims=dims, augment=False)
    flipped = [t.flipper.spatial_axis for t in chain.transforms if isinstance(t, RandFlipd)]
    assert flipped == list(flip_axes(dims)) == list(range(dims))


def test_recorded_mirror_axes():
    """A run record's predict entry names the axes; one without them (or no entry) is X and Y."""
    for plan in (None, {}, {"mirror_axes": None}):
        assert recorded_mirror_axes(plan, 3) == LEGACY_MIRROR_AXES == (0, 1)
    assert recorded_mirror_axes({"mirror_axes": [0, 1, 2]}, 3) == (0, 1, 2)
    assert recorded_mirror_axes({"mirror_axes": []}, 3) == ()
    for bad in (5, [0, 3], ["x"]):
        with pytest.raises(ValueError, match="mirror axes"):
            recorded_mirror_axes({"mirror_axes": bad}, 3)


def test_mirror_axes_are_checked():
    assert check_mirror_axes(None, 3) == () and check_mirror_axes(range(2), 2) == (0, 1)
    for bad in ((0, 0), (3,), (-1,)):
        with pytest.raises(ValueError, match="mirror axes"):
            check_mirror_axes(bad, 3)
    inferer = MirroredInferer(32, mirror_axes=(0, 1, 2))  # one size: the image's dimensions decide
    with pytest.raises(ValueError, match="0..1"):
        inferer(torch.zeros(1, 1, 8, 8), lambda x: x)
    with pytest.raises(ValueError, match="mirror axes"):
        MirroredInferer((8, 8), mirror_axes=(2,))
