"""flite (CMU; Debian package `flite`): `-psdur` prints every phone with its end time.

Built-in voices: kal (8 kHz diphone), kal16 (16 kHz diphone), awb, rms, slt (clustergen). Speaking rate and
pitch are flite features: `duration_stretch` and `int_f0_target_mean`.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import soundfile as sf

from ..phonemes import Phone, radio_to_arpabet, split_evenly
from .common import Speech, finish, require_binary

FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# Typical mean F0 of each voice (Hz), around which the per-utterance pitch is drawn.
FLITE_F0 = {"kal": 105.0, "kal16": 105.0, "awb": 110.0, "rms": 100.0, "slt": 165.0}


def parse_psdur(output: str) -> list[Phone]:
    """`pau:0.184 dh:0.228 …` (phone:end time) → phones."""
    phones: list[Phone] = []
    start = 0.0
    for token in output.split():
        if ":" not in token:
            continue
        name, _, end_text = token.rpartition(":")
        try:
            end = float(end_text)
        except ValueError:
            continue
        if end > start:
            phones.extend(split_evenly(start, end, radio_to_arpabet(name)))
            start = end
    return phones


def synthesize(text: str, voice: str, duration_stretch: float = 1.0, f0_mean: float | None = None) -> Speech:
    if voice not in FLITE_VOICES:
        raise ValueError(f"flite has no built-in voice {voice!r}; choose from {FLITE_VOICES}")
    flite = require_binary("flite", "flite")
    f0 = FLITE_F0[voice] if f0_mean is None else f0_mean
    with tempfile.TemporaryDirectory(prefix="teller-flite-") as tmp:
        wav = Path(tmp) / "speech.wav"
        result = subprocess.run(
            [
                flite,
                "-voice",
                voice,
                "--setf",
                f"duration_stretch={duration_stretch:.3f}",
                "--setf",
                f"int_f0_target_mean={f0:.1f}",
                "-psdur",
                "-t",
                text,
                "-o",
                str(wav),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        audio, rate = sf.read(wav, dtype="float32")
    settings = {"voice": voice, "duration_stretch": round(duration_stretch, 3), "f0_mean": round(f0, 1)}
    return finish(audio, rate, parse_psdur(result.stdout), settings)
