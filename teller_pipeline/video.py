"""Encode RGB frames + mono speech audio to H.264 + AAC: MP4 files, and a live fragmented MP4 stream.

Frames are ``uint8`` RGB arrays ``(H, W, 3)``; audio is float32 mono in ``[-1, 1]`` at ``sample_rate``.

Choices shared by the writers:

* **Odd sizes are padded, not cropped.** yuv420p stores chroma at half resolution, so libx264 needs an
  even width and height. An odd dimension gets one extra row/column that repeats the edge pixels, so no
  input pixel is lost; the output is then at most 1 px wider/taller than the input.
* **BT.709, limited range, tagged.** Browsers assume BT.709 for untagged H.264, while swscale's default
  RGB->YUV matrix is BT.601; converting and tagging explicitly keeps skin tones from shifting.
* **AAC at 48 kHz mono**, resampled from the input rate. 16 kHz AAC-LC is legal, but at <= 24 kHz it
  cannot be told apart from implicitly signalled HE-AAC, and players special-case those rates; 48 kHz is
  what every browser plays natively, and its 1024-sample AAC frame lasts 21 ms instead of 64 ms, which
  keeps the live stream's audio close to its video.
* **Missing or empty audio becomes silence** of the video's length (the live writer: silence wherever the
  audio so far ends before the video does), so players always see an audio track and timing behaves the
  same with and without speech.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from fractions import Fraction
from itertools import chain
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

__all__ = ["AUDIO_OUT_RATE", "LiveMP4Writer", "probe_media", "write_mp4"]

AUDIO_OUT_RATE = 48_000
AUDIO_BITRATE = 96_000  # mono speech; FFmpeg's native AAC encoder needs more than fdk for the same quality


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {path.parent}")


def _even_size(width: int, height: int) -> tuple[int, int]:
    return width + width % 2, height + height % 2


def _prepare_rgb(frame: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate one frame and pad it to even (width, height); ``size`` is the expected input size."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be uint8 RGB arrays (H, W, 3), got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    if size is not None and (w, h) != size:
        raise ValueError(f"frame size changed: expected {size[0]}x{size[1]}, got {w}x{h}")
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


def _video_frame(
    rgb: np.ndarray, pts: int, keyframe: bool = False, reformatter: VideoReformatter | None = None
) -> av.VideoFrame:
    """RGB → a BT.709 yuv420p frame. Pass the writer's own `reformatter`: `VideoFrame.reformat` builds a new
    swscale context for every frame, which costs more than the conversion itself (same output either way)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame = (reformatter or VideoReformatter()).reformat(
        frame, format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG"
    )
    frame.pts = pts
    if keyframe:
        frame.pict_type = av.video.frame.PictureType.I
    return frame


def _as_mono(audio: np.ndarray | None) -> np.ndarray:
    if audio is None:
        return np.zeros(0, np.float32)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (N,), got shape {audio.shape}")
    return np.clip(audio, -1.0, 1.0)


def _audio_frame(samples: np.ndarray, sample_rate: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, :]), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.time_base = Fraction(1, sample_rate)
    frame.pts = pts
    return frame


def _add_video(
    container: av.container.OutputContainer, fps: int, width: int, height: int, x264: dict[str, str]
) -> av.VideoStream:
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height = width, height
    video.pix_fmt = "yuv420p"
    video.time_base = Fraction(1, fps)
    ctx = video.codec_context
    ctx.colorspace, ctx.color_primaries, ctx.color_trc = 1, 1, 1  # AVCOL_*_BT709
    ctx.color_range = 1  # limited ("tv") range
    video.options = x264
    return video


