"""Early stopping of a training run: stop once validation accuracy has not improved for
`patience` epochs. (Stopping poor *trials* of a search early is ASHA's job, in search.py.)"""

from autotrick.params import Param, Trick

EARLY_STOP = Trick(
    name="early_stop",
    summary="stop training after `patience` epochs without a better validation accuracy",
    params=(Param("patience", "int", None, "epochs without improvement; null is off", low=2, high=10,
                  bounds=(1, 10000), nullable=True),),
)
