"""AttentionResUNet: shapes, padding, deep supervision, gates, presence head, TorchScript, gradients, overfit."""

from __future__ import annotations

import io
import json

import pytest
import torch

from dfseg.losses import SegmentationLoss
from dfseg.networks import AttentionResUNet
from dfseg.networks.attention_resunet import Pointwise, SubpixelUp, _NarrowOutputLevel

TINY = dict(channels=(4, 8, 16), strides=(2, 2))


def _net(dims: int, **kw) -> AttentionResUNet:
    torch.manual_seed(0)
    return AttentionResUNet(dims, 2, 1, **{**TINY, **kw})


@pytest.mark.parametrize("dims, size", [(2, (32, 24)), (3, (16, 24, 32))])
def test_eval_output_shape(dims, size):
    net = _net(dims, deep_supervision=True, presence_head=True).eval()
    out = net(torch.randn(2, 2, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 1, *size)


@pytest.mark.parametrize("dims, size", [(2, (33, 25)), (3, (17, 22, 31))])
def test_odd_sizes_are_padded_and_cropped(dims, size):
    net = _net(dims).eval()
    x = torch.randn(1, 2, *size)
    out = net(x)
    assert out.shape == (1, 1, *size)
    # The crop keeps exactly the voxels of the input: an input padded by hand gives the same logits there.
    pads = []
    for s in reversed(size):
        pads += [0, (-s) % 4]
    ref = net(torch.nn.functional.pad(x, pads))
    sl = (slice(None), slice(None)) + tuple(slice(0, s) for s in size)
    torch.testing.assert_close(out, ref[sl])


def test_odd_size_refused_without_padding():
    net = _net(3, pad_input=False).eval()
    with pytest.raises(ValueError, match=r"divisible by \[4, 4, 4\].*\[17, 16, 16\]"):
        net(torch.randn(1, 2, 17, 16, 16))


def test_training_outputs_deep_supervision_and_presence():
    net = AttentionResUNet(3, 2, 1, channels=(4, 8, 16, 32), strides=(2, 2, 2), deep_supervision=True,
                           presence_head=True).train()
    out = net(torch.randn(3, 2, 32, 32, 24))
    assert isinstance(out, list)
    assert [tuple(o.shape) for o in out] == [(3, 1, 32, 32, 24), (3, 1, 16, 16, 12), (3, 1, 8, 8, 6), (3, 1)]


def test_deep_supervision_levels_and_plain_training_output():
    net = AttentionResUNet(2, 1, 3, channels=(4, 8, 16, 32), strides=(2, 2, 2), deep_supervision=True,
                           deep_supervision_levels=1).train()
    out = net(torch.randn(1, 1, 32, 32))
    assert [tuple(o.shape) for o in out] == [(1, 3, 32, 32), (1, 3, 16, 16)]
    plain = AttentionResUNet(2, 1, 3, **TINY).train()
    assert isinstance(plain(torch.randn(1, 1, 32, 32)), torch.Tensor)


def test_attention_maps_in_unit_interval_and_shapes():
    net = _net(3).eval()
    with torch.no_grad():
        maps = net.attention_maps(5.0 * torch.randn(2, 2, 16, 20, 12))
    assert [tuple(m.shape) for m in maps] == [(2, 1, 16, 20, 12), (2, 1, 8, 10, 6)]
    for m in maps:
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
        assert float(m.std()) > 0  # the gate depends on the input, it is not a constant


def test_forward_with_aux_matches_forward():
    net = _net(2, deep_supervision=True, presence_head=True).eval()
    x = torch.randn(2, 2, 16, 16)
    aux = net.forward_with_aux(x)
    torch.testing.assert_close(aux["logits"], net(x))
    assert aux["presence"].shape == (2, 1)
    assert [tuple(d.shape) for d in aux["deep"]] == [(2, 1, 8, 8)]
    assert len(aux["attention"]) == 2


def test_subpixel_up_equals_transposed_convolution():
    torch.manual_seed(1)
    up = SubpixelUp(3, 6, 4, (2, 1, 2))
    ref = torch.nn.ConvTranspose3d(6, 4, kernel_size=(2, 1, 2), stride=(2, 1, 2), bias=False)
    # ConvTranspose weight (C_in, C_out, kx, ky, kz) -> 1x1 conv weight (C_out * kx * ky * kz, C_in).
    ref.weight.data = up.conv.weight.data.reshape(4, 2, 1, 2, 6).permute(4, 0, 1, 2, 3).clone()
    x = torch.randn(2, 6, 3, 4, 5)
    torch.testing.assert_close(up(x), ref(x))


@pytest.mark.parametrize("dims", [2, 3])
def test_pointwise_equals_1x1_convolution(dims):
    torch.manual_seed(2)
    pw = Pointwise(5, 3)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(5, 3, kernel_size=1)
    conv.weight.data = pw.weight.data.reshape(3, 5, *([1] * dims)).clone()
    conv.bias.data = pw.bias.data.clone()
    x = torch.randn(2, 5, *([6] * dims))
    torch.testing.assert_close(pw(x), conv(x))
    # Same default initialisation bounds as nn.Conv: |w| <= 1/sqrt(fan_in) * sqrt(6 / (1 + 5)) = 1/sqrt(5).
    assert float(Pointwise(5, 400).weight.abs().max()) <= 5**-0.5 + 1e-7


def test_narrow_output_level_generalises_the_classic_decoder_level():
    """With proj = identity and fuse_channels = skip channels it is head(act(up(coarse) + alpha * skip) + b)."""
    torch.manual_seed(3)
    level = _NarrowOutputLevel(3, skip_channels=6, coarse_channels=8, stride=(2, 2, 2), out_channels=2,
                               fuse_channels=6, act="relu")
    level.proj.weight.data = torch.eye(6)
    skip, coarse, skip_coarse = torch.randn(2, 6, 8, 8, 8), torch.randn(2, 8, 4, 4, 4), torch.randn(2, 8, 4, 4, 4)
    logits, alpha = level(skip, skip_coarse, coarse)
    classic = level.head(torch.relu(level.up(coarse) + alpha * skip + level.bias.view(1, 6, 1, 1, 1)))
    torch.testing.assert_close(logits, classic)
    assert alpha.shape == (2, 1, 8, 8, 8) and logits.shape == (2, 2, 8, 8, 8)
    # the default network's full-resolution decoder tensors are fuse_channels (8) wide, not channels[0]
    net = AttentionResUNet(3, 2, 1, channels=(16, 32, 64), strides=(2, 2))
    assert net.decoder[-1].up.conv.weight.shape == (8 * 8, 32) and net.decoder[-1].proj.weight.shape == (8, 16)


@pytest.mark.parametrize("dims", [2, 3])
def test_torchscript_round_trip_identical(dims):
    net = _net(dims, deep_supervision=True, presence_head=True).eval()
    scripted = torch.jit.script(net)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = torch.randn(1, 2, *([20] * dims))
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
        for a, b in zip(loaded.attention_maps(x), net.attention_maps(x)):
            assert torch.equal(a, b)
    loaded.train()
    net.train()
    with torch.no_grad():
        for a, b in zip(loaded(x), net(x)):
            assert torch.equal(a, b)


def test_gradients_reach_every_parameter():
    net = _net(3, deep_supervision=True, presence_head=True, act="PRELU").train()
    out = net(torch.randn(2, 2, 16, 16, 16))
    loss = sum((o.float() ** 2).mean() for o in out)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().max()) > 0, name


