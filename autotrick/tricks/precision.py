"""Mixed precision: bf16 or fp16 autocast on CUDA (fp16 with a grad scaler); fp32 on the CPU."""

from autotrick.params import Param, Trick

PRECISION = Trick(
    name="precision",
    summary="autocast dtype on CUDA: fp32 | bf16 | fp16 (with a grad scaler); the CPU runs fp32",
    params=(Param("dtype", "choice", "fp32", "compute dtype", choices=("fp32", "bf16", "fp16")),),
)
