"""Audio input (files, arrays, live chunks) and the whisper-base speech encoder."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from teller_pipeline.audio import SAMPLE_RATE, AudioError, StreamingResampler, load_audio, to_mono_16k

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "examples" / "arctic_a0009.wav"
CHECKPOINT = ROOT / "checkpoints" / "teller-base"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate = sf.read(SPEECH, dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1
    return audio


def _at_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """The reference clip at another rate, resampled independently of the code under test (scipy)."""
    g = np.gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, rate // g, SAMPLE_RATE // g).astype(np.float32)


def _channels(mono: np.ndarray, channels: int) -> np.ndarray:
    """(n, channels): the right channel at half level, so a wrong downmix would change the level."""
    return np.stack([mono, 0.5 * mono][:channels], axis=1)


def _encode(path: Path, fmt: str, codec: str, rate: int, channels: int, speech: np.ndarray) -> None:
    """Write the clip with PyAV (no ffmpeg binary needed)."""
    pcm = (np.clip(_channels(_at_rate(speech, rate), channels), -1, 1) * 32767).astype(np.int16).T
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        for start in range(0, pcm.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[:, start : start + 1024]), format="s16p", layout=layout
            )
            # Timestamps let the encoder mark its priming samples, so decoders can drop them.
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _check_speech(decoded: np.ndarray, speech: np.ndarray, min_corr: float = 0.99) -> None:
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - len(speech)) <= 0.020 * SAMPLE_RATE  # ±20 ms
    assert np.abs(decoded).max() <= 1.0
    n = min(len(decoded), len(speech))
    assert np.corrcoef(decoded[:n], speech[:n])[0, 1] > min_corr


FORMATS = [  # name, container, codec, rate, channels
    ("stereo.wav", "wav", "pcm_s16le", 44100, 2),
    ("mono.mp3", "mp3", "libmp3lame", 22050, 1),
    ("stereo.flac", "flac", "flac", 32000, 2),
    ("mono.ogg", "ogg", "libopus", 48000, 1),
    ("stereo.webm", "webm", "libopus", 48000, 2),
    ("stereo.m4a", "ipod", "aac", 44100, 2),
    ("mono.mp4", "mp4", "aac", 48000, 1),
]


@pytest.mark.parametrize("name,fmt,codec,rate,channels", FORMATS)
def test_formats_load_to_16k_mono(tmp_path, speech, name, fmt, codec, rate, channels):
    path = tmp_path / name
    _encode(path, fmt, codec, rate, channels, speech)
    _check_speech(load_audio(path), speech, min_corr=0.99)


@pytest.mark.parametrize("subtype,rate", [("VORBIS", 24000), ("PCM_U8", 8000), ("PCM_32", 48000)])
def test_soundfile_formats(tmp_path, speech, subtype, rate):
    path = tmp_path / ("a.ogg" if subtype == "VORBIS" else "a.wav")
    sf.write(path, _channels(_at_rate(speech, rate), 2), rate, subtype=subtype)
    _check_speech(load_audio(str(path)), 0.75 * speech, min_corr=0.97 if subtype == "PCM_U8" else 0.99)


def test_stereo_is_averaged_not_summed(tmp_path, speech):
    path = tmp_path / "same_both_sides.wav"
    sf.write(path, np.stack([speech, speech], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), speech, atol=1e-6)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_gradio_int16_stereo_tuples(speech, rate):
    pcm = (_channels(_at_rate(speech, rate), 2) * 32767).astype(np.int16)
    decoded = load_audio((rate, pcm))
    assert abs(len(decoded) - len(speech)) <= 2
    np.testing.assert_allclose(decoded, 0.75 * speech[: len(decoded)], atol=0.01)


def test_arrays_of_other_dtypes(speech):
    np.testing.assert_array_equal(load_audio(speech), speech)  # already 16 kHz mono float
    as_int32 = (speech.astype(np.float64) * 2**31).astype(np.int32)
    np.testing.assert_allclose(to_mono_16k(as_int32, SAMPLE_RATE), speech, atol=1e-6)
    mono_column = load_audio((SAMPLE_RATE, speech[:, None].astype(np.float64)))
    np.testing.assert_allclose(mono_column, speech, atol=1e-6)
    with pytest.raises(AudioError, match="channels-first"):
        to_mono_16k(np.stack([speech, speech]), SAMPLE_RATE)


def test_streaming_chunks_equal_one_shot(speech):
    stereo = (_channels(_at_rate(speech, 48000), 2) * 32767).astype(np.int16)
    one_shot = to_mono_16k(stereo, 48000)
    rng = np.random.default_rng(0)
    resampler, pieces, start = StreamingResampler(), [], 0
    while start < len(stereo):
        size = int(rng.choice([1, 7, 333, 4800, 24000]))  # 24000 = Gradio's 0.5 s chunk at 48 kHz
        pieces.append(resampler.push(stereo[start : start + size], 48000))
        start += size
    pieces.append(resampler.flush())
    chunked = np.concatenate(pieces)
    assert len(chunked) == len(one_shot)
    assert np.abs(chunked - one_shot).max() < 1e-3
    # and it is the original speech (no clicks would show up as large differences)
    assert np.abs(chunked - 0.75 * speech[: len(chunked)]).max() < 0.02


def test_errors_name_the_file(tmp_path, speech):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(20000))
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    empty_file = tmp_path / "zero_bytes.mp3"
    empty_file.touch()
    video = tmp_path / "silent_video.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 64
        for _ in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8))))
        container.mux(stream.encode(None))
    cases = {
        corrupt: "corrupt",
        text: "not an audio file",
        empty_file: "empty",
        video: "no audio stream",
        tmp_path / "missing.wav": "no such file",
    }
    for path, why in cases.items():
        with pytest.raises(AudioError, match=why) as info:
            load_audio(path)
        assert str(path) in str(info.value)


def test_max_seconds_is_checked_before_decoding(tmp_path, speech):
    # A flac whose header (STREAMINFO) promises 3612 s but holds 3 s: only the header can tell it is too long.
    path = tmp_path / "long.flac"
    sf.write(path, speech, SAMPLE_RATE)
    data = bytearray(path.read_bytes())
    total = 3612 * SAMPLE_RATE  # 36-bit sample count: low 4 bits of byte 21, then bytes 22-25
    data[21] = (data[21] & 0xF0) | (total >> 32)
    data[22:26] = struct.pack(">I", total & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    assert len(load_audio(path)) == len(speech)
    with pytest.raises(AudioError, match=r"is 3612\.0 s long; the limit is 600 s") as info:
        load_audio(path, max_seconds=600)
    assert str(path) in str(info.value)
    assert len(load_audio(SPEECH, max_seconds=600)) == len(speech)
    with pytest.raises(AudioError, match="limit is 1 s"):
        load_audio((SAMPLE_RATE, speech), max_seconds=1)


def test_max_seconds_without_duration_in_header(tmp_path, speech):
    path = tmp_path / "live.webm"  # like a browser recording: no duration in the header
    pcm = (_at_rate(speech, 48000)[None] * 32767).astype(np.int16)
    with av.open(str(path), "w", format="webm", options={"live": "1"}) as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        for start in range(0, pcm.shape[1], 960):
            frame = av.AudioFrame.from_ndarray(pcm[:, start : start + 960], format="s16", layout="mono")
            frame.sample_rate = 48000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(AudioError, match="limit is 1 s"):
        load_audio(path, max_seconds=1)


def test_empty_audio_is_not_an_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE, subtype="PCM_16")
    for source in (path, (48000, np.zeros((0, 2), np.int16)), np.zeros(0, np.float32)):
        audio = load_audio(source)
        assert audio.shape == (0,) and audio.dtype == np.float32
    assert StreamingResampler().push(np.zeros(0, np.int16), 48000).shape == (0,)


# ---------------------------------------------------------------- the speech encoder


def test_ct2_parser_reads_the_documented_layout():
    from teller_recipe.conversion.convert_whisper import parse_ct2_model

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    blob = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 2)
    blob += string("a/weight") + struct.pack("<B2I", 2, 2, 3) + struct.pack("<BI", 4, weight.nbytes)
    blob += weight.tobytes()
    blob += string("a/heads") + struct.pack("<B", 0) + struct.pack("<BI", 2, 2) + struct.pack("<h", 8)
    blob += struct.pack("<I", 1) + string("b/weight") + string("a/weight")
    spec, variables = parse_ct2_model(blob)
    assert spec == "WhisperSpec"
    np.testing.assert_array_equal(variables["a/weight"], weight)
    np.testing.assert_array_equal(variables["b/weight"], weight)
    assert variables["a/heads"] == 8


needs_checkpoint = pytest.mark.skipif(
    not (CHECKPOINT / "audio_encoder" / "model.safetensors").exists(),
    reason="no converted encoder: run `python -m teller_recipe.conversion.convert_whisper` first",
)


@pytest.fixture(scope="module")
def encoder_parts():
    from transformers import WhisperFeatureExtractor

    from teller_pipeline.models.audio_encoder import TellerAudioEncoder

    encoder = TellerAudioEncoder.from_pretrained(CHECKPOINT / "audio_encoder").eval()
    return encoder, WhisperFeatureExtractor.from_pretrained(CHECKPOINT / "feature_extractor")


@needs_checkpoint
def test_encoder_loads_as_float32_and_windows_have_50hz_embeddings(encoder_parts, speech):
    from teller_pipeline.models.audio_encoder import embed_audio_window

    encoder, feature_extractor = encoder_parts
    assert encoder.dtype == torch.float32  # stored as fp16
    for seconds in (1, 2):
        out = embed_audio_window(encoder, feature_extractor, speech[: seconds * SAMPLE_RATE])
        assert out.shape == (50 * seconds, 512) and out.dtype == torch.float32
    assert embed_audio_window(encoder, feature_extractor, speech[:16159]).shape == (50, 512)
    assert embed_audio_window(encoder, feature_extractor, np.zeros(0, np.float32)).shape == (0, 512)


@needs_checkpoint
def test_encode_window_matches_stock_forward_on_30s(encoder_parts, speech, monkeypatch):
    """With the same matrix products (MKL's, as the stock forward's); oneDNN's, which `encode_window` uses on a CPU,
    round otherwise: tests/test_whisper_inference.py."""
    from teller_pipeline.models import whisper_inference

    monkeypatch.setattr(whisper_inference, "ONEDNN_LINEAR", False)
    encoder, feature_extractor = encoder_parts
    mel = feature_extractor(speech, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    assert mel.shape[-1] == 3000
    with torch.inference_mode():
        torch.testing.assert_close(encoder.encode_window(mel), encoder(mel).last_hidden_state)


@needs_checkpoint
def test_speech_and_silence_embed_differently(encoder_parts, speech):
    from teller_pipeline.models.audio_encoder import embed_audio_window

    encoder, feature_extractor = encoder_parts
    words = [
        embed_audio_window(encoder, feature_extractor, speech[s : s + SAMPLE_RATE]) for s in (8000, 24000)
    ]
    silence = embed_audio_window(encoder, feature_extractor, np.zeros(SAMPLE_RATE, np.float32))

    def cosine(a, b):
        return torch.nn.functional.cosine_similarity(a.mean(0), b.mean(0), dim=0).item()

    assert cosine(words[0], words[1]) > cosine(words[0], silence) + 0.05
    assert words[0].std(0).mean() > 1.5 * silence.std(0).mean()  # speech varies over time, silence barely


@needs_checkpoint
def test_pipeline_component_save_and_load(tmp_path, encoder_parts, speech):
    import json

    from diffusers import DiffusionPipeline
    from transformers import WhisperFeatureExtractor

    from teller_pipeline.models.audio_encoder import TellerAudioEncoder, embed_audio_window

    class AudioOnlyPipeline(DiffusionPipeline):
        def __init__(self, audio_encoder: TellerAudioEncoder, feature_extractor: WhisperFeatureExtractor):
            super().__init__()
            self.register_modules(audio_encoder=audio_encoder, feature_extractor=feature_extractor)

    encoder, feature_extractor = encoder_parts
    window = speech[:SAMPLE_RATE]
    expected = embed_audio_window(encoder, feature_extractor, window)
    AudioOnlyPipeline(encoder.half(), feature_extractor).save_pretrained(tmp_path)
    encoder.float()
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["audio_encoder"] == ["teller_pipeline.models.audio_encoder", "TellerAudioEncoder"]
    assert index["feature_extractor"] == ["transformers", "WhisperFeatureExtractor"]
    assert (tmp_path / "audio_encoder" / "model.safetensors").exists()

    loaded = AudioOnlyPipeline.from_pretrained(tmp_path)
    assert loaded.audio_encoder.dtype == torch.float32
    torch.testing.assert_close(
        embed_audio_window(loaded.audio_encoder, loaded.feature_extractor, window), expected
    )
