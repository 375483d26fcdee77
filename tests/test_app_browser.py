"""The app in a real browser: Debian's chromium, driven by Playwright, with a speech file as its microphone.

Playwright never downloads a browser here: it is pointed at /usr/bin/chromium, and the tests skip without it.
Screenshots of both tabs go to $TELLER_SCREENSHOTS (default: pytest's temporary directory).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .serving import CHROMIUM, chromium_options, fake_microphone, rss_mb, serve_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
playwright_api = pytest.importorskip("playwright.sync_api")

# The live <video>: where playback is, and a 32x32 thumbnail of the frame on screen (to see it change).
VIDEO_STATE = """() => {
  const v = document.querySelector('#live-video video');
  if (!v) return null;
  let thumb = null;
  if (v.readyState >= 2 && v.videoWidth) {
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 32;
    const g = canvas.getContext('2d');
    g.drawImage(v, 0, 0, 32, 32);
    thumb = Array.from(g.getImageData(0, 0, 32, 32).data);
  }
  return {time: v.currentTime, paused: v.paused, width: v.videoWidth, thumb};
}"""


# Timestamps (performance.now) of the next click (Record), the microphone opening and the live video's first
# playing frame.
MARK_MIC_AND_FIRST_PLAY = """() => {
  window.__teller_marks = {};
  document.addEventListener('click', () => { window.__teller_marks.click = performance.now(); },
                            {capture: true, once: true});
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await open(constraints);
    window.__teller_marks.mic = window.__teller_marks.mic || performance.now();
    return stream;
  };
  const watch = setInterval(() => {
    const v = document.querySelector('#live-video video');
    if (v && v.currentTime > 0) { window.__teller_marks.play = performance.now(); clearInterval(watch); }
  }, 5);
}"""


@pytest.fixture(scope="module")
def server():
    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options())
    try:
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(**chromium_options(fake_microphone(tmp_path_factory.mktemp("mic"))))
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["microphone"])
    page = context.new_page()
    page.teller_console = []  # the live player's own warnings and errors (it prefixes them with "teller:")
    page.on("console", lambda message: message.text.startswith("teller:") and page.teller_console.append(message.text))
    page.goto(server[1], wait_until="load")  # "networkidle" never comes: Gradio keeps a stream open
    page.get_by_role("heading", name="Teller").wait_for(timeout=30_000)
    yield page
    context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("TELLER_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shown(page, text: str):
    """The first visible element with this text (a quoted text matches exactly); the hidden tab has its own."""
    return page.locator(f"text={text} >> visible=true").first


def _not_blank(path: Path, box: dict | None = None) -> None:
    """The screenshot (or the part of it in `box`) shows something, not one flat colour."""
    image = Image.open(path).convert("L")
    if box is not None:
        image = image.crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
    assert np.asarray(image, np.float32).std() > 20, f"{path.name} looks blank"


def test_generate_tab_shows_inputs_controls_examples_and_notes(page, screenshots):
    for element in [page.get_by_role("tab", name="Generate"), page.get_by_role("tab", name="Live"),
                    page.get_by_text("Make a portrait photo speak"), page.get_by_role("link", name="Model card"),
                    _shown(page, '"Portrait"'), _shown(page, '"Speech"'), page.get_by_role("button", name="Animate"),
                    _shown(page, "Examples (real recordings"), _shown(page, "arctic_a0009.wav"),
                    page.get_by_text("Use it responsibly"), page.get_by_text("impersonate", exact=False)]:
        element.wait_for(state="visible", timeout=5_000)
    _shown(page, '"Settings"').click()
    for label in ["Head motion", "Expression", "Blinks per minute", "Seed", "Output size"]:
        _shown(page, f'"{label}"').wait_for(state="visible", timeout=5_000)
    path = screenshots / "generate_tab.png"
    page.screenshot(path=path, full_page=True)
    _not_blank(path)


def test_live_tab_plays_the_talking_portrait_while_speech_plays(page, server, screenshots):
    app = server[0]
    page.get_by_role("tab", name="Live").click()
    page.locator("#live-video").wait_for(state="visible")
    page.get_by_role("button", name="Record").wait_for(state="visible")
    page.locator(".gallery button, button.gallery-item").first.click()  # the astronaut, from the examples
    page.get_by_text("Portrait ready").wait_for(timeout=30_000)

    page.evaluate(MARK_MIC_AND_FIRST_PLAY)
    page.get_by_role("button", name="Record").click()
    recording_started = time.monotonic()
    first_play = None
    samples = []
    while time.monotonic() - recording_started < 30:
        state = page.evaluate(VIDEO_STATE)
        if state and state["time"] > 0:
            first_play = first_play or time.monotonic() - recording_started
            if state["thumb"]:
                samples.append((state["time"], np.array(state["thumb"], np.float32)))
            if state["time"] > 2.5:
                break
        time.sleep(0.1)
    assert first_play is not None, "the live video never started playing"
    marks = page.evaluate("() => window.__teller_marks")
    # The fake microphone starts playing the speech when the browser opens it, so the second number is the
    # delay from speaking to seeing it; the first adds the browser's start of recording.
    print(f"\nLive tab: the video started playing {(marks['play'] - marks['click']) / 1000:.2f} s after Record was "
          f"pressed, {(marks['play'] - marks['mic']) / 1000:.2f} s after the microphone opened")
    assert samples[-1][0] - samples[0][0] > 1.0, "the live video did not keep playing"
    assert page.teller_console == []  # every chunk arrived, in order, and the MediaSource took it
    # The face moves: thumbnails taken at different playback times differ.
    changes = [np.abs(b - a).mean() for (ta, a), (tb, b) in zip(samples, samples[1:], strict=False) if tb > ta]
    assert max(changes) > 0.3, f"the live video's frames did not change ({max(changes):.2f})"

    path = screenshots / "live_tab.png"
    page.screenshot(path=path, full_page=True)
    _not_blank(path, page.locator("#live-video").bounding_box())
    assert page.get_by_role("button", name="Stop").is_visible()
    assert app.live.sessions.count() == 1

    page.get_by_role("button", name="Stop").click()
    deadline = time.monotonic() + 20
    while app.live.sessions.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.live.sessions.count() == 0, "stopping the recording did not end the session"


def test_closing_the_tab_ends_the_live_session(page, server):
    app = server[0]
    page.get_by_role("tab", name="Live").click()
    page.locator(".gallery button, button.gallery-item").nth(1).click()  # Grace Hopper
    page.get_by_text("Portrait ready").wait_for(timeout=30_000)
    page.get_by_role("button", name="Record").click()
    deadline = time.monotonic() + 20
    while not app.live.sessions.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.live.sessions.count() == 1
    page.close()  # no stop: the visitor just leaves
    deadline = time.monotonic() + app.live.idle_seconds + 15
    while app.live.sessions.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.live.sessions.count() == 0, "the session outlived its visitor"



def test_stop_plays_the_live_video_to_its_end_then_says_the_session_ended(page, server, screenshots):
    app = server[0]
    heard = []  # seconds of each microphone chunk the session took
    take = app.live.sessions.push

    def counting_push(key, chunk):
        taken = take(key, chunk)
        if taken:
            heard.append(len(chunk[1]) / chunk[0])
        return taken

    app.live.sessions.push = counting_push
    try:
        page.get_by_role("tab", name="Live").click()
        page.locator(".gallery button, button.gallery-item").first.click()  # the astronaut
        page.get_by_text("Portrait ready").wait_for(timeout=30_000)
        page.get_by_role("button", name="Record").click()
        page.wait_for_function("() => document.querySelector('#live-video video').currentTime > 4", timeout=30_000)
        # Skips after Stop (the player jumping ahead to keep up) would leave the last words unseen.
        page.evaluate("""() => { window.__teller_skips = 0; document.querySelector('#live-video video')
                         .addEventListener('seeking', () => { window.__teller_skips += 1; }); }""")
        page.get_by_role("button", name="Stop").click()
        stopped = page.evaluate(VIDEO_STATE)["time"]
        # The video of the last words plays out to the end of the stream.
        page.wait_for_function("() => document.querySelector('#live-video video').ended", timeout=30_000)
    finally:
        app.live.sessions.push = take
    played = page.evaluate("() => document.querySelector('#live-video video').currentTime")
    speech = sum(heard)
    print(f"\nStop: speech sent {speech:.2f} s, the video played to {played:.2f} s (at Stop it was at {stopped:.2f} s)")
    assert abs(played - speech) <= 0.3, f"the video ended at {played:.2f} s for {speech:.2f} s of speech"
    assert page.evaluate("() => window.__teller_skips") == 0, "the player skipped part of the last words"
    _shown(page, "Session ended").wait_for(state="visible", timeout=5_000)
    assert page.locator("#live-video .teller-live-label").inner_text() == "Ended"
    page.locator("#live-video").screenshot(path=screenshots / "live_session_ended.png")
    assert page.teller_console == []  # every chunk arrived, in order, and the MediaSource took it


# Keep the page's WebSockets reachable (window.__teller_sockets), and keep its video socket from reopening until
# window.__teller_video_blocked_until (it is pointed at a closed port meanwhile, as when a network is down); keep
# every piece of video the player appends (window.__teller_appended).
DROP_THE_VIDEO_SOCKET = """() => {
  window.__teller_sockets = [];
  window.__teller_video_blocked_until = 0;
  const Socket = window.WebSocket;
  window.WebSocket = class extends Socket {
    constructor(url, ...rest) {
      const blocked = String(url).includes('/teller/video/') && Date.now() < window.__teller_video_blocked_until;
      super(blocked ? 'ws://127.0.0.1:9/' : url, ...rest);
      window.__teller_sockets.push(this);
    }
  };
  window.__teller_appended = [];
  const append = SourceBuffer.prototype.appendBuffer;
  SourceBuffer.prototype.appendBuffer = function (data) {
    window.__teller_appended.push(new Uint8Array(data));
    return append.call(this, data);
  };
}"""
APPENDED_AS_BASE64 = """() => {
  let text = '';
  for (const part of window.__teller_appended)
    for (let i = 0; i < part.length; i += 0x8000) text += String.fromCharCode.apply(null, part.subarray(i, i + 0x8000));
  return btoa(text);
}"""


def test_the_live_video_goes_on_when_the_pages_video_socket_drops(page, server, monkeypatch, tmp_path):
    # The page's video socket drops mid-session and stays down for a while: the chunks come through Gradio meanwhile,
    # then down the socket the page opened again; the player appends each once, in order, and plays to the end.
    import base64

    from teller_pipeline.video import probe_media

    app = server[0]
    ways = []  # per chunk: the number of the socket it went down, or None (through Gradio), and its size
    deliver = app.live._deliver

    def logged_deliver(key, chunk, data):
        value = deliver(key, chunk, data)
        ways.append((value.get("via"), len(data)))
        return value

    monkeypatch.setattr(app.live, "_deliver", logged_deliver)
    page.evaluate(DROP_THE_VIDEO_SOCKET)  # before the Live tab opens the video socket
    page.get_by_role("tab", name="Live").click()
    page.locator(".gallery button, button.gallery-item").first.click()  # the astronaut
    page.get_by_text("Portrait ready").wait_for(timeout=30_000)
    page.get_by_role("button", name="Record").click()
    page.wait_for_function("() => document.querySelector('#live-video video').currentTime > 1.5", timeout=30_000)
    page.evaluate("""() => {
      window.__teller_video_blocked_until = Date.now() + 1500;
      window.__teller_sockets.filter((s) => s.url.includes('/teller/video/')).forEach((s) => s.close());
    }""")
    page.wait_for_function("() => document.querySelector('#live-video video').currentTime > 6", timeout=30_000)
    page.get_by_role("button", name="Stop").click()
    page.wait_for_function("() => document.querySelector('#live-video video').ended", timeout=30_000)
    _shown(page, "Session ended").wait_for(state="visible", timeout=5_000)
    stream = base64.b64decode(page.evaluate(APPENDED_AS_BASE64))
    sockets = [via for via, _ in ways]
    print(f"\nVideo socket dropped: chunks went {sockets}")
    # Down the first socket, through Gradio while it was down, then down another.
    first_gradio, reopened = sockets.index(None), next(i for i, via in enumerate(sockets) if via not in (1, None))
    assert set(sockets[:first_gradio]) == {1} and set(sockets[first_gradio:reopened]) == {None}
    assert len(set(sockets[reopened:])) == 1
    # A chunk already on its way down the dropped socket is lost (the page says so and plays on); nothing else.
    lost = [text for text in page.teller_console if "never arrived" in text]
    assert len(lost) == len(page.teller_console) <= 1, page.teller_console
    assert page.evaluate("() => window.__teller_appended.length") == sum(size > 0 for _, size in ways) - len(lost)
    (tmp_path / "appended.mp4").write_bytes(stream)
    video = probe_media(tmp_path / "appended.mp4")
    assert video["video_pts_increasing"] and video["audio_pts_increasing"], video


def _live_visitor(browser, server):
    """A second (third...) visitor: their own browser context, so their own Gradio session, on the Live tab."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["microphone"])
    page = context.new_page()
    page.goto(server[1], wait_until="load")
    page.get_by_role("tab", name="Live").click()
    page.locator(".gallery button, button.gallery-item").first.click()  # the astronaut
    page.get_by_text("Portrait ready").wait_for(timeout=30_000)
    return page


