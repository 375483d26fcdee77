"""The geometric renderer: one diffusers component (`GeometricRenderer`, renderer.py), written by part (warp,
mouth, eyes; see renderer.py's docstring)."""

# diffusers' loader looks the component's base class up in the module model_index.json names
from diffusers import ModelMixin  # noqa: F401

from .renderer import GeometricRenderer, RenderState

# `save_pretrained` writes the class's module into model_index.json: keep the public path, the one
# `from_pretrained` finds, rather than the file the class is written in
GeometricRenderer.__module__ = __name__

__all__ = ["GeometricRenderer", "RenderState"]
