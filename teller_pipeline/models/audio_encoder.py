"""Speech encoder: whisper-base's encoder as a `transformers` model, run on short streaming windows.

Teller cuts 50 Hz Whisper embeddings into 200 ms slices (DESIGN.md). Streaming runs the encoder on a sliding
window of recent audio (1-2 s) instead of Whisper's fixed 30 s, so `encode_window` accepts any number of mel
frames up to 3000 and slices the position table to the window; stock `WhisperEncoder.forward` insists on
exactly 3000 frames.

As a pipeline component, `model_index.json` records it as
`"audio_encoder": ["teller_pipeline.models.audio_encoder", "TellerAudioEncoder"]`. diffusers resolves that
module from `sys.modules` (importing `teller_pipeline` first is enough) and picks the save/load methods by
looking the name `PreTrainedModel` up *in this module*, hence the import below must stay.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .whisper_inference import encode_layers

__all__ = [
    "PreTrainedModel",  # looked up here by diffusers' loader (see module docstring)
    "TellerAudioEncoder",
    "embed_audio_window",
    "log_mel",
    "whisper_base_config",
]

MEL_FRAMES_PER_SECOND = 100
EMBEDDINGS_PER_SECOND = 50


def whisper_base_config() -> WhisperConfig:
    """Architecture of whisper-base (the decoder fields are unused here but kept truthful)."""
    return WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=512,
        encoder_layers=6,
        encoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_layers=6,
        decoder_attention_heads=8,
        decoder_ffn_dim=2048,
        max_source_positions=1500,
        max_target_positions=448,
    )


class TellerAudioEncoder(WhisperEncoder):
    """whisper-base's encoder (frozen) with a forward for windows shorter than 30 s.

    `int8`: a third of the matrix products in int8 on a CPU (`whisper_inference`), about a fifth less time for the
    encoder. Off unless asked for (`TellerPipeline.from_pretrained(..., audio_encoder_int8=True)`): the embeddings
    move by 7 % of their size, and the lips meet a little less on p/b/m of held-out voices (bilabial ratio
    +0.005 and +0.010 on two portraits, the second beyond the spread over seeds; size and sync unchanged:
    `python -m teller_recipe.evaluation.audio_precision`). Training computes its features in float32.
    """

    int8: bool = False

    @classmethod
    def from_pretrained(cls, *args, dtype: torch.dtype | str | None = None, **kwargs) -> TellerAudioEncoder:
        """As `PreTrainedModel.from_pretrained`, but float32 unless a dtype is asked for.

        The checkpoint is stored in fp16 to keep it small; transformers would load it as fp16 by default
        (also when diffusers passes `dtype=None`), which runs 3x slower than float32 on a CPU.
        """
        dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype
        if dtype in (None, "auto"):
            dtype = torch.float32
        return super().from_pretrained(*args, dtype=dtype, **kwargs)

    def encode_window(self, input_features: torch.Tensor, keep: slice = slice(None)) -> torch.Tensor:
        """(batch, 80, frames) log-mel, frames ≤ 3000 → (batch, ceil(frames / 2), 512) embeddings at 50 Hz, or only
        their positions `keep` (cheaper: the last layer computes only those).

        Same computation as `forward` (convs, positions, layers, final norm) with the position table cut to
        the window, so on a 3000-frame input it equals `forward(...).last_hidden_state` up to rounding: the layers
        run as `whisper_inference.encode_layers` writes them out, with oneDNN's matrix products on a CPU.
        """
        frames = input_features.shape[-1]
        max_frames = 2 * self.config.max_source_positions
        if frames > max_frames:
            raise ValueError(f"window of {frames} mel frames is longer than Whisper's {max_frames}")
        if frames == 0:  # the convolutions reject empty input
            return self.layer_norm.weight.new_zeros(input_features.shape[0], 0, self.config.d_model)[:, keep]
        # The convolutions run window by window: torch's conv1d sums in another order for a batch than for one
        # window, and a batch must give each window exactly what streaming it alone gives (the layers do).
        x = torch.cat([self._convolve(window[None]) for window in input_features.to(self.conv1.weight.dtype)])
        x = x + self.embed_positions.weight[: x.shape[1]]
        return encode_layers(self, x, keep, int8=self.int8)

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.conv1(x))
        return nn.functional.gelu(self.conv2(x)).transpose(1, 2)


def log_mel(feature_extractor: WhisperFeatureExtractor, audio_16k: np.ndarray) -> torch.Tensor:
    """Whisper log-mel of a window of any length: (1, 80, len // 160), 100 frames per second, no padding.

    Normalisation on a short window: Whisper takes log10 of the mel power, floors it at (the window's own
    maximum - 8), i.e. 80 dB below its loudest bin, then maps x → (x + 4) / 4. Only the floor depends on the
    window; levels are not rescaled. On speech it is the same as in a 30 s padded window (padding is silence,
    which never sets the maximum), and pure digital silence gives -1.5 everywhere. The STFT is centred with
    reflect padding, so the first and last ~2 frames of a window see reflected audio: streaming and training
    must cut windows the same way.
    """
    audio = np.asarray(audio_16k, dtype=np.float32)
    frames = len(audio) // feature_extractor.hop_length
    if len(audio) <= feature_extractor.n_fft // 2:
        # torch.stft's reflect padding needs more samples than half a window; silence does not move the floor.
        audio = np.pad(audio, (0, feature_extractor.n_fft // 2 + 1 - len(audio)))
    features = feature_extractor(
        audio,
        sampling_rate=feature_extractor.sampling_rate,
        padding="do_not_pad",
        return_tensors="pt",
    ).input_features
    return features[..., :frames]


def embed_audio_window(
    encoder: TellerAudioEncoder, feature_extractor: WhisperFeatureExtractor, audio_16k: np.ndarray
) -> torch.Tensor:
    """50 Hz embeddings of a 16 kHz window: (len // 320, 512), one per 20 ms, in the encoder's dtype."""
    mel = log_mel(feature_extractor, audio_16k)
    mel = mel[..., : mel.shape[-1] // 2 * 2]  # an odd last frame would make a half-step embedding
    with torch.inference_mode():
        return encoder.encode_window(mel.to(encoder.device))[0]