def _add_aac(container: av.container.OutputContainer) -> av.AudioStream:
    audio = container.add_stream("aac", rate=AUDIO_OUT_RATE, layout="mono")
    audio.bit_rate = AUDIO_BITRATE
    audio.time_base = Fraction(1, AUDIO_OUT_RATE)
    return audio


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 20,
    preset: str = "veryfast",
) -> Path:
    """Write frames (+ audio) to an H.264/AAC MP4 that browsers can play while it downloads.

    ``frames`` is consumed lazily, one frame at a time. Odd sizes are padded by one edge-replicated
    pixel (see module doc). The whole ``audio`` is kept even if it is longer or shorter than the video;
    ``None`` or empty audio becomes silence of the video's length. Raises ``FileNotFoundError`` if the
    parent directory is missing and ``ValueError`` for no frames or malformed input; a partially
    written file is removed on error.
    """
    path = Path(path)
    _check_parent(path)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("write_mp4 needs at least one frame")
    in_size = (np.shape(first)[1], np.shape(first)[0])
    width, height = _even_size(*in_size)
    samples = _as_mono(audio)
    silent = samples.size == 0
    per_frame = sample_rate / fps

    try:
        # +faststart moves the index (moov) to the front so playback starts before the download ends.
        with av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"}) as out:
            video = _add_video(out, fps, width, height, {"crf": str(crf), "preset": preset})
            aout = _add_aac(out)
            sent = 0  # audio samples handed to the encoder
            n = 0
            reformatter = VideoReformatter()
            for n, frame in enumerate(chain([first], it), start=1):
                out.mux(video.encode(_video_frame(_prepare_rgb(frame, in_size), n - 1, reformatter=reformatter)))
                # Feed audio in step with the video so the muxer interleaves without buffering seconds.
                end = round(n * per_frame)
                chunk = np.zeros(end - sent, np.float32) if silent else samples[sent:end]
                if chunk.size:
                    out.mux(aout.encode(_audio_frame(chunk, sample_rate, sent)))
                    sent += chunk.size
            if not silent and sent < samples.size:  # audio longer than the video: keep all of it
                out.mux(aout.encode(_audio_frame(samples[sent:], sample_rate, sent)))
            out.mux(video.encode(None))
            out.mux(aout.encode(None))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


