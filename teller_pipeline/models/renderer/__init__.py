"""The geometric renderer, one diffusers component: source photo + driven face landmarks → RGB frame."""

from .renderer import GeometricRenderer, RenderState

__all__ = ["GeometricRenderer", "RenderState"]
