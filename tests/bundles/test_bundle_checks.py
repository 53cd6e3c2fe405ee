"""Zoo checks for both bundles, offline and with MONAI's default arguments as zoo CI runs them (metadata
against the schema in bundles/schema/, network in/out, TorchScript export), what the metadata says
(modalities, probabilities, the shipped model's metrics), workflow properties, and that the configs only
wire (network declared once, handlers kept per rank by name, short expressions)."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from dfseg.channels import MODALITY_CHANNELS
from dfseg.io import sha256_file
from dfseg.resources import EVAL_METRIC_ROWS, WORKFLOWS, metadata_schema
from dfseg.training.inferers import MirroredInferer
from dfseg.training.transforms import in_channels

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


def _meta(bundle: str) -> dict:
    return json.loads((helpers.BUNDLES / bundle / "configs" / "metadata.json").read_text())


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during an offline check: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _verify_metadata(meta_file: Path) -> None:
    """The zoo's metadata check against the schema shipped in the repository: verify_metadata uses an
    existing schema file whose hash matches instead of downloading the metadata's ``schema`` URL."""
    schema = metadata_schema()
    verify_metadata(meta_file=str(meta_file), filepath=str(schema), hash_val=sha256_file(schema), hash_type="sha256")


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_verify_metadata(bundle, offline):
    assert metadata_schema() == helpers.BUNDLES / "schema" / "meta_schema_20240725.json"
    _verify_metadata(helpers.BUNDLES / bundle / "configs" / "metadata.json")


@pytest.mark.parametrize(("key", "edit"), [
    ("network_data_format", lambda m: m.pop("network_data_format")),
    ("required_packages_version", lambda m: m.pop("required_packages_version")),
    ("value_range", lambda m: m["network_data_format"]["outputs"]["pred"].update(value_range=[0, 1, 2])),
    ("eval_metrics", lambda m: m.update(eval_metrics={"test_presence_auroc": "high"})),
    ("spatial_shape", lambda m: m["network_data_format"]["inputs"]["image"].update(spatial_shape=[])),
    ("type", lambda m: m["network_data_format"]["outputs"]["pred"].update(type="logits")),
])
def test_metadata_schema_rejects(key, edit, tmp_path, offline):
    """The shipped schema is not a rubber stamp: each of these defects fails verify_metadata."""
    meta = _meta("dfseg_attention_unet")
    edit(meta)
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Failed validating"):
        _verify_metadata(bad)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_metadata_describes_every_modality_and_probabilities(bundle):
    meta = _meta(bundle)
    modalities = meta["dfseg_modalities"]
    assert set(modalities) == set(MODALITY_CHANNELS)
    for modality, channels in MODALITY_CHANNELS.items():
        described = modalities[modality]
        names = [described["channel_def"][str(i)].split(":")[0] for i in range(len(described["channel_def"]))]
        assert names == list(channels), modality
        assert described["num_channels"] == len(channels) == in_channels(modality)
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 5 and image["channel_def"] == modalities["combined"]["channel_def"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert (pred["type"], pred["num_channels"], pred["value_range"]) == ("probabilities", 1, [0, 1])
    assert "dfseg" not in meta["required_packages_version"]  # not on PyPI, where zoo CI installs from
    assert meta["dfseg_version"] == version("dfseg")




@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_eval_metrics_are_the_shipped_models(bundle):
    """eval_metrics copy the shipped model's model card; a bundle without weights claims none."""
    models = helpers.BUNDLES / bundle / "models"
    metrics = _meta(bundle)["eval_metrics"]
    if not (models / "model.pt").is_file():
        assert metrics == {}
        return
    rows = dict(re.findall(r"^\| (.+?) \| ([0-9.]+) \| \[", (models / "model_card.md").read_text(), re.M))
    assert set(metrics) == set(EVAL_METRIC_ROWS)
    assert {k: float(rows[EVAL_METRIC_ROWS[k]]) for k in metrics} == metrics
    auroc, dice = {"dfseg_attention_unet": (0.958, 0.831), "dfseg_swinunetr": (0.933, 0.599)}[bundle]
    assert metrics["test_presence_auroc"] == auroc and metrics["test_mean_dice_scans_with_tumour"] == dice
    large = yaml.safe_load((models / "large_files.yml").read_text())["large_files"]
    assert large == [{"path": "models/model.pt", "url": "", "hash_val": sha256_file(models / "model.pt"),
                      "hash_type": "sha256"}]


#: the MONAI Model Zoo's model-card sections, in order
ZOO_SECTIONS = ["# Model Overview", "## Data", "### Preprocessing", "## Training configuration", "### Input",
                "### Output", "## Performance", "## MONAI Bundle Commands", "#### Execute training",
                "#### Execute inference", "#### Export checkpoint to TorchScript file", "# References", "# License"]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_readme_is_a_zoo_model_card(bundle):
    text = (helpers.BUNDLES / bundle / "docs" / "README.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert [h for h in headings if h in ZOO_SECTIONS] == ZOO_SECTIONS
    assert not re.search(r"to be filled|TODO|TBD|XXX", text, re.I)
    for value in _meta(bundle)["eval_metrics"].values():  # the shipped model's numbers, as the card prints them
        assert f"{value:.3f}" in text, value


def _parser(bundle: str, config: str, **overrides):
    root = helpers.BUNDLES / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / config))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(root), "device": "cpu", **overrides})
    return parser


