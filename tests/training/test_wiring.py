"""What the bundle configs call: transform chains (LoadScand first), ROI size, network, rank handlers, run record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from dfseg.errors import InputError
from dfseg.io import load_nifti
from dfseg.networks import count_parameters
from dfseg.training import (
    build_network,
    cohort_value,
    datalist,
    eval_transforms,
    handlers_for_rank,
    is_preprocessed,
    is_rank0,
    lr_writer,
    roi_size,
    run_info,
    train_transforms,
    trained_mirror_axes,
    trained_roi_size,
)

sys.path.insert(0, str(Path(__file__).parent))
from cohort import VOXEL_MM, make_cohort  # noqa: E402
from image_formats import ras_affine, write_mha  # noqa: E402


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=4)


def test_eval_chain_keeps_the_scan_grid_and_drops_meta(manifest):
    item = datalist(manifest, 0, "train")[0]
    out = eval_transforms("combined", preprocessed=True)(item)
    assert isinstance(out["image"], MetaTensor) and out["image"].dtype == torch.float32
    assert tuple(out["image"].shape) == (5, 32, 32, 32) and tuple(out["label"].shape) == (1, 32, 32, 32)
    _, affine = load_nifti(item["attn"])
    assert np.allclose(out["image"].affine.numpy(), affine) and np.allclose(np.diag(affine)[:3], VOXEL_MM)
    assert "meta" not in out  # read by LoadScand, dropped before batching
    assert out["scan_id"] == item["scan_id"]


def test_train_chain_is_a_function_of_the_seed(manifest):
    item = datalist(manifest, 0, "train")[0]
    chain = train_transforms("combined", 16, preprocessed=True, synthetic_tumour_prob=1.0)
    runs = []
    for _ in range(2):
        chain.set_random_state(seed=7)
        runs.append(chain(dict(item)))
    for a, b in zip(*runs):
        assert a["image"].dtype == torch.float32 and tuple(a["image"].shape) == (5, 16, 16, 16)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_radiograph_chain_squeezes_z(tmp_path):
    manifest = make_cohort(tmp_path / "rad", n_subjects=4, radiograph=True)
    out = eval_transforms("df", preprocessed=True, spatial_dims=2)(datalist(manifest, 0, "train")[0])
    assert tuple(out["image"].shape) == (4, 64, 64) and out["image"].affine.shape == (3, 3)


@pytest.mark.parametrize(("patch", "dims", "expected"), [(32, 3, [32, 32, 32]), ("48", 2, [48, 48]),
                                                         ([16, 32, 8], 3, [16, 32, 8])])
def test_roi_size(patch, dims, expected):
    assert roi_size(patch, dims) == expected


def test_trained_roi_size_is_the_checkpoints_patch(tmp_path, capsys):
    """Inference windows are the trained patch (run_info.json), not the bundle's patch_size: a 32-voxel
    model run in 64-voxel windows sees other instance-normalisation statistics."""
    assert trained_roi_size(tmp_path, 64, 3) == [64, 64, 64]  # no run_info.json: the setting
    assert capsys.readouterr().err == ""
    (tmp_path / "run_info.json").write_text(json.dumps({"hyper_parameters": {"patch_size": [32, 32, 16]}}))
    assert trained_roi_size(tmp_path, 64, 3) == [32, 32, 16]
    err = capsys.readouterr().err
    assert "32 x 32 x 16" in err and "64 x 64 x 64 is not used" in err and str(tmp_path / "run_info.json") in err
    (tmp_path / "run_info.json").write_text(json.dumps({"predict": {"roi_size": [48, 48, 32]},
                                                        "hyper_parameters": {"patch_size": [32, 32, 16]}}))
    assert trained_roi_size(tmp_path, [48, 48, 32], 3) == [48, 48, 32]  # predict's window wins, and agrees: no note
    assert capsys.readouterr().err == ""
    with pytest.raises(InputError, match="axes"):
        trained_roi_size(tmp_path, 48, 2)
    (tmp_path / "run_info.json").write_text("{not json")
    with pytest.raises(InputError, match="run_info.json"):
        trained_roi_size(tmp_path, 64, 3)


def test_trained_mirror_axes_are_the_checkpoints_flips(tmp_path):
    """Inference mirrors the axes the checkpoint was trained flipping (run_info.json's
    predict.mirror_axes); a record without them was trained flipping X and Y."""
    assert trained_mirror_axes(tmp_path, 3) == [0, 1, 2]  # no record: the axes training flips now
    assert trained_mirror_axes(tmp_path, 2) == [0, 1]
    info = tmp_path / "run_info.json"
    info.write_text(json.dumps({"predict": {"roi_size": [32, 32, 32]}}))
    assert trained_mirror_axes(tmp_path, 3) == [0, 1]
    for recorded in ([0, 1, 2], [2], []):
        info.write_text(json.dumps({"predict": {"mirror_axes": recorded}}))
        assert trained_mirror_axes(tmp_path, 3) == recorded
    info.write_text(json.dumps({"predict": {"mirror_axes": [0, 3]}}))
    with pytest.raises(InputError, match="mirror_axes"):
        trained_mirror_axes(tmp_path, 3)
    info.write_text("{not json")
    with pytest.raises(InputError, match="run_info.json"):
        trained_mirror_axes(tmp_path, 3)


def test_build_network_takes_channels_from_modality():
    args = {"name": "attention_unet", "spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2],
            "deep_supervision": False}
    net = build_network(args, "df", [16, 16, 16]).eval()
    with torch.no_grad():
        assert tuple(net(torch.zeros(1, 4, 16, 16, 16)).shape) == (1, 1, 16, 16, 16)


def test_handlers_for_rank_without_ddp():
    assert is_rank0()
    assert handlers_for_rank(["a", "b"], ["log"]) == ["a", "b", "log"]


def test_lr_writer_writes_the_first_group_lr():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25)
    written = []

    class Writer:
        def add_scalar(self, *args):
            written.append(args)

    class Engine:
        class state:  # noqa: N801 - stands in for ignite's engine.state
            epoch = 3

    lr_writer(optimizer)(Engine, Writer())
    assert written == [("lr", 0.25, 3)]


@pytest.mark.parametrize(("dims", "geometry"), [(3, "ct"), (2, "radiograph")])
def test_run_info_records_network_and_geometry(manifest, dims, geometry):
    args = {"name": "attention_unet", "spatial_dims": dims, "channels": [4, 8], "strides": [2]}
    model = build_network(args, "attn", [16] * dims)
    info = run_info(bundle="b", manifest=manifest, fold=0, modality="attn", seed=1, hyper_parameters={"x": 1},
                    network=args, model=model, spatial_dims=dims)
    assert info["geometry"] == geometry and info["in_channels"] == 1 and info["input_channels"] == ["attn"]
    assert info["network"] == {**args, "parameter_count": count_parameters(model)}
    # inference mirrors the axes training flips: every spatial axis
    assert info["predict"]["mirror_axes"] == list(range(dims))


def test_cohort_value_refuses_mixed_scans(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", n_subjects=4)
    assert cohort_value(manifest, "geometry", "ct", mixed="x") == "ct"
    assert is_preprocessed(manifest)
    doc = json.loads(manifest.read_text())
    doc["training"][0]["meta"]["preprocessed"] = False
    manifest.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"mixes preprocessed values \['False', 'True'\]; preprocess the whole"):
        is_preprocessed(manifest)


def test_bundle_chains_read_mha_with_the_scanner_geometry(manifest, tmp_path):
    """A scan converted to MHA with an oblique direction and an origin: the bundles' chains read it on its grid."""
    item = dict(datalist(manifest, 0, "train")[0])
    spacing, origin = (VOXEL_MM,) * 3, (4.0, -2.0, 9.0)
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    reference = eval_transforms("combined", preprocessed=True)(dict(item))
    for key in ("attn", "df", "label", "lung_mask"):
        array, _ = load_nifti(item[key])
        item[key] = str(write_mha(tmp_path / f"{key}.mha", array, spacing, origin, direction))
    out = eval_transforms("combined", preprocessed=True)(item)
    np.testing.assert_allclose(out["image"].affine.numpy(), ras_affine(spacing, origin, direction), atol=1e-6)
    torch.testing.assert_close(out["image"].as_tensor(), reference["image"].as_tensor())
    torch.testing.assert_close(out["label"].as_tensor(), reference["label"].as_tensor())