class LiveLog:
    """What the server saw, by visitor: when each joined the line, each microphone chunk handed to a session (when,
    whether a running session took it, its seconds), each session's end."""

    def __init__(self, app, monkeypatch):
        self.joined, self.chunks, self.started, self.ended = [], {}, {}, {}
        line, sessions = app.live.line, app.live.sessions
        join, push, start, end = line.join, sessions.push, line.start, line.end

        def logged_join(key):
            self.joined.append(key)
            join(key)

        def logged_push(key, chunk):
            taken = push(key, chunk)
            self.chunks.setdefault(key, []).append((time.monotonic(), taken, len(chunk[1]) / chunk[0]))
            return taken

        def logged_start(key):
            self.started.setdefault(key, []).append(time.monotonic())
            return start(key)

        def logged_end(key, token):
            end(key, token)
            self.ended.setdefault(key, []).append(time.monotonic())

        monkeypatch.setattr(line, "join", logged_join)
        monkeypatch.setattr(sessions, "push", logged_push)
        monkeypatch.setattr(line, "start", logged_start)
        monkeypatch.setattr(line, "end", logged_end)

    def dropped(self, key) -> int:
        return sum(not taken for _, taken, _ in self.chunks.get(key, []))


def _wait_shown(page) -> float:
    """The longest wait the visitor is told, in seconds."""
    import re

    shown = re.search(r"within (?:(\d+) min)? ?(?:(\d+) s)?", page.locator("#live-line").inner_text())
    return 60 * int(shown[1] or 0) + int(shown[2] or 0)


