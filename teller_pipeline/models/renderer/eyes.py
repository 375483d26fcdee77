"""Eyes: lids that slide over a fixed eyeball.

The eyeball stays fixed to the eye corners while the lids slide over it; a closing upper lid moves as one
sheet with the skin band above it, and draws a lash line, so a blink shows a closed lid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import rig
from .geometry import NUM_MESH_VERTICES, Contours, local_frame, opening_pixels, sample, similarity_2d, smoothstep


@dataclass
class SourceEye:
    """One eye of the photo: its opening, and the skin band that slides with its upper lid."""

    contours: Contours  # the opening in its local frame
    band: np.ndarray  # mesh vertices just above the upper lid
    band_weights: np.ndarray  # (n, 9): how much each band vertex follows each upper-lid point


def measure_eye(points: np.ndarray, face_triangles: np.ndarray, upper: list[int], lower: list[int]) -> SourceEye:
    """The eye between lid contours `upper` and `lower` (from rig.EYE_CONTOURS) of the photo's landmarks."""
    return SourceEye(local_frame(points, upper, lower), *_lid_band(face_triangles, upper, lower))


def _lid_band(triangles: np.ndarray, upper: list[int], lower: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mesh vertices sharing a triangle with the upper lid's inner points: the skin just above it."""
    lid, eye = set(upper[1:-1]), set(upper) | set(lower)
    band: dict[int, set[int]] = {}
    for tri in triangles.tolist():
        touching = lid.intersection(tri)
        if touching:
            for v in set(tri) - eye:
                band.setdefault(v, set()).update(touching)
    ids = sorted(v for v in band if v < NUM_MESH_VERTICES)
    weights = np.zeros((len(ids), len(upper)))
    for row, v in enumerate(ids):
        weights[row, [upper.index(p) for p in band[v]]] = 1.0
    weights /= np.maximum(weights.sum(1, keepdims=True), 1.0)
    return np.asarray(ids, np.int64), weights


def _along(points: np.ndarray, reference: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Offsets of `points` (n, 2) from complex `reference` positions, projected on `axis`."""
    return (points[:, 0] - reference.real) * axis[0] + (points[:, 1] - reference.imag) * axis[1]


def settle_lids(eyes: tuple[SourceEye, ...], source_points: np.ndarray, points: np.ndarray,
                src_points: np.ndarray, lid_band_follow: float, lid_margin: float) -> tuple[np.ndarray, list[float]]:
    """Closing eyelids move as sheets sliding over the eye.

    Every upper-lid point closes at least as much as the lid's centre (the rig drives it and spreads the
    motion only partly, which would leave slits at the sides of a blink). The skin band just above the
    lid slides down with it instead of being stretched into a thick dark stripe; the skin above stretches.
    The landmarker's lid line runs a little below the true lid margin, so a closing lid takes its margin
    from `lid_margin` higher up in the photo (`src_points` is updated in place). `source_points` are the
    photo's landmarks. Returns the points and how closed each eye is (0 open … 1 shut).
    """
    source = source_points[:NUM_MESH_VERTICES].astype(np.float64)
    closures = []
    for (up, lo), eye in zip(rig.EYE_CONTOURS, eyes, strict=True):
        src, band, adjacency = eye.contours, eye.band, eye.band_weights
        gap_src = np.maximum(src.lower[:, 1] - src.upper[:, 1], 0.0)
        centre = len(up) // 2
        if gap_src[centre] < 0.5:
            closures.append(0.0)
            continue
        ey = local_frame(points, up, lo).ey
        gap = (points[lo] - points[up]) @ ey
        ratio = float(np.clip(gap[centre] / gap_src[centre], 0.0, 1.0))
        closures.append(1.0 - ratio)
        if ratio >= 1.0:
            continue
        excess = np.maximum(gap - ratio * gap_src, 0.0)
        excess[[0, -1]] = 0.0  # the corners stay
        points[up] += excess[:, None] * ey
        # how far each lid point came down relative to the eye (the similarity of its corners)
        corners = [up[0], up[-1]]
        a, b = similarity_2d(source[corners], points[corners])
        closure = np.maximum(_along(points[up], a * (source[up] @ [1, 1j]) + b, ey), 0.0)
        moved = _along(points[band], a * (source[band] @ [1, 1j]) + b, ey)
        follow = lid_band_follow * (adjacency @ closure)
        points[band] += np.maximum(follow - moved, 0.0)[:, None] * ey
        lid = np.asarray(up[1:-1])
        margin = lid_margin * src.length * (1.0 - ratio)
        share = np.minimum(closure[1:-1] / max(float(closure.max()), 1e-6), 1.0)
        src_points[lid] -= (margin * share)[:, None] * src.ey
    return points, closures


def composite_eye(frame: np.ndarray, image: np.ndarray, eye: SourceEye, dst: Contours, closure: float,
                  eye_widen_blend: float, lash_width: float, lash_darkness: float) -> None:
    """Inside the driven eye opening `dst`, the eyeball fixed to the eye corners (the lids slide over it).

    A closing lid also gets a darker lash line along its margin, as closed eyes show.
    """
    src = eye.contours
    lash = lash_width * dst.length
    found = opening_pixels(dst, frame.shape[:2], margin=int(np.ceil(3 * lash)) + 1)
    if found is None:
        return
    x0, y0, u, v, a, b, alpha = found
    h, w = alpha.shape
    region = frame[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    if alpha.max() > 0:
        scale = src.length / dst.length
        rigid = v * scale
        up_s = np.interp(u * src.length, src.upper[:, 0], src.upper[:, 1])
        gap_s = np.maximum(np.interp(u * src.length, src.lower[:, 0], src.lower[:, 1]) - up_s, 1e-3)
        gap = a + b
        # an eye opened wider than in the photo has no hidden eyeball to show: stretch it instead
        stretch = up_s + a * gap_s / np.maximum(gap, 1e-3)
        widen = smoothstep((gap * scale / gap_s - 1) / eye_widen_blend)
        eyeball = sample(image, src, u, rigid + widen * (stretch - rigid))
        region += alpha[..., None] * (eyeball - region)
    if closure > 0 and lash > 0:
        taper = np.sqrt(np.clip(np.sin(np.pi * np.clip(u, 0, 1)), 0, 1)) * (u > 0) * (u < 1)
        line = np.exp(-(((a + 0.5 * lash) / lash) ** 2)) * taper
        region *= (1.0 - lash_darkness * closure * line)[..., None]
    frame[y0 : y0 + h, x0 : x0 + w] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
