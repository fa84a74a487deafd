"""The ``shiftlab`` command line: thin; it parses, calls the library and renders."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shiftlab.errors import ShiftlabError
from shiftlab.registry import UnknownNameError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="shiftlab: domain adaptation, test-time adaptation, few-shot, self-supervised transfer "
    "and physics-informed networks, from recipes, with seeds and confidence intervals.",
)
data_app = typer.Typer(no_args_is_help=True, help="Check and prepare data files.")
app.add_typer(data_app, name="data")
pinn_app = typer.Typer(no_args_is_help=True, help="Query and evaluate saved physics-informed ODE solvers.")
app.add_typer(pinn_app, name="pinn")

out = Console()
err = Console(stderr=True, soft_wrap=True)

REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes"

DataDirOpt = typer.Option(None, "--data-dir", help="Data root (default: $SHIFTLAB_DATA, else ~/.cache/shiftlab).")


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0-4"`` -> [0..4]; ``"0,2,5"`` or ``"0 2 5"`` -> [0, 2, 5]."""
    if text is None:
        return None
    seeds: list[int] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ShiftlabError(f"--seeds {text!r}: range {part} is empty.")
            seeds.extend(range(a, b + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise ShiftlabError(f"--seeds {text!r}: expected numbers or ranges like 0-4.")
    return seeds


def _setup_logging(quiet: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
        force=True,
    )


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set train.lr=0.01 (repeatable)."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seeds: '0 1 2', '0,1,2' or '0-4' (default: the recipe's)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run folders go."),
    data_dir: Path | None = DataDirOpt,
    download: bool = typer.Option(False, "--download", help="Allow downloading missing datasets."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or mps (default: the recipe's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue unfinished runs from their checkpoint; skip finished ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Run again; earlier folders are kept as backups."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, warnings only."),
    log: list[str] = typer.Option([], "--log", help="Extra logger: tensorboard or mlflow (repeatable)."),
    channels_last: str = typer.Option(
        "auto", "--channels-last", help="auto (on for CPU: ~1.3x faster convolutions), on or off."
    ),
    nproc: int = typer.Option(1, "--nproc", help="Train one run on N processes (data-parallel; gloo on CPU, "
                              "one GPU each on CUDA). torchrun works too."),
) -> None:
    """Run a recipe for each seed; writes runs/<recipe>/<variant>/seed-<k>/."""
    from dataclasses import replace
    from functools import partial

    from shiftlab.config import parse_override
    from shiftlab.experiment import distributed
    from shiftlab.experiment.dispatch import read_raw, recipe_kind, run_recipe
    from shiftlab.experiment.run import RunOptions

    _setup_logging(quiet)
    ov = dict(parse_override(o) for o in set_)
    opts = RunOptions(
        runs_dir=runs_dir, data_dir=str(data_dir) if data_dir else None, download=download, device=device,
        resume=resume, overwrite=overwrite, progress=not quiet, log=tuple(log), channels_last=channels_last,
    )
    ctx = distributed.from_env(device)  # under torchrun
    if ctx is not None:
        try:
            results = run_recipe(recipe, ov, replace(opts, progress=opts.progress and ctx.is_main),
                                 parse_seeds(seeds), ctx)
        except BaseException:
            ctx.close(wait=False)
            raise
        ctx.close()
        if not ctx.is_main:
            return
    elif nproc > 1:
        if recipe_kind(read_raw(recipe)) != "train":
            raise ShiftlabError("--nproc trains kind: train recipes; spread the seeds of other kinds with "
                                "`shiftlab sweep` instead.")
        distributed.spawn(nproc, partial(_distributed_run, recipe, ov, opts, parse_seeds(seeds)), device=device)
        results = run_recipe(recipe, ov, replace(opts, resume=True, overwrite=False), parse_seeds(seeds))
    else:
        results = run_recipe(recipe, ov, opts, parse_seeds(seeds))
    if not results:
        return
    name = results[0].get("recipe", recipe.stem)
    table = Table(title=f"{name} ({len(results)} seed(s))")
    keys = sorted({k for r in results for k in r["metrics"] if not k.startswith("per_shift/")})[:8]
    table.add_column("seed")
    for k in keys:
        table.add_column(k)
    for r in results:
        table.add_row(str(r["seed"]), *(_fmt_metric(k, r["metrics"].get(k)) for k in keys))
    out.print(table)
    out.print(f"Runs are under {runs_dir / name}; `shiftlab report {runs_dir / name}` aggregates them.")


def _distributed_run(recipe: Path, ov: dict, opts: object, seeds: list[int] | None, ctx: object) -> None:
    """One rank of ``shiftlab run --nproc N`` (module level: spawned processes import it)."""
    from dataclasses import replace

    from shiftlab.experiment.dispatch import run_recipe

    _setup_logging(True)
    run_recipe(recipe, ov, replace(opts, progress=False), seeds, ctx)  # type: ignore[type-var, arg-type]


def _fmt_metric(key: str, value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{100 * value:.2f}" if key.removesuffix("_tta").endswith(("acc", "/err")) else f"{value:.4g}"


@app.command()
def sweep(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    grid: list[str] = typer.Option([], "--grid", help="KEY=V1,V2,... (repeatable; the product is run)."),
    set_: list[str] = typer.Option([], "--set", help="Fixed overrides for every run."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seeds: '0-4', '0,1,2' (default: the recipe's)."),
    launcher: str = typer.Option("local", "--launcher", help="local (process pool), ray or slurm (submitit)."),
    max_parallel: int | None = typer.Option(None, "--max-parallel", "--workers",
                                            help="Runs at once (local default: cores / --threads)."),
    threads: int = typer.Option(1, "--threads", help="Torch threads per run (0: torch's default)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    data_dir: Path | None = DataDirOpt,
    device: str | None = typer.Option(None, "--device"),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster (auto, host:6379); default: start a local one."),
    num_cpus: float = typer.Option(1, "--num-cpus", help="Ray: CPUs per run."),
    num_gpus: float = typer.Option(0, "--num-gpus", help="Ray: GPUs per run (fractions allowed)."),
    slurm_cluster: str | None = typer.Option(None, "--slurm-cluster", help="slurm, local or debug (default: slurm if sbatch exists)."),
    slurm_partition: str | None = typer.Option(None, "--slurm-partition"),
    slurm_time: int = typer.Option(60, "--slurm-time", help="SLURM time limit per run, minutes."),
    slurm_gpus: int = typer.Option(0, "--slurm-gpus", help="SLURM GPUs per run."),
    slurm_cpus: int = typer.Option(1, "--slurm-cpus", help="SLURM CPUs per run."),
    slurm_array: bool = typer.Option(True, "--slurm-array/--slurm-one-job-per-run", help="One job array, or one job per run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs (and which are finished); run nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Run the product of --grid values x seeds; finished runs (metrics.json) are skipped and
    unfinished ones resumed, so launching a crashed sweep again completes exactly the missing runs."""
    from shiftlab.experiment import launch as la

    _setup_logging(quiet)
    jobs = la.expand_grid(recipe, grid, set_, parse_seeds(seeds))
    spec = la.RunSpec(runs_dir=str(runs_dir.resolve()), data_dir=str(data_dir.resolve()) if data_dir else None,
                      device=device, threads=threads)
    if dry_run:
        for job in jobs:
            state = "finished" if la.finished_result(job, runs_dir) else "to run"
            out.print(f"{state:9s} {job.label()}  ->  {la.job_dir(job, runs_dir)}", markup=False, highlight=False)
        return
    options: dict[str, object] = {
        "local": {"max_parallel": max_parallel},
        "ray": {"address": ray_address, "num_cpus": num_cpus, "num_gpus": num_gpus, "max_parallel": max_parallel},
        "slurm": {"folder": runs_dir / ".submitit", "cluster": slurm_cluster, "partition": slurm_partition,
                  "time_min": slurm_time, "gpus": slurm_gpus, "cpus": slurm_cpus, "array": slurm_array,
                  "max_parallel": max_parallel},
    }.get(launcher, {})
    result = la.sweep(jobs, la.make_launcher(launcher, **options), spec)
    table = Table(title=f"sweep of {recipe.name}: {len(result.ran)} ran, {len(result.skipped)} already "
                        f"finished, {len(result.failed)} failed ({result.seconds:.1f} s, {launcher})")
    for col in ("run", "status", "metric"):
        table.add_column(col, overflow="fold")
    for r in result.results:
        metrics = (r.metrics or {}).get("metrics", {})
        key = next((k for k in metrics if k.endswith("/acc") and not k.startswith(("train/", "source_val/"))), None)
        status = "failed" if r.error else "skipped" if r.skipped else "ran"
        table.add_row(escape(r.job.label()), status, f"{key}={_fmt_metric(key, metrics[key])}" if key else escape(r.error or "-"))
    out.print(table)
    if result.failed:
        err.print(f"[red]{len(result.failed)} run(s) failed[/red]; fix the cause and launch the same sweep "
                  "again: finished runs are skipped, so only the missing ones run.")
        raise typer.Exit(1)
    out.print(f"`shiftlab report {runs_dir}` aggregates the runs.")


@app.command("list")
def list_(
    kind: str = typer.Argument(..., help="datasets, methods, backbones, shifts, selections or recipes."),
    as_json: bool = typer.Option(False, "--json", help="JSON: a list of objects with name and summary."),
) -> None:
    """List what is registered."""
    rows = list_entries(kind)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title=kind)
    cols = [c for c in ("name", "family", "summary", "paper") if any(c in r for r in rows)]
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(escape(str(r.get(c, ""))) for c in cols))
    out.print(table)


def list_entries(kind: str) -> list[dict[str, str]]:
    """Rows for ``shiftlab list KIND``: each has at least ``name`` and ``summary``."""
    kind = kind.rstrip("s")
    if kind == "dataset":
        from shiftlab.data.sources import DATASETS as reg
    elif kind == "method":
        from shiftlab.methods import METHODS as reg
    elif kind == "backbone":
        from shiftlab.backbones import BACKBONES as reg
    elif kind == "shift":
        from shiftlab.data.shifts import SHIFTS as reg
    elif kind == "selection":
        from shiftlab.methods.transfer.selection import SELECTIONS as reg
    elif kind == "recipe":
        return list_recipes()
    else:
        raise ShiftlabError(
            f"Unknown kind {kind!r}: use datasets, methods, backbones, shifts, selections or recipes."
        )
    return [e.as_dict() for e in reg.entries()]


def list_recipes() -> list[dict[str, str]]:
    import yaml

    rows = []
    if REPO_RECIPES.is_dir():
        for p in sorted(REPO_RECIPES.rglob("*.yaml")):
            try:
                desc = (yaml.safe_load(p.read_text()) or {}).get("description", "")
            except yaml.YAMLError:
                desc = "(invalid YAML)"
            rows.append({"name": str(p.relative_to(REPO_RECIPES.parent)), "summary": str(desc).strip().split("\n")[0]})
    return rows


@app.command("eval")
def eval_(
    run_dirs: list[Path] = typer.Argument(..., help="Finished few-shot run folders (runs/<recipe>/<variant>/seed-<k>)."),
    set_: list[str] = typer.Option([], "--set", help="An eval.* override: --set eval.tta_shift=1, "
                                   "--set eval.seed=7 (other test episodes) (repeatable)."),
    data_dir: Path | None = DataDirOpt,
    device: str = typer.Option("cpu", "--device", help="auto, cpu, cuda or mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings only."),
    ensemble: Path | None = typer.Option(None, "--ensemble", help="Evaluate the runs as one ensemble (mean "
                                         "log-probability of the members) and write the result to this JSON file."),
) -> None:
    """Evaluate finished few-shot runs again with other eval.* settings, without training;
    writes <run>/eval-<overrides>.json beside metrics.json (which stays as it is), or with
    --ensemble FILE evaluates the runs together as an ensemble."""
    from shiftlab.config import parse_override
    from shiftlab.experiment.fewshot_run import evaluate_ensemble, evaluate_run

    _setup_logging(quiet)
    ov = dict(parse_override(o) for o in set_)
    dd = str(data_dir) if data_dir else None
    if ensemble is not None:
        results = [evaluate_ensemble(run_dirs, ensemble, ov, dd, device)]
        names = [f"ensemble of {len(run_dirs)}"]
    else:
        results = [evaluate_run(d, ov, dd, device) for d in run_dirs]
        names = [str(d) for d in run_dirs]
    keys = sorted({k for r in results for k in r["metrics"]})[:8]
    table = Table(title=f"re-evaluated ({', '.join(f'{k}={v}' for k, v in ov.items()) or 'same settings'})")
    table.add_column("run")
    for k in keys:
        table.add_column(k)
    for name, r in zip(names, results, strict=True):
        table.add_row(name, *(_fmt_metric(k, r["metrics"].get(k)) for k in keys))
    out.print(table)
    if ensemble is not None:
        out.print(f"Written: {ensemble}")


@app.command()
def report(
    path: Path = typer.Argument(..., help="A runs folder, a folder of benchmark results (benchmarks/results) "
                                "or one benchmarks/results/*.json file."),
    out_dir: Path | None = typer.Option(None, "--out", help="Where report.md/report.png (REPORT.md for a "
                                        "benchmark folder) go (default: PATH)."),
) -> None:
    """Aggregate seeds: mean, std and 95% CI (Student t) as Markdown + PNG; or render a folder of
    benchmark results (JSON files, no run folders) as one page, PATH/REPORT.md."""
    from shiftlab.experiment import report as rep
    from shiftlab.experiment.bench_report import is_benchmark_folder, write_bench_report

    if path.is_file() and path.suffix == ".json":
        out.print(rep.render_benchmark(path), markup=False, highlight=False)
        return
    if is_benchmark_folder(path):
        page = write_bench_report(path, out_dir)
        out.print(page.markdown, markup=False, highlight=False)
        for w in page.warnings:
            err.print(f"Warning: {w}", markup=False, highlight=False)
        out.print(f"Written: {page.path}")
        return
    if not path.is_dir():
        raise ShiftlabError(f"{path} is neither a runs folder nor a benchmark JSON file.")
    result = rep.report(path, out_dir)
    out.print(result.markdown, markup=False, highlight=False)
    out.print(f"Written: {', '.join(str(p) for p in result.files)}")


SolverArg = typer.Argument(..., help="A saved solver: <run folder>/solver.json (or its stem), from `shiftlab run recipes/pinn/...`.")
IcOpt = typer.Option([], "--ic", help="Initial values: --ic I=0.25,R=0.1 (eval also takes ranges: I=0.1:0.3).")
ParamOpt = typer.Option([], "--param", help="Parameters: --param beta=0.9 (eval also takes ranges: beta=0.5:0.9).")


@pinn_app.command("solve")
def pinn_solve(
    solver: Path = SolverArg,
    ic: list[str] = IcOpt,
    param: list[str] = ParamOpt,
    t: str | None = typer.Option(None, "--t", help="Times: '0,5,10' or 'start:stop:count' (default: 11 points over the span)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Answer one (initial state, parameters) query with a trained solver, no retraining."""
    import numpy as np

    from shiftlab.pinn.run import parse_assignments, solve_checkpoint

    times = None
    if t:
        parts = t.split(":")
        try:
            if len(parts) == 3:
                times = np.linspace(float(parts[0]), float(parts[1]), int(parts[2])).tolist()
            else:
                times = [float(x) for x in t.split(",") if x.strip()]
        except ValueError:
            raise ShiftlabError(f"--t {t!r}: expected '0,5,10' or 'start:stop:count'.") from None
    res = solve_checkpoint(solver, parse_assignments(ic, "--ic"), parse_assignments(param, "--param"), times)
    _render(res, as_json, f"{solver}: z0={res['z0']} theta={res['theta']}", ["t", *res["state"]],
            [[f"{ti:g}", *(f"{v:.6f}" for v in zi)] for ti, zi in zip(res["t"], res["z"], strict=True)])
    if not res["inside_box"]:
        err.print(f"Warning: the query lies outside the solver's training box ({res['box']}); "
                  "this answer is an extrapolation. Check it with `shiftlab pinn eval` or fine-tune.")


def _render(res: dict, as_json: bool, title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print ``res`` as JSON, or ``rows`` as a table (first column left-aligned)."""
    if as_json:
        out.print_json(json.dumps(res))
        return
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 and col == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)


@pinn_app.command("eval")
def pinn_eval(
    solver: Path = SolverArg,
    ic: list[str] = IcOpt,
    param: list[str] = ParamOpt,
    t_span: str | None = typer.Option(None, "--t-span", help="Another time span: '0,30'."),
    grid: int = typer.Option(5, "--grid", min=1, help="Problems per bundle dimension."),
    png: Path | None = typer.Option(None, "--png", help="Write a trajectory plot (PINN vs solve_ivp) here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Compare a trained solver with solve_ivp on its box, or on changed values/ranges."""
    from shiftlab.pinn.run import evaluate_checkpoint, parse_assignments

    span = None
    if t_span:
        try:
            span = [float(x) for x in t_span.split(",")]
            assert len(span) == 2
        except (ValueError, AssertionError):
            raise ShiftlabError(f"--t-span {t_span!r}: expected 't0,t1', e.g. 0,30.") from None
    try:
        res = evaluate_checkpoint(solver, parse_assignments(ic, "--ic") or None,
                                  parse_assignments(param, "--param") or None, span, grid=grid, png=png)
    except ValueError as exc:
        raise ShiftlabError(f"pinn eval: {exc}") from None
    _render(res, as_json, f"{solver} vs solve_ivp on {res['box']}", ["metric", "value"],
            [[k, f"{v:.3e}" if isinstance(v, float) else str(v)] for k, v in res.items() if k != "box"])
    if png and not as_json:
        out.print(f"Written: {png}")


@data_app.command("verify")
def data_verify(data_dir: Path | None = DataDirOpt) -> None:
    """Check every known data file under the data root against its checksum."""
    from shiftlab.data.files import verify_all
    from shiftlab.data.sources import resolve_data_dir

    root = resolve_data_dir(data_dir)
    statuses = verify_all(root)
    table = Table(title=f"data files under {root}")
    for c in ("file", "status"):
        table.add_column(c)
    bad = 0
    for s in statuses:
        table.add_row(str(s.path), s.status)
        bad += s.status not in ("ok", "absent")
    out.print(table)
    if bad:
        raise ShiftlabError(f"{bad} file(s) failed verification under {root}; delete them and fetch them again (--download).")


@data_app.command("prepare")
def data_prepare(
    name: str = typer.Argument(..., help="mnist_m: generate the 60,000-image MNIST-M training set."),
    data_dir: Path | None = DataDirOpt,
    seed: int = typer.Option(0, "--seed"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where to write (default: the data root)."),
) -> None:
    """Generate derived data (MNIST-M train from MNIST + BSDS500)."""
    from shiftlab.data.sources import resolve_data_dir

    if name != "mnist_m":
        raise ShiftlabError(f"Nothing to prepare for {name!r}; `shiftlab data prepare mnist_m` is available.")
    from shiftlab.data.mnist_m import prepare_mnist_m

    root = resolve_data_dir(data_dir)
    path = prepare_mnist_m(root, seed=seed, cache_dir=cache_dir)
    out.print(f"MNIST-M training set written to {path}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo_out"), "--out", help="Where the demo writes its runs, table and PNGs."),
    quick: bool = typer.Option(False, "--quick", help="A shorter demo (for tests)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train on the embedded digits, evaluate in-domain, on digits_m and under shifts."""
    from shiftlab.demo import run_demo

    _setup_logging(quiet)
    result = run_demo(out_dir, quick=quick, progress=not quiet)
    out.print(result.markdown, markup=False, highlight=False)
    out.print(f"Figures: {', '.join(str(p) for p in result.figures)} ({result.seconds:.1f} s)")


def main() -> None:
    """Console-script entry point: user errors become one paragraph, not a traceback."""
    argv = _join_seeds(sys.argv[1:])
    try:
        app(args=argv, prog_name="shiftlab")
    except ShiftlabError as exc:
        from shiftlab.experiment.run import RunInterrupted

        _error(exc)
        raise SystemExit(130 if isinstance(exc, RunInterrupted) else 2) from None
    except UnknownNameError as exc:
        _error(exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]")
        raise SystemExit(130) from None


def _error(exc: BaseException) -> None:
    from rich.text import Text

    err.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False)


def _join_seeds(argv: list[str]) -> list[str]:
    """Allow ``--seeds 0 1 2`` (several words) by joining them into one value."""
    outv: list[str] = []
    i = 0
    while i < len(argv):
        outv.append(argv[i])
        if argv[i] == "--seeds":
            vals = []
            i += 1
            while i < len(argv) and re.fullmatch(r"[\d,\-]+", argv[i]):
                vals.append(argv[i])
                i += 1
            outv.append(",".join(vals))
            continue
        i += 1
    return outv


if __name__ == "__main__":
    main()
