"""Forced alignment of real speech (PocketSphinx) against CMU ARCTIC's reference phone labels."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pocketsphinx")

from teller_pipeline.audio import load_audio  # noqa: E402
from teller_recipe.corpus.align import align, boundary_errors, read_lab, recognize  # noqa: E402
from teller_recipe.corpus.phonemes import PHONE_SET, SILENCE  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
A0009 = "He turned sharply, and faced Gregson across the table."


def test_alignment_matches_the_reference_labels_of_arctic_a0009():
    audio = load_audio(EXAMPLES / "arctic_a0009.wav")
    phones = align(audio, A0009)
    reference = read_lab(EXAMPLES / "arctic_a0009_phone.lab")
    # Same phones as the reference, covering the audio without gaps.
    assert [p.phone for p in phones] == [p.phone for p in reference]
    assert phones[0].start == 0.0 and phones[-1].end == pytest.approx(len(audio) / 16000)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(phones, phones[1:], strict=False))
    assert {p.phone for p in phones} <= set(PHONE_SET)
    # Boundaries: 13 ms mean error measured (10 ms median, 45 ms worst) at PocketSphinx's 10 ms frame rate.
    errors = boundary_errors(phones, reference)
    assert len(errors) == len(reference) - 1
    assert errors.mean() < 0.020 and np.median(errors) <= 0.015 and errors.max() < 0.080


def test_recognition_gives_the_arctic_transcripts():
    # a0007 is "And you always want to see it in the superlative degree." (PocketSphinx hears exactly that).
    heard = recognize(load_audio(EXAMPLES / "arctic_a0009.wav"))
    assert heard == "he turned sharply and faced gregson across the table"
    assert recognize(load_audio(EXAMPLES / "arctic_a0007.wav")) == (
        "and you always want to see it in the superlative degree")


def test_words_missing_from_the_dictionary_and_empty_text():
    audio = load_audio(EXAMPLES / "arctic_a0009.wav")
    phones = align(audio, "He turned sharply, and faced Gregsonn across the table.")  # not in cmudict
    assert [p.phone for p in phones].count("G") >= 2
    assert [p.phone for p in align(audio, "")] == [SILENCE]
