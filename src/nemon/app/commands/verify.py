"""nemon verify: complete verification into a resumable run folder."""

from __future__ import annotations

from pathlib import Path

from ..arguments import (
    NONNEGATIVE,
    POSITIVE,
    RADIUS,
    UsageError,
    add_input_range,
    add_model,
    input_range_of,
    number,
)
from ..checkpoints import (
    RunFolderError,
)
from ..loading import load_with_data
from ..verify_run import check_folder, model_identity, summary_line, verify_folder

__all__ = ["add", "validate", "run"]


def add(sub, common) -> None:
    p = sub.add_parser(
        "verify",
        help="complete verification at radius --eps: each test image certified, refuted or unknown",
        parents=[common],
    )
    add_model(p)
    p.add_argument("--eps", type=RADIUS, required=True, help="the l_inf radius")
    p.add_argument(
        "--time-limit",
        type=number(low=0.0),
        default=60.0,
        help="seconds of branch and bound per image before it is left unknown (default 60)",
    )
    p.add_argument("--attack-steps", type=POSITIVE, default=50, help="PGD steps (default 50)")
    p.add_argument("--attack-restarts", type=POSITIVE, default=3, help="PGD restarts (default 3)")
    p.add_argument("--seed", type=NONNEGATIVE, default=0, help="PGD's seed")
    add_input_range(p, "intersected with the ball")
    p.add_argument("--test-limit", type=POSITIVE, help="use only the first N test images")
    p.add_argument("--data-dir")
    p.add_argument(
        "--out", help="run folder: each verdict recorded as it is decided (default: none)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (unknowns are retried when --time-limit is larger "
        "than the one that left them)",
    )
    p.add_argument("--json", help="write the summary to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(device="cpu")


def validate(args) -> None:
    try:
        import highspy  # noqa: F401
        import scipy.sparse  # noqa: F401
    except ImportError:
        raise UsageError("verify needs HiGHS and SciPy: pip install 'nemon[verify]'") from None
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out, the run folder to continue")
    if args.out is not None:
        try:
            check_folder(Path(args.out), args.resume)
        except RunFolderError as exc:
            raise UsageError(f"--out: {exc}") from None


def run(args) -> dict:
    model, config, x, y = load_with_data(args)
    span = input_range_of(args, config["input_range"], x)
    question = {
        **model_identity(args.checkpoint),
        "dataset": config["dataset"],
        "eps": args.eps,
        "clip": None if span is None else list(span),  # the run folder's key for the range
        "test_limit": args.test_limit,
        "time_limit": args.time_limit,
        "attack_steps": args.attack_steps,
        "attack_restarts": args.attack_restarts,
        "seed": args.seed,
    }
    out = None if args.out is None else Path(args.out)
    progress = False if args.no_progress else None
    summary = verify_folder(model, x, y, question, out, args.resume, progress)
    print(summary_line(summary))
    return summary
