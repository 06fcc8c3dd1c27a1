"""`verify`: every input certified robust, refuted by a counterexample, or (out of time) unknown.

A cascade, each stage on what the previous left open (docs/maths.md#verification):

1. ``linear`` certificates (interval, then linear bounds through the encoder): batched, cheap;
2. the centre itself, then PGD: a candidate refutes only if it lies in the ball and the input range
   and both the exact equilibrium (a tight float64 solve with its error bound charged) and the
   model as given (its dtype, its eval-mode solver) misclassify it;
3. branch and bound over ReLU phases with LP relaxations (`nemon.verification.search`), each
   closing bound recomputed rigorously from the LP's multipliers.

A certified verdict holds for the exact equilibrium of the model's weights and, the running
charge subtracted as `nemon.certify` does, for the model as it runs.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks import pgd, project
from ..certificates import (
    _check_eval_mode,
    _check_labels,
    _check_model,
    _pair_readout_norms,
    _running_charge,
    _tight,
    certificate_obstacle,
    check_modules,
    default_certificate,
    full_float32,
    margin_bounds,
)
from ..ranges import IMAGES, InputRange, check_inside
from ..solvers import ConvergenceWarning
from ..validation import check_number
from .bounds import network_bounds, refresh_after, tighten
from .network import Network, lower_cached
from .program import build_program, safe_bound
from .search import LPSolver, minimise

__all__ = ["verify", "VerificationResult"]

#: The share of an input's search time its bound tightening may take (on conv-medium a full
#: solve of each of those LPs took 1-2 s; unlimited, they took the whole minute and left no
#: time to branch).
TIGHTEN_SHARE = 0.25
#: Simplex iterations of each tightening LP (its multipliers then bound it, `_lp_bound`).
TIGHTEN_ITERATIONS = 50


@dataclass
class VerificationResult:
    """What `verify` decided, one entry per input.

    Attributes:
        certified: robust on the whole ball (exact equilibrium and model as it runs).
        falsified: ``counterexamples[i]`` lies in the ball and the input range and both the exact
            equilibrium and the model as given misclassify it.
        counterexamples: inputs shaped like ``x`` (the input itself where not falsified).
        lower: a proven lower bound of the smallest margin ``y_label - y_j`` over the ball (the
            running charge subtracted; ``-inf`` where none was proven).
        upper: an upper bound of the exact equilibrium's smallest margin at some point of the
            ball (the best point found; negative where falsified).
        seconds: time spent on each input.
        stage: what decided each input: ``"linear"``, ``"centre"``, ``"attack"``, ``"search"``,
            or ``""`` (unknown).
        nodes: branch-and-bound nodes per input.
        reasons: why each unknown input is unknown (``"time limit"``, or robust at the exact
            equilibrium by less than the running charge, ...); ``""`` for decided ones.
    """

    certified: Tensor
    falsified: Tensor
    counterexamples: Tensor
    lower: Tensor
    upper: Tensor
    seconds: Tensor
    stage: list[str] = field(default_factory=list)
    nodes: Tensor | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def unknown(self) -> Tensor:
        return ~(self.certified | self.falsified)

    def summary(self) -> str:
        n = len(self.certified)
        c, f = int(self.certified.sum()), int(self.falsified.sum())
        acc = c / n if n else math.nan
        return (
            f"certified {c} / refuted {f} / unknown {n - c - f} of {n}: verified robust "
            f"accuracy {acc:.4f} (not refuted {(n - f) / max(n, 1):.4f})"
        )


def verify(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    input_range: InputRange = IMAGES,
    time_limit: float = 60.0,
    attack_steps: int = 50,
    attack_restarts: int = 3,
    seed: int = 0,
    progress: bool = False,
    on_verdict: Callable[[int, VerificationResult], None] | None = None,
) -> VerificationResult:
    """Decide for each input whether the model is robust on the l_inf ball of radius ``eps``.

    Args:
        model: a `Classifier` or `Ensemble` (one shared input) of NEMON, IDL or explicit
            layers with ReLU, encoders of affine modules, ReLUs and MaxPool2d, implicit layers
            inside them. MON (no sound state box) and other activations are refused by name.
        x: inputs ``(batch, *input_shape)`` in the model's dtype.
        y: their labels ``(batch,)``.
        eps: the radius.
        input_range: the range ``(lo, hi)`` the data lives in, intersected with the ball
            (None: unbounded; `nemon.ranges`); inputs outside it are an error.
        time_limit: seconds of branch and bound per input before it is left unknown.
        attack_steps: PGD's steps before the search.
        attack_restarts: PGD's restarts.
        seed: PGD's seed.
        progress: a tqdm bar over the inputs the search decides.
        on_verdict: called as ``on_verdict(i, result)`` once input ``i``'s verdict is final:
            decided, or left unknown by its search (``result`` holds every input's fields;
            entry ``i`` is final, its seconds too).

    Returns:
        A `VerificationResult`.
    """
    from .search import highspy_or_error

    highspy_or_error()
    _check_model(model)
    check_number("verify eps", eps, low=0.0)
    eps = float(eps)
    check_number("verify time_limit", time_limit, low=0.0)
    input_range = check_inside(x, input_range)
    y = _check_labels(model, x, y).to(x.device)
    _check_eval_mode(model)
    check_modules(model)
    nets = [lower_cached(c) for c in model.classifiers()]  # refuses what it cannot, by name
    model = copy.deepcopy(model).eval()
    state = _State(model, nets, x, y, eps, input_range, on_verdict)
    state.run_certificates()
    state.run_refutation(attack_steps, attack_restarts, seed)
    state.run_search(time_limit, progress)
    return state.result


class _State:
    """The result being filled in, stage by stage."""

    def __init__(self, model, nets: list[Network], x, y, eps, input_range, on_verdict) -> None:
        self.model, self.nets, self.x, self.y = model, nets, x, y
        self.eps, self.input_range, self.on_verdict = eps, input_range, on_verdict
        n = len(x)
        self.result = VerificationResult(
            certified=torch.zeros(n, dtype=torch.bool),
            falsified=torch.zeros(n, dtype=torch.bool),
            counterexamples=x.detach().clone().cpu(),
            lower=torch.full((n,), -math.inf, dtype=torch.float64),
            upper=torch.full((n,), math.inf, dtype=torch.float64),
            seconds=torch.zeros(n, dtype=torch.float64),
            stage=[""] * n,
            nodes=torch.zeros(n, dtype=torch.long),
            reasons=[""] * n,
        )
        if certificate_obstacle(model) is None:
            charges = [_running_charge(c, y.cpu()).detach().double() for c in model.classifiers()]
            self.charges = torch.stack(charges).mean(0)
        else:  # nothing can be certified; refutations still can be found
            self.charges = torch.full((n, model.num_classes), math.inf, dtype=torch.float64)
        self.pair_bounds = None

    def open(self) -> Tensor:
        r = self.result
        return ~(r.certified | r.falsified)

    def _decide(self, i: int, stage: str) -> None:
        self.result.stage[i] = stage
        if self.on_verdict is not None:
            self.on_verdict(i, self.result)

    def _timed(self, rows: Tensor, start: float) -> None:
        if len(rows):
            self.result.seconds[rows] += (time.monotonic() - start) / len(rows)

    # -- 1. certificates ---------------------------------------------------------------------
    def run_certificates(self) -> None:
        start = time.monotonic()
        method = default_certificate(self.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # verify reports its own verdicts
            correct, bounds = margin_bounds(
                self.model, self.x, self.y, self.eps, method, self.input_range
            )
        bounds = bounds.double().cpu()
        self.pair_bounds = bounds
        self.correct = correct.cpu()  # the centre right by the model as given and exactly
        lower = bounds.scatter(1, self.y.cpu()[:, None], math.inf).amin(1)
        r = self.result
        r.lower = torch.where(correct.cpu(), lower, torch.full_like(lower, -math.inf))
        r.certified = correct.cpu() & (lower > 0)
        self._timed(torch.arange(len(self.x)), start)  # before the verdicts are reported
        for i in r.certified.nonzero().flatten().tolist():
            self._decide(i, "linear")

    # -- 2. the centre and PGD ---------------------------------------------------------------
    def run_refutation(self, steps: int, restarts: int, seed: int) -> None:
        start = time.monotonic()
        rows = self.open().nonzero().flatten()
        if not len(rows):
            return
        self._timed(rows, start)  # before the verdicts are reported: their seconds are final
        self._try(rows, self.x[rows], "centre")
        rows_left = self.open().nonzero().flatten()
        if not len(rows_left) or self.eps == 0:
            return
        start = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            adv = pgd(
                self.model,
                self.x[rows_left],
                self.y[rows_left],
                self.eps,
                input_range=self.input_range,
                steps=steps,
                restarts=restarts,
                seed=seed,
            )
        self._timed(rows_left, start)
        self._try(rows_left, adv, "attack")

    def _try(self, rows: Tensor, points: Tensor, stage: str, report: bool = True) -> None:
        refuted, upper = refutes(self.model, points, self.y[rows])
        r = self.result
        r.upper[rows] = torch.minimum(r.upper[rows], upper.cpu())
        for k in refuted.nonzero().flatten().tolist():
            i = int(rows[k])
            r.falsified[i] = True
            r.counterexamples[i] = points[k].detach().cpu()
            r.stage[i] = stage
            if report:
                self._decide(i, stage)

    # -- 3. branch and bound -----------------------------------------------------------------
    def run_search(self, time_limit: float, progress: bool) -> None:
        rows = self.open().nonzero().flatten().tolist()
        for i in rows:
            self.result.reasons[i] = "time limit"  # until the search says otherwise
        if not rows or time_limit <= 0:
            return
        from tqdm.auto import tqdm

        for i in tqdm(rows, desc="verify", unit="input", disable=not progress):
            start = time.monotonic()
            self.result.reasons[i] = ""
            self._search(i, start + time_limit)
            self.result.seconds[i] += time.monotonic() - start
            if not bool(self.open()[i]):
                self.result.reasons[i] = ""
                self._decide(i, "search")
            else:  # final too: a run folder records it now, not when its chunk ends
                self.result.reasons[i] = self.result.reasons[i] or "time limit"
                self._decide(i, "")

    def _search(self, i: int, deadline: float) -> None:
        label = int(self.y[i])
        lo, hi = ball_box(self.x[i], self.eps, self.input_range)
        bounds = [network_bounds(net, lo, hi) for net in self.nets]
        program = build_program(self.nets, bounds, lo, hi)
        solver = LPSolver(program)
        budget = time.monotonic() + TIGHTEN_SHARE * max(0.0, deadline - time.monotonic())
        program, solver = _tighten(self.nets, bounds, program, solver, lo, hi, budget)
        r = self.result
        pair = self.pair_bounds[i]
        lowers = {j: float(pair[j]) for j in range(len(pair)) if j != label}
        certified = True
        for j in sorted(lowers, key=lowers.get):
            if lowers[j] > 0:  # proven by the certificates
                continue
            cost, const = _margin_objective(self.nets, program, label, j)
            threshold = float(self.charges[i, j])
            out = minimise(
                solver, cost, const, threshold, deadline, partial(self._refutes_point, i)
            )
            r.nodes[i] += out.nodes
            if out.verdict == "falsified":
                return
            lowers[j] = max(lowers[j], out.lower - threshold)
            certified &= out.verdict == "certified"
            if out.reason and not r.reasons[i]:
                r.reasons[i] = out.reason
        r.lower[i] = min(lowers.values(), default=math.inf)
        r.certified[i] = certified and bool(self.correct[i]) and r.lower[i] > 0

    def _refutes_point(self, i: int, point: np.ndarray) -> bool:
        x_i = self.x[i : i + 1]
        candidate = torch.from_numpy(point).to(torch.float64).reshape(x_i.shape)
        candidate = project(x_i, candidate.to(x_i.dtype), self.eps, self.input_range)
        before = bool(self.result.falsified[i])
        self._try(torch.tensor([i]), candidate, "search", report=False)  # run_search reports
        return not before and bool(self.result.falsified[i])


def ball_box(x: Tensor, eps: float, input_range) -> tuple[np.ndarray, np.ndarray]:
    """The ball of radius ``eps`` around ``x`` intersected with ``input_range``, flattened, each end
    rounded outwards in float64 (so it contains the exact ball)."""
    centre = x.detach().double().cpu().reshape(-1).numpy()
    lo = np.nextafter(centre - eps, -np.inf)
    hi = np.nextafter(centre + eps, np.inf)
    if input_range is not None:
        lo, hi = np.maximum(lo, input_range[0]), np.minimum(hi, input_range[1])
    return lo, hi


def _margin_objective(nets, program, label: int, j: int) -> tuple[np.ndarray, float]:
    """``y_label - y_j`` (the mean over members) as a cost on the program's columns, its constant
    lowered by ``2^-36`` times the magnitudes that formed it (the rounding of the products, of
    the readout's composition and of the sums over members)."""
    cost, const, slack = np.zeros(program.size), 0.0, 0.0
    reach = np.maximum(np.abs(program.col_lo), np.abs(program.col_hi))
    for net, out in zip(nets, program.outputs):
        f, k = net.readout, len(nets)
        row = (f.W[label] - f.W[j]) / k
        cost += np.asarray((row @ out.E).todense()).ravel()
        const += float((row @ out.e)[0]) + (f.b[label] - f.b[j]) / k
        row_abs = (f.Wabs[label] + f.Wabs[j]) / k
        slack += float((row_abs @ (out.Eabs @ reach + out.eabs))[0])
        slack += (f.babs[label] + f.babs[j]) / k
        if net.D is not None:
            d = (net.D[label] - net.D[j]) / k
            cost[program.inputs] += d
            slack += float(np.abs(d) @ reach[program.inputs])
    return cost, const - 2.0**-36 * (slack + np.abs(cost) @ reach)


def _tighten(nets, bounds, program, solver, lo, hi, deadline):
    """Tighten the unstable pre-activations of every implicit block, and of the explicit block
    that feeds one, by two LPs each (min and max), block by block; after each block the later
    blocks' boxes are recomputed from it and the program rebuilt on the new boxes; returns the
    last program. Each LP stops after `TIGHTEN_ITERATIONS` simplex iterations: `safe_bound`
    makes any multipliers a rigorous bound (full solves took about 3000 iterations, 1 s, each on
    the conv-medium ensemble, and ran out of time before the implicit block)."""
    depth = max(len(net.blocks) for net in nets)
    for k in range(depth):
        targets = [(m, bounds[m][k]) for m, net in enumerate(nets) if _tightened(net, k)]
        targets = [(m, bb) for m, bb in targets if len(bb.unstable)]
        if not targets or time.monotonic() > deadline:
            continue
        where = {w: t for t, w in enumerate(program.phase_block)}
        for m, bb in targets:
            new_lo, new_hi = bb.pre.lo.copy(), bb.pre.hi.copy()
            for i in bb.unstable:
                col = program.phase_z[where[(m, k, int(i))]]
                for sign in (1.0, -1.0):
                    bound = _lp_bound(program, solver, col, sign, deadline)
                    if sign > 0:
                        new_lo[i] = max(new_lo[i], bound)
                    else:
                        new_hi[i] = min(new_hi[i], -bound)
            tighten(bb, new_lo, new_hi)
            refresh_after(nets[m], bounds[m], k, lo, hi)
        program = build_program(nets, bounds, lo, hi)
        solver = LPSolver(program)
    return program, solver


def _tightened(net, k: int) -> bool:
    """Whether block ``k`` is tightened by LPs: an implicit block, or the explicit one before
    an implicit block (not the first block: its box is exact for a box of inputs)."""
    blocks = net.blocks
    if k >= len(blocks):
        return False
    if blocks[k].A is not None:
        return True
    return 0 < k and k + 1 < len(blocks) and blocks[k + 1].A is not None


def _lp_bound(program, solver, col: int, sign: float, deadline: float) -> float:
    """A rigorous lower bound of ``sign * v[col]`` over the relaxed program (-inf if none),
    from the multipliers after at most `TIGHTEN_ITERATIONS` simplex iterations."""
    if time.monotonic() > deadline:
        return -math.inf
    cost = np.zeros(program.size)
    cost[col] = sign
    solver.set_cost(cost)
    duals = solver.duals_within(deadline, TIGHTEN_ITERATIONS)
    if duals is None:
        return -math.inf
    return safe_bound(program, cost, 0.0, program.col_lo, program.col_hi, duals)


@torch.no_grad()
def refutes(model, points: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per point: whether it is misclassified both by the model as given (its dtype and eval-mode
    solver) and, provably, by the exact equilibrium (a float64 solve to 1e-10 with its error
    bound charged); and an upper bound of the exact equilibrium's smallest margin there (+inf
    where the model as given classifies right: the exact solve is skipped)."""
    with warnings.catch_warnings(), full_float32():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dtype = next(model.parameters()).dtype
        own_wrong = model(points.to(dtype)).argmax(1) != labels
    upper = torch.full((len(points),), math.inf, dtype=torch.float64, device=points.device)
    rows = own_wrong.nonzero().flatten()
    if len(rows):
        upper[rows] = _exact_upper(model, points[rows], labels[rows])
    return own_wrong & (upper < 0), upper


def _exact_upper(model, points: Tensor, labels: Tensor) -> Tensor:
    """An upper bound of the exact equilibrium's smallest margin ``y_label - y_j`` per point:
    the float64 logit difference, plus the state's error bound through the readout, plus
    ``2^-30`` times the magnitudes that formed the logits (their float64 rounding)."""
    exact = copy.deepcopy(model).double()
    u = points.double()
    upper = 0.0
    members = exact.classifiers()
    with _tight(exact, "auto", u), full_float32(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in members:
            solution = c.solve(u)
            logits, err = solution.logits, solution.error_bound
            if err is None:
                err = torch.full((len(u),), math.inf, dtype=torch.float64)
            C, D = c.readout_weights()
            pair = _pair_readout_norms(c.lipschitz_terms(), C)[labels]  # (batch, q)
            features = c.layer.features(solution.x).abs()
            size = features @ C.abs().T + c.readout.bias.abs()
            if D is not None:
                size = size + u.flatten(1).abs() @ D.abs().T
            rounding = 2.0**-30 * (size.gather(1, labels[:, None]) + size)
            diff = logits.gather(1, labels[:, None]) - logits
            upper = upper + (diff + pair * err[:, None] + rounding) / len(members)
    return upper.scatter(1, labels[:, None], math.inf).amin(1)
