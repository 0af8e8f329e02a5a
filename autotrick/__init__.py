"""autotrick: find which training tricks pay off for your model and data; reuse the recipe.

    import autotrick
    recipe = autotrick.load_recipe("quick.recipe.yaml")
    setup = recipe.apply(model, steps_per_epoch=len(loader), device="cuda")
"""

__version__ = "0.1.0"
