"""Zoo checks for both bundles: metadata schema, network in/out, TorchScript export, workflow properties."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from cohort import make_cohort  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
_spec = importlib.util.spec_from_file_location("bundle_helpers", Path(__file__).parent / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

BUNDLE_NAMES = ["dfseg_attention_unet", "dfseg_swinunetr"]
RUNNABLE = ["dfseg_attention_unet", "dfseg_swinunetr"]  # einops (SwinUNETR) is a dfseg dependency
FILES = ["configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml", "configs/multi_gpu_train.yaml",
         "configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE"]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_bundle_layout(bundle):
    missing = [f for f in FILES if not (helpers.BUNDLES / bundle / f).is_file()]
    assert missing == []


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_verify_metadata(bundle, tmp_path):
    if not helpers.SCHEMA.is_file():
        pytest.skip(f"offline schema not found at {helpers.SCHEMA}")
    from monai.bundle import verify_metadata

    # an existing filepath is used as is (no download when no hash is given)
    verify_metadata(meta_file=str(helpers.BUNDLES / bundle / "configs" / "metadata.json"),
                    filepath=str(helpers.SCHEMA))


def _parser(bundle: str, config: str, **overrides):
    from monai.bundle import ConfigParser

    root = helpers.BUNDLES / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / config))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(root), "device": "cpu", **overrides})
    return parser


@pytest.mark.parametrize("bundle", RUNNABLE)
def test_verify_net_in_out(bundle):
    from monai.bundle import verify_net_in_out

    root = helpers.BUNDLES / bundle
    tiny = ({"channels": [4, 8, 16, 32]} if bundle == "dfseg_attention_unet" else
            {"feature_size": 12, "depths": [1, 1, 1, 1]})
    # n=2: 16^3 (U-Net) / 64^3 (SwinUNETR: at 32^3 its bottleneck is 1 voxel, which instance norm refuses)
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=str(root / "configs" / "inference.yaml"), n=2, device="cpu",
                      bundle_root=str(root), **tiny)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_check_properties(bundle, tmp_path):
    from monai.bundle import ConfigWorkflow

    root = helpers.BUNDLES / bundle
    manifest = make_cohort(tmp_path / "cohort", n_subjects=8)  # every split non-empty
    overrides = helpers.overrides(bundle)
    train_only = {k: v for k, v in helpers.overrides(bundle, helpers.TRAIN).items() if k == "loss"}
    for config, kind in (("train.yaml", "train"), ("inference.yaml", "infer"), ("evaluate.yaml", "infer")):
        wf = ConfigWorkflow(config_file=str(root / "configs" / config), meta_file=str(root / "configs" / "metadata.json"),
                            workflow_type=kind, bundle_root=str(root), manifest=str(manifest), device="cpu",
                            num_workers=0, output_dir=str(tmp_path / "run"), **overrides,
                            **(train_only if kind == "train" else {}))
        wf.initialize()
        assert wf.check_properties() == [], config
        assert wf.max_epochs == 100 if kind == "train" else wf.evaluator is not None


@pytest.mark.parametrize("bundle", ["dfseg_attention_unet"])  # SwinUNETR (slow: ~10 s per 64^3 pass on
# 2 CPU cores): exported from its trained checkpoint in test_train_resume.py
def test_ckpt_export_torchscript_matches(bundle, tmp_path):
    """TorchScript export reproduces the checkpoint's output. The attention U-Net is scripted;
    SwinUNETR is traced (``--use_trace True --input_shape "[1, 5, 64, 64, 64]"``): scripting fails on
    its gradient-checkpointing branch (``torch.utils.checkpoint`` takes ``*args``/keyword-only
    arguments, which TorchScript cannot compile), and the traced graph is fixed to the traced input
    size, so the exported SwinUNETR must be fed ROIs of the size it was traced at (the bundle's
    sliding-window ``patch_size``)."""
    from monai.bundle import ckpt_export

    torch.manual_seed(0)
    overrides = helpers.overrides(bundle)
    net = _parser(bundle, "inference.yaml", **overrides).get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    ts = tmp_path / "model.ts"
    root = helpers.BUNDLES / bundle
    size = int(overrides["patch_size"])
    trace = {} if bundle == "dfseg_attention_unet" else {"use_trace": True, "input_shape": [1, 5, size, size, size]}
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt), key_in_ckpt="model",
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / "inference.yaml"),
                bundle_root=str(root), device="cpu", **trace, **overrides)
    exported = torch.jit.load(str(ts))
    net.eval()
    x = torch.randn(1, 5, size, size, size)
    with torch.no_grad():
        expected, got = net(x), exported(x)
    assert got.shape == (1, 1, size, size, size)
    diff = float((expected - got).abs().max())
    print(f"{bundle}: export max abs diff {diff:.3g}")
    assert diff <= 1e-5, diff
    assert float(expected.std()) > 0  # a constant output would match trivially


@pytest.mark.parametrize("bundle", RUNNABLE)
def test_spatial_dims_2_builds_2d_network(bundle):
    """``--spatial_dims 2`` (radiographs): the configured network is 2D and keeps the input size."""
    overrides = helpers.overrides(bundle)
    size = int(overrides["patch_size"])
    parser = _parser(bundle, "inference.yaml", spatial_dims=2, **overrides)
    assert parser.get_parsed_content("roi_size") == [size, size]
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 5, size, size))
    assert out.shape == (1, 1, size, size)
