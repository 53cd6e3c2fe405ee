"""Fuzzing (issue 9, item 6): random mutations of manifests and sidecars, random array shapes and
dtypes for the transforms. The only exceptions allowed are the documented ones: the validator
returns problems (or raises :class:`dfseg.errors.DfsegError`), transforms give a correctly shaped
output or raise ``ValueError`` (``InputError`` is one)."""

from __future__ import annotations

import copy
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from corpus import calibration_doc, make_cohort  # noqa: E402

from dfseg.data.manifest import load_manifest  # noqa: E402
from dfseg.data.validate import Problem, validate_manifest, validate_sidecar  # noqa: E402
from dfseg.errors import DfsegError  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------
# JSON mutations

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "../../../etc/passwd", "/", ".", "\u202e\u0000\ufffd", "scans", "💥" * 50, "1e999"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=10)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a JSON document (keys and list indices)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw, document: dict, n_max: int = 3) -> Any:
    """``document`` with 1..n_max random mutations: delete, replace, add a key, or retype."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, n_max))):
        locations = _paths(doc)
        loc = draw(st.sampled_from(locations))
        op = draw(st.sampled_from(["delete", "replace", "extra", "stringify"]))
        if not loc:
            if op == "replace":
                return draw(json_values)
            continue
        parent = doc
        for part in loc[:-1]:
            parent = parent[part]
        last = loc[-1]
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(json_values)
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        elif op == "stringify":
            parent[last] = json.dumps(parent[last])
    return doc


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("fuzz") / "cohort", n_subjects=3, scans_per_subject=1)


_counter = itertools.count()


def _write(cohort, doc: Any) -> Path:
    path = cohort.root / f"fuzz_{next(_counter)}.json"
    path.write_text(json.dumps(doc, ensure_ascii=bool(next(_counter) % 2)))
    return path


def _assert_problems(result: Any) -> None:
    assert isinstance(result, list) and all(isinstance(p, Problem) for p in result)
    for p in result:
        assert isinstance(p.where, str) and isinstance(p.message, str)


@FUZZ
@given(data=st.data())
def test_validate_manifest_document_fuzz(cohort, data):
    doc = data.draw(mutated(json.loads(cohort.manifest.read_text())))
    path = _write(cohort, doc)
    try:
        _assert_problems(validate_manifest(path, check_images=False))
    except DfsegError:
        pass
    try:
        load_manifest(path)
    except DfsegError:
        pass
    finally:
        path.unlink()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validate_manifest_with_files_fuzz(cohort, data):
    """Mutated entries whose paths, hashes and metadata point anywhere, the files opened."""
    original = json.loads(cohort.manifest.read_text())
    doc = copy.deepcopy(original)
    entry = doc["training"][0]
    sub = data.draw(mutated(entry, n_max=2))
    doc["training"][0] = sub
    path = _write(cohort, doc)
    try:
        _assert_problems(validate_manifest(path))
    except DfsegError:
        pass
    finally:
        path.unlink()


@FUZZ
@given(data=st.data())
def test_validate_sidecar_fuzz(cohort, data):
    sidecar = json.loads((cohort.root / cohort.entry()["sidecar"]).read_text())
    doc = data.draw(mutated(sidecar))
    _assert_problems(validate_sidecar(doc, "sidecar.json"))


def test_mutations_are_reported():
    """The harness can fail: a plain deletion is reported as a problem, not passed silently."""
    from corpus import sidecar

    doc = sidecar("m0", "m0_s0", True)
    assert validate_sidecar(doc, "s") == []
    del doc["voxel_mm"]
    assert [str(p) for p in validate_sidecar(doc, "s")] == ["s: 'voxel_mm' is a required property"]


# ------------------------------------------------------------------------------------------------
# transforms over shapes and dtypes

DTYPES = ["float32", "float64", "float16", "int16", "uint8", "bool"]


@st.composite
def arrays(draw, channels=st.integers(1, 6), ndim=st.integers(1, 5)):
    """numpy or torch arrays, channel-first, small random shapes and dtypes (values in [0, 0.1])."""
    n = draw(ndim)
    shape = (draw(channels), *[draw(st.integers(1, 6)) for _ in range(n - 1)]) if n else ()
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = (rng.uniform(0, 0.1, shape)).astype(dtype)
    if draw(st.booleans()) and a.size and a.dtype.kind == "f":
        a.flat[0] = draw(st.sampled_from([0.0, -1.0, 1e30, np.inf, np.nan]))
    return torch.as_tensor(a) if draw(st.booleans()) else a


def _call(fn):
    """Build and run a transform; documented refusals return None, anything else propagates."""
    try:
        return fn()
    except ValueError:  # InputError is a ValueError
        return None


def _shape(x) -> tuple:
    return tuple(x.shape)


@FUZZ
@given(img=arrays(), angles=st.sampled_from([[0.0, 45.0, 90.0, 135.0], [0.0, 60.0, 120.0], [0.0, 90.0]]))
def test_directional_decomposition_fuzz(img, angles):
    from dfseg.transforms.decomposition import DirectionalDecomposition

    out = _call(lambda: DirectionalDecomposition(angles)(img))
    if out is not None:
        assert img.shape[0] == len(angles)  # a 1-D input is one voxel's N readings
        assert _shape(out) == (5, *img.shape[1:])


@FUZZ
@given(attn=arrays(channels=st.integers(1, 2), ndim=st.integers(3, 4)), df=arrays(ndim=st.integers(3, 4)),
       modality=st.sampled_from(["attn", "df", "combined"]))
def test_select_modality_fuzz(attn, df, modality):
    from dfseg.transforms.modality import SelectModality, modality_channels

    out = _call(lambda: SelectModality(modality)(attn, df))
    if out is not None:
        spatial = attn.shape[1:] if modality != "df" else df.shape[1:]
        assert _shape(out) == (len(modality_channels(modality)), *spatial)


@FUZZ
@given(img=arrays(ndim=st.integers(2, 5)), attn=arrays(channels=st.just(1), ndim=st.integers(2, 5)),
       radius=st.sampled_from([0.0, 0.1, 1.0, 50.0]), voxel=st.sampled_from([0.1, 1.0, 0.05]))
def test_features_fuzz(img, attn, radius, voxel):
    from dfseg.transforms.features import DarkFieldAttenuationRatio, DifferentialDarkField, LocalTexture

    for make, args in ((lambda: DifferentialDarkField(radius, voxel), (img,)), (lambda: LocalTexture(radius, voxel), (img,)),
                       (DarkFieldAttenuationRatio, (img, attn))):
        out = _call(lambda make=make, args=args: make()(*args))
        if out is not None:
            assert _shape(out)[1:] == tuple(img.shape[1:])


@FUZZ
@given(attn=arrays(channels=st.just(1), ndim=st.integers(3, 4)), df_channels=st.integers(1, 6),
       df_dtype=st.sampled_from(DTYPES), centre=st.tuples(*[st.floats(-3, 8, allow_nan=False)] * 3),
       diameter=st.sampled_from([0.05, 0.3, 2.0, 100.0]), with_mask=st.booleans())
def test_synthetic_tumour_fuzz(attn, df_channels, df_dtype, centre, diameter, with_mask):
    """Shapes that agree spatially (mismatched ones: the test below)."""
    from dfseg.transforms.tumour import SyntheticTumour

    df = np.full((df_channels, *attn.shape[1:]), 0.01).astype(df_dtype)
    label = np.zeros(tuple(attn.shape), np.uint8)
    mask = np.ones(tuple(attn.shape), np.uint8) if with_mask else None
    out = _call(lambda: SyntheticTumour(centre, diameter, 0.1, tissue_mu=0.05)(attn, df, label, mask))
    if out is not None:
        a, d, lab = out
        assert _shape(a) == tuple(attn.shape) and _shape(d) == tuple(df.shape) and _shape(lab) == tuple(attn.shape)


@pytest.mark.parametrize(("attn_shape", "df_shape"), [((1, 1, 1, 1), (4, 1, 1, 2)), ((1, 1, 2, 3), (5, 1, 2, 2))])
def test_synthetic_tumour_mismatched_shapes_is_input_error(attn_shape, df_shape):
    from dfseg.errors import InputError
    from dfseg.transforms.tumour import SyntheticTumour

    attn, df = np.full(attn_shape, 0.02, np.float32), np.full(df_shape, 0.01, np.float32)
    with pytest.raises(InputError, match="shape"):
        SyntheticTumour((0, 0, 0), 0.3, 0.1, tissue_mu=0.05)(attn, df, np.zeros(attn_shape, np.uint8), None)


@FUZZ
@given(df=arrays(ndim=st.integers(2, 5)), attn=arrays(channels=st.integers(1, 2), ndim=st.integers(2, 5)),
       air=st.integers(-1, 4))
def test_corrections_fuzz(df, attn, air):
    from dfseg.transforms.beam_hardening import BeamHardeningCorrection
    from dfseg.transforms.flux import DetectorDriftCorrection, FluxNormalization
    from dfseg.transforms.spectrum import SpectrumAwareNormalization

    cal = calibration_doc()
    out = _call(lambda: BeamHardeningCorrection(cal, domain="volume")(df, attn))
    if out is not None:
        assert _shape(out) == tuple(df.shape)
    out = _call(lambda: SpectrumAwareNormalization(cal, e_eff_kev=30.0)(df))
    if out is not None:
        assert _shape(out) == tuple(df.shape)
    for make in (FluxNormalization, DetectorDriftCorrection):
        out = _call(lambda make=make: make(air)(df))
        if out is not None:
            assert _shape(out) == tuple(df.shape)
