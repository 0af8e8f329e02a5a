"""Normalization layer swap: replace every BatchNorm/GroupNorm/LayerNorm/InstanceNorm, in place,
anywhere in any nn.Module (torchvision models included), for 1d and 2d norms.

group: GroupNorm(num_groups, C); num_groups must divide C, else the largest divisor of C below it.
layer: over channels (GroupNorm(1, C) for conv feature maps, LayerNorm(C) for vectors).
"""

from autotrick.params import Param, Trick, When

NORM_TYPES = ("keep", "batch", "group", "layer", "instance", "none")

NORM = Trick(
    name="norm",
    summary="swap every norm layer: batch | group (G groups) | layer | instance | none",
    params=(
        Param("type", "choice", "keep", "norm layer to use everywhere; keep leaves the model's own",
              choices=NORM_TYPES),
        Param("groups", "choice", 8, "GroupNorm groups (largest divisor of the channels if it does not divide)",
              choices=(1, 2, 4, 8, 16, 32), when=When("type", ("group",))),
    ),
)
