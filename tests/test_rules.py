"""One rule per module type (nemon.explicit.RULES), each checked the same way: its box contains
the outputs of sampled inputs and corners, its Lipschitz constant bounds sampled steps, and its
ONNX translation computes what the module computes."""

import pytest
import torch
from torch import nn

from nemon.explicit import RULES, SUPPORTED_MODULES, Normalize, UnsupportedModule, rule_for

DT = torch.float64


def _bn() -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_(0, 1.0)
        bn.bias.normal_(0, 1.0)
    return bn


CASES = {  # module, input shape
    "relu": (lambda: nn.ReLU(), (3, 4, 4)),
    "flatten": (lambda: nn.Flatten(), (3, 4, 4)),
    "avgpool": (lambda: nn.AvgPool2d(2), (3, 4, 4)),
    "maxpool": (lambda: nn.MaxPool2d(2, stride=1), (3, 4, 4)),
    "linear": (lambda: nn.Linear(5, 4).double(), (5,)),
    "conv": (lambda: nn.Conv2d(3, 2, 3, stride=2, padding=1).double(), (3, 6, 6)),
    "normalize": (lambda: Normalize([0.1, 0.2, 0.3], [0.5, 2.0, 1.5]).double(), (3, 4, 4)),
    "batchnorm": (_bn, (3, 4, 4)),
    "sequential": (
        lambda: nn.Sequential(nn.Conv2d(3, 2, 2).double(), nn.ReLU(), nn.Flatten()),
        (3, 4, 4),
    ),
}


def test_every_rule_has_a_case():
    covered = {type(make()) for make, _ in CASES.values()}
    for rule in RULES:
        if type(rule).__name__ == "_ImplicitRule":
            continue  # tests/test_explicit.py: the stacked model
        assert any(t in rule.types for t in covered), type(rule).__name__
    assert nn.Linear in SUPPORTED_MODULES


@pytest.mark.parametrize("name", sorted(CASES))
def test_interval_contains_samples_and_lipschitz_bounds_steps(name):
    make, shape = CASES[name]
    torch.manual_seed(0)
    module = make()
    rule = rule_for(module)
    g = torch.Generator().manual_seed(1)
    centre = torch.rand(4, *shape, generator=g, dtype=DT)
    eps = 0.05
    lo, hi = rule.interval(module, centre - eps, centre + eps)
    L = float(rule.lipschitz(module).detach())
    with torch.no_grad():
        for _ in range(20):
            step = eps * torch.sign(torch.randn(centre.shape, generator=g, dtype=DT))
            out = module(centre + step)
            assert torch.all(out >= lo - 1e-12) and torch.all(out <= hi + 1e-12)
            moved = (out - module(centre)).flatten(1).abs().amax(1)
            assert torch.all(moved <= L * eps * (1 + 1e-9))


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_translation_computes_the_module(name):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    make, shape = CASES[name]
    torch.manual_seed(0)
    module = make().float()

    class Graph:  # the exporter's interface a rule uses
        def __init__(self):
            self.nodes, self.inits, self.count = [], [], 0

        def const(self, base, value):
            self.count += 1
            name = f"{base}_{self.count}"
            array = value.detach().float().numpy()
            self.inits.append(onnx.numpy_helper.from_array(array, name))
            return name

        def node(self, op, inputs, **attrs):
            self.count += 1
            out = f"{op}_{self.count}"
            self.nodes.append(onnx.helper.make_node(op, inputs, [out], **attrs))
            return out

    graph = Graph()
    out = rule_for(module).onnx(module, "u", graph)
    f32 = onnx.TensorProto.FLOAT
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            graph.nodes, "rule", [onnx.helper.make_tensor_value_info("u", f32, None)],
            [onnx.helper.make_tensor_value_info(out, f32, None)], graph.inits,
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )  # fmt: skip
    u = torch.rand(2, *shape)
    (got,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"u": u.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), module(u), atol=1e-5, rtol=1e-5)


def test_an_unsupported_module_is_named_with_the_supported_ones():
    with pytest.raises(UnsupportedModule, match=r"Tanh is not supported .*Linear"):
        rule_for(nn.Tanh())