def _inference_configs(bundle: str) -> list[str]:
    """The inference workflow's configs (zoo CI reads the network from the inference config)."""
    return [str(helpers.BUNDLES / bundle / "configs" / f) for f in WORKFLOWS["inference"]]


@pytest.mark.parametrize("bundle", [
    "dfseg_attention_unet",
    pytest.param("dfseg_swinunetr", marks=pytest.mark.slow),  # a 64^3 pass of the full network: ~15 s on 2 cores
])
def test_verify_net_in_out_defaults(bundle):
    """MONAI's verify_net_in_out with its defaults (n=1, p=1, any=1), as zoo CI calls it: the
    metadata's spatial shape at n=1 is the smallest size the network takes (16^3 / 64^3), and the
    output keeps the input's spatial size."""
    root = helpers.BUNDLES / bundle
    meta = root / "configs" / "metadata.json"
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=_inference_configs(bundle),
                      bundle_root=str(root))
    expected = {"dfseg_attention_unet": ("8*n+8", 16), "dfseg_swinunetr": ("32*n+32", 64)}[bundle]
    assert _meta(bundle)["network_data_format"]["inputs"]["image"]["spatial_shape"] == [expected[0]] * 3
    assert eval(expected[0], {"n": 1}) == expected[1]


@pytest.mark.parametrize("modality", ["attn", "df"])
def test_verify_net_in_out_other_modalities(modality):
    """The other modalities pass the same check once the metadata's input channels are theirs."""
    root = helpers.BUNDLES / "dfseg_attention_unet"
    channels = _meta("dfseg_attention_unet")["dfseg_modalities"][modality]["num_channels"]
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=_inference_configs("dfseg_attention_unet"), bundle_root=str(root),
                      modality=modality, **{"_meta_#network_data_format#inputs#image#num_channels": channels})
    with pytest.raises(RuntimeError):  # the combined input's 5 channels do not fit this network
        verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                          config_file=_inference_configs("dfseg_attention_unet"), bundle_root=str(root),
                          modality=modality)


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


