"""Openings (lips, lids) in local frames, and the small geometry the parts share.

The mouth and the eyes are drawn from each pixel's place in its opening (how far along it, how far below the
upper and above the lower contour); `sample` reads the photo back at such local coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NUM_MESH_VERTICES = 468


@dataclass
class Contours:
    """A lip or eye opening in a local frame: x along corner→corner, v perpendicular (down the image)."""

    origin: np.ndarray  # (2,)
    ex: np.ndarray  # (2,) unit vector along the corners
    ey: np.ndarray  # (2,) unit vector, pointing down the image
    length: float
    upper: np.ndarray  # (n, 2) (x, v) of the upper contour, x non-decreasing
    lower: np.ndarray  # (n, 2)


def local_frame(points: np.ndarray, upper_ids: list[int], lower_ids: list[int]) -> Contours:
    """The opening between two contours of `points` (each from corner to corner) in its local frame."""
    upper_pts, lower_pts = points[upper_ids], points[lower_ids]
    origin = upper_pts[0]
    axis = upper_pts[-1] - origin
    length = float(max(np.linalg.norm(axis), 1e-3))
    ex = axis / length
    ey = np.array([-ex[1], ex[0]])
    if ey[1] < 0:  # v points down the image whichever way the corners are ordered
        ey = -ey

    def local(pts: np.ndarray) -> np.ndarray:
        rel = pts - origin
        xy = np.stack([rel @ ex, rel @ ey], 1)
        xy[:, 0] = np.maximum.accumulate(xy[:, 0])  # np.interp needs increasing x
        return xy

    return Contours(origin, ex, ey, length, local(upper_pts), local(lower_pts))


def opening_pixels(dst: Contours, shape: tuple[int, ...], margin: int = 1) -> tuple | None:
    """Pixels of the box around an opening (lips or lids) in its local coordinates, or None if empty.

    Returns (x0, y0, u, v, a, b, alpha): u ∈ [0, 1] along the corners, v the perpendicular offset, a and b
    the distances below the upper and above the lower contour, alpha the anti-aliased opening mask.
    """
    outline = np.concatenate([dst.upper, dst.lower])
    world = dst.origin + outline[:, :1] * dst.ex + outline[:, 1:] * dst.ey
    x0, y0 = np.maximum(np.floor(world.min(0)).astype(int) - margin, 0)
    x1, y1 = np.ceil(world.max(0)).astype(int) + margin + 1
    x1, y1 = min(x1, shape[1]), min(y1, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    rx = np.arange(x0, x1, dtype=np.float64)[None, :] - dst.origin[0]
    ry = np.arange(y0, y1, dtype=np.float64)[:, None] - dst.origin[1]
    x = rx * dst.ex[0] + ry * dst.ex[1]
    v = rx * dst.ey[0] + ry * dst.ey[1]
    a = v - np.interp(x, dst.upper[:, 0], dst.upper[:, 1])
    b = np.interp(x, dst.lower[:, 0], dst.lower[:, 1]) - v
    inside = np.clip(x + 0.5, 0, 1) * np.clip(dst.length - x + 0.5, 0, 1)
    # anti-aliased over a pixel across the contour, not down the mouth: where a wide-open mouth's contour runs
    # steeply toward its corners, a vertical pixel is a fraction of one across it, and the edge was stair-stepped
    across = np.minimum(a * _cos_slope(x, dst.upper), b * _cos_slope(x, dst.lower))
    alpha = np.clip(across + 0.5, 0, 1) * inside
    return x0, y0, x / dst.length, v, a, b, alpha


def _cos_slope(x: np.ndarray, contour: np.ndarray) -> np.ndarray:
    """cos of the contour's angle to the local x axis at x: vertical distance × this = distance across it."""
    slope = np.diff(contour[:, 1]) / np.maximum(np.diff(contour[:, 0]), 1e-6)
    middle = 0.5 * (contour[1:, 0] + contour[:-1, 0])
    return 1.0 / np.sqrt(1.0 + np.interp(x, middle, slope) ** 2)


def sample(image: np.ndarray, src: Contours, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The photo at local coordinates (u, v) of a source opening, float RGB in 0..255."""
    x = u * src.length
    map_x = (src.origin[0] + x * src.ex[0] + v * src.ey[0]).astype(np.float32)
    map_y = (src.origin[1] + x * src.ex[1] + v * src.ey[1]).astype(np.float32)
    out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.astype(np.float32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def similarity_2d(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares 2D similarity dst ≈ a·src + b, points as complex numbers."""
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sm, dm = s.mean(), d.mean()
    a = np.vdot(s - sm, d - dm) / max(np.vdot(s - sm, s - sm).real, 1e-9)
    return complex(a), complex(dm - a * sm)