def _video_time(page) -> float:
    return page.evaluate("() => document.querySelector('#live-video video').currentTime")


def test_a_second_visitor_waits_with_the_microphone_off_and_is_served_when_the_slot_frees(
    browser, server, screenshots, monkeypatch
):
    app = server[0]
    assert app.live.line.slots == 1  # the CPU default
    _wait_for_an_empty_line(app)  # the last test's visitor left
    log = LiveLog(app, monkeypatch)
    alice = _live_visitor(browser, server)
    record_alice = alice.get_by_role("button", name="Record")
    record_alice.wait_for(timeout=10_000)
    bob = _live_visitor(browser, server)
    alice_key, bob_key = log.joined

    # Bob sees that he waits, and how long at most, before he could say anything: his microphone is off.
    _shown(bob, "You are 1st in line").wait_for(timeout=10_000)
    assert "Please wait: the live demo is busy" in bob.locator("#live-line").inner_text()
    assert "1st in line, at most" in bob.locator("#live-mic").inner_text()
    assert bob.get_by_role("button", name="Record").count() == 0
    bob.screenshot(path=screenshots / "live_waiting.png", full_page=True)
    assert "Someone is waiting" in alice.locator("#live-line").inner_text()

    record_alice.click()
    alice.wait_for_function("() => document.querySelector('#live-video video').currentTime > 2", timeout=30_000)
    # At most: the rest of her session's 60 s, and 5 s to finish its video.
    assert 40 <= _wait_shown(bob) <= 65
    assert bob.get_by_role("button", name="Record").count() == 0
    alice.get_by_role("button", name="Stop").click()

    # Alice's session finishes the video of her last words, then Bob's microphone comes on; Alice goes behind him.
    bob.get_by_role("button", name="Record").wait_for(timeout=30_000)
    turn_shown = time.monotonic()
    alice_ended = log.ended[alice_key][0]
    _shown(alice, "You are 1st in line").wait_for(timeout=5_000)
    assert alice.get_by_role("button", name="Record").count() == 0
    print(f"\nLine: Bob's Record button appeared {turn_shown - alice_ended:.2f} s after Alice's session ended")
    assert turn_shown - alice_ended < 2.0

    bob.get_by_role("button", name="Record").click()
    bob.wait_for_function("() => document.querySelector('#live-video video').currentTime > 1", timeout=30_000)
    # Nothing Bob said was taken before his turn (his microphone was off), nor thrown away after it.
    assert all(at > alice_ended for at, *_ in log.chunks[bob_key])
    assert log.dropped(bob_key) == 0, f"{log.dropped(bob_key)} of Bob's chunks were dropped"

    # Bob closes his tab mid-session: the slot is not lost, Alice's turn comes.
    bob.context.close()
    alice.get_by_role("button", name="Record").wait_for(timeout=(app.live.idle_seconds + 15) * 1000)
    assert app.live.line.count() == (1, 0) and app.live.sessions.count() == 0
    assert app.live.line.turn(bob_key).place is None
    alice.context.close()
    _wait_for_an_empty_line(app)


