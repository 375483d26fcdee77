"""Geometric renderer: source photo + driven face landmarks → RGB frame at the photo's full resolution.

Teller's renderer moves the source's own pixels (RealTalk's "lip-shape control over the source's texture",
done with geometry instead of a neural generator), one part per module:

* `warp.py`: a dense piecewise-affine warp of the whole photo, driven by the face mesh and rings of anchors
  around it;
* `mouth.py`: lips that close as a whole, the photo's own mouth interior riding on its lips, and a
  synthesised oral cavity, tongue and teeth where the lips part further than in the photo;
* `eyes.py`: lids that slide over an eyeball fixed to the eye corners, with a lash line on a closing lid;
* `geometry.py`: the openings' local frames and the small geometry they share.

No learned weights: the canonical mesh's triangulation is the only buffer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ... import rig
from .eyes import SourceEye, composite_eye, measure_eye, settle_lids
from .geometry import NUM_MESH_VERTICES, local_frame
from .mouth import SourceMouth, composite_mouth, lip_seam_shift, measure_mouth, seal_lips, settle_lips
from .warp import ControlMesh, anchor_targets, control_mesh, delaunay_face, warp_photo


@dataclass
class RenderState:
    """Everything `render` reuses for one source photo."""

    image: np.ndarray  # (H, W, 3) uint8
    mesh: ControlMesh  # the warp's control points and triangles
    mouth: SourceMouth
    eyes: tuple[SourceEye, ...]  # subject's right eye, then left (as rig.EYE_CONTOURS)
    lip_seam: np.ndarray  # (468, 2) px from the landmarker's inner lips to where a closed photo's lips meet


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
        # mouth interior: as dark as a real one (the cavity of obama_speaking.jpg is 0.04-0.1 × its skin's luma);
        # a lit, lip-red front and tongue (0.38 and 0.47 × skin) were taken for lip by the face landmarker,
        # which then read openings of 1-1.5 cm 1-2 mm smaller than they are. A cavity half as dark again, (0.09,
        # 0.03, 0.03) back and (0.2, 0.09, 0.085) front, looked less like a hole but cost 0.004 of giunchedi_beard's
        # gap p90 on the real clip (`python -m teller_recipe.evaluation.portraits`, 2026-12-02)
        cavity_front_rgb: tuple[float, float, float] = (0.12, 0.065, 0.06),  # toward the corners, not lip-red
        cavity_back_rgb: tuple[float, float, float] = (0.05, 0.016, 0.015),  # the middle of the opening
        cavity_depth: float = 0.55,  # the back's colour holds out to this radius of the opening's ellipse
        # a tongue this light shows in wide openings (at (0.25, 0.1, 0.09) it was lost in the cavity's dark) and
        # leaves the landmarker's gaps as they were (within 0.001 per driven-gap bin, two portraits, probe)
        tongue_rgb: tuple[float, float, float] = (0.42, 0.17, 0.15),
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
        lip_seal_until: float = 0.1,  # the seal fades out as such lips part to this fraction of the photo's gap
        lip_seal_corner_reach: float = 0.1,  # the seal covers the photo's dark mouth corners this far (mouth widths)
        lip_seam_reach: float = 0.08,  # a closed photo's lips part at the darkest line this close (mouth widths)
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
        image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        points = np.asarray(source_landmarks, np.float64)[:NUM_MESH_VERTICES, :2]
        triangles = self.mesh_triangles.cpu().numpy()
        if not triangles.any():
            warnings.warn("GeometricRenderer has no mesh triangulation (build it with from_canonical_mesh); "
                          "falling back to a Delaunay triangulation of the source landmarks.", stacklevel=2)
            triangles = delaunay_face(points)
        # a closed mouth opens where its lips meet in the photo, which the landmarker can miss by a few pixels
        lip_seam = np.zeros_like(points)
        inner = rig.LIPS_INNER_UPPER[1:-1] + rig.LIPS_INNER_LOWER[1:-1]
        ey = local_frame(points, rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER).ey
        lip_seam[inner] = np.tile(lip_seam_shift(image, points, self.config.lip_seam_reach), 2)[:, None] * ey
        points = points + lip_seam
        return RenderState(
            image=image,
            mesh=control_mesh(points, triangles, image.shape[:2], self.config),
            mouth=measure_mouth(image, points, self.config),
            eyes=tuple(measure_eye(points, triangles, up, lo) for up, lo in rig.EYE_CONTOURS),
            lip_seam=lip_seam,
        )

    # ------------------------------------------------------------------------------------------------
    # per frame
    # ------------------------------------------------------------------------------------------------
    def render(self, state: RenderState, driven_landmarks: np.ndarray) -> np.ndarray:
        """One frame (H, W, 3) uint8: the source photo moved to `driven_landmarks` ((478 or 468, 3) px)."""
        cfg = self.config
        driven = np.array(driven_landmarks, np.float64)[:NUM_MESH_VERTICES]
        driven[:, :2] += state.lip_seam  # the lips part where they meet in the photo (see `prepare`)
        # lips and lids close as wholes; closing ones take their edges from further into the photo (src)
        src = state.mesh.points.copy()
        points, lips_open = settle_lips(state.mouth, driven[:, :2].copy(), src, cfg.lip_margin)
        points, closures = settle_lids(state.eyes, state.mesh.points, points, src, cfg.lid_band_follow,
                                       cfg.lid_margin)
        dst = np.concatenate([points, anchor_targets(state.mesh, points)]).astype(np.float32)
        moved = np.abs(dst - src).max(1) > 1e-3
        frame = state.image.copy()
        if not moved.any():
            return frame  # the source's own landmarks: the photo itself
        # the whole photo follows the mesh and its anchors
        depth = np.concatenate([driven[:, 2], np.zeros(len(dst) - NUM_MESH_VERTICES)])
        warp_photo(frame, state.image, state.mesh, src, dst, depth, moved, cfg.border_margin, cfg.detail_margin)
        # then the mouth's interior and the eyeballs are drawn inside the driven openings
        if moved[rig.LIPS_INNER_UPPER + rig.LIPS_INNER_LOWER].any():
            composite_mouth(frame, state.image, state.mouth, points, cfg)
            if lips_open < 1.0:
                seal_lips(frame, state.mouth, points, lips_open, cfg.lip_seal, cfg.lip_seal_until,
                          cfg.lip_seal_corner_reach)
        for (up, lo), eye, closure in zip(rig.EYE_CONTOURS, state.eyes, closures, strict=True):
            if moved[up + lo].any():
                composite_eye(frame, state.image, eye, local_frame(points, up, lo), closure, cfg.eye_widen_blend,
                              cfg.lash_width, cfg.lash_darkness)
        return frame
