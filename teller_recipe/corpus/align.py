"""Forced alignment of real speech to its transcript with PocketSphinx: 16 kHz audio + text → ARPAbet phones.

    phones = align(audio_16k, "He turned sharply, and faced Gregson across the table.")

`pocketsphinx==5.1.1` ships an English acoustic model, the CMU dictionary and a language model, so this runs
offline. Two passes, as PocketSphinx documents: a word-level alignment (`set_align_text`, which inserts optional
pauses between words), then a phone-level pass over that word sequence (`set_alignment`). Words missing from the
dictionary get a pronunciation from espeak-ng (IPA → ARPAbet via `phonemes.ipa_to_arpabet`). Phone times are at
PocketSphinx's 10 ms frame rate; on CMU ARCTIC a0009 the boundaries fall within ~13 ms of the hand-checked labels
(`tests/test_align.py`). `recognize` transcribes speech, to check a transcript before aligning to it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

from .phonemes import CONSONANTS, SILENCE, VOWELS, Phone, ipa_to_arpabet, normalize, radio_to_arpabet

SAMPLE_RATE = 16000
FRAME_SECONDS = 0.01  # PocketSphinx's default frame rate: 100 frames per second


def _pcm16(audio: np.ndarray) -> bytes:
    audio = np.asarray(audio, np.float32)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _decoder(**options):
    from pocketsphinx import Decoder

    return Decoder(loglevel="ERROR", **options)


def words_of(transcript: str) -> list[str]:
    """Lower-case words, punctuation dropped (apostrophes inside words kept)."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", transcript.lower())


def _espeak_pronunciation(word: str) -> str | None:
    """ARPAbet for a word the dictionary lacks, from espeak-ng's IPA (None if espeak-ng is missing)."""
    try:
        ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", word], capture_output=True, text=True,
                             check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    phones = ipa_to_arpabet(ipa.replace("_", " "))
    return " ".join(phones) or None


def _add_missing_words(decoder, words: list[str]) -> None:
    for word in set(words):
        if decoder.lookup_word(word) is None:
            pronunciation = _espeak_pronunciation(word)
            if pronunciation is None:
                raise ValueError(f"{word!r} is not in PocketSphinx's dictionary and espeak-ng is unavailable")
            decoder.add_word(word, pronunciation, True)


def _decode(decoder, pcm: bytes) -> None:
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


def align(audio_16k: np.ndarray, transcript: str) -> list[Phone]:
    """Phones (ARPAbet, `sil` for pauses) covering the whole audio, from forced alignment to `transcript`."""
    words = words_of(transcript)
    duration = len(audio_16k) / SAMPLE_RATE
    if not words:
        return [Phone(0.0, duration, SILENCE)]
    decoder = _decoder(lm=None)
    _add_missing_words(decoder, words)
    pcm = _pcm16(audio_16k)
    decoder.set_align_text(" ".join(words))
    _decode(decoder, pcm)
    if decoder.hyp() is None:
        raise ValueError(f"PocketSphinx could not align the audio to {transcript!r}")
    decoder.set_alignment()
    _decode(decoder, pcm)
    phones = []
    for word in decoder.get_alignment():
        for phone in word:
            name = phone.name.upper()
            label = name if name in VOWELS or name in CONSONANTS else SILENCE  # SIL, +NSN+, +SPN+ …
            start = phone.start * FRAME_SECONDS
            phones.append(Phone(start, start + phone.duration * FRAME_SECONDS, label))
    return normalize(phones, duration)


def recognize(audio_16k: np.ndarray) -> str:
    """PocketSphinx's transcription of the audio with its general English language model."""
    decoder = _decoder()
    _decode(decoder, _pcm16(audio_16k))
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def read_lab(path: str | Path) -> list[Phone]:
    """Phone labels in HTS/HTK format (`start end label`, 100 ns units; full-context labels allowed)."""
    phones = []
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        start, end, label = int(fields[0]) * 1e-7, int(fields[1]) * 1e-7, fields[2]
        if "-" in label and "+" in label:  # full-context: the current phone sits between "-" and "+"
            label = label.split("-", 1)[1].split("+", 1)[0]
        for name in [SILENCE] if label.lower() in ("sil", "pau", "x") else radio_to_arpabet(label):
            phones.append(Phone(start, end, name))
    return phones


def boundary_errors(phones: list[Phone], reference: list[Phone]) -> np.ndarray:
    """|time difference| (s) of the phone boundaries two alignments share.

    Boundaries are compared where both sides agree on the phones (matching runs of the two phone sequences,
    pauses included); a boundary counts when the phones on both of its sides were matched.
    """
    from difflib import SequenceMatcher

    ours, theirs = [p.phone for p in phones], [p.phone for p in reference]
    errors = []
    for block in SequenceMatcher(a=ours, b=theirs, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            i, j = block.a + k, block.b + k
            if k > 0:  # the boundary between two matched phones
                errors.append(abs(phones[i].start - reference[j].start))
    return np.asarray(errors)
