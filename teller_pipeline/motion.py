"""Motion latent ↔ flat feature vectors, and the user controls applied to motion.

The learned components (tokenizer, generator, refiner) see each frame's 25×3 motion latent as a 69-d vector:
the 21 keypoint offsets (63), the head rotation as an axis-angle vector (3, radians) and the translation row
(3). Axis-angle keeps rotations on the manifold when the networks interpolate; the 3×3 rows of the latent are
rebuilt exactly from it.
"""

from __future__ import annotations

import numpy as np
import torch

from . import rig

MOTION_FEATURES = rig.NUM_KEYPOINTS * 3 + 6  # 69
EXPRESSION = slice(0, rig.NUM_KEYPOINTS * 3)
ROTATION = slice(rig.NUM_KEYPOINTS * 3, rig.NUM_KEYPOINTS * 3 + 3)
TRANSLATION = slice(rig.NUM_KEYPOINTS * 3 + 3, MOTION_FEATURES)


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[..., 0])
    return torch.stack(
        [zero, -v[..., 2], v[..., 1], v[..., 2], zero, -v[..., 0], -v[..., 1], v[..., 0], zero], -1
    ).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula; returns the row-vector-convention matrix (the transpose of the column one)."""
    angle = rotvec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = _skew(rotvec / angle)
    a = angle[..., None]
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    column = eye + torch.sin(a) * k + (1 - torch.cos(a)) * (k @ k)
    return column.transpose(-1, -2)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of `axis_angle_to_matrix` for rotations below 180°, which head poses always are."""
    column = matrix.transpose(-1, -2)
    cos = ((column.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1 + 1e-7, 1 - 1e-7)
    angle = torch.acos(cos)
    axis = torch.stack(
        [column[..., 2, 1] - column[..., 1, 2], column[..., 0, 2] - column[..., 2, 0],
         column[..., 1, 0] - column[..., 0, 1]], -1
    )
    sin = torch.sin(angle)
    factor = torch.where(sin.abs() > 1e-6, angle / (2 * sin), 0.5 + angle**2 / 12)
    return axis * factor[..., None]


def motion_to_features(motion: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., 25, 3) motion latents → (..., 69) features."""
    motion = torch.as_tensor(np.asarray(motion) if isinstance(motion, np.ndarray) else motion).float()
    expression = motion[..., : rig.NUM_KEYPOINTS, :].flatten(-2)
    rotvec = matrix_to_axis_angle(motion[..., rig.ROTATION_ROWS, :].double()).float()
    return torch.cat([expression, rotvec, motion[..., rig.TRANSLATION_ROW, :]], -1)


def features_to_motion(features: torch.Tensor) -> np.ndarray:
    """(..., 69) features → (..., 25, 3) motion latents (float32 numpy)."""
    features = features.detach().double().cpu()
    expression = features[..., EXPRESSION].reshape(*features.shape[:-1], rig.NUM_KEYPOINTS, 3)
    rotation = axis_angle_to_matrix(features[..., ROTATION])
    translation = features[..., TRANSLATION][..., None, :]
    return torch.cat([expression, rotation, translation], -2).float().numpy()


def apply_controls(
    features: np.ndarray, expression_scale: float = 1.0, head_motion_scale: float = 1.0
) -> np.ndarray:
    """Scale expression offsets and head motion (rotation angle and translation; 0 = a still head)."""
    out = np.array(features, np.float32, copy=True)
    out[..., EXPRESSION] *= expression_scale
    out[..., ROTATION] *= head_motion_scale
    out[..., TRANSLATION] *= head_motion_scale
    return out
