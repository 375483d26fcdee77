"""Hostile and broken input, refused cheaply and clearly: photos that are not photos, a group photo's small faces,
NaN audio and settings, out-of-range sizes and seeds, a bad chunk in a live session, an in-memory video too large
to hold, and what the running app shows of its server (no paths) and leaves behind (nothing).

`tests/test_bad_input.py` covers the everyday cases (no face, several faces, a broken file, a tiny photo, silence);
this module covers what a careless or hostile caller sends."""

from __future__ import annotations

import queue
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from teller_pipeline import FaceNotFoundError, ImageError
from teller_pipeline.audio import AudioError, load_audio
from teller_pipeline.face_analysis import FaceAnalyzer
from teller_pipeline.pipeline_teller import MAX_IMAGE_PIXELS
from teller_pipeline.video import write_mp4

from .conftest import EXAMPLES, GRACE_HOPPER, REAL_SPEECH, ROOT, png_header_claiming
from .serving import serve_app

NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------------------------ photos
@pytest.fixture(scope="module")
def bad_photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_photos")
    photos = {name: folder / name for name in ["notes.jpg", "empty.jpg", "clip.jpg", "voice.png", "cut.jpg",
                                               "bomb.png"]}
    photos["notes.jpg"].write_text("Shopping list: milk, eggs. Not a photo at all.\n" * 20)
    photos["empty.jpg"].write_bytes(b"")
    clip = folder / "clip.mp4"  # a real video, renamed as a photo
    write_mp4(clip, [np.full((64, 64, 3), v, np.uint8) for v in (40, 120, 200)], fps=25)
    photos["clip.jpg"].write_bytes(clip.read_bytes())
    photos["voice.png"].write_bytes(REAL_SPEECH.read_bytes())
    whole = GRACE_HOPPER.read_bytes()
    photos["cut.jpg"].write_bytes(whole[: len(whole) // 3])  # a download that stopped a third of the way
    png_header_claiming(photos["bomb.png"], 13000, 13000)
    return photos


PHOTO_ERRORS = {
    "notes.jpg": "notes.jpg is not an image file",
    "empty.jpg": r"empty.jpg is an empty file \(0 bytes\)",
    "clip.jpg": "clip.jpg is a video, not a photo",
    "voice.png": "voice.png is a sound file, not a photo",
    "cut.jpg": "cut.jpg: not a readable image",
    "bomb.png": r"bomb.png is 13000x13000 pixels \(169 MP\); the limit is 40 MP",
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, as it reads the header
@pytest.mark.parametrize("name", list(PHOTO_ERRORS))
def test_a_file_that_is_not_a_usable_photo_is_named_and_explained(pipe, bad_photos, name, speech):
    start = time.perf_counter()
    with pytest.raises(ImageError, match=f"^{re.escape(str(bad_photos[name].parent))}/{PHOTO_ERRORS[name]}"):
        pipe(bad_photos[name], speech[:8000])
    assert time.perf_counter() - start < 1.0, "refused before any real work"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, as it reads the header
def test_photo_pixels_are_counted_from_the_header_before_decoding(monkeypatch, bad_photos):
    from teller_pipeline import pipeline_teller

    # The limit is checked on the size the header declares: a photo one pixel over it is refused without its
    # pixels ever being read (decoding them would fail here: the file holds one pixel's data).
    width = 8000
    png_header_claiming(bad_photos["bomb.png"].with_name("over.png"), width, MAX_IMAGE_PIXELS // width + 1)
    with pytest.raises(ImageError, match="the limit is 40 MP"):
        pipeline_teller.load_image(bad_photos["bomb.png"].with_name("over.png"))
    # A PIL image opened lazily is checked the same way, before `convert` decodes it.
    with Image.open(bad_photos["bomb.png"]) as lazy, pytest.raises(ImageError, match="the limit is 40 MP"):
        pipeline_teller.load_image(lazy)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (None, r"no image was given \(image=None\)"),
        (42, "image must be a file path, a PIL image or an array, not int"),
        (np.full((64, 64, 3), NAN, np.float32), "holds NaN or infinite values"),
        (np.zeros((0, 0, 3), np.uint8), r"must be \(H, W, 3\) or \(H, W, 4\)"),
        (np.zeros((64, 64, 3), object), "must hold numbers"),
    ],
    ids=["None", "int", "nan-array", "empty-array", "object-array"],
)
def test_an_image_argument_that_is_not_an_image(pipe, image, message, speech):
    with pytest.raises(ImageError, match=message):
        pipe(image, speech[:8000])


# ---------------------------------------------------------------------------------------------- group photos
# Six of the example portraits tiled into one 1280x886 photo with faces ~90-105 px wide (about 150 px heads, as in
# a real group photo); Grace Hopper's, bottom middle, is the largest. MediaPipe's detector sees none of them in
# the whole photo once it is scaled to the pipeline's default 1024 px or the app's 512 px.
GROUP = [("astronaut.png", 90), ("obama_smile.jpg", 90), ("biden.jpg", 90),
         ("jesper_speaking.jpg", 90), ("grace_hopper.jpg", 105), ("party_glasses.jpg", 90)]
GROUP_SIZE, GROUP_CELL = (1280, 886), (1280 // 3, 886 // 2)


@pytest.fixture(scope="module")
def group_photo(tmp_path_factory) -> Path:
    analyzer = FaceAnalyzer(max_faces=1)
    canvas = Image.new("RGB", GROUP_SIZE, (190, 190, 185))
    for k, (name, face_width) in enumerate(GROUP):
        portrait = Image.open(EXAMPLES / name).convert("RGB")
        x0, y0, x1, y1 = analyzer.largest_face(np.asarray(portrait)).bbox
        scale = face_width / (x1 - x0)
        portrait = portrait.resize((round(portrait.width * scale), round(portrait.height * scale)),
                                   Image.Resampling.LANCZOS)
        cell = Image.new("RGB", GROUP_CELL, (190, 190, 185))  # the face centred in its cell
        cell.paste(portrait, (round(GROUP_CELL[0] / 2 - (x0 + x1) / 2 * scale),
                              round(GROUP_CELL[1] / 2 - (y0 + y1) / 2 * scale)))
        canvas.paste(cell, (k % 3 * GROUP_CELL[0], k // 3 * GROUP_CELL[1]))
    analyzer.close()
    path = tmp_path_factory.mktemp("group") / "group.jpg"
    canvas.save(path, quality=92)
    return path


@pytest.mark.parametrize("max_size", [None, 512])
def test_a_group_photo_with_small_faces_animates_the_largest(pipe, group_photo, max_size):
    with pytest.warns(UserWarning, match="6 faces were found"):
        source = pipe.prepare_source(group_photo, max_size)
    scale = source.image.shape[1] / GROUP_SIZE[0]
    centre = source.face.landmarks[:, :2].mean(0) / scale  # back in the 1280x886 photo's pixels
    assert GROUP_CELL[0] < centre[0] < 2 * GROUP_CELL[0] and centre[1] > GROUP_CELL[1], "Grace Hopper's face"


def test_a_photo_without_a_face_is_still_refused_quickly(pipe, tmp_path, speech):
    # The small-face search covers the whole photo and still finds nothing in a textured landscape.
    rng = np.random.default_rng(0)
    landscape = np.zeros((768, 1024, 3), np.uint8)
    landscape[:300] = (110, 160, 230)
    landscape[300:] = rng.integers(40, 140, (468, 1024, 3))
    path = tmp_path / "field.png"
    Image.fromarray(landscape).save(path)
    start = time.perf_counter()
    with pytest.raises(FaceNotFoundError, match="No face was found"):
        pipe(path, speech[:8000])
    assert time.perf_counter() - start < 3.0


# ---------------------------------------------------------------------------------------------------- audio
@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (None, r"no audio was given \(audio=None\)"),
        (np.full(16000, NAN, np.float32), "audio array holds 16000 NaN or infinite samples"),
        ((48000, np.r_[np.zeros(4800), INF]), "audio input holds 1 NaN or infinite sample"),
        ((NAN, np.zeros(4800)), "sample rate must be a positive whole number of Hz, got nan"),
        ((0, np.zeros(4800)), "sample rate must be a positive whole number of Hz, got 0"),
        ((10**12, np.zeros(4800)), "sample rate must be between 1 and 768000 Hz"),
        (np.float32(0.5), "must be an array of samples, got a single value"),
    ],
    ids=["None", "nan-array", "inf-tuple", "nan-rate", "zero-rate", "huge-rate", "scalar"],
)
def test_audio_that_cannot_be_used_is_named(pipe, audio, message):
    with pytest.raises(AudioError, match=message):
        pipe(GRACE_HOPPER, audio)


def test_a_float_wav_holding_nan_is_refused_by_name(tmp_path):
    path = tmp_path / "broken.wav"
    samples = load_audio(REAL_SPEECH)[:16000].copy()
    samples[100:110] = np.nan
    sf.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="broken.wav holds .* NaN or infinite samples"):
        load_audio(path)


# ------------------------------------------------------------------------------------------------- settings
BAD_SETTINGS = [
    (name, value)
    for name in ["head_motion_scale", "expression_scale", "blinks_per_minute", "breathing", "temperature",
                 "head_smoothing", "silence_threshold_db"]
    for value in [NAN, INF, -INF, -1.0 if name != "silence_threshold_db" else 10.0, "1"]
] + [("top_k", value) for value in [0, -3, 2.5, NAN, "15"]] + [("seed", value) for value in [1.5, NAN, "7", None]] + [
    ("num_threads", value) for value in [-1, 1.5, NAN, "2"]]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS, ids=[f"{n}={v!r}" for n, v in BAD_SETTINGS])
def test_a_bad_setting_is_named_before_any_work(pipe, name, value):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"^{name} must be"):
        pipe(GRACE_HOPPER, REAL_SPEECH, **{name: value})
    assert time.perf_counter() - start < 0.2, "checked before the photo and the speech are read"


