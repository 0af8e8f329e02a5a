"""Learning-rate schedule, stepped every iteration so that warmup is smooth.

1. linear warmup:  lr = peak * step / warmup_steps               for step < warmup_steps
2. then, with t = steps since warmup, T = t_max epochs (default: the remaining ones):
   constant: lr = peak
   cosine:   lr = eta_min + (peak - eta_min) * (1 + cos(pi * min(t, T) / T)) / 2
   linear:   lr = peak - (peak - eta_min) * min(t, T) / T
   step:     lr = peak * gamma ** floor(t / step_epochs)
   where eta_min = min_lr_ratio * peak.
"""

from autotrick.params import Param, Trick, When

SCHEDULES = ("constant", "cosine", "linear", "step")
_DECAYS = When("name", ("cosine", "linear"))

SCHEDULE = Trick(
    name="schedule",
    summary="linear warmup, then constant | cosine (T_max, eta_min) | linear | step decay, per step",
    params=(
        Param("name", "choice", "constant", "shape after warmup", choices=SCHEDULES),
        Param("warmup_epochs", "float", 0.0, "linear warmup length in epochs (fractions allowed); 0 is off",
              low=0.0, high=3.0, bounds=(0.0, 1000.0)),
        Param("t_max", "int", None, "cosine/linear period T_max in epochs; null: the remaining epochs",
              low=1, high=30, bounds=(1, 10000), nullable=True, when=_DECAYS),
        Param("min_lr_ratio", "float", 0.0, "eta_min = min_lr_ratio * peak lr", low=0.0, high=0.1,
              bounds=(0.0, 1.0), when=_DECAYS),
        Param("step_epochs", "int", 5, "step decay every step_epochs epochs", low=1, high=20,
              bounds=(1, 10000), when=When("name", ("step",))),
        Param("gamma", "float", 0.1, "step decay factor", low=0.05, high=0.5, bounds=(0.0, 1.0),
              when=When("name", ("step",))),
    ),
)
