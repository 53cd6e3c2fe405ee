"""Compare models (e.g. one per input modality) scored on the same scans: CIs and paired differences.

``dfseg study`` evaluates one model per modality with :func:`dfseg.reporting.evaluation.evaluate_predictions`
(which saves ``records.json``), then calls :func:`compare_models` on the loaded records and renders
the result with :func:`dfseg.reporting.comparison.render_comparison_table` and
:func:`dfseg.evaluation.plots.plot_roc_multi`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from dfseg.errors import InputError
from dfseg.evaluation import metrics as m
from dfseg.evaluation import records as rec
from dfseg.evaluation.bands import roc_band, roc_counts
from dfseg.evaluation.bootstrap import bootstrap_ci, holm, paired_bootstrap
from dfseg.io import read_json


def load_records(eval_dir: str | Path) -> list[dict]:
    """Read the per-scan records an evaluation wrote (``<eval_dir>/records.json``)."""
    data = read_json(Path(eval_dir) / "records.json")
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise InputError(Path(eval_dir) / "records.json", "expected an object with a 'records' list")
    return data["records"]


Runs = Sequence[dict] | Sequence[Sequence[dict]]


def _seed_runs(name: str, runs: Runs) -> list[list[dict]]:
    """One model's records as a list of runs (one per training seed); a plain record list is one run."""
    runs = list(runs)
    if not runs:
        raise InputError(name, "no records")
    if isinstance(runs[0], Mapping):
        return [list(runs)]
    return [list(r) for r in runs]


def _align(records_by_model: Mapping[str, Runs]) -> tuple[dict[str, list[dict]], list[str]]:
    """Stack every model's runs by scan id; refuse runs scored on different scans.

    Returns model -> one record per scan, ``{"scan_id", "subject_id", "runs": [record of seed 0, ...]}``,
    and the subject of each scan (the bootstrap's groups).
    """
    names = list(records_by_model)
    if not names:
        raise InputError("compare_models", "no models to compare")
    runs = {name: _seed_runs(name, records_by_model[name]) for name in names}
    ref_ids = sorted(r["scan_id"] for r in runs[names[0]][0])
    aligned = {}
    for name in names:
        by_id = []
        for k, run in enumerate(runs[name]):
            ids = {r["scan_id"]: r for r in run}
            if sorted(ids) != ref_ids:
                missing = sorted(set(ref_ids) ^ set(ids))[:3]
                which = name if len(runs[name]) == 1 else f"{name} (run {k})"
                raise InputError(which, f"scored on different scans than {names[0]} (e.g. {missing}); "
                                 "a paired comparison needs the same scans")
            by_id.append(ids)
        aligned[name] = [{"scan_id": i, "subject_id": by_id[0][i]["subject_id"], "runs": [ids[i] for ids in by_id]}
                         for i in ref_ids]
    groups = [r["subject_id"] for r in aligned[names[0]]]
    return aligned, groups


def seed_mean(metric: Callable[[Sequence[dict]], float]) -> Callable[[Sequence[dict]], float]:
    """``metric`` averaged over training seeds, as a function of stacked records (see :func:`_align`).

    Each seed's metric is computed on the same scans (in a bootstrap resample, the same resampled
    subjects), then averaged, ignoring seeds where it is undefined; one seed gives ``metric`` itself.
    """
    def mean_over_seeds(stacked: Sequence[dict]) -> float:
        if not stacked:
            return float(metric([]))
        values = np.array([metric([r["runs"][k] for r in stacked]) for k in range(len(stacked[0]["runs"]))], float)
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else float("nan")
    return mean_over_seeds


def pooled_patches(stacked: Sequence[dict]) -> tuple:
    """Patch scores and labels of every seed's run of stacked records (see :func:`_align`), pooled."""
    return rec.patch_arrays([run for r in stacked for run in r["runs"]])


def compare_models(records_by_model: Mapping[str, Runs], *, metrics: Sequence[str] | None = None,
                   threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-model metrics with subject-bootstrap CIs and paired differences between every pair of models.

    A model trained with several seeds is given as a list of record lists, one per seed. Its metric is
    then the mean over seeds, and the bootstrap resamples subjects and recomputes that mean on every
    resample, so the CI covers the test mice's sampling; ``per_seed`` lists each seed's estimate (the
    training variability). Paired differences compare seed means on the same resampled subjects; their
    p-values are also given Holm-adjusted over all the comparisons of the call (``p_holm``: one table
    is one family).

    Args:
        records_by_model: model name (e.g. ``"attn"``) -> per-scan records of that model (same scans),
            or a list of such record lists, one per training seed.
        metrics: metric names from :func:`dfseg.evaluation.records.metric_table` (default: the Dey
            table columns, :data:`dfseg.evaluation.records.DEY_COLUMNS`).
        threshold: probability threshold of the fixed-threshold metrics (must match the records').
        n_bootstrap: bootstrap resamples.
        seed: seed; every metric and pair uses the same seed, so all resample the same subjects.

    Returns:
        ``{"models": [...], "metrics": [...], "results": {model: {metric: ci + {"per_seed"}}}, "paired":
        [{"a", "b", "metric", "difference", "ci_low", "ci_high", "p_value", "p_holm", ...}], "roc": {model:
        {"fpr", "tpr", "auroc", "band", "counts"}} (patches of all seeds pooled; the band a pointwise
        subject-bootstrap interval, :func:`dfseg.evaluation.bands.roc_band`; counts of one seed's patches), "n_scans", "n_subjects", "n_seeds",
        "n_bootstrap", "seed"}``.
    """
    aligned, groups = _align(records_by_model)
    table = rec.metric_table(threshold)
    names = list(metrics) if metrics is not None else [k for k, _ in rec.DEY_COLUMNS]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise InputError("metrics", f"unknown metric(s) {unknown}; known: {sorted(table)}")
    results = {}
    for model, rs in aligned.items():
        results[model] = {}
        for name in names:
            ci = bootstrap_ci(rs, seed_mean(table[name]), groups=groups, n_boot=n_bootstrap, seed=seed)
            per_seed = [float(table[name]([r["runs"][k] for r in rs])) for k in range(len(rs[0]["runs"]))]
            results[model][name] = {**ci, "per_seed": per_seed}
    paired = []
    for a, b in itertools.combinations(aligned, 2):
        for name in names:
            cmp = paired_bootstrap(aligned[a], aligned[b], seed_mean(table[name]), groups=groups,
                                   n_boot=n_bootstrap, seed=seed)
            paired.append({"a": a, "b": b, "metric": name, **cmp})
    for entry, adjusted in zip(paired, holm([p["p_value"] for p in paired]), strict=True):
        entry["p_holm"] = adjusted
    roc = {}
    for model, rs in aligned.items():
        scores, labels = pooled_patches(rs)
        fpr, tpr, _ = m.roc_curve(scores, labels)
        first = [r["runs"][0] for r in rs]
        roc[model] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auroc": m.auroc(scores, labels),
                      "band": roc_band(rs, pooled_patches, groups=groups, n_boot=n_bootstrap, seed=seed),
                      "counts": roc_counts(first, rec.patch_arrays, groups=groups,
                                           n_lesions=len(rec.all_lesions(first)))}
    return {"models": list(aligned), "metrics": names, "results": results, "paired": paired, "roc": roc,
            "n_scans": len(groups), "n_subjects": len(set(groups)),
            "n_seeds": {model: len(rs[0]["runs"]) for model, rs in aligned.items()},
            "n_bootstrap": n_bootstrap, "seed": seed, "threshold": threshold}
