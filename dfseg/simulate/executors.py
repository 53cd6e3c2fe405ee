"""Where independent jobs run: this process, local worker processes, or a Dask cluster.

:func:`map_jobs` runs ``fn(job)`` for every job and returns the results in job order, whichever
executor ran them and in whatever order they finished. The cohort writer uses it for its
subjects; every subject is seeded by ``SeedSequence([seed, index])`` and simulated with one torch
thread, so the files it writes do not depend on the executor or the worker count
(docs/distributed.md).

Executors:

* ``"local"`` (the default): ``workers == 1`` runs the jobs in this process, one after the
  other; ``workers > 1`` runs them in that many ``spawn``'d processes of this machine.
* ``"dask"``: ``dask.distributed`` (the optional extra ``pip install 'dfseg[distributed]'``).
  With ``scheduler`` (an address such as ``tcp://host:8786``, or the JSON file written by
  ``dask scheduler --scheduler-file``) the jobs go to that cluster's workers, which may be on
  other machines; without it a :class:`~distributed.LocalCluster` of ``workers`` single-threaded
  processes is started for the call and closed after it.

Shared filesystem: a job on another machine writes its files there, so any folder a job writes
into must be on a filesystem every worker (and this machine) sees under the same path; pass
absolute paths in the jobs. :func:`map_jobs` takes no position on paths; :func:`probe_workers`
checks a cluster before a long run.

``fn`` travels to the workers by reference (its module and name), so it must be a module-level
function of a module the workers can import: the same dfseg version on every machine.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from dfseg.errors import DfsegError, InputError

#: Executor names accepted by :func:`map_jobs` (and ``dfseg simulate --executor``).
EXECUTORS = ("local", "dask")

#: Seconds :func:`map_jobs` waits for the first worker of an external Dask scheduler.
WORKER_WAIT_S = 120.0

#: Distributions whose versions decide the bytes of a simulated scan: a worker with other
#: versions would write other files, so an external cluster with them is refused.
VERSIONED = ("dfseg", "numpy", "scipy", "torch", "nibabel")

_MISSING_DASK = "dask needs the optional extra: pip install 'dfseg[distributed]'"


def map_jobs(fn: Callable[[Any], Any], jobs: Iterable[Any], *, executor: str = "local", workers: int = 1,
             scheduler: str | os.PathLike | None = None, progress: Callable[[], Any] | None = None) -> list:
    """``[fn(job) for job in jobs]``, run by ``executor``; results in job order.

    Args:
        fn: a module-level function (workers import it by module and name) of one job.
        jobs: the jobs; each must pickle. Jobs that write files must name them by absolute
            paths on a filesystem every worker sees (module docstring).
        executor: one of :data:`EXECUTORS`.
        workers: ``"local"``: processes (1: this process); ``"dask"`` without ``scheduler``: the
            processes of the local cluster. Ignored with ``scheduler`` (the cluster has its own).
        scheduler: ``"dask"`` only: address (``tcp://host:8786``) or scheduler JSON file of a
            running Dask cluster.
        progress: called once, with no argument, per finished job (in finishing order).

    Returns:
        ``fn(job)`` of every job, in job order.

    Raises:
        InputError: an unknown executor, ``workers < 1``, ``scheduler`` without ``"dask"``, dask
            not installed, an unreachable scheduler, no worker, or workers with other versions of
            :data:`VERSIONED` than this machine.
        DfsegError: the first failed job's own error (same class) with the job named in it.
        RuntimeError: the first failed job's any other error, naming the job; the worker's
            exception is its ``__cause__``.
    """
    if executor not in EXECUTORS:
        raise InputError("--executor", f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError("--workers", f"need at least one worker, got {workers!r}")
    if scheduler is not None and executor != "dask":
        raise InputError("--scheduler", f"a scheduler needs --executor dask (got --executor {executor})")
    jobs = list(jobs)
    tick = progress or (lambda: None)
    if not jobs:
        return []
    if executor == "dask":
        return _map_dask(fn, jobs, workers, scheduler, tick)
    if workers == 1:
        results = []
        for i, job in enumerate(jobs):
            try:
                results.append(fn(job))
            except Exception as exc:
                raise _job_error(i, job, exc) from exc
            tick()
        return results
    return _map_processes(fn, jobs, workers, tick)


def probe_workers(folder: str | os.PathLike, *, scheduler: str | os.PathLike | None = None,
                  workers: int = 1) -> dict[str, dict[str, Any]]:
    """Check that every worker of a Dask cluster can write into ``folder`` and this machine sees it.

    Each worker writes a small file into ``folder``; this machine reads every one back and removes
    it. Run it before a long cohort on a cluster: a worker whose ``folder`` is another disk would
    otherwise write its subjects where the manifest never finds them.

    Args:
        folder: the output folder (created when missing); absolute, as the workers see it.
        scheduler: address or scheduler JSON file (None: a local cluster of ``workers``).
        workers: processes of the local cluster when ``scheduler`` is None.

    Returns:
        worker address -> ``{"host", "pid", "versions"}`` (versions of :data:`VERSIONED`).

    Raises:
        InputError: dask missing, no scheduler or worker, a worker that cannot write ``folder``,
            or a worker file this machine does not see (``folder`` not shared).
    """
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    with _dask_client(workers, scheduler) as client:
        replies = client.run(_write_probe, str(folder), token, on_error="return")
    report: dict[str, dict[str, Any]] = {}
    try:
        for address, reply in sorted(replies.items()):
            if isinstance(reply, BaseException):
                raise InputError(folder, f"worker {address} cannot write here: {type(reply).__name__}: {reply}")
            path = Path(reply["path"])
            if not path.is_file() or path.read_text() != token:
                raise InputError(folder, f"worker {address} on {reply['host']} wrote {path}, which this machine "
                                         "does not see: the folder must be on a filesystem every worker shares")
            report[address] = {k: reply[k] for k in ("host", "pid", "versions")}
    finally:
        for reply in replies.values():
            if isinstance(reply, dict):
                Path(reply["path"]).unlink(missing_ok=True)
    return report


def software_versions() -> dict[str, str | None]:
    """Installed versions of :data:`VERSIONED` (None: not installed), read without importing them."""
    versions: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ------------------------------------------------------------------------------------------------
# local processes


def _map_processes(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, tick: Callable[[], Any]) -> list:
    # reason: multiprocessing is only needed here; "spawn" so workers never inherit torch's threads
    import multiprocessing as mp

    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"))
    try:
        futures = [pool.submit(_call, fn, job) for job in jobs]
        index = {f: i for i, f in enumerate(futures)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            failed = sorted(index[f] for f in done if f.exception() is not None)
            if failed:
                i = failed[0]
                exc = futures[i].exception()
                raise _job_error(i, jobs[i], exc) from exc
            for _ in done:
                tick()
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------
# dask


def _import_dask():
    try:
        # reason: dask is the optional extra dfseg[distributed]; the local executor never needs it
        import dask.distributed as dd
    except ImportError as exc:
        raise InputError("--executor", _MISSING_DASK) from exc
    return dd


class _dask_client:
    """Context manager: a Client of ``scheduler``, or of a LocalCluster closed on exit."""

    def __init__(self, workers: int, scheduler: str | os.PathLike | None):
        self.workers, self.scheduler = workers, scheduler
        self.cluster = self.client = None

    def __enter__(self):
        dd = _import_dask()
        if self.scheduler is None:
            self.cluster = dd.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")  # any free port: never a clash
            self.client = dd.Client(self.cluster)
            return self.client
        kwargs = _scheduler_kwargs(self.scheduler)
        try:
            self.client = dd.Client(**kwargs)
        except (OSError, TimeoutError) as exc:
            raise InputError("--scheduler", f"cannot reach the dask scheduler at {self.scheduler}: {exc}") from exc
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError) as exc:
            self.client.close()
            raise InputError("--scheduler", f"no dask worker joined {self.scheduler} in {WORKER_WAIT_S:g} s; "
                                            "start one on each machine: dask worker --scheduler-file "
                                            "<file> --nthreads 1") from exc
        return self.client

    def __exit__(self, *exc_info):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False


def _scheduler_kwargs(scheduler: str | os.PathLike) -> dict[str, Any]:
    text = os.fspath(scheduler)
    if "://" in text:
        return {"address": text}
    if Path(text).is_file():
        return {"scheduler_file": str(Path(text).absolute())}
    host, _, port = text.rpartition(":")
    if host and port.isdigit() and "/" not in text:
        return {"address": f"tcp://{text}"}
    raise InputError("--scheduler", f"{text!r} is neither a scheduler address (tcp://host:8786) nor a "
                                    "scheduler file (dask scheduler --scheduler-file <file>)")


def _map_dask(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int,
              scheduler: str | os.PathLike | None, tick: Callable[[], Any]) -> list:
    dd = _import_dask()
    with _dask_client(workers, scheduler) as client:
        if scheduler is not None:
            _check_versions(client, scheduler)
        run = uuid.uuid4().hex[:8]
        futures = client.map(_call, [fn] * len(jobs), jobs, pure=False,
                             key=[f"dfseg-job-{i}-{run}" for i in range(len(jobs))])
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for future in dd.as_completed(futures):
                if future.status == "error":
                    i = index[future.key]
                    exc = future.exception()
                    raise _job_error(i, jobs[i], exc) from exc
                tick()
            return client.gather(futures)
        finally:
            client.cancel(futures)


def _check_versions(client, scheduler) -> None:
    here = software_versions()
    for address, theirs in sorted(client.run(software_versions).items()):
        differ = [f"{k} {theirs.get(k)} (here {v})" for k, v in here.items() if theirs.get(k) != v]
        if differ:
            raise InputError("--scheduler", f"worker {address} of {scheduler} has {', '.join(differ)}: its files "
                                            "would differ; install the same versions on every machine")


# ------------------------------------------------------------------------------------------------
# running a job and reporting its failure


def _call(fn: Callable[[Any], Any], job: Any) -> Any:
    """Run ``fn(job)`` in a worker; a DfsegError leaves as :class:`_PortableError` (it pickles)."""
    try:
        return fn(job)
    except DfsegError as exc:
        raise _PortableError(type(exc), exc.where, exc.problem) from None


class _PortableError(Exception):
    """A DfsegError sent back from a worker: DfsegError(where, problem) does not unpickle itself."""

    def __init__(self, cls: type, where: str | None, problem: str):
        super().__init__(f"{cls.__module__}.{cls.__qualname__}", where, problem)
        self.cls, self.where, self.problem = cls, where, problem

    def __reduce__(self):
        return _rebuild_portable, (self.cls.__module__, self.cls.__qualname__, self.where, self.problem)

    def rebuild(self) -> DfsegError:
        try:
            return self.cls(self.where, self.problem)
        except Exception:  # a subclass with another signature: the base class carries the message
            return DfsegError(self.where, self.problem)


def _rebuild_portable(module: str, qualname: str, where: str | None, problem: str) -> _PortableError:
    cls: Any = import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return _PortableError(cls, where, problem)


def _job_name(i: int, job: Any) -> str:
    if isinstance(job, dict) and "index" in job and job["index"] != i:
        return f"job {i} (index {job['index']})"
    return f"job {i}"


def _job_error(i: int, job: Any, exc: BaseException) -> Exception:
    """The exception the caller sees for job ``i`` failing with ``exc`` (raise it ``from exc``)."""
    name = _job_name(i, job)
    if isinstance(exc, _PortableError):
        exc = exc.rebuild()
    if isinstance(exc, DfsegError):
        try:
            return type(exc)(exc.where, f"{exc.problem} [{name}]")
        except Exception:
            return DfsegError(exc.where, f"{exc.problem} [{name}]")
    return RuntimeError(f"{name} failed: {type(exc).__name__}: {exc}")


def _write_probe(folder: str, token: str) -> dict[str, Any]:
    """Run on each worker by :func:`probe_workers`: write ``token`` into a file of ``folder``."""
    host, pid = socket.gethostname(), os.getpid()
    path = Path(folder) / f".dfseg-probe-{token}-{host}-{pid}"
    path.write_text(token)
    return {"path": str(path), "host": host, "pid": pid, "versions": software_versions()}
