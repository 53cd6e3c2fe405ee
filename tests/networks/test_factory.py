"""build() factory: names, SwinUNETR size check, parameter counting."""

from __future__ import annotations

import pytest
import torch

from dfseg.errors import InputError
from dfseg.networks import AttentionResUNet, build, count_parameters


def test_swinunetr_refuses_sizes_not_divisible_by_32():
    with pytest.raises(ValueError, match=r"SwinUNETR needs every spatial size divisible by 32, got \(48, 64, 64\)"):
        build("swinunetr", 4, img_size=(48, 64, 64), feature_size=12)
    with pytest.raises(InputError, match="divisible by 32"):
        build("swinunetr", 4, img_size=48, feature_size=12)


def test_swinunetr_builds_and_runs_on_32_cubed():
    torch.manual_seed(0)
    # 32^3 leaves a 1-voxel bottleneck: instance norm cannot work there, the factory says so ...
    with pytest.raises(InputError, match="instance norm needs at least one spatial size of 64"):
        build("swinunetr", 4, 1, img_size=(32, 32, 32), feature_size=12)
    # ... and batch norm runs.
    net = build("swinunetr", 4, 1, img_size=(32, 32, 32), feature_size=12, norm_name="batch").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 4, 32, 32, 32))
    assert out.shape == (1, 1, 32, 32, 32)
    assert torch.isfinite(out).all()


def test_swinunetr_instance_norm_runs_on_32_32_64():
    torch.manual_seed(0)
    net = build("swinunetr", 1, 2, img_size=(32, 32, 64), feature_size=12).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32, 64))
    assert out.shape == (1, 2, 32, 32, 64)


@pytest.mark.parametrize("name", ["unet", "monai_attention_unet", "attention_unet"])
def test_unets_build_in_2d_and_3d(name):
    for dims, size in ((2, (32, 32)), (3, (16, 16, 16))):
        net = build(name, 3, 2, spatial_dims=dims, channels=(4, 8, 16), strides=(2, 2)).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, *size)).shape == (1, 2, *size)


def test_attention_unet_is_dfseg_network_with_kwargs():
    net = build("attention_unet", 5, deep_supervision=True, presence_head=True)
    assert isinstance(net, AttentionResUNet)
    assert net.channels == (16, 32, 64, 128) and net.in_channels == 5 and net.out_channels == 1


def test_unknown_name_lists_choices():
    with pytest.raises(InputError, match="unknown network 'vnet'.*attention_unet, swinunetr"):
        build("vnet", 1)


def test_count_parameters_known_answer():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))  # 3*2+2 + 2*1+1 = 11
    assert count_parameters(model) == 11
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == 9
    assert count_parameters(model, trainable_only=False) == 11
