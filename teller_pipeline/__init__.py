"""Teller: real-time streaming audio-driven portrait animation, as a diffusers-style pipeline.

Where things happen:
    audio.py / models/audio_encoder.py   speech → 16 kHz mono → whisper embeddings (50 Hz)
    models/motion_generator.py           audio slices → motion tokens (autoregressive transformer)
    models/motion_tokenizer.py           motion tokens ↔ motion (residual VQ)
    models/temporal_refiner.py           coarse motion → refined 25 fps motion (ETM)
    models/motion_encoder.py, rig.py     motion latent ↔ face landmarks
    models/renderer/                     landmarks + photo → pixels (renderer.py; warp, mouth, eyes by part)
    streaming.py                         the per-slice loop tying them together
    pipeline_teller.py                   TellerPipeline: loading, the source photo, offline calls
    hub.py                               the published checkpoint's Hub id; a folder or repo id → local folder
"""

import importlib

# Where each public name lives. A name's module is imported when the name is first used (PEP 562), so that
# `teller --help` and a missing checkpoint answer at once instead of after loading torch, diffusers and MediaPipe.
_EXPORTS = {
    "CheckpointNotFoundError": "hub",
    "FaceNotFoundError": "face_analysis",
    "GenerationControls": "controls",
    "GeometricRenderer": "models.renderer",
    "HUB_MODEL_ID": "hub",
    "ImageError": "pipeline_teller",
    "MotionEncoder": "models.motion_encoder",
    "MotionGenerator": "models.motion_generator",
    "MotionTokenizer": "models.motion_tokenizer",
    "TellerAudioEncoder": "models.audio_encoder",
    "TellerPipeline": "pipeline_teller",
    "TellerPipelineOutput": "pipeline_teller",
    "TellerSession": "streaming",
    "TemporalRefiner": "models.temporal_refiner",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
