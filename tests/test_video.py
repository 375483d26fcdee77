"""Tests for teller_pipeline.video: MP4 files, the live fragmented MP4 stream, probing."""

from __future__ import annotations

import av
import numpy as np
import pytest

from teller_pipeline.video import LiveMP4Writer, probe_media, write_mp4

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


def write_live(tmp_path, writer: LiveMP4Writer, chunks: list[tuple[list, np.ndarray | None]], name="live.mp4"):
    """Feed chunks through the writer as a live session does; returns the stream file and each write's bytes."""
    pieces = [writer.write(frames, audio) for frames, audio in chunks] + [writer.close()]
    path = tmp_path / name
    path.write_bytes(b"".join(pieces))
    return path, pieces


def top_level_boxes(data: bytes) -> list[bytes]:
    kinds, at = [], 0
    while at + 8 <= len(data):
        kinds.append(data[at + 4 : at + 8])
        at += int.from_bytes(data[at : at + 4], "big")
    return kinds


def test_live_chunks_join_into_one_fragmented_mp4(tmp_path):
    writer = LiveMP4Writer(fps=FPS, sample_rate=SR, width=160, height=128)
    assert writer.mime_type.startswith('video/mp4; codecs="avc1.64') and writer.mime_type.endswith('mp4a.40.2"')
    frames, audio = list(moving_pattern(50)), sine(2.0)
    chunks = [(frames[k * 5 : (k + 1) * 5], audio[k * 3200 : (k + 1) * 3200]) for k in range(10)]
    path, pieces = write_live(tmp_path, writer, chunks)
    # What a browser appends: the init segment once, then one fragment per chunk.
    assert top_level_boxes(pieces[0]) == [b"ftyp", b"moov", b"moof", b"mdat"]
    assert all(top_level_boxes(p) == [b"moof", b"mdat"] for p in pieces[1:-1])
    info = probe_media(path)
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert info["frame_count"] == 50 and info["fps"] == pytest.approx(25.0)
    assert info["video_duration"] == pytest.approx(2.0)
    assert info["audio_duration"] == pytest.approx(2.0, abs=0.03)  # AAC pads its last frame
    assert info["video_pts_increasing"] and info["audio_pts_increasing"]
    decoded = decode_rgb(path)
    assert min(psnr(d, f) for d, f in zip(decoded, frames, strict=True)) > 30

    # Nothing of the video waits for a later chunk: the stream so far decodes to every frame written so far.
    for k in (1, 4):
        prefix = tmp_path / f"prefix{k}.mp4"
        prefix.write_bytes(b"".join(pieces[:k]))
        assert probe_media(prefix)["frame_count"] == 5 * k


def test_live_stream_keeps_lips_in_sync(tmp_path):
    # A white frame and a tone burst at the same instants must stay together across chunk boundaries.
    flashes = (12, 33)
    frames = [np.full((64, 64, 3), 255 if i in flashes else 0, np.uint8) for i in range(50)]
    audio = np.zeros(50 * 640, np.float32)
    for i in flashes:
        audio[i * 640 : i * 640 + 320] = 0.8 * np.sin(np.arange(320) * 0.3)
    writer = LiveMP4Writer(fps=FPS, sample_rate=SR, width=64, height=64)
    chunks = [(frames[k : k + 5], audio[k * 640 : (k + 5) * 640]) for k in range(0, 50, 5)]
    path, _ = write_live(tmp_path, writer, chunks)
    bright, loud = [], []
    with av.open(str(path)) as container:
        for packet in container.demux():
            for frame in packet.decode():
                if packet.stream.type == "video" and frame.to_ndarray(format="rgb24").mean() > 128:
                    bright.append(frame.time)
                elif packet.stream.type == "audio":
                    hits = np.nonzero(np.abs(frame.to_ndarray()[0]) > 0.3)[0]
                    if hits.size and (not loud or frame.time - loud[-1] > 0.2):
                        loud.append(frame.time + hits[0] / frame.sample_rate)
    assert bright == pytest.approx([i / FPS for i in flashes], abs=1e-3)
    assert len(loud) == 2
    assert np.abs(np.array(loud) - np.array(bright)).max() < 0.005


