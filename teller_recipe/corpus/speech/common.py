"""What every speech engine returns, and the audio helpers they share."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from ..phonemes import Phone, normalize

SAMPLE_RATE = 16000


@dataclass
class Speech:
    """16 kHz mono float32 speech and its phones (ARPAbet + "sil"), covering the audio exactly."""

    audio: np.ndarray
    phones: list[Phone]
    settings: dict = field(default_factory=dict)  # engine parameters used (rate, pitch, …)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class EngineUnavailable(RuntimeError):
    """A speech engine is not installed on this machine."""


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EngineUnavailable(f"`{name}` was not found: install the Debian package `{package}`")
    return path


def to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """Resample with a linear-phase polyphase filter (no delay, so phone times stay valid)."""
    audio = np.asarray(audio, np.float32)
    if rate == SAMPLE_RATE:
        return audio
    ratio = Fraction(SAMPLE_RATE, rate).limit_denominator(1000)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def _envelope(audio: np.ndarray, hop: int = 16) -> np.ndarray:
    n = len(audio) // hop
    return np.sqrt((audio[: n * hop].reshape(n, hop) ** 2).mean(1) + 1e-10)


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch (and formants) without changing duration, with sox's `pitch` effect.

    sox's WSOLA can drift the signal by a few milliseconds; the result is realigned to the input by
    cross-correlating the energy envelopes, so phone times stay valid.
    """
    if abs(semitones) < 1e-3:
        return audio
    sox = require_binary("sox", "sox")
    out = subprocess.run(
        [
            sox,
            "-t",
            "f32",
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-",
            "-t",
            "f32",
            "-",
            "pitch",
            f"{100 * semitones:.0f}",
        ],
        input=np.ascontiguousarray(audio, np.float32).tobytes(),
        capture_output=True,
        check=True,
    ).stdout
    shifted = np.frombuffer(out, np.float32).copy()
    shifted = np.pad(shifted, (0, max(0, len(audio) - len(shifted))))[: len(audio)]
    a, b = _envelope(audio), _envelope(shifted)
    lags = range(-30, 31)  # ±30 ms in 1 ms steps
    n = len(a)
    scores = [float(np.dot(a[max(0, -k) : n - max(0, k)], b[max(0, k) : n - max(0, -k)])) for k in lags]
    lag = list(lags)[int(np.argmax(scores))] * 16
    if lag > 0:
        shifted = np.concatenate([shifted[lag:], np.zeros(lag, np.float32)])
    elif lag < 0:
        shifted = np.concatenate([np.zeros(-lag, np.float32), shifted[:lag]])
    return shifted


def finish(audio: np.ndarray, rate: int, phones: list[Phone], settings: dict) -> Speech:
    """Resample to 16 kHz, peak-normalise, and make the phones cover the audio."""
    audio16 = to_16k(audio, rate)
    peak = float(np.abs(audio16).max()) if len(audio16) else 0.0
    if peak > 1e-6:
        audio16 = audio16 * (0.9 / peak)
    duration = len(audio16) / SAMPLE_RATE
    return Speech(audio16.astype(np.float32), normalize(phones, duration), settings)
