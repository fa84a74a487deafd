"""Run every benchmark and peer comparison of ``benchmarks/``, one after the other, into one folder.

Profiles:

* ``full``: the arguments that produced the acceptance results in ``benchmarks/results/``
  (the scripts' defaults, or the command their docstring / README / the stored JSON's
  ``command`` field records). It writes to ``benchmarks/results/`` (the scripts' default
  ``--out``) because it reproduces those files; the run folders are the scripts' own
  (``benchmarks/runs/``, ``runs/bench-pinn``), so finished seeds are reused as each script
  documents. Hours to days on 2 CPU cores.
* ``quick``: reduced epochs, episodes, images and seeds so that the whole profile takes
  under 30 minutes on 2 CPU cores. Every output goes to ``--out`` (default
  ``benchmarks/results/quick/``), never over the acceptance results (the plan is checked:
  a quick ``--out`` argument outside that folder is an error). Run folders go to
  ``benchmarks/runs/quick/<entry>/`` and start empty each time, so the quick profile measures
  the code as it is. **Its numbers are not acceptance numbers**; the runner prints that and
  records it in ``run_all.json``.

Every entry of :data:`PLAN` (one table: script, arguments per profile, expected seconds of
the quick entry, timeout, data files and peer environment it needs) runs as a subprocess
``sys.executable benchmarks/<script> ARGS`` with the repository as working directory,
sequentially (never in parallel: the scripts measure time ratios, and the machine has 2
cores), with its own timeout (the whole process group is stopped), its stdout and stderr
tee'd to ``<out>/logs/<entry>.log``. A failing entry is recorded (exit code, last log lines)
and the next one runs. An entry is *skipped*, with the reason, when a data file it reads is
absent from ``--data-dir``, when its peer library's virtual environment
(``benchmarks/.venvs/<peer>``) is absent and peers are not set up (the scripts create those
environments with pip on first use, which needs PyPI and minutes; ``--setup-peers`` lets
them, the default for ``full``; ``quick`` skips them by default), or when the script itself
stops with shiftlab's ``DataError`` (missing or corrupt data).

A benchmark script in ``benchmarks/`` that has no entry in :data:`PLAN` (e.g. a new
``bench_sweep.py``) is run too: ``full`` with its defaults; ``quick`` with ``--out
<out>/<name>.json`` (and ``--quick`` when its ``--help`` offers it), or skipped when it has
no ``--out`` option. Add an entry to :data:`PLAN` to give it proper arguments.

``<out>/run_all.json`` (rewritten after every entry) records the profile, whether its
numbers are acceptance numbers, the date, machine and versions (as other benchmark JSONs),
and per entry: status (``ok``, ``failed``, ``timeout``, ``skipped``, ``interrupted``),
exit code, wall seconds, expected seconds, the command, the log and the output files it
wrote. It describes the last invocation only (with ``--only``, those entries). ``shiftlab
report <out>`` renders the folder as one page. (``benchmarks/results/quick/`` is in
``.gitignore``: quick numbers are not acceptance numbers; the README records the measured
quick run's timings.)

Usage::

    python benchmarks/run_all.py --profile quick --dry-run      # the plan; runs and writes nothing
    python benchmarks/run_all.py --profile quick                # ~16 min on 2 cores
    python benchmarks/run_all.py --profile quick --setup-peers  # measured 21 min 18 s with the peers
    python benchmarks/run_all.py --profile quick --only ssl,uda --threads 1
    python benchmarks/run_all.py --profile full --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
QUICK_OUT = RESULTS / "quick"
QUICK_RUNS = BENCH / "runs" / "quick"
VENVS = BENCH / ".venvs"
RUNS_MARKER = ".run_all-quick"
DEFAULT_DATA = Path(os.environ.get("SHIFTLAB_DATA", str(REPO.parent / "shared" / "data")))
QUICK_WARNING = (
    "QUICK PROFILE: reduced epochs, episodes, images and seeds. These numbers only show that every "
    "benchmark runs end to end; they are NOT acceptance numbers (those are benchmarks/results/*.json, "
    "from --profile full)."
)
H = 3600
TAIL_LINES = 30

# ----------------------------------------------------------------------------- the table

# data files (relative to --data-dir) the entries read
MNIST = ("MNIST/raw/train-images-idx3-ubyte.gz", "MNIST/raw/train-labels-idx1-ubyte.gz",
         "MNIST/raw/t10k-images-idx3-ubyte.gz", "MNIST/raw/t10k-labels-idx1-ubyte.gz")
MNIST_M = ("MNIST-M/mnist_m_test.tar.gz",)
BSDS = ("BSDS500",)  # the MNIST-M generator's backgrounds
USPS = ("USPS",)
OMNIGLOT = ("omniglot-py/images_background_small1.zip", "omniglot-py/images_background_small2.zip")
LAKE = ("omniglot-py/one-shot-classification",)

DATA = ("--data-dir", "{data}")


def OUT(name: str) -> tuple[str, str]:  # noqa: N802 - reads as a table column
    """``--out <out>/<name>``."""
    return ("--out", "{out}/" + name)


RUNS = ("--runs-dir", "{runs}")  # quick: benchmarks/runs/quick/<entry>/, emptied before the entry runs
FEWSHOT_ENV = {"SHIFTLAB_DATA": "{data}"}  # bench_fewshot.py has no --data-dir; it reads $SHIFTLAB_DATA


@dataclass(frozen=True)
class Spec:
    """How one entry runs in one profile.

    Attributes:
        args: the script's arguments; ``{out}``, ``{runs}`` and ``{data}`` are replaced by the
            output folder, the entry's quick run folder and ``--data-dir``.
        expected_s: estimated wall seconds on 2 CPU cores (quick entries).
        timeout_s: the entry is stopped after this long (default: 3 x expected, at least 240 s).
        data: files or folders under ``--data-dir`` it reads.
        peer: the ``benchmarks/.venvs/<peer>`` environment it needs.
        env: extra environment variables.
    """

    args: tuple[str, ...]
    expected_s: int | None = None
    timeout_s: int | None = None
    data: tuple[str, ...] = ()
    peer: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def timeout(self) -> int:
        """The timeout in seconds."""
        if self.timeout_s is not None:
            return self.timeout_s
        return max(240, 3 * (self.expected_s or 300))


@dataclass(frozen=True)
class Entry:
    """One benchmark invocation: a script and its arguments per profile (``None``: not in that profile).

    Attributes:
        script: the file in ``benchmarks/``.
        full: the acceptance run.
        quick: the reduced run.
        threads: the script takes ``--threads`` (``run_all.py --threads N`` sets it).
    """

    script: str
    full: Spec | None = None
    quick: Spec | None = None
    threads: bool = True


# Expected seconds are estimates for 2 CPU cores from the scripts' workloads (dann_cnn trains at
# about 200-300 images/s here; LeNet at 2,000 images/s or more: the three smoke-run entries ssl,
# transfer and uda took 13-46 s) and the timings recorded in benchmarks/results/*.json. The quick
# profile adds up to ~925 s (~16 min) without the five peer entries and ~1,400 s (~24 min) with
# them. Entries run in this order (fewshot's parts before its --collect).
PLAN: dict[str, Entry] = {
    "data_pipeline": Entry(
        "bench_data_pipeline.py",
        full=Spec(("--repeats", "3", "--train-fraction", "0.3", *DATA, *OUT("data_pipeline.json")),
                  timeout_s=2 * H, data=MNIST),
        # ~60 s: 19 training batches (2% of an epoch) x 4 loaders x 2 tasks at ~0.1 s, 5% of an
        # epoch of batches alone, warm-up, MNIST decompressed for torchvision; one repeat, no
        # waiting for a quiet machine, no re-measuring
        quick=Spec(("--epochs-fraction", "0.05", "--train-fraction", "0.02", "--repeats", "1",
                    "--wait-budget", "0", "--max-retries", "0", *DATA, *OUT("data_pipeline.json")),
                   expected_s=60, data=MNIST),
    ),
    "erm_mnist": Entry(
        "bench_erm_mnist.py", threads=False,
        full=Spec(("--seeds", "0", "1", "2", *DATA, *OUT("erm_mnist.json")), timeout_s=3 * H,
                  data=MNIST + MNIST_M + BSDS),
        # ~300 s: one epoch of dann_cnn on the 60,000 MNIST digits at ~250 images/s (the script
        # has no image limit) + evaluation on MNIST, real and generated MNIST-M (28,000 images)
        quick=Spec(("--seeds", "0", "--epochs", "1", *RUNS, *DATA, *OUT("erm_mnist.json")),
                   expected_s=300, data=MNIST + MNIST_M + BSDS),
    ),
    "fewshot_lake": Entry("bench_fewshot.py", threads=False,
                          full=Spec(("--part", "lake"), timeout_s=10 * H, data=OMNIGLOT + LAKE, env=FEWSHOT_ENV)),
    "fewshot_heldout": Entry("bench_fewshot.py", threads=False,
                             full=Spec(("--part", "heldout"), timeout_s=10 * H, data=OMNIGLOT, env=FEWSHOT_ENV)),
    "fewshot_ratios": Entry("bench_fewshot.py", threads=False,
                            full=Spec(("--part", "ratios"), timeout_s=4 * H, data=OMNIGLOT, env=FEWSHOT_ENV)),
    "fewshot_easyfsl": Entry(
        "bench_fewshot.py", threads=False,
        full=Spec(("--part", "easyfsl"), timeout_s=2 * H, data=OMNIGLOT, env=FEWSHOT_ENV, peer="easyfsl"),
        # ~90 s: 30 training episodes (20-way 5-shot) and 100 test episodes per side
        # (~0.5 / 0.8 s per training episode, ours / easyfsl), Omniglot preparation
        quick=Spec(("--part", "easyfsl", "--easyfsl-iterations", "30", "--easyfsl-test-episodes", "100",
                    *RUNS, "--collect", *OUT("fewshot_easyfsl.json")),
                   expected_s=90, data=OMNIGLOT, env=FEWSHOT_ENV, peer="easyfsl"),
    ),
    "fewshot": Entry(
        "bench_fewshot.py", threads=False,
        full=Spec(("--collect", *OUT("fewshot.json")), timeout_s=H, data=OMNIGLOT, env=FEWSHOT_ENV),
        # ~150 s: the class-ratio part for triplet only (3 splits x 200 batches of 64 triplets on
        # Conv-4, ~30 s each, + 1,000 test episodes, 2,000 pairs and triplets, data preparation)
        quick=Spec(("--part", "ratios", "--methods", "triplet", *RUNS, "--collect", *OUT("fewshot.json")),
                   expected_s=150, data=OMNIGLOT, env=FEWSHOT_ENV),
    ),
    "fewshot_distance": Entry(
        "bench_protonet_distance.py",
        full=Spec(OUT("fewshot_distance.json"), timeout_s=H, data=OMNIGLOT, env=FEWSHOT_ENV),
        # ~40 s: 30 training episodes (20-way 5-shot, ~0.12 s each) and 100 test episodes per
        # distance, Omniglot preparation
        quick=Spec(("--iterations", "30", "--test-episodes", "100", *OUT("fewshot_distance.json")),
                   expected_s=40, data=OMNIGLOT, env=FEWSHOT_ENV),
    ),
    "pinn": Entry(
        "bench_pinn.py",
        # every part, the neurodiffeq side included (its venv is created by the script)
        full=Spec(OUT("pinn.json"), timeout_s=2 * H, peer="neurodiffeq"),
        # ~180 s: the script's own --quick budgets: single SIR (2 setups x <= 30 s), transfer
        # (200 Adam epochs), the three bundle recipes with 10 LM steps and 3-point grids.
        # Its bundle run folders are runs/bench-pinn/ (fixed in the script, overwritten).
        quick=Spec(("--quick", "--parts", "single,transfer,bundles", *OUT("pinn.json")), expected_s=180),
    ),
    "pinn_peer": Entry(
        "bench_pinn.py",
        # ~120 s: neurodiffeq vs shiftlab with the script's --quick budgets (300 epochs per side,
        # single problem and bundle, and the time-to-equal-error runs)
        quick=Spec(("--quick", "--parts", "peer", *OUT("pinn_peer.json")), expected_s=120, peer="neurodiffeq"),
    ),
    "shifts": Entry(
        "bench_shifts.py",
        full=Spec((*DATA, *OUT("shifts.json")), timeout_s=2 * H, data=MNIST + MNIST_M, peer="imagecorruptions"),
        # ~90 s: 100 instead of 1,000 images per size; the peer (~250 s for 1,000) dominates,
        # plus 30 peer subprocess start-ups
        quick=Spec(("--n", "100", *DATA, *OUT("shifts.json")), expected_s=90, data=MNIST + MNIST_M,
                   peer="imagecorruptions"),
    ),
    "ssl": Entry(
        "bench_ssl.py",
        full=Spec(("--threads", "2", *DATA, *OUT("ssl.json")), timeout_s=6 * H,
                  data=MNIST + USPS + MNIST_M + BSDS),
        # ~15 s (smoke-run: 12.8 s with --threads 1): MNIST -> USPS only, seed 0; BYOL 1 epoch on
        # 4,096 MNIST images, supervised pre-training 1 epoch on them, fine-tuning 10 epochs of 100
        # labelled images, 100 probe steps, 500 k-NN queries, 500 USPS test images
        quick=Spec(("--scenario", "mnist_to_usps", "--seeds", "0", "--set", "source.limit=4096",
                    "--set", "ssl.epochs=1", "--set", "supervised.epochs=1", "--set", "finetune.epochs=10",
                    "--set", "probe.steps=100", "--set", "monitor.query=500", "--set", "target.eval_limit=500",
                    *RUNS, *DATA, *OUT("ssl.json")), expected_s=15, data=MNIST + USPS),
    ),
    "ssl_peer": Entry(
        "bench_ssl_peer.py",
        full=Spec(("--threads", "2", "--peer-workers", "2", *DATA, *OUT("ssl_peer.json")), timeout_s=2 * H,
                  data=MNIST, peer="lightly", env={"OMP_NUM_THREADS": "2"}),
        # ~60 s: the docstring's smoke size: 1 epoch of 2,048 images per side, 1,000-image k-NN bank
        # and queries, 1 thread, 1 DataLoader worker (lightly's import and worker start-up dominate)
        quick=Spec(("--epochs", "1", "--train-limit", "2048", "--bank", "1000", "--query", "1000", "--threads", "1",
                    "--peer-workers", "1", *DATA, *OUT("ssl_peer.json")), expected_s=60, data=MNIST,
                   peer="lightly", env={"OMP_NUM_THREADS": "1"}),
    ),
    "transfer": Entry(
        "bench_transfer.py",
        full=Spec(("--scenario", "mnist_to_usps", "--scenario", "mnist_embedding_shift", *DATA,
                   *OUT("transfer.json")), timeout_s=24 * H, data=MNIST + USPS),
        # ~20 s (smoke-run: 17.8 s with --threads 1): MNIST -> USPS, seed 0: source LeNet 1 epoch on
        # 5,000 digits; 8 strategies at 25% selected once + 100%, 2 fine-tuning epochs each (~45,000
        # LeNet images), selection passes over the 7,291-image pool, 1,000 validation digits
        quick=Spec(("--scenario", "mnist_to_usps", "--seeds", "0", "--set", "source.train.limit=5000",
                    "--set", "source.train.epochs=1", "--set", "finetune.epochs=2",
                    "--set", "selection.fractions=[0.25]", "--set", "selection.reselect_every=[0]",
                    "--set", "target.val.limit=1000", *RUNS, *DATA, *OUT("transfer.json")),
                   expected_s=20, data=MNIST + USPS),
    ),
    "transfer_balanced": Entry(
        "bench_transfer.py",
        # README: the class-balanced grid on MNIST -> USPS, 5 seeds (stored with --collect)
        full=Spec(("--scenario", "mnist_to_usps",
                   "--set", "selection.strategies={random: {}, differential_bal: {strategy: differential, "
                   "class_balanced: true}, error_bal: {strategy: error, class_balanced: true}, entropy_most_bal: "
                   "{strategy: entropy_most, class_balanced: true}}",
                   "--set", "selection.fractions=[0.25]", "--set", "selection.full=false", *DATA,
                   *OUT("transfer_balanced.json")), timeout_s=12 * H, data=MNIST + USPS),
    ),
    "tta": Entry(
        "bench_tta.py",
        full=Spec(("--seeds", "0", "1", "2", *DATA, *OUT("tta.json")), timeout_s=24 * H, data=MNIST),
        # ~150 s: seed 0, source dann_cnn+BN trained 2 epochs on 2,000 digits (~20 s), every method on
        # the first 50 test digits x 15 corruptions (MEMO dominates: 750 single-sample steps of 32
        # copies at ~0.1 s; CoTTA's augmented teacher), MEMO speed on 20 points (~3 s)
        quick=Spec(("--seeds", "0", "--limit", "50", "--train-limit", "2000", "--points", "20", *RUNS, *DATA,
                    *OUT("tta.json")), expected_s=150, data=MNIST),
    ),
    "uda": Entry(
        "bench_uda.py",
        # the script's defaults (README): the embedded digits -> digits_m pair, 6 methods x 3 seeds;
        # the MNIST-scale tasks (--tasks mnist_to_mnistm,mnist_to_usps,usps_to_mnist) need a GPU
        full=Spec(("--tasks", "digits", *DATA, *OUT("uda.json")), timeout_s=12 * H),
        # ~50 s (smoke-run: 45.9 s with --threads 1): the 6 methods, seed 0, 2 epochs on the first
        # 512 embedded digits (+ 512 target images) with dann_cnn (~250-300 images/s)
        quick=Spec(("--tasks", "digits", "--seeds", "0", "--set", "train.epochs=2", "--set", "data.limit_train=512",
                    *RUNS, *DATA, *OUT("uda.json")), expected_s=50),
    ),
    "uda_peer": Entry(
        "bench_uda_peer.py",
        full=Spec(("--epochs", "2", *DATA, *OUT("uda_peer.json")), timeout_s=4 * H, data=MNIST + MNIST_M + BSDS,
                  peer="pytorch_adapt"),
        # ~120 s: the docstring's smoke size, 20 DANN steps per side (1 epoch), evaluation on the
        # 9,001 real MNIST-M test images per side, the generated MNIST-M training set
        quick=Spec(("--epochs", "1", "--max-steps-per-epoch", "20", *RUNS, *DATA, *OUT("uda_peer.json")),
                   expected_s=120, data=MNIST + MNIST_M + BSDS, peer="pytorch_adapt"),
    ),
}


# ----------------------------------------------------------------------------- the plan


@dataclass
class Step:
    """One planned subprocess (or skipped entry)."""

    name: str
    script: str
    args: list[str]
    env: dict[str, str]
    timeout_s: int
    expected_s: int | None
    runs_dir: Path | None
    skip: str | None = None
    note: str = ""
    data_dir: str = str(DEFAULT_DATA)

    def argv(self) -> list[str]:
        """The subprocess command line."""
        return [sys.executable, str(BENCH / self.script), *self.args]

    def command(self) -> str:
        """The command as a user would type it (relative paths, ``python``)."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        return shlex.join([*env, "python", f"benchmarks/{self.script}", *self.args])


