"""One recipe × one seed -> ``runs/<recipe>/<variant>/seed-<k>/``.

The folder holds ``config.yaml`` (fully resolved), ``results.jsonl`` (one object per
evaluation), ``metrics.json`` (final; its presence marks the run finished), a checkpoint
``checkpoint.safetensors`` + ``checkpoint.json`` (weights, optimizer, RNG state, epoch)
written atomically after every epoch, and ``curves.png``. A killed run continues from
its last checkpoint with ``resume=True`` and ends with the same metrics as an
uninterrupted one on CPU: data order and augmentation depend only on ``(seed, epoch)``
and the global torch RNG state is restored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftlab.backbones import create_backbone
from shiftlab.batches import DomainPair, Labeled
from shiftlab.config import EvalSet, Recipe, overrides_id, variant_label
from shiftlab.data.tensors import TensorData
from shiftlab.errors import ShiftlabError, TrainingError
from shiftlab.experiment.bn_stats import population_batchnorm
from shiftlab.experiment.data import RunData, build_run_data
from shiftlab.experiment.distributed import Distributed
from shiftlab.experiment.layout import memory_format, use_channels_last
from shiftlab.experiment.lock import run_lock
from shiftlab.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    load_state,
    read_jsonl,
    save_state,
)
from shiftlab.methods import create_method, make_hparams
from shiftlab.methods.base import Method, TrainableMethod
from shiftlab.optim import OptimizerFactory
from shiftlab.precision import train_autocast
from shiftlab.seeding import epoch_generator, resolve_device, seed_everything

log = logging.getLogger(__name__)


class RunInterrupted(ShiftlabError):
    """The user pressed Ctrl-C; the last checkpoint is intact."""


class RunExists(ShiftlabError):
    """The run folder already holds results or a checkpoint."""


@dataclass(frozen=True)
class RunOptions:
    """How to execute runs (machine-specific; not part of the recipe).

    Attributes:
        runs_dir: root of run folders.
        data_dir: data root (``None``: ``$SHIFTLAB_DATA`` or ``~/.cache/shiftlab``).
        download: allow downloading missing data.
        device: ``auto``, ``cpu``, ``cuda``, ``mps`` (``None``: the recipe's).
        resume: continue unfinished runs from their checkpoint; skip finished ones.
        overwrite: move an existing run folder aside (``<folder>.old-<time>``) and start again.
        progress: show a progress bar (only on a terminal).
        log: extra loggers: ``tensorboard``, ``mlflow``.
        eval_batch_size: batch size for evaluation.
        channels_last: ``auto`` (on for image batches on CPU, where oneDNN convolutions run
            about 1.3x faster in that memory format), ``on`` or ``off``. Recorded in the
            run's config; numerics differ from ``off`` only by float rounding.
    """

    runs_dir: Path = Path("runs")
    data_dir: str | None = None
    download: bool = False
    device: str | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    log: tuple[str, ...] = ()
    eval_batch_size: int = 1000
    channels_last: str = "auto"


def run_dir_for(name: str, overrides: dict[str, Any], seed: int, runs_dir: str | Path) -> Path:
    """``runs_dir/<recipe name>/<variant id>/seed-<seed>``: every runner's seed folder."""
    return Path(runs_dir) / name / overrides_id(overrides) / f"seed-{seed}"


def run_seeds_locked(
    seeds: Sequence[int], folder: Callable[[int], Path], run: Callable[[int], dict[str, Any]]
) -> list[dict[str, Any]]:
    """``run(seed)`` for each seed while holding the lock of its folder ``folder(seed)``
    (:func:`shiftlab.experiment.lock.run_lock`: one writer per run folder)."""
    results = []
    for seed in seeds:
        with run_lock(folder(seed)):
            results.append(run(seed))
    return results


@torch.no_grad()
def accuracy(
    model: Method | nn.Module, data: TensorData, batch_size: int, device: torch.device, channels_last: bool = False
) -> float:
    """Top-1 accuracy on ``data`` of a method's ``predict`` or a plain network's ``forward``
    (``[B, C, H, W] -> [B, classes]``), in eval mode; the model's train/eval mode is restored."""
    was = model.training
    model.eval()
    forward = model.predict if isinstance(model, Method) else model
    correct = 0
    for batch in data.batches(batch_size, device=device):
        x = memory_format(batch.x, channels_last)
        correct += (forward(x).argmax(dim=1) == batch.y).sum().item()
    model.train(was)
    return correct / max(len(data), 1)


def evaluate_sets(
    model: Method | nn.Module, data: RunData, sets: Sequence[EvalSet], batch_size: int, device: torch.device,
    channels_last: bool = False,
) -> dict[str, float]:
    """``{"<key>/acc": accuracy}`` for the recipe's evaluation ``sets`` (their tensors are
    ``data.evals[key]``); sets with ``bn: target`` / ``source`` are scored with the BatchNorm
    statistics of ``data.target`` / ``data.train`` (:func:`population_batchnorm`), computed
    once per evaluation."""
    out: dict[str, float] = {}
    for bn in ("running", "target", "source"):
        chosen = [ev for ev in sets if ev.bn == bn]
        if not chosen:
            continue
        images = data.target if bn == "target" else data.train  # recipes with bn: target have a target
        stats = nullcontext() if bn == "running" else population_batchnorm(
            model, images, batch_size, device, channels_last)  # type: ignore[arg-type]
        with stats:
            for ev in chosen:
                out[f"{ev.key}/acc"] = accuracy(model, data.evals[ev.key], batch_size, device, channels_last)
    return {f"{ev.key}/acc": out[f"{ev.key}/acc"] for ev in sets}  # recipe order


def _with_current_defaults(old: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml written by an older shiftlab, with the fields added since then at their
    defaults (recipe sections and the method's hyper-parameters), so that a resume compares
    what the user wrote and not what the library grew."""
    old = dict(old)
    try:
        fields = {k: old[k] for k in Recipe.model_fields if k in old}
        fields["method"] = {**(old.get("method") or {}), "hparams": {}}
        dumped = Recipe.model_validate(fields).model_dump(mode="json")
    except (TypeError, ValueError):
        return old
    hparams = (old.get("method") or {}).get("hparams") or {}
    try:
        dumped["method"]["hparams"] = _plain(make_hparams(dumped["method"]["name"], hparams))
    except Exception:  # an unknown method or field: compare as written
        dumped["method"]["hparams"] = hparams
    return {**old, **{k: dumped[k] for k in fields}}


def _plain(obj: Any) -> Any:
    """Make info dicts YAML/JSON-safe (drop tensors, keep small scalars and strings)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj] if len(obj) <= 64 else f"<{len(obj)} items>"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def versions() -> dict[str, str]:
    """Versions recorded in every run's resolved config (shiftlab, torch, numpy, python)."""
    import numpy

    from shiftlab import __version__

    return {
        "shiftlab": __version__,
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def open_run_folder(
    out: Path, options: RunOptions, unfinished_marker: Path | None, resume_hint: str
) -> tuple[dict[str, Any] | None, bool]:
    """Decide what to do with a seed's run folder ``out`` before running it.

    * empty or absent: start (``(None, False)``);
    * ``options.overwrite``: move it aside to ``<out>.old-<time>`` and start;
    * finished (``metrics.json``): with ``resume``, return its metrics (``(metrics, False)``:
      skip the seed); without, :class:`RunExists`;
    * unfinished: with ``resume``, ``(None, True)`` (continue); without, :class:`RunExists`
      naming ``resume_hint`` (what ``--resume`` keeps). With ``unfinished_marker`` set, a
      folder without that file (e.g. no checkpoint yet) simply restarts.

    Returns:
        ``(finished metrics or None, resuming)``; ``out`` exists afterwards.
    """
    metrics_path = out / "metrics.json"
    resuming = False
    if out.exists() and any(out.iterdir()):
        if options.overwrite:
            backup = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(str(out), str(backup))
            log.info("moved the earlier run %s aside to %s", out, backup)
        elif metrics_path.exists():
            if options.resume:
                log.info("%s is finished; keeping it (resume)", out)
                return read_json(metrics_path), False
            raise RunExists(
                f"The run {out} already finished (metrics.json exists). Pass --resume to keep it "
                "and skip it, or --overwrite to run it again (the old folder is kept as a backup)."
            )
        elif unfinished_marker is None or unfinished_marker.exists():
            if not options.resume:
                raise RunExists(
                    f"An unfinished run is in {out}. Pass --resume to continue it ({resume_hint}), "
                    "or --overwrite to start again (the old folder is kept)."
                )
            resuming = True
    out.mkdir(parents=True, exist_ok=True)
    return None, resuming


class Experiment:
    """Runs one recipe (with its overrides) for one or more seeds.

    Args:
        recipe: the validated recipe.
        overrides: the ``--set`` overrides that produced it (they name the variant folder).
        options: machine-specific run options.
        on_epoch: optional callback ``(seed, epoch, record)`` after each evaluation.
        dist: this process's place in a data-parallel run (``shiftlab run --nproc N`` or
            ``torchrun``; :mod:`shiftlab.experiment.distributed`); ``None``: one process.
            Only rank 0 takes the lock, evaluates and writes.
    """

    def __init__(
        self,
        recipe: Recipe,
        overrides: dict[str, Any] | None = None,
        options: RunOptions | None = None,
        on_epoch: Callable[[int, int, dict[str, Any]], None] | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.recipe = recipe
        self.overrides = dict(overrides or {})
        self.options = options or RunOptions()
        self.on_epoch = on_epoch
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.channels_last = False  # resolved per run (see RunOptions.channels_last)

    # ------------------------------------------------------------------ public
    def run(self, seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """Run every seed (the recipe's unless given); returns each run's ``metrics.json``."""
        return [self.run_seed(s) for s in (seeds if seeds is not None else self.recipe.seeds)]

    def run_dir(self, seed: int) -> Path:
        return run_dir_for(self.recipe.name, self.overrides, seed, self.options.runs_dir)

    def run_seed(self, seed: int) -> dict[str, Any]:
        """Train and evaluate one seed (holding its folder's lock); see the module docstring
        for what is written.

        Raises:
            RunLocked: another live process is writing the same run folder.
        """
        if not self.main:  # rank 0 holds the lock for the whole process group
            return self._run_seed(seed)
        with run_lock(self.run_dir(seed)):
            return self._run_seed(seed)

    def _run_seed(self, seed: int) -> dict[str, Any]:
        out = self.run_dir(seed)
        ckpt = out / "checkpoint"
        metrics_path = out / "metrics.json"
        finished, resuming = None, False
        if self.main:
            finished, resuming = open_run_folder(out, self.options, ckpt.with_suffix(".json"),
                                                 "from its last checkpoint")
        if self.dist is not None:
            finished, resuming = self.dist.broadcast_object((finished, resuming))
            self.dist.check_batch(self.recipe.train.batch_size)
        if finished is not None:
            return self._evaluate_later(out, finished, seed)

        device, data, method = self._setup(seed)
        config = self._resolved_config(seed, device, data)
        if resuming and self.main:
            self._check_same_recipe(out / "config.yaml", config)
        if self.main:
            atomic_write_yaml(out / "config.yaml", config)

        start_epoch, elapsed = 0, 0.0
        if resuming:
            start_epoch, elapsed = self._restore(method, ckpt, device)
            if self.main:
                kept = [r for r in read_jsonl(out / "results.jsonl") if r.get("epoch", 0) < start_epoch]
                atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
                log.info("resuming %s at epoch %d", out, start_epoch)
        elif self.main and (out / "results.jsonl").exists():
            (out / "results.jsonl").unlink()
        if self.dist is not None:
            self.dist.sync_module(method)

        loggers = _make_loggers(self.options.log, out) if self.main else []
        before = None
        if self.main and isinstance(method, TrainableMethod) and method.batch_kind == "domain_pair" and not resuming:
            before = _embed(method, data, device)
        try:
            elapsed = self._train(method, data, device, seed, out, ckpt, start_epoch, elapsed, loggers)
        except KeyboardInterrupt:
            raise RunInterrupted(
                f"Interrupted (Ctrl-C) during {out}. Everything up to the last finished epoch is saved "
                f"in {ckpt.with_suffix('.json').name}; run the same command with --resume to continue."
            ) from None
        finally:
            for lg in loggers:
                lg.close()
        if not self.main:
            assert self.dist is not None
            return self.dist.broadcast_object(None)  # rank 0's metrics, once written

        records = read_jsonl(out / "results.jsonl")
        final = self._select(records)
        metrics = {
            "recipe": self.recipe.name,
            "variant": variant_label(self.overrides),
            "overrides": self.overrides,
            "seed": seed,
            "method": self.recipe.method.name,
            "backbone": self.recipe.backbone.name,
            "selection": self.recipe.selection_rule,
            "selected_epoch": final.get("epoch"),
            "metrics": final.get("metrics", {}),
            "seconds": round(elapsed, 3),
        }
        self._plot(records, out)
        if method.batch_kind == "domain_pair":
            _plot_embeddings(before, _embed(method, data, device), data, out)
        atomic_write_json(metrics_path, metrics)
        if self.dist is not None:
            self.dist.broadcast_object(metrics)
        return metrics

    def _evaluate_later(self, out: Path, finished: dict[str, Any], seed: int) -> dict[str, Any]:
        """A finished run whose recipe gained evaluation sets (and nothing else changed) is
        scored on them from its final checkpoint; ``metrics.json`` gets the new keys and
        lists them under ``evaluated_later``."""
        if self.main:
            self._check_same_recipe(out / "config.yaml", self._recipe_config(seed), ignore_eval=True)
        have = finished.get("metrics", {})
        wanted = [ev for ev in self.recipe.data.eval if f"{ev.key}/acc" not in have]
        if not wanted or self.dist is not None:
            return finished
        names = ", ".join(ev.key for ev in wanted)
        if self.recipe.selection != "last":
            raise ShiftlabError(
                f"The finished run {out} has no score for {names}, and its selection rule "
                f"({self.recipe.selection}) picked epoch {finished.get('selected_epoch')}, whose weights "
                "are not kept (the checkpoint is the last epoch). Run it again with --overwrite."
            )
        ckpt = out / "checkpoint"
        if not ckpt.with_suffix(".json").exists():
            raise ShiftlabError(f"The finished run {out} has no checkpoint to score {names} with; "
                                "run it again with --overwrite.")
        device, data, method = self._setup(seed)
        self._restore(method, ckpt, device)
        new = evaluate_sets(method, data, wanted, self.options.eval_batch_size, device, self.channels_last)
        later = [*finished.get("evaluated_later", []), *new]
        updated = {**finished, "metrics": {**have, **new}, "evaluated_later": later}
        atomic_write_json(out / "metrics.json", updated)
        log.info("scored the finished run %s on %s from its checkpoint", out, names)
        return updated

    # ------------------------------------------------------------------ pieces
    def _setup(self, seed: int) -> tuple[torch.device, RunData, Method]:
        """Seed, device, data and a freshly built method for ``seed``."""
        seed_everything(seed)
        device = resolve_device(self.options.device or self.recipe.device)
        if self.dist is not None:
            device = self.dist.device(device)
        data = build_run_data(self.recipe, seed, self.options.data_dir, self.options.download)
        self.channels_last = use_channels_last(self.options.channels_last, device) and data.train.x.dim() == 4
        return device, data, self._build_method(data, device)

    def _build_method(self, data: RunData, device: torch.device) -> Method:
        r = self.recipe
        args = {"in_chans": r.data.channels, "num_classes": data.num_classes, "image_size": r.data.image_size}
        args.update(r.backbone.args)
        backbone = create_backbone(r.backbone.name, **args)
        opt = OptimizerFactory(
            name=r.train.optimizer, lr=r.train.lr, weight_decay=r.train.weight_decay, momentum=r.train.momentum
        )
        method = create_method(
            r.method.name, backbone=backbone, num_classes=data.num_classes, hparams=r.effective_hparams(), optimizer=opt
        )
        if not isinstance(method, TrainableMethod):
            raise ShiftlabError(f"method {r.method.name!r} is not trainable; `shiftlab run` trains methods.")
        if method.batch_kind == "domain_pair" and data.target is None:
            raise ShiftlabError(
                f"method {r.method.name!r} adapts to an unlabelled target: set data.target in the recipe."
            )
        method = method.to(device)
        if self.channels_last:
            method = method.to(memory_format=torch.channels_last)
        return method

    def _recipe_config(self, seed: int) -> dict[str, Any]:
        """The run's config.yaml without its ``resolved`` part (what a resume compares)."""
        cfg = self.recipe.model_dump(mode="json")
        cfg["seed"] = seed
        cfg["method"]["hparams"] = _plain(make_hparams(self.recipe.method.name, self.recipe.effective_hparams()))
        cfg["overrides"] = self.overrides
        cfg["variant"] = variant_label(self.overrides)
        cfg["selection_rule"] = self.recipe.selection_rule
        return cfg

    def _resolved_config(self, seed: int, device: torch.device, data: RunData) -> dict[str, Any]:
        cfg = self._recipe_config(seed)
        cfg["resolved"] = {
            "device": str(device),
            "channels_last": self.channels_last,
            "world_size": self.dist.world_size if self.dist is not None else 1,
            "data_dir": str(self.options.data_dir) if self.options.data_dir else None,
            "datasets": _plain(data.info),
            "sizes": {"train": len(data.train), "val": len(data.val) if data.val else 0,
                      "target": len(data.target) if data.target else 0,
                      **{k: len(v) for k, v in data.evals.items()}},
            "versions": versions(),
            "platform": platform.platform(),
        }
        return cfg

    def _check_same_recipe(self, path: Path, config: dict[str, Any], ignore_eval: bool = False) -> None:
        """Refuse to resume a run whose recipe changed (a silent mix of two configs); with
        ``ignore_eval``, the evaluation sets may differ."""
        import yaml

        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return
        old = _with_current_defaults(old)
        if ignore_eval:
            def without_eval(c: dict[str, Any]) -> dict[str, Any]:
                return {**c, "data": {k: v for k, v in (c.get("data") or {}).items() if k != "eval"}}

            old, config = without_eval(old), without_eval(config)
        ignore = {"seeds", "device", "resolved", "description"}
        changed = sorted(k for k in set(old) | set(config) if k not in ignore and old.get(k) != config.get(k))
        if changed:
            raise RunExists(
                f"The recipe changed since the run in {path.parent} started (different: "
                f"{', '.join(changed)}). --resume continues a run only with the same recipe: restore "
                "it, or pass --overwrite to start again (the old folder is kept as a backup)."
            )

    def _restore(self, method: TrainableMethod, ckpt: Path, device: torch.device) -> tuple[int, float]:
        state = load_state(ckpt, device="cpu")
        method.load_state_dict(state["model"])
        for name, opt in method.optimizers().items():
            opt.load_state_dict(state["optim"][name])
        torch.set_rng_state(state["rng"])
        method.to(device)
        return int(state["epoch"]), float(state["elapsed"])

    def _save(self, method: TrainableMethod, ckpt: Path, epoch: int, elapsed: float) -> None:
        state = {
            "model": dict(method.state_dict()),
            "optim": {k: o.state_dict() for k, o in method.optimizers().items()},
            "rng": torch.get_rng_state(),
            "epoch": epoch,
            "elapsed": elapsed,
        }
        save_state(ckpt, state)

    def _batches(
        self, method: TrainableMethod, data: RunData, seed: int, epoch: int, steps: int, device: torch.device
    ) -> Iterator[Labeled | DomainPair]:
        bs = self.recipe.train.batch_size
        src = data.train.batches(bs, shuffle=True, generator=epoch_generator(seed, epoch, 0), drop_last=True)
        augment = _augmenter(self.recipe.train.augment)
        aug_gen = epoch_generator(seed, epoch, 2)
        if method.batch_kind == "domain_pair":
            assert data.target is not None
            tgen = epoch_generator(seed, epoch, 1)
            n_t = len(data.target)
            order = torch.randperm(n_t, generator=tgen)
            pos = 0
        for i, batch in enumerate(src):
            if i >= steps:
                return
            x = batch.x.to(device)
            if augment is not None:
                x = augment(x, aug_gen)
            lab = Labeled(memory_format(x, self.channels_last), batch.y.to(device))
            if method.batch_kind == "domain_pair":
                if pos + bs > n_t:
                    order, pos = torch.randperm(n_t, generator=tgen), 0
                tx = data.target.float_x(order[pos : pos + bs]).to(device)
                pos += bs
                if augment is not None:
                    tx = augment(tx, aug_gen)
                yield DomainPair(lab, memory_format(tx, self.channels_last))
            else:
                yield lab

    def _train(
        self,
        method: TrainableMethod,
        data: RunData,
        device: torch.device,
        seed: int,
        out: Path,
        ckpt: Path,
        start_epoch: int,
        elapsed: float,
        loggers: list[Any],
    ) -> float:
        t = self.recipe.train
        steps = len(data.train) // t.batch_size
        if t.max_steps_per_epoch:
            steps = min(steps, t.max_steps_per_epoch)
        if steps == 0:
            raise ShiftlabError(
                f"The source training set has {len(data.train)} items, fewer than one batch of "
                f"{t.batch_size}; lower train.batch_size."
            )
        total = t.epochs * steps
        method.set_schedule(t.epochs, steps)
        with _progress(self.options.progress) as bar:
            task = bar.add_task(f"{self.recipe.name} seed {seed}", total=total, completed=start_epoch * steps)
            for epoch in range(start_epoch, t.epochs):
                t0 = time.perf_counter()
                sums: dict[str, float] = {}
                n = 0
                for i, batch in enumerate(self._batches(method, data, seed, epoch, steps, device)):
                    method.set_progress((epoch * steps + i) / total)
                    if self.dist is not None:
                        batch = self.dist.shard(batch)
                        self.dist.watch(list(method.optimizers().values()))
                    with train_autocast(device, t.precision):
                        losses = method.update(batch)
                    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                    if bad:
                        raise TrainingError(
                            f"The loss became {', '.join(f'{k}={v}' for k, v in bad.items())} at epoch "
                            f"{epoch + 1}, step {i + 1} of {out}. Training diverged: lower the learning rate "
                            f"(now --set train.lr={t.lr}), check the input data for NaN/inf, or change the "
                            "method's hyper-parameters. Results and the checkpoint of the last finished "
                            "epoch are intact; after fixing, rerun with --overwrite."
                        )
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    n += 1
                    bar.advance(task)
                elapsed += time.perf_counter() - t0
                train_metrics = {f"train/{k}": v / max(n, 1) for k, v in sums.items()}
                if self.dist is not None:
                    self.dist.average_buffers(method)
                    train_metrics = self.dist.average_floats(train_metrics)
                    if not self.main:
                        continue  # rank 0 evaluates and saves
                if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                    record = self._evaluate(method, data, device, epoch, (epoch + 1) * steps, elapsed,
                                            train_metrics)
                    append_jsonl(out / "results.jsonl", record)
                    for lg in loggers:
                        lg.log(record["metrics"], record["step"])
                    if self.on_epoch:
                        self.on_epoch(seed, epoch, record)
                self._save(method, ckpt, epoch + 1, elapsed)
        return elapsed

    def _evaluate(
        self, method: Method, data: RunData, device: torch.device, epoch: int, step: int, elapsed: float,
        train_metrics: dict[str, float],
    ) -> dict[str, Any]:
        bs = self.options.eval_batch_size
        metrics = dict(train_metrics)
        cl = self.channels_last
        if data.val is not None:
            metrics["source_val/acc"] = accuracy(method, data.val, bs, device, cl)
        metrics.update(evaluate_sets(method, data, self.recipe.data.eval, bs, device, cl))
        return {"epoch": epoch, "step": step, "elapsed_s": round(elapsed, 3), "metrics": metrics}

    def _select(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        if not records:
            return {}
        if self.recipe.selection == "source_val":
            return max(records, key=lambda r: (r["metrics"].get("source_val/acc", -1.0), -r["epoch"]))
        return records[-1]

    def _plot(self, records: list[dict[str, Any]], out: Path) -> None:
        try:
            from shiftlab.plots import learning_curves

            learning_curves(records, out / "curves.png", title=f"{self.recipe.name} ({variant_label(self.overrides)})")
        except Exception as exc:  # a plot must never lose a finished run
            log.warning("could not draw curves.png: %s", exc)


@torch.no_grad()
def _embed(method: Method, data: RunData, device: torch.device, n: int = 500) -> dict[str, torch.Tensor]:
    """Features ``[2n, D]`` of the first ``n`` source and target(-eval) items, with domain and labels."""
    method.eval()
    tgt = next((v for k, v in data.evals.items() if not k.startswith(f"{data.train.name}/")), None)
    if tgt is None:
        return {}
    src_x, tgt_x = data.train.float_x(slice(0, n)), tgt.float_x(slice(0, n))
    feats = method.backbone.forward_features(torch.cat([src_x, tgt_x]).to(device)).float().cpu()
    domain = torch.cat([torch.zeros(len(src_x)), torch.ones(len(tgt_x))]).long()
    labels = torch.cat([data.train.y[:n], tgt.y[:n]])
    return {"f": feats, "d": domain, "y": labels, "names": (data.train.name, tgt.name)}


def _plot_embeddings(before: dict | None, after: dict, data: RunData, out: Path) -> None:
    """PCA of source vs target features before and after adaptation -> ``embedding_*.png``."""
    from shiftlab.plots import embedding_scatter

    for tag, emb in (("before", before), ("after", after)):
        if not emb:
            continue
        try:
            f = emb["f"] - emb["f"].mean(0)
            _, _, v = torch.pca_lowrank(f, q=2, center=False)
            xy = f @ v[:, :2]
            embedding_scatter(xy, emb["d"], emb["y"], out / f"embedding_{tag}.png",
                              title=f"features {tag} adaptation (PCA)",
                              domain_names={0: emb["names"][0], 1: emb["names"][1]})
        except Exception as exc:  # a plot must never lose a finished run
            log.warning("could not draw embedding_%s.png: %s", tag, exc)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _augmenter(name: str) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    if name == "none":
        return None
    from shiftlab.data import augment

    presets = {"digits_uda": augment.digits_uda, "digits_strong": augment.digits_strong}
    if name not in presets:
        raise ShiftlabError(f"Unknown train.augment {name!r}; use none or one of: {', '.join(presets)}.")
    return presets[name]().apply


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, task: int, n: int = 1) -> None:
        return None


def _progress(enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty() or os.environ.get("SHIFTLAB_NO_PROGRESS"):
        return _NullProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    )


class _TensorBoard:
    def __init__(self, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ShiftlabError("--log tensorboard needs the tensorboard extra: pip install 'shiftlab[tensorboard]'") from exc
        self.w = SummaryWriter(str(out / "tb"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.close()


class _MLflow:
    def __init__(self, out: Path) -> None:
        try:
            import mlflow
        except ImportError as exc:
            raise ShiftlabError("--log mlflow needs the mlflow extra: pip install 'shiftlab[mlflow]'") from exc
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=str(out))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("+", "_").replace("@", "_"): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _make_loggers(names: tuple[str, ...], out: Path) -> list[Any]:
    makers = {"tensorboard": _TensorBoard, "mlflow": _MLflow}
    loggers = []
    for n in names:
        if n not in makers:
            raise ShiftlabError(f"Unknown logger {n!r}; use tensorboard or mlflow.")
        loggers.append(makers[n](out))
    return loggers