@pytest.mark.parametrize("max_size", [0, 8, -512, 10**9, 256.5, True])
def test_max_size_out_of_range_is_named(pipe, max_size, speech):
    with pytest.raises(ValueError, match="max_size must be"):
        pipe(GRACE_HOPPER, speech[:8000], max_size=max_size)
    with pytest.raises(ValueError, match="max_size must be"):
        pipe.start_session(GRACE_HOPPER, max_size=max_size)


def test_any_integer_is_a_seed(pipe, speech):
    # Seeds are reduced modulo 2**64, the generator's range: huge and negative ones work, and -1 is 2**64 - 1.
    source = pipe.prepare_source(GRACE_HOPPER, max_size=128)

    def frames(seed: int) -> np.ndarray:
        return np.stack(pipe.start_session(source, seed=seed).push(speech[:9600]))  # the first slices' frames

    reference = frames(2**64 - 1)
    assert np.array_equal(frames(-1), reference)
    assert np.array_equal(frames(2**64 - 1 + 2**200), reference)
    assert not np.array_equal(frames(7), reference)


# ------------------------------------------------------------------------------------------------- streaming
def test_a_live_session_refuses_a_bad_chunk_and_goes_on(pipe, speech):
    source = pipe.prepare_source(GRACE_HOPPER, max_size=128)
    chunks = [(speech[k : k + 3200] * 32767).astype(np.int16) for k in range(0, 16000, 3200)]

    clean = pipe.start_session(source, seed=3)
    expected = [f for chunk in chunks for f in clean.push(chunk, 16000)] + clean.finish()

    session = pipe.start_session(source, seed=3)
    frames = []
    for k, chunk in enumerate(chunks):
        frames += session.push(chunk, 16000)
        if k == 1:
            with pytest.raises(AudioError, match="the audio chunk holds 3200 NaN or infinite samples"):
                session.push(np.full(3200, np.nan, np.float32), 16000)
    frames += session.finish()
    assert len(frames) == len(expected) == 25
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True)), "the bad chunk left no trace"


