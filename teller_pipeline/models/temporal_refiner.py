"""Temporal refiner (Teller's ETM): smooths and details the coarse motion decoded from tokens.

Tokens quantise each 200 ms slice independently, which leaves steps at slice borders and flattens small
movements. The refiner sees the last `context_frames` refined frames, the current slice's coarse frames and
the slice's audio, and predicts a residual for the current slice. It is causal (no future slices), so it adds
no latency. Its last layer starts at zero: an untrained refiner is the identity. The starter recipe trains it
on the generator's own sampled output (`train_refiner.py --generator`), expression only: it learns to pull the
sampled lip shapes toward what the audio says, and leaves the sampled head motion alone. Training runs it over
several slices in a row, each seeing the refiner's own earlier output as context, as streaming does.

Trained for mean squared error, it regresses toward the mean: its lip movements come out smaller than the
data's. `expression_gain`, measured on the validation split when training ends (how much larger the data's
expression movements are than the refined generated ones: `train_refiner.expression_gain`), scales the
expression offsets back up about the resting face; the session applies it with the user's expression control.

A squared error also leaves the lips apart where the audio leaves it uncertain whether they meet (a short p, b or
m): the mean of closed and open is a mouth that never quite closes. With `closure_gate`, a second head gives the
probability that the lips meet in each frame, and where it is above `closure_threshold` the lips are closed
along `closing_direction` (how the data's face moves as its mouth opening changes) by a share of the opening
`lip_opening_axis` reads: a decision to close, which the regression alone never makes, and only for
`closure_min_frames` frames or more (`lasting`; training/README.md, "A closure gate": what it does to p, b and m).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..motion import EXPRESSION, MOTION_FEATURES
from .motion_tokenizer import MotionTokenizer


class _ResidualConv(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.act(self.norm(x)))


class TemporalRefiner(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        motion_dim: int = MOTION_FEATURES,
        audio_dim: int = 512,
        frames_per_slice: int = 5,
        audio_frames_per_slice: int = 10,
        context_frames: int = 10,
        hidden_dim: int = 128,
        num_layers: int = 4,
        kernel_size: int = 3,
        expression_only: bool = False,
        expression_gain: float = 1.0,
        closure_gate: bool = False,
        closure_threshold: float = 0.5,
        closure_min_frames: int = 2,
    ):
        super().__init__()
        per_frame_audio = audio_dim * audio_frames_per_slice // frames_per_slice
        self.motion_in = nn.Linear(motion_dim + 1, hidden_dim)  # +1: flag marking the current (coarse) frames
        self.audio_in = nn.Linear(per_frame_audio, hidden_dim)
        self.blocks = nn.Sequential(
            *[_ResidualConv(hidden_dim, kernel_size, 2**i) for i in range(num_layers)]
        )
        self.out = nn.Conv1d(hidden_dim, motion_dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # expression_only: leave head rotation and translation as generated. Head motion is not predictable from
        # the audio; a refiner trained toward the data's head motion would only shrink it to the mean.
        mask = torch.ones(motion_dim)
        if expression_only:
            mask[EXPRESSION.stop :] = 0
        self.register_buffer("residual_mask", mask, persistent=False)
        if closure_gate:
            self.closure = nn.Conv1d(hidden_dim, 1, 1)
            # set by training from the data (`train_refiner.opening_model`), in the normalised feature space:
            # x @ lip_opening_axis + lip_opening_offset is how far the inner lips are further apart than the data's
            # closed lips, and x - g · closing_direction is the face with that gap g narrower
            self.register_buffer("lip_opening_axis", torch.zeros(motion_dim))
            self.register_buffer("lip_opening_offset", torch.zeros(()))
            self.register_buffer("closing_direction", torch.zeros(motion_dim))

    def forward(self, context: torch.Tensor, coarse: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Refined current frames (B, 5, 69) from refined past (B, C, 69), coarse current (B, 5, 69) and the
        slice's whisper frames (B, 10, 512). All motion in the tokenizer's normalised feature space."""
        refined, closure_logits = self.regress(context, coarse, audio)
        return refined if closure_logits is None else self.close_lips(refined, closure_logits)

    def regress(self, context: torch.Tensor, coarse: torch.Tensor,
                audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The refined frames before the closure gate, and the gate's logits (B, 5) that the lips meet (None
        without `closure_gate`)."""
        b, n = coarse.shape[:2]
        flag = torch.cat([coarse.new_zeros(b, context.shape[1], 1), coarse.new_ones(b, n, 1)], 1)
        x = self.motion_in(torch.cat([torch.cat([context, coarse], 1), flag], -1))
        audio_frames = self.audio_in(audio.reshape(b, n, -1))
        x = x + torch.cat([torch.zeros_like(x[:, : context.shape[1]]), audio_frames], 1)
        x = self.blocks(x.transpose(1, 2))
        residual = self.out(x).transpose(1, 2)[:, -n:]
        # The gate reads the features without steering them: its cross-entropy trains its own layer only.
        logits = self.closure(x.detach())[:, 0, -n:] if self.config.closure_gate else None
        return coarse + residual * self.residual_mask, logits

    def close_lips(self, refined: torch.Tensor, closure_logits: torch.Tensor) -> torch.Tensor:
        """Close the lips of frames whose probability p of closed lips is above `closure_threshold`, by the
        share (p - threshold) / (1 - threshold) of their opening: all of it at p = 1; only in runs of at least
        `closure_min_frames` such frames (`lasting`)."""
        threshold = self.config.closure_threshold
        if threshold >= 1.0:
            return refined
        p = torch.sigmoid(closure_logits)
        share = ((p - threshold) / (1.0 - threshold)).clamp(0, 1) * lasting(p > threshold,
                                                                          self.config.closure_min_frames)
        opening = (refined @ self.lip_opening_axis + self.lip_opening_offset).clamp_min(0)
        return refined - (share * opening)[..., None] * self.closing_direction

    def unroll(self, context: torch.Tensor, coarse: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Refined frames (B, S·5, 69) of S consecutive slices, run causally as `TellerSession` runs them: each
        slice sees the refiner's own output before it. `context` (B, C, 69) precedes the first slice, coarse is
        (B, S·5, 69), audio (B, S, 10, 512)."""
        return self.unroll_with_gate(context, coarse, audio)[0]

    def unroll_with_gate(self, context: torch.Tensor, coarse: torch.Tensor,
                         audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As `unroll`, and also the frames before the closure gate and the gate's logits (B, S·5) (None without
        `closure_gate`): what training needs."""
        n = self.config.frames_per_slice
        refined, regressed, logits = [], [], []
        for k in range(audio.shape[1]):
            before, slice_logits = self.regress(context, coarse[:, k * n : (k + 1) * n], audio[:, k].to(self.dtype))
            current = before if slice_logits is None else self.close_lips(before, slice_logits)
            context = torch.cat([context, current], 1)[:, -context.shape[1] :]
            refined.append(current)
            regressed.append(before)
            logits.append(slice_logits)
        return torch.cat(refined, 1), torch.cat(regressed, 1), torch.cat(logits, 1) if logits[0] is not None else None


def lasting(held: torch.Tensor, frames: int) -> torch.Tensor:
    """Where `held` (B, n: a slice's frames) is true in a run of at least `frames` frames. A lip closure lasts
    ~60-120 ms (p, b, m), two frames or more at 25 fps; a gate above its threshold for one frame inside a slice
    snapped the lips shut mid-vowel (Grace Hopper, real speech, 'DH' at 2.88 s: gap 0.076 → 0.017). Frames beyond
    the slice are not known yet when it is refined (streaming): they count as held."""
    if frames <= 1:
        return held
    edge = held.new_ones(held.shape[0], frames - 1)
    padded = torch.cat([edge, held, edge], 1).float()
    windows = padded.unfold(1, frames, 1).amin(-1)  # windows of `frames` frames that hold throughout
    return held & windows.unfold(1, frames, 1).amax(-1).bool()  # frames inside one


@torch.no_grad()
def refine_causally(
    refiner: TemporalRefiner, tokenizer: MotionTokenizer, coarse: torch.Tensor, audio_features: torch.Tensor
) -> torch.Tensor:
    """The refiner over a whole utterance (normalised coarse motion (T, 69), whisper frames (S, 10, 512)), slice
    by slice as `TellerSession` runs it, from rest."""
    neutral = tokenizer.normalize(tokenizer.feature_mean.new_zeros(refiner.config.motion_dim))
    context = neutral.expand(refiner.config.context_frames, -1)
    return refiner.unroll(context[None], coarse[None], audio_features[None])[0]
