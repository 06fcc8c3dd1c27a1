"""nemon export: a model to ONNX with its guarantees in the metadata."""

from __future__ import annotations

from ...export import export_onnx
from ..arguments import UsageError, add_input_range, add_model, input_range_of
from ..loading import load_model_named, recorded_range

__all__ = ["add", "run"]


def add(sub, common) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint to ONNX (the solver as an ONNX Loop, with its error bound)",
        parents=[common],
    )
    add_model(p, dataset=False)
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    add_input_range(p, "for the bounds in the metadata")


def run(args) -> dict:
    model, _ = load_model_named(args.checkpoint, "cpu", dataset="")
    span = input_range_of(args, recorded_range(args.checkpoint))
    if span is None:
        raise UsageError("export needs a bounded --input-range LO HI for its metadata's bounds")
    metadata = export_onnx(model, args.onnx, input_range=span)  # its folder made on writing
    print(f"wrote {args.onnx}")
    for key in ("solver", "measure", "contraction_factor", "max_iter", "worst_case_iterations"):
        if key in metadata:
            print(f"  {key}: {metadata[key]}")
    return metadata
