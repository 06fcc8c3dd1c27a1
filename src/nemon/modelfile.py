"""One model file: `save` writes a model as safetensors weights with a JSON description of its
modules in the file's metadata; `load` rebuilds it (reading the file runs no code).

The description is a tree: each module is ``{"type": NAME, "args": {...}}``, where ``args`` are
the arguments it was built with (nemon's modules record them, `nemon.arguments`) or, for the
PyTorch modules an encoder may use, read from its attributes. Module arguments nest. Only the
types of `BUILDERS` (exact types: a subclass may compute something else) are described; anything
else is refused by name. `load` also reads a training checkpoint that `nemon.fit` or the CLI
wrote, a run folder, and the name of a shipped model.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from . import explicit
from .activations import Activation, get_activation
from .arguments import init_arguments
from .conv_layers import MONConv2d, NEMONConv2d
from .ensemble import Ensemble
from .errors import InputError
from .implicit import ADJOINTS
from .layers import ExplicitDense, IDLDense, ImplicitLayer, MONDense, NEMONDense
from .models import Classifier
from .runs import write_bytes_atomic

__all__ = [
    "ModelFileError", "describe", "build", "header", "write", "save", "load", "read_description",
    "from_header", "model_file_path", "model_data", "FORMAT",
]  # fmt: skip

FORMAT = "nemon.model/1"
METADATA_KEY = "nemon.model"


class ModelFileError(InputError):
    """A model that cannot be described, or a file that is not a readable nemon model."""


def _attributes(*names):
    return lambda m: {n: _plain(getattr(m, n)) for n in names}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


#: the PyTorch modules an encoder may hold: their arguments read from their attributes
TORCH_MODULES = {
    nn.Linear: lambda m: {
        "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None
    },
    nn.Conv2d: lambda m: {
        **_attributes("in_channels", "out_channels", "kernel_size", "stride", "dilation",
                      "groups", "padding_mode")(m),
        "padding": _plain(m.padding), "bias": m.bias is not None,
    },
    nn.ReLU: _attributes("inplace"),
    nn.Flatten: _attributes("start_dim", "end_dim"),
    nn.Identity: lambda m: {},
    nn.AvgPool2d: _attributes(
        "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"
    ),
    nn.MaxPool2d: _attributes("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.BatchNorm2d: _attributes("num_features", "eps", "momentum", "affine", "track_running_stats"),
    explicit.BatchNorm2d: _attributes(
        "num_features", "eps", "momentum", "affine", "track_running_stats"
    ),
}  # fmt: skip

#: nemon's modules: their recorded arguments, with a layer's live solver settings
NEMON_MODULES = (
    NEMONDense, IDLDense, ExplicitDense, MONDense, NEMONConv2d, MONConv2d, Classifier, Ensemble,
    explicit.Normalize,
)  # fmt: skip

BUILDERS = {cls.__name__: cls for cls in (*TORCH_MODULES, *NEMON_MODULES, nn.Sequential)}
BUILDERS["nemon.BatchNorm2d"] = explicit.BatchNorm2d


def _type_name(module: nn.Module) -> str:
    kind = explicit.plain_type(module)
    return "nemon.BatchNorm2d" if kind is explicit.BatchNorm2d else kind.__name__


def describe(module: nn.Module, where: str = "model") -> dict:
    """The description of ``module`` (see the module docstring); `ModelFileError` names the
    first module or argument it cannot describe."""
    kind = explicit.plain_type(module)
    if kind is nn.Sequential:
        names = list(module._modules)
        children = [describe(m, f"{where}.{n}") for n, m in module._modules.items()]
        described = {"type": "Sequential", "modules": children}
        if names != [str(i) for i in range(len(names))]:  # named children keep their names
            described["names"] = names
        return described
    if kind in TORCH_MODULES:
        return {"type": _type_name(module), "args": TORCH_MODULES[kind](module)}
    if kind not in NEMON_MODULES:
        raise ModelFileError(
            f"{where} is a {kind.__module__}.{kind.__name__}, which a model file cannot "
            f"describe; describable: {', '.join(sorted(BUILDERS))}"
        )
    args = init_arguments(module)
    if isinstance(module, ImplicitLayer):
        args.update(module.settings())
    if isinstance(module, Classifier):  # its modules as they are now, not as they were passed
        args.update(layer=module.layer, encoder=module.encoder)
    if isinstance(module, Ensemble):
        args["members"] = list(module.members)
    return {
        "type": kind.__name__,
        "args": {k: _encode(v, f"{where}.{k}") for k, v in args.items()},
    }


def _encode(value, where: str):
    """An argument as JSON; modules nest, tensors become lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, nn.Module):
        return {"module": describe(value, where)}
    if isinstance(value, Tensor):
        return {"tensor": value.detach().cpu().tolist(), "dtype": str(value.dtype)[6:]}
    if isinstance(value, Activation) and _same(value, get_activation(value.name)):
        return value.name
    for name, cls in ADJOINTS.items():
        if type(value) is cls and _same(value, cls()):
            return name
    raise ModelFileError(f"{where} is {value!r}, which a model file cannot describe")


def _same(a, b) -> bool:
    return type(a) is type(b) and vars(a) == vars(b)


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"module"}:
            return build(value["module"])
        if set(value) == {"tensor", "dtype"}:
            return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
        return {k: _decode(v) for k, v in value.items()}
    return value


