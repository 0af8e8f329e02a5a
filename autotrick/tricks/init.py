"""Weight initialization.

xavier (Glorot): std = gain * sqrt(2 / (fan_in + fan_out)); uniform bound = sqrt(3) * std.
kaiming (He):    std = gain / sqrt(fan), fan = fan_in or fan_out, gain = sqrt(2) for relu.
orthogonal:      W, flattened to (out, fan_in), has orthonormal rows (W W^T = I) if out <= fan_in,
                 else orthonormal columns (W^T W = I).
trunc_normal:    N(0, std^2) cut at ±2 std (the kept values' own std is 0.88 std).
gain is 1 except for kaiming. These apply to every conv (transposed too) and linear weight;
biases are zeroed and norm weights set to 1; `zero_last_norm` zeroes the last norm's weight in
each residual block so every block starts as the identity (Goyal et al., 2017).
"""

from torch import Tensor, nn

from autotrick.params import Param, Trick, When
from autotrick.tricks.norm import NORM_LAYERS, LastDimNorm

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

# The layers whose weights an initializer (and pruning) touches.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
)
_LEAKY_SLOPE = 0.01  # kaiming's `a`; torch ignores it for relu
# The norm closing the residual branch of torchvision's ResNet blocks.
_RESIDUAL_NORM = {"BasicBlock": "bn2", "Bottleneck": "bn3"}


def _init_weight(weight: Tensor, scheme: str, mode: str, nonlinearity: str, std: float) -> None:
    """Draw `weight` in place by `scheme`, with the formulas of the module docstring."""
    match scheme:
        case "xavier_uniform":
            nn.init.xavier_uniform_(weight)
        case "xavier_normal":
            nn.init.xavier_normal_(weight)
        case "kaiming_uniform":
            nn.init.kaiming_uniform_(weight, a=_LEAKY_SLOPE, mode=mode, nonlinearity=nonlinearity)
        case "kaiming_normal":
            nn.init.kaiming_normal_(weight, a=_LEAKY_SLOPE, mode=mode, nonlinearity=nonlinearity)
        case "orthogonal":
            nn.init.orthogonal_(weight)
        case "trunc_normal":
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
        case _:
            raise ValueError(f"unknown init scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def _fill(param: Tensor | None, value: float) -> None:
    if param is not None:  # a layer built with bias=False or affine=False has None
        nn.init.constant_(param, value)


def _as_norm(module: nn.Module) -> nn.Module | None:
    """`module` if it is a norm layer (or wraps one, after a norm swap), else None."""
    if isinstance(module, LastDimNorm):
        module = module.norm
    return module if isinstance(module, NORM_LAYERS) else None


def _last_norm(block: nn.Module) -> nn.Module | None:
    """The norm closing a residual block: ResNet's bn2/bn3; for another class named *Block* or
    *Bottleneck*, its last norm child registered. None for any other module.

    In a pre-norm transformer block (ViT's EncoderBlock) that is the norm before the MLP: zeroed,
    it silences the MLP branch (exactly when the MLP biases are 0), not the attention one.
    """
    # By name: importing torchvision to check the class would cost every process ~2 s.
    name = _RESIDUAL_NORM.get(type(block).__name__) if type(block).__module__ == "torchvision.models.resnet" else None
    if name is not None:
        return _as_norm(getattr(block, name))
    if not any(word in type(block).__name__ for word in ("Block", "Bottleneck")):
        return None
    norms = [norm for child in block.children() if (norm := _as_norm(child)) is not None]
    return norms[-1] if norms else None


def initialize(model: nn.Module, *, scheme: str, mode: str = "fan_in", nonlinearity: str = "relu",
               std: float = 0.02, zero_last_norm: bool = False) -> nn.Module:
    """Re-initialize `model` in place with `scheme` (see the module docstring) and return it.

    "default" keeps every weight as the model made it; `zero_last_norm` applies either way.
    """
    if scheme != "default":
        for module in model.modules():
            if isinstance(module, WEIGHT_LAYERS):
                _init_weight(module.weight, scheme, mode, nonlinearity, std)
                _fill(module.bias, 0.0)
            elif isinstance(module, NORM_LAYERS):
                _fill(module.weight, 1.0)
                _fill(module.bias, 0.0)
    if zero_last_norm:
        for block in model.modules():
            norm = _last_norm(block)
            if norm is not None and norm.weight is not None:
                nn.init.zeros_(norm.weight)
    return model
