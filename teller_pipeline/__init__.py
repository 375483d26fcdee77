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
"""

from .face_analysis import FaceNotFoundError
from .models.audio_encoder import TellerAudioEncoder
from .models.motion_encoder import MotionEncoder
from .models.motion_generator import MotionGenerator
from .models.motion_tokenizer import MotionTokenizer
from .models.renderer import GeometricRenderer
from .models.temporal_refiner import TemporalRefiner
from .pipeline_teller import ImageError, TellerPipeline, TellerPipelineOutput
from .streaming import GenerationControls, TellerSession

__all__ = [
    "FaceNotFoundError",
    "GenerationControls",
    "GeometricRenderer",
    "ImageError",
    "MotionEncoder",
    "MotionGenerator",
    "MotionTokenizer",
    "TellerAudioEncoder",
    "TellerPipeline",
    "TellerPipelineOutput",
    "TellerSession",
    "TemporalRefiner",
]
