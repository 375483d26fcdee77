"""Motion tokenizer (FMLG's residual VQ): a window of motion frames ↔ a short stack of discrete tokens.

One window is one 200 ms audio slice (5 frames at 25 fps), so every slice of speech maps to exactly
`num_quantizers` tokens; the paper uses 4 frames → 32 tokens. The residual quantiser is
`vector_quantize_pytorch.ResidualVQ` (EMA codebooks, k-means init, dead-code replacement).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from vector_quantize_pytorch import ResidualVQ

from ..motion import MOTION_FEATURES


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class MotionTokenizer(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        motion_dim: int = MOTION_FEATURES,
        frames_per_window: int = 5,
        hidden_dim: int = 256,
        latent_dim: int = 64,
        num_quantizers: int = 8,
        codebook_size: int = 512,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.95,
    ):
        super().__init__()
        window = motion_dim * frames_per_window
        self.encoder = _mlp([window, hidden_dim, hidden_dim, latent_dim])
        self.quantizer = ResidualVQ(
            dim=latent_dim,
            num_quantizers=num_quantizers,
            codebook_size=codebook_size,
            commitment_weight=commitment_weight,
            decay=ema_decay,
            kmeans_init=True,
            threshold_ema_dead_code=2,
        )
        self.decoder = _mlp([latent_dim, hidden_dim, hidden_dim, window])
        # Per-feature statistics of the training motion: the networks see standardised features.
        self.register_buffer("feature_mean", torch.zeros(motion_dim))
        self.register_buffer("feature_std", torch.ones(motion_dim))

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std

    def denormalize(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.feature_std + self.feature_mean

    def _windows(self, features: torch.Tensor) -> torch.Tensor:
        batch, frames, dim = features.shape
        n = self.config.frames_per_window
        if frames % n:
            raise ValueError(f"{frames} frames is not a whole number of {n}-frame windows")
        return features.reshape(batch, frames // n, n * dim)

    def forward(self, features: torch.Tensor):
        """Normalised features (B, T, 69) → (reconstruction (B, T, 69), codes (B, T/5, Q), commitment loss)."""
        latent = self.encoder(self._windows(features))
        quantized, codes, commit_loss = self.quantizer(latent)
        recon = self.decoder(quantized).reshape(features.shape)
        return recon, codes, commit_loss.sum()

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised features (B, T, 69) → token ids (B, T/5, Q)."""
        _, codes, _ = self.quantizer(self.encoder(self._windows(features)))
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids (B, S, Q) → normalised features (B, S·5, 69)."""
        quantized = self.quantizer.get_output_from_indices(codes)
        windows = self.decoder(quantized)
        return windows.reshape(codes.shape[0], -1, self.config.motion_dim)