def _shown(p: Path) -> str:
    """A path relative to the repository when inside it (commands recorded in JSON stay portable)."""
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p.resolve())


def _expand(args: Sequence[str], out: Path, runs: Path | None, data: Path) -> list[str]:
    out_s, data_s = _shown(out), str(data)
    res = []
    for a in args:
        a = a.replace("{out}", out_s).replace("{data}", data_s)
        if "{runs}" in a:
            if runs is None:
                raise ValueError("a {runs} argument outside the quick profile")
            a = a.replace("{runs}", _shown(runs))
        res.append(a)
    return res


def _with_threads(args: list[str], n: int) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--threads":
            skip = True
            continue
        out.append(a)
    return [*out, "--threads", str(n)]


def _help(script: Path) -> str:
    try:
        proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(--help failed: {exc})"
    return proc.stdout + proc.stderr


def _generic(script: Path, profile: str, out: Path) -> tuple[Spec | None, str]:
    """A spec for a benchmark script that has no entry in :data:`PLAN`, from its ``--help``."""
    name = script.stem.removeprefix("bench_")
    text = _help(script)
    has_out = re.search(r"--out\b", text) is not None
    if profile == "full":
        if out.resolve() == RESULTS.resolve() or not has_out:
            return Spec((), timeout_s=12 * H), "no entry in run_all.py's PLAN: run with its defaults"
        return Spec(OUT(f"{name}.json"), timeout_s=12 * H), "no entry in run_all.py's PLAN: its defaults + --out"
    if not has_out:
        return None, ("no entry in run_all.py's PLAN and no --out option, so its results would land in "
                      "benchmarks/results; add a quick entry to PLAN")
    quick = ("--quick",) if re.search(r"--quick\b", text) else ()
    return (Spec((*quick, *OUT(f"{name}.json")), expected_s=300),
            "no entry in run_all.py's PLAN: --out" + (" --quick" if quick else "") + " only (defaults otherwise)")