def _export_and_compare(bundle: str, ckpt: Path, out: Path, *, size: int, **settings) -> float:
    """ckpt_export with MONAI's defaults for everything else, then the exported module against the
    eager network holding the checkpoint's weights; returns the max abs difference."""
    root = helpers.BUNDLES / bundle
    ckpt_export(net_id="network_def", filepath=str(out), ckpt_file=str(ckpt),
                meta_file=str(root / "configs" / "metadata.json"), config_file=_inference_configs(bundle),
                bundle_root=str(root), **settings)
    extra = {"metadata.json": ""}
    exported = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == _meta(bundle)["version"]
    net_settings = {k: v for k, v in settings.items() if k not in ("key_in_ckpt", "use_trace")}
    net = _parser(bundle, "train.yaml", **net_settings).get_parsed_content("network_def")
    state = torch.load(ckpt, weights_only=True)
    net.load_state_dict(state.get("model", state) if settings.get("key_in_ckpt") else state)  # strict: every weight
    net.eval()
    x = torch.randn(1, 5, size, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = net(x), exported(x)
    assert got.shape == (1, 1, size, size, size)
    assert float(expected.std()) > 0  # a constant output would match trivially
    return float((expected - got).abs().max())


def test_ckpt_export_shipped_model(tmp_path):
    """The zoo's export check on the shipped weights with MONAI's default arguments, as zoo CI runs it
    (scripted, no checkpoint key, the bundle's default network): models/model.pt is the network's
    state_dict and the bundle's defaults are the shipped network, so every weight is loaded (strict)
    and the TorchScript module gives the checkpoint's output."""
    bundle = "dfseg_attention_unet"
    models = helpers.BUNDLES / bundle / "models"
    channels = json.loads((models / "run_info.json").read_text())["network"]["channels"]
    assert channels == _parser(bundle, "train.yaml").get_parsed_content("channels")
    diff = _export_and_compare(bundle, models / "model.pt", tmp_path / "model.ts", size=32)
    assert diff <= 1e-5, diff


@pytest.mark.slow  # a 64^3 trace, checked and run again: 50-100 s on 2 shared CPU cores
def test_ckpt_export_shipped_swinunetr(tmp_path):
    """The shipped SwinUNETR (models/model.pt, the bundle's default network) is exported by tracing at
    the metadata's input shape (ckpt_export's default when ``use_trace`` is set): scripting fails on
    MONAI SwinUNETR's gradient-checkpointing branch (``torch.utils.checkpoint`` takes ``*args`` and
    keyword-only arguments, which TorchScript cannot compile). A traced module is fixed to the traced
    size, so it takes ROIs of 64^3, the size in the metadata at n=1."""
    bundle = "dfseg_swinunetr"
    models = helpers.BUNDLES / bundle / "models"
    network = json.loads((models / "run_info.json").read_text())["network"]
    parser = _parser(bundle, "train.yaml")
    assert (network["feature_size"], network["depths"]) == (parser.get_parsed_content("feature_size"),
                                                            parser.get_parsed_content("depths"))
    diff = _export_and_compare(bundle, models / "model.pt", tmp_path / "model.ts", size=64, use_trace=True)
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_bundle_defaults_train_the_shipped_network(bundle):
    """The shipped model's network and patch are its bundle's defaults (``dfseg demo --bundle
    dfseg_swinunetr`` passes none of them); the attention U-Net's demo passes its own patch and rate."""
    record = json.loads((helpers.BUNDLES / bundle / "models" / "run_info.json").read_text())
    parser = _parser(bundle, "train.yaml")
    network = {k: v for k, v in record["network"].items() if k not in ("name", "parameter_count")}
    assert {k: parser.get_parsed_content(f"network_args#{k}") for k in network} == network
    if bundle == "dfseg_swinunetr":
        for key in ("patch_size", "batch_size", "num_samples", "learning_rate"):
            assert parser.get_parsed_content(key) == record["hyper_parameters"][key], key


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


@pytest.mark.parametrize(("bundle", "trained"), [("dfseg_attention_unet", [32, 32, 16]),
                                                 ("dfseg_swinunetr", [64, 64, 32])])
def test_inference_windows_are_the_trained_patch(bundle, trained, tmp_path):
    """The inference and evaluation workflows slide the checkpoint's trained patch (its run_info.json),
    whatever the bundle's patch_size: the shipped models' own, and any run folder's."""
    (tmp_path / "run_info.json").write_text(json.dumps({"predict": {"roi_size": trained, "mirror_axes": [0, 1, 2]}}))
    for workflow in ("inference", "evaluate"):
        configs = [str(helpers.BUNDLES / bundle / "configs" / f) for f in WORKFLOWS[workflow]]
        for output_dir, expected in ((tmp_path, trained), (helpers.BUNDLES / bundle / "models", None)):
            parser = ConfigParser()
            parser.read_config(configs)
            parser.update({"bundle_root": str(helpers.BUNDLES / bundle), "device": "cpu", "output_dir": str(output_dir),
                           "patch_size": 96})
            record = json.loads((output_dir / "run_info.json").read_text())["predict"]
            expected = expected or record["roi_size"]
            inferer = parser.get_parsed_content("validate#inferer")
            assert list(inferer.roi_size) == expected, (workflow, output_dir)
            # nnU-Net's test-time mirroring along the axes the checkpoint was trained flipping (X and Y
            # for a record that names none)
            mirror = tuple(record["mirror_axes"]) if record.get("mirror_axes") is not None else (0, 1)
            assert isinstance(inferer, MirroredInferer) and inferer.mirror_axes == mirror, (workflow, output_dir)
    parser = ConfigParser()
    parser.read_config([str(helpers.BUNDLES / bundle / "configs" / f) for f in WORKFLOWS["inference"]])
    parser.update({"bundle_root": str(helpers.BUNDLES / bundle), "device": "cpu", "output_dir": str(tmp_path),
                   "mirror_axes": []})
    assert parser.get_parsed_content("validate#inferer").mirror_axes == ()
    # training validation stays one pass per window
    parser = ConfigParser()
    parser.read_config([str(helpers.BUNDLES / bundle / "configs" / "train.yaml")])
    parser.update({"bundle_root": str(helpers.BUNDLES / bundle), "device": "cpu", "output_dir": str(tmp_path)})
    assert not isinstance(parser.get_parsed_content("validate#inferer"), MirroredInferer)


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
        allowed = {"device", "network", "run", "finalize", "dataset", "inferer", "evaluator"}
        if overlay != "multi_gpu_train.yaml":
            allowed.add("roi_size")  # inference windows: the checkpoint's trained patch
        assert redefined <= allowed, (overlay, redefined)


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
        assert targets and all(t in ("StatsHandler", "TensorBoardStatsHandler", "TensorBoardImageHandler",
                                     "dfseg.training.TensorBoardOverlays") for t in targets), targets
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
