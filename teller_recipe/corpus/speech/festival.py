"""Festival (Debian packages `festival`, `festvox-us-slt-hts`, `festvox-kallpc16k`, `festvox-kdlpc16k`).

A small Scheme script synthesises the text and saves the wave and the segment relation (`utt.save.segs`:
one "end_time 100 phone" line per phone). The HTS voice takes its speaking rate and pitch from hts_engine's
`-r` and `-fm` options; the diphone voices take `Duration_Stretch`, and their pitch is shifted afterwards.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import soundfile as sf

from ..phonemes import Phone, radio_to_arpabet, split_evenly
from .common import Speech, finish, pitch_shift, require_binary, to_16k

FESTIVAL_VOICES = {
    "slt_hts": "cmu_us_slt_arctic_hts",
    "kal_diphone": "kal_diphone",
    "ked_diphone": "ked_diphone",
}


def parse_segs(text: str) -> list[Phone]:
    phones: list[Phone] = []
    start = 0.0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0].startswith("#"):
            continue
        end = float(parts[0])
        if end > start:
            phones.extend(split_evenly(start, end, radio_to_arpabet(parts[2])))
            start = end
    return phones


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synthesize(text: str, voice: str, rate: float = 1.0, semitones: float = 0.0) -> Speech:
    """`rate` > 1 speaks faster; `semitones` shifts the pitch."""
    if voice not in FESTIVAL_VOICES:
        raise ValueError(f"unknown festival voice {voice!r}; choose from {sorted(FESTIVAL_VOICES)}")
    festival = require_binary("festival", "festival")
    hts = voice.endswith("_hts")
    with tempfile.TemporaryDirectory(prefix="teller-festival-") as tmp:
        wav, segs, script = Path(tmp) / "speech.wav", Path(tmp) / "speech.segs", Path(tmp) / "say.scm"
        lines = [f"(voice_{FESTIVAL_VOICES[voice]})"]
        if hts:
            lines.append(
                f"(set! hts_engine_params (append hts_engine_params "
                f'(list \'("-r" {rate:.3f}) \'("-fm" {semitones:.2f}))))'
            )
        else:
            lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / rate:.3f})")
        lines += [
            f"(set! utt (Utterance Text {_scheme_string(text)}))",
            "(utt.synth utt)",
            f'(utt.save.wave utt "{wav}" \'riff)',
            f'(utt.save.segs utt "{segs}")',
        ]
        script.write_text("\n".join(lines) + "\n")
        subprocess.run([festival, "--batch", str(script)], capture_output=True, check=True, timeout=120)
        audio, sample_rate = sf.read(wav, dtype="float32")
        phones = parse_segs(segs.read_text())
    if not hts and abs(semitones) > 1e-3:
        audio, sample_rate = pitch_shift(to_16k(audio, sample_rate), semitones), 16000
    settings = {"voice": voice, "rate": round(rate, 3), "semitones": round(semitones, 2)}
    return finish(audio, sample_rate, phones, settings)