def _peer_python(peer: str) -> Path:
    return VENVS / peer / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_quick_outputs(steps: Sequence[Step], out: Path) -> None:
    """Every ``--out`` of a quick step lies inside ``out``, and no argument names a file directly
    in ``benchmarks/results/`` (the acceptance results).

    Raises:
        ValueError: naming the step and the argument.
    """
    for s in steps:
        for i, a in enumerate(s.args):
            if i > 0 and s.args[i - 1] == "--out" and not _inside(REPO / a, out):
                raise ValueError(f"quick entry {s.name}: --out {a} is outside the quick output folder {out}")
            p = (REPO / a).resolve()
            if p.parent == RESULTS.resolve() and p.suffix:
                raise ValueError(f"quick entry {s.name}: {a} would overwrite an acceptance result")


def build_plan(profile: str, out: Path, data_dir: Path, only: Sequence[str] = (), setup_peers: bool | None = None,
               threads: int | None = None, runs_root: Path = QUICK_RUNS) -> list[Step]:
    """The steps of a profile, in order; skipped entries carry their reason.

    Args:
        profile: ``quick`` or ``full``.
        out: the output folder (``{out}``).
        data_dir: the data folder (``{data}``; the entries' data files are checked there).
        only: entry names or script names (``bench_tta``, ``bench_tta.py``) to keep.
        setup_peers: let scripts create absent peer environments (default: full yes, quick no).
        threads: ``--threads`` for every script that takes it, and ``OMP_NUM_THREADS``.
        runs_root: the quick profile's run folders (one subfolder per entry).

    Raises:
        ValueError: an unknown ``only`` name, or a quick output outside ``out``.
    """
    if profile not in ("quick", "full"):
        raise ValueError(f"unknown profile {profile!r}: quick or full")
    if profile == "quick" and out.resolve() == RESULTS.resolve():
        raise ValueError("the quick profile may not write into benchmarks/results itself (the acceptance "
                         "results); use a subfolder such as benchmarks/results/quick")
    setup = (profile == "full") if setup_peers is None else setup_peers
    present = {p.name for p in BENCH.glob("bench_*.py")}
    known = {e.script for e in PLAN.values()}
    entries: list[tuple[str, str, Spec | None, bool, str]] = []
    for name, e in PLAN.items():
        spec = e.quick if profile == "quick" else e.full
        if spec is not None or name in only:
            entries.append((name, e.script, spec, e.threads, ""))
    for script in sorted(present - known):
        spec, note = _generic(BENCH / script, profile, out)
        entries.append((Path(script).stem.removeprefix("bench_"), script, spec, True, note))
    if only:
        names = {n for n, *_ in entries}
        scripts = {s for _, s, *_ in entries}
        wanted = set()
        for o in only:
            script = o if o.endswith(".py") else f"{o}.py"
            if o in names:
                wanted.add(o)
            elif script in scripts:
                wanted.update(n for n, s, *_ in entries if s == script)
            else:
                raise ValueError(f"--only {o}: unknown; choose from {', '.join(sorted(names))} or a script name")
        entries = [e for e in entries if e[0] in wanted]
    steps: list[Step] = []
    for name, script, spec, takes_threads, note in entries:
        if spec is None:
            if note:
                steps.append(Step(name, script, [], {}, 0, None, None, skip=note))
                continue
            raise ValueError(f"--only {name}: it has no {profile} entry in PLAN")
        runs = runs_root / name if profile == "quick" else None
        args = _expand(spec.args, out, runs, data_dir)
        env = {k: _expand([v], out, runs, data_dir)[0] for k, v in spec.env.items()}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
            if takes_threads:
                args = _with_threads(args, threads)
        step = Step(name, script, args, env, spec.timeout, spec.expected_s, runs if "{runs}" in
                    " ".join(spec.args) else None, note=note, data_dir=str(data_dir))
        if script not in present:
            step.skip = f"benchmarks/{script} is absent"
        missing = [d for d in spec.data if not (data_dir / d).exists()]
        if step.skip is None and missing:
            step.skip = f"data absent: {', '.join(str(data_dir / d) for d in missing)} (see `shiftlab data verify`)"
        if step.skip is None and spec.peer and not _peer_python(spec.peer).exists() and not setup:
            step.skip = (f"peer environment benchmarks/.venvs/{spec.peer} is absent (the script creates it with pip "
                         "on first use; pass --setup-peers to let it, or run the script once)")
        steps.append(step)
    if profile == "quick":
        check_quick_outputs(steps, out)
    return steps