def _wait_for_an_empty_line(app) -> None:
    """Visitors who closed their page leave the line (when the server hears of it, and once their session is done)."""
    deadline = time.monotonic() + app.live.idle_seconds + 15
    while app.live.line.count() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.live.line.count() == (0, 0), "a visitor who left still holds a place"


# When the page sends each piece of speech on its microphone WebSocket (wall-clock seconds).
LOG_MICROPHONE_SENDS = """() => {
  window.__teller_sends = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (data instanceof ArrayBuffer) window.__teller_sends.push(Date.now() / 1000);
    return send.call(this, data);
  };
}"""


def test_a_session_at_its_time_limit_stops_the_microphone_and_says_why(page, server, monkeypatch):
    app = server[0]
    log = LiveLog(app, monkeypatch)
    monkeypatch.setattr(app.live, "seconds", 3.0)
    page.get_by_role("tab", name="Live").click()
    page.locator(".gallery button, button.gallery-item").first.click()  # the astronaut
    page.get_by_text("Portrait ready").wait_for(timeout=30_000)
    page.evaluate(LOG_MICROPHONE_SENDS)
    page.get_by_role("button", name="Record").click()
    _shown(page, "Session ended: the 3 s limit was reached.").wait_for(state="visible", timeout=30_000)
    # The page stopped its microphone: Record is back, and little speech came after the session stopped listening.
    page.get_by_role("button", name="Record").wait_for(timeout=5_000)
    [key] = log.joined
    limit = log.started[key][0] + 3.0
    heard = sum(seconds for at, taken, seconds in log.chunks[key] if taken and at <= limit)
    late = sum(seconds for at, taken, seconds in log.chunks[key] if taken and at > limit)
    played = _video_time(page)
    time.sleep(0.5)
    last_send = max(page.evaluate("() => window.__teller_sends")) - (time.time() - time.monotonic())
    print(f"\nTime limit: {heard:.1f} s of speech came before the limit, the video played to {played:.2f} s; "
          f"the page sent its last speech {last_send - limit:.2f} s after the limit")
    assert last_send - limit < 2.0, "the microphone went on recording after the session ended"
    # All speech heard before the limit is animated, even what the machine had not reached by then (and a little
    # after the limit: the session's own clock starts a moment after this one).
    assert heard - 0.05 <= played <= heard + late + 0.05
    assert page.teller_console == []


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """`python app.py` in a process of its own, as a server runs it (its memory is measured alone)."""
    with serve_app(tmp_path_factory.mktemp("served_app") / "app.log") as served:
        yield served