def test_the_live_tab_drops_a_bad_chunk_and_keeps_streaming(pipe, speech, caplog):
    app_live = pytest.importorskip("app_live")
    source = pipe.prepare_source(GRACE_HOPPER, max_size=128)
    chunks: queue.Queue = queue.Queue()
    mic = (speech[:16000] * 32767).astype(np.int16)
    chunks.put((16000, mic[:8000]))
    chunks.put((16000, np.full(1600, np.nan, np.float32)))  # a broken client's chunk
    chunks.put((16000, mic[8000:]))
    chunks.put(None)
    with caplog.at_level("WARNING", logger="teller.app"):
        out = list(app_live.live_frames(pipe, source, {}, chunks, seconds=30, idle_seconds=5))
    assert sum(len(frames) for frames, *_ in out) == 25, "the whole second of good speech was animated"
    assert sum(len(voice) for _, voice, *_ in out) == 16000 and all(np.isfinite(v).all() for _, v, *_ in out)
    assert "a microphone chunk was dropped" in caplog.text


# ---------------------------------------------------------------------------------------------------- memory
def test_an_in_memory_video_too_large_is_refused_before_any_work(pipe):
    # 600 s of speech (the pipeline's limit) at Grace Hopper's 512x600 would keep 13 GiB of frames.
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"15000 frames of 512x600 in memory \(12\.9 GiB\).*pass output_path="):
        pipe(GRACE_HOPPER, np.zeros(600 * 16000, np.float32))
    assert time.perf_counter() - start < 5.0


