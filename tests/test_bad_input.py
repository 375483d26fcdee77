"""Bad input gets a clear error before any work, and silence gets a valid idle video."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from teller_pipeline import FaceNotFoundError, ImageError, rig
from teller_pipeline.audio import AudioError

from .conftest import ASTRONAUT, GRACE_HOPPER


def test_photo_without_a_face(pipe, tmp_path, speech):
    landscape = np.zeros((300, 400, 3), np.uint8)
    landscape[:150] = (110, 160, 230)  # sky
    landscape[150:] = (60, 120, 40)  # grass
    path = tmp_path / "landscape.png"
    Image.fromarray(landscape).save(path)
    with pytest.raises(FaceNotFoundError, match="No face was found"):
        pipe(path, speech[:8000])


def test_several_faces_animates_the_largest_with_a_warning(pipe, tmp_path, speech):
    big = Image.open(GRACE_HOPPER).convert("RGB")
    small = Image.open(ASTRONAUT).convert("RGB")  # her face is the smaller of the two
    group = Image.new("RGB", (big.width + small.width, big.height), (200, 200, 200))
    group.paste(big, (0, 0))
    group.paste(small, (big.width, 44))
    path = tmp_path / "group.png"
    group.save(path)
    with pytest.warns(UserWarning, match="2 faces were found"):
        source = pipe.prepare_source(path)
    assert source.num_faces == 2
    assert source.face.landmarks[:, 0].max() < big.width  # Grace Hopper's face, the larger one


def test_unreadable_image_names_the_file(pipe, tmp_path, speech):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        pipe(path, speech[:8000])
    with pytest.raises(ImageError, match="no such image file"):
        pipe(tmp_path / "missing.png", speech[:8000])


def test_tiny_image_is_refused_clearly(pipe, tmp_path, speech):
    path = tmp_path / "tiny.png"
    Image.open(GRACE_HOPPER).resize((20, 24)).save(path)
    with pytest.raises(ImageError, match="at least 32 pixels"):
        pipe(path, speech[:8000])


def test_huge_image_is_downscaled_not_refused(pipe, tmp_path, speech):
    path = tmp_path / "huge.jpg"
    Image.open(ASTRONAUT).resize((4096, 4096), Image.Resampling.BICUBIC).save(path, quality=90)
    out = pipe(path, speech[:8000])
    assert out.frames.shape[1:3] == (1024, 1024)


def test_unreadable_audio_names_the_file(pipe, tmp_path):
    path = tmp_path / "speech.mp3"
    path.write_bytes(b"ID3" + bytes(range(256)) * 4)
    with pytest.raises(AudioError, match="speech.mp3"):
        pipe(GRACE_HOPPER, path)


def test_too_long_speech_fails_before_any_work(pipe, tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, np.zeros(16000 * 3, np.float32), 16000)
    start = time.perf_counter()
    limit = pipe.config.max_audio_seconds
    pipe.register_to_config(max_audio_seconds=2.0)
    try:
        with pytest.raises(AudioError, match="limit is 2"):
            pipe(GRACE_HOPPER, path)
    finally:
        pipe.register_to_config(max_audio_seconds=limit)
    assert time.perf_counter() - start < 2.0


def test_silence_gives_an_idle_video(pipe):
    """Closed (resting) mouth, blinks, and slight breathing motion."""
    silence = np.zeros(16000 * 4, np.float32)
    out = pipe(GRACE_HOPPER, silence, seed=0, blinks_per_minute=30)
    assert len(out.frames) == 100
    openings, eyes = [], []
    for frame in out.frames:
        face = pipe.face_analyzer.largest_face(frame)
        openings.append(rig.mouth_opening(face.points))
        eyes.append(rig.eye_opening(face.points))
    assert max(openings) < 0.05, "the mouth stays closed in silence"
    # The landmarker sees a closed lid behind Grace Hopper's glasses as ~35% less open, not shut (checked by
    # eye on the frames); frame-to-frame noise with open eyes is ~5%.
    assert min(eyes) < 0.75 * np.median(eyes), "the eyes blink"
    still = np.abs(out.frames[0].astype(int) - out.frames[50].astype(int)).mean()
    assert still > 0.05, "breathing moves the portrait a little"


def test_empty_speech_gives_a_short_idle_clip(pipe):
    out = pipe(GRACE_HOPPER, np.zeros(0, np.float32))
    assert len(out.frames) == round(pipe.config.min_video_seconds * 25)
    assert len(out.audio) == round(pipe.config.min_video_seconds * 16000)


def test_stereo_44k_file_works(pipe, tmp_path, speech):
    from scipy.signal import resample_poly

    up = resample_poly(speech, 441, 160).astype(np.float32)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, np.stack([up, up * 0.5], 1), 44100)
    out = pipe(GRACE_HOPPER, path, max_size=128)
    assert abs(len(out.frames) - round(len(speech) / 16000 * 25)) <= 1