# ----------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What one step did (one item of ``run_all.json``'s ``scripts``)."""

    name: str
    script: str
    status: str
    command: str
    expected_seconds: int | None
    timeout_s: int
    exit_code: int | None = None
    seconds: float | None = None
    log: str | None = None
    outputs: list[str] = field(default_factory=list)
    reason: str = ""
    tail: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object."""
        return dict(self.__dict__)


def _snapshot(folder: Path) -> dict[Path, int]:
    if not folder.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def _kill(proc: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _fresh_runs(runs: Path, root: Path) -> None:
    """Empty the entry's quick run folder (only below a root that this runner marked as its own)."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / RUNS_MARKER
    if not marker.exists():
        if any(root.iterdir()):
            raise RuntimeError(f"{root} holds files that run_all.py did not create; pick another --runs-dir")
        marker.write_text("quick-profile run folders of benchmarks/run_all.py; emptied per entry\n")
    if runs.exists():
        shutil.rmtree(runs)


def run_step(step: Step, out: Path, runs_root: Path) -> Outcome:
    """Run one step with its timeout, tee-ing its output to ``out/logs/<name>.log``."""
    res = Outcome(step.name, step.script, "skipped", step.command(), step.expected_s, step.timeout_s,
                  reason=step.skip or "")
    if step.skip:
        return res
    if step.runs_dir is not None:
        _fresh_runs(step.runs_dir, runs_root)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{step.name}.log"
    res.log = _shown(log_path)
    before = _snapshot(out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SHIFTLAB_DATA": step.data_dir, **step.env}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh:
        fh.write(f"$ {step.command()}\n")
        fh.flush()
        proc = subprocess.Popen(step.argv(), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                sys.stdout.write(f"[{step.name}] {line}")
                sys.stdout.flush()
                tail.append(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            res.exit_code = proc.wait(timeout=step.timeout_s)
            res.status = "ok" if res.exit_code == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill(proc)
            res.exit_code = proc.returncode
            res.status = "timeout"
            res.reason = f"stopped after the {step.timeout_s} s timeout"
        except KeyboardInterrupt:
            _kill(proc)
            res.exit_code = proc.returncode
            res.status = "interrupted"
            res.reason = "interrupted (Ctrl-C)"
        reader.join(timeout=30)
    res.seconds = round(time.perf_counter() - t0, 1)
    res.tail = list(tail) if res.status != "ok" else []
    if res.status == "failed":
        said = next((ln for ln in reversed(res.tail) if "DataError" in ln), None)
        if said:
            res.status = "skipped"
            res.reason = f"the script reports missing or corrupt data: {said.strip()}"
    after = _snapshot(out)
    res.outputs = sorted(_shown(p) for p, m in after.items()
                         if before.get(p) != m and p.name != "run_all.json")
    return res


def _versions() -> dict[str, str | None]:
    sys.path.insert(0, str(REPO / "src"))
    from shiftlab.experiment.report import package_version

    return {"python": platform.python_version(),
            **{p: package_version(p) for p in ("shiftlab", "torch", "torchvision", "numpy")}}


def _machine() -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "src"))
    from shiftlab.experiment.report import machine_info

    return machine_info()


def _summary(profile: str, argv: Sequence[str], out: Path, data_dir: Path, started: str, outcomes: list[Outcome],
             steps: Sequence[Step], machine: Mapping[str, Any], versions: Mapping[str, Any],
             finished: str | None) -> dict[str, Any]:
    counts = {k: sum(o.status == k for o in outcomes) for k in ("ok", "failed", "timeout", "skipped", "interrupted")}
    doc: dict[str, Any] = {
        "name": f"run_all ({profile} profile)",
        "profile": profile,
        "acceptance_numbers": profile == "full",
        "date": started,
        "finished": finished,
        "command": shlex.join(["python", "benchmarks/run_all.py", *argv]),
        "out": _shown(out),
        "data_dir": str(data_dir),
        "machine": dict(machine),
        "versions": dict(versions),
        "totals": {"entries": len(steps), "done": len(outcomes), **counts,
                   "seconds": round(sum(o.seconds or 0.0 for o in outcomes), 1),
                   "expected_seconds": sum(s.expected_s or 0 for s in steps if not s.skip)},
        "scripts": [o.as_dict() for o in outcomes],
    }
    if profile == "quick":
        doc["warning"] = QUICK_WARNING
    return doc


def _print_plan(steps: Sequence[Step], profile: str) -> None:
    for s in steps:
        state = f"SKIP: {s.skip}" if s.skip else (
            f"~{s.expected_s} s, timeout {s.timeout_s} s" if s.expected_s else f"timeout {s.timeout_s} s")
        print(f"- {s.name:18s} benchmarks/{s.script}  [{state}]")
        if not s.skip:
            print(f"    {s.command()}")
        if s.note:
            print(f"    note: {s.note}")
    runnable = [s for s in steps if not s.skip]
    if profile == "quick":
        total = sum(s.expected_s or 0 for s in runnable)
        print(f"{len(runnable)} entries to run, {len(steps) - len(runnable)} skipped; expected about "
              f"{total} s ({total / 60:.0f} min) on 2 CPU cores")
    else:
        print(f"{len(runnable)} entries to run, {len(steps) - len(runnable)} skipped")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring of benchmarks/run_all.py for the details.")
    ap.add_argument("--profile", choices=["quick", "full"], required=True)
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: benchmarks/results/quick for quick, benchmarks/results for full)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"data folder (default: {DEFAULT_DATA})")
    ap.add_argument("--only", default="", help="comma list of entry names or scripts (e.g. ssl,uda,bench_tta)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; run and write nothing")
    ap.add_argument("--setup-peers", action=argparse.BooleanOptionalAction, default=None,
                    help="let scripts create absent peer environments with pip (default: yes for full, no for quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="--threads N for every script that takes it, and OMP_NUM_THREADS=N")
    ap.add_argument("--runs-dir", type=Path, default=QUICK_RUNS,
                    help=f"quick profile: run folders, one per entry, emptied first (default: {_shown(QUICK_RUNS)})")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the profile; returns 0 when no entry failed or timed out (skipped entries are not failures)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    out = (args.out or (QUICK_OUT if args.profile == "quick" else RESULTS)).resolve()
    data_dir = args.data_dir.resolve()
    only = [o.strip() for o in args.only.split(",") if o.strip()]
    try:
        steps = build_plan(args.profile, out, data_dir, only, args.setup_peers, args.threads, args.runs_dir.resolve())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    banner = QUICK_WARNING if args.profile == "quick" else (
        "FULL PROFILE: the acceptance runs; results go to " + _shown(out))
    print(banner)
    print(f"plan ({args.profile}, out {_shown(out)}, data {data_dir}):")
    _print_plan(steps, args.profile)
    if args.dry_run:
        print("dry run: nothing was run or written")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine, versions = _machine(), _versions()
    from shiftlab.io import atomic_write_json

    outcomes: list[Outcome] = []
    summary = out / "run_all.json"
    interrupted = False
    for i, step in enumerate(steps, 1):
        print(f"\n==> [{i}/{len(steps)}] {step.name}: "
              + (f"skipped ({step.skip})" if step.skip else
                 f"{step.command()}  (expected ~{step.expected_s or '?'} s, timeout {step.timeout_s} s)"), flush=True)
        res = run_step(step, out, args.runs_dir.resolve())
        outcomes.append(res)
        if not step.skip:
            print(f"<== {step.name}: {res.status}" + (f" (exit {res.exit_code})" if res.exit_code else "")
                  + f" in {res.seconds} s" + (f"; {res.reason}" if res.reason else "") + f"; log {res.log}", flush=True)
        atomic_write_json(summary, _summary(args.profile, raw, out, data_dir, started, outcomes, steps, machine,
                                            versions, None))
        if res.status == "interrupted":
            interrupted = True
            break
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(summary, _summary(args.profile, raw, out, data_dir, started, outcomes, steps, machine,
                                        versions, finished))
    print(f"\n{'entry':18s} {'status':11s} {'exit':>4s} {'seconds':>8s} {'expected':>8s}")
    for o in outcomes:
        print(f"{o.name:18s} {o.status:11s} {'' if o.exit_code is None else o.exit_code:>4} "
              f"{'' if o.seconds is None else o.seconds:>8} {'' if o.expected_seconds is None else o.expected_seconds:>8}"
              + (f"  {o.reason}" if o.reason else ""))
    print(f"summary: {_shown(summary)}; `shiftlab report {_shown(out)}` renders the folder")
    if args.profile == "quick":
        print(QUICK_WARNING)
    if interrupted:
        return 130
    return 1 if any(o.status in ("failed", "timeout") for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
