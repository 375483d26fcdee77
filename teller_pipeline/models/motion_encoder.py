"""Motion encoder: 478 face landmarks ↔ (source identity, per-frame 25×3 motion latent).

Teller's motion latent follows LivePortrait's layout, `m ∈ R^{25×3}`, read relative to the source photo:

* rows 0-20  `exp`: offsets of the 21 keypoints (`rig.KEYPOINTS`) in the face's canonical frame (cm of
  MediaPipe's canonical face) from the source's own keypoints; zeros = the source's expression;
* rows 21-23 `R`: head rotation relative to the source's pose (identity = the source's pose), row-vector
  convention, applied in the head's own frame;
* row 24     `t`: (dx, dy) head translation in canonical units, and dz = log of the scale change (moving
  toward the camera makes the face larger).

A driven landmark is `x = s·((x_c + W·exp) @ R @ R_src) + t`, where `x_c` are the source's 478 landmarks in
the canonical frame (the per-identity part, not generated) and W is a fixed interpolation on the mesh that
spreads keypoint offsets to every landmark. The source's own motion (`neutral_motion()`) reproduces the
source landmarks exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .. import rig

INTERPOLATION_SIGMA = 1.5  # cm: see `MotionEncoder.from_canonical_mesh`
# How a parted mouth closes, per cm of the inner-lip gap at its centre (canonical frame, + = down): the lower lip
# travels most of the way as the jaw rises, the upper lip a little; outer and side lips and the chin follow as in
# the corpus' face model (`teller_recipe.corpus.face_model.face_state`).
LIP_CLOSING = {
    "upper_lip_inner": 0.35, "upper_lip_outer": 0.28, "upper_lip_right": 0.3, "upper_lip_left": 0.3,
    "lower_lip_inner": -0.65, "lower_lip_outer": -0.62, "lower_lip_right": -0.55, "lower_lip_left": -0.55,
    "mouth_corner_right": -0.2, "mouth_corner_left": -0.2, "chin": -0.45, "jaw_right": -0.15, "jaw_left": -0.15,
}


@dataclass
class SourceFace:
    """Per-identity state extracted once from the source photo."""

    landmarks: np.ndarray  # (478, 3) pixels
    canonical: np.ndarray  # (478, 3) the same landmarks in the canonical face frame
    scale: float
    rotation: np.ndarray  # (3, 3) source head pose
    translation: np.ndarray  # (3,)
    image_size: tuple[int, int]  # (width, height)

    @property
    def canonical_keypoints(self) -> np.ndarray:
        return self.canonical[rig.KEYPOINT_INDICES]


class MotionEncoder(ModelMixin, ConfigMixin):
    """Maps face landmarks to Teller's motion latent and back. Fitted constants only: no trained weights."""

    # The geometry runs in float64 numpy; loading the pipeline in half precision must not round its constants.
    _keep_in_fp32_modules = ["canonical_mesh", "procrustes_weights", "keypoint_weights"]

    @register_to_config
    def __init__(
        self,
        num_landmarks: int = 478,
        num_mesh_vertices: int = 468,
        num_procrustes_landmarks: int = 33,
        interpolation_sigma: float = INTERPOLATION_SIGMA,
    ):
        super().__init__()
        # Filled by `from_canonical_mesh` (checkpoint building) and then saved as safetensors buffers.
        self.register_buffer("canonical_mesh", torch.zeros(num_mesh_vertices, 3))
        self.register_buffer("procrustes_ids", torch.zeros(num_procrustes_landmarks, dtype=torch.long))
        self.register_buffer("procrustes_weights", torch.ones(num_procrustes_landmarks))
        self.register_buffer("keypoint_weights", torch.zeros(num_landmarks, rig.NUM_KEYPOINTS))
        self.register_buffer("keypoint_indices", torch.tensor(rig.KEYPOINT_INDICES, dtype=torch.long))

    @classmethod
    def from_canonical_mesh(cls, mesh, interpolation_sigma: float = INTERPOLATION_SIGMA) -> MotionEncoder:
        """Build from MediaPipe's canonical face mesh (see `face_analysis.load_canonical_mesh`).

        `interpolation_sigma` (cm on the canonical face) spreads the keypoints' offsets over the other landmarks,
        the eyelids' over 4/3 of that (`rig.EYELID_SIGMA_SCALE`). 1.5: with human-sized mouth movements the round
        trip of talking frames' landmarks (the frames of tests/test_pipeline.py, which asserts < 1 %; worst frame
        measured by a probe, not printed by a repo command) is 0.96 % of the eye distance on the astronaut and
        0.78 % on Grace Hopper, against 1.05 % and 0.82 % at a single 2.0; a closing lid at 1.5 carried too little
        skin to read as a blink behind glasses (tests/test_renderer.py fails), hence the eyelids' 2.0."""
        encoder = cls(
            num_mesh_vertices=len(mesh.vertices),
            num_procrustes_landmarks=len(mesh.procrustes_ids),
            interpolation_sigma=interpolation_sigma,
        )
        weights = rig.keypoint_interpolation_weights(mesh.vertices, mesh.triangles, interpolation_sigma)
        encoder.canonical_mesh.copy_(torch.from_numpy(mesh.vertices))
        encoder.procrustes_ids.copy_(torch.from_numpy(mesh.procrustes_ids))
        encoder.procrustes_weights.copy_(torch.from_numpy(mesh.procrustes_weights))
        encoder.keypoint_weights.copy_(torch.from_numpy(weights))
        return encoder

    # ---- numpy views of the constants (geometry runs in float64 numpy; it is tiny) ----
    def _constants(self):
        if getattr(self, "_np_cache", None) is None:
            self._np_cache = (
                self.canonical_mesh.double().cpu().numpy(),
                self.procrustes_ids.cpu().numpy(),
                self.procrustes_weights.double().cpu().numpy(),
                self.keypoint_weights.double().cpu().numpy(),
            )
        return self._np_cache

    def _load_from_state_dict(self, *args, **kwargs):  # invalidate the numpy cache on load
        self._np_cache = None
        return super()._load_from_state_dict(*args, **kwargs)

    @staticmethod
    def neutral_motion(num_frames: int | None = None) -> np.ndarray:
        """The source's own motion: zero offsets, identity rotation, zero translation."""
        motion = np.zeros((rig.MOTION_ROWS, 3), np.float32)
        motion[rig.ROTATION_ROWS] = np.eye(3)
        return motion if num_frames is None else np.repeat(motion[None], num_frames, 0)

    def encode_source(self, landmarks: np.ndarray, image_size: tuple[int, int]) -> SourceFace:
        """Source identity: the absolute pose against the canonical mesh and the landmarks in that frame."""
        mesh, ids, weights, _ = self._constants()
        points = np.asarray(landmarks, np.float64)
        scale, rotation, translation = rig.fit_similarity(mesh[ids], points[ids], weights)
        canonical = ((points - translation) / scale) @ rotation.T
        return SourceFace(points.astype(np.float32), canonical, scale, rotation, translation, image_size)

    def encode(self, source: SourceFace, landmarks: np.ndarray) -> np.ndarray:
        """Motion latent (25, 3) of one frame's landmarks, relative to `source` (same person)."""
        _, ids, weights, _ = self._constants()
        points = np.asarray(landmarks, np.float64)
        # Fit to the source's own canonical landmarks: same face shape, so the fit is exact up to expression.
        scale, rotation, translation = rig.fit_similarity(source.canonical[ids], points[ids], weights)
        canonical = ((points - translation) / scale) @ rotation.T
        motion = np.zeros((rig.MOTION_ROWS, 3))
        motion[: rig.NUM_KEYPOINTS] = canonical[rig.KEYPOINT_INDICES] - source.canonical_keypoints
        motion[rig.ROTATION_ROWS] = rotation @ source.rotation.T
        offset = (translation - source.translation) / source.scale
        motion[rig.TRANSLATION_ROW] = (offset[0], offset[1], np.log(scale / source.scale))
        return motion.astype(np.float32)

    def decode(self, source: SourceFace, motion: np.ndarray) -> np.ndarray:
        """Landmarks in pixels, (..., 478, 3), for motion latents (..., 25, 3)."""
        _, _, _, keypoint_weights = self._constants()
        motion = np.asarray(motion, np.float64)
        exp = motion[..., : rig.NUM_KEYPOINTS, :]
        rotation = motion[..., rig.ROTATION_ROWS, :] @ source.rotation
        t = motion[..., rig.TRANSLATION_ROW, :]
        scale = source.scale * np.exp(t[..., 2])[..., None, None]
        translation = source.translation + source.scale * np.concatenate(
            [t[..., :2], np.zeros_like(t[..., :1])], -1
        )
        canonical = source.canonical + keypoint_weights @ exp
        return (scale * canonical @ rotation + translation[..., None, :]).astype(np.float32)

    def identity_prior(self, source: SourceFace) -> np.ndarray:
        """RealTalk-style identity prior: the source's keypoints in the canonical frame minus the mean face's.

        It tells the generator the person's face shape and resting expression (e.g. a smile), so the mouth
        shapes it generates fit this face.
        """
        mesh, _, _, _ = self._constants()
        return (source.canonical_keypoints - mesh[rig.KEYPOINT_INDICES]).astype(np.float32)

    def close_lips(self, source: SourceFace) -> SourceFace:
        """The source with its lips together: the rest pose motion is generated from and decoded onto.

        A photo taken mid-word or smiling with teeth then closes its mouth in pauses and on p/b/m as a
        closed-mouth photo does, and keeps its smile (mouth corners, cheeks). The lips close as a mouth does
        (`LIP_CLOSING`, spread over the face like any keypoint offset): the centres meet exactly, the rest of the
        lips nearly (the renderer's `settle_lips`, in renderer/mouth.py, closes what is left). A closed mouth is
        left as it is.
        """
        _, _, _, weights = self._constants()
        key = {name: k for k, name in enumerate(rig.KEYPOINT_NAMES)}
        canonical = source.canonical.copy()
        gap = float(canonical[rig.KEYPOINTS["lower_lip_inner"], 1] - canonical[rig.KEYPOINTS["upper_lip_inner"], 1])
        if gap <= 0:
            return source
        offsets = np.zeros((rig.NUM_KEYPOINTS, 3))
        for name, share in LIP_CLOSING.items():
            offsets[key[name], 1] = share * gap  # y points down the face
        canonical += weights @ offsets
        landmarks = source.scale * canonical @ source.rotation + source.translation
        return dataclasses.replace(source, landmarks=landmarks.astype(np.float32), canonical=canonical)
