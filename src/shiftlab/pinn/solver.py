"""Physics-informed solvers for ODE problems and bundles of problems, and their transfer.

A :class:`Solver` trains a :class:`~shiftlab.pinn.nets.SolutionNet` so that the ODE
residual ``r = dz/dt - f(t, z, theta)`` vanishes on collocation points of
``[t0, t1] x box`` (Lagaris, Likas & Fotiadis 1998). The loss is the mean squared residual
over points and state components; curves report its natural log (the source document's
"LogLoss"). With bundle dimensions (initial values and/or parameters given as ranges) the
same network answers every problem of the box without retraining (Flamant, Protopapas &
Sondak 2020, "Solving differential equations using neural network solution bundles";
:class:`BundleSolver`). :meth:`Solver.fine_tune` transfers a trained solver to a
perturbed problem or a shifted box (the source document's transfer experiments).

Training is Adam on collocation points (a fixed grid, per-epoch uniform resampling,
per-epoch jittered grid, or per-epoch Latin hypercube), then an optional second-order
refinement on a fixed point set:

* ``lbfgs``: ``torch.optim.LBFGS`` with a strong-Wolfe line search;
* ``lm``: Levenberg-Marquardt (Levenberg 1944; Marquardt 1963) on the residual vector,
  ``(J^T J + mu diag(J^T J)) delta = -J^T r`` with an adaptive damping ``mu``. For the
  small networks these problems need (a few thousand weights) it reaches residuals
  several orders of magnitude below L-BFGS in the same time; the per-sample Jacobian
  ``J`` is assembled from one forward-mode pass and ``n_state`` backward passes through
  the recorded layer intermediates (no Python loop over points or weights).

Time derivatives always come from the network's forward-mode pass
(:meth:`~shiftlab.pinn.nets.MLP.forward_tangent`). Everything runs on CPU; a ``device``
argument moves it elsewhere.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from shiftlab.errors import TrainingError
from shiftlab.io import load_state, save_state
from shiftlab.pinn.box import Box
from shiftlab.pinn.nets import LayerTrace, NetConfig, SolutionNet
from shiftlab.pinn.systems import OdeSystem, resolve_system

log = logging.getLogger(__name__)

__all__ = [
    "SAMPLERS",
    "BundleSolver",
    "History",
    "Solver",
    "TrainConfig",
    "sample_points",
]

Sampler = Literal["grid", "uniform", "stratified", "lhs"]
SAMPLERS: dict[str, str] = {
    "grid": "a fixed tensor grid over [t0, t1] x box (edges included), the same every epoch",
    "uniform": "i.i.d. uniform points, redrawn every epoch",
    "stratified": "a jittered grid in t (one uniform point per cell) and uniform bundle coordinates, redrawn every epoch",
    "lhs": "a Latin hypercube over [t0, t1] x box, redrawn every epoch",
}
FORMAT = "shiftlab-pinn-solver-1"


@dataclass(frozen=True)
class TrainConfig:
    """How a solver is trained.

    Attributes:
        points: collocation points per epoch (the source document: 2,000 on [0, 20]).
        sampler: one of :data:`SAMPLERS`.
        epochs: Adam epochs (one full-batch step each).
        lr: Adam learning rate.
        lr_final: if set, the learning rate decays exponentially to this value over the
            Adam epochs.
        refine: second-order refinement after Adam: ``none``, ``lbfgs`` or ``lm``.
        refine_steps: L-BFGS iterations or Levenberg-Marquardt steps.
        refine_points: points of the fixed refinement set (default: ``points``); drawn
            once with ``sampler`` (``grid``: the grid).
        margin: sample collocation points from the box widened by this fraction of each
            range (and of the time span past ``t1``), so that the box edges are learned
            as well as its interior (see :func:`sample_points`).
        target_ln_loss: stop as soon as ln(validation residual MSE) is at or below this.
        time_limit_s: stop training after this many seconds (checked at log points).
        log_every: Adam epochs between history records (refinement logs every step).
        val_points: size of the fixed held-out point set the validation loss uses.
    """

    points: int = 2000
    sampler: Sampler = "grid"
    epochs: int = 1000
    lr: float = 1e-3
    lr_final: float | None = None
    refine: Literal["none", "lbfgs", "lm"] = "lm"
    refine_steps: int = 100
    refine_points: int | None = None
    margin: float = 0.0
    target_ln_loss: float | None = None
    time_limit_s: float | None = None
    log_every: int = 50
    val_points: int = 1000

    def __post_init__(self) -> None:
        if self.points < 1 or self.epochs < 0 or self.refine_steps < 0 or self.log_every < 1:
            raise ValueError("points, log_every >= 1 and epochs, refine_steps >= 0 are required")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {sorted(SAMPLERS)}")
        if self.refine not in ("none", "lbfgs", "lm"):
            raise ValueError(f"unknown refine {self.refine!r}; choose none, lbfgs or lm")
        if not self.lr > 0 or (self.lr_final is not None and not self.lr_final > 0):
            raise ValueError("lr and lr_final must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """Training records, one per log point.

    Each record: ``epoch`` (optimisation steps so far: Adam epochs, then L-BFGS
    iterations or LM steps), ``phase`` (``adam``/``lbfgs``/``lm``), ``ln_loss`` (training
    points), ``ln_loss_val`` (the fixed held-out points), ``elapsed_s`` (training time,
    excluding logging callbacks), ``lr``.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""

    @property
    def final_ln_loss(self) -> float:
        return self.records[-1]["ln_loss_val"] if self.records else math.nan

    @property
    def epochs(self) -> int:
        return self.records[-1]["epoch"] if self.records else 0

    def first(self, ln_loss: float, key: str = "ln_loss_val") -> dict[str, Any] | None:
        """The first record with ``record[key] <= ln_loss`` (``None`` if never)."""
        for r in self.records:
            if r[key] <= ln_loss:
                return r
        return None

    def epochs_to(self, ln_loss: float) -> int | None:
        r = self.first(ln_loss)
        return None if r is None else int(r["epoch"])

    def seconds_to(self, ln_loss: float) -> float | None:
        r = self.first(ln_loss)
        return None if r is None else float(r["elapsed_s"])