# ------------------------------------------------------------------------------------------------------- app
@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """`python app.py` as a visitor meets it, with its own temporary folder."""
    pytest.importorskip("gradio")
    temp = tmp_path_factory.mktemp("app_tmp")
    with serve_app(temp / "app.log", TMPDIR=str(temp)) as (url, process):
        yield url.rstrip("/"), temp, process


def test_the_app_shows_no_server_paths(served_app):
    import httpx

    url = served_app[0]
    for page in ["/config", "/gradio_api/info"]:
        text = httpx.get(url + page).text
        assert str(ROOT) not in text, f"{page} shows the checkout's path"
    assert "https://huggingface.co/" in httpx.get(f"{url}/config").text  # the Model card link


def test_the_app_explains_bad_photos_over_the_api(served_app, bad_photos):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(f"{served_app[0]}/", verbose=False)
    speech = gradio_client.handle_file(str(REAL_SPEECH))
    for name in ["notes.jpg", "empty.jpg", "clip.jpg", "bomb.png"]:
        expected = "This photo cannot be used: " + PHOTO_ERRORS[name]
        with pytest.raises(gradio_client.exceptions.AppError, match=expected) as error:
            client.predict(gradio_client.handle_file(str(bad_photos[name])), speech, 1.0, 1.0, 15, 0, 256,
                           api_name="/generate")
        assert "/" not in str(error.value), "no server path in the message"


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's chromium is not installed")
def test_the_page_explains_a_bad_photo(served_app, bad_photos):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{served_app[0]}/", wait_until="load")
            page.get_by_role("heading", name="Teller").wait_for(timeout=30_000)
            page.locator("input[type=file]").first.set_input_files(bad_photos["notes.jpg"])  # the Portrait
            page.locator("input[type=file]").nth(1).set_input_files(REAL_SPEECH)  # the Speech
            page.get_by_role("button", name="Animate").click()
            message = page.get_by_text("This photo cannot be used").first
            message.wait_for(timeout=30_000)
            assert message.inner_text().startswith(f"This photo cannot be used: {PHOTO_ERRORS['notes.jpg']}")
        finally:
            browser.close()


def test_the_app_animates_a_group_photo(served_app, group_photo, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from teller_pipeline.video import probe_media

    client = gradio_client.Client(f"{served_app[0]}/", verbose=False)
    speech = tmp_path / "speech.wav"
    sf.write(speech, load_audio(REAL_SPEECH)[:16000], 16000)
    video = client.predict(gradio_client.handle_file(str(group_photo)), gradio_client.handle_file(str(speech)),
                           1.0, 1.0, 15, 0, 512, api_name="/generate")
    info = probe_media(video["video"] if isinstance(video, dict) else video)
    assert (info["width"], info["height"], info["frame_count"]) == (512, 354, 25)


def test_the_app_caps_uploads(served_app, tmp_path):
    import httpx

    url = served_app[0]
    assert httpx.get(f"{url}/config").json()["max_file_size"] == 50 * 1024**2
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate(50 * 1024**2 + 1)
    with open(big, "rb") as f:
        response = httpx.post(f"{url}/gradio_api/upload", files={"files": ("huge.png", f, "image/png")}, timeout=60)
    assert response.status_code == 413


def test_the_app_leaves_no_temporary_files(served_app):
    # Run last: stops the app. The visitors' uploads and results (the tests above sent some) go with it; Gradio's
    # copies of the example files may stay.
    url, temp, process = served_app

    def gradio_files() -> set[str]:
        return {path.name for path in (temp / "gradio").rglob("*") if path.is_file()}

    assert any(temp.glob("teller-outputs-*")), "the app made its results folder here"
    assert {"group.jpg", "notes.jpg"} <= gradio_files(), "visitors' uploads are in Gradio's cache"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not any(temp.glob("teller-outputs-*"))
    assert gradio_files() <= {path.name for path in EXAMPLES.iterdir()}
