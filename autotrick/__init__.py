"""autotrick: find which training tricks pay off for your model and data; reuse the recipe.

    import autotrick
    recipe = autotrick.load_recipe("quick.recipe.yaml")      # or runs:/RUN_ID/recipe.yaml, models:/NAME@champion
    setup = recipe.apply(model, num_classes=10, steps_per_epoch=len(loader), epochs=15)
    # setup.model, .optimizer, .scheduler, .targets, .mix, .loss, .step, .prune ... (see autotrick.apply)
    teacher = autotrick.load_model("models:/digits-cnn@champion")   # or runs:/RUN_ID/model, a checkpoint .pt
    autotrick.keep_pruned(pruned_model, my_optimizer)                 # its zeros stay zero through my steps
"""

from typing import Any

from autotrick.recipe import Recipe
from autotrick.tracking import load_model, load_recipe

__version__ = "0.1.0"
__all__ = ["Recipe", "__version__", "keep_pruned", "load_model", "load_recipe", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    """keep_pruned and save_checkpoint import torch: only when they are asked for (the command
    line starts without it)."""
    if name == "keep_pruned":
        from autotrick.tricks.pruning import keep_pruned

        return keep_pruned
    if name == "save_checkpoint":
        from autotrick.checkpoint import save_checkpoint

        return save_checkpoint
    raise AttributeError(f"module 'autotrick' has no attribute {name!r}")