# ----------------------------------------------------------------------------- sampling


def _lhs(n: int, d: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Latin hypercube in ``[0, 1]^d``: ``[n, d]`` (McKay, Beckman & Conover 1979)."""
    cells = torch.stack([torch.randperm(n, generator=gen) for _ in range(d)], 1).to(dtype)
    return (cells + torch.rand(n, d, generator=gen, dtype=dtype)) / n


def sample_points(
    box: Box,
    n: int,
    sampler: str,
    gen: torch.Generator | None,
    dtype: torch.dtype = torch.float64,
    margin: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Collocation points in ``[t0, t1] x box``.

    Args:
        box: the problems.
        n: number of points (``grid`` uses ``m^(1 + k)`` points with ``m = round(n^(1/(1+k)))``).
        sampler: one of :data:`SAMPLERS`.
        gen: random generator (unused by ``grid``).
        dtype: floating dtype.
        margin: widen every bundle range, and the end ``t1`` of the time span, by this
            fraction of its length (``t0`` stays: the initial condition lives there), so the
            edges of the box are interior points of the training set.

    Returns:
        ``t: [N, 1]`` and ``u: [N, k]``.
    """
    t0, t1 = box.t_span
    k = box.k
    lo = torch.tensor([t0, *box.lows], dtype=dtype)
    hi = torch.tensor([t1, *box.highs], dtype=dtype)
    if margin:
        pad = margin * (hi - lo)
        pad[0] = 0.0
        lo, hi = lo - pad, hi + pad
        hi[0] = t1 + margin * (t1 - t0)
        t1 = float(hi[0])
    if sampler == "grid":
        if k == 0:
            x = torch.linspace(float(lo[0]), float(hi[0]), n, dtype=dtype).unsqueeze(1)
        else:
            m = max(2, round(n ** (1 / (1 + k))))
            axes = [torch.linspace(a, b, m, dtype=dtype) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
            x = torch.cartesian_prod(*axes).reshape(-1, 1 + k)
        return x[:, :1].contiguous(), x[:, 1:].contiguous()
    if sampler == "uniform":
        x = lo + (hi - lo) * torch.rand(n, 1 + k, generator=gen, dtype=dtype)
    elif sampler == "stratified":
        cell = (torch.arange(n, dtype=dtype) + torch.rand(n, generator=gen, dtype=dtype)) / n
        rest = torch.rand(n, k, generator=gen, dtype=dtype)
        x = lo + (hi - lo) * torch.cat([cell.unsqueeze(1), rest], 1)
    elif sampler == "lhs":
        x = lo + (hi - lo) * _lhs(n, 1 + k, gen, dtype)  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
    return x[:, :1].contiguous(), x[:, 1:].contiguous()


# ----------------------------------------------------------------------------- solver


class Solver:
    """A PINN for one problem or a box of problems of an ODE system.

    Args:
        system: an :class:`OdeSystem`, a registry name or ``module:function``.
        t_span: ``(t0, t1)``.
        ic: initial values by state name (number, ``[low, high]`` or ``"remainder"``).
        params: parameter values by name (number or ``[low, high]``).
        bundle: ranges by state or parameter name (override ``ic``/``params``).
        net: the MLP (default :class:`NetConfig`, the source document's SIR network).
        box: a ready :class:`Box` (instead of ``t_span``/``ic``/``params``/``bundle``).
        dtype: floating dtype of weights and points (float64 by default: the errors
            targeted here, ~1e-5, are below what float32 residuals can resolve).
        seed: seeds weight initialisation and point sampling.
        device: torch device.

    Example:
        >>> s = Solver("sir", (0, 20), ic={"S": 0.8, "I": 0.2, "R": 0.0},
        ...            params={"beta": 0.8, "gamma": 0.2}, net=NetConfig(32, 2))
        >>> hist = s.fit(TrainConfig(epochs=200, refine="lm", refine_steps=30))  # doctest: +SKIP
        >>> s.predict(torch.linspace(0, 20, 5)).shape  # doctest: +SKIP
        torch.Size([5, 3])
    """

    def __init__(
        self,
        system: OdeSystem | str,
        t_span: Sequence[float] = (0.0, 1.0),
        ic: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        bundle: Mapping[str, Any] | None = None,
        net: NetConfig | None = None,
        *,
        box: Box | None = None,
        dtype: torch.dtype = torch.float64,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        sys_ = resolve_system(system) if isinstance(system, str) else system
        self.box = box if box is not None else Box.create(sys_, t_span, ic, params, bundle)
        self.system = self.box.system
        self.dtype = dtype
        self.device = torch.device(device)
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = SolutionNet(
                self.system.n_state, self.box.t_span, self.box.lows, self.box.highs, net or NetConfig()
            ).to(device=self.device, dtype=dtype)
        self.history = History()
        self._epoch = 0

    # ------------------------------------------------------------------ basics
    @property
    def n_weights(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _t(self, x: Any) -> Tensor:
        return torch.as_tensor(x, dtype=self.dtype, device=self.device)

    def residual(self, t: Tensor, u: Tensor, trace: list[LayerTrace] | None = None) -> Tensor:
        """ODE residual ``dz/dt - f(t, z, theta)``.

        Args:
            t: times, ``[B, 1]``.
            u: bundle coordinates, ``[B, k]``.
            trace: optional list receiving the network's per-layer intermediates.

        Returns:
            ``[B, n_state]``.
        """
        z0, theta = self.box.expand(u)
        z, dz = self.net.value_and_dt(t, u, z0, trace)
        return dz - self.system.f(t, z, theta)

    def loss(self, t: Tensor, u: Tensor) -> Tensor:
        """Mean squared residual over points and state components (a scalar)."""
        return self.residual(t, u).pow(2).mean()

    @torch.no_grad()
    def ln_loss(self, t: Tensor, u: Tensor, chunk: int = 65536) -> float:
        """``ln`` of the mean squared residual on the given points (evaluated in chunks)."""
        total, count = 0.0, 0
        for i in range(0, t.shape[0], chunk):
            r = self.residual(t[i : i + chunk], u[i : i + chunk])
            total += float(r.pow(2).sum())
            count += r.numel()
        return math.log(max(total / max(count, 1), 1e-300))

    @torch.no_grad()
    def ln_loss_per_problem(self, u: Tensor, n_t: int = 200) -> Tensor:
        """``ln`` residual MSE of each problem on an even ``t`` grid.

        Args:
            u: bundle coordinates of the problems, ``[P, k]`` (inside or outside the box).
            n_t: time points per problem.

        Returns:
            ``[P]``.
        """
        u = self._t(u)
        t = torch.linspace(*self.box.t_span, n_t, dtype=self.dtype, device=self.device)
        tt = t.repeat(u.shape[0]).unsqueeze(1)
        uu = u.repeat_interleave(n_t, 0)
        r = self.residual(tt, uu).pow(2).reshape(u.shape[0], -1).mean(1)
        return r.clamp_min(1e-300).log()

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, t: Any, z0: Any = None, theta: Any = None) -> Tensor:
        """Solutions at times ``t`` for initial states ``z0`` and parameters ``theta``.

        The network's bundle inputs are read from ``z0``/``theta``; the initial state is
        imposed exactly. For a single-problem solver a different ``z0`` gives the
        "perturbed initial condition without retraining" answer of the source document.

        Args:
            t: times, ``[T]``.
            z0: ``[n_state]`` or ``[B, n_state]`` (default: the box centre).
            theta: ``[n_params]`` or ``[B, n_params]`` (default: the box centre).

        Returns:
            ``[T, n_state]`` if neither ``z0`` nor ``theta`` is batched, else ``[B, T, n_state]``.
        """
        t = self._t(t).reshape(-1)
        dz0, dth = self.box.defaults(self.dtype)
        z0_t = self._t(z0) if z0 is not None else dz0.to(self.device)
        th_t = self._t(theta) if theta is not None else dth.to(self.device)
        batched = z0_t.dim() == 2 or th_t.dim() == 2
        z0_t = z0_t.reshape(-1, self.system.n_state)
        th_t = th_t.reshape(-1, self.system.n_params)
        b = max(z0_t.shape[0], th_t.shape[0])
        z0_t = z0_t.expand(b, -1)
        th_t = th_t.expand(b, -1)
        u = self.box.coords(z0_t, th_t)
        out = self._predict_u(t, u, z0_t)
        return out if batched else out[0]

    def _predict_u(self, t: Tensor, u: Tensor, z0: Tensor) -> Tensor:
        b, nt = u.shape[0], t.shape[0]
        tt = t.repeat(b).unsqueeze(1)
        z = self.net(tt, u.repeat_interleave(nt, 0), z0.repeat_interleave(nt, 0))
        return z.reshape(b, nt, -1)

    @torch.no_grad()
    def predict_coords(self, t: Any, u: Any) -> Tensor:
        """Solutions for bundle coordinates ``u: [B, k]`` at times ``t: [T]`` -> ``[B, T, n]``."""
        u = self._t(u).reshape(-1, self.box.k)
        z0, _ = self.box.expand(u)
        return self._predict_u(self._t(t).reshape(-1), u, z0)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: TrainConfig | None = None,
        callback: Callable[[Solver, dict[str, Any]], bool | None] | None = None,
        points: tuple[Tensor, Tensor] | None = None,
    ) -> History:
        """Train on the current box; returns this call's :class:`History`.

        Args:
            train: schedule (default :class:`TrainConfig`).
            callback: called at every log point as ``callback(solver, record)``; its time
                is not counted in ``elapsed_s``; returning ``True`` stops training.
            points: fixed collocation points ``(t [N, 1], u [N, k])`` to use for every epoch
                and the refinement instead of ``train.sampler``/``train.points``.

        Raises:
            TrainingError: the loss became NaN or infinite.
        """
        cfg = train or TrainConfig()
        hist = History()
        gen = torch.Generator().manual_seed(self.seed * 7919 + 17)
        vgen = torch.Generator().manual_seed(self.seed * 104729 + 3)
        vt, vu = self._points(cfg.val_points, "lhs" if self.box.k else "uniform", vgen)
        clock = _Clock()
        epoch = 0

        def record(phase: str, train_ln: float, lr: float) -> bool:
            clock.pause()
            rec = {
                "epoch": epoch,
                "phase": phase,
                "ln_loss": train_ln,
                "ln_loss_val": self.ln_loss(vt, vu),
                "elapsed_s": clock.elapsed,
                "lr": lr,
            }
            if not math.isfinite(rec["ln_loss_val"]):
                raise TrainingError(
                    f"the PINN residual became {rec['ln_loss_val']} at {phase} step {epoch}; "
                    "lower the learning rate (train.lr) or use a smaller box"
                )
            hist.records.append(rec)
            stop = bool(callback(self, rec)) if callback is not None else False
            if cfg.target_ln_loss is not None and rec["ln_loss_val"] <= cfg.target_ln_loss:
                hist.stopped, stop = f"target ln loss {cfg.target_ln_loss} reached", True
            elif cfg.time_limit_s is not None and clock.elapsed >= cfg.time_limit_s:
                hist.stopped, stop = f"time limit {cfg.time_limit_s} s reached", True
            elif stop and not hist.stopped:
                hist.stopped = "stopped by callback"
            clock.resume()
            return stop

        clock.resume()
        if points is not None:
            fixed: tuple[Tensor, Tensor] | None = (self._t(points[0]), self._t(points[1]))
            cfg = replace(cfg, points=int(points[0].shape[0]), refine_points=None)
        elif cfg.sampler == "grid":
            fixed = self._points(cfg.points, "grid", gen, cfg.margin)
        else:
            fixed = None
        with torch.no_grad():
            pts0 = fixed or self._points(cfg.points, cfg.sampler, gen, cfg.margin)
            first_ln = math.log(max(float(self.loss(*pts0)), 1e-300))
        stop = record("init", first_ln, cfg.lr)
        if cfg.epochs and not stop:
            opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
            gamma = (cfg.lr_final / cfg.lr) ** (1 / cfg.epochs) if cfg.lr_final else 1.0
            for ep in range(cfg.epochs):
                pts = fixed or self._points(cfg.points, cfg.sampler, gen, cfg.margin)
                opt.zero_grad(set_to_none=True)
                loss = self.loss(*pts)
                loss.backward()
                opt.step()
                if gamma != 1.0:
                    for g in opt.param_groups:
                        g["lr"] *= gamma
                epoch += 1
                if epoch % cfg.log_every == 0 or ep == cfg.epochs - 1:
                    lv = loss.item()
                    if record("adam", math.log(lv) if lv > 0 else -math.inf, opt.param_groups[0]["lr"]):
                        stop = True
                        break
        if cfg.refine != "none" and cfg.refine_steps and not stop:
            n_ref = cfg.refine_points or cfg.points
            if fixed is not None and n_ref == cfg.points:
                pts = fixed
            else:
                pts = self._points(n_ref, cfg.sampler, gen, cfg.margin)
            refine = self._lbfgs if cfg.refine == "lbfgs" else self._lm

            def on_step(ln: float, steps: int) -> bool:
                nonlocal epoch
                epoch = steps
                return record(cfg.refine, ln, 1.0)

            refine(pts, cfg.refine_steps, epoch, on_step)
        clock.pause()
        hist.seconds = clock.elapsed
        self._epoch += epoch
        self.history.records.extend(hist.records)
        self.history.seconds += hist.seconds
        log.info(
            "PINN %s: %d steps in %.1f s, ln(residual MSE) = %.2f%s",
            self.box.describe(), epoch, hist.seconds, hist.final_ln_loss,
            f" ({hist.stopped})" if hist.stopped else "",
        )
        return hist

    def _points(self, n: int, sampler: str, gen: torch.Generator, margin: float = 0.0) -> tuple[Tensor, Tensor]:
        t, u = sample_points(self.box, n, sampler, gen, self.dtype, margin)
        return t.to(self.device), u.to(self.device)

    def _lbfgs(
        self, pts: tuple[Tensor, Tensor], steps: int, start: int, on_step: Callable[[float, int], bool]
    ) -> None:
        params = list(self.net.parameters())
        chunk = 10
        opt = torch.optim.LBFGS(
            params, lr=1.0, max_iter=chunk, history_size=100, line_search_fn="strong_wolfe",
            tolerance_grad=0.0, tolerance_change=0.0,
        )

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = self.loss(*pts)
            loss.backward()
            return loss

        done = 0
        while done < steps:
            opt.param_groups[0]["max_iter"] = min(chunk, steps - done)
            opt.param_groups[0]["max_eval"] = int(1.25 * opt.param_groups[0]["max_iter"]) + 1
            before = opt.state[params[0]].get("n_iter", 0) if params[0] in opt.state else 0
            opt.step(closure)
            after = opt.state[params[0]].get("n_iter", before)
            done += max(after - before, 1)
            with torch.no_grad():
                ln = math.log(max(float(self.loss(*pts)), 1e-300))
            if on_step(ln, start + done):
                return
            if after == before:
                break

    def _jacobian(self, t: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Residuals ``[B * n]`` and their Jacobian w.r.t. all weights ``[B * n, P]``.

        One forward-mode pass records each linear layer's input ``x``, its time derivative
        ``dx`` and the outputs ``h = W x + b``, ``dh = W dx``; ``n_state`` backward passes give
        ``g_h = dr_k/dh`` and ``g_dh = dr_k/d(dh)`` per sample, and the per-sample Jacobian
        blocks are ``dr_k/dW = g_h x^T + g_dh dx^T`` and ``dr_k/db = g_h``.
        """
        trace: list[LayerTrace] = []
        with torch.enable_grad():
            r = self.residual(t, u, trace)
            targets = [tr.h for tr in trace] + [tr.dh for tr in trace]
            n_layers = len(trace)
            n = r.shape[1]
            rows = []
            for k in range(n):
                grads = torch.autograd.grad(r[:, k].sum(), targets, retain_graph=k < n - 1, allow_unused=True)
                blocks = []
                for li, tr in enumerate(trace):
                    g_h = grads[li] if grads[li] is not None else torch.zeros_like(tr.h)
                    g_dh = grads[n_layers + li] if grads[n_layers + li] is not None else torch.zeros_like(tr.dh)
                    jw = torch.einsum("bo,bi->boi", g_h, tr.x) + torch.einsum("bo,bi->boi", g_dh, tr.dx)
                    blocks += [jw.reshape(jw.shape[0], -1), g_h]
                rows.append(torch.cat(blocks, 1))
        jac = torch.stack(rows, 1).reshape(-1, rows[0].shape[1])
        return r.detach().reshape(-1), jac.detach()

    def _normal_equations(self, pts: tuple[Tensor, Tensor], n_w: int) -> tuple[Tensor, Tensor, float]:
        t, u = pts
        n = self.system.n_state
        chunk = max(64, int(2**24 // max(n * n_w, 1)))  # ~128 MB of float64 Jacobian per chunk
        a = torch.zeros(n_w, n_w, dtype=torch.float64, device=self.device)
        g = torch.zeros(n_w, dtype=torch.float64, device=self.device)
        sq = 0.0
        for i in range(0, t.shape[0], chunk):
            r, jac = self._jacobian(t[i : i + chunk], u[i : i + chunk])
            jac = jac.to(torch.float64)
            r = r.to(torch.float64)
            a.addmm_(jac.T, jac)
            g.addmv_(jac.T, r)
            sq += float(r @ r)
        return a, g, sq

    def _lm(
        self, pts: tuple[Tensor, Tensor], steps: int, start: int, on_step: Callable[[float, int], bool]
    ) -> None:
        params = list(self.net.parameters())
        n_w = sum(p.numel() for p in params)
        if n_w > 12000:
            raise TrainingError(
                f"Levenberg-Marquardt needs a {n_w}x{n_w} matrix per step for this {n_w}-weight network; "
                "use train.refine=lbfgs or a smaller net (width/depth)"
            )
        n_res = pts[0].shape[0] * self.system.n_state
        mu = 1e-3
        for step in range(1, steps + 1):
            a, g, sq = self._normal_equations(pts, n_w)
            theta = torch.nn.utils.parameters_to_vector(params).detach().to(torch.float64)
            diag = torch.diagonal(a).clamp_min(1e-12)
            accepted = False
            for _ in range(12):
                lhs = a + torch.diag(mu * diag)
                chol, info = torch.linalg.cholesky_ex(lhs)
                if int(info) != 0:
                    mu *= 10
                    continue
                delta = torch.cholesky_solve(-g.unsqueeze(1), chol).squeeze(1)
                torch.nn.utils.vector_to_parameters((theta + delta).to(self.dtype), params)
                with torch.no_grad():
                    new_sq = float(self.residual(*pts).pow(2).sum())
                if math.isfinite(new_sq) and new_sq < sq:
                    sq = new_sq
                    mu = max(mu / 3, 1e-12)
                    accepted = True
                    break
                mu *= 4
            if not accepted:
                torch.nn.utils.vector_to_parameters(theta.to(self.dtype), params)
                log.info("Levenberg-Marquardt: no decrease after damping to mu=%.1e; stopping", mu)
                on_step(math.log(max(sq / n_res, 1e-300)), start + step)
                return
            if on_step(math.log(max(sq / n_res, 1e-300)), start + step):
                return

    # ------------------------------------------------------------------ transfer
    def fine_tune(
        self,
        box: Box | None = None,
        *,
        t_span: Sequence[float] | None = None,
        ic: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        bundle: Mapping[str, Any] | None = None,
        train: TrainConfig | None = None,
        callback: Callable[[Solver, dict[str, Any]], bool | None] | None = None,
    ) -> History:
        """Transfer: move to a perturbed problem or shifted box and continue training.

        The network (weights and input scaling) is kept; only the problems change. The
        target must have the same bundle dimensions and remainder component as the
        current box (e.g. I0, R0 in [0.1, 0.2] -> [0.3, 0.4]).

        Args:
            box: the target box, or give changes via ``t_span``/``ic``/``params``/``bundle``.
            train: fine-tuning schedule (default :class:`TrainConfig`).
            callback: as in :meth:`fit`.

        Returns:
            The fine-tuning :class:`History`.
        """
        target = box if box is not None else self.box.replace(t_span, ic, params, bundle)
        if target.system.name != self.system.name:
            raise ValueError(f"cannot transfer a {self.system.name!r} solver to a {target.system.name!r} box")
        if target.structure() != self.box.structure():
            raise ValueError(
                f"the target box has bundle dims/remainder {target.structure()} but the solver was "
                f"built for {self.box.structure()}; they must match to reuse the network"
            )
        self.box = target
        self.net.t0 = target.t_span[0]
        return self.fit(train, callback)

    def copy(self) -> Solver:
        """An independent copy (same class, box, weights)."""
        other = self.__class__.__new__(self.__class__)
        other.__dict__.update(self.__dict__)
        other.net = SolutionNet.from_spec(self.net.spec()).to(device=self.device, dtype=self.dtype)
        other.net.load_state_dict(self.net.state_dict())
        other.net.t0 = self.net.t0
        other.history = History(list(self.history.records), self.history.seconds, self.history.stopped)
        return other

    # ------------------------------------------------------------------ save / load
    def spec(self) -> dict[str, Any]:
        """JSON-safe description: system, box, network, dtype."""
        return {
            "format": FORMAT,
            "class": type(self).__name__,
            "system": self.system.describe(),
            "box": self.box.to_dict(),
            "net": self.net.spec(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "seed": self.seed,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (spec); returns the JSON path."""
        weights = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        return save_state(Path(path), {"spec": self.spec(), "weights": weights})

    @classmethod
    def load(
        cls, path: str | Path, system: OdeSystem | None = None, device: str | torch.device = "cpu"
    ) -> Solver:
        """Load a solver written by :meth:`save` (never unpickles).

        Args:
            path: the ``.json``/``.safetensors`` path or their common stem.
            system: the system, needed when it is not a registry name or ``module:function``.
            device: where to put the network.
        """
        state = load_state(Path(path), device="cpu")
        spec = state["spec"]
        if spec.get("format") != FORMAT:
            raise ValueError(f"{path}: not a shiftlab PINN solver (format {spec.get('format')!r})")
        sd = spec["system"]
        sys_ = system or resolve_system(sd["name"], sd["state"], sd["params"])
        box = Box.from_dict(sys_, spec["box"])
        dtype = getattr(torch, spec["dtype"])
        klass: type[Solver] = BundleSolver if spec.get("class") == "BundleSolver" else Solver
        if issubclass(cls, klass):
            klass = cls  # a user subclass
        obj = klass.__new__(klass)
        obj.box, obj.system, obj.dtype, obj.device = box, sys_, dtype, torch.device(device)
        obj.seed = int(spec.get("seed", 0))
        obj.net = SolutionNet.from_spec(spec["net"]).to(dtype=dtype)
        obj.net.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state["weights"].items()})
        obj.net.to(obj.device)
        obj.history = History()
        obj._epoch = 0
        return obj


class BundleSolver(Solver):
    """A :class:`Solver` over a box with at least one range (a solution bundle).

    One trained network answers every initial state/parameter of its box without
    retraining (Flamant, Protopapas & Sondak 2020); the inputs are ``(t, u)`` with ``u`` the
    bundle coordinates (e.g. ``(I0, R0, beta, gamma)`` for the source document's 4-D box).
    """

    def __init__(
        self,
        system: OdeSystem | str,
        t_span: Sequence[float] = (0.0, 1.0),
        ic: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        bundle: Mapping[str, Any] | None = None,
        net: NetConfig | None = None,
        *,
        box: Box | None = None,
        dtype: torch.dtype = torch.float64,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(system, t_span, ic, params, bundle, net, box=box, dtype=dtype, seed=seed, device=device)
        if not self.box.is_bundle:
            raise ValueError("a BundleSolver needs at least one range in ic/params/bundle; use Solver")


class _Clock:
    """Wall-clock time that can be paused (logging is not counted as training time)."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._since: float | None = None

    def resume(self) -> None:
        self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self.elapsed += time.perf_counter() - self._since
            self._since = None
