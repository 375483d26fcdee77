"""The Gradio app: the Generate endpoint through gradio_client, and the Live tab's streaming handlers (`app.live`,
an `app_live.LiveServer`) called directly (gradio_client cannot drive `.stream` events; the browser test covers them
end to end)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import gc
import socket
import tempfile
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from teller_pipeline.audio import load_audio
from teller_pipeline.video import probe_media

from .conftest import ASTRONAUT, GRACE_HOPPER, REAL_SPEECH

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

MIC_RATE = 48_000
CHUNK = MIC_RATE // 10  # Gradio's microphone sends 0.1 s chunks


@pytest.fixture(scope="module")
def app():
    import app as app_module

    return app_module


@pytest.fixture(scope="module")
def server(app) -> str:
    """The app served as `python app.py` serves it (with its queue limit and, where installed, the MCP server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(f"{server}/", verbose=False)


@pytest.fixture(scope="module")
def mic_speech() -> np.ndarray:
    """The real recording as a browser microphone sends it: 48 kHz int16."""
    speech = load_audio(REAL_SPEECH)
    upsampled = np.interp(np.arange(len(speech) * 3) / 3, np.arange(len(speech)), speech)
    return (upsampled * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def no_face(tmp_path_factory) -> str:
    landscape = np.zeros((240, 320, 3), np.uint8)
    landscape[:120] = (110, 160, 230)
    landscape[120:] = (60, 120, 40)
    path = tmp_path_factory.mktemp("photos") / "landscape.png"
    Image.fromarray(landscape).save(path)
    return str(path)


# ------------------------------------------------------------------------------------------------ Generate
def test_generate_endpoint_returns_mp4_with_video_and_speech(client, tmp_path):
    import soundfile as sf

    speech = load_audio(REAL_SPEECH)[: int(1.6 * 16000)]
    sf.write(tmp_path / "speech.wav", speech, 16000)
    handle = gradio_client.handle_file
    result = client.predict(handle(str(GRACE_HOPPER)), handle(str(tmp_path / "speech.wav")),
                            1.0, 1.0, 15, 0, 256, api_name="/generate")
    info = probe_media(result["video"] if isinstance(result, dict) else result)
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert info["frame_count"] == 40  # 1.6 s at 25 fps
    assert max(info["width"], info["height"]) == 256
    assert info["video_duration"] == pytest.approx(1.6, abs=0.01)
    assert info["audio_duration"] == pytest.approx(1.6, abs=0.05)


def test_generate_errors_are_plain_language(client, app, no_face, tmp_path, monkeypatch):
    handle = gradio_client.handle_file
    speech = handle(str(REAL_SPEECH))
    with pytest.raises(gradio_client.exceptions.AppError, match="No face was found in this photo"):
        client.predict(handle(no_face), speech, 1.0, 1.0, 15, 0, 256, api_name="/generate")
    broken = tmp_path / "voice.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(gradio_client.exceptions.AppError, match="This speech cannot be used: voice.wav"):
        client.predict(handle(str(ASTRONAUT)), handle(str(broken)), 1.0, 1.0, 15, 0, 256, api_name="/generate")
    with pytest.raises(gradio_client.exceptions.AppError, match="Please add a portrait"):
        client.predict(None, speech, 1.0, 1.0, 15, 0, 256, api_name="/generate")
    monkeypatch.setattr(app, "MAX_SPEECH_SECONDS", 2.0)  # the server runs in this process
    with pytest.raises(gradio_client.exceptions.AppError, match="too long: this demo animates up to 2 s"):
        client.predict(handle(str(ASTRONAUT)), speech, 1.0, 1.0, 15, 0, 256, api_name="/generate")


GENERATE_ARGUMENTS = ["portrait", "speech", "head_motion", "expression", "blinks_per_minute", "seed", "output_size"]


def test_generate_is_the_documented_api(server):
    # The API page shows the function's docstring; the Live tab's handlers are not an API.
    info = httpx.get(f"{server}/gradio_api/info").json()
    assert list(info["named_endpoints"]) == ["/generate"] and not info["unnamed_endpoints"]
    endpoint = info["named_endpoints"]["/generate"]
    assert endpoint["description"].startswith("Make a portrait photo speak: animate it with a speech recording")
    assert [parameter["parameter_name"] for parameter in endpoint["parameters"]] == GENERATE_ARGUMENTS


def test_generate_is_an_mcp_tool(server, tmp_path):
    import soundfile as sf

    mcp = pytest.importorskip("mcp")
    from mcp.client.streamable_http import streamable_http_client

    speech = tmp_path / "speech.wav"
    sf.write(speech, load_audio(REAL_SPEECH)[: int(1.2 * 16000)], 16000)

    def data_url(path, mime: str) -> str:
        # A remote assistant passes public URLs; Gradio refuses to fetch local addresses, and takes data URLs.
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    async def use_the_tool():
        async with streamable_http_client(f"{server}/gradio_api/mcp/") as (read, write, _):
            async with mcp.ClientSession(read, write) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                arguments = dict(portrait=data_url(ASTRONAUT, "image/png"), speech=data_url(speech, "audio/wav"),
                                 output_size=256)
                return tools, await session.call_tool("generate", arguments)

    tools, result = asyncio.run(use_the_tool())
    assert [tool.name for tool in tools] == ["generate"]
    assert tools[0].description.startswith("Make a portrait photo speak")
    properties = tools[0].inputSchema["properties"]
    assert list(properties) == GENERATE_ARGUMENTS
    assert all(properties[name].get("description") for name in GENERATE_ARGUMENTS)  # every argument explained
    assert not result.isError, result.content
    (video_url,) = [content.text for content in result.content if content.type == "text"]
    video = tmp_path / "talk.mp4"
    video.write_bytes(httpx.get(video_url).raise_for_status().content)
    info = probe_media(video)
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert info["frame_count"] == 30 and max(info["width"], info["height"]) == 256


def test_a_crowd_waits_in_a_bounded_queue(server, client, app, monkeypatch):
    # While the Generate slots are busy, QUEUE_SIZE requests wait their turn; the next one is turned away at once
    # instead of piling up work nobody will wait for.
    started, release = threading.Semaphore(0), threading.Event()

    def busy(*args):
        started.release()
        release.wait(60)
        raise gr.Error("released", print_exception=False)

    monkeypatch.setattr(app, "_animate", busy)  # the server runs in this process
    handle = gradio_client.handle_file
    request = (handle(str(ASTRONAUT)), handle(str(REAL_SPEECH)), 1.0, 1.0, 15, 0, 256)
    jobs = []
    try:
        jobs += [client.submit(*request, api_name="/generate") for _ in range(app.GENERATE_AT_ONCE)]
        for _ in jobs:
            assert started.acquire(timeout=30), "the first requests never started"
        jobs += [client.submit(*request, api_name="/generate") for _ in range(app.QUEUE_SIZE)]
        deadline = time.monotonic() + 60
        while httpx.get(f"{server}/gradio_api/queue/status").json()["queue_size"] < app.QUEUE_SIZE:
            assert time.monotonic() < deadline, "the waiting requests never reached the queue"
            time.sleep(0.1)
        turned_away = client.submit(*request, api_name="/generate")
        with pytest.raises(Exception, match="Queue is full"):
            turned_away.result(timeout=20)
    finally:
        release.set()
        for job in jobs:
            with contextlib.suppress(Exception):
                job.result(timeout=60)
    assert httpx.get(f"{server}/gradio_api/queue/status").json()["queue_size"] == 0


# ---------------------------------------------------------------------------------------------------- Live
class Visitor:
    """One browser session driving the Live handlers as Gradio would: the record button starts
    `live.session`, the page's microphone stream hands a chunk to the visitor's session
    (`live.sessions.push`) every 0.1 s, the stop button calls `live.stop`."""

    def __init__(self, app, name: str, portrait: str, size: int = 256):
        self.app, self.portrait, self.size = app, portrait, size
        self.request = gr.Request(session_hash=name)
        self.chunks: list[dict] = []  # the Live player's values, as the page receives them
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def speak(self, samples: np.ndarray, stop: bool = True, pace: float = 0.0) -> None:
        """Send the speech once the session is listening, then press stop (or not)."""
        deadline = time.monotonic() + 30
        while not self.app.live.sessions.is_live(self.request.session_hash):
            assert time.monotonic() < deadline, "the session never started listening"
            time.sleep(0.01)
        for start in range(0, len(samples), CHUNK):
            self.app.live.sessions.push(self.request.session_hash, (MIC_RATE, samples[start : start + CHUNK]))
            time.sleep(pace)
        if stop:
            self.app.live.stop(self.request)

    def run(self) -> None:
        """Wait in line for a turn (as the page does before it switches the microphone on), then run a session."""
        line, key = self.app.live.line, self.request.session_hash
        line.join(key)
        try:
            deadline = time.monotonic() + 60
            while line.turn(key).place != 0:
                assert time.monotonic() < deadline, "the turn never came"
                time.sleep(0.01)
            for chunk in self.app.live.session(self.portrait, 1.0, 1.0, 15, self.size, self.request):
                self.chunks.append(chunk)
        except BaseException as error:  # noqa: B036 (re-raised in the test's thread)
            self.error = error
        finally:
            line.leave(key)  # a page left open would hold the slot between sessions
        self.ended_at = time.monotonic()

    def talk(self, samples: np.ndarray, stop: bool = True, pace: float = 0.0) -> threading.Thread:
        listener = threading.Thread(target=self.run)
        listener.start()
        self.speak(samples, stop, pace)
        return listener

    def video(self) -> dict:
        """The stream the page received, joined and decoded as its player would."""
        with tempfile.NamedTemporaryFile(suffix=".mp4") as stream:
            stream.write(b"".join(base64.b64decode(chunk["data"]) for chunk in self.chunks))
            stream.flush()
            return probe_media(stream.name)

    @property
    def frames(self) -> int:
        """How long the video lasts, in frames at 25 fps (a session behind the speech repeats frames: they are
        encoded once, with a longer duration)."""
        return round(self.video()["video_duration"] * 25) if self.chunks else 0


def test_live_chunks_in_video_stream_out(app, mic_speech):
    visitor = Visitor(app, "live-basic", str(ASTRONAUT))
    speech = mic_speech[: int(1.2 * MIC_RATE)]
    visitor.talk(speech).join(60)
    assert visitor.error is None and visitor.ended_at is not None
    video = visitor.video()
    assert round(video["video_duration"] * 25) == 30  # 1.2 s of speech at 25 fps
    assert (video["video_codec"], video["audio_codec"]) == ("h264", "aac")
    assert (video["width"], video["height"]) == (256, 256)
    assert video["audio_duration"] == pytest.approx(1.2, abs=0.03)  # the visitor's voice, all of it
    assert video["video_pts_increasing"] and video["audio_pts_increasing"]
    # The player starts a new MediaSource for a new session id, and needs every chunk in order.
    assert len({chunk["session"] for chunk in visitor.chunks}) == 1
    assert [chunk["seq"] for chunk in visitor.chunks] == list(range(len(visitor.chunks)))
    assert all(chunk["mime"].startswith('video/mp4; codecs="avc1.') for chunk in visitor.chunks)
    assert [chunk["end"] for chunk in visitor.chunks] == [False] * (len(visitor.chunks) - 1) + [True]
    # What comes after Stop, the frames of the last words (the last 0.2 s wait for the end) and the stream's end, is
    # marked final: the player plays it all rather than skip ahead.
    finals = [chunk["final"] for chunk in visitor.chunks]
    assert finals == sorted(finals) and sum(finals) >= 2
    assert all(chunk["reason"] is None for chunk in visitor.chunks)  # Stop: the visitor knows why it ended
    assert not app.live.sessions.is_live("live-basic")


def test_a_live_session_behind_the_speech_halves_its_frame_rate_and_says_so(app, mic_speech):
    # Speech at the microphone's own pace: every frame is rendered. Two seconds of it at once (a server that could not
    # keep up, catching up): every other frame while behind, the page told so, and the video still covers it all.
    speech = mic_speech[: int(2.0 * MIC_RATE)]
    paced = Visitor(app, "live-paced", str(ASTRONAUT))
    paced.talk(speech, pace=CHUNK / MIC_RATE).join(60)
    behind = Visitor(app, "live-behind", str(ASTRONAUT))
    behind.talk(speech).join(60)
    for visitor in (paced, behind):
        assert visitor.error is None and visitor.frames == 50
    assert paced.video()["frame_count"] == 50 and not any(chunk["reduced"] for chunk in paced.chunks)
    assert behind.video()["frame_count"] < 35 and behind.chunks[0]["reduced"]


def test_live_voice_runs_ahead_of_the_frames_and_is_sent_once(app, mic_speech):
    # The first chunk of video is 5 frames (0.2 s); a browser waits for ~0.2 s of audio before playing, so the
    # chunk carries all the voice heard so far. Nothing is sent twice, and the final frames get silence.
    from app_live import VoiceTrack

    voice = VoiceTrack()
    voice.add(mic_speech[: int(0.45 * MIC_RATE)], MIC_RATE)
    first = voice.take(5)
    assert len(first) == int(0.45 * MIC_RATE)
    np.testing.assert_allclose(first, mic_speech[: len(first)] / 32768.0, atol=1e-6)
    assert len(voice.take(5)) == 0  # frames 5-9 are covered by what was already sent
    voice.add(mic_speech[len(first) : int(0.5 * MIC_RATE)], MIC_RATE)
    tail = voice.take(5)  # frames 10-14 end at 0.6 s; the speech at 0.5 s: 0.1 s of silence after it
    assert len(tail) == int(0.15 * MIC_RATE) and not tail[-int(0.1 * MIC_RATE) :].any()


def test_live_ends_on_idle_timeout_and_on_time_limit(app, mic_speech, monkeypatch):
    monkeypatch.setattr(app.live, "idle_seconds", 0.5)
    quiet = Visitor(app, "live-idle", str(ASTRONAUT))
    listener = quiet.talk(mic_speech[: int(1.2 * MIC_RATE)], stop=False)  # a tab that vanished: no stop
    listener.join(60)
    assert not listener.is_alive() and quiet.error is None
    assert quiet.frames == 30  # what it heard is still rendered to the end
    # The page says why the session ended (nobody pressed Stop).
    assert quiet.chunks[-1]["reason"] == "no sound reached the server for 0.5 s"

    monkeypatch.setattr(app.live, "seconds", 1.0)
    chatty = Visitor(app, "live-limit", str(ASTRONAUT))
    listener = chatty.talk(mic_speech, stop=False, pace=0.1)  # 3.1 s of speech in real time, never stopped
    sent_at = time.monotonic()
    listener.join(60)
    assert chatty.error is None and chatty.ended_at is not None
    assert chatty.ended_at < sent_at + 0.5  # the session ended at its limit, before the speech did
    assert 0 < chatty.frames < 25 * 3.1
    # From the limit on, the chunks say so (the page then stops the microphone), the last one too.
    assert chatty.chunks[-1]["reason"] == "the 1 s limit was reached" and chatty.chunks[-1]["end"]
    assert all(chunk["final"] for chunk in chatty.chunks if chunk["reason"])


def test_live_speech_heard_before_the_limit_is_all_animated(app, mic_speech):
    import queue

    from app_live import live_frames

    # A machine far behind the speech: 1.2 s of it still waiting when the time limit comes. It is animated all the
    # same, and nothing after it is waited for.
    chunks = queue.Queue()
    for start in range(0, int(1.2 * MIC_RATE), CHUNK):
        chunks.put((MIC_RATE, mic_speech[start : start + CHUNK]))
    prepared = app.pipe.prepare_source(str(ASTRONAUT), 256)
    started = time.monotonic()
    out = list(live_frames(app.pipe, prepared, {}, chunks, seconds=0.0, idle_seconds=5))
    assert sum(len(frames) for frames, *_ in out) == 30
    assert time.monotonic() - started < 5  # not the idle timeout


def test_live_bad_portrait_is_a_plain_error(app, no_face, tmp_path, mic_speech):
    request = gr.Request(session_hash="live-bad")
    with pytest.raises(gr.Error, match="No face was found"):
        app.live.analyse_portrait(no_face, 256, request)
    broken = tmp_path / "selfie.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(gr.Error, match="This photo cannot be used: selfie.jpg"):
        app.live.analyse_portrait(str(broken), 256, request)
    visitor = Visitor(app, "live-bad", no_face)
    visitor.talk(mic_speech[:CHUNK], stop=False).join(60)  # the mic started anyway: its chunk is dropped
    assert isinstance(visitor.error, gr.Error) and "No face" in visitor.error.message
    assert not app.live.sessions.is_live("live-bad")
    # Chunks from a visitor with no running session (queued, or after an error) are dropped quietly.
    app.live.sessions.push(request.session_hash, (MIC_RATE, mic_speech[:CHUNK]))


def test_portrait_is_analysed_once_per_visitor(app, mic_speech, monkeypatch):
    calls = []
    original = app.pipe.prepare_source
    monkeypatch.setattr(app.pipe, "prepare_source", lambda *a, **k: calls.append(a) or original(*a, **k))
    visitor = Visitor(app, "live-once", str(GRACE_HOPPER))
    assert "ready" in app.live.analyse_portrait(str(GRACE_HOPPER), 256, visitor.request)
    for _ in range(2):
        visitor.chunks = []
        visitor.talk(mic_speech[: int(1.0 * MIC_RATE)]).join(60)
        assert visitor.error is None and visitor.frames == 25
    assert len(calls) == 1


def test_two_visitors_are_isolated(app, mic_speech, monkeypatch):
    monkeypatch.setattr(app.live.line, "slots", 2)  # both at once
    alice = Visitor(app, "live-alice", str(ASTRONAUT))
    bob = Visitor(app, "live-bob", str(GRACE_HOPPER))
    listeners = [threading.Thread(target=v.run) for v in (alice, bob)]
    for listener in listeners:
        listener.start()
    # Alice speaks 1 s and stops; Bob goes on for 1.6 s and leaves (closes the tab) instead of stopping.
    talkers = [threading.Thread(target=alice.speak, args=(mic_speech[: int(1.0 * MIC_RATE)],)),
               threading.Thread(target=bob.speak, args=(mic_speech[: int(1.6 * MIC_RATE)], False))]
    for talker in talkers:
        talker.start()
    for talker in talkers:
        talker.join(60)
    app.live.visitor_left(bob.request)
    for listener in listeners:
        listener.join(60)
    assert alice.error is None and bob.error is None
    assert (alice.frames, bob.frames) == (25, 40)
    assert (alice.video()["width"], alice.video()["height"]) == (256, 256)
    assert (bob.video()["width"], bob.video()["height"]) == (218, 256)


def _server_rss_mb() -> float:
    """This process's resident memory (the app runs in it), after a garbage collection and `malloc_trim(0)`: without
    the trim, glibc keeps freed heap pages resident and the number tells more about the allocator than about what the
    app still holds."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_live_sessions_opened_and_closed_leave_memory_flat(app, mic_speech):
    # 20 visitors, one after another, each as a page does it: the portrait analysed when chosen, a session of 1.2 s of
    # speech at the page's default size, Stop, then the tab closed. What one visitor leaves behind would show x20.
    # (Through the page, Gradio's worker threads add what many malloc arenas keep: the slow browser test measures it.)
    speech = mic_speech[: int(1.2 * MIC_RATE)]

    def visit(name: str) -> None:
        visitor = Visitor(app, name, str(ASTRONAUT), size=app.LIVE_DEFAULT_SIZE)
        app.live.analyse_portrait(visitor.portrait, visitor.size, visitor.request)
        visitor.talk(speech).join(60)
        app.live.visitor_left(visitor.request)
        assert visitor.error is None and visitor.frames == 30

    visit("live-memory-warm-up")  # the first session's buffers and caches are paid once
    kept = app.live.sessions.visitors(), app.live.line.count()  # earlier tests' visitors share this app
    before = _server_rss_mb()
    for i in range(20):
        visit(f"live-memory-{i}")
    growth = _server_rss_mb() - before
    print(f"\nLive memory: {before:.0f} MB after a warm-up session, {growth:+.1f} MB after 20 more")
    # Nothing of theirs is kept (an analysed portrait is too small to show in the memory of 20 visitors).
    assert (app.live.sessions.visitors(), app.live.line.count()) == kept
    assert growth <= 50, f"20 live sessions left {growth:.1f} MB behind"


# ------------------------------------------------------------------------------------------------ the line
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_line_serves_visitors_in_arrival_order_and_says_how_long_at_most():
    from app_live import LiveLine

    clock = Clock()
    line = LiveLine(slots=1, session_seconds=60, reserve_seconds=20, finish_seconds=5, clock=clock)
    for key in "abc":
        line.join(key)
    assert [line.turn(key).place for key in "abc"] == [0, 1, 2]
    assert line.start("b") is None  # not b's turn: the session opener refuses it
    # a's turn is unused: it lasts 20 s from when b started waiting, then a session of at most 60 s + 5 s to finish.
    assert line.turn("b").seconds == 20 + 60 + 5
    assert line.turn("c").seconds == 20 + 60 + 5 + (20 + 60 + 5)
    assert line.turn("a").seconds == 20  # a is told the turn passes on
    clock.now += 10
    token = line.start("a")
    assert token is not None and line.turn("a").live and line.turn("a").recording
    assert line.turn("b").seconds == 60 + 5 and line.turn("c").seconds == 60 + 5 + 85
    clock.now += 30
    assert line.turn("b").seconds == 30 + 5
    line.stop("a")  # Stop: the slot is a's until the video of the last words is done
    assert line.turn("a") == line.turn("a").__class__(0, None, live=True, recording=False)
    assert line.start("b") is None
    line.end("a", token)
    # b's turn; a goes to the back of the line, behind c.
    assert [line.turn(key).place for key in "bca"] == [0, 1, 2]
    assert line.count() == (1, 2)


def test_an_unused_turn_passes_on_only_while_someone_waits():
    from app_live import LiveLine

    clock = Clock()
    line = LiveLine(slots=1, session_seconds=60, reserve_seconds=20, clock=clock)
    line.join("a")
    clock.now += 1000  # nobody waits: the turn stays a's
    assert line.turn("a").place == 0 and line.turn("a").seconds is None
    line.join("b")
    clock.now += 19.9
    assert line.turn("a").place == 0
    clock.now += 0.1
    assert (line.turn("a").place, line.turn("b").place) == (1, 0)
    # Sessions run one after another for the same visitor while nobody waits.
    line.leave("a")
    for _ in range(3):
        token = line.start("b")
        assert token is not None
        line.end("b", token)
        assert line.turn("b").place == 0


def test_a_visitor_leaving_frees_their_slot_once_their_session_is_done():
    from app_live import LiveLine

    clock = Clock()
    line = LiveLine(slots=2, session_seconds=60, clock=clock)
    for key in "abc":
        line.join(key)
    token = line.start("a")
    line.leave("a")  # the tab closed mid-session
    assert line.turn("a").place is None
    assert line.turn("c").place == 1  # the session still finishing holds the slot
    assert line.turn("c").seconds == 60 + line.finish_seconds  # c waits for a's session
    line.end("a", token)
    assert line.turn("c").place == 0 and line.count() == (2, 0)
    line.leave("b")
    line.leave("c")
    assert line.count() == (0, 0)
    line.leave("c")  # twice is harmless
    # Record again while the last session finishes: the older session's end frees nothing.
    line.join("d")
    first = line.start("d")
    second = line.start("d")
    line.end("d", first)
    assert line.turn("d").live
    line.end("d", second)
    assert line.turn("d").place == 0 and not line.turn("d").live


def _drain(chunks, seconds: float = 5.0) -> list:
    """What a session's chunk queue received, up to the end of its speech (None)."""
    import queue

    got = []
    with contextlib.suppress(queue.Empty):
        while not got or got[-1] is not None:
            got.append(chunks.get(timeout=seconds))
    return got


def _microphone_client(server):
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient

    import app_live

    return TestClient(Starlette(routes=[WebSocketRoute(app_live.MICROPHONE_ROUTE, server.microphone)]))


def test_the_pages_microphone_stream_reaches_the_session_whole_in_order_and_ends_its_speech():
    import json

    from starlette.websockets import WebSocketDisconnect

    import app_live

    server = app_live.LiveServer(None, None, seconds=60)
    client = _microphone_client(server)
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/teller/microphone/guessed") as ws:
        ws.receive_text()
    assert refused.value.code == 1008  # a token no page was given
    speech = (1000 * np.sin(np.arange(48_000) / 7)).astype(np.int16)
    block = 2400  # 0.05 s at 48 kHz, as the page sends
    with client.websocket_connect("/" + server.microphone_address("alice")) as ws:
        ws.send_bytes(b"\x01\x02")  # before the rate: not understood, dropped
        ws.send_text(json.dumps({"rate": 48_000}))
        ws.send_bytes(speech[:block].tobytes())  # the session is not listening yet: kept for it
        for broken in ("not json", json.dumps({"rate": 10**9}), json.dumps([1])):
            ws.send_text(broken)  # each dropped, the stream goes on
        ws.send_bytes(b"\x00")  # half a sample
        chunks = server.sessions.open("alice")
        for start in range(block, len(speech), block):
            ws.send_bytes(speech[start : start + block].tobytes())
        ws.send_text(json.dumps({"end": True}))
        assert ws.receive()["type"] == "websocket.close"  # all of it taken
    got = _drain(chunks)
    assert got[-1] is None, "the stream's end did not end the session's speech"
    assert {rate for rate, _ in got[:-1]} == {48_000}
    np.testing.assert_array_equal(np.concatenate([samples for _, samples in got[:-1]]), speech)
    assert not server.sessions.is_live("alice")
    # A page that sends faster than anyone speaks (a minute at once) has what runs ahead dropped.
    with client.websocket_connect("/" + server.microphone_address("alice")) as ws:
        ws.send_text(json.dumps({"rate": 16_000}))
        chunks = server.sessions.open("alice")
        ws.send_bytes(np.zeros(60 * 16_000, np.int16).tobytes())
        ws.send_bytes(np.zeros(16_000, np.int16).tobytes())
        ws.send_text(json.dumps({"end": True}))
        assert ws.receive()["type"] == "websocket.close"
    got = _drain(chunks)
    assert [len(samples) for _, samples in got[:-1]] == [16_000] and got[-1] is None


def test_stop_waits_for_the_microphone_streams_last_chunks_but_not_forever(monkeypatch):
    import json

    import app_live

    monkeypatch.setattr(app_live, "MICROPHONE_END_GRACE_SECONDS", 0.3)
    server = app_live.LiveServer(None, None, seconds=60)
    request = gr.Request(session_hash="bob")
    with _microphone_client(server).websocket_connect("/" + server.microphone_address("bob")) as ws:
        ws.send_text(json.dumps({"rate": 16_000}))
        chunks = server.sessions.open("bob")
        ws.send_bytes(np.zeros(800, np.int16).tobytes())
        assert chunks.get(timeout=1)[0] == 16_000  # the stream is open and feeding the session
        server.stop(request)  # Stop reached the server before the stream's last chunks and its end
        ws.send_bytes(np.ones(800, np.int16).tobytes())
        assert chunks.get(timeout=0.2)[1][0] == 1  # still taken
        assert server.sessions.is_live("bob")
        assert chunks.get(timeout=1) is None  # the stream's end never came: the speech ends anyway
        assert not server.sessions.is_live("bob")
    # Without a stream (an API client, a page whose stream failed) Stop ends the speech at once.
    chunks = server.sessions.open("bob")
    server.stop(request)
    assert _drain(chunks, 1.0) == [None]


def test_the_page_is_told_its_place_and_gets_the_microphone_on_its_turn(monkeypatch):
    import app_live

    monkeypatch.setattr(app_live, "LINE_POLL_SECONDS", 0.01)
    server = app_live.LiveServer(None, None, seconds=60, slots=1)
    alice, bob = gr.Request(session_hash="alice"), gr.Request(session_hash="bob")

    async def visit():
        pages = {name: server.follow_line(request) for name, request in [("alice", alice), ("bob", bob)]}
        views = {name: [] for name in pages}
        addresses = {}

        async def follow(name):
            async for message, mic, player in pages[name]:
                if "microphone" in player:  # first, before the line: where the page sends its microphone stream
                    addresses[name] = player["microphone"]
                    continue
                views[name].append((message, mic.get("interactive"), mic.get("label")))

        tasks = [asyncio.create_task(follow("alice"))]
        await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(follow("bob")))
        await asyncio.sleep(0.05)
        token = server.line.start("alice")
        await asyncio.sleep(0.05)
        server.stop(alice)
        await asyncio.sleep(0.05)
        server.line.end("alice", token)
        await asyncio.sleep(0.05)
        server.visitor_left(bob)
        server.visitor_left(alice)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)  # leaving ends each page's updates
        return views, addresses

    views, addresses = asyncio.run(visit())
    # Each page's microphone stream has an address of its own, without the session hash.
    assert addresses["alice"] != addresses["bob"] and all(
        a.startswith("teller/microphone/") and "alice" not in a and "bob" not in a for a in addresses.values())
    assert views["alice"][0] == ("**Your turn**: press **Record** and speak.", True, "Your voice")
    assert "Someone is waiting" in views["alice"][1][0]
    assert views["alice"][2][0].startswith("**Live**") and views["alice"][2][1] is None  # microphone untouched
    assert views["alice"][3] == ("Finishing the video of your last words…", False, "Your voice")
    assert views["alice"][4][1:] == (False, "Your voice: 1st in line, at most 1 min 25 s")
    waiting = views["bob"][0]
    assert "You are **1st** in line" in waiting[0] and "within **1 min 25 s**" in waiting[0]
    assert waiting[1:] == (False, "Your voice: 1st in line, at most 1 min 25 s")
    assert views["bob"][1][1:] == (False, "Your voice: 1st in line, at most 1 min 5 s")  # alice started
    assert views["bob"][-1] == ("**Your turn**: press **Record** and speak. Someone is waiting: the turn passes "
                                "to them in 20 s.", True, "Your voice")
    assert server.line.count() == (0, 0)


