"""Geometric renderer: source photo + driven face landmarks → RGB frame at the photo's full resolution.

Teller's renderer moves the source's own pixels (RealTalk's "lip-shape control over the source's texture",
done with geometry instead of a neural generator):

* **Dense warp.** Control points are the 468 mesh landmarks plus rings of anchors extruded from the face oval
  (hair, ears, neck, background). Anchors follow the head's rigid 2D motion and the oval's own non-rigid
  motion with a falloff (slow above the face, where hair and hats ride on the head; faster below, where the
  neck and shoulders stay put); the outermost ring and the image border are fixed. Per frame the destination
  triangles are rasterised (barycentric → source coordinates, nearest triangle drawn last) on a coarse grid,
  and per pixel around the mouth and eyes; the map is upsampled and `cv2.remap` samples the photo. Only the
  moving region is touched, so the source's own landmarks give back the photo exactly.
* **Mouth.** Inside the driven inner-lip contour, the source's own mouth interior (e.g. the teeth of a smiling
  photo) rides on the lip it belongs to and is hidden by the other lip when the mouth closes. Where the lips
  part further than in the photo, a synthesised oral cavity, tongue and teeth, coloured from the photo's skin
  and lips and given its grain, fill the gap.
* **Eyes.** The eyeball stays fixed to the eye corners while the lids slide over it; a closing upper lid
  moves as one sheet with the skin band above it, and draws a lash line, so a blink shows a closed lid.

No learned weights: the canonical mesh's triangulation is the only buffer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from scipy.ndimage import gaussian_filter

from ... import rig

NUM_MESH_VERTICES = 468
# Eye contours from the outer to the inner corner (upper and lower lid), subject's right then left eye;
# index k of the upper list pairs with index k of the lower list (see rig.EYELID_PAIRS_*).
EYE_CONTOURS = (
    ([33, 246, 161, 160, 159, 158, 157, 173, 133], [33, 7, 163, 144, 145, 153, 154, 155, 133]),
    ([263, 466, 388, 387, 386, 385, 384, 398, 362], [263, 249, 390, 373, 374, 380, 381, 382, 362]),
)
SKIN_SAMPLE_LANDMARKS = [50, 280, 101, 330, 118, 347, 205, 425, 36, 266, 142, 371]  # cheeks
LIP_SAMPLE_LANDMARKS = [0, 17, 37, 267, 84, 314, 39, 269, 181, 405]  # lip bodies
# Tooth boundaries across the upper arch, in half mouth widths from the centre: the arch curves away from
# the camera, so projected teeth narrow toward the corners.
TOOTH_EDGES = (0.0, 0.16, 0.3, 0.42, 0.53, 0.63, 0.72, 0.8, 1.01)
GRAIN_TILE = 64


@dataclass
class _Contours:
    """A lip or eye opening in a local frame: x along corner→corner, v perpendicular (down the image)."""

    origin: np.ndarray  # (2,)
    ex: np.ndarray  # (2,) unit vector along the corners
    ey: np.ndarray  # (2,) unit vector, pointing down the image
    length: float
    upper: np.ndarray  # (n, 2) (x, v) of the upper contour, x non-decreasing
    lower: np.ndarray  # (n, 2)


@dataclass
class RenderState:
    """Everything `render` reuses for one source photo."""

    image: np.ndarray  # (H, W, 3) uint8
    control_points: np.ndarray  # (468 + A, 2) float32 source positions of the control points
    triangles: np.ndarray  # (T, 3) int32 over the control points
    anchor_triangle: np.ndarray  # (T,) bool: outside the face (drawn first, behind it)
    anchor_origin: np.ndarray  # (A,) the oval landmark each anchor was extruded from
    anchor_weight: np.ndarray  # (A,) how much each anchor follows the head
    grid_step: int
    source_mouth: _Contours
    source_eyes: tuple[_Contours, ...]
    lid_bands: tuple  # per eye: (mesh vertices just above the upper lid, (n, 9) weights over its points)
    mouth_split: float  # fraction of the source's lip gap whose content rides on the upper lip
    source_has_teeth: bool
    colors: dict[str, np.ndarray]  # float32 RGB in 0..1: teeth, cavity_front, cavity_back, tongue
    light_gradient: float  # relative brightness change from the image-left to the image-right of the mouth
    grain: np.ndarray  # (GRAIN_TILE, GRAIN_TILE) float32, the photo's noise for synthesised pixels


def _frame(points: np.ndarray, upper_ids: list[int], lower_ids: list[int]) -> _Contours:
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

    return _Contours(origin, ex, ey, length, local(upper_pts), local(lower_pts))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _similarity_2d(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares 2D similarity dst ≈ a·src + b, points as complex numbers."""
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sm, dm = s.mean(), d.mean()
    a = np.vdot(s - sm, d - dm) / max(np.vdot(s - sm, s - sm).real, 1e-9)
    return complex(a), complex(dm - a * sm)


