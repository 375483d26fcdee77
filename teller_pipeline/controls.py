"""What a user can turn, with its defaults: defined here once for the pipeline, the CLI and the app.

Kept free of heavy imports so that the CLI's `--help` stays instant.
"""

from __future__ import annotations

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
        if self.head_motion_scale < 0 or self.expression_scale < 0:
            raise ValueError("head_motion_scale and expression_scale must be ≥ 0")
        if self.blinks_per_minute < 0 or self.blinks_per_minute > 120:
            raise ValueError("blinks_per_minute must be between 0 and 120")
        if self.top_k < 1:
            raise ValueError("top_k must be ≥ 1")
        if self.temperature < 0:
            raise ValueError("temperature must be ≥ 0 (0 = greedy)")
        if not 0 <= self.head_smoothing <= 2:
            raise ValueError("head_smoothing must be between 0 and 2 seconds")