def test_a_session_without_a_turn_is_refused(app):
    # A stale page (its microphone on when the turn is not its own) cannot start a session beside the running ones.
    request = gr.Request(session_hash="live-no-turn")
    with pytest.raises(gr.Error, match="Please wait for your turn"):
        next(app.live.session(str(ASTRONAUT), 1.0, 1.0, 15, 256, request))
    assert not app.live.sessions.is_live("live-no-turn")
    assert app.live.line.turn("live-no-turn").place is None


# ------------------------------------------------------------------------------------------- the video socket
def _frames_per_chunk(prepared, controls, chunks, seconds, idle_seconds):
    """The model's stand-in for a live session: 5 flat 64 x 64 frames (0.2 s) and their silence per chunk of speech."""
    import app_live

    while (chunk := chunks.get(timeout=idle_seconds)) is not None:
        rate, samples = chunk
        yield app_live.FramesAndVoice([np.full((64, 64, 3), 100, np.uint8)] * 5, np.zeros(rate // 5, np.float32), rate)


def _video_server():
    """A `LiveServer` over `_frames_per_chunk` (no pipeline, no portrait to analyse), and a client of its two
    WebSocket routes."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient

    import app_live

    server = app_live.LiveServer(None, _frames_per_chunk, seconds=60)
    server.sessions.portrait = lambda key, path, size: None
    routes = [WebSocketRoute(app_live.MICROPHONE_ROUTE, server.microphone),
              WebSocketRoute(app_live.VIDEO_ROUTE, server.video)]
    return server, TestClient(Starlette(routes=routes))


def _start_session(server, key: str):
    """The Record button's session for a visitor whose turn it is (not started until its first value is asked for)."""
    server.line.join(key)
    return server.session("portrait.png", 1.0, 1.0, 15, 256, gr.Request(session_hash=key))


def _say(server, key: str, session, chunks: int = 1) -> list[dict]:
    """Hand the session `chunks` chunks of speech (0.2 s each), one at a time, and take the player's value each
    makes."""
    values = []
    for _ in range(chunks):
        def push():
            deadline = time.monotonic() + 10
            while not server.sessions.is_live(key) and time.monotonic() < deadline:
                time.sleep(0.01)
            server.sessions.push(key, (16_000, np.zeros(3200, np.int16)))

        pusher = threading.Thread(target=push)
        pusher.start()
        values.append(next(session))
        pusher.join()
    return values


def _stop(server, key: str, session) -> list[dict]:
    """Stop: the session's last values (the end of the stream)."""
    server.sessions.stop(key)
    return list(session)


def _video_chunk(message: bytes) -> tuple[dict, bytes]:
    """A video socket's message as the page reads it: (header, MP4 bytes)."""
    import json

    length = int.from_bytes(message[:4], "big")
    return json.loads(message[4 : 4 + length]), message[4 + length :]


def _probe(data: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as stream:
        stream.write(data)
        stream.flush()
        return probe_media(stream.name)


def test_the_live_video_comes_down_the_pages_socket_in_order_and_gradio_only_numbers_it():
    import json

    from starlette.websockets import WebSocketDisconnect

    server, client = _video_server()
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/teller/video/guessed") as ws:
        ws.receive_bytes()
    assert refused.value.code == 1008  # a token no page was given
    address = server.video_address("alice")
    # The page's one token serves both its sockets; it is not the session hash.
    assert address.startswith("teller/video/") and "alice" not in address
    assert address.split("/")[-1] == server.microphone_address("alice").split("/")[-1]
    with client.websocket_connect(f"/{address}?n=3") as ws:
        session = _start_session(server, "alice")
        values = _say(server, "alice", session, 4) + _stop(server, "alice", session)
        received = []
        for _ in values:
            received.append(_video_chunk(ws.receive_bytes()))
            ws.send_text(json.dumps({"received": len(received)}))
    # Through Gradio, each chunk's header and the socket it went down (3: the page's number for it), not the chunk.
    assert all("data" not in value and value["via"] == 3 for value in values)
    assert [value["seq"] for value in values] == list(range(len(values)))
    assert [header for header, _ in received] == [{k: v for k, v in value.items() if k != "via"} for value in values]
    assert len({header["session"] for header, _ in received}) == 1
    assert received[0][0]["mime"].startswith('video/mp4; codecs="avc1.')
    assert [header["end"] for header, _ in received] == [False] * 4 + [True]
    assert [header["final"] for header, _ in received][-1] and not received[0][0]["final"]
    video = _probe(b"".join(data for _, data in received))
    assert video["video_codec"] == "h264" and round(video["video_duration"] * 25) == 20  # 4 chunks of 5 frames
    assert video["video_pts_increasing"]


def test_without_a_video_socket_the_chunks_go_through_gradio_and_a_lost_socket_hands_them_back():
    server, client = _video_server()
    session = _start_session(server, "bob")
    values = _say(server, "bob", session, 2)  # no socket yet: the values carry the video
    with client.websocket_connect(f"/{server.video_address('bob')}?n=1") as ws:
        values += _say(server, "bob", session, 2)
        received = [_video_chunk(ws.receive_bytes()) for _ in range(2)]
    values += _say(server, "bob", session, 1) + _stop(server, "bob", session)  # the socket closed: Gradio again
    assert [value["seq"] for value in values] == list(range(6))
    assert ["data" in value for value in values] == [True, True, False, False, True, True]
    assert [value.get("via") for value in values] == [None, None, 1, 1, None, None]
    assert [header["seq"] for header, _ in received] == [2, 3]
    # Each chunk went one way only, and together they are the whole video.
    by_seq = {value["seq"]: base64.b64decode(value["data"]) for value in values if "data" in value}
    by_seq |= {header["seq"]: data for header, data in received}
    video = _probe(b"".join(by_seq[seq] for seq in sorted(by_seq)))
    assert round(video["video_duration"] * 25) == 25 and video["video_pts_increasing"]


def test_a_second_video_socket_of_the_page_replaces_the_first():
    server, client = _video_server()
    address = server.video_address("carol")
    with client.websocket_connect(f"/{address}?n=1") as first, client.websocket_connect(f"/{address}?n=2") as second:
        assert first.receive() == {"type": "websocket.close", "code": 4001, "reason": ""}  # replaced: not reopened
        session = _start_session(server, "carol")
        values = _say(server, "carol", session, 2) + _stop(server, "carol", session)
        assert [value["via"] for value in values] == [2, 2, 2]
        assert [_video_chunk(second.receive_bytes())[0]["seq"] for _ in values] == [0, 1, 2]
    # The visitor leaving closes their socket, and their token opens nothing any more.
    from starlette.websockets import WebSocketDisconnect

    with client.websocket_connect(f"/{address}?n=3") as ws:
        server.visitor_left(gr.Request(session_hash="carol"))
        assert ws.receive()["type"] == "websocket.close"
    with pytest.raises(WebSocketDisconnect), client.websocket_connect(f"/{address}?n=4") as ws:
        ws.receive_bytes()


def test_a_page_that_does_not_read_its_video_socket_is_cut_off_and_the_video_goes_through_gradio(
    monkeypatch, caplog
):
    import json

    import app_live

    server, client = _video_server()
    session = _start_session(server, "dan")
    first = _say(server, "dan", session, 1)  # the first chunk (with the stream's header) is the largest
    monkeypatch.setattr(app_live, "VIDEO_UNREAD_BYTES", 2000)
    with client.websocket_connect(f"/{server.video_address('dan')}?n=1") as ws:
        # A page that acknowledges what it received is never cut off.
        for received in range(1, 11):
            [value] = _say(server, "dan", session, 1)
            header, _ = _video_chunk(ws.receive_bytes())
            assert value["via"] == 1 and header["seq"] == value["seq"]
            ws.send_text(json.dumps({"received": received}))
        # One that stops reading: what it leaves unread stays under the limit, then its socket is closed.
        with caplog.at_level("WARNING", logger="teller.app"):
            values = _say(server, "dan", session, 30)
        sent = [value for value in values if "via" in value]
        assert sum(len(_video_chunk(ws.receive_bytes())[1]) for _ in sent) <= 2000
        assert ws.receive() == {"type": "websocket.close", "code": app_live.VIDEO_UNREAD, "reason": ""}
        assert 0 < len(sent) < 30 and all("data" in value for value in values[len(sent) :])
    values += _stop(server, "dan", session)
    assert [value["seq"] for value in first + values][-1] == 41
    assert sum("left" in record.message and "unread" in record.message for record in caplog.records) == 1
