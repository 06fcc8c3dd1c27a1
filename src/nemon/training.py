"""Training any classifier with a `Recipe`: `fit` and its loop. The loss and schedules are
`nemon.losses`, evaluation `nemon.evaluation`, the checks before a run `nemon.fit_checks`, what
a resume compares `nemon.resume`, where batches come from `nemon.sources`.

With ``out=`` a run folder holds ``checkpoint.pt`` (model, optimiser, position inside the epoch,
history; written atomically every ``checkpoint_every`` steps and at each epoch's end) and
``metrics.jsonl`` (one line per epoch). The order of batches in epoch ``e`` depends only on
``(seed, e)``, so a killed run resumed with ``resume=True`` replays exactly the remaining batches.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import modelfile
from .certificates import CertificateWarning
from .data import Dataset
from .errors import InputError
from .evaluation import (
    ConvergenceTally,
    certified_accuracy,
    evaluate,
    model_device,
)
from .fit_checks import as_dataset, check_batch, check_model, checked_data, checked_range
from .layers import ImplicitLayer
from .losses import learning_rate, ramp_progress, recipe_loss, training_radius, training_tolerance
from .modes import evaluation_mode
from .ranges import IMAGES, InputRange
from .recipes import Recipe, recipe_named
from .resume import compare_settings
from .runs import (
    RUN_FILES,
    RunFolderError,
    RunLock,
    check_checksum,
    check_run_folder,
    json_line,
    read_torch_file,
    remove_stale_temporaries,
    save_atomic,
    state_checksum,
    write_text_atomic,
)
from .solve_log import SolveLog
from .solvers import ConvergenceWarning
from .sources import TensorSource
from .validation import MAX_THREADS, check_integer

__all__ = ["fit", "FitResult", "TrainingDiverged", "adam"]


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became non-finite; the last good checkpoint is kept."""


