"""SelectModality: channel table of ARCHITECTURE.md, types, errors."""

from __future__ import annotations

import numpy as np
import pytest
from testkit import DEVICES, KINDS, as_kind

from dfseg.errors import InputError
from dfseg.transforms.modality import SelectModality, SelectModalityd, modality_channels


def _inputs(kind, device="cpu"):
    attn = np.full((1, 4, 5, 6), 10.0, np.float32)
    df = np.stack([np.full((4, 5, 6), float(i), np.float32) for i in range(5)])  # channel i holds i
    return as_kind(kind, attn, device), as_kind(kind, df, device)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("modality, values", [("attn", [10]), ("df", [0, 1, 3, 4]), ("combined", [10, 0, 1, 3, 4])])
def test_channel_table(kind, modality, values):
    attn, df = _inputs(kind)
    out = SelectModality(modality)(attn, df)
    assert type(out) is type(attn)
    assert out.shape == (len(values), 4, 5, 6)
    assert [float(np.asarray(out)[c].mean()) for c in range(len(values))] == values
    assert len(modality_channels(modality)) == len(values)


def test_modality_channels_names():
    assert modality_channels("combined") == ["attn", "c0", "amp", "amp_cos2t", "amp_sin2t"]
    assert modality_channels("df") == ["c0", "amp", "amp_cos2t", "amp_sin2t"]
    assert modality_channels("attn") == ["attn"]


def test_unknown_modality_lists_valid():
    with pytest.raises(ValueError, match="unknown modality 'dark'; valid: attn, df, combined"):
        SelectModality("dark")


def test_wrong_df_channels_and_missing_input():
    attn, _ = _inputs("numpy")
    with pytest.raises(InputError, match="df: expected 5 decomposed"):
        SelectModality("df")(attn, np.zeros((4, 4, 5, 6)))
    with pytest.raises(InputError, match="attn: modality 'combined' needs"):
        SelectModality("combined")(None, np.zeros((5, 4, 5, 6)))
    # the attn modality does not need df at all
    assert SelectModality("attn")(attn).shape == (1, 4, 5, 6)


@pytest.mark.parametrize("kind", KINDS)
def test_dict_with_extra_keys(kind):
    attn, df = _inputs(kind)
    data = {"attn": attn, "df": df, "tex": np.full((1, 4, 5, 6), 7.0, np.float32)}
    out = SelectModalityd(("attn", "df"), "combined", extra_keys=("tex",))(data)
    img = out["image"]
    assert type(img) is type(attn) and img.shape == (6, 4, 5, 6)
    assert float(np.asarray(img)[5].mean()) == 7.0
    assert out["df"] is df


@pytest.mark.parametrize("device", DEVICES)
def test_torch_device_kept(device):
    attn, df = _inputs("torch", device)
    assert SelectModality("combined")(attn, df).device == attn.device
