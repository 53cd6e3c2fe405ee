"""Compare models (e.g. one per input modality) scored on the same scans: CIs and paired differences.

``dfseg study`` evaluates one model per modality with :func:`dfseg.reporting.evaluation.evaluate_predictions`
(which saves ``records.json``), then calls :func:`compare_models` on the loaded records and renders
the result with :func:`dfseg.reporting.comparison.render_comparison_table` and
:func:`dfseg.evaluation.plots.plot_roc_multi`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

from dfseg.errors import InputError
from dfseg.evaluation import metrics as m
from dfseg.evaluation import records as rec
from dfseg.evaluation.bootstrap import bootstrap_ci, paired_bootstrap
from dfseg.io import read_json


def load_records(eval_dir: str | Path) -> list[dict]:
    """Read the per-scan records an evaluation wrote (``<eval_dir>/records.json``)."""
    data = read_json(Path(eval_dir) / "records.json")
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise InputError(Path(eval_dir) / "records.json", "expected an object with a 'records' list")
    return data["records"]


def _align(records_by_model: Mapping[str, Sequence[dict]]) -> tuple[dict[str, list[dict]], list[str]]:
    """Order every model's records by scan id; refuse models scored on different scans."""
    names = list(records_by_model)
    if not names:
        raise InputError("compare_models", "no models to compare")
    ref_ids = sorted(r["scan_id"] for r in records_by_model[names[0]])
    aligned = {}
    for name in names:
        by_id = {r["scan_id"]: r for r in records_by_model[name]}
        if sorted(by_id) != ref_ids:
            missing = sorted(set(ref_ids) ^ set(by_id))[:3]
            raise InputError(name, f"scored on different scans than {names[0]} (e.g. {missing}); "
                             "a paired comparison needs the same scans")
        aligned[name] = [by_id[i] for i in ref_ids]
    groups = [r["subject_id"] for r in aligned[names[0]]]
    return aligned, groups


def compare_models(records_by_model: Mapping[str, Sequence[dict]], *, metrics: Sequence[str] | None = None,
                   threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-model metrics with subject-bootstrap CIs and paired differences between every pair of models.

    Args:
        records_by_model: model name (e.g. ``"attn"``) -> per-scan records of that model (same scans).
        metrics: metric names from :func:`dfseg.evaluation.records.metric_table` (default: the Dey
            table columns, :data:`dfseg.evaluation.records.DEY_COLUMNS`).
        threshold: probability threshold of the fixed-threshold metrics (must match the records').
        n_bootstrap: bootstrap resamples.
        seed: seed; every metric and pair uses the same seed, so all resample the same subjects.

    Returns:
        ``{"models": [...], "metrics": [...], "results": {model: {metric: ci}}, "paired":
        [{"a", "b", "metric", "difference", "ci_low", "ci_high", "p_value", ...}], "roc": {model:
        {"fpr", "tpr"}}, "n_scans", "n_subjects", "n_bootstrap", "seed"}``.
    """
    aligned, groups = _align(records_by_model)
    table = rec.metric_table(threshold)
    names = list(metrics) if metrics is not None else [k for k, _ in rec.DEY_COLUMNS]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise InputError("metrics", f"unknown metric(s) {unknown}; known: {sorted(table)}")
    results = {model: {name: bootstrap_ci(rs, table[name], groups=groups, n_boot=n_bootstrap, seed=seed)
                       for name in names} for model, rs in aligned.items()}
    paired = []
    for a, b in itertools.combinations(aligned, 2):
        for name in names:
            cmp = paired_bootstrap(aligned[a], aligned[b], table[name], groups=groups, n_boot=n_bootstrap, seed=seed)
            paired.append({"a": a, "b": b, "metric": name, **cmp})
    roc = {}
    for model, rs in aligned.items():
        scores, labels = rec.patch_arrays(rs)
        fpr, tpr, _ = m.roc_curve(scores, labels)
        roc[model] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auroc": m.auroc(scores, labels)}
    return {"models": list(aligned), "metrics": names, "results": results, "paired": paired, "roc": roc,
            "n_scans": len(groups), "n_subjects": len(set(groups)), "n_bootstrap": n_bootstrap, "seed": seed,
            "threshold": threshold}
