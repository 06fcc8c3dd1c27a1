"""Training and evaluation with atomic checkpoints, exact resume and a JSONL metrics log.

A run is described by a :class:`TrainConfig` (``config.py``); :func:`train` writes into
``out_dir`` (the files: ``checkpoints.py``):
``checkpoint.pt`` (model, optimiser, position inside the epoch, history; written atomically every
``checkpoint_every`` steps and at each epoch's end), ``metrics.jsonl`` (one line per epoch) and
``config.json``. The order of batches in epoch ``e`` depends only on ``(seed, e)``, so a killed run
resumed with ``resume=True`` replays exactly the remaining batches of the epoch it was in.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..attacks import pgd
from ..certificates import certify
from ..data import Dataset, batches, load_dataset
from ..ensemble import Ensemble
from ..intervals import interval_loss
from ..models import Classifier, build_from_config
from ..solvers import ConvergenceWarning
from .checkpoints import (
    RUN_FILES,
    CheckpointError,
    RunFolderError,
    check_run_folder,
    json_line,
    load_checkpoint,
    read_checkpoint,
    remove_stale_temporaries,
    save_atomic,
    write_text_atomic,
)
from .config import PRESETS, TrainConfig
from .runtime import auto_threads

__all__ = [
    "TrainConfig",
    "PRESETS",
    "build_from_config",
    "train",
    "evaluate",
    "certified_accuracy",
    "save_atomic",
    "read_checkpoint",
    "load_checkpoint",
    "check_run_folder",
    "CheckpointError",
    "RunFolderError",
    "TrainingDiverged",
    "ConvergenceTally",
]


def _solver_iterations(model: Classifier | Ensemble) -> tuple[int, int]:
    """Forward and backward iterations of the last solve (an ensemble: summed over members)."""
    if isinstance(model, Ensemble):
        counts = [_solver_iterations(m) for m in model.members]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    stats = model.layer.solver_stats
    fwd = stats.get("forward")
    bwd = stats.get("backward")
    return (fwd.iterations if fwd else 0), (bwd.iterations if bwd else 0)


@torch.no_grad()
def evaluate(model: Classifier, x: Tensor, y: Tensor, batch_size: int = 1000) -> dict:
    """Accuracy, mean loss and mean forward iterations on ``(x, y)``."""
    model.eval()
    device = next(model.parameters()).device
    correct, loss, iters, count = 0, 0.0, 0, 0
    for xb, yb in batches(x, y, batch_size):
        xb, yb = xb.to(device), yb.to(device)
        logits = model(xb)
        correct += int((logits.argmax(1) == yb).sum())
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        iters += _solver_iterations(model)[0]
        count += 1
    return {
        "accuracy": correct / len(x),
        "loss": loss / len(x),
        "forward_iterations": iters / count,
    }


@torch.no_grad()
def certified_accuracy(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    eps: list[float],
    method: str = "pairwise",
    batch_size=1000,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> dict[float, float]:
    """Fraction of samples certified robust at each radius in ``eps`` (see :func:`nemon.certify`)."""
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(len(eps))
    for xb, yb in batches(x, y, batch_size):
        ok = certify(model, xb.to(device), yb.to(device), list(eps), method=method, clip=clip)
        total += ok.sum(dim=1).cpu().float()
    return {float(e): float(t) / len(x) for e, t in zip(eps, total)}


def _limit(data: Dataset, cfg: TrainConfig) -> Dataset:
    tr, te = cfg.train_limit, cfg.test_limit
    return Dataset(
        data.name,
        data.train_x[:tr] if tr else data.train_x,
        data.train_y[:tr] if tr else data.train_y,
        data.test_x[:te] if te else data.test_x,
        data.test_y[:te] if te else data.test_y,
        classes=data.num_classes,
    )


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(xb: Tensor, yb: Tensor, rank: int, world: int) -> tuple[Tensor, Tensor]:
    """This process's share of a global batch (equal shards when ``world`` divides it)."""
    return (xb[rank::world], yb[rank::world]) if world > 1 else (xb, yb)


