"""Weight pruning (not trial early stopping): after training, zero the smallest-magnitude fraction
`ratio` of all conv and linear weights, globally, finetune with the mask held, then make it permanent.

sparsity = zeros / total over the pruned weights; the run reports it and the non-zero parameter count.
"""

from autotrick.params import Param, Trick, When

PRUNE = Trick(
    name="prune",
    summary="global magnitude pruning of conv/linear weights to a ratio, then finetune epochs",
    params=(
        Param("ratio", "float", 0.0, "fraction of conv/linear weights set to zero; 0 is off",
              low=0.0, high=0.9),
        Param("finetune_epochs", "int", 1, "epochs trained after pruning, with the mask held",
              low=0, high=5, bounds=(0, 100), when=When("ratio", above=0.0)),
    ),
)