def build(description: dict) -> nn.Module:
    """The module a description describes, with fresh weights (`load` fills them)."""
    if not isinstance(description, dict) or description.get("type") not in BUILDERS:
        kind = description.get("type") if isinstance(description, dict) else description
        raise ModelFileError(f"unknown module type {kind!r} in the model's description")
    if description["type"] == "Sequential":
        children = [build(d) for d in description["modules"]]
        names = description.get("names")
        if names is None:
            return nn.Sequential(*children)
        return nn.Sequential(OrderedDict(zip(names, children)))
    args = {k: _decode(v) for k, v in description["args"].items()}
    kind = BUILDERS[description["type"]]
    step = args.pop("splitting_step", None)
    if kind in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d):
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    module = kind(**args)
    if step is not None:
        module.set_splitting_step(step)
    return module


def header(model: nn.Module, data: dict | None = None) -> dict:
    """What a model file records beside the weights: the description of ``model``, its dtype
    and memory format, input shape and classes, and ``data`` (the dataset's name and range)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = str(param.dtype)[6:] if param is not None else "float32"
    channels_last = any(
        m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
        for m in model.modules()
        if type(m) is nn.Conv2d
    )
    info = {
        "format": FORMAT,
        "module": describe(model),
        "dtype": dtype,
        "channels_last": channels_last,
        "input_shape": list(getattr(model, "input_shape", ())),
        "num_classes": getattr(model, "num_classes", None),
    }
    if data is not None:
        info["data"] = data
    return info


def write(info: dict, state: dict, path: str | os.PathLike) -> Path:
    """A model file from a `header` and a state dict, written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_bytes_atomic(safetensors_bytes(state, metadata={METADATA_KEY: json.dumps(info)}), path)
    return Path(path)


def save(model: nn.Module, path: str | os.PathLike, *, data: dict | None = None) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file): its weights, and its description
    in the metadata (with ``data``, e.g. ``{"name": "mnist", "range": [0, 1]}``, when given).
    The file is written atomically; a module it cannot describe is a `ModelFileError` naming
    it. Returns the path."""
    return write(header(model, data), model.state_dict(), path)


def from_header(header: dict, state: dict, map_location: str = "cpu") -> nn.Module:
    """Build the model a header describes and load ``state`` into it (eval mode)."""
    model = build(header["module"])
    dtype = getattr(torch, header.get("dtype", "float32"))
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != dtype:  # a cast also casts float64 buffers
        model = model.to(dtype)
    if header.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.load_state_dict(state)
    return model.to(map_location).eval()


def read_description(path: str | os.PathLike) -> dict:
    """The description in a model file's metadata, without reading its weights."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file ({exc})") from None
    if METADATA_KEY not in metadata:
        raise ModelFileError(f"{path} is a safetensors file without a nemon model description")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: its model description is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: its model description is not a mapping")
    if header.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is in format {header.get('format')!r}; this nemon reads {FORMAT!r}"
        )
    return header


def model_file_path(path: str | os.PathLike) -> Path:
    """The file a path names: itself, or in a run folder its ``model.safetensors`` (else its
    ``checkpoint.pt``)."""
    from .pretrained import pretrained_names

    p = Path(path)
    if p.is_dir():
        found = [p / n for n in ("model.safetensors", "checkpoint.pt") if (p / n).is_file()]
        if not found:
            raise ModelFileError(f"{p} holds neither model.safetensors nor checkpoint.pt")
        return found[0]
    if not p.is_file():
        names = ", ".join(pretrained_names())
        raise ModelFileError(f"{path}: no such file, run folder or shipped model ({names})")
    return p


def model_data(path: str | os.PathLike) -> dict:
    """The ``data`` a model file (or a checkpoint of `nemon.fit`) records: the dataset's name
    and range; empty when it records none."""
    p = model_file_path(path)
    if p.suffix == ".safetensors":
        return dict(read_description(p).get("data") or {})
    from .runs import read_torch_file

    ckpt = read_torch_file(p)
    return dict((ckpt.get("model_file") or {}).get("data") or {}) if isinstance(ckpt, dict) else {}


def load(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """A model in eval mode from a model file (`save`), a checkpoint that `nemon.fit` or
    ``nemon train`` wrote, a run folder (its ``model.safetensors``, else its ``checkpoint.pt``)
    or the name of a shipped model (`nemon.pretrained_names`)."""
    from .pretrained import load_pretrained, pretrained_names

    if not Path(path).exists() and str(path) in pretrained_names():
        return load_pretrained(str(path), map_location)
    p = model_file_path(path)
    if p.suffix == ".safetensors":
        header = read_description(p)
        try:
            return from_header(header, load_file(str(p)), map_location)
        except (TypeError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelFileError(
                f"{p}: its weights do not fit its description ({_first(exc)})"
            ) from None
    return _load_checkpoint(p, map_location)


def _load_checkpoint(p: Path, map_location: str) -> nn.Module:
    """The model of a training checkpoint: from its model file header, or (checkpoints the CLI
    wrote before model files existed) from its run configuration."""
    from .models import build_from_config
    from .runs import CheckpointError, check_checksum, read_torch_file

    ckpt = read_torch_file(p, map_location)
    check_checksum(p, ckpt)
    try:
        if "model_file" in ckpt:
            return from_header(ckpt["model_file"], ckpt["model"], map_location)
        if "config" not in ckpt:
            raise CheckpointError(f"{p} is not a nemon checkpoint (no model description)")
        model = build_from_config(ckpt["config"], ckpt["input_shape"], ckpt["num_classes"])
        model.load_state_dict(ckpt["model"])
        return model.to(map_location).eval()
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise ModelFileError(
            f"{p}: its weights do not fit its description ({_first(exc)})"
        ) from None


def _first(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