@pytest.mark.slow
def test_live_sessions_through_the_page_leave_the_servers_memory_flat(browser, served_app):
    # 21 visitors one after another, each in a browser context of their own: open the page, pick the astronaut, speak
    # 3 s, Stop, watch the video to its end, close the tab. The server (`python app.py`, nothing else in its process)
    # may not keep what a visitor leaves behind: over 20 sessions after the first, at most 50 MB.
    url, process = served_app
    rss = [rss_mb(process.pid)]
    started = time.monotonic()
    for _ in range(21):
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["microphone"])
        page = context.new_page()
        page.goto(url, wait_until="load")
        page.get_by_role("tab", name="Live").click()
        page.locator(".gallery button, button.gallery-item").first.click()
        page.get_by_text("Portrait ready").wait_for(timeout=30_000)
        # The last visitor's session may still be finishing: their slot frees when it is done.
        page.get_by_role("button", name="Record").click(timeout=30_000)
        page.wait_for_function("() => document.querySelector('#live-video video').currentTime > 3", timeout=60_000)
        page.get_by_role("button", name="Stop").click()
        page.wait_for_function("() => document.querySelector('#live-video video').ended", timeout=60_000)
        context.close()
        time.sleep(2)  # the server hears that the tab closed
        rss.append(rss_mb(process.pid))
    growth = rss[-1] - rss[1]
    print(f"\nLive memory through the page: server RSS {rss[0]:.0f} MB at start, {rss[1]:.0f} MB after a first "
          f"session, {rss[-1]:.0f} MB after 20 more ({growth:+.1f} MB, {time.monotonic() - started:.0f} s); "
          "after each: " + " ".join(f"{value:.0f}" for value in rss[1:]))
    assert growth <= 50, f"20 live sessions through the page left {growth:.1f} MB behind"


