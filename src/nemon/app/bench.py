"""``nemon bench``: solver and training speed, measured side by side in one run on one machine.

Sections (each a function returning plain data): the machine's matmul peak, a solver comparison
on a model (ours and TorchDEQ's Anderson and Broyden solving the same equation), scaling of the
solve with the hidden width ``n`` and the batch size, and time per MNIST epoch for each family.
Imported by the command line only (it pulls matplotlib); not part of ``import nemon``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from ..certificates import full_float32
from ..data import DataError, load_dataset
from ..layers import ImplicitLayer, NEMONDense
from ..losses import recipe_loss, training_tolerance
from ..models import build_model
from ..recipes import Recipe
from ..solve_log import SolveLog
from ..solvers import SolverOptions, alpha_star, solve
from ..training import adam
from .checkpoints import load_checkpoint
from .config import PRESETS, TrainConfig
from .plots import pyplot
from .train import train

__all__ = [
    "matmul_peak",
    "solver_comparison",
    "scaling",
    "step_flops",
    "epoch_times",
    "dense_step_times",
    "seconds_to_accuracy",
    "run_bench",
]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device="cpu", size: int = 2048, repeat: int = 10) -> float:
    """Measured float32 GEMM throughput in GFLOP/s (the machine's practical peak)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    _sync(device)
    return 2 * size**3 * repeat / (time.perf_counter() - start) / 1e9


def _relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def solver_comparison(
    model, u: torch.Tensor, labels: torch.Tensor, tol: float = 1e-4
) -> list[dict]:
    """Forward and backward iterations and times of every NEMON solver at the same tolerance,
    and TorchDEQ's solvers on the averaged map ``N_alpha*`` (same equation), when installed.

    Every row reports the true relative error of its solution against a tight reference solve.
    """
    layer = model.layer
    weights = tuple(w.detach() for w in layer.effective_weights())
    z = layer.injection(model.prepare_input(u)).detach()
    eq = layer.equilibrium(weights)
    system = eq.forward_system(weights, z)
    tight = 1e-10 if z.dtype == torch.float64 else 2e-6  # float32 stalls near 1e-6
    ref_opts = SolverOptions(method="diagonal", tol=tight, residual="fixed_point", max_iter=20000)
    with full_float32():  # the reference in IEEE float32, not TensorFloat-32 (GPUs)
        ref, _ = solve(system, options=ref_opts)
    rows = []
    for method in ("averaged", "diagonal", "anderson"):
        with layer.solver_settings(method=method, tol=tol), SolveLog() as log:
            model.zero_grad()
            start = time.perf_counter()
            loss = F.cross_entropy(model(u), labels)
            mid = time.perf_counter()
            loss.backward()
            end = time.perf_counter()
            x, _ = solve(system, options=SolverOptions(method=method, tol=tol))
        rows.append(
            {
                "solver": f"nemon:{method}",
                "forward_iterations": log.stats("forward")[0].iterations,
                "backward_iterations": log.stats("backward")[0].iterations,
                "forward_seconds": mid - start,
                "backward_seconds": end - mid,
                "relative_error": _relative_error(x, ref),
            }
        )
    rows += _torchdeq_rows(system, ref, tol)
    return rows


def conv_solver_comparison(quick: bool = False, device="cpu") -> list[dict]:
    """The NEMON solvers on the paper's conv layer (16 channels, 28x28; 8x8 when quick), whose
    iteration costs a convolution: does Anderson's mixing pay off here? The kernel is drawn with
    a spread that couples the channels (an untrained layer's is near zero)."""
    torch.manual_seed(0)
    size, batch = (8, 16) if quick else (28, 100)
    model = build_model("nemon", "conv", (1, size, size), 10, 16, gamma=0.95).to(device)
    with torch.no_grad():
        model.layer.kernel.normal_(0.0, 0.15)
    u = torch.rand(batch, 1, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return [r for r in solver_comparison(model, u, y) if r["solver"].startswith("nemon:")]


def stacked_solver_comparison(quick: bool = False, device="cpu", repeat: int = 5) -> list[dict]:
    """The NEMON solvers on ``conv-stacked`` (a NEMON conv layer on the downsampled image, then
    the dense NEMON layer), set for both implicit layers together: median seconds of a forward
    and a backward pass of the whole model over interleaved rounds, and the iterations of each
    layer."""
    torch.manual_seed(0)
    batch = 16 if quick else 100
    model = build_model("nemon", "conv-stacked", gamma=0.5, hidden=100).to(device)
    layers = [m for m in model.modules() if isinstance(m, ImplicitLayer)]
    with torch.no_grad():
        layers[0].kernel.normal_(0.0, 0.15)  # couple the channels, as in the conv comparison
    u = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    methods = ("averaged", "diagonal", "anderson")
    times = {m: ([], []) for m in methods}
    iterations = {}
    for round_ in range(repeat + 1):  # interleaved rounds: drift of the machine hits all alike
        for method in methods:
            with ExitStack() as stack:
                for layer in layers:
                    stack.enter_context(layer.solver_settings(method=method))
                log = stack.enter_context(SolveLog())
                model.zero_grad()
                start = time.perf_counter()
                loss = F.cross_entropy(model(u), y)
                _sync(device)
                mid = time.perf_counter()
                loss.backward()
                _sync(device)
            if round_ > 0:  # the first round warms up
                times[method][0].append(mid - start)
                times[method][1].append(time.perf_counter() - mid)
            iterations[method] = [  # one solve per layer, in order; the adjoints in reverse
                [s.iterations for s in log.stats("forward")],
                [s.iterations for s in reversed(log.stats("backward"))],
            ]
    return [
        {
            "solver": f"nemon:{m}",
            "forward_seconds": sorted(times[m][0])[repeat // 2],
            "backward_seconds": sorted(times[m][1])[repeat // 2],
            "forward_iterations": iterations[m][0],
            "backward_iterations": iterations[m][1],
        }
        for m in methods
    ]


def _torchdeq_rows(system, ref: torch.Tensor, tol: float) -> list[dict]:
    try:
        from torchdeq.solver import get_solver
    except ImportError:
        return [{"solver": "torchdeq", "skipped": "pip install torchdeq to compare"}]
    alpha = alpha_star(system.a_diagonal)

    def averaged_map(x):
        return x + alpha * (system(x) - x)

    rows = []
    for name in ("anderson", "broyden"):
        solver = get_solver(name)
        x0 = torch.zeros_like(system.z)
        with torch.no_grad():
            start = time.perf_counter()
            x, _, info = solver(averaged_map, x0, max_iter=500, tol=tol, stop_mode="rel")
            seconds = time.perf_counter() - start
        rows.append(
            {
                "solver": f"torchdeq:{name} on N_alpha*",
                "forward_iterations": int(info["nstep"].max()),
                "forward_seconds": seconds,
                "relative_error": _relative_error(x, ref),
            }
        )
    return rows


def scaling(
    widths=(50, 100, 200, 400, 800, 1600),
    batch_sizes=(32, 300, 1024),
    iterations: int = 30,
    device="cpu",
    peak: float | None = None,
) -> list[dict]:
    """Time per iteration of the diagonal-step solve against width ``n`` and batch size."""
    rows = []
    for n in widths:
        torch.manual_seed(0)
        layer = NEMONDense(64, n).to(device)
        with torch.no_grad():
            layer.parametrizations.A.original.normal_(0, 3.0 / n**0.5)
        weights = tuple(w.detach() for w in layer.effective_weights())
        eq = layer.equilibrium(weights)
        for b in batch_sizes:
            z = layer.injection(torch.rand(b, 64, device=device)).detach()
            system = eq.forward_system(weights, z)
            opts = SolverOptions(method="diagonal", tol=1e-15, max_iter=iterations, warn=False)
            solve(system, options=opts)
            _sync(device)
            start = time.perf_counter()
            _, stats = solve(system, options=opts)
            _sync(device)
            per_iter = (time.perf_counter() - start) / stats.iterations
            gflops = 2 * b * n * n / per_iter / 1e9
            rows.append(
                {
                    "n": n,
                    "batch": b,
                    "us_per_iteration": per_iter * 1e6,
                    "gflops": gflops,
                    "fraction_of_peak": None if peak is None else gflops / peak,
                }
            )
    return rows


def seconds_to_accuracy(history: list[dict], target: float) -> float | None:
    """Training seconds until the end of the first epoch whose test accuracy reaches
    ``target`` (None if none does): time to accuracy, whatever the iterations cost."""
    seconds = 0.0
    for record in history:
        seconds += record["train_seconds"]
        if record["test_accuracy"] >= target:
            return seconds
    return None


def epoch_times(
    families,
    epochs: int = 1,
    data_dir=None,
    device="cpu",
    train_limit=None,
    target: float = 0.97,
) -> list[dict]:
    """Seconds per MNIST epoch and mean iterations, the ``mnist-fc`` preset (the paper's FC
    setting, training solves at its 1e-2), one run per family; the training seconds to the
    test accuracy ``target``; and the trained model's FLOPs for one step on the first 300
    training images."""
    data = load_dataset("mnist", data_dir)
    u, y = data.train_x[:300].to(device), data.train_y[:300].to(device)
    rows = []
    for family, solver in families:
        cfg = TrainConfig(
            **{**PRESETS["mnist-fc"], "model": family, "solver": solver, "epochs": epochs},
            device=device,
            train_limit=train_limit,
        )
        out = Path("/tmp") / f"nemon-bench-epoch-{family}-{solver}"
        run = train(cfg, out, data=data, progress=False, overwrite=True)
        hist = run["history"]
        flops, iterations = step_flops(run["model"], u, y)
        rows.append(
            {
                "model": family,
                "solver": solver or "default",
                "seconds_per_epoch": sum(h["train_seconds"] for h in hist) / len(hist),
                "forward_iterations": sum(h["forward_iterations"] for h in hist) / len(hist),
                "backward_iterations": sum(h["backward_iterations"] for h in hist) / len(hist),
                "test_accuracy": hist[-1]["test_accuracy"],
                "best_test_accuracy": max(h["test_accuracy"] for h in hist),
                "target_accuracy": target,
                "seconds_to_target": seconds_to_accuracy(hist, target),
                "step_gflop": flops / 1e9,
                "step_iterations": iterations,
            }
        )
    return rows


def _step_loss(model, u, y, eps: float = 0.0):
    """The clean loss (``eps = 0``) or the clean/interval mix that certified training uses at the
    end of its ramp, as training computes it (`nemon.losses.recipe_loss`)."""
    recipe = Recipe(cert_eps=eps, cert_weight=0.5) if eps > 0 else Recipe()
    return recipe_loss(model, model, recipe, u, y, eps, 1.0)[1]


def step_flops(model, u, y, eps: float = 0.0) -> tuple[float, dict]:
    """Floating-point operations of one training step (the loss of `_step_loss`, forward
    and backward), counted by `torch.utils.flop_counter.FlopCounterMode` on the operators
    that run, and the solver iterations of that step: the arithmetic floor of a time ratio,
    whatever the implementation's overheads."""
    with FlopCounterMode(display=False) as counter, SolveLog() as log:
        _step_loss(model, u, y, eps).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()), {
        k: s[-1].iterations for k in ("forward", "backward") if (s := log.stats(k))
    }


def _step_seconds(model, u, y, eps: float, repeat: int) -> float:
    """Median seconds of one Adam step on `_step_loss`."""
    opt = adam(model.parameters(), 1e-4)
    times = []
    for _ in range(repeat + 2):
        start = time.perf_counter()
        loss = _step_loss(model, u, y, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(u.device)
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[repeat // 2]


def compiled_step_times(
    shapes=(("dense", (1, 28, 28), 100), ("conv", (1, 28, 28), 16)),
    batch: int = 64,
    repeat: int = 5,
    device="cpu",
) -> list[dict]:
    """One Adam step of a NEMON model, eager and under ``torch.compile(fullgraph=True)``, on
    one thread: the compiled step's first call (compile time included) and the median of both
    after warm-up, side by side in one run. ``shapes``: ``(arch, input_shape, hidden)``."""
    rows, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arch, shape, hidden in shapes:
            torch.manual_seed(0)
            model = build_model("nemon", arch, shape, hidden=hidden).to(device)
            u = torch.rand(batch, *shape, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            opt = adam(model.parameters(), 1e-4)
            torch._dynamo.reset()
            compiled = torch.compile(model, fullgraph=True)
            first = _timed_step(compiled, opt, u, y)
            times = {"eager": [], "compiled": []}
            for _ in range(repeat + 1):  # interleaved; the first round warms up
                for name, m in (("eager", model), ("compiled", compiled)):
                    times[name].append(_timed_step(m, opt, u, y))
            eager = statistics.median(times["eager"][1:])
            fast = statistics.median(times["compiled"][1:])
            rows.append(
                {
                    "model": f"nemon {arch} ({hidden})",
                    "batch": batch,
                    "threads": 1,
                    "compile_seconds": first,
                    "eager_ms": 1e3 * eager,
                    "compiled_ms": 1e3 * fast,
                    "compiled_over_eager": fast / eager,
                }
            )
    finally:
        torch.set_num_threads(threads)
    return rows


def _timed_step(model, opt, u, y) -> float:
    """Seconds of one Adam step on the clean loss."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(u), y).backward()
    opt.step()
    _sync(u.device)
    return time.perf_counter() - start


@contextlib.contextmanager
def _quiet_native_stderr():
    """The profiler's native library prints ``USDT: ... profiler_start`` lines to file
    descriptor 2, past Python's ``sys.stderr``; send them to /dev/null inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def certified_step_times(
    archs=("conv-small", "conv-medium"), batch: int = 100, device="cpu", repeat: int = 20
) -> list[dict]:
    """Clean against interval training steps of the certified architectures (NEMON dense 100,
    gamma 0.5, batch 100, radius 0.2): times, FLOPs, the epoch time that implies, and the
    interval step's profile (top operators by self CPU time)."""
    rows = []
    for arch in archs:
        torch.manual_seed(0)
        model = build_model("nemon", arch, gamma=0.5, hidden=100, ibp_init=True).to(device)
        u = torch.rand(batch, 1, 28, 28, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        clean = _step_seconds(model, u, y, 0.0, repeat)
        interval = _step_seconds(model, u, y, 0.2, repeat)
        clean_flops, interval_flops = step_flops(model, u, y)[0], step_flops(model, u, y, 0.2)[0]
        with _quiet_native_stderr(), profile() as prof:
            _step_seconds(model, u, y, 0.2, 3)
        top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        rows.append(
            {
                "arch": arch,
                "batch": batch,
                "clean_step_ms": 1e3 * clean,
                "interval_step_ms": 1e3 * interval,
                "interval_over_clean": interval / clean,
                "interval_over_clean_flops": interval_flops / clean_flops,
                "certified_epoch_s": interval * 60000 / batch,
                "profile": {e.key: e.self_cpu_time_total / total for e in top},
            }
        )
    return rows


def _training_batches(data_dir, batch: int, count: int, device):
    """``count`` MNIST training batches (random images where the data is missing)."""
    try:
        data = load_dataset("mnist", data_dir)
        x, y = data.train_x[: batch * count], data.train_y[: batch * count]
    except DataError:  # no MNIST here: random images time the same arithmetic
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch * count, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (batch * count,), generator=g)
    return [(x[i::count].to(device), y[i::count].to(device)) for i in range(count)]


def _dense_models(tols, device):
    """The paper's FC pair: the MLP 784-100-10 and NEMONDense 784-100 (gamma 0.95), trained
    with Adam 1.5e-2; one NEMON copy per training tolerance, all from one initialisation."""
    torch.manual_seed(0)
    models = {"MLP": (build_model("explicit", "dense", hidden=100).to(device), None)}
    torch.manual_seed(0)
    nemon = build_model("nemon", "dense", hidden=100, gamma=0.95).to(device)
    for tol in tols:
        models[f"NEMON tol {tol:g}"] = (copy.deepcopy(nemon), tol)
    return {
        name: (m.train(), tol, adam(m.parameters(), 1.5e-2)) for name, (m, tol) in models.items()
    }


def _train_steps(model, tol, opt, batches) -> None:
    settings = contextlib.nullcontext() if tol is None else training_tolerance(model, tol)
    with settings:
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _step_profile(model, tol, opt, batches) -> dict:
    """Operators a step runs: calls per step of all of them, of ``copy_`` and ``_to_copy``
    (dtype round trips and copies), and the largest shares of self CPU time."""
    with _quiet_native_stderr(), profile() as prof:
        _train_steps(model, tol, opt, batches)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    per_step = len(batches)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    count = {e.key: e.count / per_step for e in events}
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {
        "aten_calls_per_step": sum(count.values()),
        "copy_per_step": count.get("aten::copy_", 0.0),
        "to_copy_per_step": count.get("aten::_to_copy", 0.0),
        "top_self_time": {e.key: e.self_cpu_time_total / total for e in top},
    }


def dense_step_times(
    data_dir=None,
    tols=(1e-2, 1e-4),
    steps: int = 100,
    warmup: int = 20,
    device="cpu",
    extra: dict | None = None,
) -> list[dict]:
    """Milliseconds per training step of the paper's FC models (batch 300), side by side: after
    ``warmup`` steps each, rounds of 10 steps go to each model in turn (a slower moment of the
    machine falls on all alike) for ``steps`` steps each; the median round is reported, with
    the ratio to the MLP, the solver iterations and a profile of the operators a step runs.
    ``extra``: more models (name -> module), trained alike with Adam 1.5e-2."""
    models = _dense_models(tols, device)
    for name, model in (extra or {}).items():
        model = model.to(device).train()
        models[name] = (model, None, adam(model.parameters(), 1.5e-2))
    rounds = max(1, steps // 10)
    batches = _training_batches(data_dir, 300, max(warmup, 10), device)
    times: dict[str, list[float]] = {name: [] for name in models}
    logs = {name: SolveLog() for name in models}
    for model, tol, opt in models.values():
        _train_steps(model, tol, opt, batches[:warmup])
    for r in range(rounds):
        for name, (model, tol, opt) in models.items():
            _sync(device)
            start = time.perf_counter()
            with SolveLog() as logs[name]:
                _train_steps(model, tol, opt, batches[(r % 2) * 5 : (r % 2) * 5 + 10])
            _sync(device)
            times[name].append((time.perf_counter() - start) / 10)
    rows = []
    mlp = statistics.median(times["MLP"])
    for name, (model, tol, opt) in models.items():
        ms = statistics.median(times[name])
        log = logs[name]
        rows.append(
            {
                "model": name,
                "training_tol": tol,
                "ms_per_step": 1e3 * ms,
                "over_mlp": ms / mlp,
                "forward_iterations": log.mean_iterations("forward"),
                "backward_iterations": log.mean_iterations("backward"),
                "profile": _step_profile(model, tol, opt, batches[:5]),
            }
        )
    return rows


def _plot(result: dict, path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["scaling"]
    for b in sorted({r["batch"] for r in rows}):
        pts = [r for r in rows if r["batch"] == b]
        axes[0].loglog(
            [r["n"] for r in pts], [r["us_per_iteration"] for r in pts], "o-", label=f"batch {b}"
        )
    axes[0].set_xlabel("hidden width n")
    axes[0].set_ylabel("us per iteration")
    axes[0].set_title(f"solve scaling (matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s)")
    axes[0].legend()
    solvers = [r for r in result["solvers"] if "forward_iterations" in r]
    names = [r["solver"].replace(" on N_alpha*", "") for r in solvers]
    axes[1].barh(names, [r["forward_iterations"] for r in solvers], label="forward")
    axes[1].barh(
        names,
        [r.get("backward_iterations", 0) for r in solvers],
        left=[r["forward_iterations"] for r in solvers],
        label="backward",
    )
    axes[1].set_xlabel("iterations to tolerance")
    axes[1].set_title("solvers on one batch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(
    out_dir="benchmarks/results",
    checkpoint=None,
    data_dir=None,
    device="cpu",
    quick=False,
    epochs: int = 1,
    target: float = 0.97,
) -> dict:
    """Run every section and write ``bench.json`` and ``bench.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak(device, size=512 if quick else 2048)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(device),
        },
        "matmul_peak_gflops": peak,
    }
    if checkpoint is not None:
        model, ckpt = load_checkpoint(checkpoint, map_location=device)
        data = load_dataset(ckpt["config"]["dataset"], data_dir)
        u, y = data.train_x[:300].to(device), data.train_y[:300].to(device)
    else:  # an untrained model on random data: exercises the code path only
        torch.manual_seed(0)

        model = build_model("nemon", input_shape=(1, 8, 8), hidden=32).to(device)
        u, y = torch.rand(64, 1, 8, 8, device=device), torch.randint(0, 10, (64,), device=device)
    result["solvers"] = solver_comparison(model, u, y)
    result["conv_solvers"] = conv_solver_comparison(quick, device)
    result["stacked_solvers"] = stacked_solver_comparison(quick, device, repeat=1 if quick else 5)
    widths, batches = (
        ((50, 100), (32,)) if quick else ((50, 100, 200, 400, 800, 1600), (32, 300, 1024))
    )
    result["scaling"] = scaling(widths, batches, device=device, peak=peak)
    if not quick:
        result["compiled_steps"] = compiled_step_times(device=device)
    if not quick:
        families = [
            ("nemon", "averaged"),
            ("nemon", "diagonal"),
            ("nemon", "anderson"),
            ("mon", None),
            ("idl", None),
            ("explicit", None),
        ]
        result["epochs"] = epoch_times(families, epochs, data_dir, device, target=target)
        result["dense_steps"] = dense_step_times(data_dir, device=device)
        rows = {(r["model"], r["solver"]): r for r in result["epochs"]}
        nemon, mlp = rows[("nemon", "diagonal")], rows[("explicit", "default")]
        result["implicit_over_explicit"] = nemon["seconds_per_epoch"] / mlp["seconds_per_epoch"]
        result["implicit_over_explicit_flops"] = nemon["step_gflop"] / mlp["step_gflop"]
    result["certified_steps"] = certified_step_times(
        ("conv-small",) if quick else ("conv-small", "conv-medium"),
        batch=16 if quick else 100,
        device=device,
        repeat=2 if quick else 20,
    )
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    _plot(result, out / "bench.png")
    return result
