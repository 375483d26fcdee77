"""Encode RGB frames + mono speech audio to H.264: MP4 files and live segments (MPEG-TS, or for Gradio).

Frames are ``uint8`` RGB arrays ``(H, W, 3)``; audio is float32 mono in ``[-1, 1]`` at ``sample_rate``.

Choices shared by the writers:

* **Odd sizes are padded, not cropped.** yuv420p stores chroma at half resolution, so libx264 needs an
  even width and height. An odd dimension gets one extra row/column that repeats the edge pixels, so no
  input pixel is lost; the output is then at most 1 px wider/taller than the input.
* **BT.709, limited range, tagged.** Browsers assume BT.709 for untagged H.264, while swscale's default
  RGB->YUV matrix is BT.601; converting and tagging explicitly keeps skin tones from shifting.
* **AAC at 48 kHz mono**, resampled from the input rate. 16 kHz AAC-LC is legal, but at <= 24 kHz it
  cannot be told apart from implicitly signalled HE-AAC, and players special-case those rates (hls.js,
  which Gradio's streaming video uses, rewrites their codec config per browser); 48 kHz is what every
  browser plays natively, and its 1024-sample AAC frame lasts 21 ms instead of 64 ms, which keeps live
  segments' audio close to their video.
* **Missing or empty audio becomes silence** of the video's length, so players always see an audio track
  and timing behaves the same with and without speech.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

__all__ = ["AUDIO_OUT_RATE", "TSSegmentWriter", "probe_media", "write_mp4"]

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


class TSSegmentWriter:
    """Encode a live stream chunk by chunk into self-contained segments that start with an IDR frame.

    Video is low latency (``tune=zerolatency``: no B-frames, no lookahead, one packet per input
    frame) and its encoder persists across segments. Two targets:

    ``target="hls"`` (default): MPEG-TS segments, H.264 + AAC, for players that append segments.
    Each has its own PAT/PMT; timestamps continue from ~0.1 s (a whole number of frames: MPEG-TS cannot
    carry the negative timestamp of AAC's priming frame); continuity counters are rewritten to follow
    on, so the concatenated bytes are one valid stream. The AAC encoder persists too (no priming gap
    per segment), but holds back up to ~43 ms (one 1024-sample frame of lookahead plus the partial
    frame), which arrives with the next segment or with ``last=True``.

    ``target="gradio"``: ``.mp4`` chunks, H.264 + 16-bit PCM at 48 kHz, timestamps from 0 in every
    chunk. Gradio 6.31's ``gr.Video(streaming=True)`` does not append what it is given: it decodes
    each chunk's audio *on its own* with ffmpeg, re-encodes it with one AAC encoder of its own, and
    pads silence wherever a chunk's audio is shorter than its video. AAC chunks fail both ways: a
    chunk's first AAC frame cannot be decoded without the previous one (clicks at every boundary),
    and the encoder's held-back audio makes chunks short (gaps, then video freezes as Gradio resyncs).
    PCM decodes exactly, chunk by chunk, with exactly the video's length. 48 kHz because Gradio's
    encoder runs at the first chunk's rate, and hls.js treats AAC at <= 24 kHz specially (HE-AAC
    signalling) in ways some browsers fail on.

    Frames must be ``(height, width, 3)`` uint8 RGB; odd sizes are padded like ``write_mp4``.
    """

    START_SECONDS = 0.1

    def __init__(
        self,
        fps: int = 25,
        sample_rate: int = 16000,
        width: int = 512,
        height: int = 512,
        crf: int = 23,
        preset: str = "veryfast",
        target: Literal["hls", "gradio"] = "hls",
    ) -> None:
        if target not in ("hls", "gradio"):
            raise ValueError(f"target must be 'hls' or 'gradio', got {target!r}")
        self.fps, self.sample_rate, self.target = fps, sample_rate, target
        self.suffix = ".ts" if target == "hls" else ".mp4"
        self._in_size = (width, height)
        x264 = {
            "crf": str(crf),
            "preset": preset,
            "tune": "zerolatency",
            "forced-idr": "1",  # the forced keyframe opening a segment must be an IDR to decode alone
            "x264-params": f"keyint={2 * fps}:scenecut=0",  # no extra keyframes inside a segment
        }
        # The encoders live in a container that is never written to (MPEG-TS, so H.264 keeps its
        # parameter sets in-band); each segment copies their parameters into a fresh muxer.
        self._encoders = av.open(io.BytesIO(), "w", format="mpegts")
        self._video = _add_video(self._encoders, fps, *_even_size(width, height), x264)
        self._audio = _add_aac(self._encoders) if target == "hls" else None
        self._encoders.start_encoding()  # opens the codecs now, not inside the first segment
        self._reformatter = VideoReformatter()
        self._start_frames = round(self.START_SECONDS * fps) if target == "hls" else 0
        self._frames = 0
        self._samples = 0
        self._next_cc: dict[int, int] = {}  # hls: per PID, the next MPEG-TS continuity counter
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_OUT_RATE)  # gradio
        self._pcm_started = False
        self._closed = False
        self.segments_written = 0

    def write(
        self, frames: list[np.ndarray], audio: np.ndarray | None = None, *, last: bool = False
    ) -> bytes:
        """Encode one chunk (frames + the audio of the same span) and return the segment's bytes.

        ``None``/empty audio means silence of ``len(frames) / fps`` seconds. Audio timing is
        cumulative, so chunks whose audio is not ``len(frames) / fps`` long drift out of sync.
        ``last=True`` flushes the encoders into this segment and closes the writer.
        """
        if self._closed:
            raise RuntimeError("TSSegmentWriter is closed")
        if not frames:
            raise ValueError("a segment needs at least one frame")
        samples = _as_mono(audio)
        if samples.size == 0:
            samples = np.zeros(round(len(frames) * self.sample_rate / self.fps), np.float32)
        rgb = [_prepare_rgb(f, self._in_size) for f in frames]  # validate before touching encoder state

        v_pts = self._start_frames + self._frames
        a_pts = round(self._start_frames * self.sample_rate / self.fps) + self._samples
        video: list[av.Packet] = []
        for i, frame in enumerate(rgb):
            video += self._video.encode(_video_frame(frame, v_pts + i, keyframe=i == 0, reformatter=self._reformatter))
        if last:
            video += self._video.encode(None)
        self._frames += len(frames)
        self._samples += samples.size

        if self.target == "gradio":
            data = self._gradio_chunk(video, _audio_frame(samples, self.sample_rate, a_pts), last)
        else:
            packets = video + self._audio.encode(_audio_frame(samples, self.sample_rate, a_pts))
            if last:
                packets += self._audio.encode(None)
            data = self._continue_counters(self._mux(packets, "mpegts"))
        self.segments_written += 1
        if last:
            self.close()
        return data

    def _mux(self, packets: list[av.Packet], fmt: str, pcm: av.AudioFrame | None = None) -> bytes:
        buf = io.BytesIO()
        with av.open(buf, "w", format=fmt) as seg:
            targets = {self._video.index: seg.add_stream_from_template(self._video)}
            if pcm is None:
                targets[self._audio.index] = seg.add_stream_from_template(self._audio)
            else:
                seg.mux(seg.add_stream("pcm_s16le", rate=pcm.sample_rate, layout="mono").encode(pcm))
            for packet in packets:
                packet.stream = targets[packet.stream.index]
                seg.mux(packet)
        return buf.getvalue()

    def _gradio_chunk(self, video: list[av.Packet], audio: av.AudioFrame, last: bool) -> bytes:
        frames = self._resampler.resample(audio) + (self._resampler.resample(None) if last else [])
        pcm = np.concatenate([np.zeros(0, np.int16)] + [f.to_ndarray().reshape(-1) for f in frames])
        # The resampler holds back a few samples for its filter; pad the very first chunk at the front
        # so every chunk's audio is as long as its video (Gradio fills shortfalls with silence).
        if not self._pcm_started:
            self._pcm_started = True
            target = round(self._samples * AUDIO_OUT_RATE / self.sample_rate)
            pcm = np.concatenate([np.zeros(max(target - pcm.size, 0), np.int16), pcm])
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_OUT_RATE, 0, Fraction(1, AUDIO_OUT_RATE)
        start = video[0].pts if video else 0
        for packet in video:  # chunk-local time: Gradio places each chunk on its own timeline
            packet.pts -= start
            packet.dts -= start
        return self._mux(video, "mp4", frame)

    def _continue_counters(self, data: bytes) -> bytes:
        packets = np.frombuffer(data, np.uint8).reshape(-1, 188).copy()
        for packet in packets:
            pid = (int(packet[1] & 0x1F) << 8) | int(packet[2])
            if pid == 0x1FFF:  # null packets carry no counter
                continue
            cc = self._next_cc.get(pid, 0)
            if packet[3] & 0x10:  # carries payload: counter advances
                self._next_cc[pid] = (cc + 1) % 16
            else:  # adaptation field only: repeats the previous counter
                cc = (cc - 1) % 16
            packet[3] = (packet[3] & 0xF0) | cc
        return packets.tobytes()

    def write_file(
        self,
        directory: str | Path,
        frames: list[np.ndarray],
        audio: np.ndarray | None = None,
        *,
        last: bool = False,
    ) -> Path:
        """Like :meth:`write`, but save the segment as ``segment_NNNNN.ts`` (``.mp4`` for Gradio) in
        ``directory`` and return its path: Gradio's streaming ``gr.Video`` takes one path per chunk."""
        path = Path(directory) / f"segment_{self.segments_written:05d}{self.suffix}"
        _check_parent(path)
        path.write_bytes(self.write(frames, audio, last=last))
        return path

    def close(self) -> None:
        """Release the encoders (also done by ``write(..., last=True)``)."""
        if not self._closed:
            self._closed = True
            self._encoders.close()


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
                else:
                    samples += frame.samples
    video_t, audio_t = times["video"], times["audio"]
    info["frame_count"] = len(video_t)
    if video_t and info["fps"]:
        info["video_duration"] = video_t[-1] - video_t[0] + 1 / info["fps"]
    if info["audio_sample_rate"]:
        info["audio_duration"] = samples / info["audio_sample_rate"]
    info["video_pts_increasing"] = bool(np.all(np.diff(video_t) > 0))
    info["audio_pts_increasing"] = bool(np.all(np.diff(audio_t) > 0))
    return info
