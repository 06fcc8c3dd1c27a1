"""`nemon verify`: complete verification of a test set, each verdict recorded as it is decided.

A run folder (``--out``) holds:

- ``config.json``: the question (model and the sha256 of its weights, dataset, eps, clip, test
  limit) and the budget of the latest run (time limit, attack steps and restarts, seed);
- ``verdicts.jsonl``: one line per decided input (``index`` in the test set, ``label``,
  ``verdict`` certified / refuted / unknown, ``stage``, ``lower``, ``upper``, ``seconds``,
  ``nodes``, ``time_limit``), appended, flushed and synced as it is written; the last line of an
  index is its verdict;
- ``counterexamples/INDEX.npy``: the point that refutes input INDEX (an array shaped like it, in
  the model's dtype: ``numpy.load``);
- ``summary.json``: what `summarise` reports over every recorded input.

A resume keeps the certified and refuted inputs and retries the others: those not recorded, and
the unknowns left by a smaller time limit than the resume's (a later run may have more time; one
with no more would repeat the same search). Its question must be the same, its budget may
differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..modelfile import model_file_path
from ..pretrained import describe_pretrained, pretrained_names
from ..progress import Progress
from ..runs import (
    RunFolderError,
    RunLock,
    _atomic_write,
    check_run_folder,
    json_line,
    write_text_atomic,
)

__all__ = [
    "CHUNK",
    "QUESTION",
    "model_identity",
    "check_folder",
    "read_verdicts",
    "verify_folder",
    "summarise",
    "summary_line",
]

#: Inputs per `nemon.verification.verify` call: the batched stages (certificates, PGD) of a
#: chunk are recorded when it reaches its search, so a kill loses little.
CHUNK = 200
#: The settings that define the question; a resume must keep them (the budget may change).
QUESTION = ("sha256", "dataset", "eps", "clip", "test_limit")
STAGES = ("linear", "centre", "attack", "search")
VERDICTS = ("certified", "refuted", "unknown")


# -- the folder -----------------------------------------------------------------------------
def model_identity(name_or_path: str) -> dict:
    """``model`` (the name as given) and the ``sha256`` of its weights file; a local path is
    preferred over a shipped model of the same name, as `nemon.app.cli._load_model` does."""
    if not Path(name_or_path).exists() and name_or_path in pretrained_names():
        return {"model": name_or_path, "sha256": describe_pretrained(name_or_path)["sha256"]}
    digest = hashlib.sha256()
    with open(model_file_path(name_or_path), "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return {"model": name_or_path, "sha256": digest.hexdigest()}


def check_folder(out: Path, resume: bool) -> None:
    """Before any work: a new or empty folder, or (``resume``) one that holds a run."""
    advice = "pass --resume to continue it, or choose another folder"
    check_run_folder(out, resume, overwrite=False, marker="config.json", advice=advice)


def _differing_key(old: dict, new: dict) -> str | None:
    """The first question setting that differs, as ``key: old -> new`` (the model is compared by
    the sha256 of its weights, so a path may be spelled differently)."""
    for key in QUESTION:
        if old.get(key) == new[key]:
            continue
        if key == "sha256":
            was = f"{old.get('model')} (sha256 {str(old.get('sha256'))[:12]})"
            return f"model: {was} -> {new['model']} (sha256 {new['sha256'][:12]})"
        return f"{key}: {old.get(key)} -> {new[key]}"
    return None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunFolderError(f"{path} cannot be read ({exc})") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{path} is not a mapping of settings")
    return value


def read_verdicts(folder: Path, n: int) -> dict[int, dict]:
    """The last recorded line of each input. A last line cut short by a kill (no newline) is
    dropped, and cut off the file so that the next line starts on its own; a damaged complete
    line is refused by number."""
    path = folder / "verdicts.jsonl"
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    records = {}
    for number, line in enumerate(complete.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            index = record["index"]
            ok = isinstance(index, int) and 0 <= index < n and record["verdict"] in VERDICTS
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise RunFolderError(f"{path} line {number} is damaged; refused (remove the line)")
        records[index] = record
    if len(complete) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    return records


def _settled(records: dict[int, dict], folder: Path | None, time_limit: float) -> dict[int, dict]:
    """The inputs a resume skips: certified, refuted with the counterexample on disk, or unknown
    after a search of at least ``time_limit`` seconds."""

    def settled(i: int, r: dict) -> bool:
        if r["verdict"] == "unknown":
            return r.get("time_limit", -math.inf) >= time_limit
        if r["verdict"] == "refuted":
            return folder is None or (folder / "counterexamples" / f"{i}.npy").is_file()
        return True

    return {i: r for i, r in records.items() if settled(i, r)}


class _Log:
    """The records of a run, appended to ``verdicts.jsonl`` (flushed and synced) as they come,
    and the count of each verdict among them."""

    def __init__(self, folder: Path | None, records: dict[int, dict]) -> None:
        self.folder, self.records = folder, records
        self.count = {v: 0 for v in VERDICTS}
        for r in records.values():
            self.count[r["verdict"]] += 1
        self._fd = None
        if folder is not None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd = os.open(folder / "verdicts.jsonl", flags, 0o666)

    def write(self, record: dict, counterexample: torch.Tensor | None) -> None:
        if self._fd is not None:
            if counterexample is not None:  # first: a refuted line always has its point
                path = self.folder / "counterexamples" / f"{record['index']}.npy"
                point = counterexample.detach().cpu().numpy()
                _atomic_write(path, lambda f: np.save(f, point))  # 3 KB a 28 x 28 image
            os.write(self._fd, (json_line(record) + "\n").encode())
            os.fsync(self._fd)
        old = self.records.get(record["index"])
        if old is not None:
            self.count[old["verdict"]] -= 1
        self.count[record["verdict"]] += 1
        self.records[record["index"]] = record

    def counts(self) -> str:
        return ", ".join(f"{self.count[v]} {v}" for v in VERDICTS)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- progress -----------------------------------------------------------------------------------
class _Progress(Progress):
    """`nemon.progress.Progress` over the inputs, the verdict counts as its status."""

    def __init__(self, log: _Log, done: int, n: int, show: bool | None) -> None:
        super().__init__(n, "verify", "input", show, initial=done)
        self.log = log

    def update(self) -> None:
        """One more input written."""
        super().update(1, self.log.counts())


# -- one chunk ----------------------------------------------------------------------------------


class _Chunk:
    """`verify` on some inputs, each verdict written as `verify` reports it (its fields final),
    the inputs left unknown when the chunk ends."""

    def __init__(self, rows: list[int], y: torch.Tensor, log: _Log, progress, budget: dict):
        self.rows, self.y, self.log, self.progress = rows, y, log, progress
        self.time_limit = budget["time_limit"]
        self.written: set[int] = set()

    def on_verdict(self, i: int, result) -> None:
        self._write(i, result)

    def finish(self, result) -> None:
        for k in range(len(self.rows)):
            self._write(k, result)

    def _write(self, k: int, result) -> None:
        if k in self.written:
            return
        self.written.add(k)
        refuted, certified = bool(result.falsified[k]), bool(result.certified[k])
        record = {
            "index": self.rows[k],
            "label": int(self.y[k]),
            "verdict": "refuted" if refuted else "certified" if certified else "unknown",
            "stage": result.stage[k],
            "lower": float(result.lower[k]),
            "upper": float(result.upper[k]),
            "seconds": float(result.seconds[k]),
            "nodes": int(result.nodes[k]) if result.nodes is not None else 0,
            "reason": result.reasons[k] if result.reasons else "",
            "time_limit": self.time_limit,
        }
        self.log.write(record, result.counterexamples[k] if refuted else None)
        self.progress.update()


# -- the run ------------------------------------------------------------------------------------
def verify_folder(model, x, y, config: dict, out: Path | None, resume: bool, progress=None) -> dict:
    """Verify every input of ``x, y`` not yet settled in ``out`` (None: no folder), ``CHUNK``
    at a time; returns `summarise` over every recorded input."""
    if out is None:
        return _verify_all(model, x, y, config, None, {}, progress)
    with RunLock(out):
        check_folder(out, resume)
        records = {}
        if resume:
            old = _read_json(out / "config.json")
            differ = _differing_key(old, config)
            if differ is not None:
                raise RunFolderError(
                    f"--resume: {out} holds a run of another question ({differ}); choose "
                    "another folder"
                )
            records = read_verdicts(out, len(x))
        left = ".config.json.*", ".summary.json.*", "counterexamples/.*.npy.*"
        for tmp in [p for pattern in left for p in out.glob(pattern)]:
            tmp.unlink(missing_ok=True)  # left by a kill
        earlier = _read_json(out / "summary.json") if (out / "summary.json").is_file() else {}
        write_text_atomic(json_line(config) + "\n", out / "config.json")
        start = time.monotonic()

        def save(summary: dict) -> dict:  # after each chunk: a killed run keeps its summary
            # every run's wall-clock seconds on this folder, resumes included
            summary["wall_seconds"] = earlier.get("wall_seconds", 0.0) + time.monotonic() - start
            write_text_atomic(json_line(summary) + "\n", out / "summary.json")
            return summary

        summary = save(_verify_all(model, x, y, config, out, records, progress, save))
    return summary


def _verify_all(model, x, y, config, out, records, progress, save=None) -> dict:
    from ..verification import verify

    settled = _settled(records, out, config["time_limit"])
    todo = [i for i in range(len(x)) if i not in settled]
    log = _Log(out, records)
    bar = _Progress(log, len(settled), len(x), progress)
    budget = {k: config[k] for k in ("time_limit", "attack_steps", "attack_restarts", "seed")}
    try:
        for start in range(0, len(todo), CHUNK):
            rows = todo[start : start + CHUNK]
            chunk = _Chunk(rows, y[rows], log, bar, budget)
            result = verify(
                model, x[rows], y[rows], config["eps"], input_range=_input_range(config),
                on_verdict=chunk.on_verdict, **budget,
            )  # fmt: skip
            chunk.finish(result)
            if save is not None:
                save(summarise(records, len(x), config))
    finally:
        bar.close()
        log.close()
    return summarise(records, len(x), config)


def summarise(records: dict[int, dict], n: int, config: dict) -> dict:
    """Counts, accuracies, seconds and stages over the recorded inputs (of ``n``)."""
    verdicts = [r["verdict"] for r in records.values()]
    certified, refuted = verdicts.count("certified"), verdicts.count("refuted")
    seconds = [r["seconds"] for r in records.values()]
    stages = {s: 0 for s in STAGES}
    for r in records.values():
        if r["verdict"] != "unknown" and r["stage"] in stages:
            stages[r["stage"]] += 1
    return {
        **config,
        "images": n,
        "recorded": len(records),
        "certified": certified,
        "refuted": refuted,
        "unknown": n - certified - refuted,
        "verified_robust_accuracy": certified / n if n else math.nan,
        "not_refuted_accuracy": (n - refuted) / n if n else math.nan,
        "seconds_total": math.fsum(seconds),
        "seconds_median": statistics.median(seconds) if seconds else 0.0,
        "seconds_max": max(seconds, default=0.0),
        "stages": stages,
    }


def summary_line(s: dict) -> str:
    return (
        f"certified {s['certified']} / refuted {s['refuted']} / unknown {s['unknown']} of "
        f"{s['images']}: verified robust accuracy {s['verified_robust_accuracy']:.4f} "
        f"(not refuted {s['not_refuted_accuracy']:.4f})"
    )


def _input_range(config: dict) -> tuple[float, float] | None:
    """The question's input range (recorded as ``clip``, the key of the first run folders)."""
    return None if config["clip"] is None else tuple(config["clip"])
