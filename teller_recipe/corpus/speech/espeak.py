"""espeak-ng through libespeak-ng (ctypes): audio plus a phoneme event with its exact sample position.

The `espeak-ng` command prints no phoneme timing for normal voices (`--pho` is for MBROLA), but the library
reports `espeakEVENT_PHONEME` events when initialised with `espeakINITIALIZE_PHONEME_EVENTS`; with
`espeakINITIALIZE_PHONEME_IPA` their names are IPA, like Piper's. Debian package: `espeak-ng`
(`libespeak-ng1`).
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from ..phonemes import SILENCE, Phone, ipa_to_arpabet, split_evenly
from .common import EngineUnavailable, Speech, finish

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA = 0x1, 0x2
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class EspeakEngine:
    """One libespeak-ng instance per process (the library keeps global state)."""

    _instance: EspeakEngine | None = None

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as error:
            raise EngineUnavailable(
                "libespeak-ng was not found: install the Debian package `espeak-ng`"
            ) from error
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 200, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA
        )
        if self.rate <= 0:
            raise EngineUnavailable("libespeak-ng failed to initialise (is espeak-ng-data installed?)")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _Callback(self._on_audio)  # keep a reference: the library calls it later
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> EspeakEngine:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _on_audio(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].sample, events[i].id.string.decode("utf-8", "replace")))
            i += 1
        return 0

    def synthesize(
        self, text: str, voice: str, rate_wpm: int = 175, pitch: int = 50, pitch_range: int = 50
    ) -> Speech:
        """`voice` is an espeak-ng voice name with an optional variant, e.g. "en-us+m3"."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for parameter, value in ((_RATE, rate_wpm), (_PITCH, pitch), (_RANGE, pitch_range), (_VOLUME, 100)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks).astype(np.float32) / 32768.0 if self._chunks else np.zeros(1)
        duration = len(audio) / self.rate
        phones: list[Phone] = []
        # Each event starts a phone that lasts until the next event; an empty name is a pause.
        for k, (sample, name) in enumerate(self._events):
            start = sample / self.rate
            end = self._events[k + 1][0] / self.rate if k + 1 < len(self._events) else duration
            if end <= start:
                continue
            arpa = ipa_to_arpabet(name) if name.strip() else [SILENCE]
            phones.extend(split_evenly(start, end, arpa or [SILENCE]))
        settings = {"voice": voice, "rate_wpm": int(rate_wpm), "pitch": int(pitch), "range": int(pitch_range)}
        return finish(audio, self.rate, phones, settings)
