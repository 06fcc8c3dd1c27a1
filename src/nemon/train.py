"""Training and evaluation with atomic checkpoints, exact resume and a JSONL metrics log.

A run is described by a :class:`TrainConfig`; :func:`train` writes into ``out_dir``:
``checkpoint.pt`` (model, optimiser, position inside the epoch, history; written atomically every
``checkpoint_every`` steps and at each epoch's end), ``metrics.jsonl`` (one line per epoch) and
``config.json``. The order of batches in epoch ``e`` depends only on ``(seed, e)``, so a killed run
resumed with ``resume=True`` replays exactly the remaining batches of the epoch it was in.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .data import Dataset, batches, load_dataset
from .lipschitz import certify
from .models import Classifier, build_model

__all__ = [
    "TrainConfig",
    "PRESETS",
    "build_from_config",
    "train",
    "evaluate",
    "certified_accuracy",
    "save_atomic",
    "load_checkpoint",
]


@dataclass
class TrainConfig:
    """Everything that defines a run; the defaults are the paper's MNIST FC setting (6.2)."""

    model: str = "nemon"
    arch: str = "dense"
    dataset: str = "mnist"
    hidden: int = 100
    gamma: float = 0.95
    activation: str = "relu"
    solver: str | None = None
    tol: float = 1e-4
    residual: str = "step"
    max_iter: int = 500
    epochs: int = 10
    batch_size: int = 300
    lr: float = 1.5e-2
    lam: float = 0.0
    reg_kind: str = "product"
    seed: int = 0
    device: str = "cpu"
    train_limit: int | None = None
    test_limit: int | None = None
    checkpoint_every: int = 50
    cert_eps: float = 0.0
    cert_weight: float = 0.5
    cert_ramp_epochs: int = 1
    layer_kwargs: dict = field(default_factory=dict)


PRESETS: dict[str, dict] = {
    "mnist-fc": {},
    "mnist-fc-gamma005": {"gamma": 0.05},
    "cifar10-conv": {
        "arch": "conv",
        "dataset": "cifar10",
        "hidden": 81,
        "batch_size": 256,
        "lr": 1e-3,
        "epochs": 40,
    },
    "fashion-conv-quick": {
        "arch": "conv",
        "dataset": "fashion-mnist",
        "hidden": 16,
        "batch_size": 128,
        "lr": 1e-3,
        "epochs": 1,
    },
}