class LiveMP4Writer:
    """Encode a live stream chunk by chunk into one continuous fragmented MP4 (H.264 + AAC) for a browser's
    Media Source Extensions, which append every chunk's bytes to one buffer and play them as they come.

    The first chunk's bytes start with the init segment (``ftyp`` + an empty ``moov``, written by ffmpeg's mp4
    muxer); every chunk is then one ``moof`` + ``mdat`` fragment holding all its packets, whose decode times
    continue the previous chunk's. The fragments are written here rather than by ffmpeg's muxer, which only
    writes a fragment when the next one starts (a chunk of delay), writes wrong durations in its
    fragment-per-frame mode, and restarts decode times at zero in a fresh muxer per chunk.
    Video is low latency (``tune=zerolatency``: no B-frames, no lookahead, one packet per frame) with a
    keyframe every 2 s. Audio is AAC at 48 kHz (see the module doc); its encoder holds back about 43 ms, which
    comes with the next chunk or with :meth:`close`. Frames must be ``(height, width, 3)`` uint8 RGB; odd sizes
    are padded like ``write_mp4``. A frame that is the very array of the frame before it (a `TellerSession` with
    ``frame_step`` 2 repeats each rendered frame) is not encoded again: the one before lasts longer, which costs
    the encoder nothing.
    """

    def __init__(
        self,
        fps: int = 25,
        sample_rate: int = 16000,
        width: int = 512,
        height: int = 512,
        crf: int = 23,
        preset: str = "veryfast",
    ) -> None:
        self.fps, self.sample_rate = fps, sample_rate
        self._in_size = (width, height)
        x264 = {"crf": str(crf), "preset": preset, "tune": "zerolatency",
                "x264-params": f"keyint={2 * fps}:scenecut=0"}
        # The mp4 muxer writes the init segment (the codecs' parameters) and is then only used for its
        # track layout: track i + 1 is stream i, in the time base the muxer chose for it.
        init = io.BytesIO()
        self._muxer = av.open(init, "w", format="mp4", container_options={"movflags": "empty_moov+frag_custom"})
        self._video = _add_video(self._muxer, fps, *_even_size(width, height), x264)
        self._audio = _add_aac(self._muxer)
        self._muxer.start_encoding()  # opens the codecs and writes ftyp + moov
        self.init_segment = init.getvalue()
        self.mime_type = _mse_mime_type(self.init_segment)
        self._timescale = {s.index: s.time_base for s in self._muxer.streams}  # 1/12800 for 25 fps video
        self._reformatter = VideoReformatter()
        self._frames = 0
        self._samples = 0
        self._durations: list[int] = []  # in frames, of each frame given to the encoder and not yet out of it
        self._last_frame: np.ndarray | None = None
        self._decode_time = {s.index: 0 for s in (self._video, self._audio)}  # in each track's time base
        self._sequence = 0
        self._closed = False

    def write(self, frames: list[np.ndarray], audio: np.ndarray | None = None) -> bytes:
        """Encode frames and audio and return the chunk's bytes (the first chunk's start with the init segment).

        Audio continues where the previous chunk's ended, so it may run ahead of the frames (a live session sends
        the voice as soon as it has it). It never falls behind them: when the audio so far ends before this
        chunk's last frame, silence fills the gap, so ``None`` or empty audio is silence of the chunk's span, or
        nothing if earlier chunks already covered it."""
        if self._closed:
            raise RuntimeError("LiveMP4Writer is closed")
        if not frames:
            raise ValueError("a chunk needs at least one frame")
        samples = _as_mono(audio)
        shortfall = round((self._frames + len(frames)) * self.sample_rate / self.fps) - self._samples - samples.size
        if shortfall > 0:
            samples = np.concatenate([samples, np.zeros(shortfall, np.float32)])
        rgb = [_prepare_rgb(f, self._in_size) for f in frames]  # validate before touching encoder state
        video: list[av.Packet] = []
        for i, frame in enumerate(rgb):
            if frames[i] is self._last_frame and self._durations:  # (not if its fragment is already out)
                self._durations[-1] += 1
                continue
            self._last_frame = frames[i]
            self._durations.append(1)
            video += self._video.encode(_video_frame(frame, self._frames + i, reformatter=self._reformatter))
        # The AAC encoder's first packet starts before zero (its priming): dropped, so both tracks start at
        # zero. It holds the first 21 ms of the stream, silence as a recording starts.
        audio_packets = [] if samples.size == 0 else [
            p for p in self._audio.encode(_audio_frame(samples, self.sample_rate, self._samples)) if p.pts >= 0]
        self._frames += len(frames)
        self._samples += samples.size
        data = self._fragment(video, audio_packets)
        return self.init_segment + data if self._sequence == 1 else data

    def close(self) -> bytes:
        """Flush the encoders; return the stream's last bytes (empty if nothing was held back)."""
        if self._closed:
            return b""
        self._closed = True
        video, audio = self._video.encode(None), self._audio.encode(None)
        self._muxer.close()
        return self._fragment(video, audio) if self._sequence and (video or audio) else b""

    def _fragment(self, video: list[av.Packet], audio: list[av.Packet]) -> bytes:
        """One ``moof`` (a ``traf`` per track with packets) and its ``mdat``, per ISO/IEC 14496-12."""
        self._sequence += 1
        tracks = []
        for stream, packets in ((self._video, video), (self._audio, audio)):
            if not packets:
                continue
            samples = []
            for packet in packets:
                payload = _annexb_to_length_prefixed(bytes(packet)) if stream is self._video else bytes(packet)
                # x264 leaves video durations at 0; with zerolatency its packets come out in input order, one per
                # frame (no B-frames), so each takes the next frame's duration.
                ticks = self._durations.pop(0) if stream is self._video else packet.duration
                duration = round(ticks * packet.time_base / self._timescale[stream.index])
                # Sample flags: a sync sample depends on nothing (0x02000000); other frames do and aren't sync.
                flags = 0x02000000 if stream is self._audio or packet.is_keyframe else 0x01010000
                samples.append((duration, payload, flags))
            tracks.append((stream.index + 1, self._decode_time[stream.index], samples))
            self._decode_time[stream.index] += sum(d for d, _, _ in samples)

        def trafs(moof_size: int) -> list[bytes]:
            out, offset = [], moof_size + 8  # sample data starts after moof and mdat's header
            for track_id, decode_time, samples in tracks:
                run = struct.pack(">II", len(samples), offset) + b"".join(
                    struct.pack(">III", d, len(p), f) for d, p, f in samples)
                out.append(_box(b"traf",
                                _full_box(b"tfhd", 0, 0x020000, struct.pack(">I", track_id)),  # base is moof
                                _full_box(b"tfdt", 1, 0, struct.pack(">Q", decode_time)),
                                _full_box(b"trun", 0, 0x000701, run)))  # offset, duration, size, flags
                offset += sum(len(p) for _, p, _ in samples)
            return out

        mfhd = _full_box(b"mfhd", 0, 0, struct.pack(">I", self._sequence))
        moof_size = len(_box(b"moof", mfhd, *trafs(0)))  # sizes don't depend on the offsets' values
        moof = _box(b"moof", mfhd, *trafs(moof_size))
        return moof + _box(b"mdat", *(p for _, _, s in tracks for _, p, _ in s))

    def __enter__(self) -> LiveMP4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags), payload)


