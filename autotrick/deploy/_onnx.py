"""A trained PyTorch model as an ONNX file, and ONNX Runtime sessions to run it on the CPU.

The exporter is torch's default one (`torch.onnx.export(..., dynamo=True)` since torch 2.9):
torch.export captures the graph, onnxscript translates it and optimizes it (batch norm folded
into the convolutions). The TorchScript exporter (dynamo=False) is deprecated. The batch axis
is dynamic (`dynamic_shapes`, min 1: torch.export would otherwise specialize batches of 0 and 1
away), so one file serves a batch of 1 and of 64. The weights are inside the file
(external_data=False): what is measured, logged and registered is one file.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from autotrick.atomic import file_written_atomically, write_failure
from autotrick.errors import AutotrickError, first_line

if TYPE_CHECKING:
    import onnxruntime

INPUT, OUTPUT = "input", "logits"


class ExportError(AutotrickError):
    """The model cannot be turned into a working ONNX file."""


def export_onnx(model: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Write `model` (in eval mode, on the CPU) to `path` as ONNX with a dynamic batch axis;
    `example`: a batch of at least 2 inputs of the shape it takes."""
    path = Path(path)
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1)
    # The exporter prints its progress and torch.export warns about what it assumed: neither
    # tells a user anything when the export works, and the error says it when it does not.
    # Written beside `path` and renamed: a full disk leaves no half-written model.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            file_written_atomically(path) as temporary:
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example.cpu(),), str(temporary), input_names=[INPUT], output_names=[OUTPUT],
                              dynamo=True, dynamic_shapes=({0: batch},), external_data=False, optimize=True)
        except Exception as error:
            if (failed := write_failure(error)) is not None:  # the disk, not the model: the CLI's one line
                raise failed from None
            raise ExportError(f"the model cannot be exported to ONNX ({first_line(error)})") from None
    return path


def onnx_session(path: str | Path, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on the CPU execution provider, its graph optimizations all on
    (what fuses INT8's QuantizeLinear/DequantizeLinear pairs into integer kernels)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about its own optimizer
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