def build_from_config(cfg: TrainConfig, input_shape, num_classes: int) -> Classifier:
    kwargs = dict(cfg.layer_kwargs)
    kwargs.update(
        activation=cfg.activation, tol=cfg.tol, max_iter=cfg.max_iter, residual=cfg.residual
    )
    if cfg.solver:
        kwargs["solver"] = cfg.solver
    return build_model(
        cfg.model, cfg.arch, tuple(input_shape), num_classes, cfg.hidden, cfg.gamma, **kwargs
    )


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_text_atomic(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> tuple[Classifier, dict]:
    """Rebuild the model of a checkpoint; returns ``(model, checkpoint dict)``."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    cfg = TrainConfig(**ckpt["config"])
    model = build_from_config(cfg, ckpt["input_shape"], ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def _solver_iterations(model: Classifier) -> tuple[int, int]:
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
) -> dict[float, float]:
    """Fraction of samples certified robust at each radius in ``eps``."""
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(len(eps))
    for xb, yb in batches(x, y, batch_size):
        ok = certify(model, xb.to(device), yb.to(device), list(eps), method=method)
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


def _cert_eps(cfg: TrainConfig, epoch: int, step: int, n_batches: int) -> float:
    """Linear ramp of the certified-training radius over ``cert_ramp_epochs``."""
    if cfg.cert_eps <= 0:
        return 0.0
    done = (epoch * n_batches + step) / max(cfg.cert_ramp_epochs * n_batches, 1)
    return cfg.cert_eps * min(1.0, done)


def _loss(model, raw, cfg: TrainConfig, xb: Tensor, yb: Tensor, eps: float):
    logits = model(xb)
    loss = F.cross_entropy(logits, yb)
    if eps > 0:
        from .intervals import interval_loss

        robust = interval_loss(raw, xb, yb, eps)
        loss = (1 - cfg.cert_weight) * loss + cfg.cert_weight * robust
    if cfg.lam > 0:
        loss = loss + cfg.lam * raw.lipschitz_penalty(cfg.reg_kind)
    return logits, loss


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


@_flushing_subnormals
def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    data: Dataset | None = None,
    data_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict:
    """Train ``cfg`` and return the history; see the module docstring for the files written.

    Under ``torchrun`` (an initialised process group) the model is wrapped in
    ``DistributedDataParallel`` and every global batch of ``batch_size`` is split between the
    processes, so 2 processes follow the same trajectory as 1 on the combined batch; rank 0 writes
    the files. ``stop_after_steps`` ends the run early after that many steps (tests of resume).
    On CPU, subnormal floats are flushed to zero while training (see ``_flushing_subnormals``).
    """
    rank, world = _distributed()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _limit(data if data is not None else load_dataset(cfg.dataset, data_dir), cfg)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    raw = build_from_config(cfg, data.input_shape, data.num_classes).to(device)
    model = raw
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=ids)
    opt = torch.optim.Adam(raw.parameters(), lr=cfg.lr)
    ckpt_path, log_path = out / "checkpoint.pt", out / "metrics.jsonl"
    state = {"epoch": 0, "step": 0, "history": [], "running": _fresh_running()}
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"] != asdict(cfg):
            raise ValueError(f"{ckpt_path} was written by a different configuration")
        raw.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = {k: ckpt[k] for k in ("epoch", "step", "history", "running")}
        if rank == 0:
            _write_text_atomic("".join(json.dumps(h) + "\n" for h in state["history"]), log_path)
    if rank == 0:
        _write_text_atomic(json.dumps(asdict(cfg), indent=2), out / "config.json")

    def checkpoint() -> None:
        if rank == 0:
            payload = {
                "config": asdict(cfg),
                "input_shape": data.input_shape,
                "num_classes": data.num_classes,
                "model": raw.state_dict(),
                "optimizer": opt.state_dict(),
                **state,
            }
            save_atomic(payload, ckpt_path)

    steps_done = 0
    n_batches = math.ceil(len(data.train_x) / cfg.batch_size)
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
        for i, (xb, yb) in enumerate(batches(data.train_x, data.train_y, cfg.batch_size, gen)):
            if i < state["step"]:
                continue
            start = time.perf_counter()
            xb, yb = _shard(xb.to(device), yb.to(device), rank, world)
            eps = _cert_eps(cfg, epoch, i, n_batches)
            logits, loss = _loss(model, raw, cfg, xb, yb, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            fwd, bwd = _solver_iterations(raw)
            run["seconds"] += time.perf_counter() - start
            run["loss"] += float(loss.detach()) * len(xb)
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
        record = _epoch_record(raw, data, epoch, _reduce(run, world, device))
        state["history"].append(record)
        state.update(epoch=epoch + 1, step=0, running=_fresh_running())
        checkpoint()
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if progress and rank == 0:
            tqdm.write(
                f"epoch {epoch + 1}: test acc {record['test_accuracy']:.4f}  "
                f"fwd {record['forward_iterations']:.1f}  bwd {record['backward_iterations']:.1f}  "
                f"{record['train_seconds']:.2f} s  Lip {record['lipschitz']:.3g}"
            )
    return {"history": state["history"], "stopped": False, "model": raw}


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
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "forward_iterations": run["fwd"] / max(run["batches"], 1),
        "backward_iterations": run["bwd"] / max(run["batches"], 1),
        "train_seconds": run["seconds"],
        "lipschitz": float(model.lipschitz_bound().detach()),
    }
