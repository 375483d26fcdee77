"""One phone set for every speech engine: ARPAbet (39 phones, no stress) plus `sil` for pauses.

Engines report phones in different alphabets: flite and festival in lower-case ARPAbet-like "radio" phones,
espeak-ng and Piper in IPA (Piper one code point at a time). Everything is converted here into a list of
`Phone(start, end, phone)` that covers the audio from 0 to its end without gaps or overlaps.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

SILENCE = "sil"
VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
CONSONANTS = frozenset("B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split())
PHONE_SET = sorted(VOWELS | CONSONANTS) + [SILENCE]


@dataclass
class Phone:
    start: float  # seconds
    end: float
    phone: str  # ARPAbet upper case, or "sil"

    @property
    def duration(self) -> float:
        return self.end - self.start


# --- flite / festival -------------------------------------------------------------------------------------
_RADIO_EXTRA = {
    "ax": ["AH"],
    "axr": ["ER"],
    "ix": ["IH"],
    "ux": ["UW"],
    "dx": ["D"],
    "nx": ["N"],
    "hv": ["HH"],
    "el": ["AH", "L"],
    "em": ["AH", "M"],
    "en": ["AH", "N"],
    "q": ["T"],
    "pau": [SILENCE],
    "h#": [SILENCE],
    "brth": [SILENCE],
    "#": [SILENCE],
}


def radio_to_arpabet(phone: str) -> list[str]:
    """flite/festival phone name → ARPAbet phones (usually one)."""
    name = phone.strip().lower()
    if name in _RADIO_EXTRA:
        return list(_RADIO_EXTRA[name])
    upper = name.rstrip("012").upper()
    if upper in VOWELS or upper in CONSONANTS:
        return [upper]
    raise ValueError(f"unknown flite/festival phone {phone!r}")


# --- IPA (espeak-ng, Piper) -------------------------------------------------------------------------------
# Longest units first so diphthongs and affricates win over their parts.
_IPA_UNITS: dict[str, list[str]] = {
    "aɪ": ["AY"],
    "aʊ": ["AW"],
    "eɪ": ["EY"],
    "oʊ": ["OW"],
    "əʊ": ["OW"],
    "ɔɪ": ["OY"],
    "ɑɪ": ["AY"],
    "tʃ": ["CH"],
    "dʒ": ["JH"],
    "ɪə": ["IH", "AH"],
    "eə": ["EH", "AH"],
    "ɛə": ["EH", "AH"],
    "ʊə": ["UH", "AH"],
    "iə": ["IY", "AH"],
    "əl": ["AH", "L"],
    # regional diphthongs of espeak-ng's British, Scottish and Caribbean voices
    "ei": ["EY"],
    "əu": ["OW"],
    "əɪ": ["AY"],
    "æʊ": ["AW"],
    "ʌʊ": ["OW"],
    "ʌʉ": ["OW"],
    "oɪ": ["OY"],
    "ʉ": ["UW"],
    "ɵ": ["OW"],
    "ɘ": ["AH"],
    "ɯ": ["UW"],
    "ɤ": ["AH"],
    "i": ["IY"],
    "ɪ": ["IH"],
    "ᵻ": ["IH"],
    "ɨ": ["IH"],
    "e": ["EY"],
    "ɛ": ["EH"],
    "æ": ["AE"],
    "a": ["AE"],
    "ɑ": ["AA"],
    "ɒ": ["AA"],
    "ɔ": ["AO"],
    "o": ["OW"],
    "ʊ": ["UH"],
    "u": ["UW"],
    "ʌ": ["AH"],
    "ə": ["AH"],
    "ɐ": ["AH"],
    "ɚ": ["ER"],
    "ɜ": ["ER"],
    "ɝ": ["ER"],
    "y": ["UW"],
    "ø": ["ER"],
    "œ": ["EH"],
    "p": ["P"],
    "b": ["B"],
    "t": ["T"],
    "d": ["D"],
    "k": ["K"],
    "ɡ": ["G"],
    "g": ["G"],
    "f": ["F"],
    "v": ["V"],
    "θ": ["TH"],
    "ð": ["DH"],
    "s": ["S"],
    "z": ["Z"],
    "ʃ": ["SH"],
    "ʒ": ["ZH"],
    "h": ["HH"],
    "x": ["HH"],
    "ç": ["HH"],
    "χ": ["HH"],
    "m": ["M"],
    "n": ["N"],
    "ŋ": ["NG"],
    "ɲ": ["N"],
    "l": ["L"],
    "ɫ": ["L"],
    "ɬ": ["L"],
    "ɹ": ["R"],
    "r": ["R"],
    "ɾ": ["D"],
    "ɻ": ["R"],
    "w": ["W"],
    "ʍ": ["W"],
    "j": ["Y"],
    "ʔ": ["T"],
    "c": ["K"],
    "ɟ": ["G"],
}
_MAX_UNIT = max(len(u) for u in _IPA_UNITS)
# Marks that carry no phone of their own (stress, length, syllabicity, ties, nasalisation…).
_MARKS = set("ˈˌːˑ‿͡-_'") | {"\u0329", "\u0303", "\u032f", "\u0361", "\u02de"}
PAUSE_SYMBOLS = set('.,;:!?…—–()"') | {"^", "$", ""}


def _is_mark(char: str) -> bool:
    # Modifier letters (ʲ, ʰ, ː, ˈ …) and combining diacritics refine a phone; they are not phones.
    return char in _MARKS or unicodedata.combining(char) > 0 or unicodedata.category(char) == "Lm"


def ipa_to_arpabet(ipa: str) -> list[str]:
    """An IPA string (one espeak phoneme event, possibly several phones) → ARPAbet phones."""
    chars = [c for c in ipa if not _is_mark(c) and not c.isspace() and c != ":"]  # espeak writes "a:" too
    text = "".join(chars)
    phones: list[str] = []
    i = 0
    while i < len(text):
        for size in range(min(_MAX_UNIT, len(text) - i), 0, -1):
            unit = text[i : i + size]
            if unit in _IPA_UNITS:
                phones.extend(_IPA_UNITS[unit])
                i += size
                break
        else:
            if text[i] not in PAUSE_SYMBOLS:
                raise ValueError(f"unknown IPA symbol {text[i]!r} in {ipa!r}")
            i += 1
    return phones


def split_evenly(start: float, end: float, phones: list[str]) -> list[Phone]:
    """Share one timed unit among several phones; vowels get twice a consonant's share."""
    weights = [2.0 if p in VOWELS else 1.0 for p in phones]
    total = sum(weights)
    out, t = [], start
    for phone, w in zip(phones, weights, strict=True):
        step = (end - start) * w / total
        out.append(Phone(t, t + step, phone))
        t += step
    out[-1].end = end
    return out


