"""Weight initialization.

xavier (Glorot): std = gain * sqrt(2 / (fan_in + fan_out)); uniform bound = sqrt(3) * std.
kaiming (He):    std = gain / sqrt(fan), fan = fan_in or fan_out, gain = sqrt(2) for relu.
Biases are zeroed and norm weights set to 1; `zero_last_norm` zeroes the last norm's weight in
each residual block so every block starts as the identity (Goyal et al., 2017).
"""

from autotrick.params import Param, Trick, When

SCHEMES = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
           "orthogonal", "trunc_normal")
_KAIMING = When("scheme", ("kaiming_uniform", "kaiming_normal"))

INIT = Trick(
    name="init",
    summary="weight initializer: xavier std=sqrt(2/(fan_in+fan_out)), kaiming std=gain/sqrt(fan)",
    params=(
        Param("scheme", "choice", "default", "initializer; default keeps the model's own", choices=SCHEMES),
        Param("mode", "choice", "fan_in", "kaiming: preserve forward (fan_in) or backward (fan_out) variance",
              choices=("fan_in", "fan_out"), when=_KAIMING),
        Param("nonlinearity", "choice", "relu", "kaiming gain: relu sqrt(2), leaky_relu sqrt(2/(1+0.01^2))",
              choices=("relu", "leaky_relu"), when=_KAIMING),
        Param("std", "float", 0.02, "trunc_normal standard deviation, cut at ±2 std",
              low=0.005, high=0.1, log=True, bounds=(1e-4, 1.0), when=When("scheme", ("trunc_normal",))),
        Param("zero_last_norm", "bool", False, "zero the last norm weight of each residual block"),
    ),
)
