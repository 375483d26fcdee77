"""Audio augmentation so the generator hears speech in rooms, noise and phones, not a clean synthesizer.

Every transform keeps the length and the timing (zero-delay filters, impulse responses whose direct path is
at t = 0), so phone times and motion stay aligned. All randomness comes from the caller's generator.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.signal import butter, fftconvolve, lfilter, resample_poly, sosfiltfilt

SAMPLE_RATE = 16000


def _speech_power(audio: np.ndarray) -> float:
    """Mean power over the loud half of 20 ms frames (so pauses don't dilute the SNR)."""
    n = len(audio) // 320
    if n == 0:
        return float(np.mean(audio**2) + 1e-12)
    power = (audio[: n * 320].reshape(n, 320) ** 2).mean(1)
    return float(np.mean(np.sort(power)[n // 2 :]) + 1e-12)


def coloured_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    white = rng.normal(0, 1, n)
    if kind == "white":
        noise = white
    elif kind == "pink":  # 1/f: Kellet-style sum of one-pole filters
        noise = sum(lfilter([1.0], [1.0, -p], white) * g for p, g in ((0.99, 0.05), (0.95, 0.15), (0.6, 0.5)))
    elif kind == "brown":
        noise = lfilter([1.0], [1.0, -0.995], white)
    elif kind == "babble":  # speech-shaped, syllable-rate modulated noise: a crowd in the distance
        sos = butter(2, [200, 3000], btype="band", fs=SAMPLE_RATE, output="sos")
        shaped = sosfiltfilt(sos, white)
        envelope = sum(
            np.abs(np.sin(2 * np.pi * rng.uniform(2, 6) * np.arange(n) / SAMPLE_RATE + rng.uniform(0, 6)))
            for _ in range(4)
        )
        noise = shaped * envelope
    elif kind == "hum":  # mains hum with harmonics over a little hiss
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.choice([50.0, 60.0])
        noise = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 6)) + 0.1 * white
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    return noise / (np.std(noise) + 1e-12)


def add_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float, kind: str) -> np.ndarray:
    noise = coloured_noise(rng, len(audio), kind)
    scale = np.sqrt(_speech_power(audio) / 10 ** (snr_db / 10))
    return audio + scale * noise


def synthetic_impulse_response(
    rng: np.random.Generator, rt60: float, direct_to_reverb_db: float
) -> np.ndarray:
    """A room: the direct path at t = 0, a few early reflections, then exponentially decaying noise whose
    high frequencies die out faster (air and wall absorption)."""
    length = int(min(1.2 * rt60, 1.0) * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    tail = rng.normal(0, 1, length) * np.exp(-6.9 * t / rt60)
    tail = lfilter([0.35], [1.0, -0.65], tail) + 0.5 * tail * np.exp(-6.9 * t / (0.5 * rt60))
    onset = int(rng.uniform(0.002, 0.012) * SAMPLE_RATE)
    tail[:onset] = 0.0
    for _ in range(rng.integers(3, 8)):  # early reflections
        k = int(rng.uniform(0.003, 0.04) * SAMPLE_RATE)
        if k < length:
            tail[k] += rng.uniform(-0.6, 0.6) * np.exp(-6.9 * t[k] / rt60)
    tail *= np.sqrt(10 ** (-direct_to_reverb_db / 10) / (np.sum(tail**2) + 1e-12))
    tail[0] = 1.0  # the direct path
    return tail


def reverberate(audio: np.ndarray, rng: np.random.Generator, rt60: float, drr_db: float) -> np.ndarray:
    ir = synthetic_impulse_response(rng, rt60, drr_db)
    return fftconvolve(audio, ir)[: len(audio)]


def telephone(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """300-3400 Hz band, 8 kHz sampling and 8-bit mu-law, as a phone line."""
    sos = butter(4, [300, 3400], btype="band", fs=SAMPLE_RATE, output="sos")
    narrow = resample_poly(sosfiltfilt(sos, audio), 1, 2)
    peak = np.max(np.abs(narrow)) + 1e-9
    x = narrow / peak
    mu = 255.0
    coded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    coded = np.round(coded * 127) / 127
    x = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu
    return resample_poly(x * peak, 2, 1)[: len(audio)]


def resample_round_trip(audio: np.ndarray, rate: int) -> np.ndarray:
    ratio = Fraction(rate, SAMPLE_RATE).limit_denominator(1000)
    there = resample_poly(audio, ratio.numerator, ratio.denominator)
    back = resample_poly(there, ratio.denominator, ratio.numerator)
    return np.pad(back, (0, max(0, len(audio) - len(back))))[: len(audio)]


def augment(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A random chain (room → noise → channel → level); returns the audio and a description of the chain.

    About a fifth of the utterances stay clean apart from their level.
    """
    x = np.asarray(audio, np.float64)
    steps: list[str] = []
    if rng.random() < 0.8:
        if rng.random() < 0.4:
            rt60, drr = rng.uniform(0.15, 0.9), rng.uniform(-3.0, 12.0)
            x = reverberate(x, rng, rt60, drr)
            steps.append(f"reverb(rt60={rt60:.2f}s,drr={drr:.1f}dB)")
        if rng.random() < 0.6:
            kind = str(rng.choice(["white", "pink", "brown", "babble", "hum"]))
            snr = rng.uniform(0.0, 30.0)
            x = add_noise(x, rng, snr, kind)
            steps.append(f"noise({kind},snr={snr:.1f}dB)")
        channel = rng.random()
        if channel < 0.12:
            x = telephone(x, rng)
            steps.append("telephone")
        elif channel < 0.35:
            rate = int(rng.choice([8000, 11025, 12000, 22050, 24000, 44100]))
            x = resample_round_trip(x, rate)
            steps.append(f"resample({rate})")
    gain_db = rng.uniform(-20.0, 4.0)
    peak = np.max(np.abs(x)) + 1e-9
    x = x / peak * 0.9 * 10 ** (gain_db / 20)  # level relative to a 0.9 peak; above 0 dB it clips
    clipped = bool(np.any(np.abs(x) > 1.0))
    steps.append(f"gain({gain_db:+.1f}dB{',clipped' if clipped else ''})")
    return np.clip(x, -1.0, 1.0).astype(np.float32), ";".join(steps)