@pytest.mark.parametrize("kw", [dict(finest_decoder="conv"), dict(finest_decoder="pointwise"), dict(num_res_units=1),
                                dict(norm="batch", dropout=0.1)])
def test_variants_forward(kw):
    net = _net(3, **kw).eval()
    assert net(torch.randn(2, 2, 16, 16, 16)).shape == (2, 1, 16, 16, 16)


def test_bad_configuration_refused():
    with pytest.raises(ValueError, match="strides"):
        AttentionResUNet(3, 1, 1, channels=(4, 8, 16), strides=(2,))
    with pytest.raises(ValueError, match="finest_decoder"):
        AttentionResUNet(3, 1, 1, finest_decoder="light")
    with pytest.raises(ValueError, match="fuse_channels"):
        AttentionResUNet(3, 1, 1, fuse_channels=0)
    with pytest.raises(ValueError, match=r"expects input \(B, C, X, Y, Z\)"):
        AttentionResUNet(3, 1, 1, **TINY)(torch.randn(1, 1, 16, 16))


def test_overfits_one_blob_patch():
    """Network + SegmentationLoss drive Dice above 0.9 on one fixed 2D 64^2 patch within 150 Adam steps."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    label = (((xx - 40) ** 2 + (yy - 22) ** 2) < 7.0**2).float()[None, None]
    gen = torch.Generator().manual_seed(0)
    image = torch.cat([label * 1.0 + 0.3 * torch.randn(1, 1, 64, 64, generator=gen),
                       0.3 * torch.randn(1, 1, 64, 64, generator=gen)], dim=1)
    net = AttentionResUNet(2, 2, 1, channels=(8, 16, 32), strides=(2, 2), deep_supervision=True,
                           presence_head=True)
    loss_fn = SegmentationLoss(presence_weight=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    dice = 0.0
    for step in range(150):
        net.train()
        opt.zero_grad()
        loss_fn(net(image), label).backward()
        opt.step()
        if step % 10 == 9:
            net.eval()
            with torch.no_grad():
                pred = (net(image) > 0).float()
            dice = float(2 * (pred * label).sum() / (pred.sum() + label.sum()))
            if dice > 0.9:
                break
    print(f"overfit: Dice {dice:.3f} after {step + 1} steps")
    assert dice > 0.9, f"Dice {dice:.3f} after {step + 1} steps"


def test_monai_bundle_ckpt_export(tmp_path):
    """``monai.bundle ckpt_export`` (torch.jit.script) exports the network; the export reproduces it."""
    from monai.bundle import ckpt_export

    net_def = {"_target_": "dfseg.networks.AttentionResUNet", "spatial_dims": 3, "in_channels": 2,
               "out_channels": 1, "channels": [4, 8, 16], "strides": [2, 2], "deep_supervision": True,
               "presence_head": True}
    (tmp_path / "inference.json").write_text(json.dumps({"network_def": net_def}))
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    torch.manual_seed(0)
    net = AttentionResUNet(3, 2, 1, channels=(4, 8, 16), strides=(2, 2), deep_supervision=True, presence_head=True)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=str(tmp_path / "metadata.json"), config_file=str(tmp_path / "inference.json"))
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    exported.eval()
    net.eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(exported(x), net(x))