# Every 50 ms, from the microphone opening on: (wall-clock seconds, playback time, end of the video received),
# and the player's label.
LOG_PLAYBACK = """() => {
  window.__teller_playback = [];
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await open(constraints);
    if (window.__teller_skips !== undefined) return stream;  // opened by Gradio, then by the page
    const v = document.querySelector('#live-video video');
    window.__teller_skips = 0;
    window.__teller_sent = 0;  // microphone chunks the page sent (binary messages on its microphone WebSocket)
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
      if (data instanceof ArrayBuffer) window.__teller_sent += 1;
      return send.call(this, data);
    };
    v.addEventListener('seeking', () => { window.__teller_skips += 1; });
    window.__teller_appends = [];  // when each chunk of video was handed to the player's SourceBuffer
    const append = SourceBuffer.prototype.appendBuffer;
    SourceBuffer.prototype.appendBuffer = function (data) {
      window.__teller_appends.push(Date.now() / 1000);
      return append.call(this, data);
    };
    const label = document.querySelector('#live-video .teller-live-label');
    window.__teller_labels = new Set();
    setInterval(() => {
      const buffered = v.buffered.length ? v.buffered.end(v.buffered.length - 1) : 0;
      window.__teller_playback.push([Date.now() / 1000, v.currentTime, buffered]);
      window.__teller_labels.add(label.textContent);
    }, 50);
    return stream;
  };
}"""


@contextlib.contextmanager
def _busy_process(seconds: float):
    """One other process keeping a core busy (as on a shared Space), for at most `seconds`."""
    import subprocess
    import sys

    busy = subprocess.Popen([sys.executable, "-c", f"import time\nend = time.time() + {seconds}\n"
                             "while time.time() < end: pass"])
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


_UNDER_LOAD: dict = {}


