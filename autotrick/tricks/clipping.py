"""Gradient clipping by global norm: g = g * min(1, max_norm / ||g||_2)."""

from autotrick.params import Param, Trick

CLIP = Trick(
    name="clip",
    summary="gradient clipping: g = g * min(1, max_norm / ||g||)",
    params=(Param("max_norm", "float", None, "global gradient norm cap; null is off", low=0.5, high=5.0,
                  log=True, bounds=(1e-4, 1e4), nullable=True),),
)
