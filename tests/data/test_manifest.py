"""Manifest build/write/load round trip, held-out splits, folds of a datalist."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, DeleteItemsd

from dfseg import __version__
from dfseg.data.datasets import datalist_for_fold
from dfseg.data.manifest import (
    build_manifest,
    load_manifest,
    load_schema,
    manifest_hash,
    resolve_paths,
    scan_entries,
    schema_errors,
    split_fold,
    write_manifest,
)
from dfseg.data.scan import LoadScand
from dfseg.data.validate import validate_manifest
from dfseg.errors import InputError
from dfseg.io import sha256_file

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["manifest", "sidecar"])
def test_schemas_are_valid_draft_2020_12(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_round_trip(make_cohort, tmp_path):
    path = make_cohort(tmp_path / "c", n_subjects=6, num_folds=2, test_fraction=0.34)
    built = build_manifest(scan_entries(path.parent), path.parent, num_folds=2, seed=1, test_by="subject",
                           test_fraction=0.34, name="tiny")
    loaded = load_manifest(path)
    assert loaded == resolve_paths(built, path.parent)
    assert json.loads(path.read_text()) == built  # relative paths on disk
    assert loaded["pipeline_version"] == __version__
    # 6 subjects x 2 scans; round(0.34 * 3) = 1 positive and 1 negative subject held out
    assert len(loaded["training"]) == 8 and len(loaded["test"]) == 4 and loaded["validation"] == []
    assert {e["has_tumour"] for e in loaded["test"]} == {True, False}
    entry = loaded["training"][0]
    assert Path(entry["attn"]).is_absolute() and Path(entry["attn"]).is_file()
    assert entry["sha256"]["attn"] == sha256_file(entry["attn"])
    assert set(entry["sha256"]) == {"attn", "df", "label", "lung_mask", "sidecar"}
    assert entry["meta"]["orientations_deg"] == [0.0, 45.0, 90.0, 135.0]
    assert all(e["fold"] == -1 for e in loaded["test"])
    # same inputs, same seed: byte-identical manifest
    again = path.parent / "again.json"
    write_manifest(again, built)
    assert manifest_hash(again) == manifest_hash(path)


def test_held_out_by_variant_never_shares_subjects(make_cohort, tmp_path):
    path = make_cohort(tmp_path / "c", n_subjects=9, test_by="variant", test_variants=["emphysema"], num_folds=3)
    m = load_manifest(path)
    train_subjects = {e["subject_id"] for e in m["training"]}
    test_subjects = {e["subject_id"] for e in m["test"]}
    assert train_subjects.isdisjoint(test_subjects)
    assert test_subjects == {"m02", "m05", "m08"}  # every third subject is an emphysema phantom
    assert {e["variant"] for e in m["test"]} == {"emphysema"}
    assert m["test_split"] == {"by": "variant", "variants": ["emphysema"]}
    assert validate_manifest(path) == []


def test_split_fold_and_datalist(cohort):
    m = load_manifest(cohort)
    for fold in range(m["num_folds"]):
        train, val = split_fold(m, fold)
        assert {e["fold"] for e in val} == {fold} and fold not in {e["fold"] for e in train}
        assert len(train) + len(val) == len(m["training"])
        assert {e["subject_id"] for e in train}.isdisjoint({e["subject_id"] for e in val})
    with pytest.raises(InputError, match=r"fold: must be in 0..1, got 2"):
        split_fold(m, 2)
    items = datalist_for_fold(cohort, 0, "val")
    assert len(items) == len(split_fold(m, 0)[1])
    item = items[0]
    # the sidecar's fields stay in "meta" (LoadScand reads them there), none is copied to the top level
    assert item["meta"]["orientations_deg"] == [0.0, 45.0, 90.0, 135.0] and item["meta"]["voxel_mm"] == 0.1
    assert Path(item["df"]).is_absolute() and "orientations_deg" not in item and "sha256" not in item
    assert len(datalist_for_fold(cohort, None, "test")) == len(m["test"])
    assert datalist_for_fold(cohort, None, "val") == []


def test_load_manifest_names_json_path(cohort):
    m = json.loads(cohort.read_text())
    m["training"][3]["fold"] = 1.5
    cohort.write_text(json.dumps(m))
    with pytest.raises(InputError) as err:
        load_manifest(cohort)
    assert str(err.value) == f"{cohort}:training[3].fold: 1.5 is not of type 'integer'"


def test_write_manifest_refuses_invalid(tmp_path, cohort):
    m = json.loads(cohort.read_text())
    del m["training"][0]["scan_id"]
    target = tmp_path / "out.json"
    with pytest.raises(InputError, match=r"out.json:training\[0\]: 'scan_id' is a required property"):
        write_manifest(target, m)
    assert not target.exists()


def test_build_refuses_duplicate_scan_ids(cohort):
    entries = scan_entries(cohort.parent)
    with pytest.raises(InputError, match=r"entries\[1\].scan_id: duplicate scan_id 'm00_s0' \(also entries\[0\]\)"):
        build_manifest([entries[0], {**entries[1], "scan_id": "m00_s0"}], cohort.parent, num_folds=2)


def test_example_datalist_is_valid():
    example = REPO / "data_manifests" / "example_datalist.json"
    assert validate_manifest(example, check_images=False) == []
    # the files it names are not shipped: opening them reports exactly those, one per file
    problems = validate_manifest(example, check_hashes=False)
    document = json.loads(example.read_text())
    n_files = sum(len(e["sha256"]) for split in ("training", "test") for e in document[split])
    assert len(problems) == n_files == 35
    assert all(p.message.startswith("file not found") for p in problems)


def test_datalist_batches_with_monai(cohort):
    items = datalist_for_fold(cohort, 1, "train")
    transform = Compose([LoadScand(keys="attn"), DeleteItemsd(keys="meta")])
    batch = next(iter(DataLoader(Dataset(items, transform), batch_size=2, num_workers=0)))
    # once LoadScand has read the scan and "meta" is dropped, the items collate: images stack, ids batch
    assert tuple(batch["attn"].shape) == (2, 1, 8, 8, 8)
    assert batch["scan_id"] == [items[0]["scan_id"], items[1]["scan_id"]]


def _unlabelled(cohort_manifest: Path, n: int) -> list[dict]:
    """Raw entries of the first ``n`` scans with label and lung mask dropped (a lab's unlabelled scans)."""
    entries = scan_entries(cohort_manifest.parent)[:n]
    return [{k: v for k, v in e.items() if k not in ("label", "lung_mask")} for e in entries]


def test_inference_manifest_single_unlabelled_scan_is_valid(cohort, tmp_path):
    entries = _unlabelled(cohort, 1)
    built = build_manifest(entries, cohort.parent, purpose="inference", name="lab")
    assert built["purpose"] == "inference" and built["num_folds"] == 0 and built["test_split"] == {"by": "none"}
    assert built["training"] == [] and built["validation"] == [] and len(built["test"]) == 1
    entry = built["test"][0]
    assert entry["fold"] == -1 and "label" not in entry and set(entry["sha256"]) == {"attn", "df", "sidecar"}
    assert entry["has_tumour"] is True  # the sidecar knows it; kept
    path = cohort.parent / "inference.json"
    write_manifest(path, built)
    assert validate_manifest(path) == []
    d = LoadScand(keys=("attn", "df"))(load_manifest(path)["test"][0])
    assert tuple(d["df"].shape) == (4, 8, 8, 8)
    # without a tumour flag anywhere, an inference entry simply has none
    meta = {k: v for k, v in json.loads(Path(entries[0]["sidecar"]).read_text()).items() if k != "has_tumour"}
    bare = build_manifest([{**entries[0], "meta": meta}], cohort.parent, purpose="inference")
    assert "has_tumour" not in bare["test"][0]
    assert schema_errors(bare) == []


def test_training_manifest_still_requires_labels_and_folds(cohort):
    entries = _unlabelled(cohort, 2)
    with pytest.raises(InputError, match=r"^entries\[0\]: missing file key 'label'$"):
        build_manifest(entries, cohort.parent, num_folds=2)
    one = scan_entries(cohort.parent)[:1]
    with pytest.raises(InputError, match=r"^num_folds: 1 subjects cannot fill 2 folds; use fewer folds$"):
        build_manifest(one, cohort.parent, num_folds=2, test_by="none")
    with pytest.raises(InputError, match=r"^purpose: must be 'training' or 'inference', got 'predict'$"):
        build_manifest(one, cohort.parent, purpose="predict")
    # the schema: a training manifest (no purpose) entry without label; an inference one with folds
    m = json.loads(cohort.read_text())
    del m["training"][0]["lung_mask"]
    assert schema_errors(m) == [("training[0]", "'lung_mask' is a required property")]
    inference = build_manifest(_unlabelled(cohort, 2), cohort.parent, purpose="inference")
    assert schema_errors({**inference, "num_folds": 2}) == [("num_folds", "0 was expected")]
    moved = {**inference, "training": inference["test"][:1], "test": inference["test"][1:]}
    assert [w for w, _ in schema_errors(moved)] == ["training"]