@dataclass
class FitResult:
    """What `fit` returns: the trained model, one record per epoch, whether it stopped
    early (``stop_after_steps``)."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    stopped: bool = False

    def __getitem__(self, key: str):  # result["history"], as the command line's JSON has it
        return getattr(self, key)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class _Run:
    """The mutable state of a run (what a checkpoint stores beside the weights)."""

    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    running: dict = field(default_factory=lambda: _fresh_running())
    average: dict | None = None
    splitting_steps: dict = field(default_factory=dict)  # tuned steps, by layer name


def _fresh_running() -> dict:
    return {"seconds": 0.0, "loss": 0.0, "correct": 0, "count": 0, "fwd": 0, "bwd": 0, "batches": 0}


def fit(
    model: nn.Module,
    data: Dataset | tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    recipe: Recipe | str = "paper",
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    threads: int | Callable[[bool], int] | None = None,
    tensorboard: str | os.PathLike | None = None,
    metadata: dict | None = None,
    files: dict[str, str] | None = None,
    stop_after_steps: int | None = None,
    input_range: InputRange | str = "data",
) -> FitResult:
    """Train ``model`` on ``data`` with ``recipe``; returns a `FitResult`.

    Args:
        model: a `Classifier` (any encoder, implicit layer and family), or any
            module mapping inputs to logits for recipes without radius or regulariser.
        data: a `nemon.data.Dataset`, or ``(train, test)`` where each split is ``(x, y)``
            tensors or NumPy arrays, a map-style dataset (``TensorDataset``, any
            ``torch.utils.data.Dataset``) or a ``DataLoader`` (`nemon.sources`: nemon batches
            tensors and datasets in a seeded order at the recipe's batch size; a loader is
            iterated as configured, its transforms included; the test split is read once).
        recipe: a `Recipe` or the name of one in `nemon.RECIPES`.
        out: run folder for ``checkpoint.pt`` and ``metrics.jsonl`` (None: nothing written).
        resume: continue the run in ``out`` exactly where it stopped (same recipe required).
        overwrite: replace the run files in a non-empty ``out``.
        progress: a tqdm bar per epoch; None: only when standard error is a terminal.
        threads: torch threads, or a function ``(working) -> threads`` asked every 5 s.
        tensorboard: also log each epoch's numbers to TensorBoard in this folder.
        metadata: plain data or dataclasses stored in the checkpoint and checked to match on
            resume; a training setting (a `Recipe` field) that the file lacks, written before
            the setting existed, counts as its default; any other missing field is a change.
        files: more text files for the run folder (name -> contents), written with the first.
        stop_after_steps: stop early after that many steps (tests of resume).
        input_range: the range ``(lo, hi)`` the inputs live in, or None (unbounded); robust
            losses, PGD points and the certified accuracies of the records use it. ``"data"``
            (default): the `Dataset`'s ``input_range``; for tensors ``(0, 1)`` when every input
            lies in it, else None. Inputs outside it are refused before anything runs.

    Everything is checked before the first file is written, the data included (shapes,
    dtypes, finite inputs, labels within the model's classes). The trained model is returned
    in eval mode; torch's thread count is the caller's again after. A non-finite loss or parameter
    stops training with `TrainingDiverged`, keeping the last good checkpoint. Under
    ``torchrun`` (an initialised process group) the model is wrapped in
    ``DistributedDataParallel`` and each global batch is split between the processes; rank 0
    writes the files. On CPU, subnormal floats are flushed to zero while training.
    """
    recipe = recipe_named(recipe) if isinstance(recipe, str) else recipe
    if not isinstance(recipe, Recipe):
        raise InputError(f"recipe must be a nemon.Recipe or a name, got {type(recipe).__name__}")
    check_model(model, recipe)
    data, source = as_dataset(data, model, recipe.batch_size)
    data = checked_data(data, model)
    if isinstance(source, TensorSource):  # the checks may have converted the labels
        source = TensorSource(data.train_x, data.train_y)
    chosen_range = checked_range(data, input_range)
    if not (threads is None or callable(threads)):
        check_integer("threads", threads, 1, MAX_THREADS)
    run_dir = None if out is None else Path(out)
    if run_dir is not None:
        check_run_folder(run_dir, resume, overwrite)
    elif resume:
        raise RunFolderError("resume needs the run folder: pass out=")
    _check_tensorboard(tensorboard)
    trainer = _Trainer(
        model, data, source, recipe, run_dir, metadata or {}, threads, files or {}, chosen_range
    )
    caller_threads = torch.get_num_threads()
    with _locked(run_dir, trainer.rank):
        if resume:
            trainer.restore()
        trainer.start_files(overwrite)
        flush = model_device(model).type == "cpu" and torch.set_flush_denormal(True)
        try:
            return trainer.run(progress, tensorboard, stop_after_steps)
        finally:
            if flush:
                torch.set_flush_denormal(False)
            torch.set_num_threads(caller_threads)  # ``threads`` is this run's, not the caller's


def _locked(run_dir: Path | None, rank: int):
    """The run folder's lock (rank 0 of a distributed run holds it for all)."""
    if run_dir is None or rank != 0:
        return contextlib.nullcontext()
    return RunLock(run_dir)


def _progress_wanted(progress: bool | None) -> bool:
    if progress is None:
        return sys.stderr is not None and sys.stderr.isatty()
    return progress


def _check_tensorboard(folder) -> None:
    if folder is None:
        return
    if Path(folder).exists() and not Path(folder).is_dir():
        raise RunFolderError(f"the TensorBoard folder {folder} is a file")
    if importlib.util.find_spec("tensorboard") is None:
        raise RunFolderError(
            "TensorBoard logging needs the tensorboard package: pip install tensorboard"
        )


def adam(parameters, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel where every parameter allows it (floating point, on CPU or
    CUDA): one pass over each parameter instead of a dozen operators (the paper's MLP step
    6% faster on one CPU thread, ``benchmarks/dense_step.py --against a16556d``); otherwise
    the default implementation."""
    parameters = list(parameters)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
    return torch.optim.Adam(parameters, lr=lr, fused=fused or None)


def _model_file_header(model: nn.Module, data: Dataset, input_range) -> dict | None:
    """The model file's header (`nemon.modelfile.header`); None, with a warning naming the
    module, for a model a file cannot describe (the checkpoint then holds only weights)."""
    try:
        span = None if input_range is None else list(input_range)
        return modelfile.header(model, {"name": data.name, "range": span})
    except modelfile.ModelFileError as exc:
        warnings.warn(f"no model.safetensors will be written: {exc}", stacklevel=4)
        return None


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _Trainer:
    """One run of `fit`: set-up, epochs, evaluation and checkpoints as short steps."""

    def __init__(self, model, data, source, recipe, out, metadata, threads, files, input_range):
        self.raw, self.data, self.recipe, self.out = model, data, recipe, out
        self.source = source
        self.input_range = input_range
        self.threads, self.extra_files = threads, files
        self.settings = dict(metadata)  # what a resume compares, as given (instances)
        self.metadata = {k: asdict(v) if is_dataclass(v) else v for k, v in metadata.items()}
        self.rank, self.world = _distributed()
        self.model_file = _model_file_header(model, data, input_range)
        self.device = model_device(model)
        self.model = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.opt = adam(model.parameters(), recipe.lr)
        self.state = _Run()
        self.n_batches = source.n_batches(recipe.batch_size)

    @property
    def ckpt_path(self) -> Path | None:
        return None if self.out is None else self.out / "checkpoint.pt"

    # -- files ----------------------------------------------------------------------------
    def restore(self) -> None:
        ckpt = read_torch_file(self.ckpt_path, map_location=str(self.device))
        check_checksum(self.ckpt_path, ckpt)
        changed, defaulted = self._compare_settings(ckpt)
        if ckpt["epoch"] > self.recipe.epochs:
            raise RunFolderError(
                f"{self.ckpt_path} has finished {ckpt['epoch']} epochs; resume with epochs >= "
                f"{ckpt['epoch']} (a resume may extend or shorten a run, not undo epochs)"
            )
        if defaulted and not changed:
            warnings.warn(
                f"{self.ckpt_path} does not record {', '.join(defaulted[:5])} (written before "
                "those settings existed): resumed with their defaults",
                stacklevel=3,
            )
        if changed:
            raise RunFolderError(
                f"{self.ckpt_path} was written with other settings ({', '.join(changed[:5])}); "
                "resume with the same ones or start a new run"
            )
        recorded_range = ckpt.get("input_range", IMAGES)  # before the setting: always (0, 1)
        recorded_range = None if recorded_range is None else tuple(recorded_range)
        if recorded_range != self.input_range:
            raise RunFolderError(
                f"{self.ckpt_path} was trained with input_range {recorded_range}, this run has "
                f"{self.input_range}; resume with the same input_range or start a new run"
            )
        self.raw.load_state_dict(ckpt.get("live_model", ckpt["model"]))
        self.opt.load_state_dict(ckpt["optimizer"])
        self.state = _Run(ckpt["epoch"], ckpt["step"], ckpt["history"], ckpt["running"])
        self.state.splitting_steps = dict(ckpt.get("splitting_steps", {}))
        layers = dict(self.raw.named_modules())
        for name, step in self.state.splitting_steps.items():
            layers[name].set_splitting_step(step)
        if "live_model" in ckpt:  # averaging: "model" holds the average's weights
            self.state.average = {"count": ckpt["average"]["count"], "weights": ckpt["model"]}

    def _compare_settings(self, ckpt: dict) -> tuple[list[str], list[str]]:
        """The settings that changed since ``ckpt`` and those it lacks that took their
        defaults (`nemon.resume.compare_settings`), each named ``key.setting``: every
        dataclass given to `fit` as metadata, and the recipe, rebuilt from the file and
        compared with the run's instance. Only training settings take defaults."""
        current = dict(self.settings)
        if "recipe" in ckpt or not self.settings:  # older runs of the CLI: their config says it
            current["recipe"] = self.recipe
        training = {f.name for f in fields(Recipe)}
        changed, defaulted = [], []
        for key, value in current.items():
            more, took = compare_settings(ckpt.get(key), value, training)
            changed += [f"{key}.{c}" if is_dataclass(value) else f"{key}: {c}" for c in more]
            defaulted += [f"{key}.{name}" for name in took]
        return changed, defaulted

    def start_files(self, overwrite: bool) -> None:
        if self.world > 1:  # every rank has checked the folder before any rank writes to it
            torch.distributed.barrier()
        if self.out is None or self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)
        if overwrite:
            for name in RUN_FILES:
                (self.out / name).unlink(missing_ok=True)
        for name, text in self.extra_files.items():
            write_text_atomic(text, self.out / name)
        self.write_metrics()

    def write_metrics(self) -> None:
        """``metrics.jsonl`` anew from the history, atomically: a full disk loses no line."""
        lines = "".join(json_line(h) + "\n" for h in self.state.history)
        write_text_atomic(lines, self.out / "metrics.jsonl")

    def checkpoint(self) -> None:
        bad = [n for n, p in self.raw.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingDiverged(
                f"parameters {', '.join(bad)} became non-finite at epoch {self.state.epoch + 1}, "
                f"step {self.state.step}; lower the learning rate (lr = {self.recipe.lr:g})."
                f"{self._kept()}"
            )
        if self.out is None or self.rank != 0:
            return
        s = self.state
        live = self.raw.state_dict()
        weights, resumed = (live, None) if s.average is None else (s.average["weights"], live)
        payload = {
            **self.metadata,
            "checksum": state_checksum(weights, self.metadata.get("config"), resumed),
            "recipe": self.recipe.as_dict(),
            "input_shape": tuple(getattr(self.raw, "input_shape", self.data.input_shape)),
            "num_classes": getattr(self.raw, "num_classes", self.data.num_classes),
            "model": weights,
            "optimizer": self.opt.state_dict(),
            "epoch": s.epoch,
            "step": s.step,
            "history": s.history,
            "running": s.running,
            "splitting_steps": s.splitting_steps,
            "input_range": self.input_range,
        }
        if s.average is not None:  # "model": what to use; "live_model": to resume
            payload.update(live_model=live, average={"count": s.average["count"]})
        if self.model_file is not None:  # anew: a tuned splitting step is part of it
            self.model_file = modelfile.header(self.raw, self.model_file.get("data"))
            payload["model_file"] = self.model_file
        save_atomic(payload, self.ckpt_path)
        if self.model_file is not None:  # the model to use, for every command (nemon.load)
            modelfile.write(self.model_file, weights, self.out / "model.safetensors")

    def _kept(self) -> str:
        if self.ckpt_path is not None and self.ckpt_path.exists():
            return f" The last good checkpoint is kept in {self.ckpt_path}"
        return " No checkpoint had been written yet"

    # -- the loop -------------------------------------------------------------------------
    def run(self, progress: bool | None, tensorboard, stop_after_steps) -> FitResult:
        board = (
            _tensorboard_writer(tensorboard) if tensorboard is not None and self.rank == 0 else None
        )
        self.bar_on = _progress_wanted(progress) and self.rank == 0
        self.lines_on = progress is not False and self.rank == 0
        self.steps_done, self.stop_after = 0, stop_after_steps
        self._apply_threads(working=False)
        self.threads_checked = time.perf_counter()
        while self.state.epoch < self.recipe.epochs:
            with ConvergenceTally() as tally:
                if not self.train_epoch():
                    return FitResult(self.raw, self.state.history, stopped=True)
                record = self.epoch_results()
            record["unconverged_solves"] = tally.count
            self.close_epoch(record)
            if board is not None:
                _log_scalars(board, record, record["epoch"])
        if self.state.average is not None:
            self.raw.load_state_dict(self.state.average["weights"])
        return FitResult(self.raw.eval(), self.state.history, stopped=False)

    def train_epoch(self) -> bool:
        """The remaining steps of the current epoch; False when stopped early."""
        s, recipe = self.state, self.recipe
        self.model.train()
        bar = self._bar()
        gen = torch.Generator().manual_seed(recipe.seed * 100_003 + s.epoch)
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(recipe, s.epoch)
        with training_tolerance(self.raw, recipe.solve_tol):
            for i, (xb, yb) in enumerate(self.source.batches(recipe.batch_size, gen)):
                if i < s.step:
                    continue
                self.train_step(i, xb, yb)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{s.running['loss'] / s.running['count']:.3f}")
                self.steps_done += 1
                if self.stop_after is not None and self.steps_done >= self.stop_after:
                    self.checkpoint()
                    return False
                if recipe.checkpoint_every and s.step % recipe.checkpoint_every == 0:
                    self.checkpoint()
        if bar is not None:
            bar.close()
        return True

    def _bar(self):
        if not self.bar_on:
            return None
        from tqdm.auto import tqdm  # loaded only for a bar: `import nemon` stays light

        s = self.state
        desc = f"epoch {s.epoch + 1}/{self.recipe.epochs}"  # one bar an epoch, removed at its end
        return tqdm(total=self.n_batches, initial=s.step, desc=desc, leave=False, mininterval=1.0)

    def train_step(self, i: int, xb: Tensor, yb: Tensor) -> None:
        s, recipe = self.state, self.recipe
        start = time.perf_counter()
        if callable(self.threads) and start - self.threads_checked > 5.0:
            self._apply_threads(working=True)
            self.threads_checked = start
        if not isinstance(self.source, TensorSource):  # tensors were checked whole
            where = f"training batch {i + 1} of epoch {s.epoch + 1}"
            check_batch(xb, yb, self.raw, self.input_range, where)
        xb, yb = xb.to(self.device), yb.to(self.device, torch.int64)
        if self.world > 1:  # this process's share of the global batch
            xb, yb = xb[self.rank :: self.world], yb[self.rank :: self.world]
        if recipe.tune_splitting_step and i in (min(30, self.n_batches - 1), self.n_batches // 2):
            self.tune_splitting_steps(xb)
        eps = training_radius(recipe, s.epoch, i, self.n_batches)
        progress = ramp_progress(recipe, s.epoch, i, self.n_batches)
        step = s.epoch * self.n_batches + i
        with SolveLog() as log:  # the statistics this step's solves return
            logits, loss = recipe_loss(
                self.model, self.raw, recipe, xb, yb, eps, progress, step, self.input_range
            )
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f"the loss is {loss_value} at epoch {s.epoch + 1}, step {i + 1}; lower the "
                    f"learning rate (lr = {recipe.lr:g}).{self._kept()}"
                )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), recipe.grad_clip)
        self.opt.step()
        fwd, bwd = log.mean_iterations("forward"), log.mean_iterations("backward")
        run = s.running
        run["seconds"] += time.perf_counter() - start
        run["loss"] += loss_value * len(xb)
        run["correct"] += int((logits.argmax(1) == yb).sum())
        run["count"] += len(xb)
        run["fwd"] += fwd
        run["bwd"] += bwd
        run["batches"] += 1
        s.step = i + 1

    def tune_splitting_steps(self, xb: Tensor) -> None:
        """Tune every splitting layer's step on its input for this batch (captured by one
        forward pass in eval mode, which leaves batch statistics alone); kept in checkpoints."""
        layers = {
            name: m
            for name, m in self.raw.named_modules()
            if isinstance(m, ImplicitLayer) and m.solver_options.method.splitting
        }
        if not layers:
            return
        inputs = {}
        hooks = [
            m.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0]))
            for name, m in layers.items()
        ]
        self.raw.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.raw(xb)
                for name, u in inputs.items():
                    step = layers[name].tune_splitting_step(u)
                    if step is not None:
                        self.state.splitting_steps[name] = step
        finally:
            for h in hooks:
                h.remove()
            self.raw.train()

    def epoch_results(self) -> dict:
        """Average the weights (SWA) and evaluate the finished epoch."""
        s, recipe = self.state, self.recipe
        if recipe.swa_start and s.epoch + 1 >= recipe.swa_start:
            s.average = _averaged(s.average, self.raw)
        with _weights(self.raw, s.average), evaluation_mode(self.raw):  # the average's results
            record = self.epoch_record(_reduce(s.running, self.world, self.device))
        record["lr"] = learning_rate(recipe, s.epoch)
        record["train_eps"] = training_radius(recipe, s.epoch, self.n_batches - 1, self.n_batches)
        if s.average is not None:
            record["averaged_epochs"] = s.average["count"]
        return record

    def close_epoch(self, record: dict) -> None:
        """Log and checkpoint the finished epoch."""
        s = self.state
        record["threads"] = torch.get_num_threads()
        self._apply_threads(working=True)
        s.history.append(record)
        s.epoch, s.step, s.running = s.epoch + 1, 0, _fresh_running()
        if self.out is not None and self.rank == 0:
            self.write_metrics()  # first: a checkpoint that fails to write keeps the record
        self.checkpoint()
        if self.lines_on:
            _print_epoch(record, self.bar_on)

    def epoch_record(self, run: dict) -> dict:
        model, data = self.raw, self.data
        test = evaluate(model, data.test_x, data.test_y)
        bound = getattr(model, "lipschitz_bound", None)
        record = {
            "epoch": self.state.epoch + 1,
            "train_loss": run["loss"] / max(run["count"], 1),
            "train_accuracy": run["correct"] / max(run["count"], 1),
            "train_samples": int(run["count"]),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "forward_iterations": run["fwd"] / max(run["batches"], 1),
            "backward_iterations": run["bwd"] / max(run["batches"], 1),
            "train_seconds": run["seconds"],
            "lipschitz": float(bound().detach()) if bound is not None else None,
        }
        if self.recipe.cert_eval_eps:
            n = self.recipe.cert_eval_limit
            eps = list(self.recipe.cert_eval_eps)
            with warnings.catch_warnings():  # a 0 here is a number in the record, not news
                warnings.filterwarnings("ignore", "method .* certifies none", CertificateWarning)
                x, y = data.test_x[:n], data.test_y[:n]
                span = self.input_range
                cert = certified_accuracy(model, x, y, eps, "interval", 1000, span, False)
            record["certified"] = {f"{e:g}": v for e, v in cert.items()}
        return record

    def _apply_threads(self, working: bool) -> None:
        if callable(self.threads):
            torch.set_num_threads(int(self.threads(working)))
        elif self.threads is not None:
            torch.set_num_threads(int(self.threads))


def _print_epoch(record: dict, bar_shown: bool) -> None:
    """One line per epoch (through tqdm when its bars are on screen)."""
    lip = record["lipschitz"]
    line = (
        f"epoch {record['epoch']}: test acc {record['test_accuracy']:.4f}  "
        f"fwd {record['forward_iterations']:.1f}  bwd {record['backward_iterations']:.1f}  "
        f"{record['train_seconds']:.2f} s" + (f"  Lip {lip:.3g}" if lip is not None else "")
    )
    if "certified" in record:
        line += "  certified " + " ".join(f"{k}: {v:.4f}" for k, v in record["certified"].items())
    if bar_shown:
        from tqdm.auto import tqdm

        tqdm.write(line)
    else:
        print(line, flush=True)


def _averaged(average: dict | None, model: nn.Module) -> dict:
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
def _weights(model: nn.Module, average: dict | None):
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