def ipa_chars_to_phones(chars: list[tuple[str, float, float]]) -> list[Phone]:
    """Piper's per-code-point timing [(char, start, end)] → ARPAbet phones.

    Stress marks' time goes to the next phone, length marks' to the previous one; a word gap (space) is
    shared by its neighbours (VITS gives it the transition between words); punctuation and the
    begin/end tokens become pauses.
    """
    units: list[list] = []  # [ipa, start, end]
    pending_start: float | None = None
    for char, start, end in chars:
        if char in ("ˈ", "ˌ"):
            pending_start = start if pending_start is None else pending_start
            continue
        if _is_mark(char):
            if units:
                units[-1][2] = end
            continue
        if char == " ":
            units.append([" ", start, end])
            continue
        if char in PAUSE_SYMBOLS:
            units.append(["", start, end])
            pending_start = None
            continue
        s = start if pending_start is None else pending_start
        pending_start = None
        # Join into diphthongs/affricates with the previous unit when the pair is a known unit.
        if units and units[-1][0] and units[-1][0] != " " and (units[-1][0] + char) in _IPA_UNITS:
            units[-1][0] += char
            units[-1][2] = end
            continue
        units.append([char, s, end])
    # Share word gaps between neighbours.
    for k, (ipa, start, end) in enumerate(units):
        if ipa != " ":
            continue
        mid = 0.5 * (start + end)
        prev_ok = k > 0 and units[k - 1][0] not in (" ", "")
        next_ok = k + 1 < len(units) and units[k + 1][0] not in (" ", "")
        if prev_ok and next_ok:
            units[k - 1][2], units[k + 1][1] = mid, mid
        elif prev_ok:
            units[k - 1][2] = end
        elif next_ok:
            units[k + 1][1] = start
        else:
            units[k][0] = ""
    phones: list[Phone] = []
    for ipa, start, end in units:
        if ipa == " ":
            continue
        arpa = ipa_to_arpabet(ipa) if ipa else [SILENCE]
        phones.extend(split_evenly(start, end, arpa or [SILENCE]))
    return phones


# --- clean-up shared by all engines ----------------------------------------------------------------------
def normalize(phones: list[Phone], duration: float, min_duration: float = 1e-3) -> list[Phone]:
    """Make phones monotonic, gap-free and covering [0, duration]; merge neighbouring pauses."""
    out: list[Phone] = []
    t = 0.0
    for p in sorted(phones, key=lambda q: q.start):
        start, end = max(p.start, t), min(p.end, duration)
        if end - start < min_duration:
            continue
        if start > t + min_duration:  # a hole: silence
            out.append(Phone(t, start, SILENCE))
        elif out:
            out[-1].end = start
        out.append(Phone(start, end, p.phone))
        t = end
    if not out:
        return [Phone(0.0, duration, SILENCE)]
    out[0].start = 0.0
    if duration - out[-1].end > min_duration:
        out.append(Phone(out[-1].end, duration, SILENCE))
    out[-1].end = duration
    merged: list[Phone] = []
    for p in out:
        if merged and p.phone == SILENCE and merged[-1].phone == SILENCE:
            merged[-1].end = p.end
        else:
            merged.append(p)
    return merged


def shift(phones: list[Phone], offset: float) -> list[Phone]:
    return [Phone(p.start + offset, p.end + offset, p.phone) for p in phones]


def to_columns(phones: list[Phone]) -> dict[str, list]:
    """Phones as the dataset's struct of lists."""
    return {
        "start": [float(p.start) for p in phones],
        "end": [float(p.end) for p in phones],
        "phone": [p.phone for p in phones],
    }


def from_columns(columns: dict[str, list]) -> list[Phone]:
    return [
        Phone(float(s), float(e), str(p))
        for s, e, p in zip(columns["start"], columns["end"], columns["phone"], strict=True)
    ]
