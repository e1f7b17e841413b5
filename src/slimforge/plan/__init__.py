"""Recipes and the engine that runs them."""

from slimforge.plan.recipe import Recipe, default_recipe

__all__ = ["Recipe", "default_recipe"]