def _live_under_load(page, server, monkeypatch) -> dict:
    """A shared machine: one other process keeps a core busy (and the browser shares the server's two cores) while a
    visitor speaks for 12 s. What the page played and the server got, measured once for the tests below."""
    if _UNDER_LOAD:
        return _UNDER_LOAD
    app = server[0]
    heard = []  # (wall-clock time a microphone chunk reached the server, seconds of speech up to its end)
    made = []  # (wall-clock time a batch of frames was ready, seconds of video up to its end, at a reduced rate)
    take, frames = app.live.sessions.push, app.live.frames

    def timed_push(key, chunk):
        taken = take(key, chunk)
        if taken:
            heard.append((time.time(), (heard[-1][1] if heard else 0.0) + len(chunk[1]) / chunk[0]))
        return taken

    def timed_frames(*args):
        for batch in frames(*args):
            made.append((time.time(), (made[-1][1] if made else 0.0) + len(batch.frames) / 25, batch.reduced))
            yield batch

    import app_live

    handed_over = []  # wall-clock time each chunk of video was handed over to be sent (one per batch of frames)
    player_chunk = app_live._player_chunk
    socket_sent = []  # per chunk: whether it went down the page's video socket (else through Gradio)
    deliver = app.live._deliver

    def timed_player_chunk(*args, **kwargs):
        handed_over.append(time.time())
        return player_chunk(*args, **kwargs)

    def counted_deliver(*args):
        value = deliver(*args)
        socket_sent.append("via" in value)
        return value

    from teller_pipeline.streaming import TellerSession

    held = []  # frames a session far behind held instead of animating (TellerSession.skip)
    skip = TellerSession.skip

    def counted_skip(session, *args):
        frames = skip(session, *args)
        held.append(len(frames))
        return frames

    monkeypatch.setattr(app.live.sessions, "push", timed_push)
    monkeypatch.setattr(app.live, "frames", timed_frames)
    monkeypatch.setattr(app_live, "_player_chunk", timed_player_chunk)
    monkeypatch.setattr(app.live, "_deliver", counted_deliver)
    monkeypatch.setattr(TellerSession, "skip", counted_skip)
    page.get_by_role("tab", name="Live").click()
    page.locator(".gallery button, button.gallery-item").first.click()  # the astronaut
    page.get_by_text("Portrait ready").wait_for(timeout=30_000)
    page.evaluate(LOG_PLAYBACK)
    with _busy_process(40):
        page.get_by_role("button", name="Record").click()
        page.wait_for_function("() => window.__teller_playback.length > 12 * 20", timeout=30_000)
        log = np.array(page.evaluate("() => window.__teller_playback"), np.float64)
        appended = np.array(page.evaluate("() => window.__teller_appends"), np.float64)
        page.get_by_role("button", name="Stop").click()
        time.sleep(1.0)  # the microphone's last chunks, sent before and at Stop, reach the server
    chunks_in, video_out = np.array(heard[:]), np.array(made[:])  # (the session goes on a little after Stop)
    # When the speech's first sample was spoken: its chunks reach the server 0.05 s apart as they are recorded, plus
    # a delay that only adds, so the earliest (arrival - speech up to the chunk's end) is the closest estimate.
    spoken = np.min(chunks_in[:, 0] - chunks_in[:, 1])
    wall, played, received = log[:, 0], log[:, 1], log[:, 2]
    playing = np.flatnonzero(played > 0)
    assert len(playing), "the live video never started"
    first = wall[playing[0]] - spoken
    behind = (wall - spoken - played)[wall - spoken >= first + 1.0]
    # Stand-stills: the longest stretch over which playback did not move, from the first frame on.
    moved = wall[playing][np.flatnonzero(np.diff(played[playing]) > 0) + 1]
    longest_freeze = np.max(np.diff(np.concatenate([[wall[playing[0]]], moved, [wall[-1]]])))
    sent = page.evaluate("() => window.__teller_sent")
    arrive = np.median(chunks_in[:, 0] - spoken - chunks_in[:, 1])
    ready = np.median(video_out[:, 0] - spoken - video_out[:, 1])
    count = min(len(handed_over), len(video_out))
    handed = np.median(np.array(handed_over[:count]) - spoken - video_out[:count, 1])
    in_page = np.median((wall - spoken - received)[wall - spoken >= first + 1.0])
    count = min(len(handed_over), len(appended))  # each chunk appended once, in order
    transit = appended[:count] - np.array(handed_over[:count])
    print(f"\nLive beside a busy process: the page sent {sent} microphone chunks, the session got {len(chunks_in)}; "
          f"first video {first:.2f} s after the speech began; behind the speech {np.median(behind):.2f} s median, "
          f"{np.max(behind):.2f} s at most (from the first second of video on); longest stand-still "
          f"{longest_freeze:.2f} s; {page.evaluate('() => window.__teller_skips')} skips; "
          f"{np.mean(video_out[:, 2]):.0%} of the video at a reduced frame rate, {sum(held) / 25:.2f} s of it held "
          f"while catching up. Of that delay, median: the "
          f"microphone's chunks reach the server {arrive:.2f} s after they were spoken, the frames of a slice are "
          f"ready {ready:.2f} s after its end (the slice itself adds 0.2 s to its first frame) and encoded and handed "
          f"over {handed:.2f} s after it; the page has the video {in_page:.2f} s behind the speech "
          f"({sum(socket_sent)} of {len(socket_sent)} chunks came down the page's video socket, the others through "
          f"Gradio); a chunk reached the player {np.median(transit):.2f} s after it was handed over (median; "
          f"{np.max(transit):.2f} s at most)")
    _UNDER_LOAD.update(first=first, behind=behind, freeze=longest_freeze, sent=sent, got=len(chunks_in),
                       reduced=bool(video_out[:, 2].any()),
                       labels=page.evaluate("() => [...window.__teller_labels]"))
    return _UNDER_LOAD


