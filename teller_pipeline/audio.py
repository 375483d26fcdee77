"""Audio input: any common file, array or live microphone chunk → 16 kHz mono float32 in [-1, 1].

Files are decoded with PyAV (FFmpeg's libraries, bundled in the `av` wheel), so wav, mp3, flac, ogg/opus,
webm/opus and m4a/aac/mp4 all work without an ffmpeg binary.

Every path resamples with PyAV's `AudioResampler` (FFmpeg's libswresample), including in-memory arrays and
live chunks. Why not scipy's `resample_poly`: libswresample is stateful, so a stream pushed in chunks of any
size gives exactly the samples of a one-shot pass (no clicks, no overlap bookkeeping); it handles any input
rate, including awkward ratios such as 44.1 kHz → 16 kHz, and it is fast when fed ~1 s frames; and using one
resampler everywhere means an uploaded clip and the same clip from the microphone give the same samples,
hence the same speech features.

Channels are always averaged, (L + R) / 2, in numpy: FFmpeg's own stereo → mono matrix adds them at
-3 dB each, which makes correlated channels 3 dB louder than the mono original and can clip.
"""

from __future__ import annotations

import math
import numbers
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 16000
# The highest rate audio hardware and formats use; FFmpeg's resampler fails on far higher ones (out of memory).
MAX_SAMPLE_RATE = 768_000

# More channels than this in the second axis means the array is almost certainly (channels, samples).
_MAX_CHANNELS = 64


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file (or input) and says why."""


def _to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM → float32 in [-1, 1); floats pass through as float32."""
    a = np.asarray(samples)
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype.kind in "iu":
        half = float(2 ** (8 * a.dtype.itemsize - 1))
        offset = half if a.dtype.kind == "u" else 0.0  # unsigned PCM (8-bit wav) is centred on 2^(bits-1)
        return ((a.astype(np.float64) - offset) / half).astype(np.float32)
    raise AudioError(f"audio samples must be integer or float, not {a.dtype}")


def _require_finite(samples: np.ndarray, name: str) -> None:
    """NaN or infinite samples (a broken float recording or computation) would turn the whole speech window into
    NaN features; refuse them by name instead."""
    bad = samples.size - int(np.isfinite(samples).sum())
    if bad:
        raise AudioError(f"{name} holds {bad} NaN or infinite sample{'s' if bad > 1 else ''}; audio must be finite")