def test_live_repeated_frames_are_encoded_once_and_keep_lips_in_sync(tmp_path):
    # A session short of CPU renders frames 0, 2 and 4 of each slice of 5 and shows each of the first two twice (the
    # same array): the stream holds each once, lasting as long as its repeats, and a flash still meets its tone.
    flash = 12  # the third slice's frames 12 (and 13) show it
    shown = []
    for start in range(0, 25, 5):
        rendered = [np.full((64, 64, 3), 255 if start + i == flash else 0, np.uint8) for i in (0, 2, 4)]
        shown += [rendered[0], rendered[0], rendered[1], rendered[1], rendered[2]]
    audio = np.zeros(25 * 640, np.float32)
    audio[flash * 640 : flash * 640 + 320] = 0.8 * np.sin(np.arange(320) * 0.3)
    writer = LiveMP4Writer(fps=FPS, sample_rate=SR, width=64, height=64)
    chunks = [(shown[k : k + 5], audio[k * 640 : (k + 5) * 640]) for k in range(0, 25, 5)]
    chunks.append(([shown[-1]], None))  # a repeat in the next chunk: the frame's fragment is out, so it comes again
    path, _ = write_live(tmp_path, writer, chunks)
    info = probe_media(path)
    assert info["frame_count"] == 16 and info["video_duration"] == pytest.approx(26 / FPS)
    with av.open(str(path)) as container:
        times = [(frame.time, frame.to_ndarray(format="rgb24").mean() > 128) for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    starts = [k + i for k in range(0, 25, 5) for i in (0, 2, 4)] + [25]
    assert [t for t, _ in times] == pytest.approx([i / FPS for i in starts], abs=1e-3)
    assert [t for t, bright in times if bright] == pytest.approx([flash / FPS], abs=1e-3)
    assert np.nonzero(np.abs(pcm) > 0.3)[0][0] / 48000 == pytest.approx(flash / FPS, abs=0.005)


def test_live_audio_may_run_ahead_of_the_frames_without_losing_sync(tmp_path):
    # A live session sends the voice as soon as it has it: here 0.4 s with the first 5 frames, none with the next
    # 5. The tone burst at 0.3 s must still meet the white frame at 0.3 s, and no silence may be inserted.
    frames = [np.full((64, 64, 3), 255 if i == 7 else 0, np.uint8) for i in range(10)]
    audio = np.zeros(int(0.4 * SR), np.float32)
    audio[int(0.28 * SR) : int(0.3 * SR)] = 0.8 * np.sin(np.arange(int(0.02 * SR)) * 0.3)
    writer = LiveMP4Writer(fps=FPS, sample_rate=SR, width=64, height=64)
    path, _ = write_live(tmp_path, writer, [(frames[:5], audio), (frames[5:], np.zeros(0, np.float32))])
    info = probe_media(path)
    assert info["frame_count"] == 10 and info["audio_duration"] == pytest.approx(0.4, abs=0.025)
    with av.open(str(path)) as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    onset = np.nonzero(np.abs(pcm) > 0.3)[0][0] / 48000
    assert onset == pytest.approx(0.28, abs=0.005)


def test_live_writer_pads_odd_sizes_fills_silence_and_closes(tmp_path):
    writer = LiveMP4Writer(fps=FPS, sample_rate=48000, width=96, height=63)  # odd height gets padded
    path, _ = write_live(tmp_path, writer, [(list(moving_pattern(10, 63, 96)), None)] * 2)
    info = probe_media(path)
    assert (info["width"], info["height"], info["frame_count"]) == (96, 64, 20)
    assert info["audio_duration"] == pytest.approx(0.8, abs=0.03)
    with av.open(str(path)) as container:
        assert np.abs(np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])).max() < 1e-3
    assert writer.close() == b""  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(list(moving_pattern(1, 63, 96)))


def test_bad_inputs_raise_clear_errors(tmp_path):
    missing = tmp_path / "no_such_dir" / "out.mp4"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        write_mp4(missing, moving_pattern(5))
    writer = LiveMP4Writer(width=160, height=128)
    with pytest.raises(ValueError, match="at least one frame"):
        write_mp4(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match="frame size changed"):
        writer.write(list(moving_pattern(2, 64, 64)))
    with pytest.raises(ValueError, match="at least one frame"):
        writer.write([])
    bad = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(bad, [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.float32)])
    assert not bad.exists()  # no half-written file left behind
