"""Prosody → head and brow motion: nods on stressed syllables, brow raises on emphasis, slow drift.

Stress is read from the audio itself (vowel loudness and length), not from the engines' stress marks (flite
and festival report none), so every engine is treated alike and the link between what is heard and how the
head moves is one the generator can learn.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter

from .phonemes import SILENCE, VOWELS, Phone
from .speech.common import SAMPLE_RATE

RATE = 100.0  # Hz, as the articulation tracks


def energy_db(audio: np.ndarray, rate: float = RATE) -> np.ndarray:
    """Short-time level (dB) at `rate` Hz, 25 ms windows."""
    hop = int(SAMPLE_RATE / rate)
    win = int(0.025 * SAMPLE_RATE)
    padded = np.pad(audio.astype(np.float64), (win // 2, win))
    n = len(audio) // hop + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n]
    return 10 * np.log10((frames**2).mean(1) + 1e-10)


def phone_stress(phones: list[Phone], level_db: np.ndarray, rate: float = RATE) -> np.ndarray:
    """Per phone: how prominent it is (z-score of peak loudness and log length among the vowels; 0 else)."""
    stress = np.zeros(len(phones))
    vowels = [k for k, p in enumerate(phones) if p.phone in VOWELS]
    if len(vowels) < 2:
        return stress
    peaks, lengths = [], []
    for k in vowels:
        a, b = int(phones[k].start * rate), max(int(phones[k].end * rate), int(phones[k].start * rate) + 1)
        peaks.append(level_db[a:b].max() if b <= len(level_db) else level_db[-1])
        lengths.append(np.log(phones[k].duration + 1e-3))
    peaks, lengths = np.asarray(peaks), np.asarray(lengths)
    score = (peaks - peaks.mean()) / (peaks.std() + 1e-6) + 0.6 * (lengths - lengths.mean()) / (
        lengths.std() + 1e-6
    )
    stress[vowels] = score / 1.6
    return stress


def _ou(rng: np.random.Generator, n: int, sigma: float, tau: float, rate: float = RATE) -> np.ndarray:
    """Ornstein-Uhlenbeck process from 0 (the photo's pose): stationary std `sigma`, time constant `tau`."""
    a = np.exp(-1.0 / (tau * rate))
    noise = rng.normal(0, sigma * np.sqrt(1 - a * a), n)
    noise[0] = 0.0
    # Smoothed: heads drift smoothly; a raw OU path is rough at short time scales.
    return gaussian_filter1d(lfilter([1.0], [1.0, -a], noise), 0.12 * rate, mode="nearest")


def _bump(times: np.ndarray, onset: float, rise: float, decay: float) -> np.ndarray:
    """A smooth pulse from `onset`, peaking (at 1) after `rise` s, then fading with time constant `decay`."""
    t = np.clip(times - onset, 0.0, None)
    up = (t / rise) ** 2 * np.exp(2 * (1 - t / rise))  # gamma-like, peak 1 at t = rise
    return np.where(t < rise, up, np.exp(-(t - rise) / decay) * 1.0)


def speech_activity(phones: list[Phone], times: np.ndarray) -> np.ndarray:
    """1 while speaking, 0 in pauses, smoothed over ~150 ms."""
    active = np.zeros(len(times))
    for p in phones:
        if p.phone != SILENCE:
            active[(times >= p.start) & (times < p.end)] = 1.0
    return gaussian_filter1d(active, 0.15 * RATE, mode="nearest")


def head_and_brows(
    phones: list[Phone],
    stress: np.ndarray,
    times: np.ndarray,
    rng: np.random.Generator,
    head_style: float = 1.0,
    brow_style: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head rotation (N, 3: pitch, yaw, roll in radians; pitch > 0 = chin down), translation (N, 3: dx, dy
    in canonical cm, dz = log scale) and brow raise (N, cm) at the times given."""
    n = len(times)
    active = speech_activity(phones, times)
    gate = 0.45 + 0.55 * active  # less motion in pauses
    deg = np.pi / 180
    pitch = _ou(rng, n, 1.3 * head_style, rng.uniform(1.0, 2.5)) * gate
    yaw = _ou(rng, n, 2.0 * head_style, rng.uniform(1.5, 3.5)) * gate
    roll = _ou(rng, n, 0.9 * head_style, rng.uniform(1.5, 3.5)) * gate
    brow = np.zeros(n)
    last_nod = -1.0
    order = np.argsort(-stress)
    for k in order:
        s, p = stress[k], phones[k]
        if s < 0.6 or p.phone not in VOWELS:
            break
        if abs(p.start - last_nod) > 0.35:
            amp = head_style * rng.uniform(0.5, 1.3) * min(s, 2.5)
            nod = _bump(times, p.start - 0.08, 0.16, 0.18)
            pitch += amp * nod
            yaw += rng.normal(0, 0.25) * amp * nod
            roll += rng.normal(0, 0.2) * amp * nod
            last_nod = p.start
        if s > 1.1 and rng.random() < 0.7:
            brow += brow_style * rng.uniform(0.1, 0.3) * _bump(times, p.start - 0.15, 0.18, 0.35)
    # Soft limits: a few degrees at most.
    rotation = np.stack([4.0 * np.tanh(pitch / 4.0), 5.0 * np.tanh(yaw / 5.0), 3.0 * np.tanh(roll / 3.0)], -1)
    rotation = gaussian_filter1d(rotation, 0.04 * RATE, axis=0, mode="nearest") * deg
    rotation -= rotation[:1] * np.exp(-times / 0.3)[:, None]  # start exactly at the photo's pose
    translation = (
        np.stack(
            [
                _ou(rng, n, 0.2 * head_style, 2.5) + 3.0 * rotation[:, 1],
                _ou(rng, n, 0.15 * head_style, 2.0) + 4.0 * rotation[:, 0],
                _ou(rng, n, 0.008 * head_style, 3.0),
            ],
            -1,
        )
        * gate[:, None]
    )
    brow = np.minimum(brow, 0.45) + rng.normal(0, 0.02) * active
    return rotation, translation, brow
