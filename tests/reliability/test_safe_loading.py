"""Safe loading (issue 9, item 5): checkpoints load with ``weights_only=True``, dfseg never unpickles
data, a crafted malicious checkpoint is refused without running its payload, and the README warns
that bundle configs execute Python."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}


def _dotted(node: ast.AST) -> str:
    """``torch.load`` for ``torch.load``, ``np.load`` for ``np.load`` (empty for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe deserialisation in Python ``source``, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [f"{filename}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLE_MODULES:
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                found.append(f"{filename}:{node.lineno}: from torch import load (hides weights_only)")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" and not _kw_true(node, "weights_only"):
                found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and any(k.arg == "allow_pickle" for k in node.keywords) \
                    and not any(k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                                for k in node.keywords):
                found.append(f"{filename}:{node.lineno}: {name} with allow_pickle")
            elif name.endswith((".load", ".loads")) and name.split(".")[0] in PICKLE_MODULES:
                found.append(f"{filename}:{node.lineno}: {name}")
            elif name in ("yaml.load", "yaml.unsafe_load") and not any(k.arg == "Loader" and "Safe" in ast.unparse(k.value)
                                                                       for k in node.keywords):
                found.append(f"{filename}:{node.lineno}: {name} without a safe loader")
    return found


def test_scanner_flags_unsafe_code():
    """The scanner itself can fail: each unsafe pattern is caught, the safe forms are not."""
    bad = ("import pickle\nfrom joblib import load\nimport torch, numpy as np\n"
           "torch.load('a.pt')\ntorch.load('a.pt', weights_only=False)\nnp.load('x.npy', allow_pickle=True)\n"
           "pickle.loads(b'')\nfrom torch import load\n")
    assert len(unsafe_loads(bad)) == 7, unsafe_loads(bad)
    good = "import torch, numpy as np\ntorch.load('a.pt', map_location='cpu', weights_only=True)\nnp.load('x.npy')\n"
    assert unsafe_loads(good) == []


def test_dfseg_never_unpickles():
    files = sorted((REPO / "dfseg").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in unsafe_loads(f.read_text(), str(f.relative_to(REPO)))]
    assert found == []


def test_bundle_configs_load_safely():
    configs = sorted((REPO / "bundles").rglob("*.yaml"))
    assert configs
    for cfg in configs:
        text = cfg.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in match.group(1), f"{cfg}: {match.group(0)}"
        assert not re.search(r"\b(pickle|dill|joblib)\.", text), cfg


class _Payload:
    """Unpickling this creates ``marker``: stands for arbitrary code execution."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "model.pt"
    torch.save({"network": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, ckpt)
    assert not marker.exists()
    # the payload really runs when unpickled without weights_only: the test could fail
    probe = tmp_path / "probe.pt"
    torch.save({"extra": _Payload(tmp_path / "probe_ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe_ran").exists()
    return ckpt, marker


def test_dfseg_checkpoint_loader_refuses_pickled_code(malicious, tmp_path):
    from dfseg.errors import InputError
    from dfseg.training.checkpoint import load_checkpoint

    ckpt, marker = malicious
    with pytest.raises(InputError, match=r"model\.pt: not a readable weights-only checkpoint \(UnpicklingError: Weights only load failed") as err:
        load_checkpoint(ckpt)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    (tmp_path / "cut.pt").write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(InputError, match=r"cut\.pt: not a readable weights-only checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(InputError, match=r"none\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_monai_checkpoint_loader_used_by_bundles_refuses_pickled_code(malicious):
    from ignite.engine import Engine
    from monai.handlers import CheckpointLoader

    ckpt, marker = malicious
    net = torch.nn.Linear(2, 1)
    loader = CheckpointLoader(load_path=str(ckpt), load_dict={"network": net}, map_location="cpu")
    with pytest.raises(pickle.UnpicklingError):
        loader(Engine(lambda e, b: None))
    assert not marker.exists()


def test_bundle_checkpoint_loader_gives_one_line_error(malicious):
    """The bundles' loader (dfseg.training.CheckpointLoader) names the file in one line, payload not run."""
    from ignite.engine import Engine

    from dfseg.errors import InputError
    from dfseg.training import CheckpointLoader

    ckpt, marker = malicious
    loader = CheckpointLoader(load_path=str(ckpt), load_dict={"network": torch.nn.Linear(2, 1)}, map_location="cpu")
    with pytest.raises(InputError, match="model.pt: not a readable weights-only checkpoint") as err:
        loader(Engine(lambda e, b: None))
    assert "\n" not in str(err.value) and not marker.exists()
    for cfg in sorted((REPO / "bundles").rglob("*.yaml")):
        assert "_target_: CheckpointLoader" not in cfg.read_text(), cfg


def test_plain_weights_still_load(tmp_path):
    from dfseg.training.checkpoint import load_checkpoint

    path = tmp_path / "ok.pt"
    torch.save({"network": {"w": torch.arange(3.0)}, "epoch": 4}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 4 and state["network"]["w"].tolist() == [0.0, 1.0, 2.0]


def test_readme_warns_that_bundle_configs_execute_python():
    readme = (REPO / "README.md").read_text()
    assert "a bundle config executes the Python expressions it contains" in readme
    assert "Run only bundle configs from a source you trust." in readme
    assert "weights_only=True" in readme
    for cfg in sorted((REPO / "bundles").glob("*/configs/train.yaml")):
        assert "SECURITY" in cfg.read_text(), cfg