def _ramp(cfg: TrainConfig, epoch: int, step: int, n_batches: int) -> float:
    """Progress in [0, 1] of certified training: 0 during warm-up, then over the ramp epochs.

    ``ramp="smooth"`` is the cubic smoothstep ``3 t^2 - 2 t^3``: a slow start, as the radius
    schedules of Shi et al. (2021), without the kink of the linear ramp at its end.
    """
    done = (epoch - cfg.warmup_epochs) * n_batches + step
    t = min(1.0, max(0.0, done / max(cfg.cert_ramp_epochs * n_batches, 1)))
    return t * t * (3 - 2 * t) if cfg.ramp == "smooth" else t


def _cert_eps(cfg: TrainConfig, epoch: int, step: int, n_batches: int) -> float:
    """The certified-training radius at this step (see :func:`_ramp`)."""
    if cfg.cert_eps <= 0 or epoch < cfg.warmup_epochs:
        return 0.0
    return cfg.cert_eps * _ramp(cfg, epoch, step, n_batches)


def _learning_rate(cfg: TrainConfig, epoch: int) -> float:
    return cfg.lr * cfg.lr_decay ** sum(1 for m in cfg.lr_milestones if epoch >= m)


def _loss(
    model, raw, cfg: TrainConfig, xb: Tensor, yb: Tensor, eps: float, progress: float, step=0
):
    """Clean cross-entropy mixed with the worst-case (interval) loss, whose weight grows with the
    radius from 0 to ``cert_weight`` (the clean/robust mix of Gowal et al., 2018). At weight 1
    the clean pass runs without autograd (its logits only feed the accuracy metric); under DDP it
    keeps autograd, which the gradient synchronisation needs.

    With ``adv_steps > 0`` and a radius, the clean term is the cross-entropy at a PGD point of the
    same ball: the convex combination of adversarial and interval losses of MTL-IBP (De Palma et
    al., 2024). The logits returned are then those at the PGD points (the training accuracy is
    measured where the loss is): a clean pass only for the metric would cost a forward solve a
    step, 9% of the step on conv-medium (benchmarks/step_time.py)."""
    weight = 0.0
    if eps > 0:
        weight = cfg.cert_weight * progress if cfg.ramp == "smooth" else cfg.cert_weight
    if weight >= 1.0 and model is raw:  # the clean loss has no weight: logits for metrics only
        with torch.no_grad():
            logits = model(xb)
        loss = interval_loss(raw, xb, yb, eps)
    elif cfg.adv_steps > 0 and eps > 0:
        adv = _adversarial_points(raw, xb, yb, eps, cfg.adv_steps, seed=step)
        logits = model(adv)
        loss = (1 - weight) * F.cross_entropy(logits, yb)
        logits = logits.detach()
        if weight > 0:
            loss = loss + weight * interval_loss(raw, xb, yb, eps)
    else:
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        if eps > 0:
            loss = (1 - weight) * loss + weight * interval_loss(raw, xb, yb, eps)
    if cfg.lam > 0:
        loss = loss + cfg.lam * raw.lipschitz_penalty(cfg.reg_kind)
    return logits, loss


def _adversarial_points(raw, xb: Tensor, yb: Tensor, eps: float, steps: int, seed: int) -> Tensor:
    """PGD points in the l_inf ball of radius ``eps`` (clipped to [0, 1]) from a random start.

    The attack runs in eval mode: batch norm uses its running statistics and neither records
    the attack's batches nor moves the running statistics; training mode is restored after."""
    raw.eval()
    try:
        return pgd(raw, xb, yb, eps, steps=steps, seed=seed)
    finally:
        raw.train()


