"""Tests for teller_pipeline.video: MP4 files, live segments (MPEG-TS, Gradio chunks), probing."""

from __future__ import annotations

import asyncio
import shutil

import av
import numpy as np
import pytest

from teller_pipeline.video import TSSegmentWriter, probe_media, write_mp4

FPS, SR = 25, 16000


def moving_pattern(n: int, height: int = 128, width: int = 160):
    """Smooth gradients drifting a few pixels per frame (a generator, like the pipeline's output)."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    for i in range(n):
        r = 127.5 + 127.5 * np.sin((x + 3 * i) / 23.0)
        g = 127.5 + 127.5 * np.cos((y - 2 * i) / 31.0)
        b = 255.0 * (x + y) / (width + height)
        yield np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def sine(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def decode_rgb(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_mp4_has_h264_aac_with_right_lengths(tmp_path):
    path = write_mp4(tmp_path / "out.mp4", moving_pattern(50), fps=FPS, audio=sine(2.0), sample_rate=SR)
    info = probe_media(path)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["frame_count"] == 50
    assert info["fps"] == pytest.approx(25.0)
    assert (info["width"], info["height"]) == (160, 128)
    assert info["video_duration"] == pytest.approx(2.0, abs=1e-6)
    assert info["audio_duration"] == pytest.approx(2.0, abs=0.05)
    assert info["audio_channels"] == 1
    assert info["video_pts_increasing"] and info["audio_pts_increasing"]
    # +faststart: the index comes before the media data, so browsers can start playing early.
    head = path.read_bytes()
    assert head.find(b"moov") < head.find(b"mdat")


def test_mp4_audio_content_survives(tmp_path):
    path = write_mp4(tmp_path / "out.mp4", moving_pattern(25), audio=sine(1.0, 440.0))
    with av.open(str(path)) as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
        rate = container.streams.audio[0].sample_rate
    spectrum = np.abs(np.fft.rfft(pcm))
    assert np.fft.rfftfreq(pcm.size, 1 / rate)[spectrum.argmax()] == pytest.approx(440.0, abs=3.0)
    assert np.sqrt(np.mean(pcm**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_mp4_keeps_audio_longer_than_video(tmp_path):
    path = write_mp4(tmp_path / "out.mp4", moving_pattern(25), audio=sine(2.5))
    info = probe_media(path)
    assert info["frame_count"] == 25
    assert info["audio_duration"] == pytest.approx(2.5, abs=0.05)


def test_odd_frame_size_is_padded_by_one_pixel(tmp_path):
    frames = list(moving_pattern(10, height=383, width=511))
    path = write_mp4(tmp_path / "odd.mp4", iter(frames), audio=sine(0.4))
    info = probe_media(path)
    assert (info["width"], info["height"]) == (512, 384)
    assert info["frame_count"] == 10
    decoded = decode_rgb(path)
    assert psnr(decoded[0][:383, :511], frames[0]) > 30


def test_frame_content_survives_encoding(tmp_path):
    frames = list(moving_pattern(10, height=256, width=256))
    path = write_mp4(tmp_path / "smooth.mp4", frames, audio=sine(0.4))
    decoded = decode_rgb(path)
    assert len(decoded) == len(frames)
    assert min(psnr(d, f) for d, f in zip(decoded, frames, strict=True)) > 30


@pytest.mark.parametrize("audio", [None, np.zeros(0, np.float32)], ids=["none", "empty"])
def test_missing_audio_becomes_silence_of_video_length(tmp_path, audio):
    path = write_mp4(tmp_path / "silent.mp4", moving_pattern(50), audio=audio)
    info = probe_media(path)
    assert info["frame_count"] == 50
    assert info["audio_codec"] == "aac"
    assert info["audio_duration"] == pytest.approx(2.0, abs=0.05)
    with av.open(str(path)) as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    assert np.abs(pcm).max() < 1e-3


def test_ts_segments_concatenate_into_one_continuous_stream(tmp_path):
    writer = TSSegmentWriter(fps=FPS, sample_rate=SR, width=160, height=128)
    frames, audio = list(moving_pattern(50)), sine(2.0)
    step = round(0.4 * FPS)  # 10 frames = 0.4 s per segment
    segments = []
    for k in range(5):
        chunk = slice(k * step, (k + 1) * step)
        audio_chunk = audio[k * 6400 : (k + 1) * 6400]
        segments.append(writer.write(frames[chunk], audio_chunk, last=k == 4))

    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(segments))
    info = probe_media(joined)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["frame_count"] == 50
    assert info["fps"] == pytest.approx(25.0)
    assert info["audio_duration"] == pytest.approx(2.0, abs=0.05)
    assert info["video_pts_increasing"] and info["audio_pts_increasing"]

    # Every segment stands alone: starts with a keyframe, decodes all its frames, and its
    # timestamps continue where the previous segment stopped.
    starts = []
    for k, data in enumerate(segments):
        path = tmp_path / f"seg{k}.ts"
        path.write_bytes(data)
        with av.open(str(path)) as container:
            packets = [p for p in container.demux(video=0) if p.size]
            assert packets[0].is_keyframe
            starts.append(float(packets[0].pts * packets[0].time_base))
        assert probe_media(path)["frame_count"] == step
    assert np.diff(starts) == pytest.approx([0.4] * 4, abs=1e-6)


def test_ts_writer_writes_files_and_handles_silence(tmp_path):
    writer = TSSegmentWriter(fps=FPS, sample_rate=SR, width=96, height=63)  # odd height gets padded
    frames = list(moving_pattern(10, height=63, width=96))
    paths = [writer.write_file(tmp_path, frames, None, last=k == 1) for k in range(2)]
    assert [p.name for p in paths] == ["segment_00000.ts", "segment_00001.ts"]
    assert probe_media(paths[0])["height"] == 64
    joined = tmp_path / "joined.ts"
    joined.write_bytes(paths[0].read_bytes() + paths[1].read_bytes())
    assert probe_media(joined)["audio_duration"] == pytest.approx(0.8, abs=0.05)
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(list(moving_pattern(1, 63, 96)))


def decode_pcm(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


def test_gradio_chunks_decode_one_by_one_without_seams(tmp_path):
    # Gradio 6.31 decodes every chunk's audio on its own; each must be exactly its video's length and
    # join the next without a click.
    writer = TSSegmentWriter(fps=FPS, sample_rate=SR, width=160, height=128, target="gradio")
    frames, audio = list(moving_pattern(50)), sine(2.0)
    paths = [
        writer.write_file(tmp_path, frames[k * 10 : (k + 1) * 10], audio[k * 6400 : (k + 1) * 6400])
        for k in range(5)
    ]
    assert paths[0].suffix == ".mp4"
    pcm = []
    for path in paths:
        info = probe_media(path)
        assert (info["video_codec"], info["audio_codec"]) == ("h264", "pcm_s16le")
        assert info["frame_count"] == 10 and info["audio_sample_rate"] == 48000
        assert info["audio_duration"] == pytest.approx(0.4, abs=1e-9)
        with av.open(str(path)) as container:
            first = next(p for p in container.demux(video=0) if p.size)
            assert first.is_keyframe and first.pts == 0
        pcm.append(decode_pcm(path) / 32768)
    joined = np.concatenate(pcm)[200:]  # past the resampler's start-up
    # A 440 Hz sine of amplitude 0.5 moves at most 0.029 per 48 kHz sample; a seam would jump further.
    assert np.abs(np.diff(joined)).max() < 0.035
    assert np.sqrt(np.mean(joined**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs ffmpeg")
def test_gradio_streaming_video_keeps_lips_in_sync(tmp_path):
    gr = pytest.importorskip("gradio")
    # A white frame and a tone burst at the same instants must stay together through Gradio's re-mux.
    flashes = (12, 33)
    frames = [np.full((64, 64, 3), 255 if i in flashes else 0, np.uint8) for i in range(50)]
    audio = np.zeros(50 * 640, np.float32)
    for i in flashes:
        audio[i * 640 : i * 640 + 320] = 0.8 * np.sin(np.arange(320) * 0.3)
    writer = TSSegmentWriter(fps=FPS, sample_rate=SR, width=64, height=64, target="gradio")
    paths = [
        writer.write_file(tmp_path, frames[k : k + 10], audio[k * 640 : (k + 10) * 640], last=k == 40)
        for k in range(0, 50, 10)
    ]

    async def stream() -> bytes:
        video = gr.Video(streaming=True)
        chunks = [(await video.stream_output(str(p), "test", i == 0))[0] for i, p in enumerate(paths)]
        chunks.append(await video.flush_stream_output("test"))
        return b"".join(c["data"] for c in chunks if c)

    out = tmp_path / "browser.ts"
    out.write_bytes(asyncio.run(stream()))
    bright, loud = [], []
    with av.open(str(out)) as container:
        for packet in container.demux():
            for frame in packet.decode():
                if packet.stream.type == "video" and frame.to_ndarray(format="rgb24").mean() > 128:
                    bright.append(frame.time)
                elif packet.stream.type == "audio":
                    hits = np.nonzero(np.abs(frame.to_ndarray()[0]) > 0.3)[0]
                    if hits.size and (not loud or frame.time - loud[-1] > 0.2):
                        loud.append(frame.time + hits[0] / frame.sample_rate)
    assert len(bright) == len(loud) == 2
    assert np.diff(bright) == pytest.approx([(flashes[1] - flashes[0]) / FPS], abs=1e-3)
    assert np.abs(np.array(loud) - np.array(bright)).max() < 0.025  # lip sync within one AAC frame
    assert probe_media(out)["video_pts_increasing"]


def test_bad_inputs_raise_clear_errors(tmp_path):
    missing = tmp_path / "no_such_dir" / "out.mp4"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        write_mp4(missing, moving_pattern(5))
    writer = TSSegmentWriter(width=160, height=128)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        writer.write_file(tmp_path / "no_such_dir", list(moving_pattern(5)))
    with pytest.raises(ValueError, match="at least one frame"):
        write_mp4(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match="frame size changed"):
        writer.write(list(moving_pattern(2, 64, 64)))
    bad = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(bad, [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.float32)])
    assert not bad.exists()  # no half-written file left behind
    with pytest.raises(ValueError, match="target"):
        TSSegmentWriter(target="webrtc")
