"""Speech with known phone timing: four engines, 23 voices, speaking rate and pitch drawn per utterance.

    engine     voices                                        timing from
    piper      joe, joe-deep, joe-bright (pitch-shifted)     the model's own durations (patched ONNX output)
    espeak-ng  12 variants (m1-m7, f1-f5), accent per utt.   libespeak-ng phoneme events
    flite      kal, kal16, awb, rms, slt                     `-psdur`
    festival   slt_hts, kal_diphone, ked_diphone             `utt.save.segs`

A voice's name is "engine/speaker"; splits hold out whole speakers (see `corpus.HELD_OUT`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import festival, flite
from .common import SAMPLE_RATE, EngineUnavailable, Speech, pitch_shift

__all__ = ["SAMPLE_RATE", "VOICES", "EngineUnavailable", "Speech", "Voice", "synthesize", "voices_of"]

ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
ESPEAK_ACCENTS = (
    "en-us",
    "en-us",
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
PIPER_PITCH = {"joe": 0.0, "joe-deep": -3.0, "joe-bright": 3.0}


@dataclass(frozen=True)
class Voice:
    engine: str  # "piper" | "espeak-ng" | "flite" | "festival"
    speaker: str

    @property
    def name(self) -> str:
        return f"{self.engine}/{self.speaker}"


VOICES: dict[str, Voice] = {
    v.name: v
    for v in [Voice("piper", s) for s in PIPER_PITCH]
    + [Voice("espeak-ng", s) for s in ESPEAK_VARIANTS]
    + [Voice("flite", s) for s in flite.FLITE_VOICES]
    + [Voice("festival", s) for s in festival.FESTIVAL_VOICES]
}


def voices_of(engine: str) -> list[Voice]:
    return [v for v in VOICES.values() if v.engine == engine]


_piper_engine = None


def _piper(cache_dir: str | os.PathLike | None):
    global _piper_engine
    if _piper_engine is None:
        from .piper import PiperEngine, prepare_aligned_voice

        cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "teller"
        _piper_engine = PiperEngine(prepare_aligned_voice(cache / "piper"))
    return _piper_engine


def _rate(rng: np.random.Generator, low: float = 0.8, high: float = 1.25) -> float:
    """Speaking-rate factor, log-uniform (as many slow as fast utterances)."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def synthesize(
    voice: Voice | str, text: str, rng: np.random.Generator, cache_dir: str | os.PathLike | None = None
) -> Speech:
    """Speak `text` with `voice`, drawing speaking rate and pitch from `rng`."""
    voice = VOICES[voice] if isinstance(voice, str) else voice
    rate = _rate(rng)
    if voice.engine == "piper":
        speech = _piper(cache_dir).synthesize(
            text,
            length_scale=1.0 / rate,
            noise_scale=rng.uniform(0.45, 0.8),
            noise_w=rng.uniform(0.6, 1.0),
            sentence_pause=rng.uniform(0.15, 0.5),
        )
        semitones = PIPER_PITCH[voice.speaker] + rng.uniform(-1.0, 1.0)
        speech.audio = pitch_shift(speech.audio, semitones)
        speech.settings["semitones"] = round(float(semitones), 2)
    elif voice.engine == "espeak-ng":
        from .espeak import EspeakEngine

        accent = ESPEAK_ACCENTS[rng.integers(len(ESPEAK_ACCENTS))]
        speech = EspeakEngine.get().synthesize(
            text,
            f"{accent}+{voice.speaker}",
            rate_wpm=int(170 * rate),
            pitch=int(rng.integers(30, 71)),
            pitch_range=int(rng.integers(30, 91)),
        )
    elif voice.engine == "flite":
        f0 = flite.FLITE_F0[voice.speaker] * 2 ** (rng.uniform(-2.5, 2.5) / 12)
        speech = flite.synthesize(text, voice.speaker, duration_stretch=1.0 / rate, f0_mean=f0)
    elif voice.engine == "festival":
        speech = festival.synthesize(text, voice.speaker, rate=rate, semitones=rng.uniform(-2.0, 2.0))
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")
    speech.settings["rate"] = round(rate, 3)
    return speech
