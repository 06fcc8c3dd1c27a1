"""Average end-of-epoch checkpoints of one run and measure the average on the MNIST test set.

    python benchmarks/average_epochs.py CKPT [CKPT ...] [--json OUT] [--threads N]

Each ``CKPT`` is a copy of a run's ``checkpoint.pt`` taken at an epoch's end (step 0); they are
averaged as ``--swa-start`` would have (``nemon.training._averaged``), and the average's clean
accuracy and interval-certified accuracy at ``--eps`` (box clipped to [0, 1], the model's
float32) are printed. It tells, from one finished run, which averaging window would have paid.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nemon.app.checkpoints import CheckpointError, load_checkpoint
from nemon.data import load_dataset
from nemon.training import _averaged, certified_accuracy, evaluate


def average(paths: list[Path]):
    """The first checkpoint's model holding the mean of all their weights."""
    mean, model, config = None, None, None
    for path in paths:
        try:
            model, ckpt = load_checkpoint(path)
        except CheckpointError as err:
            raise SystemExit(str(err)) from None
        if ckpt["step"] != 0:
            raise SystemExit(f"{path} was written inside epoch {ckpt['epoch'] + 1}, not at its end")
        if "live_model" in ckpt:
            raise SystemExit(f"{path} already holds an average (its run used --swa-start)")
        if config is not None and ckpt["config"] != config:
            raise SystemExit(f"{path} belongs to another run than {paths[0]}")
        config = ckpt["config"]
        mean = _averaged(mean, model)
    model.load_state_dict(mean["weights"])
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = average(args.checkpoints).eval()
    data = load_dataset("mnist")
    start = time.perf_counter()
    result = {
        "checkpoints": [str(c) for c in args.checkpoints],
        "clean": evaluate(model, data.test_x, data.test_y)["accuracy"],
        "certified": certified_accuracy(model, data.test_x, data.test_y, [args.eps], "interval")[
            args.eps
        ],
        "eps": args.eps,
    }
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
