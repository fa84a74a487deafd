"""Sweeps: the product of grid values × seeds, dispatched run by run to a launcher.

The unit of scale-out is the run: each :class:`Job` is one ``(recipe, overrides, seed)``
and writes the same ``runs/<recipe>/<variant>/seed-<k>/`` folder that ``shiftlab run``
writes, so ``shiftlab report`` does not care where it ran. A sweep

1. expands the grid (:func:`expand_grid`; every combination is validated before anything
   runs, so a typo in the last value fails in the first second, not after hours);
2. skips the jobs whose ``metrics.json`` already exists (:func:`split_finished`), so a
   sweep that crashed, or whose worker was killed, is simply launched again and completes
   exactly the missing runs; unfinished ones continue from their checkpoint (``--resume``
   semantics);
3. hands the rest to a launcher, which returns one :class:`JobResult` per job. A run that
   fails does not stop the others; the sweep reports it at the end.

Launchers (``--launcher``):

* :class:`LocalLauncher` (``local``, default): a process pool sized to the cores
  (``max_parallel``), each worker started fresh (``spawn``) with ``threads`` torch threads.
* :class:`RayLauncher` (``ray``): one Ray task per run with ``num_cpus``/``num_gpus``
  resources; connects to ``address`` (``auto``: a running cluster) or starts a local
  instance that it shuts down afterwards.
* :class:`SlurmLauncher` (``slurm``): one SLURM job per run, or one job array, through
  ``submitit`` (partition, time limit, GPUs, CPUs); ``cluster="local"`` runs the same jobs
  as local processes (how it is tested).

Two processes that run the same job never write one folder at once: each run takes
its folder's lock (:mod:`shiftlab.experiment.lock`); the second gets an error naming the
owner, recorded as that job's failure.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, ClassVar

from shiftlab.config import apply_overrides, load_recipe, parse_override
from shiftlab.errors import RecipeError, ShiftlabError
from shiftlab.experiment.dispatch import read_raw, recipe_kind

log = logging.getLogger(__name__)

__all__ = [
    "LAUNCHERS", "Job", "JobResult", "LocalLauncher", "RayLauncher", "RunSpec", "SlurmLauncher",
    "SweepResult", "expand_grid", "job_dir", "run_job", "split_finished", "sweep",
]


@dataclass(frozen=True)
class Job:
    """One run: a recipe file, its overrides (sorted ``(key, value)`` pairs) and a seed."""

    recipe: str
    overrides: tuple[tuple[str, Any], ...]
    seed: int
    name: str = ""  # the recipe's ``name`` after overrides (names the run folder)

    def label(self) -> str:
        from shiftlab.config import variant_label

        return f"{self.name} [{variant_label(dict(self.overrides))}] seed {self.seed}"


@dataclass(frozen=True)
class RunSpec:
    """How every run of a sweep executes (machine-specific, not part of the recipe).

    Attributes:
        runs_dir: root of the run folders (absolute, so remote workers agree on it).
        data_dir: data root (``None``: ``$SHIFTLAB_DATA`` or ``~/.cache/shiftlab``).
        device: ``auto``, ``cpu``, ``cuda``, ``mps`` (``None``: the recipe's).
        threads: torch threads per run (``0``: leave torch's default). The same value gives
            the same numbers under every launcher on CPU.
    """

    runs_dir: str
    data_dir: str | None = None
    device: str | None = None
    threads: int = 1


@dataclass(frozen=True)
class JobResult:
    """What became of one job: its ``metrics.json`` contents, or the error that stopped it."""

    job: Job
    metrics: dict[str, Any] | None = None
    error: str | None = None
    skipped: bool = False  # finished before this sweep started


@dataclass
class SweepResult:
    """Every job of a sweep, in grid order."""

    results: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def ran(self) -> list[JobResult]:
        return [r for r in self.results if r.error is None and not r.skipped]

    @property
    def skipped(self) -> list[JobResult]:
        return [r for r in self.results if r.skipped]


# ---------------------------------------------------------------------------- the grid
def expand_grid(
    recipe: str | os.PathLike[str], grid: Sequence[str], fixed: Sequence[str], seeds: Sequence[int] | None
) -> list[Job]:
    """``--grid method=a,b --grid train.lr=0.1,0.01`` × seeds -> jobs (all validated up front).

    Raises:
        RecipeError: a grid value or fixed override does not validate, or the sweep is empty.
    """
    axes: list[list[tuple[str, Any]]] = []
    for g in grid:
        if "=" not in g:
            raise RecipeError(f"--grid {g!r} must be KEY=V1,V2,... (e.g. --grid method=dann,cdan).")
        key, values = g.split("=", 1)
        axes.append([parse_override(f"{key}={v}") for v in values.split(",") if v != ""])
    fixed_ov = [parse_override(f) for f in fixed]
    raw = read_raw(recipe)
    jobs: list[Job] = []
    for combo in itertools.product(*axes) if axes else [()]:
        ov = dict(fixed_ov + list(combo))
        if recipe_kind(raw) == "train":
            rec, _ = load_recipe(recipe, ov)  # fail before anything runs
            _check_names(rec)
            default_seeds, name = rec.seeds, rec.name
        else:
            merged = apply_overrides(raw, ov)
            default_seeds, name = merged.get("seeds", [0]), str(merged.get("name", Path(recipe).stem))
        for seed in seeds if seeds is not None else default_seeds:
            jobs.append(Job(str(Path(recipe).resolve()), tuple(sorted(ov.items())), int(seed), name))
    if not jobs:
        raise RecipeError("The sweep is empty: give --grid values and/or --seeds.")
    return jobs


def _check_names(rec: Any) -> None:
    """The method (with its hyper-parameters) and backbone of a train recipe exist."""
    from shiftlab.backbones import BACKBONES
    from shiftlab.methods import make_hparams
    from shiftlab.registry import UnknownNameError

    try:
        make_hparams(rec.method.name, rec.effective_hparams())
        BACKBONES.get(rec.backbone.name)
    except (UnknownNameError, RecipeError) as exc:
        raise RecipeError(f"{rec.name}: {exc.args[0]}") from None


def job_dir(job: Job, runs_dir: str | os.PathLike[str]) -> Path:
    """The run folder ``job`` writes (the one ``shiftlab run`` would write)."""
    from shiftlab.experiment.run import run_dir_for

    return run_dir_for(job.name, dict(job.overrides), job.seed, runs_dir)


def finished_result(job: Job, runs_dir: str | os.PathLike[str]) -> JobResult | None:
    """The job's result when its ``metrics.json`` exists (the run finished), else ``None``."""
    from shiftlab.experiment.run import read_json

    path = job_dir(job, runs_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return JobResult(job, read_json(path), skipped=True)
    except (OSError, ValueError):  # unreadable: run it again (resume keeps what it can)
        log.warning("%s is unreadable; the run is scheduled again", path)
        return None


def split_finished(jobs: Sequence[Job], runs_dir: str | os.PathLike[str]) -> tuple[list[Job], list[JobResult]]:
    """``(jobs still to run, finished ones with their metrics)``: finished = ``metrics.json`` exists."""
    found = [finished_result(j, runs_dir) for j in jobs]
    return [j for j, r in zip(jobs, found, strict=True) if r is None], [r for r in found if r is not None]


# ---------------------------------------------------------------------------- one run
def run_job(job: Job, spec: RunSpec) -> dict[str, Any]:
    """Run one job where it lands (a pool worker, a Ray task, a SLURM job); returns its
    ``metrics.json``. Finished runs are kept, unfinished ones resumed."""
    import torch

    from shiftlab.experiment.dispatch import run_recipe
    from shiftlab.experiment.run import RunOptions

    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    opts = RunOptions(runs_dir=Path(spec.runs_dir), data_dir=spec.data_dir, device=spec.device,
                      resume=True, progress=False)
    return run_recipe(job.recipe, dict(job.overrides), opts, [job.seed])[0]


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ShiftlabError) else f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- launchers
class LocalLauncher:
    """A process pool on this machine.

    Args:
        max_parallel: runs at once (``None``: the number of cores divided by ``threads``);
            ``1`` runs them one after another in this process.
    """

    name: ClassVar[str] = "local"

    def __init__(self, max_parallel: int | None = None) -> None:
        self.max_parallel = max_parallel

    def workers(self, spec: RunSpec, n_jobs: int) -> int:
        cores = os.cpu_count() or 1
        auto = max(1, cores // max(spec.threads, 1))
        return max(1, min(n_jobs, self.max_parallel or auto))

    def map(self, jobs: Sequence[Job], spec: RunSpec) -> list[JobResult]:
        workers = self.workers(spec, len(jobs))
        if workers == 1:
            out = []
            for job in jobs:
                try:
                    out.append(JobResult(job, run_job(job, spec)))
                except ShiftlabError as exc:
                    out.append(JobResult(job, error=_describe(exc)))
            return out
        results: list[JobResult] = []
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_job, j, spec) for j in jobs]
            for job, fut in zip(jobs, futures, strict=True):
                try:
                    results.append(JobResult(job, fut.result()))
                except BrokenProcessPool:
                    results.append(JobResult(job, error=(
                        "a sweep worker process died (killed, or out of memory) before this run "
                        "finished; launch the same sweep again to complete the missing runs")))
                except Exception as exc:  # a run's own error: keep going with the others
                    results.append(JobResult(job, error=_describe(exc)))
        return results


class RayLauncher:
    """One Ray task per run.

    Args:
        address: a cluster to join (``auto``: the one this machine belongs to;
            ``ray://host:10001`` or ``host:6379``); ``None`` starts a local instance for the
            sweep (``num_cpus`` = this machine's cores) and shuts it down afterwards. An
            already initialised Ray (``ray.init`` called by the user) is used as it is.
        num_cpus, num_gpus: resources each run asks for (fractions allowed).
        max_parallel: runs in flight at once (``None``: as many as the cluster schedules).
        max_retries: how often Ray reruns a task whose worker died (the rerun resumes from
            the run's checkpoint).
    """

    name: ClassVar[str] = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 max_parallel: int | None = None, max_retries: int = 1, temp_dir: str | None = None) -> None:
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.max_parallel, self.max_retries, self.temp_dir = max_parallel, max_retries, temp_dir

    def map(self, jobs: Sequence[Job], spec: RunSpec) -> list[JobResult]:
        try:
            import ray
        except ImportError:
            raise ShiftlabError("--launcher ray needs Ray: pip install 'shiftlab[ray]'.") from None
        started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                kw.update(num_cpus=os.cpu_count() or 1)
                if self.temp_dir:
                    kw["_temp_dir"] = self.temp_dir
            try:
                ray.init(address=self.address, **kw)
            except ConnectionError as exc:
                raise ShiftlabError(f"Could not reach the Ray cluster at {self.address!r}: {exc}. Start it "
                                    "(`ray start --head`) or leave --ray-address out for a local one.") from None
            started = True
        try:
            task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                              max_retries=self.max_retries)(run_job)
            limit = self.max_parallel or len(jobs)
            refs: dict[Any, int] = {}
            out: list[JobResult | None] = [None] * len(jobs)
            queue = list(enumerate(jobs))
            while queue or refs:
                while queue and len(refs) < limit:
                    i, job = queue.pop(0)
                    refs[task.remote(job, spec)] = i
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    i = refs.pop(ref)
                    try:
                        out[i] = JobResult(jobs[i], ray.get(ref))
                    except Exception as exc:  # RayTaskError wraps the run's own error
                        cause = getattr(exc, "cause", None) or exc
                        out[i] = JobResult(jobs[i], error=_describe(cause))
            return [r for r in out if r is not None]
        finally:
            if started:
                ray.shutdown()