def _downmix(a: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) → (n,), by averaging channels."""
    if a.ndim == 1:
        return a
    if a.ndim == 2:
        if a.shape[1] > _MAX_CHANNELS:
            raise AudioError(
                f"audio array of shape {a.shape} looks channels-first; pass (samples, channels), e.g. a.T"
            )
        return a.mean(axis=1, dtype=np.float32) if a.shape[1] > 1 else a[:, 0]
    raise AudioError(f"audio array must be (samples,) or (samples, channels), got shape {a.shape}")


class StreamingResampler:
    """Resamples live audio chunks of any size, rate, dtype and channel count to 16 kHz mono float32.

    Pushing a signal in chunks gives exactly the output of pushing it at once: the filter state carries
    across chunks. The output lags the input by the filter's delay (16 input samples, ~0.3 ms at 48 kHz);
    `flush()` returns that tail at the end of a stream. A change of input rate flushes and starts anew.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._rate: int | None = None
        self._pts = 0

    def push(self, samples: np.ndarray, sample_rate: int, name: str = "the audio chunk") -> np.ndarray:
        """Feed one chunk ((n,) or (n, channels), int or float); returns the 16 kHz samples now ready. A chunk that
        cannot be used raises `AudioError` before anything changes, so the stream can go on with the next one."""
        sample_rate = int(sample_rate)
        if not 0 < sample_rate <= MAX_SAMPLE_RATE:
            raise AudioError(f"sample rate must be between 1 and {MAX_SAMPLE_RATE} Hz, got {sample_rate}")
        mono = _downmix(_to_float(samples))
        _require_finite(mono, name)
        out = []
        if sample_rate != self._rate:
            out.append(self.flush())
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            self._rate = sample_rate
        # FFmpeg's filter graph is much slower on one huge frame than on ~1 s frames.
        for start in range(0, len(mono), sample_rate):
            piece = np.ascontiguousarray(mono[start : start + sample_rate])
            frame = av.AudioFrame.from_ndarray(piece[None, :], format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.time_base = Fraction(1, sample_rate)
            frame.pts = self._pts
            self._pts += len(piece)
            out.extend(f.to_ndarray()[0] for f in self._resampler.resample(frame))
        return _join(out)

    def flush(self) -> np.ndarray:
        """Return what the filter still holds and reset; the next push starts a new stream."""
        out = [] if self._resampler is None else [f.to_ndarray()[0] for f in self._resampler.resample(None)]
        self._resampler, self._rate, self._pts = None, None, 0
        return _join(out)


def _join(pieces: list[np.ndarray]) -> np.ndarray:
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    # Band-limiting can overshoot slightly past full scale; keep the promised range.
    return np.clip(np.concatenate(pieces).astype(np.float32, copy=False), -1.0, 1.0)


def to_mono_16k(samples: np.ndarray, sample_rate: int, name: str = "the audio") -> np.ndarray:
    """Any dtype (int16/int32/uint8/float), (n,) or (n, channels), any rate → float32 mono 16 kHz."""
    resampler = StreamingResampler()
    return np.concatenate([resampler.push(samples, sample_rate, name), resampler.flush()])


def _too_long(name: str, seconds: float | None, max_seconds: float) -> AudioError:
    length = "longer than that" if seconds is None else f"{seconds:.1f} s long"
    return AudioError(
        f"{name} is {length}; the limit is {max_seconds:g} s (max_seconds): trim it or raise the limit"
    )


def _metadata_duration(container: av.container.InputContainer, stream: av.audio.AudioStream) -> float | None:
    """Duration in seconds from the container's header, or None when it does not say (live webm)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _load_file(path: Path, max_seconds: float | None) -> np.ndarray:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is an empty file (0 bytes), not audio")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise AudioError(f"{path} is not an audio file or is corrupt ({e.strerror})") from e
    with container:
        if not container.streams.audio:
            raise AudioError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        duration = _metadata_duration(container, stream)
        if max_seconds is not None and duration is not None and duration > max_seconds:
            raise _too_long(str(path), duration, max_seconds)
        # Keep the source layout and average channels below (see module docstring).
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE) + SAMPLE_RATE // 10
        out: list[np.ndarray] = []
        n = 0
        try:
            for frame in container.decode(stream):
                for f in resampler.resample(frame):
                    out.append(f.to_ndarray().mean(axis=0, dtype=np.float32))
                    n += len(out[-1])
                # No duration in the header (e.g. a browser recording): stop as soon as the limit is passed.
                if limit is not None and n > limit:
                    raise _too_long(str(path), None, max_seconds)
            out.extend(f.to_ndarray().mean(axis=0, dtype=np.float32) for f in resampler.resample(None))
        except av.error.FFmpegError as e:
            raise AudioError(f"{path} is corrupt: its audio could not be decoded ({e.strerror})") from e
    audio = _join(out)
    _require_finite(audio, str(path))
    if duration is not None and "mp4" in container.format.name:
        # mp4/m4a state the exact length (edit list); FFmpeg trims the AAC encoder's leading priming but not
        # its trailing padding (up to ~40 ms).
        audio = audio[: round(duration * SAMPLE_RATE)]
    return audio


def _sample_rate(value: object) -> int:
    """A sample rate given with an array: a whole number of Hz, positive and finite."""
    if isinstance(value, numbers.Real) and math.isfinite(value) and value == int(value) and value > 0:
        return int(value)
    raise AudioError(f"sample rate must be a positive whole number of Hz, got {value!r}")


def load_audio(
    source: str | os.PathLike | tuple[int, np.ndarray] | np.ndarray, max_seconds: float | None = None
) -> np.ndarray:
    """Load speech as float32 mono 16 kHz in [-1, 1].

    `source` is a file path (wav, mp3, flac, ogg/opus, webm, m4a/aac/mp4, ...), a `(sample_rate, array)`
    tuple as Gradio gives (int16 or float, (n,) or (n, channels)), or an array already at 16 kHz.
    Raises `AudioError` for a missing, corrupt or non-audio file, or one longer than `max_seconds` (checked
    from the header before decoding when the header knows the duration). Empty audio gives an empty array.
    """
    if source is None:
        raise AudioError("no audio was given (audio=None): pass a speech file, (sample_rate, samples) or an array")
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source), max_seconds)
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError(f"audio tuple must be (sample_rate, samples), got {len(source)} items")
        sample_rate, samples = _sample_rate(source[0]), np.asarray(source[1])
        name = "audio input"
    else:
        sample_rate, samples = SAMPLE_RATE, np.asarray(source)
        name = "audio array"
    if samples.ndim == 0:
        raise AudioError(f"{name} must be an array of samples, got a single value {samples!r}")
    if max_seconds is not None and len(samples) / sample_rate > max_seconds:
        raise _too_long(name, len(samples) / sample_rate, max_seconds)
    return to_mono_16k(samples, sample_rate, name)
