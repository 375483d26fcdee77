"""Idle motion layered on top of the generated motion: blinks and breathing.

Blinks are not driven by speech, and users want to set their rate, so they are a seeded stochastic process
rather than something the generator must learn; likewise a slow breathing sway keeps a silent portrait alive.
Both are deterministic for a given seed and independent of how the audio is chunked.
"""

from __future__ import annotations

import numpy as np

from . import rig
from .motion import EXPRESSION, ROTATION, TRANSLATION

# Eyelid closure over a blink at 25 fps: a fast close, a slower reopening (~200 ms in all).
BLINK_PROFILE = np.array([0.45, 1.0, 0.85, 0.45, 0.15])
BLINK_LIDS = (
    (rig.KEYPOINT_NAMES.index("upper_eyelid_right"), rig.KEYPOINT_NAMES.index("lower_eyelid_right")),
    (rig.KEYPOINT_NAMES.index("upper_eyelid_left"), rig.KEYPOINT_NAMES.index("lower_eyelid_left")),
)


class IdleMotion:
    """Per-frame eyelid closure (0 open … 1 closed) and breathing sway, for one session."""

    def __init__(
        self,
        seed: int,
        fps: int = 25,
        blinks_per_minute: float = 15.0,
        breathing_period_seconds: float = 4.5,
        breathing_amplitude: float = 1.0,
    ):
        self.rng = np.random.default_rng(seed + 7919)  # own stream: does not disturb the generator's
        self.fps = fps
        self.blinks_per_minute = blinks_per_minute
        self.breathing_period = breathing_period_seconds * fps
        self.breathing_amplitude = breathing_amplitude
        self.breathing_phase = self.rng.uniform(0, 2 * np.pi)
        self.frame = 0
        self.next_blink = self._gap(first=True)

    def _gap(self, first: bool = False) -> int:
        """Frames until the next blink: gamma-distributed (regular-ish, never two blinks back to back)."""
        if self.blinks_per_minute <= 0:
            return np.iinfo(np.int32).max
        mean = 60.0 * self.fps / self.blinks_per_minute
        gap = self.rng.gamma(4.0, mean / 4.0) * (0.5 if first else 1.0)
        return int(max(gap, (0.25 if first else 1.2) * self.fps))

    def next(self, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Closure (n,) and breathing phase value in [-1, 1] (n,) for the next `num_frames` frames."""
        closure = np.zeros(num_frames)
        for i in range(num_frames):
            frame = self.frame + i
            k = frame - self.next_blink
            if 0 <= k < len(BLINK_PROFILE):
                closure[i] = BLINK_PROFILE[k]
            if k == len(BLINK_PROFILE) - 1:
                self.next_blink = frame + 1 + self._gap()
        t = self.frame + np.arange(num_frames)
        breath = np.sin(2 * np.pi * t / self.breathing_period + self.breathing_phase)
        self.frame += num_frames
        return closure, breath


def add_idle_motion(
    features: np.ndarray, closure: np.ndarray, breath: np.ndarray, eyelid_gaps: np.ndarray, amplitude: float
) -> np.ndarray:
    """Add blinks and breathing to raw motion features (n, 69).

    `eyelid_gaps` (2, 3) is lower minus upper eyelid keypoint of the source, in the canonical frame: a closed
    eye moves the upper lid by that much (the lids then meet). Breathing is a slow nod and rise of ~0.4° and
    ~0.3 mm, scaled by `amplitude`.
    """
    out = np.array(features, np.float32, copy=True)
    expression = out[:, EXPRESSION].reshape(len(out), rig.NUM_KEYPOINTS, 3)
    for (upper, _), gap in zip(BLINK_LIDS, eyelid_gaps, strict=True):
        # Never push the lid past the lower lid even if the generated motion already lowered it.
        expression[:, upper] += closure[:, None] * (gap[None] - expression[:, upper]) * 0.97
    out[:, EXPRESSION] = expression.reshape(len(out), -1)
    out[:, ROTATION][:, 0] += amplitude * np.radians(0.4) * breath
    out[:, TRANSLATION][:, 1] -= amplitude * 0.03 * breath
    return out
