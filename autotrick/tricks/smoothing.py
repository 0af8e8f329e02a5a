"""Label smoothing: target = (1 - eps) * one_hot + eps / K (Szegedy et al., 2016)."""

from autotrick.params import Param, Trick

SMOOTHING = Trick(
    name="smoothing",
    summary="label smoothing: target = (1 - eps) * one_hot + eps / K",
    params=(Param("eps", "float", 0.0, "smoothing epsilon; 0 is off", low=0.0, high=0.3, bounds=(0.0, 0.99)),),
)
