"""nemon bench: solvers, epoch times and time to accuracy."""

from __future__ import annotations

from ..arguments import POSITIVE, number
from ..bench import run_bench

__all__ = ["add", "run"]


def add(sub, common) -> None:
    p = sub.add_parser(
        "bench", help="solver / scaling / epoch-time benchmark (JSON and plot)", parents=[common]
    )
    p.add_argument("--checkpoint", help="model for the solver comparison (default: untrained)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--epochs", type=POSITIVE, default=1, help="MNIST epochs per family")
    p.add_argument(
        "--target-accuracy",
        type=number(low=0.0, high=1.0, low_open=True),
        default=0.97,
        help="report each family's training seconds to this test accuracy (default 0.97)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, no MNIST epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir")


def run(args) -> dict:
    result = run_bench(
        args.out,
        args.checkpoint,
        args.data_dir,
        args.device,
        args.quick,
        args.epochs,
        args.target_accuracy,
    )
    print(f"matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s")
    for r in result["solvers"]:
        if "forward_iterations" in r:
            print(
                f"{r['solver']:34s} fwd {r['forward_iterations']:4d} "
                f"bwd {r.get('backward_iterations', '-')!s:>4} "
                f"{1e3 * r['forward_seconds']:8.2f} ms  rel. error {r['relative_error']:.1e}"
            )
    for r in result.get("epochs", []):
        reached = r["seconds_to_target"]
        to_target = "not reached" if reached is None else f"{reached:.1f} s"
        print(
            f"{r['model']:6s} {r['solver']:10s} {r['seconds_per_epoch']:6.2f} s/epoch  "
            f"fwd {r['forward_iterations']:.1f} bwd {r['backward_iterations']:.1f}  "
            f"acc {r['test_accuracy']:.4f}  to {r['target_accuracy']:g}: {to_target}"
        )
    for r in result.get("dense_steps", []):
        print(
            f"step {r['model']:16s} {r['ms_per_step']:6.2f} ms  {r['over_mlp']:.2f}x the MLP  "
            f"iterations {r['forward_iterations']}/{r['backward_iterations']}"
        )
    for r in result.get("compiled_steps", []):
        print(
            f"compiled {r['model']:20s} {r['compiled_ms']:8.2f} ms a step against eager "
            f"{r['eager_ms']:8.2f} ms ({r['compiled_over_eager']:.2f}x), compiled in "
            f"{r['compile_seconds']:.1f} s, one thread"
        )
    for r in result["conv_solvers"]:
        print(
            f"conv {r['solver']:29s} fwd {r['forward_iterations']:4d} "
            f"bwd {r['backward_iterations']:4d} {1e3 * r['forward_seconds']:8.2f} ms fwd "
            f"{1e3 * r['backward_seconds']:8.2f} ms bwd"
        )
    for r in result["stacked_solvers"]:
        print(
            f"stacked {r['solver']:26s} fwd {r['forward_iterations']} "
            f"bwd {r['backward_iterations']} {1e3 * r['forward_seconds']:8.2f} ms fwd "
            f"{1e3 * r['backward_seconds']:8.2f} ms bwd"
        )
    if "implicit_over_explicit" in result:
        print(
            f"NEMON (diagonal) epoch / explicit MLP epoch: {result['implicit_over_explicit']:.2f}x"
            f" (FLOPs of a step: {result['implicit_over_explicit_flops']:.2f}x)"
        )
    for r in result["certified_steps"]:
        print(
            f"{r['arch']:10s} clean step {r['clean_step_ms']:7.1f} ms  interval step "
            f"{r['interval_step_ms']:7.1f} ms ({r['interval_over_clean']:.2f}x; FLOPs "
            f"{r['interval_over_clean_flops']:.2f}x)  "
            f"certified epoch {r['certified_epoch_s']:.0f} s"
        )
    print(f"wrote {args.out}/bench.json and bench.png")
    return result
