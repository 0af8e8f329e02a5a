"""Dropout: set p on every existing Dropout; insert one before the final classifier if there is none."""

from autotrick.params import Param, Trick

DROPOUT = Trick(
    name="dropout",
    summary="dropout probability p on every Dropout (one added before the classifier if none)",
    params=(
        Param("p", "float", None, "drop probability; null keeps the model's own", low=0.0, high=0.5,
              bounds=(0.0, 0.95), nullable=True),
    ),
)
