"""The deployable model: a trained model as ONNX (FP32) and INT8 ONNX, each verified in ONNX
Runtime against PyTorch on the validation split and measured (size, accuracy, latency at batch
1 and 64). One private module per job: _onnx (export, sessions), _int8 (static quantization and
the CPU's settings), _verify (what is measured and how), _report (the export and its report).
"""

from autotrick.deploy._int8 import (
    CALIBRATION_IMAGES,
    CALIBRATION_METHOD,
    QuantSettings,
    cpu_flags,
    quant_settings,
    quantize_int8,
    this_cpu,
)
from autotrick.deploy._onnx import INPUT, OUTPUT, ExportError, export_onnx, onnx_session
from autotrick.deploy._report import DeployReport, deploy_model
from autotrick.deploy._verify import ATOL, MAX_ACCURACY_GAP, RTOL, FormatReport

__all__ = ["ATOL", "CALIBRATION_IMAGES", "CALIBRATION_METHOD", "INPUT", "MAX_ACCURACY_GAP", "OUTPUT", "RTOL",
           "DeployReport", "ExportError", "FormatReport", "QuantSettings", "cpu_flags", "deploy_model", "export_onnx",
           "onnx_session", "quant_settings", "quantize_int8", "this_cpu"]