def _flushing_subnormals(fn):
    """Run ``fn(cfg, ...)`` with subnormal floats flushed to zero on CPU, restored afterwards.

    Tiny solver residuals otherwise reach subnormal range and slow CPU kernels by orders of
    magnitude (seen with Anderson: epochs of 100 s instead of 3 s).
    """

    @functools.wraps(fn)
    def wrapper(cfg: TrainConfig, *args, **kwargs):
        flush = torch.device(cfg.device).type == "cpu" and torch.set_flush_denormal(True)
        try:
            return fn(cfg, *args, **kwargs)
        finally:
            if flush:
                torch.set_flush_denormal(False)

    return wrapper


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became non-finite; the last good checkpoint is kept."""


def _kept(ckpt_path: Path) -> str:
    if ckpt_path.exists():
        return f" The last good checkpoint is kept in {ckpt_path}"
    return " No checkpoint had been written yet"


def _nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


@_flushing_subnormals
def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    data: Dataset | None = None,
    data_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
    tensorboard: str | os.PathLike | None = None,
    threads: int | str | None = None,
) -> dict:
    """Train ``cfg`` and return the history; see the module docstring for the files written.

    Everything is checked (settings, run folder, data, checkpoint to resume) before the first
    file is written. A folder that holds files needs ``resume=True`` (continue the run it holds;
    an error if it holds none) or ``overwrite=True`` (replace its run files). A non-finite loss or
    parameter stops training with :class:`TrainingDiverged`, keeping the last good checkpoint.

    Under ``torchrun`` (an initialised process group) the model is wrapped in
    ``DistributedDataParallel`` and every global batch of ``batch_size`` is split between the
    processes, so 2 processes follow the same trajectory as 1 on the combined batch; rank 0 writes
    the files. ``stop_after_steps`` ends the run early after that many steps (tests of resume).
    On CPU, subnormal floats are flushed to zero while training (see ``_flushing_subnormals``).
    """
    cfg.validate()
    rank, world = _distributed()
    out = Path(out_dir)
    check_run_folder(out, resume, overwrite)
    if tensorboard is not None and Path(tensorboard).exists() and not Path(tensorboard).is_dir():
        raise RunFolderError(f"the TensorBoard folder {tensorboard} is a file")
    if tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
        raise RunFolderError(
            "TensorBoard logging needs the tensorboard package: pip install tensorboard"
        )
    ckpt_path, log_path = out / "checkpoint.pt", out / "metrics.jsonl"
    data = _limit(data if data is not None else load_dataset(cfg.dataset, data_dir), cfg)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    raw = build_from_config(cfg, data.input_shape, data.num_classes).to(device)
    model = raw
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=ids)
    opt = torch.optim.Adam(raw.parameters(), lr=cfg.lr)
    state = {"epoch": 0, "step": 0, "history": [], "running": _fresh_running(), "average": None}
    if resume:
        ckpt = read_checkpoint(ckpt_path, map_location=str(device))
        recorded = {**asdict(TrainConfig()), **ckpt["config"]}  # newer settings: their defaults
        if recorded != asdict(cfg):
            raise RunFolderError(f"{ckpt_path} was written by a different configuration")
        raw.load_state_dict(ckpt.get("live_model", ckpt["model"]))
        opt.load_state_dict(ckpt["optimizer"])
        state = {k: ckpt[k] for k in ("epoch", "step", "history", "running")}
        if "live_model" in ckpt:  # averaging: "model" holds the average's weights
            state["average"] = {"count": ckpt["average"]["count"], "weights": ckpt["model"]}
        else:
            state["average"] = None
    if world > 1:  # every rank has checked the folder before any rank writes to it
        torch.distributed.barrier()
    if rank == 0:  # the first write: everything above has been checked
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        if overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        write_text_atomic("".join(json_line(h) + "\n" for h in state["history"]), log_path)
        write_text_atomic(json.dumps(asdict(cfg), indent=2), out / "config.json")
    board = _tensorboard_writer(tensorboard) if tensorboard is not None and rank == 0 else None

    def checkpoint() -> None:
        bad = _nonfinite_parameters(raw)
        if bad:
            raise TrainingDiverged(
                f"parameters {', '.join(bad)} became non-finite at epoch {state['epoch'] + 1}, "
                f"step {state['step']}; lower the learning rate (lr = {cfg.lr:g})."
                f"{_kept(ckpt_path)}"
            )
        if rank == 0:
            payload = {
                "config": asdict(cfg),
                "input_shape": tuple(data.input_shape),
                "num_classes": data.num_classes,
                "model": raw.state_dict(),
                "optimizer": opt.state_dict(),
                **state,
            }
            if state["average"] is not None:  # "model": what to use; "live_model": to resume
                average = state["average"]
                payload.update(
                    model=average["weights"],
                    live_model=raw.state_dict(),
                    average={"count": average["count"]},  # its weights are "model", once
                )
            save_atomic(payload, ckpt_path)

    steps_done = 0
    n_batches = math.ceil(len(data.train_x) / cfg.batch_size)
    _apply_threads(threads, working=False)
    threads_checked = time.perf_counter()
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        model.train()
        run = state["running"]
        bar = tqdm(
            total=n_batches,
            initial=state["step"],
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress or rank != 0,
            leave=False,
            mininterval=1.0,
        )
        gen = _epoch_generator(cfg.seed, epoch)
        for group in opt.param_groups:
            group["lr"] = _learning_rate(cfg, epoch)
        with ConvergenceTally() as tally:
            for i, (xb, yb) in enumerate(batches(data.train_x, data.train_y, cfg.batch_size, gen)):
                if i < state["step"]:
                    continue
                start = time.perf_counter()
                if threads == "auto" and start - threads_checked > 5.0:
                    _apply_threads(threads, working=True)
                    threads_checked = start
                xb, yb = _shard(xb.to(device), yb.to(device), rank, world)
                eps = _cert_eps(cfg, epoch, i, n_batches)
                progress_i = _ramp(cfg, epoch, i, n_batches)
                logits, loss = _loss(
                    model, raw, cfg, xb, yb, eps, progress_i, step=epoch * n_batches + i
                )
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"the loss is {loss_value} at epoch {epoch + 1}, step {i + 1}; lower the "
                        f"learning rate (lr = {cfg.lr:g}).{_kept(ckpt_path)}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
                opt.step()
                fwd, bwd = _solver_iterations(raw)
                run["seconds"] += time.perf_counter() - start
                run["loss"] += loss_value * len(xb)
                run["correct"] += int((logits.argmax(1) == yb).sum())
                run["count"] += len(xb)
                run["fwd"] += fwd
                run["bwd"] += bwd
                run["batches"] += 1
                state["step"] = i + 1
                bar.update(1)
                bar.set_postfix(
                    loss=f"{run['loss'] / run['count']:.3f}",
                    acc=f"{run['correct'] / run['count']:.3f}",
                    fwd=fwd,
                    bwd=bwd,
                )
                steps_done += 1
                if stop_after_steps is not None and steps_done >= stop_after_steps:
                    checkpoint()
                    bar.close()
                    return {"history": state["history"], "stopped": True, "model": raw}
                if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                    checkpoint()
            bar.close()
            if cfg.swa_start and epoch + 1 >= cfg.swa_start:
                state["average"] = _averaged(state["average"], raw)
            with _weights(raw, state["average"]):  # the epoch's results are the average's
                record = _epoch_record(raw, data, epoch, _reduce(run, world, device))
                if cfg.cert_eval_eps:
                    n = cfg.cert_eval_limit
                    cert = certified_accuracy(
                        raw, data.test_x[:n], data.test_y[:n], list(cfg.cert_eval_eps), "interval"
                    )
                    record["certified"] = {f"{e:g}": v for e, v in cert.items()}
            record["lr"] = _learning_rate(cfg, epoch)
            record["train_eps"] = _cert_eps(cfg, epoch, n_batches - 1, n_batches)
            if state["average"] is not None:
                record["averaged_epochs"] = state["average"]["count"]
        record["unconverged_solves"] = tally.count
        record["threads"] = torch.get_num_threads()
        _apply_threads(threads, working=True)
        state["history"].append(record)
        state.update(epoch=epoch + 1, step=0, running=_fresh_running())
        checkpoint()
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json_line(record) + "\n")
        if board is not None:
            _log_scalars(board, record, epoch + 1)
        if progress and rank == 0:
            tqdm.write(
                f"epoch {epoch + 1}: test acc {record['test_accuracy']:.4f}  "
                f"fwd {record['forward_iterations']:.1f}  bwd {record['backward_iterations']:.1f}  "
                f"{record['train_seconds']:.2f} s  Lip {record['lipschitz']:.3g}"
            )
    if state["average"] is not None:
        raw.load_state_dict(state["average"]["weights"])
    return {"history": state["history"], "stopped": False, "model": raw}


def _averaged(average: dict | None, model: torch.nn.Module) -> dict:
    """Add the model's weights to their running mean, ``w_k = w_{k-1} + (w - w_{k-1}) / k``
    (stochastic weight averaging, Izmailov et al. 2018). Any parameter value of a NEMON layer is
    well posed, so the average is too. Integer buffers are taken from the model."""
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if average is None:
        return {"count": 1, "weights": current}
    count = average["count"] + 1
    weights = {
        k: (w + (current[k] - w) / count) if w.is_floating_point() else current[k]
        for k, w in average["weights"].items()
    }
    return {"count": count, "weights": weights}


@contextlib.contextmanager
def _weights(model: torch.nn.Module, average: dict | None):
    """Within the block, ``model`` holds ``average``'s weights (if any); its own afterwards."""
    if average is None:
        yield model
        return
    kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(average["weights"])
    try:
        yield model
    finally:
        model.load_state_dict(kept)


