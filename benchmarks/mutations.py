"""Mutation check: each listed source edit must make at least one test fail.

Every mutation is applied to a fresh copy of ``src/`` and ``tests/`` in a temporary folder and the
named test files are run there (``PYTHONPATH`` points at the copy; the script checks that the
mutated package is the one imported). A mutation that no test kills is a hole in the suite.

    python benchmarks/mutations.py            # all, JSON to benchmarks/results/mutations.json
    python benchmarks/mutations.py --only 3 7 # some of them
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "interval arithmetic through Conv2d with W instead of |W|",
        "src/nemon/explicit.py",
        "m._conv_forward(radius, m.weight.abs(), None)",
        "m._conv_forward(radius, m.weight, None)",
        ("tests/test_explicit.py",),
    ),
    Mutation(
        "encoder's Lipschitz constant left out of the model's bound",
        "src/nemon/models.py",
        "        return replace(terms, input_norm=terms.input_norm * scale)",
        "        return terms",
        ("tests/test_explicit.py",),
    ),
    Mutation(
        "pairwise certificate 2x too optimistic",
        "src/nemon/lipschitz.py",
        "return gaps - L_pair[labels] * eps - ",
        "return gaps - 0.5 * L_pair[labels] * eps - ",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "Lipschitz certificate (19) without the factor 2",
        "src/nemon/lipschitz.py",
        "return gaps - 2 * L * eps - ",
        "return gaps - L * eps - ",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "solver error bound not charged (Lipschitz, pairwise)",
        "src/nemon/certificates.py",
        "    logits, error = solution.logits, solution.error_bound\n",
        "    logits, error = solution.logits, None\n",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "solver error bound not charged (interval)",
        "src/nemon/explicit.py",
        "    return x_lo - widen, x_hi + widen",
        "    return x_lo, x_hi",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "embedding box not widened by the solver's error bound (verify's big-M constants)",
        "src/nemon/explicit.py",
        "    return x_lo - widen, x_hi + widen",
        "    return x_lo, x_hi",
        ("tests/test_verify.py",),
    ),
    Mutation(
        "embedding system without off-diagonal coupling (dense)",
        "src/nemon/layers.py",
        "E = torch.cat([torch.cat([A_M, A_neg], 1), torch.cat([A_neg, A_M], 1)], 0)",
        "E = torch.cat([torch.cat([A_M + A_neg, 0 * A_neg], 1), torch.cat([0 * A_neg, A_M + A_neg], 1)], 0)",
        ("tests/test_exact.py", "tests/test_intervals.py"),
    ),
    Mutation(
        "Lipschitz-box radius halved in the interval certificate",
        "src/nemon/certificates.py",
        "radius = state_bound(terms) * eps + err_x",
        "radius = 0.5 * state_bound(terms) * eps + err_x",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "MON's sqrt(input dimension) factor dropped",
        "src/nemon/layers.py",
        "input_dim_factor=math.sqrt(self.in_features),",
        "input_dim_factor=1.0,",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "conv ||B|| halved",
        "src/nemon/conv_layers.py",
        "b_norm = (self.input_kernel.abs().sum(dim=(1, 2, 3)) / eta).amax()",
        "b_norm = 0.5 * (self.input_kernel.abs().sum(dim=(1, 2, 3)) / eta).amax()",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "a-posteriori error bound halved",
        "src/nemon/solvers.py",
        "return system.norm(residual) / (1.0 - max(system.measure, 0.0))",
        "return 0.5 * system.norm(residual) / (1.0 - max(system.measure, 0.0))",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "a-posteriori error bound without 1 / (1 - mu)",
        "src/nemon/solvers.py",
        "return system.norm(residual) / (1.0 - max(system.measure, 0.0))",
        "return system.norm(residual)",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "Anderson's safeguard removed",
        "src/nemon/solvers.py",
        "accept = ~(self.from_extrapolation & ~(res < self.base_res))",
        "accept = torch.ones_like(self.from_extrapolation)",
        ("tests/test_solvers.py",),
    ),
    Mutation(
        "residual='fixed_point' replaced by the step residual",
        "src/nemon/solvers.py",
        "return float(_relative(residual, residual + see(step.point), opts.per_sample))",
        "return float(_relative(see(step.step_to) - see(step.step_from), see(step.step_to)))",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "opt.step() deleted from training",
        "src/nemon/training.py",
        "        self.opt.step()\n",
        "        pass\n",
        ("tests/test_train_cli.py",),
    ),
    Mutation(
        "interval_loss replaced by the clean cross-entropy",
        "src/nemon/intervals.py",
        "    return F.cross_entropy(-bounds, labels)",
        "    return F.cross_entropy(model(u), labels)",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "every DDP rank trains on the full batch",
        "src/nemon/training.py",
        "xb, yb = xb[self.rank :: self.world], yb[self.rank :: self.world]",
        "xb, yb = xb, yb",
        ("tests/test_distributed.py",),
    ),
    Mutation(
        "the parametrization cache filled by a pass without autograd",
        "src/nemon/losses.py",
        "        _build_parametrized(raw)\n",
        "",
        ("tests/test_robust_training.py", "tests/test_train_cli.py"),
    ),
    Mutation(
        "tuned splitting steps not restored on resume",
        "src/nemon/training.py",
        "            layers[name].set_splitting_step(step)",
        "            pass",
        ("tests/test_splitting_step.py",),
    ),
    Mutation(
        "closed-form derivative of (17) drops the row-sum term",
        "src/nemon/parametrize.py",
        "grad_T = torch.addcmul(grad_A, grad_row[:, None], T.sign())",
        "grad_T = grad_A.clone()",
        ("tests/test_parametrize.py",),
    ),
    Mutation(
        "parametrization (17) rounded to nearest instead of down",
        "src/nemon/parametrize.py",
        '    return round_to(value, t_diag.dtype, "down")',
        "    return value.to(t_diag.dtype)",
        ("tests/test_rounding.py",),
    ),
    Mutation(
        "certificates ignore every obstacle (measure >= 1, non-finite parameters or norms)",
        "src/nemon/certificates.py",
        "    for name, p in model.named_parameters():\n        if not bool(torch.isfinite(p).all()):",
        "    return None\n    for name, p in model.named_parameters():\n        if not bool(torch.isfinite(p).all()):",
        ("tests/test_refusals.py",),
    ),
    Mutation(
        "checkpoints unpickled without weights_only",
        "src/nemon/runs.py",
        "weights_only=True)",
        "weights_only=False)",
        ("tests/test_refusals.py",),
    ),
    Mutation(
        "certify ignores the centre's prediction in the model's own dtype",
        "src/nemon/certificates.py",
        "        correct = (exact == labels) & (own == labels)",
        "        correct = exact == labels",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "no obstacle check in the model's own dtype (non-finite logits pass)",
        "src/nemon/certificates.py",
        "    if not bool(torch.isfinite(logits).all()):",
        "    if False:",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "run folder not locked",
        "src/nemon/training.py",
        "    with _locked(run_dir, trainer.rank):",
        "    with contextlib.nullcontext():",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "an implicit layer inside the encoder: its solve error not charged",
        "src/nemon/models.py",
        "        v, inner = encode_with_error(self.encoder, u)\n",
        "        v, inner = encode_with_error(self.encoder, u)[0], None\n",
        ("tests/test_exact.py",),
    ),
    Mutation(
        "an inner layer's error not scaled by the later modules' Lipschitz constants",
        "src/nemon/explicit.py",
        "    return out, None if error is None else rule.lipschitz(module).to(error) * error",
        "    return out, error",
        ("tests/test_exact.py", "tests/test_explicit.py"),
    ),
    Mutation(
        "checkpoint checksum not checked",
        "src/nemon/app/checkpoints.py",
        "    check_checksum(path, ckpt)\n",
        "\n",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "a given start iterated as if it were zero (its first product skipped)",
        "src/nemon/solvers.py",
        "        rule = method.rule(system, x, prepared, zero_start=x0 is None)",
        "        rule = method.rule(system, x, prepared, zero_start=True)",
        ("tests/test_solvers.py",),
    ),
    Mutation(
        "IDL scale divided in the parameter's dtype (float32 T = 0, gamma = 0: 0 * inf = NaN)",
        "src/nemon/parametrize.py",
        "        norm = norm_inf_upper(T)\n",
        '        norm = round_to(norm_inf_upper(T), T.dtype, "up")\n',
        ("tests/test_parametrize.py",),
    ),
    Mutation(
        "IDL scale differentiated through ||T||^2 (NaN gradient at gamma = 0, T = 0)",
        "src/nemon/parametrize.py",
        "        scale = scale - (scale.detach() / cap.detach()) * (cap - cap.detach())",
        "        scale = self.gamma * shrink / cap",
        ("tests/test_parametrize.py",),
    ),
    Mutation(
        "weights of the norm not checked (float32 A and gradients overflow at |d| ~ 45)",
        "src/nemon/parametrize.py",
        "    eta = checked_weights(eta.to(T.dtype))",
        "    eta = eta.to(T.dtype)",
        ("tests/test_parametrize.py",),
    ),
    Mutation(
        "attack ball's ends rounded to nearest (points up to a unit outside the ball)",
        "src/nemon/attacks.py",
        '    lo, hi = round_to(wide - eps, u.dtype, "up"), round_to(wide + eps, u.dtype, "down")',
        "    lo, hi = u - eps, u + eps",
        ("tests/test_attacks.py",),
    ),
    Mutation(
        "attacks take inputs with NaN or inf",
        "src/nemon/attacks.py",
        "    if not (math.isfinite(low) and math.isfinite(high)):",
        "    if False:",
        ("tests/test_attacks.py",),
    ),
    Mutation(
        "a setting older checkpoints lack compared as None (resume refused)",
        "src/nemon/resume.py",
        "        elif f.name in may_default:",
        "        elif False:",
        ("tests/test_train_cli.py",),
    ),
    Mutation(
        "padding modes: the radius padded with zeros (#39)",
        "src/nemon/explicit.py",
        "m._conv_forward(radius, m.weight.abs(), None)",
        "F.conv2d(radius, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "AvgPool2d with divisor_override taken as 1-Lipschitz (#39)",
        "src/nemon/explicit.py",
        "        if m.divisor_override is None:  # weights 1 / count over at most count inputs",
        "        if True:  # weights 1 / count over at most count inputs",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "ReLU evaluated by the module (in place on stored boxes) (#39)",
        "src/nemon/explicit.py",
        "    def evaluate(self, m, x):\n        return F.relu(x)",
        "    def evaluate(self, m, x):\n        return m(x)",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "rules matched by isinstance: subclasses take their parent's rule (#39)",
        "src/nemon/explicit.py",
        "    rule = _REGISTRY.get(kind)\n",
        "    rule = next((r for t, r in _REGISTRY.items() if issubclass(kind, t)), None)\n",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "forward hooks not refused (#39)",
        "src/nemon/explicit.py",
        "    if module._forward_hooks or module._forward_pre_hooks:",
        "    if False:",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "no point-evaluation check at the centre (#39)",
        "src/nemon/explicit.py",
        "    if differs:\n        raise UnsupportedModule(",
        "    if False:\n        raise UnsupportedModule(",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "MON error bound without the ||A r|| / m term (#39)",
        "src/nemon/solvers.py",
        "    return _euclidean(residual) + _euclidean(system.matvec(residual)) / margin",
        "    return _euclidean(residual)",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "a solve without an error bound charged nothing (#39)",
        "src/nemon/certificates.py",
        "    if error is None:  # no proven distance from the equilibrium: nothing is certified",
        "    if error is None:\n        error = torch.zeros(len(u), dtype=u.dtype)\n    if False:",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "the model as it runs not charged (#39)",
        "src/nemon/certificates.py",
        "        parts.append((logits, [b - charge for b in bounds]))",
        "        parts.append((logits, bounds))",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "eval mode stops on the relative residual alone (#39)",
        "src/nemon/layers.py",
        "        if not training and self.error_tol is not None:",
        "        if False:",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "certificate solves stop on the batch's residual, not each sample's (#39)",
        "src/nemon/certificates.py",
        "stack.enter_context(layer.solver_settings(**tight, per_sample=True))",
        "stack.enter_context(layer.solver_settings(**tight, per_sample=False))",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "a step above alpha* returns the moved iterate (#39)",
        "src/nemon/solvers.py",
        "        final = x_next if self.proven else x",
        "        final = x_next",
        ("tests/test_user_modules.py",),
    ),
    Mutation(
        "the run folder's lock opened through a symbolic link (its target truncated)",
        "src/nemon/runs.py",
        '        self._file = _open_lock(self.folder / ".lock")',
        '        self._file = open(self.folder / ".lock", "a+")',
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "a checkpoint without its checksum loaded unchecked",
        "src/nemon/runs.py",
        '    if "checksum" not in ckpt:\n        raise CheckpointError(',
        '    if "checksum" not in ckpt:\n        return\n        raise CheckpointError(',
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "weight averaging's live_model (what resume loads) outside the checksum",
        "src/nemon/runs.py",
        '    if live is not None:\n        digest.update(b"live_model|")',
        '    if False:\n        digest.update(b"live_model|")',
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "fit's data checked only mid-run (after files are written)",
        "src/nemon/training.py",
        "    data = checked_data(data, model)\n",
        "\n",
        ("tests/test_fit.py",),
    ),
    Mutation(
        "a model too big for the memory built anyway",
        "src/nemon/app/train.py",
        '    check_memory(cfg, data.input_shape, data.num_classes, "train", cfg.device)\n',
        "\n",
        ("tests/test_reliability.py",),
    ),
    Mutation(
        "evaluate leaves the caller's modules in eval mode",
        "src/nemon/modes.py",
        "        for m, training in modes:\n            m.training = training",
        "        for m, training in modes:\n            pass",
        ("tests/test_fit.py",),
    ),
    Mutation(
        "fit leaves torch's thread count at the run's",
        "src/nemon/training.py",
        "            torch.set_num_threads(caller_threads)",
        "            pass",
        ("tests/test_fit.py",),
    ),
    Mutation(
        "a method the model lacks (NotImplementedError) a traceback in the CLI",
        "src/nemon/app/cli.py",
        "    except NotImplementedError as exc:",
        "    except ZeroDivisionError as exc:",
        ("tests/test_refusals.py",),
    ),
    Mutation(
        "verify's safe dual bound without directed rounding",
        "src/nemon/verification/program.py",
        "    r_lo, r_hi = r - r_err, r + r_err",
        "    r_lo, r_hi = r, r",
        ("tests/test_verify.py",),
    ),
    Mutation(
        "verify's big-M row with the wrong sign of the lower bound",
        "src/nemon/verification/program.py",
        "np.r_[one, -one, -l]",
        "np.r_[one, -one, l]",
        ("tests/test_verify.py",),
    ),
    Mutation(
        "verify's ReLU chord not lifted past its rounding (CROWN bounds)",
        "src/nemon/verification/bounds.py",
        "    up_icpt = up_icpt + np.where(unstable, WIDEN * (up * np.maximum(-lo, hi) + up_icpt), 0.0)",
        "    up_icpt = up_icpt + 0.0 * np.where(unstable, WIDEN, 0.0) - np.where(unstable, 1e-3, 0.0)",
        ("tests/test_verify.py",),
    ),
    Mutation(
        "verify's max pool without the ReLU(-t) neuron (t = ReLU(t) only for t >= 0)",
        "src/nemon/verification/network.py",
        "            parts.append((pre.add_row((t, -1.0)), -1.0))  # ReLU(-t)\n",
        "",
        ("tests/test_verify_maxpool.py",),
    ),
]


def run(mutation: Mutation, workdir: Path) -> dict:
    copy = workdir / "repo"
    if copy.exists():
        shutil.rmtree(copy)
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, copy / part)
    target = copy / mutation.path
    text = target.read_text()
    if text.count(mutation.old) < 1:
        return {"name": mutation.name, "status": "NOT APPLIED (source changed)", "by": []}
    target.write_text(text.replace(mutation.old, mutation.new))
    env = dict(os.environ, PYTHONPATH=str(copy / "src"))
    probe = subprocess.run(
        [sys.executable, "-c", "import nemon; print(nemon.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=copy,
    )
    if not probe.stdout.strip().startswith(str(copy)):
        raise RuntimeError(f"the mutated copy is not the imported package: {probe.stdout}")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
        env=env,
        capture_output=True,
        text=True,
        cwd=copy,
    )
    killed = result.returncode != 0
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    return {
        "name": mutation.name,
        "status": "killed" if killed else "SURVIVED",
        "by": failed[:1],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="*", help="indices (0-based) of mutations")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mutations.json"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace these mutations' entries in --out, keep others",
    )
    args = parser.parse_args()
    chosen = [MUTATIONS[i] for i in args.only] if args.only else MUTATIONS
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in chosen:
            r = run(m, Path(tmp))
            results.append(r)
            print(f"{r['status']:>9}  {m.name}  {r.get('by', [''])[:1]}", flush=True)
    if args.merge and Path(args.out).is_file():
        fresh = {r["name"]: r for r in results}
        order = [m.name for m in MUTATIONS]
        kept = json.loads(Path(args.out).read_text())["mutations"]
        merged = {r["name"]: r for r in kept if r["name"] in order} | fresh
        results = [merged[name] for name in order if name in merged]
    killed = sum(r["status"] == "killed" for r in results)
    summary = {"killed": killed, "total": len(results), "mutations": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{killed} of {len(results)} mutations killed; results in {args.out}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