def test_live_video_beside_a_busy_process_starts_soon_and_keeps_going(page, server, screenshots, monkeypatch):
    # The video starts within 1.5 s of the speech and does not drift seconds behind it (a guard, not issue 14's aim:
    # see the xfail below), and when the frame rate is reduced the page says so.
    m = _live_under_load(page, server, monkeypatch)
    page.locator("#live-video").screenshot(path=screenshots / "live_under_load.png")
    assert m["first"] <= 1.5, f"the first video came {m['first']:.2f} s after the speech began"
    assert np.median(m["behind"]) <= 2.0, f"the video was {np.median(m['behind']):.2f} s behind the speech (median)"
    if m["reduced"]:
        assert "Live · busy server: fewer frames" in m["labels"]


BEHIND_UNDER_LOAD = (
    "issue 14's bound is not reached: 2026-12-02, 7 runs on a machine 1.6x slower than the day before by the "
    "benchmark's floor: no microphone chunk lost (the page's own WebSocket), but 1.2-1.8 s behind (median), at most "
    "2.1-3.0 s, stand-stills 0.75-1.4 s, 2.2-4.8 s of ~13 s held while catching up. Frames are ready 0.6-0.9 s "
    "after their slice ends (the slice 0.2 s and lookahead 0.1 s, then the model on the CPU it has: the whisper "
    "encoder alone takes ~70 ms a slice); a chunk reaches the player 0.01-0.06 s after it is handed over (the "
    "page's own video WebSocket); the page's video, sampled every 50 ms, lags 0.3-1.1 s more than a chunk did when "
    "handed over, as it grows between chunks, which come 0.35-0.8 s apart under load; the player keeps 0.3 s in "
    "hand")


@pytest.mark.xfail(strict=True, reason=BEHIND_UNDER_LOAD)
def test_live_video_beside_a_busy_process_stays_within_0_6_s_and_loses_nothing(page, server, monkeypatch):
    m = _live_under_load(page, server, monkeypatch)
    assert m["got"] == m["sent"], f"{m['sent'] - m['got']} of {m['sent']} microphone chunks were lost"
    assert np.max(m["behind"]) <= 0.6 and m["freeze"] <= 0.5, m