def _along(points: np.ndarray, reference: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Offsets of `points` (n, 2) from complex `reference` positions, projected on `axis`."""
    return (points[:, 0] - reference.real) * axis[0] + (points[:, 1] - reference.imag) * axis[1]


def _delaunay_face(points: np.ndarray) -> np.ndarray:
    """A triangulation of the face without the canonical mesh: Delaunay inside the face oval.

    It is computed with the lips and lids pulled apart, so that no triangle joins the upper lip (or lid) to
    the lower one through the lip itself; only triangles across the openings do.
    """
    from scipy.spatial import Delaunay

    opened = points.copy()
    for upper, lower in [(rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER), *EYE_CONTOURS]:
        span = np.linalg.norm(points[upper[-1]] - points[upper[0]])
        inner = np.asarray(lower[1:-1])
        opened[inner, 1] += np.maximum(0.25 * span - (points[inner, 1] - points[upper[1:-1], 1]), 0.0)
    triangles = Delaunay(opened).simplices
    # keep the triangles inside the oval (Delaunay also fills the oval's concavities)
    oval = points[rig.FACE_OVAL]
    centroid = points[triangles].mean(1)
    inside = np.zeros(len(triangles), bool)
    for (x0, y0), (x1, y1) in zip(oval, np.roll(oval, -1, 0), strict=True):  # ray casting
        crosses = (y0 > centroid[:, 1]) != (y1 > centroid[:, 1])
        x_cross = x0 + (centroid[:, 1] - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (centroid[:, 0] < x_cross)
    return triangles[inside]


class GeometricRenderer(ModelMixin, ConfigMixin):
    """Animates the whole source photo by warping it with the driven landmarks (see the module docstring).

    Lengths given in "mouth widths" or "eye lengths" scale with the driven mouth or eye.
    """

    @register_to_config
    def __init__(
        self,
        num_mesh_triangles: int = 898,
        # anchors: rings at these multiples of the face oval's distance from its centre
        anchor_radii: tuple[float, ...] = (1.12, 1.3, 1.55, 1.9, 2.4),
        # how much each ring follows the head, on rays pointing up or sideways, and straight down (neck)
        anchor_weights_up: tuple[float, ...] = (0.97, 0.9, 0.75, 0.45, 0.0),
        anchor_weights_down: tuple[float, ...] = (0.8, 0.5, 0.25, 0.08, 0.0),
        border_margin: float = 0.04,  # motion fades out this close to the image border (× its short side)
        grid_spacing: float = 0.025,  # coarse warp grid step in inter-ocular distances, clipped to [1, max]
        max_grid_step: int = 6,
        detail_margin: float = 0.3,  # per-pixel warp around mouth and eyes, padded by this × their width
        # mouth interior
        cavity_front_rgb: tuple[float, float, float] = (0.40, 0.15, 0.13),
        cavity_back_rgb: tuple[float, float, float] = (0.13, 0.04, 0.04),
        tongue_rgb: tuple[float, float, float] = (0.46, 0.2, 0.19),
        teeth_rgb: tuple[float, float, float] = (0.95, 0.91, 0.82),
        teeth_brightness: float = 1.1,  # synthesised teeth luma relative to the face's bright skin
        reference_skin_rgb: tuple[float, float, float] = (0.78, 0.57, 0.47),  # skin hue without colour cast
        grain_strength: float = 0.6,  # synthesised pixels get this much of the photo's measured grain
        upper_teeth_height: float = 0.16,  # visible upper teeth, mouth widths …
        upper_teeth_max_fraction: float = 0.6,  # … but at most this fraction of the lip gap
        lower_teeth_height: float = 0.07,
        lower_teeth_opening: float = 0.18,  # lower teeth show once the gap exceeds this many mouth widths
        tongue_height: float = 0.35,  # fraction of the lip gap
        tongue_opening: float = 0.1,
        lip_margin: float = 0.3,  # true lip edge beyond the landmarker's inner-lip line of an open photo, × its gap
        lip_seal: float = 0.15,  # half-height of the band sealed where such lips meet, × the photo's gap
        lip_shadow: float = 0.07,  # shadow the upper lip casts on the teeth, mouth widths
        synthesis_blur: float = 0.6,  # px, softens synthesised edges to the photo's sharpness
        teeth_luma_threshold: float = 0.62,  # a source mouth pixel brighter than this × skin is a tooth
        # eyes
        eye_widen_blend: float = 0.25,  # relative widening over which the eyeball switches to stretching
        lid_band_follow: float = 0.9,  # how much the skin band above a closing lid slides with it
        lid_margin: float = 0.1,  # true lid margin above the landmarker's lid line, eye lengths
        lash_width: float = 0.035,  # lash line along a closing lid, eye lengths
        lash_darkness: float = 0.55,
    ):
        super().__init__()
        # JSON has no tuples: keep sequences as lists so that a saved and reloaded renderer compares equal
        self.register_to_config(**{k: list(v) for k, v in self.config.items() if isinstance(v, tuple)})
        self.register_buffer("mesh_triangles", torch.zeros(num_mesh_triangles, 3, dtype=torch.long))

    @classmethod
    def from_canonical_mesh(cls, mesh, **kwargs) -> GeometricRenderer:
        """Build with MediaPipe's canonical mesh triangulation (see `face_analysis.load_canonical_mesh`)."""
        renderer = cls(num_mesh_triangles=len(mesh.triangles), **kwargs)
        renderer.mesh_triangles.copy_(torch.as_tensor(np.asarray(mesh.triangles), dtype=torch.long))
        return renderer

    # ------------------------------------------------------------------------------------------------
    # per source photo
    # ------------------------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, source_landmarks: np.ndarray) -> RenderState:
        """Precompute the control mesh, anchors and mouth/eye statistics for one source photo (RGB uint8)."""
        cfg = self.config
        image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        height, width = image.shape[:2]
        points = np.asarray(source_landmarks, np.float64)[:NUM_MESH_VERTICES, :2]

        # rings of anchors on rays from the oval's centre through each oval landmark
        oval = np.asarray(rig.FACE_OVAL)
        centre = points[oval].mean(0)
        rays = points[oval] - centre
        down = np.clip(rays[:, 1] / np.maximum(np.linalg.norm(rays, axis=1), 1e-6), 0.0, 1.0) ** 1.5
        rings, weights = [], []
        for radius, w_up, w_down in zip(cfg.anchor_radii, cfg.anchor_weights_up, cfg.anchor_weights_down,
                                        strict=True):
            ring = centre + radius * rays
            to_border = np.min([ring[:, 0], ring[:, 1], width - 1 - ring[:, 0], height - 1 - ring[:, 1]], 0)
            pinned = np.clip(to_border / (cfg.border_margin * min(width, height)), 0.0, 1.0)
            rings.append(ring)
            weights.append(((1 - down) * w_up + down * w_down) * pinned)

        triangles = self.mesh_triangles.cpu().numpy()
        if not triangles.any():
            warnings.warn("GeometricRenderer has no mesh triangulation (build it with from_canonical_mesh); "
                          "falling back to a Delaunay triangulation of the source landmarks.", stacklevel=2)
            triangles = _delaunay_face(points)
        # strips between consecutive rings (ring 0 is the oval itself)
        n = len(oval)
        ring_ids = [oval] + [NUM_MESH_VERTICES + k * n + np.arange(n) for k in range(len(rings))]
        nxt = np.roll(np.arange(n), -1)
        strips = []
        for inner, outer in zip(ring_ids[:-1], ring_ids[1:], strict=True):
            strips += [np.stack([inner, inner[nxt], outer[nxt]], 1), np.stack([inner, outer[nxt], outer], 1)]
        all_triangles = np.concatenate([triangles, *strips]).astype(np.int32)

        iod = rig.inter_ocular_distance(points)
        mouth = _frame(points, rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER)
        colors, has_teeth, split, gradient, noise = self._photo_statistics(image, points, mouth)
        # a fixed, tileable grain: the same pattern every frame, like the photo's own
        white = np.random.default_rng(0).standard_normal((GRAIN_TILE, GRAIN_TILE))
        grain = gaussian_filter(white, 0.6, mode="wrap").astype(np.float32)
        grain *= noise / max(float(grain.std()), 1e-6)
        return RenderState(
            image=image,
            control_points=np.concatenate([points, *rings]).astype(np.float32),
            triangles=all_triangles,
            anchor_triangle=np.arange(len(all_triangles)) >= len(triangles),
            anchor_origin=np.tile(oval, len(rings)),
            anchor_weight=np.concatenate(weights).astype(np.float32),
            grid_step=int(np.clip(round(cfg.grid_spacing * iod), 1, cfg.max_grid_step)),
            source_mouth=mouth,
            source_eyes=tuple(_frame(points, up, lo) for up, lo in EYE_CONTOURS),
            lid_bands=tuple(self._lid_band(triangles, up, lo) for up, lo in EYE_CONTOURS),
            mouth_split=split,
            source_has_teeth=has_teeth,
            colors=colors,
            light_gradient=gradient,
            grain=grain,
        )

    @staticmethod
    def _lid_band(triangles: np.ndarray, upper: list[int], lower: list[int]):
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

    def _photo_statistics(self, image: np.ndarray, points: np.ndarray, mouth: _Contours):
        """Colours and grain for the synthesised mouth, fitted to the photo, and what its mouth shows."""
        cfg = self.config
        rgb = image.astype(np.float32) / 255.0

        def sample(ids) -> np.ndarray:
            xy = np.round(points[ids]).astype(int)
            xy[:, 0] = xy[:, 0].clip(0, image.shape[1] - 1)
            xy[:, 1] = xy[:, 1].clip(0, image.shape[0] - 1)
            return rgb[xy[:, 1], xy[:, 0]]

        skin = np.median(sample(SKIN_SAMPLE_LANDMARKS), 0)
        lips = np.median(sample(LIP_SAMPLE_LANDMARKS), 0)
        skin_luma = float(_luma(skin))
        bright_skin = float(np.percentile(_luma(sample(np.arange(NUM_MESH_VERTICES))), 90))
        # left/right lighting from the cheeks beside the mouth (the subject's right cheek is image-left)
        right, left = _luma(sample([205, 50, 187])).mean(), _luma(sample([425, 280, 411])).mean()
        gradient = float(np.clip((left - right) / max(skin_luma, 1e-3), -0.5, 0.5))
        # grain: robust spread of the fine detail on the face
        x0, y0 = np.maximum(np.floor(points.min(0)).astype(int), 0)
        x1, y1 = np.ceil(points.max(0)).astype(int) + 1
        face = _luma(rgb[y0:y1, x0:x1])
        if face.size:
            detail = face - cv2.GaussianBlur(face, (0, 0), 1.0)
            noise = cfg.grain_strength * float(np.clip(1.4826 * np.median(np.abs(detail)), 0.0, 0.05))
        else:
            noise = 0.0

        # what the source's own lip gap shows: teeth? where do the upper and lower parts separate?
        found = self._opening_pixels(mouth, image.shape[:2], margin=0)
        has_teeth, split, teeth = False, 0.5, None
        if found is not None and (found[6] > 0.99).sum() > 12:
            ox, oy, _, _, a, b, alpha = found
            inside = alpha > 0.99
            pix = rgb[oy : oy + inside.shape[0], ox : ox + inside.shape[1]][inside]
            depth = (a / np.maximum(a + b, 1e-6))[inside]
            luma = _luma(pix)
            bright = (luma > cfg.teeth_luma_threshold * skin_luma) & (pix.max(1) - pix.min(1) < 0.35)
            has_teeth = bool(bright.mean() > 0.3)
            if has_teeth:
                teeth = pix[bright].mean(0)
            # the darkest band across the gap separates what rides on the upper and on the lower lip
            bins = np.clip((depth * 8).astype(int), 0, 7)
            profile = np.array([luma[bins == k].mean() if (bins == k).any() else np.inf for k in range(8)])
            k = int(np.argmin(profile[2:])) + 2
            split = (k + 0.5) / 8 if profile[k] < 0.7 * profile[np.isfinite(profile)].max() else 1.0
        shade = np.clip(skin_luma / 0.62, 0.45, 1.15)
        if teeth is None:  # teeth under the face's light: the photo's colour cast, about as bright as skin
            reference = np.asarray(cfg.reference_skin_rgb)
            cast = np.clip((skin / max(skin_luma, 1e-3)) / (reference / _luma(reference)), 0.5, 2.0) ** 0.5
            teeth = np.asarray(cfg.teeth_rgb) * cast
            teeth *= np.clip(cfg.teeth_brightness * bright_skin, 0.3, 0.92) / _luma(teeth)
        # cavity and tongue take the lips' hue so they sit in the same light
        lip_hue = np.clip(lips / max(float(_luma(lips)), 1e-3), 0.5, 2.0) ** 0.5
        colors = {
            "teeth": np.clip(teeth, 0, 1),
            "cavity_front": np.clip(np.asarray(cfg.cavity_front_rgb) * shade * lip_hue, 0, 1),
            "cavity_back": np.clip(np.asarray(cfg.cavity_back_rgb) * shade * lip_hue, 0, 1),
            "tongue": np.clip(np.asarray(cfg.tongue_rgb) * shade * lip_hue, 0, 1),
        }
        colors = {k: np.asarray(v, np.float32) for k, v in colors.items()}
        return colors, has_teeth, float(split), gradient, noise

    # ------------------------------------------------------------------------------------------------
    # per frame
    # ------------------------------------------------------------------------------------------------
    def render(self, state: RenderState, driven_landmarks: np.ndarray) -> np.ndarray:
        """One frame (H, W, 3) uint8: the source photo moved to `driven_landmarks` ((478 or 468, 3) px)."""
        driven = np.asarray(driven_landmarks, np.float64)[:NUM_MESH_VERTICES]
        src = state.control_points.copy()
        points, lips_open = self._settle_lips(state, driven[:, :2].copy(), src)
        points, closures = self._settle_lids(state, points, src)
        dst = np.concatenate([points, self._anchor_targets(state, points)]).astype(np.float32)
        moved = np.abs(dst - src).max(1) > 1e-3
        frame = state.image.copy()
        if not moved.any():
            return frame  # the source's own landmarks: the photo itself
        depth = np.concatenate([driven[:, 2], np.zeros(len(dst) - NUM_MESH_VERTICES)])
        self._warp(state, src, dst, depth, moved, frame)
        if moved[rig.LIPS_INNER_UPPER + rig.LIPS_INNER_LOWER].any():
            self._composite_mouth(state, points, frame)
            if lips_open < 1.0:
                self._seal_lips(state, points, frame, lips_open)
        for (up, lo), source_eye, closure in zip(EYE_CONTOURS, state.source_eyes, closures, strict=True):
            if moved[up + lo].any():
                self._composite_eye(state, _frame(points, up, lo), source_eye, closure, frame)
        return frame

    def _settle_lips(self, state: RenderState, points: np.ndarray,
                     src_points: np.ndarray) -> tuple[np.ndarray, float]:
        """Lips close as a whole: once the centre closes below the photo's gap, the sides follow.

        The rig drives the inner lips through their centre landmarks and spreads that only partly to the rest
        of the lip; without this, a mouth closing from an open photo would keep a slit at the sides. The
        landmarker's inner-lip line of an open photo often runs over the teeth, inside the true lip edge, so a
        closing lip takes its edge from `lip_margin` × the photo's gap further into the lip (`src_points` is
        updated in place), and less of a strip of teeth is left between closed lips. Returns the points and how
        open the lips are relative to the photo's (0 closed … 1 as open or more).
        """
        src = state.source_mouth
        up, lo = rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER
        gap_src = np.maximum(src.lower[:, 1] - src.upper[:, 1], 0.0)
        centre = len(up) // 2
        if gap_src[centre] < max(0.02 * src.length, 0.5):
            return points, 1.0
        ey = _frame(points, up, lo).ey
        gap = (points[lo] - points[up]) @ ey
        ratio = np.clip(gap[centre] / gap_src[centre], 0.0, 1.0)
        if ratio < 1.0:
            excess = np.maximum(gap - ratio * gap_src, 0.0)
            excess[[0, -1]] = 0.0
            points[lo] -= excess[:, None] * ey  # the jaw closes: the lower lip rises
            margin = self.config.lip_margin * gap_src[1:-1] * (1.0 - ratio)
            src_points[up[1:-1]] -= margin[:, None] * src.ey
            src_points[lo[1:-1]] += margin[:, None] * src.ey
        return points, float(ratio)

    def _seal_lips(self, state: RenderState, points: np.ndarray, frame: np.ndarray, lips_open: float) -> None:
        """Where lips photographed apart close, fill a thin band along the line where they meet with the lip
        colours just above and below it (blended across the band, darker at the line itself), hiding the
        leftover sliver of teeth or cavity that the warp squeezes between them."""
        dst = _frame(points, rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER)
        src = state.source_mouth
        half = (1.0 - lips_open) * self.config.lip_seal * np.maximum(src.lower[:, 1] - src.upper[:, 1], 0.0)
        if half.max() < 0.5:
            return
        found = self._opening_pixels(dst, frame.shape[:2], margin=int(np.ceil(half.max())) + 2)
        if found is None:
            return
        x0, y0, u, _, a, b, _ = found
        h, w = u.shape
        x = u * dst.length
        offset = 0.5 * (a - b)  # from the line midway between the driven lips, down the mouth
        width = np.interp(x, dst.upper[:, 0], half) * np.clip(x / 2.0, 0, 1) * np.clip((dst.length - x) / 2.0, 0, 1)
        if not (np.abs(offset) < width).any():
            return

        def beyond(sign: float) -> np.ndarray:  # the lip pixels just beyond the band, above or below each pixel
            shift = (sign * (width + 1.5) - offset)[..., None] * dst.ey
            map_x = (np.arange(x0, x0 + w)[None, :] + shift[..., 0]).astype(np.float32)
            map_y = (np.arange(y0, y0 + h)[:, None] + shift[..., 1]).astype(np.float32)
            return cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

        t = np.clip(0.5 + 0.5 * offset / np.maximum(width, 1e-6), 0, 1)[..., None]
        fill = beyond(-1.0) * (1 - t) + beyond(1.0) * t
        fill *= (1.0 - 0.25 * np.exp(-(offset / 0.8) ** 2))[..., None]  # the thin shadow where the lips meet
        alpha = np.clip(width - np.abs(offset) + 0.5, 0, 1)[..., None]
        region = frame[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        region += alpha * (fill - region)
        frame[y0 : y0 + h, x0 : x0 + w] = np.clip(region + 0.5, 0, 255).astype(np.uint8)

    def _settle_lids(self, state: RenderState, points: np.ndarray,
                     src_points: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Closing eyelids move as sheets sliding over the eye.

        Every upper-lid point closes at least as much as the lid's centre (the rig drives it and spreads the
        motion only partly, which would leave slits at the sides of a blink). The skin band just above the
        lid slides down with it instead of being stretched into a thick dark stripe; the skin above stretches.
        The landmarker's lid line runs a little below the true lid margin, so a closing lid takes its margin
        from `lid_margin` higher up in the photo (`src_points` is updated in place). Returns the points and
        how closed each eye is (0 open … 1 shut).
        """
        source = state.control_points[:NUM_MESH_VERTICES].astype(np.float64)
        closures = []
        for (up, lo), src, (band, adjacency) in zip(EYE_CONTOURS, state.source_eyes, state.lid_bands,
                                                     strict=True):
            gap_src = np.maximum(src.lower[:, 1] - src.upper[:, 1], 0.0)
            centre = len(up) // 2
            if gap_src[centre] < 0.5:
                closures.append(0.0)
                continue
            ey = _frame(points, up, lo).ey
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
            a, b = _similarity_2d(source[corners], points[corners])
            closure = np.maximum(_along(points[up], a * (source[up] @ [1, 1j]) + b, ey), 0.0)
            moved = _along(points[band], a * (source[band] @ [1, 1j]) + b, ey)
            follow = self.config.lid_band_follow * (adjacency @ closure)
            points[band] += np.maximum(follow - moved, 0.0)[:, None] * ey
            lid = np.asarray(up[1:-1])
            margin = self.config.lid_margin * src.length * (1.0 - ratio)
            share = np.minimum(closure[1:-1] / max(float(closure.max()), 1e-6), 1.0)
            src_points[lid] -= (margin * share)[:, None] * src.ey
        return points, closures

    def _anchor_targets(self, state: RenderState, driven: np.ndarray) -> np.ndarray:
        """Anchors follow the head's rigid 2D motion plus the oval's own deformation, with their weights."""
        src = state.control_points.astype(np.float64)
        ids = rig.STATIC_LANDMARKS
        a, b = _similarity_2d(src[ids], driven[ids])
        anchors = src[NUM_MESH_VERTICES:]
        rigid = (a - 1) * (anchors @ [1, 1j]) + b
        origin = state.anchor_origin
        residual = driven[origin] @ [1, 1j] - (a * (src[origin] @ [1, 1j]) + b)
        moved = state.anchor_weight * (rigid + residual)
        return anchors + np.stack([moved.real, moved.imag], 1)

    def _warp(self, state: RenderState, src: np.ndarray, dst: np.ndarray, depth: np.ndarray,
              moved: np.ndarray, frame: np.ndarray) -> None:
        """Backward piecewise-affine warp of the moving region, written into `frame`.

        The map is rasterised on a coarse grid and upsampled, except around the eyes and the mouth, where the
        lids and lips squeeze whole regions into a line: there it is rasterised (nearly) per pixel.
        """
        height, width = frame.shape[:2]
        moving = moved[state.triangles].any(1)
        tris = state.triangles[moving]
        # far first, nearest last (later writes win): anchors behind the face, then by depth
        tri_depth = np.where(state.anchor_triangle[moving], np.inf, depth[tris].mean(1))
        tris = tris[np.argsort(-tri_depth, kind="stable")]
        p, q = dst[tris], src[tris]  # (T, 3, 2)
        x0, y0 = np.maximum(np.floor(p.min((0, 1))).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(p.max((0, 1))).astype(int) + 2, [width, height])
        if x1 <= x0 or y1 <= y0:
            return
        step = state.grid_step
        full = self._dense_map(p, q, (x0, y0, x1, y1), step, (height, width))
        detail_step = max(1, round(step / 3))
        if detail_step < step:
            for bx0, by0, bx1, by1 in self._detail_boxes(dst):
                bx0, by0, bx1, by1 = max(bx0, x0), max(by0, y0), min(bx1, x1), min(by1, y1)
                if bx1 > bx0 and by1 > by0:
                    fine = self._dense_map(p, q, (bx0, by0, bx1, by1), detail_step, (height, width))
                    full[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = fine
        frame[y0:y1, x0:x1] = cv2.remap(state.image, full, None, cv2.INTER_CUBIC,
                                        borderMode=cv2.BORDER_REPLICATE)

    def _dense_map(self, p: np.ndarray, q: np.ndarray, box: tuple[int, int, int, int], step: int,
                   shape: tuple[int, int]) -> np.ndarray:
        """Source coordinates (h, w, 2) float32 of the pixels in `box`, for triangles `p` (driven) → `q`.

        Grid nodes sit at pixel i·step + off, where cv2.resize puts its samples; an extra node on each side
        keeps resize's edge clamping out of the box. Nodes no moving triangle covers stay in place, and
        the displacement fades out toward the image border, which stays put.
        """
        x0, y0, x1, y1 = box
        height, width = shape
        off = (step - 1) / 2.0
        i0, j0 = int(np.floor((x0 - off) / step)) - 1, int(np.floor((y0 - off) / step)) - 1
        i1, j1 = int(np.ceil((x1 - 1 - off) / step)) + 2, int(np.ceil((y1 - 1 - off) / step)) + 2
        node_x = np.arange(i0, i1) * step + off
        node_y = np.arange(j0, j1) * step + off
        near = ((p[..., 0].max(1) >= node_x[0]) & (p[..., 0].min(1) <= node_x[-1])
                & (p[..., 1].max(1) >= node_y[0]) & (p[..., 1].min(1) <= node_y[-1]))
        g0 = np.array([i0, j0])
        disp = self._rasterise((p[near] - off) / step - g0, q[near], i1 - i0, j1 - j0, step, off, g0)
        margin = self.config.border_margin * min(width, height)
        fade_x = np.clip((np.minimum(node_x, width - 1 - node_x) - step) / margin, 0, 1)
        fade_y = np.clip((np.minimum(node_y, height - 1 - node_y) - step) / margin, 0, 1)
        disp *= np.minimum.outer(fade_y, fade_x).astype(np.float32)[..., None]
        disp[..., 0] += node_x.astype(np.float32)[None, :]
        disp[..., 1] += node_y.astype(np.float32)[:, None]
        if step > 1:
            disp = cv2.resize(disp, ((i1 - i0) * step, (j1 - j0) * step), interpolation=cv2.INTER_LINEAR)
        return disp[y0 - j0 * step : y1 - j0 * step, x0 - i0 * step : x1 - i0 * step]

    def _detail_boxes(self, dst: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Pixel boxes (x0, y0, x1, y1) around the driven mouth and eyes, rasterised per pixel."""
        boxes = []
        for ids in (rig.LIPS_OUTER_UPPER + rig.LIPS_OUTER_LOWER, rig.EYE_RIGHT, rig.EYE_LEFT):
            lo, hi = dst[ids].min(0), dst[ids].max(0)
            pad = self.config.detail_margin * (hi[0] - lo[0])
            boxes.append((int(lo[0] - pad), int(lo[1] - pad), int(hi[0] + pad) + 2, int(hi[1] + pad) + 2))
        return boxes

    @staticmethod
    def _rasterise(grid: np.ndarray, q: np.ndarray, nx: int, ny: int, step: int, off: float,
                   g0: np.ndarray) -> np.ndarray:
        """Displacement (ny, nx, 2) at the grid nodes covered by triangles `grid` (grid units) → `q` (px).

        Triangles are drawn in order, so where they overlap (a fold, the nose over a turned cheek) the last
        one wins; nodes no triangle covers keep a zero displacement.
        """
        # Same arithmetic as the straightforward per-pair version, element for element (so the same bits), but
        # everything that depends only on the triangle (inverse determinant, edges, source corners) is computed
        # once per triangle and gathered from contiguous arrays, and the source position only for covered nodes.
        p0, e1, e2 = grid[:, 0], grid[:, 1] - grid[:, 0], grid[:, 2] - grid[:, 0]
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        ok = np.abs(det) > 1e-9
        p0, e1, e2, det, q, grid = p0[ok], e1[ok], e2[ok], det[ok], q[ok], grid[ok]
        i0 = np.clip(np.ceil(grid[..., 0].min(1) - 1e-4), 0, nx).astype(np.int64)
        i1 = np.clip(np.floor(grid[..., 0].max(1) + 1e-4), -1, nx - 1).astype(np.int64)
        j0 = np.clip(np.ceil(grid[..., 1].min(1) - 1e-4), 0, ny).astype(np.int64)
        j1 = np.clip(np.floor(grid[..., 1].max(1) + 1e-4), -1, ny - 1).astype(np.int64)
        w = np.maximum(i1 - i0 + 1, 0)
        counts = w * np.maximum(j1 - j0 + 1, 0)
        disp = np.zeros((ny, nx, 2), np.float32)
        total = int(counts.sum())
        if total == 0:
            return disp
        # every (triangle, node) pair in the triangles' bounding boxes, then keep the nodes inside
        tri = np.repeat(np.arange(len(counts)), counts)
        local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        row, col = np.divmod(local, w[tri])
        gi = i0[tri] + col
        gj = j0[tri] + row
        vx = gi - p0[:, 0].copy()[tri]
        vy = gj - p0[:, 1].copy()[tri]
        inv = (1.0 / det)[tri]
        l1 = (vx * e2[:, 1].copy()[tri] - vy * e2[:, 0].copy()[tri]) * inv
        l2 = (e1[:, 0].copy()[tri] * vy - e1[:, 1].copy()[tri] * vx) * inv
        inside = (l1 >= -1e-5) & (l2 >= -1e-5) & (l1 + l2 <= 1 + 1e-5)
        tri, gi, gj, l1, l2 = tri[inside], gi[inside], gj[inside], l1[inside], l2[inside]
        q0, d1, d2 = q[:, 0], q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]  # float32, as (qt[:, 1] - qt[:, 0]) was
        sx = q0[:, 0][tri] + l1 * d1[:, 0][tri] + l2 * d2[:, 0][tri]
        sy = q0[:, 1][tri] + l1 * d1[:, 1][tri] + l2 * d2[:, 1][tri]
        disp[gj, gi, 0] = sx - ((gi + g0[0]) * step + off)
        disp[gj, gi, 1] = sy - ((gj + g0[1]) * step + off)
        return disp

    # ------------------------------------------------------------------------------------------------
    # mouth and eyes
    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _opening_pixels(dst: _Contours, shape: tuple[int, ...], margin: int = 1):
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
        alpha = np.clip(np.minimum(a, b) + 0.5, 0, 1) * inside
        return x0, y0, x / dst.length, v, a, b, alpha

    @staticmethod
    def _sample(image: np.ndarray, src: _Contours, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The photo at local coordinates (u, v) of a source opening, float RGB in 0..255."""
        x = u * src.length
        map_x = (src.origin[0] + x * src.ex[0] + v * src.ey[0]).astype(np.float32)
        map_y = (src.origin[1] + x * src.ex[1] + v * src.ey[1]).astype(np.float32)
        out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out.astype(np.float32)

    def _composite_mouth(self, state: RenderState, driven: np.ndarray, frame: np.ndarray) -> None:
        dst = _frame(driven, rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER)
        src = state.source_mouth
        found = self._opening_pixels(dst, frame.shape[:2])
        if found is None or found[6].max() <= 0:
            return
        x0, y0, u, _, a, b, alpha = found
        h, w = alpha.shape
        gap = a + b
        up_s = np.interp(u * src.length, src.upper[:, 0], src.upper[:, 1])
        lo_s = np.interp(u * src.length, src.lower[:, 0], src.lower[:, 1])
        gap_s = np.maximum(lo_s - up_s, 0.0)
        # the photo's own mouth interior rides on its lips (the upper teeth on the upper lip, …); as the mouth
        # closes the lower lip covers it, as it opens the synthesised interior shows in between
        ext_up, ext_lo = state.mouth_split * gap_s, (1 - state.mouth_split) * gap_s
        upper = a < ext_up + 0.5 * np.maximum(gap - gap_s, 0.0)
        v_s = np.where(upper, up_s + a, lo_s - b)
        real_alpha = np.where(upper, np.clip(ext_up - a + 0.5, 0, 1), np.clip(ext_lo - b + 0.5, 0, 1))
        mouth = self._synthesise_mouth(state, u, a, b, dst.length, x0, y0)
        if real_alpha.max() > 0:
            real = self._sample(state.image, src, u, v_s) / 255.0
            mouth += real_alpha[..., None] * (real - mouth)
        region = frame[y0 : y0 + h, x0 : x0 + w].astype(np.float32) / 255.0
        out = region + alpha[..., None] * (mouth - region)
        frame[y0 : y0 + h, x0 : x0 + w] = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def _synthesise_mouth(self, state: RenderState, u: np.ndarray, a: np.ndarray, b: np.ndarray,
                          width: float, x0: int, y0: int) -> np.ndarray:
        """Oral cavity, tongue and teeth in the mouth's local coordinates (float RGB in 0..1)."""
        cfg, c = self.config, state.colors
        gap = np.maximum(a + b, 1e-6)
        s = 2.0 * u - 1.0  # -1..1 across the mouth
        rel_gap = gap / width
        # cavity: reddish just inside the lips, dark at the back and in the corners
        corner = _smoothstep((np.abs(s) - 0.55) / 0.45)
        edge = np.minimum(a, b)
        depth = np.maximum(_smoothstep(edge / np.clip(0.3 * gap, 1.0, 0.04 * width + 1.0)), corner)
        out = c["cavity_front"] + depth[..., None] * (c["cavity_back"] - c["cavity_front"])
        # tongue: a low mound at the bottom, lit on top, shadowed by the lower lip and toward the corners
        top = cfg.tongue_height * gap * np.clip(1 - (s / 0.62) ** 2, 0, 1)
        top *= _smoothstep((rel_gap - cfg.tongue_opening) / 0.15)
        # its rounded top fades into the dark; its front is shaded by the lower lip
        tongue_alpha = _smoothstep((top - b) / np.maximum(0.3 * top, 0.75)) * (top > 0.3)
        tongue_shade = (0.55 + 0.45 * _smoothstep(b / np.maximum(0.7 * top, 1e-3))) * (1 - 0.5 * corner)
        out += tongue_alpha[..., None] * (c["tongue"] * tongue_shade[..., None] - out)
        # teeth: lower ones (only when the jaw is well open, mostly hidden by the lower lip), then upper ones
        tooth, within, to_edge = self._tooth_pattern(np.abs(s), width)
        # lower teeth sit deeper in the mouth, in the upper teeth's shadow: a little darker
        rows = [("lower", b, 0.88)] + ([] if state.source_has_teeth else [("upper", a, 1.0)])
        for name, dist, brightness in rows:
            if name == "upper":
                height = np.minimum(cfg.upper_teeth_height * width, cfg.upper_teeth_max_fraction * gap)
                arch = np.sqrt(np.clip(1 - (s / 0.97) ** 2, 0, 1))
            else:
                shown = _smoothstep((rel_gap - cfg.lower_teeth_opening) / 0.1)
                height = cfg.lower_teeth_height * width * shown
                arch = np.sqrt(np.clip(1 - (s / 0.65) ** 2, 0, 1))
            length = height * arch * (1 - 0.1 * within**2)  # each tooth's edge is slightly rounded
            if length.max() < 0.3:
                continue
            teeth_alpha = np.clip(length - dist + 0.5, 0, 1)
            shade = brightness * (1.0 - 0.05 * tooth) * (1 - 0.4 * corner)
            # faint separations between the front teeth; the lip shades the teeth next to it
            shade = shade * (1 - 0.15 * np.exp(-((to_edge / 0.45) ** 2)) * (tooth < 4))
            shade = shade * (0.75 + 0.25 * _smoothstep(dist / max(cfg.lip_shadow * width, 1e-3)))
            # shadows on teeth are warm (light bounced off lips and gums): darken blue more than red
            tinted = c["teeth"] * shade[..., None] ** np.array([1.0, 1.2, 1.45], np.float32)
            out += teeth_alpha[..., None] * (tinted - out)
        # the lips darken what is right at their edges; light falls across the mouth as across the face
        out *= (0.78 + 0.22 * _smoothstep(np.minimum(a, b) / 1.2))[..., None]
        out *= (1 + 0.5 * state.light_gradient * s)[..., None]
        if cfg.synthesis_blur > 0:
            out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), cfg.synthesis_blur)
        tile = state.grain
        ys = (np.arange(y0, y0 + out.shape[0]) % GRAIN_TILE)[:, None]
        xs = (np.arange(x0, x0 + out.shape[1]) % GRAIN_TILE)[None, :]
        out += tile[ys, xs][..., None]
        return np.clip(out, 0, 1).astype(np.float32)

    @staticmethod
    def _tooth_pattern(edge: np.ndarray, width: float):
        """For |s| across the arch: tooth index from the centre, place within it (-1..1), px to its edge."""
        edges = np.asarray(TOOTH_EDGES)
        idx = np.clip(np.searchsorted(edges, edge, side="right") - 1, 0, len(edges) - 2)
        lo_e, hi_e = edges[idx], edges[idx + 1]
        within = (edge - lo_e) / (hi_e - lo_e) * 2 - 1
        to_edge = np.minimum(edge - lo_e, hi_e - edge) * width * 0.5
        return idx, within, to_edge

    def _composite_eye(self, state: RenderState, dst: _Contours, src: _Contours, closure: float,
                       frame: np.ndarray) -> None:
        """Inside the driven eye opening, the eyeball fixed to the eye corners (the lids slide over it).

        A closing lid also gets a darker lash line along its margin, as closed eyes show.
        """
        cfg = self.config
        lash = cfg.lash_width * dst.length
        found = self._opening_pixels(dst, frame.shape[:2], margin=int(np.ceil(3 * lash)) + 1)
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
            widen = _smoothstep((gap * scale / gap_s - 1) / cfg.eye_widen_blend)
            eye = self._sample(state.image, src, u, rigid + widen * (stretch - rigid))
            region += alpha[..., None] * (eye - region)
        if closure > 0 and lash > 0:
            taper = np.sqrt(np.clip(np.sin(np.pi * np.clip(u, 0, 1)), 0, 1)) * (u > 0) * (u < 1)
            line = np.exp(-(((a + 0.5 * lash) / lash) ** 2)) * taper
            region *= (1.0 - cfg.lash_darkness * closure * line)[..., None]
        frame[y0 : y0 + h, x0 : x0 + w] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
