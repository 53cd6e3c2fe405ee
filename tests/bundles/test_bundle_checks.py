"""Zoo checks for both bundles: metadata schema, network in/out, TorchScript export, workflow properties,
and that the configs only wire (network declared once, handlers kept per rank by name, short expressions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from dfseg.io import sha256_file
from dfseg.resources import WORKFLOWS

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
    # the schema ships in the repository: an existing file with a matching hash is used as is (no download)
    verify_metadata(meta_file=str(helpers.BUNDLES / bundle / "configs" / "metadata.json"),
                    filepath=str(helpers.SCHEMA), hash_val=sha256_file(helpers.SCHEMA), hash_type="sha256")


def _parser(bundle: str, config: str, **overrides):
    root = helpers.BUNDLES / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / config))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(root), "device": "cpu", **overrides})
    return parser


@pytest.mark.parametrize("bundle", RUNNABLE)
def test_verify_net_in_out(bundle):
    root = helpers.BUNDLES / bundle
    tiny = ({"channels": [4, 8, 16, 32]} if bundle == "dfseg_attention_unet" else
            {"feature_size": 12, "depths": [1, 1, 1, 1]})
    # n=2: 16^3 (U-Net) / 64^3 (SwinUNETR: at 32^3 its bottleneck is 1 voxel, which instance norm refuses)
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=str(root / "configs" / "train.yaml"), n=2, device="cpu",
                      bundle_root=str(root), **tiny)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_check_properties(bundle, tmp_path):
    root = helpers.BUNDLES / bundle
    manifest = make_cohort(tmp_path / "cohort", n_subjects=8)  # every split non-empty
    overrides = helpers.overrides(bundle)
    train_only = {k: v for k, v in helpers.overrides(bundle, helpers.TRAIN).items() if k == "loss"}
    for workflow, kind in (("train", "train"), ("inference", "infer"), ("evaluate", "infer")):
        wf = ConfigWorkflow(config_file=[str(root / "configs" / f) for f in WORKFLOWS[workflow]],
                            meta_file=str(root / "configs" / "metadata.json"), workflow_type=kind,
                            bundle_root=str(root), manifest=str(manifest), device="cpu", num_workers=0,
                            output_dir=str(tmp_path / "run"), **overrides, **(train_only if kind == "train" else {}))
        wf.initialize()
        assert wf.check_properties() == [], workflow
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
    torch.manual_seed(0)
    overrides = helpers.overrides(bundle)
    net = _parser(bundle, "train.yaml", **overrides).get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    ts = tmp_path / "model.ts"
    root = helpers.BUNDLES / bundle
    size = int(overrides["patch_size"])
    trace = {} if bundle == "dfseg_attention_unet" else {"use_trace": True, "input_shape": [1, 5, size, size, size]}
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt), key_in_ckpt="model",
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / "train.yaml"),
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
    parser = _parser(bundle, "train.yaml", spatial_dims=2, **overrides)
    assert parser.get_parsed_content("roi_size") == [size, size]
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 5, size, size))
    assert out.shape == (1, 1, size, size)


def _yaml(bundle: str, name: str) -> dict:
    return yaml.safe_load((helpers.BUNDLES / bundle / "configs" / name).read_text())


#: the settings each bundle's network is built from (train.yaml's network_args refers to them)
NETWORK_SETTINGS = {"dfseg_attention_unet": {"channels", "strides", "dropout", "deep_supervision", "presence_head"},
                    "dfseg_swinunetr": {"feature_size", "depths", "num_heads", "dropout", "use_checkpoint"}}


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_network_declared_once(bundle):
    """train.yaml declares the network (network_args, read by network_def and the run record); the
    overlays merged over it declare no network, network setting or hyper-parameter again."""
    train = _yaml(bundle, "train.yaml")
    assert train["network_def"]["network_args"] == "@network_args"
    assert train["run_info"]["network"] == "@network_args"
    assert train["run_info"]["hyper_parameters"] == "@hyper_parameters"
    assert {v.lstrip("@") for v in train["network_args"].values() if str(v).startswith("@")} == (
        NETWORK_SETTINGS[bundle] | {"spatial_dims"})
    declared_in_train = set(train)
    for overlay in ("inference.yaml", "evaluate.yaml", "multi_gpu_train.yaml"):
        keys = set(_yaml(bundle, overlay))
        assert not keys & {"network_def", "network_args", "hyper_parameters", "imports"}, overlay
        assert not keys & NETWORK_SETTINGS[bundle], overlay
        assert not keys & set(train["hyper_parameters"]), overlay
        # only the run's own names, and train.yaml's that the overlay deliberately replaces
        redefined = keys & declared_in_train
        assert redefined <= {"device", "network", "run", "finalize", "dataset", "inferer", "evaluator"}, (overlay, redefined)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_handlers_kept_per_rank_by_name(bundle):
    """Logging handlers are listed under rank0_handlers and kept by name on rank 0; the multi-GPU
    overlay does not trim handler lists by position."""
    train = _yaml(bundle, "train.yaml")
    assert train["train"]["trainer"]["train_handlers"] == (
        "$dfseg.training.handlers_for_rank(@train#handlers, @train#rank0_handlers)")
    assert train["validate"]["evaluator"]["val_handlers"] == (
        "$dfseg.training.handlers_for_rank(@validate#handlers, @validate#rank0_handlers)")
    for section in ("train", "validate"):
        targets = [h["_target_"] for h in train[section]["rank0_handlers"]]
        assert targets and all(t in ("StatsHandler", "TensorBoardStatsHandler", "TensorBoardImageHandler")
                               for t in targets), targets
        assert not any(isinstance(h, dict) and "TensorBoard" in h["_target_"] for h in train[section]["handlers"])
    text = (helpers.BUNDLES / bundle / "configs" / "multi_gpu_train.yaml").read_text()
    assert "handlers" not in text.replace("rank0_handlers (logs", "")  # no handler list is redefined
    assert "[:" not in text and "[-" not in text


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_configs_only_wire(bundle):
    """Every expression fits one short line (longer logic lives in a named dfseg function)."""
    def expressions(node):
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                yield from expressions(item)
        elif isinstance(node, str) and node.startswith("$") and not node.startswith("$import"):
            yield node

    for path in sorted((helpers.BUNDLES / bundle / "configs").glob("*.yaml")):
        for expr in expressions(yaml.safe_load(path.read_text())):
            assert len(expr) <= 90, f"{path.name}: {expr}"
