"""Phones → articulatory parameter tracks, with coarticulation (Cohen & Massaro's dominance model).

Each phone has a target for each articulatory parameter and a dominance: how strongly it imposes that
target on its neighbours. A phone's dominance is flat over its own interval and decays outside it, faster
after it (carry-over) than before it (anticipation: lips and jaw move toward a sound ~100-150 ms before it
is heard). At every instant a parameter is the dominance-weighted mean of all targets, so trajectories are
continuous, short vowels undershoot, and visually underspecified consonants (t, d, k, g, h, n, l) take the
shape of their neighbours while bilabials (p, b, m) and labiodentals (f, v) impose theirs.

Parameters (`PARAMS`), in canonical-face centimetres where they are distances:
    jaw     chin drop                          upper   upper inner lip raise
    lower   lower inner lip drop beyond the jaw (negative: lip raised toward the upper teeth, f/v)
    round   lip rounding/protrusion (0-1)      spread  lip spreading (0-1)
    tuck    lower lip under the upper teeth (0-1, f/v)
    closure bilabial closure (0-1): the lips meet whatever the jaw does
    press   lips pressed (0-1, p/b/m)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .phonemes import SILENCE, VOWELS, Phone

PARAMS = ("jaw", "upper", "lower", "round", "spread", "tuck", "closure", "press")
P = {name: k for k, name in enumerate(PARAMS)}
RATE = 100.0  # Hz of the internal tracks

# Which dominance group each parameter belongs to: 0 jaw, 1 lips (aperture, closure), 2 lip shape.
_GROUP = np.array([0, 1, 1, 2, 2, 1, 1, 1])


@dataclass(frozen=True)
class Viseme:
    targets: tuple[float, ...]  # one per PARAMS entry
    dominance: tuple[float, float, float]  # jaw, lips, lip shape
    reach: float = 1.0  # scales the dominance time constants


def _v(
    jaw,
    upper,
    lower,
    round_=0.0,
    spread=0.0,
    tuck=0.0,
    closure=0.0,
    press=0.0,
    dominance=(1.0, 1.0, 1.0),
    reach=1.0,
) -> Viseme:
    return Viseme((jaw, upper, lower, round_, spread, tuck, closure, press), dominance, reach)


# Targets (centre inner-lip gap = jaw + upper + lower): open vowels 1.6-2.5 cm ("aa": the chin drops 1.6 cm,
# the inner lips part 2.5 cm), close vowels 0.75-1.1 cm; against the 8.9 cm between the outer eye corners a gap
# of 0.18-0.28 and 0.08-0.13. Coarticulation makes vowels undershoot these: on clips with ordinary pauses the
# implied gap's p90 is 0.13 and its maximum 0.20-0.25 (`python -m teller_recipe.evaluation.portraits`:
# implied_p90 and implied_max in its metrics.json), sized to the p90 ≥ 0.12 and maximum ≥ 0.18 of talking
# people measured the same way; the previous, 40 % smaller targets made a mouth that murmured. Sibilants hold
# the jaw less firmly than they used to (dominance 1.2, was 2.0), which had kept neighbouring vowels half-closed.
_VOWEL = (1.0, 1.0, 1.0)
VISEMES: dict[str, Viseme] = {
    "AA": _v(1.62, 0.38, 0.50, spread=0.10, dominance=_VOWEL, reach=1.2),
    "AE": _v(1.38, 0.44, 0.44, spread=0.50, dominance=_VOWEL, reach=1.2),
    "AH": _v(1.19, 0.25, 0.38, spread=0.10, dominance=_VOWEL, reach=1.2),
    "AO": _v(1.44, 0.25, 0.44, round_=0.55, dominance=_VOWEL, reach=1.2),
    "EH": _v(1.06, 0.25, 0.31, spread=0.50, dominance=_VOWEL, reach=1.2),
    "ER": _v(0.69, 0.19, 0.12, round_=0.45, dominance=_VOWEL, reach=1.2),
    "IH": _v(0.75, 0.19, 0.19, spread=0.55, dominance=_VOWEL, reach=1.2),
    "IY": _v(0.50, 0.15, 0.10, spread=0.85, dominance=_VOWEL, reach=1.2),
    "UH": _v(0.75, 0.12, 0.19, round_=0.60, dominance=_VOWEL, reach=1.2),
    "UW": _v(0.50, 0.06, 0.06, round_=1.00, dominance=(1.0, 1.0, 1.6), reach=1.2),
    # consonants
    "P": _v(0.15, 0.0, -0.15, closure=1.0, press=1.0, dominance=(0.6, 12.0, 0.5), reach=0.55),
    "B": _v(0.15, 0.0, -0.15, closure=1.0, press=0.8, dominance=(0.6, 12.0, 0.5), reach=0.55),
    "M": _v(0.12, 0.0, -0.12, closure=1.0, press=0.6, dominance=(0.6, 12.0, 0.5), reach=0.55),
    "F": _v(0.18, 0.15, -0.20, tuck=1.0, dominance=(0.8, 8.0, 0.6), reach=0.5),
    "V": _v(0.18, 0.15, -0.20, tuck=1.0, dominance=(0.8, 8.0, 0.6), reach=0.5),
    "TH": _v(0.30, 0.15, 0.05, dominance=(1.0, 2.0, 0.6)),
    "DH": _v(0.28, 0.12, 0.05, dominance=(0.8, 1.5, 0.5)),
    "S": _v(0.10, 0.08, 0.02, spread=0.30, dominance=(1.2, 1.5, 0.8)),
    "Z": _v(0.10, 0.08, 0.02, spread=0.30, dominance=(1.2, 1.5, 0.8)),
    "SH": _v(0.20, 0.15, 0.08, round_=0.75, dominance=(1.5, 1.5, 3.0)),
    "ZH": _v(0.20, 0.15, 0.08, round_=0.75, dominance=(1.5, 1.5, 3.0)),
    "CH": _v(0.20, 0.13, 0.07, round_=0.70, dominance=(1.5, 1.5, 3.0)),
    "JH": _v(0.20, 0.13, 0.07, round_=0.70, dominance=(1.5, 1.5, 3.0)),
    "T": _v(0.30, 0.10, 0.08, dominance=(0.5, 0.4, 0.2)),
    "D": _v(0.30, 0.10, 0.08, dominance=(0.5, 0.4, 0.2)),
    "N": _v(0.28, 0.08, 0.06, dominance=(0.4, 0.4, 0.2)),
    "L": _v(0.40, 0.10, 0.10, dominance=(0.5, 0.4, 0.2)),
    "K": _v(0.35, 0.10, 0.08, dominance=(0.4, 0.3, 0.15)),
    "G": _v(0.35, 0.10, 0.08, dominance=(0.4, 0.3, 0.15)),
    "NG": _v(0.30, 0.08, 0.06, dominance=(0.4, 0.3, 0.15)),
    "HH": _v(0.50, 0.12, 0.15, dominance=(0.1, 0.1, 0.05)),
    "R": _v(0.30, 0.08, 0.05, round_=0.50, dominance=(0.7, 0.8, 1.5)),
    "W": _v(0.20, 0.03, 0.00, round_=1.00, dominance=(0.8, 2.0, 4.0)),
    "Y": _v(0.25, 0.06, 0.04, spread=0.60, dominance=(0.6, 0.6, 0.8)),
    # a pause: jaw up, lips together and relaxed (not pressed); it neither anticipates nor lingers much,
    # the sounds around it reach into it
    SILENCE: _v(0.0, 0.0, 0.0, closure=0.6, dominance=(1.0, 1.5, 1.0), reach=0.6),
}
# Diphthongs glide between two vowel targets (first part 60% of the duration).
DIPHTHONGS = {
    "AW": ("AA", "UH"),
    "AY": ("AA", "IY"),
    "EY": ("EH", "IY"),
    "OW": ("AO", "UW"),
    "OY": ("AO", "IY"),
}

# Shortest visible hold of the phones whose lips must reach their target (seconds).
MIN_HOLD = {"P": 0.08, "B": 0.08, "M": 0.08, "F": 0.07, "V": 0.07}

# Dominance decay outside a phone (seconds): before it (anticipation) and after it (carry-over).
ANTICIPATION = 0.075
CARRY_OVER = 0.055
_SHAPE = 1.5  # exponent of the decay: between exponential (1) and Gaussian (2)


def expand_diphthongs(phones: list[Phone]) -> list[Phone]:
    out = []
    for p in phones:
        if p.phone in DIPHTHONGS:
            first, second = DIPHTHONGS[p.phone]
            mid = p.start + 0.6 * p.duration
            out += [Phone(p.start, mid, first), Phone(mid, p.end, second)]
        else:
            out.append(p)
    return out


def articulation(
    phones: list[Phone],
    duration: float,
    stress: np.ndarray | None = None,
    gain: float = 1.0,
    anticipation: float = ANTICIPATION,
    carry_over: float = CARRY_OVER,
) -> tuple[np.ndarray, np.ndarray]:
    """Parameter tracks (N, len(PARAMS)) at `RATE` Hz and their times (N,).

    `stress` (one value per phone, around 0; positive = louder/longer than usual) scales vowel openings;
    `gain` scales all lip and jaw movement (hypo- vs hyper-articulation).
    """
    times = np.arange(int(np.ceil(duration * RATE)) + 1) / RATE
    stress = np.zeros(len(phones)) if stress is None else np.asarray(stress, np.float64)
    segments: list[tuple[Phone, float]] = []
    for p, s in zip(phones, stress, strict=True):
        segments += [(q, s) for q in expand_diphthongs([p])]
    weighted = np.zeros((len(times), len(PARAMS)))
    total = np.full((len(times), len(PARAMS)), 1e-9)
    for phone, s in segments:
        viseme = VISEMES[phone.phone]
        start, end = phone.start, phone.end
        if phone.phone in MIN_HOLD and end - start < MIN_HOLD[phone.phone]:
            # Lips that must meet (or touch the teeth) do so visibly even in fast speech: a 40 ms closure
            # would otherwise fall between two 25 fps frames.
            middle, half = 0.5 * (start + end), 0.5 * MIN_HOLD[phone.phone]
            start, end = middle - half, middle + half
        target = np.array(viseme.targets, np.float64)
        if phone.phone in VOWELS:
            target[:3] *= 1.0 + 0.15 * np.clip(s, -1.0, 1.5)  # louder syllables open wider
        if phone.phone != SILENCE:
            target[:5] *= gain
        before = np.clip(start - times, 0.0, None) / (anticipation * viseme.reach)
        after = np.clip(times - end, 0.0, None) / (carry_over * viseme.reach)
        shape = np.exp(-(before**_SHAPE) - after**_SHAPE)  # 1 inside the phone
        dominance = shape[:, None] * np.asarray(viseme.dominance)[_GROUP][None, :]
        weighted += dominance * target[None, :]
        total += dominance
    tracks = weighted / total
    # A light smoothing removes the kinks where two plateaus meet (muscles have inertia).
    tracks = gaussian_filter1d(tracks, sigma=0.02 * RATE, axis=0, mode="nearest")
    return tracks.astype(np.float64), times