def _annexb_to_length_prefixed(data: bytes) -> bytes:
    """x264 writes NAL units after start codes (00 00 01); MP4 samples prefix each with its 4-byte length."""
    units = (unit.rstrip(b"\x00") for unit in data.split(b"\x00\x00\x01"))  # 00 00 00 01 leaves a 00 behind
    return b"".join(struct.pack(">I", len(unit)) + unit for unit in units if unit)


def _mse_mime_type(init_segment: bytes) -> str:
    """The MIME type a browser's ``MediaSource.addSourceBuffer`` needs: H.264's profile, constraints and level
    are the three bytes after the version byte of the ``avcC`` box."""
    at = init_segment.find(b"avcC")
    if at < 0:
        raise ValueError("no H.264 configuration (avcC) in the init segment")
    profile = init_segment[at + 5 : at + 8].hex().upper()
    return f'video/mp4; codecs="avc1.{profile}, mp4a.40.2"'


def probe_media(path: str | Path) -> dict:
    """Decode a media file fully and describe it (used by tests and for debugging output files).

    Returns video/audio codec names, fps, decoded frame count, width, height, video duration (from the
    frame timestamps), audio duration (decoded samples / rate), audio channels and sample rate, and
    whether each stream's decoded timestamps strictly increase. Missing streams give ``None`` values.
    """
    info: dict = dict.fromkeys(
        [
            "video_codec",
            "audio_codec",
            "fps",
            "width",
            "height",
            "video_duration",
            "audio_duration",
            "audio_channels",
            "audio_sample_rate",
        ]
    )
    info.update(frame_count=0, video_pts_increasing=True, audio_pts_increasing=True)
    times: dict[str, list[float]] = {"video": [], "audio": []}
    last_frame_seconds = None  # how long the last video frame shows (frames of a live stream may differ)
    samples = 0
    with av.open(str(path)) as container:
        streams = list(container.streams.video[:1]) + list(container.streams.audio[:1])
        for stream in streams:
            ctx = stream.codec_context
            if stream.type == "video":
                rate = stream.average_rate or stream.guessed_rate
                info.update(video_codec=ctx.name, fps=float(rate) if rate else None)
            else:
                info.update(audio_codec=ctx.name, audio_channels=ctx.channels)
                info["audio_sample_rate"] = ctx.sample_rate
        for packet in container.demux(streams):  # one pass; the final empty packets flush the decoders
            for frame in packet.decode():
                times[packet.stream.type].append(frame.time)
                if packet.stream.type == "video":
                    info.update(width=frame.width, height=frame.height)
                    if frame.duration and frame.time_base:
                        last_frame_seconds = float(frame.duration * frame.time_base)
                else:
                    samples += frame.samples
    video_t, audio_t = times["video"], times["audio"]
    info["frame_count"] = len(video_t)
    if video_t and (last_frame_seconds or info["fps"]):
        info["video_duration"] = video_t[-1] - video_t[0] + (last_frame_seconds or 1 / info["fps"])
    if info["audio_sample_rate"]:
        info["audio_duration"] = samples / info["audio_sample_rate"]
    info["video_pts_increasing"] = bool(np.all(np.diff(video_t) > 0))
    info["audio_pts_increasing"] = bool(np.all(np.diff(audio_t) > 0))
    return info
