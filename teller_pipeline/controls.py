"""What a user can turn, with its defaults: defined here once for the pipeline, the CLI and the app.

Kept free of heavy imports so that the CLI's `--help` stays instant.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass
class GenerationControls:
    """What a user can turn: all defaults give natural motion."""

    seed: int = 0
    head_motion_scale: float = 1.0  # 0 = still head
    expression_scale: float = 1.0  # lips, jaw, brows, cheeks
    blinks_per_minute: float = 15.0  # 0 = no blinks
    breathing: float = 1.0  # idle sway amplitude; 0 = none
    top_k: int = 15
    temperature: float = 1.0
    # Where the input is silent (muted microphone, digital silence, the pauses of a clean recording), the head
    # settles toward the photo's pose whatever the generator does; None turns this off. The face is left to the
    # generator, which closes the mouth in pauses as its training data does (motion is decoded onto the photo's
    # face with its lips closed, `MotionEncoder.close_lips`, so a mouth photographed open closes too).
    silence_threshold_db: float | None = -50.0
    # Time constant (seconds) of a causal low-pass on head rotation and translation (two one-pole stages of half
    # of it each, critically damped); 0 = as generated. The generator's head shakes from frame to frame and turns
    # far faster than the corpus' heads; 0.3 s brings its speed and jitter near the corpus' (before rendering, Grace
    # Hopper: 3.49 vs 3.52 deg/s, 0.049 vs 0.040 deg per frame; `python -m teller_recipe.evaluation.portraits`),
    # delays the head by ~0.3 s and never touches the lips.
    head_smoothing: float = 0.3

    def validate(self) -> None:
        """Raise a `ValueError` naming the first setting that is not usable (not a number, NaN, infinite or out of
        range), and reduce the seed into the generator's range (any integer is a seed)."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        self.seed = int(self.seed) % SEED_RANGE
        _check_number("head_motion_scale", self.head_motion_scale, 0, MAX_SCALE)
        _check_number("expression_scale", self.expression_scale, 0, MAX_SCALE)
        _check_number("blinks_per_minute", self.blinks_per_minute, 0, 120)
        _check_number("breathing", self.breathing, 0, MAX_SCALE)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer ≥ 1, got {self.top_k!r}")
        _check_number("temperature", self.temperature, 0, None, "0 = greedy")
        if self.silence_threshold_db is not None:
            _check_number("silence_threshold_db", self.silence_threshold_db, None, 0, "dBFS; None turns it off")
        _check_number("head_smoothing", self.head_smoothing, 0, 2, "seconds")


# torch.Generator takes a 64-bit seed: any integer (negative, huge) is reduced modulo 2**64, so every seed that
# fits, 0 to 2**64 - 1, is used as it is, and -1 means 2**64 - 1.
SEED_RANGE = 2**64
# The app's sliders stop at 2; at 10 the face is already grotesque (expression: the mouth gapes), and far larger
# scales overflow the geometry (head motion ×1e6 fails inside the renderer with NaN coordinates).
MAX_SCALE = 10.0


def _check_number(name: str, value: object, low: float | None, high: float | None, note: str = "") -> None:
    """`value` must be a finite real number within [low, high] (None: unbounded)."""
    hint = f" ({note})" if note else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number{hint}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{hint}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else (
            f"≥ {low:g}" if low is not None else f"≤ {high:g}")
        raise ValueError(f"{name} must be {bounds}{hint}, got {value!r}")
