"""autotrick: find which training tricks pay off for your model and data; reuse the recipe.

    import autotrick
    recipe = autotrick.load_recipe("quick.recipe.yaml")      # or runs:/RUN_ID/recipe.yaml, models:/NAME@champion
    setup = recipe.apply(model, num_classes=10, steps_per_epoch=len(loader), epochs=15)
    # setup.model, .optimizer, .scheduler, .targets, .mix, .loss, .step, .prune ... (see autotrick.apply)
"""

from autotrick.recipe import Recipe
from autotrick.tracking import load_recipe

__version__ = "0.1.0"
__all__ = ["Recipe", "__version__", "load_recipe"]
