"""Shared fixtures. Everything runs offline against the bundled checkpoint and example media."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CHECKPOINT = ROOT / "checkpoints" / "teller-base"
ASTRONAUT = EXAMPLES / "astronaut.png"
GRACE_HOPPER = EXAMPLES / "grace_hopper.jpg"
REAL_SPEECH = EXAMPLES / "arctic_a0009.wav"


def png_header_claiming(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header declares `width` x `height` pixels: what a decompression bomb looks like to a
    reader that checks before decoding (its pixel data would not even decode)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + data[24:29]  # width, height, then depth, colour, methods
    data[16:33] = ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def pipe():
    """The bundled starter checkpoint, loaded once."""
    from teller_pipeline import TellerPipeline

    if not (CHECKPOINT / "model_index.json").is_file():
        pytest.fail(f"{CHECKPOINT} is missing: build it with `python -m teller_recipe.conversion.build_checkpoint`")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TellerPipeline.from_pretrained(CHECKPOINT)


@pytest.fixture(scope="session")
def tiny_pipe(pipe):
    """A tiny, seeded, untrained pipeline sharing the real audio encoder (for save/load tests)."""
    from teller_recipe.conversion.build_checkpoint import build_pipeline

    return build_pipeline(
        "tiny", seed=0, audio_encoder=pipe.audio_encoder, feature_extractor=pipe.feature_extractor
    )


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    from teller_pipeline.audio import load_audio

    return load_audio(REAL_SPEECH)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Close every face landmarker and collect garbage here, at a safe point: MediaPipe's own finaliser, run by the
    garbage collector in the middle of an import (pytest's summary imports plugins), waits on a worker thread that
    needs the import lock, and the run hangs after its last test."""
    import gc

    from teller_pipeline import face_analysis

    face_analysis._close_open_analyzers()
    gc.collect()