def _apply_threads(threads: int | str | None, working: bool) -> None:
    """Set torch's threads: a number, or ``"auto"`` (the cores others leave idle; ``working``:
    this process's own threads are part of the load average)."""
    if threads == "auto":
        torch.set_num_threads(auto_threads(torch.get_num_threads() if working else 0))
    elif threads is not None:
        torch.set_num_threads(int(threads))


def _tensorboard_writer(folder):
    from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package

    return SummaryWriter(log_dir=os.fspath(folder))


def _log_scalars(writer, record: dict, epoch: int) -> None:
    """Every number of an epoch record (``certified/0.1`` for nested ones), flushed at once."""
    for key, value in record.items():
        values = value if isinstance(value, dict) else {"": value}
        for sub, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                writer.add_scalar(f"{key}/{sub}" if sub else key, v, epoch)
    writer.flush()


class ConvergenceTally(warnings.catch_warnings):
    """Collects :class:`~nemon.ConvergenceWarning` inside the block and re-issues one summary.

    Other warnings pass through unchanged. ``count`` is the number of solves that stopped early.
    """

    def __init__(self) -> None:
        super().__init__(record=True)
        self.count = 0

    def __enter__(self):
        self._log = super().__enter__()
        warnings.simplefilter("always", ConvergenceWarning)
        return self

    def __exit__(self, *exc_info):
        super().__exit__(*exc_info)
        caught = [w for w in self._log if issubclass(w.category, ConvergenceWarning)]
        for w in self._log:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.count = len(caught)
        if caught and exc_info[0] is None:
            warnings.warn(
                f"{len(caught)} solves stopped before reaching their tolerance; the last: "
                f"{caught[-1].message}",
                ConvergenceWarning,
                stacklevel=2,
            )
        return False


def _reduce(run: dict, world: int, device) -> dict:
    """Sum the epoch's counters over processes (seconds: the slowest process)."""
    if world == 1:
        return run
    keys = [k for k in run if k != "seconds"]
    t = torch.tensor([float(run[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    sec = torch.tensor([run["seconds"]], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(sec, op=torch.distributed.ReduceOp.MAX)
    out = dict(zip(keys, t.tolist()))
    out["seconds"] = float(sec)
    return out


def _fresh_running() -> dict:
    return {"seconds": 0.0, "loss": 0.0, "correct": 0, "count": 0, "fwd": 0, "bwd": 0, "batches": 0}


def _epoch_record(model: Classifier, data: Dataset, epoch: int, run: dict) -> dict:
    test = evaluate(model, data.test_x, data.test_y)
    return {
        "epoch": epoch + 1,
        "train_loss": run["loss"] / max(run["count"], 1),
        "train_accuracy": run["correct"] / max(run["count"], 1),
        "train_samples": int(run["count"]),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "forward_iterations": run["fwd"] / max(run["batches"], 1),
        "backward_iterations": run["bwd"] / max(run["batches"], 1),
        "train_seconds": run["seconds"],
        "lipschitz": float(model.lipschitz_bound().detach()),
    }
