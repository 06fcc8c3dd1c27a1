"""Export a classifier to ONNX, its implicit layer as an ONNX ``Loop`` running the same solver.

The graph computes ``v = encoder(u)``, ``z = B v + b``, then iterates from ``x_0 = 0``

    x <- x + [alpha] (Phi(A x + z) - x)

with the layer's own steps (``averaged``: ``alpha*``; ``diagonal``: ``1 / (1 - (a_ii)_-)``;
``picard``: 1), the layer's stopping rule checked every ``check_every`` iterations and its
iteration cap, and returns ``logits = C x + c (+ D u)`` with, per sample, the a-posteriori bound
``||x - x*||_{inf,[eta]^-1} <= ||F(x_k) - x_k|| / (1 - mu(A)_+)`` (docs/maths.md#model) and the
bound it implies on the logits, ``||C||_{inf,(inf,[eta]^-1)}`` times it. The guarantees (measure,
step, contraction factor, a bound on ``||x*||`` over the data range and the worst-case iteration
count it gives) are written into the model's metadata.

``onnx`` is needed to write the file (``pip install onnx``); ``onnxruntime`` runs it.
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import Tensor, nn

from .conv_layers import NEMONConv2d
from .errors import InputError
from .explicit import UnsupportedModule, rule_for
from .layers import ExplicitDense, IDLDense, NEMONDense
from .models import Classifier
from .norms import round_to
from .operators import same_padding
from .ranges import check_input_range
from .runs import OutputError, atomic_path, check_output_target
from .solvers import _TINY, averaged_solvers, contraction_factor

__all__ = ["export_onnx", "ExportError", "onnx_metadata"]

OPSET = 17


class ExportError(InputError):
    """The model holds something the exporter cannot write faithfully."""


def export_onnx(
    model: Classifier,
    path: str | os.PathLike,
    input_range: tuple[float, float] = (0.0, 1.0),
) -> dict:
    """Write ``model`` (a `Classifier` with a dense NEMON, IDL or explicit layer, or a
    `NEMONConv2d`) to ``path``; return the metadata written into the file. ``input_range``: the range the
    inputs live in (`nemon.ranges`), for which the metadata bounds the state and iterations.

    Inputs ``u`` of shape ``(batch, *input_shape)``; outputs ``logits (batch, q)``,
    ``error_bound (batch,)`` (state, weighted l_inf), ``logit_error_bound (batch,)`` (l_inf) and
    ``iterations`` (the solver's iteration count for the batch, int64).
    """
    onnx = _require_onnx()
    try:
        check_output_target(path)
    except OutputError as exc:
        raise ExportError(str(exc)) from None
    if not isinstance(model, Classifier):
        raise ExportError(f"export needs a nemon Classifier, got {type(model).__name__}")
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.float64):
        raise ExportError(f"export supports float32 and float64 models, not {dtype}")
    graph, metadata = _Builder(model, _checked_range(input_range, dtype)).build()
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        producer_name="nemon",
    )
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:  # a failed write leaves no partial file behind
        try:
            onnx.save(proto, tmp)
        except (OSError, ValueError) as exc:
            raise OutputError(f"could not write {path}: {exc}") from None
    return metadata


def _checked_range(input_range, dtype: torch.dtype) -> tuple[float, float]:
    """``(lo, hi)``: two finite numbers, ``lo < hi``, that the model's dtype can hold."""
    if input_range is None:
        raise ExportError(
            "export needs a bounded input_range (lo, hi): the metadata's state bound and "
            "worst-case iterations hold for inputs in it"
        )
    try:
        lo, hi = check_input_range(input_range)
    except InputError as exc:
        raise ExportError(str(exc)) from None
    biggest = torch.finfo(dtype).max
    if max(abs(lo), abs(hi)) > biggest:
        raise ExportError(
            f"input_range ({lo:g}, {hi:g}) does not fit in the model's {dtype} "
            f"(|value| <= {biggest:.3g}); give the inputs' real range"
        )
    return lo, hi


def onnx_metadata(path: str | os.PathLike) -> dict:
    """The metadata `export_onnx` wrote into the file, decoded."""
    proto = _require_onnx().load(os.fspath(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


class _Builder:
    """Collects nodes and initializers of one graph (names made unique by a counter)."""

    def __init__(self, model: Classifier, input_range: tuple[float, float]) -> None:
        if not isinstance(model, Classifier):
            raise ExportError(f"export needs a nemon Classifier, got {type(model).__name__}")
        layer = model.layer
        if not isinstance(layer, (NEMONDense, IDLDense, ExplicitDense, NEMONConv2d)):
            raise ExportError(
                f"export supports NEMON (dense and conv), IDL and explicit layers, not "
                f"{layer._name()}"
            )
        self.model, self.layer, self.input_range = model, layer, input_range
        self.conv = isinstance(layer, NEMONConv2d)
        self.dtype = next(layer.parameters()).dtype
        self.nodes, self.inits, self.count = [], [], 0

    # -- graph pieces ---------------------------------------------------------------------------
    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, value) -> str:
        from onnx import numpy_helper

        tensor = torch.as_tensor(value)
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(tensor.detach().cpu().numpy(), name))
        return name

    def node(self, op: str, inputs: list[str], nodes=None, outputs=None, **attrs) -> str:
        from onnx import helper

        out = outputs or [self.name(op.lower())]
        (self.nodes if nodes is None else nodes).append(helper.make_node(op, inputs, out, **attrs))
        return out[0]

    # -- the model ------------------------------------------------------------------------------
    def build(self):
        from onnx import TensorProto, helper

        model, layer = self.model, self.layer
        elem = _elem_type(self.dtype)
        shape = model.input_shape
        u = "u"
        v = u
        if model.encoder is None and len(layer.input_shape()) == 1 and len(shape) > 1:
            v = self.node("Flatten", [u], axis=1)
        if model.encoder is not None:
            v = self.module(model.encoder, v)
        z = self._injection(v)
        x, err, iters = self.solve(z)
        logits = self.node(
            "Gemm",
            [
                self._features(x),
                self.const("C", model.readout.weight),
                self.const("c", model.readout.bias),
            ],
            transB=1,
        )
        if model.direct is not None:
            flat = self.node("Flatten", [u], axis=1)
            d = self.node("MatMul", [flat, self.const("Dt", model.direct.weight.T)])
            logits = self.node("Add", [logits, d])
        c_norm = self._readout_norm()
        self.node("Identity", [logits], outputs=["logits"])
        self.node("Identity", [err], outputs=["error_bound"])
        self.node("Mul", [err, self.const("C_norm", c_norm)], outputs=["logit_error_bound"])
        self.node("Identity", [iters], outputs=["iterations"])
        inputs = [helper.make_tensor_value_info("u", elem, ["batch", *shape])]
        outputs = [
            helper.make_tensor_value_info("logits", elem, ["batch", model.readout.out_features]),
            helper.make_tensor_value_info("error_bound", elem, ["batch"]),
            helper.make_tensor_value_info("logit_error_bound", elem, ["batch"]),
            helper.make_tensor_value_info("iterations", TensorProto.INT64, []),
        ]
        graph = helper.make_graph(self.nodes, "nemon", inputs, outputs, self.inits)
        return graph, self.metadata(shape, c_norm)

    def _bias(self) -> Tensor:
        b = self.layer.B.bias
        return torch.zeros(self.layer.hidden) if b is None else b

    # -- what differs between the dense and the conv layer ------------------------------------
    def _injection(self, v: str) -> str:
        """``z = B v + b``; for the conv layer the input convolution (zero padding)."""
        layer = self.layer
        if self.conv:
            k = layer.input_kernel.shape[-1]
            lo, hi = (k - 1) // 2, k // 2
            weights = [self.const("B", layer.input_kernel), self.const("b", layer.input_bias)]
            return self.node("Conv", [v, *weights], pads=[lo, lo, hi, hi])
        return self.node(
            "Gemm", [v, self.const("B", layer.B.weight), self.const("b", self._bias())], transB=1
        )

    def _features(self, x: str) -> str:
        """What the readout reads: the state, or (conv) its average pools, flattened."""
        if not self.conv:
            return x
        pool = self.layer.pool
        pooled = self.node("AveragePool", [x], kernel_shape=[pool, pool], strides=[pool, pool])
        return self.node("Flatten", [pooled], axis=1)

    def _state_dims(self) -> list:
        return [self.layer.hidden] if not self.conv else list(self.layer.state_shape())

    def _per_state(self, values: Tensor) -> Tensor:
        """A per-coordinate (dense) or per-channel (conv) vector shaped to broadcast on states."""
        return values.reshape(-1, 1, 1) if self.conv else values

    def _apply_A(self, x: str, k: dict, op) -> str:
        """``A x``: ``x A^T`` (dense), or ``conv_same(x, K_eta) + shift x`` (conv)."""
        if not self.conv:
            return op("MatMul", [x, self.const("At", k["A"].T.contiguous())])
        kernel, shift = k["weights"]
        padded = self._pad(x, kernel.shape[-1], op)
        conv = op("Conv", [padded, self.const("K", kernel)])
        return op("Add", [conv, op("Mul", [x, self.const("shift", shift.reshape(-1, 1, 1))])])

    def _pad(self, x: str, size: int, op) -> str:
        """The 'same' padding of `nemon.operators.conv_same`: zeros, or circular (wrapped)."""
        lo, hi = same_padding(size)[:2]
        if self.layer.padding != "circular":
            return op("Pad", [x, self._int("pads", [0, 0, lo, lo, 0, 0, hi, hi])])
        for axis in (2, 3):
            parts = []
            if lo:
                parts.append(
                    op(
                        "Slice",
                        [x, self._int("s", [-lo]), self._int("e", [2**62]), self._int("a", [axis])],
                    )
                )
            parts.append(x)
            if hi:
                parts.append(
                    op(
                        "Slice",
                        [x, self._int("s", [0]), self._int("e", [hi]), self._int("a", [axis])],
                    )
                )
            x = op("Concat", parts, axis=axis)
        return x

    def _readout_norm(self) -> float:
        """``||C||_{inf,(inf,[eta]^-1)} = max_k sum_i |c_ki| eta_i`` (``eta`` of the features
        the readout reads), rounded up."""
        C = self.model.readout.weight.detach().double()
        eta = self.layer.lipschitz_terms().feature_eta
        weighted = C.abs() if eta is None else C.abs() * eta.detach().double()
        return float(round_to(weighted.sum(dim=1).amax() * (1 + 1e-12), torch.float64, "up"))

    def _eta(self) -> Tensor:
        eta = self.layer.eta()
        if eta is None:
            return torch.ones(self.layer.hidden)
        return self._per_state(eta.detach())

    # -- explicit modules -----------------------------------------------------------------------
    def module(self, m: nn.Module, x: str) -> str:
        """``m`` as ONNX nodes, by its rule (`nemon.explicit.RULES`)."""
        try:
            return rule_for(m).onnx(m, x, self)
        except UnsupportedModule as exc:
            raise ExportError(str(exc)) from None

    # -- the implicit layer ---------------------------------------------------------------------
    def _activation(self, p: str, nodes) -> str:
        try:
            return self.layer.activation.onnx(self, p, nodes)
        except NotImplementedError as exc:
            raise ExportError(str(exc)) from None

    def solve(self, z: str) -> tuple[str, str, str]:
        if isinstance(self.layer, ExplicitDense):
            x = self._activation(z, self.nodes)
            shape = self.node("Shape", [x], start=0, end=1)
            zeros = self.node("ConstantOfShape", [shape], value=_scalar_tensor(0.0, self.dtype))
            return x, zeros, self._int("one_iteration", 1)
        return self._loop(z)

    def solver_constants(self) -> dict:
        """Steps, reference step, measure and factor exactly as the PyTorch solve uses them."""
        layer, opts = self.layer, self.layer.solver_options
        if not opts.method.averaged:
            raise ExportError(
                f"export runs the averaged iterations {averaged_solvers()}; this layer's solver is "
                f"{opts.method.name!r} (build the layer with solver='diagonal' to export it)"
            )
        weights = tuple(w.detach() for w in layer.effective_weights())
        measure = float(layer.equilibrium(weights).measure)
        diagonal = layer.operator.diagonal_entries(weights)
        steps, alpha_ref = opts.method.steps(diagonal, self.dtype)
        steps = torch.as_tensor(steps, dtype=self.dtype)
        return dict(
            A=weights[0], weights=weights, steps=steps, alpha_ref=alpha_ref, measure=measure
        )

    def _loop(self, z: str) -> tuple[str, str, str]:
        """``Loop(max_iter)`` over `_step_graph`, carrying ``(x, bound, count)``."""
        trips = self._int("max_iter", self.layer.solver_options.max_iter)
        batch = self.node("Shape", [z], start=0, end=1)
        state = self.node("Concat", [batch, self._int("state", self._state_dims())], axis=0)
        x0 = self.node("ConstantOfShape", [state], value=_scalar_tensor(0.0, self.dtype))
        bound0 = self.node("ConstantOfShape", [batch], value=_scalar_tensor(math.inf, self.dtype))
        cond0 = self.const("true", torch.tensor(True))
        x, bound, iters = self.name("x_star"), self.name("error_bound"), self.name("iterations")
        self.node(
            "Loop",
            [trips, cond0, x0, bound0, self._int("count0", 0)],
            outputs=[x, bound, iters],
            body=self._step_graph(z),
        )
        return x, bound, iters

    def _step_graph(self, z: str):
        """One iteration: ``r = F(x) - x``, ``x <- x + [alpha] r``, the bound of ``r`` and, every
        ``check_every`` iterations, the stopping rule (stop when converged or not finite)."""
        from onnx import TensorProto, helper

        opts, k, body = self.layer.solver_options, self.solver_constants(), []

        def op(name, inputs, outputs=None, **attrs):
            return self.node(name, inputs, body, outputs, **attrs)

        fx = self._activation(op("Add", [self._apply_A("x_in", k, op), z]), body)
        r = op("Sub", [fx, "x_in"])
        op("Add", ["x_in", op("Mul", [r, self.const("steps", k["steps"])])], ["x_out"])
        if opts.residual == "step":  # ||x_ref - x|| / ||x_ref|| with x_ref = x + alpha_ref r
            change = op("Mul", [r, self.const("alpha_ref", k["alpha_ref"])])
            reference = op("Add", ["x_in", change])
        else:  # fixed_point: ||F(x) - x|| / ||F(x)||
            change, reference = r, fx
        size = op("Max", [op("ReduceL2", [reference], keepdims=0), self.const("tiny", _TINY)])
        rel = op("Div", [op("ReduceL2", [change], keepdims=0), size])
        weighted = op("Mul", [op("Abs", [r]), self.const("inv_eta", 1.0 / self._eta())])
        denominator = self.const("one_minus_mu", 1.0 - max(k["measure"], 0.0))
        axes = [1, 2, 3] if self.conv else [1]
        op("Div", [op("ReduceMax", [weighted], axes=axes, keepdims=0), denominator], ["bound_out"])
        broken = op("Or", [op("IsNaN", [rel]), op("IsInf", [rel])])
        within = op("LessOrEqual", [rel, self.const("tol", opts.tol)])
        if self.layer.error_tol is not None:  # eval mode's rule: every bound within error_tol
            worst = op("ReduceMax", ["bound_out"], keepdims=0)
            close = op("LessOrEqual", [worst, self.const("error_tol", self.layer.error_tol)])
            within = op("And", [within, close])
        done = op("Or", [within, broken])
        count = op("Add", ["iter", self._int("one", 1)], ["count_out"])
        every = self._int("check_every", opts.check_every)
        check = op("Equal", [op("Mod", [count, every]), self._int("zero", 0)])
        op("Not", [op("And", [check, done])], ["cond_out"])

        elem = _elem_type(self.dtype)
        signature = [("x", elem, ["batch", *self._state_dims()]), ("bound", elem, ["batch"])]
        signature.append(("count", TensorProto.INT64, []))
        head = [("iter", TensorProto.INT64, []), ("cond_in", TensorProto.BOOL, [])]
        inputs = head + [(f"{name}_in", t, shape) for name, t, shape in signature]
        outputs = [("cond_out", TensorProto.BOOL, [])]
        outputs += [(f"{name}_out", t, shape) for name, t, shape in signature]
        info = helper.make_tensor_value_info
        return helper.make_graph(
            body, "solver_step", [info(*i) for i in inputs], [info(*o) for o in outputs]
        )

    def _int(self, base: str, value) -> str:
        return self.const(base, torch.tensor(value, dtype=torch.int64))

    # -- guarantees -----------------------------------------------------------------------------
    def metadata(self, shape, c_norm: float) -> dict:
        layer, opts = self.layer, self.layer.solver_options
        meta = {
            "nemon_layer": layer._name(),
            "input_shape": list(shape),
            "input_range": list(self.input_range),
            "readout_norm": c_norm,
            "outputs": "logits; error_bound >= ||x - x*||_{inf,[eta]^-1}; logit_error_bound >= "
            "||logits - logits*||_inf; iterations",
        }
        if isinstance(layer, ExplicitDense):
            return {**meta, "measure": 0.0, "solver": "explicit"}
        k = self.solver_constants()
        rho = contraction_factor(k["alpha_ref"], k["measure"])
        radius = self._state_bound(k["measure"])
        if not math.isfinite(radius):
            lo, hi = self.input_range
            raise ExportError(
                f"input_range ({lo:g}, {hi:g}) is too wide: the bound on the state overflows "
                f"{self.dtype}; give the inputs' real range"
            )
        worst = (
            math.ceil(math.log(opts.tol) / math.log(rho))
            if 0 < rho < 1
            else (1 if rho <= 0 else None)
        )
        return {
            **meta,
            "solver": str(opts.method),
            "measure": k["measure"],
            "gamma": layer.gamma,
            "alpha": k["alpha_ref"],
            "contraction_factor": rho,
            "tol": opts.tol,
            "residual": opts.residual,
            "check_every": opts.check_every,
            "max_iter": opts.max_iter,
            "state_bound": radius,
            "worst_case_iterations": worst,
            "worst_case_note": "from x_0 = 0, ||x_k - x*||_{inf,[eta]^-1} <= rho^k state_bound "
            "for every input in input_range; after worst_case_iterations, <= tol * state_bound",
        }

    def _injection_box(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        layer = self.layer
        if self.conv:
            return _conv_box(lo, hi, layer.input_kernel, layer.input_bias)
        W, b = layer.B.weight, self._bias()
        z_lo = lo @ W.clamp(min=0).T + hi @ W.clamp(max=0).T + b
        z_hi = hi @ W.clamp(min=0).T + lo @ W.clamp(max=0).T + b
        return z_lo, z_hi

    def _state_bound(self, measure: float) -> float:
        """``sup ||x*|| <= sup ||Phi(z)|| / (1 - mu_+)`` over the data range (the error bound
        at ``x_0 = 0``), with ``Phi(z)`` bounded through the interval of ``z``."""
        model, layer = self.model, self.layer
        shape = model.input_shape
        lo = torch.full((1, *shape), float(self.input_range[0]), dtype=self.dtype)
        hi = torch.full((1, *shape), float(self.input_range[1]), dtype=self.dtype)
        with torch.no_grad():
            lo, hi = model.encode_interval(model.prepare_input(lo), model.prepare_input(hi))
            z_lo, z_hi = self._injection_box(lo, hi)
            phi = layer.activation
            top = torch.maximum(phi(z_lo).abs(), phi(z_hi).abs()) / self._eta()
        return float(top.amax()) / (1.0 - max(measure, 0.0)) * (1 + 1e-6)


def _conv_box(lo: Tensor, hi: Tensor, kernel: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The box of ``conv_same(u, kernel) + bias`` (zero padding) for ``u`` in ``[lo, hi]``."""
    from .operators import conv_same

    pos, neg = kernel.clamp(min=0), kernel.clamp(max=0)
    b = bias[:, None, None]
    z_lo = conv_same(lo, pos, "zeros") + conv_same(hi, neg, "zeros") + b
    z_hi = conv_same(hi, pos, "zeros") + conv_same(lo, neg, "zeros") + b
    return z_lo, z_hi


def _require_onnx():
    """The ``onnx`` package (an optional dependency: ``pip install 'nemon[export]'``)."""
    try:
        import onnx
    except ImportError as exc:
        raise ExportError(
            "ONNX export needs the onnx package: pip install 'nemon[export]'"
        ) from exc
    return onnx


def _elem_type(dtype: torch.dtype) -> int:
    from onnx import TensorProto

    return TensorProto.DOUBLE if dtype == torch.float64 else TensorProto.FLOAT


def _scalar_tensor(value: float, dtype: torch.dtype):
    from onnx import numpy_helper

    return numpy_helper.from_array(torch.tensor([value], dtype=dtype).numpy(), "value")