class SlurmLauncher:
    """SLURM jobs through ``submitit``.

    Args:
        folder: where submitit keeps its job scripts and logs.
        cluster: ``None`` (SLURM when ``sbatch`` exists, else local processes), ``slurm``,
            ``local`` (processes on this machine) or ``debug`` (in this process).
        partition, time_min, gpus, cpus: SLURM resources per run (``--partition``,
            ``--time``, ``--gpus-per-node``, ``--cpus-per-task``).
        array: one job array for the sweep (``True``) or one job per run.
        max_parallel: array tasks running at once (``%N`` of the array).
    """

    name: ClassVar[str] = "slurm"

    def __init__(self, folder: str | os.PathLike[str], cluster: str | None = None, partition: str | None = None,
                 time_min: int = 60, gpus: int = 0, cpus: int = 1, array: bool = True,
                 max_parallel: int | None = None) -> None:
        self.folder, self.cluster, self.partition = Path(folder), cluster, partition
        self.time_min, self.gpus, self.cpus, self.array, self.max_parallel = time_min, gpus, cpus, array, max_parallel

    def map(self, jobs: Sequence[Job], spec: RunSpec) -> list[JobResult]:
        try:
            import submitit
        except ImportError:
            raise ShiftlabError("--launcher slurm needs submitit: pip install 'shiftlab[slurm]'.") from None
        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.time_min, "gpus_per_node": self.gpus,
                                  "cpus_per_task": self.cpus, "name": "shiftlab"}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.max_parallel:
            params["slurm_array_parallelism"] = self.max_parallel
        ex.update_parameters(**params)
        if self.array:
            handles = ex.map_array(run_job, list(jobs), [spec] * len(jobs))
        else:
            handles = [ex.submit(run_job, j, spec) for j in jobs]
        log.info("submitted %d job(s) to %s; logs in %s", len(handles), ex.cluster, self.folder)
        out = []
        for job, h in zip(jobs, handles, strict=True):
            try:
                out.append(JobResult(job, h.result()))
            except Exception as exc:  # submitit.core.utils.FailedJobError carries the remote traceback
                out.append(JobResult(job, error=f"{_describe(exc)} (SLURM job {h.job_id}; logs in {self.folder})"))
        return out


LAUNCHERS = {c.name: c for c in (LocalLauncher, RayLauncher, SlurmLauncher)}


def sweep(jobs: Sequence[Job], launcher: LocalLauncher | RayLauncher | SlurmLauncher, spec: RunSpec) -> SweepResult:
    """Run the jobs that are not finished yet with ``launcher``; every job's outcome, in order."""
    t0 = time.perf_counter()
    results: list[JobResult | None] = [finished_result(j, spec.runs_dir) for j in jobs]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(jobs):
        log.info("%d of %d run(s) already finished; skipping them", len(jobs) - len(todo), len(jobs))
    if todo:
        for i, r in zip(todo, launcher.map([jobs[i] for i in todo], spec), strict=True):
            results[i] = r
    return SweepResult([r for r in results if r is not None], time.perf_counter() - t0)


def make_launcher(name: str, **options: Any) -> LocalLauncher | RayLauncher | SlurmLauncher:
    """``make_launcher("ray", address="auto")``: the launcher class ``name`` with its options."""
    if name not in LAUNCHERS:
        raise ShiftlabError(f"Unknown launcher {name!r}; available: {', '.join(LAUNCHERS)}.")
    return LAUNCHERS[name](**options)
