"""map_jobs: results in job order and identical files whatever the executor; refusals; failed jobs."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import executor_jobs as jobs_mod  # tests/executor_jobs.py: tests/ is on sys.path (tests/conftest.py)
import pytest

from dfseg.errors import InputError
from dfseg.simulate.executors import EXECUTORS, map_jobs, probe_workers

distributed = pytest.importorskip("distributed", reason="the optional extra dfseg[distributed]")

JOBS = [{"index": i} for i in range(7)]
SQUARES = [i * i for i in range(7)]


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_local_inline_in_order_with_progress():
    ticks = []
    assert map_jobs(jobs_mod.square, JOBS, progress=lambda: ticks.append(1)) == SQUARES
    assert len(ticks) == len(JOBS)
    assert map_jobs(jobs_mod.pid, JOBS[:2]) == [os.getpid()] * 2  # workers=1: this process
    assert map_jobs(jobs_mod.square, []) == []


def test_local_processes_in_order():
    ticks = []
    assert map_jobs(jobs_mod.square, JOBS, workers=2, progress=lambda: ticks.append(1)) == SQUARES
    assert len(ticks) == len(JOBS)


@pytest.fixture(scope="module")
def cluster():
    """A two-process Dask cluster the tests reach by address, as an external cluster."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:
        yield c


def test_dask_local_cluster_in_order():
    ticks = []
    assert map_jobs(jobs_mod.square, JOBS, executor="dask", workers=2, progress=lambda: ticks.append(1)) == SQUARES
    assert len(ticks) == len(JOBS)


def test_dask_scheduler_address_and_file(cluster, tmp_path):
    assert map_jobs(jobs_mod.square, JOBS, executor="dask", scheduler=cluster.scheduler_address) == SQUARES
    pids = set(map_jobs(jobs_mod.pid, [{"index": i} for i in range(8)], executor="dask",
                        scheduler=cluster.scheduler_address))
    assert os.getpid() not in pids
    # a scheduler file as written by `dask scheduler --scheduler-file`
    sched = tmp_path / "sched.json"
    sched.write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler_address}))
    assert map_jobs(jobs_mod.square, JOBS[:3], executor="dask", scheduler=sched) == SQUARES[:3]


def test_files_byte_identical_whatever_the_executor(cluster, tmp_path):
    runs = {"inline": {}, "processes": {"workers": 2}, "dask-local": {"executor": "dask", "workers": 2},
            "dask-scheduler": {"executor": "dask", "scheduler": cluster.scheduler_address}}
    digests = {}
    for name, kwargs in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        jobs = [{"index": i, "seed": 11, "folder": str(folder.absolute())} for i in range(6)]
        names = map_jobs(jobs_mod.write_bytes, jobs, **kwargs)
        assert names == [f"job-{i:03d}.bin" for i in range(6)]
        digests[name] = _digests(folder)
    assert len(digests["inline"]) == 6
    assert all(d == digests["inline"] for d in digests.values())


def test_probe_workers(cluster, tmp_path):
    report = probe_workers(tmp_path / "out", scheduler=cluster.scheduler_address)
    assert len(report) == 2 and all(r["versions"]["numpy"] for r in report.values())
    assert list((tmp_path / "out").iterdir()) == []  # the probe files are removed


@pytest.mark.parametrize("kwargs, where, text", [
    ({"executor": "ray"}, "--executor", "local, dask"),
    ({"workers": 0}, "--workers", "at least one"),
    ({"scheduler": "tcp://127.0.0.1:8786"}, "--scheduler", "--executor dask"),
    ({"executor": "dask", "scheduler": "no-such-file.json"}, "--scheduler", "neither"),
])
def test_refusals(kwargs, where, text):
    with pytest.raises(InputError, match=text) as err:
        map_jobs(jobs_mod.square, JOBS, **kwargs)
    assert err.value.where == where


@pytest.mark.parametrize("kwargs", [{}, {"workers": 2}, {"executor": "dask", "workers": 2}],
                         ids=["inline", "processes", "dask"])
def test_failed_job_is_named(kwargs):
    jobs = [{"index": i, "fail": "input" if i == 3 else None} for i in range(5)]
    with pytest.raises(InputError) as err:  # a dfseg error keeps its class and its where
        map_jobs(jobs_mod.square, jobs, **kwargs)
    assert err.value.where == "subject-3.json" and str(err.value) == "subject-3.json: no such subject [job 3]"
    jobs = [{"index": i, "fail": "value" if i == 2 else None} for i in range(5)]
    with pytest.raises(RuntimeError, match=r"^job 2 failed: ValueError: bad value in job 2") as err:
        map_jobs(jobs_mod.square, jobs, **kwargs)
    assert isinstance(err.value.__cause__, ValueError)


def test_missing_dask_is_one_line(monkeypatch):
    for name in [m for m in sys.modules if m == "dask" or m.startswith(("dask.", "distributed"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(InputError) as err:
        map_jobs(jobs_mod.square, JOBS, executor="dask")
    assert str(err.value) == "--executor: dask needs the optional extra: pip install 'dfseg[distributed]'"
    assert map_jobs(jobs_mod.square, JOBS[:2]) == [0, 1]  # the local executor does not need it


def test_executor_names():
    assert EXECUTORS == ("local", "dask")
