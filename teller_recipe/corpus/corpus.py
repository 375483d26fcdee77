"""The training corpus: planning utterances, making one example, and the dataset's schema and splits.

Splits hold out whole speakers (`HELD_OUT`) and use disjoint sentence pools, so validation and test measure
generalisation to voices and sentences never seen in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from . import speech as tts
from .augment import augment
from .motion_synth import SAMPLES_PER_FRAME, synthesize_motion
from .phonemes import normalize, shift, to_columns

SPLITS = ("train", "validation", "test")
# Whole speakers kept out of training: one espeak-ng variant and one flite voice per split. Their speakers
# appear in no other engine (awb and rms are flite-only; espeak's variants are its own).
HELD_OUT = {
    "validation": ("espeak-ng/m7", "flite/awb"),
    "test": ("espeak-ng/f3", "flite/rms"),
}
# Share of the hours per engine: Piper is by far the most natural voice, so it gets the most.
ENGINE_SHARE = {"piper": 0.40, "espeak-ng": 0.25, "flite": 0.20, "festival": 0.15}
SENTENCE_POOLS = {"train": 0.8, "validation": 0.1, "test": 0.1}
SECONDS_PER_WORD = 0.31  # rough speaking time (pauses excluded), for planning only
PAD_SECONDS = (0.15, 0.6), (0.2, 0.8)  # extra silence before and after the speech


def split_of(voice: str) -> str:
    for split, voices in HELD_OUT.items():
        if voice in voices:
            return split
    return "train"


def features():
    """The dataset's columns (a `datasets.Features`)."""
    from datasets import Array2D, Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "audio": List(Value("float32")),  # 16 kHz mono, a whole number of 25 fps frames long
            "motion": Array2D(shape=(None, 69), dtype="float32"),  # T × 69, see teller_pipeline.motion
            "identity_prior": Array2D(shape=(21, 3), dtype="float32"),
            "mouth_opening": List(Value("float32")),  # T, phoneme-implied, units of rig.mouth_opening
            "silence": List(Value("bool")),  # T
            "phonemes": {
                "start": List(Value("float32")),
                "end": List(Value("float32")),
                "phone": List(Value("string")),
            },
            "text": Value("string"),
            "voice": Value("string"),
            "engine": Value("string"),
            "augmentation": Value("string"),
            "duration": Value("float32"),
            "synthesis": Value("string"),  # JSON: engine settings, drawn face and speaking style
        }
    )


@dataclass
class UtteranceSpec:
    split: str
    voice: str
    sentences: list[str]
    seed: int
    index: int = 0
    tags: dict = field(default_factory=dict)


def make_example(spec: UtteranceSpec, cache_dir: str | None = None, augment_audio: bool = True) -> dict:
    """Synthesise one utterance and its motion: a dict with the dataset's columns."""
    rng = np.random.default_rng(spec.seed)
    text = " ".join(spec.sentences)
    speech = tts.synthesize(spec.voice, text, rng, cache_dir=cache_dir)
    lead, trail = rng.uniform(*PAD_SECONDS[0]), rng.uniform(*PAD_SECONDS[1])
    lead_n, trail_n = int(lead * tts.SAMPLE_RATE), int(trail * tts.SAMPLE_RATE)
    total = lead_n + len(speech.audio) + trail_n
    total += (-total) % SAMPLES_PER_FRAME  # a whole number of frames
    audio = np.zeros(total, np.float32)
    audio[lead_n : lead_n + len(speech.audio)] = speech.audio
    phones = normalize(shift(speech.phones, lead_n / tts.SAMPLE_RATE), total / tts.SAMPLE_RATE)
    motion = synthesize_motion(audio, phones, rng)
    heard, description = augment(audio, rng) if augment_audio else (audio, "none")
    voice = tts.VOICES[spec.voice]
    return {
        "id": f"{spec.split}-{spec.index:06d}",
        "audio": heard,
        "motion": motion.features,
        "identity_prior": motion.identity_prior,
        "mouth_opening": motion.mouth_opening,
        "silence": motion.silence,
        "phonemes": to_columns(phones),
        "text": text,
        "voice": spec.voice,
        "engine": voice.engine,
        "augmentation": description,
        "duration": total / tts.SAMPLE_RATE,
        "synthesis": json.dumps({**speech.settings, **motion.info, "seed": spec.seed}, sort_keys=True),
    }


class SentenceSource:
    """Hands out sentences from disjoint per-split pools, each sentence once before any repeats."""

    def __init__(self, sentences: list[str], seed: int):
        from .text import split_sentences

        self.pools = split_sentences(sentences, SENTENCE_POOLS, seed)
        self.cursor = dict.fromkeys(self.pools, 0)

    def take(self, split: str, count: int) -> list[str]:
        pool = self.pools[split]
        out = [pool[(self.cursor[split] + k) % len(pool)] for k in range(count)]
        self.cursor[split] += count
        return out


def voice_targets(hours: float, voices: list[str] | None = None) -> dict[str, float]:
    """Seconds of speech (pauses excluded) per voice: the engine's share, split evenly among its voices."""
    names = voices or list(tts.VOICES)
    engines = {tts.VOICES[v].engine for v in names}
    share_total = sum(ENGINE_SHARE[e] for e in engines)
    targets = {}
    for name in names:
        engine = tts.VOICES[name].engine
        per_engine = [v for v in names if tts.VOICES[v].engine == engine]
        targets[name] = hours * 3600 * ENGINE_SHARE[engine] / share_total / len(per_engine)
    return targets


def plan(
    seconds_per_voice: dict[str, float],
    source: SentenceSource,
    rng: np.random.Generator,
    start_index: int = 0,
    max_utterances_per_voice: int | None = None,
) -> list[UtteranceSpec]:
    """Utterances of 1-3 sentences per voice until each voice's estimated speech (pauses excluded) reaches
    its target in seconds."""
    specs: list[UtteranceSpec] = []
    index = start_index
    for voice, seconds in seconds_per_voice.items():
        split = split_of(voice)
        planned, count = 0.0, 0
        while planned < seconds and (max_utterances_per_voice is None or count < max_utterances_per_voice):
            sentences = source.take(split, int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15])))
            words = sum(len(s.split()) for s in sentences)
            planned += words * SECONDS_PER_WORD
            specs.append(UtteranceSpec(split, voice, sentences, int(rng.integers(2**31)), index))
            index += 1
            count += 1
    return specs
