"""A soak of the served app (issue 14): for a few minutes, a seeded random mix of visitors, some at the same time,
against `python app.py` in a process of its own, as a Space runs it. Live visitors come through Debian's chromium
(their microphone plays a speech file): some speak a few seconds, press Stop and watch their video to its end; some
close the tab mid-stream; some open the Live tab and never press Record. Generate requests come over the Gradio API,
good ones and bad ones (a text file named .jpg, a 0-byte photo, a PNG whose header claims 169 MP, a photo without
a face, NaN, corrupt and 0-byte speech). What a user cares about is asserted, and the test prints what it held.

Run it with `nice -n 19 python -m pytest tests/test_soak.py -m slow -s`; TELLER_SOAK_SECONDS (how long visitors
keep arriving, default 270) and TELLER_SOAK_SEED change the mix.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from teller_pipeline.audio import load_audio
from teller_pipeline.video import probe_media

from .conftest import ASTRONAUT, GRACE_HOPPER, REAL_SPEECH, png_header_claiming
from .serving import CHROMIUM, chromium_options, fake_microphone, rss_mb, serve_app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
async_playwright = pytest.importorskip("playwright.async_api").async_playwright
gradio_client = pytest.importorskip("gradio_client")

SOAK_SECONDS = float(os.environ.get("TELLER_SOAK_SECONDS", 270))  # visitors keep arriving this long
SEED = int(os.environ.get("TELLER_SOAK_SEED", 14))
PAGES_AT_ONCE = 3  # browser visitors on the page at the same time (the app serves one live session on a CPU)
VISITOR_KINDS = {"speaks": 0.5, "leaves mid-stream": 0.25, "never records": 0.25}
ARRIVAL_SECONDS = 8.0  # mean time between browser visitors' arrivals (while fewer than PAGES_AT_ONCE are there)
# A bad input is refused before any real work: well under what a good request costs (several seconds here, with a
# live session and a browser on the same two cores).
BAD_INPUT_SECONDS = 5.0
# A live video lasts as long as the speech the visitor recorded: from the microphone opening to Stop, as the page
# measures it, less the moment the page's own recording takes to start. (Its first run failed here while the voice
# went through Gradio 6.31's streaming microphone: its stream route keeps only the newest message of a stream that
# the server has not taken yet (`event.data = body`), so on a busy CPU up to 3.4 s of an 8-9 s recording never
# reached the session, while the page sent it all. The page now sends it over a WebSocket of its own.)
LIVE_LENGTH_TOLERANCE = 0.5
# What the server may keep after the soak, over what it held after a first live session and a first Generate request
# (each fills caches once: the models' first calls, the encoder's buffers, Gradio's example cache).
RSS_GROWTH_LIMIT_MB = 100.0
LINE_IS_FREE = "Your turn: press Record and speak."

# Before the page's own scripts: keep every piece of the live stream the player appends (to decode it afterwards,
# as the browser did), when the microphone opened, the microphone's messages to the server and when the video first
# played.
WATCH_THE_PLAYER = r"""
window.__soak = {stream: [], mic: null, play: null, sent: 0, stop: null};
// When the microphone's Stop was clicked (on a busy machine Playwright's click lands a while after it was asked for).
document.addEventListener('click', (event) => {
  const stop = event.target.closest && event.target.closest('#live-mic button.stop-button');
  if (stop) window.__soak.stop = performance.now();
}, true);
// The page sends the voice as binary messages on its microphone WebSocket, one every 0.05 s: count them.
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (data instanceof ArrayBuffer) window.__soak.sent += 1;
  return send.call(this, data);
};
const append = SourceBuffer.prototype.appendBuffer;
SourceBuffer.prototype.appendBuffer = function (data) {
  window.__soak.stream.push(new Uint8Array(data));
  return append.call(this, data);
};
if (navigator.mediaDevices) {
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await open(constraints);
    window.__soak.mic = window.__soak.mic ?? performance.now();
    return stream;
  };
}
const watch = setInterval(() => {
  const v = document.querySelector('#live-video video');
  if (v && v.currentTime > 0) { window.__soak.play = performance.now(); clearInterval(watch); }
}, 20);
"""
STREAM_AS_BASE64 = """() => {
  let text = '';
  for (const part of window.__soak.stream)
    for (let i = 0; i < part.length; i += 0x8000) text += String.fromCharCode.apply(null, part.subarray(i, i + 0x8000));
  return btoa(text);
}"""
VIDEO = "document.querySelector('#live-video video')"


# ------------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class BadInput:
    photo: Path
    speech: Path
    error: str  # the message the visitor must see, in full up to its end or a parenthesised detail


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, BadInput]:
    folder = tmp_path_factory.mktemp("soak_inputs")
    speech = load_audio(REAL_SPEECH)
    good_speech = folder / "speech.wav"
    sf.write(good_speech, speech[:16000], 16000)
    (folder / "notes.jpg").write_text("Shopping list: milk, eggs. Not a photo at all.\n" * 20)
    (folder / "empty.jpg").write_bytes(b"")
    png_header_claiming(folder / "bomb.png", 13000, 13000)
    rng = np.random.default_rng(SEED)
    landscape = np.zeros((480, 640, 3), np.uint8)
    landscape[:200] = (110, 160, 230)
    landscape[200:] = rng.integers(40, 140, (280, 640, 3))
    Image.fromarray(landscape).save(folder / "field.png")
    broken = speech[:16000].copy()
    broken[100:260] = np.nan
    sf.write(folder / "nan.wav", broken, 16000, subtype="FLOAT")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8)
    (folder / "empty.wav").write_bytes(b"")
    return {
        "text file named .jpg": BadInput(folder / "notes.jpg", good_speech,
                                         "This photo cannot be used: notes.jpg is not an image file"),
        "0-byte photo": BadInput(folder / "empty.jpg", good_speech,
                                 "This photo cannot be used: empty.jpg is an empty file (0 bytes)"),
        "169 MP PNG header": BadInput(folder / "bomb.png", good_speech, "This photo cannot be used: bomb.png is "
                                      "13000x13000 pixels (169 MP); the limit is 40 MP"),
        "photo without a face": BadInput(folder / "field.png", good_speech, "No face was found in this photo. Try "
                                         "a clear, well-lit portrait with the face looking toward the camera."),
        "NaN speech": BadInput(GRACE_HOPPER, folder / "nan.wav", "This speech cannot be used: nan.wav holds 160 NaN "
                               "or infinite samples; audio must be finite"),
        "corrupt speech": BadInput(ASTRONAUT, folder / "corrupt.wav",
                                   "This speech cannot be used: corrupt.wav is not an audio file or is corrupt"),
        "0-byte speech": BadInput(ASTRONAUT, folder / "empty.wav",
                                  "This speech cannot be used: empty.wav is an empty file (0 bytes), not audio"),
    }


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("soak_app")
    with serve_app(folder / "app.log", TMPDIR=str(folder)) as (url, process):
        yield url, process, folder / "app.log"


# ------------------------------------------------------------------------------------------------------ the log
@dataclass
class Soak:
    """What happened, for the assertions and the report."""

    url: str
    pid: int
    visitors: Counter = field(default_factory=Counter)  # kind → visitors who did it to the end
    failures: list[str] = field(default_factory=list)  # what went wrong, by visitor
    api: Counter = field(default_factory=Counter)  # kind of request → requests
    api_errors: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # kind → messages seen
    bad_seconds: list[float] = field(default_factory=list)
    good_seconds: list[float] = field(default_factory=list)
    turn_waits: list[float] = field(default_factory=list)  # portrait ready → Record pressed (their turn came)
    first_video: list[float] = field(default_factory=list)  # Record → the video playing
    after_stop: list[float] = field(default_factory=list)  # Stop → the video's end
    # Seconds recorded (microphone open to Stop), of video and of its sound (the speech the server heard); the
    # microphone's messages the page sent (0.05 s of speech each).
    live_lengths: list[tuple[float, float, float, int]] = field(default_factory=list)
    page_messages: list[str] = field(default_factory=list)  # the player's warnings and errors, page errors
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the soak, MB)
    started: float = field(default_factory=time.monotonic)

    def fail(self, who: str, what: str) -> None:
        self.failures.append(f"{who}: {what}")


# --------------------------------------------------------------------------------------------- browser visitors
async def _open_live_tab(browser, soak: Soak, who: str):
    context = await browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["microphone"])
    await context.add_init_script(WATCH_THE_PLAYER)
    page = await context.new_page()
    page.on("console", lambda m: m.text.startswith("teller:") and soak.page_messages.append(f"{who}: {m.text}"))
    page.on("pageerror", lambda error: soak.page_messages.append(f"{who}: page error {error}"))
    await page.goto(soak.url, wait_until="load")
    await page.get_by_role("tab", name="Live").click(timeout=60_000)
    return context, page


async def _describe(page) -> str:
    """What the page showed, to tell why a visitor got stuck."""
    try:
        return "the page showed: " + str(await page.evaluate(f"""() => {{
          const v = {VIDEO}, b = v.buffered;
          return {{line: document.querySelector('#live-line').innerText, mic: document.querySelector('#live-mic')
                   .innerText.slice(0, 80), player: document.querySelector('#live-video').innerText,
                   time: v.currentTime, paused: v.paused, buffered: b.length ? [b.start(0), b.end(b.length - 1)] : [],
                   error: v.error && v.error.message, soak: {{mic: window.__soak.mic, play: window.__soak.play,
                   appended: window.__soak.stream.length}}, now: performance.now()}}; }}"""))
    except Exception as error:
        return f"the page could not be read ({type(error).__name__})"


async def _pick_portrait(page, index: int) -> None:
    await page.locator(".gallery button, button.gallery-item").nth(index).click(timeout=30_000)
    await page.get_by_text("Portrait ready").wait_for(timeout=60_000)


async def _record_on_my_turn(page, soak: Soak) -> None:
    ready = time.monotonic()
    # The microphone (and its Record button) comes on when the turn is theirs: after the sessions before, and turns
    # nobody used, each of at most 60 s + 5 s and 20 s.
    await page.get_by_role("button", name="Record").click(timeout=240_000)
    soak.turn_waits.append(time.monotonic() - ready)


async def _watch_until(page, seconds: float) -> None:
    """Watch the live video until it has played `seconds`; a session that ends before is a failure."""
    await page.wait_for_function(f"() => {VIDEO}.currentTime > {seconds} || {VIDEO}.ended", timeout=60_000)
    if await page.evaluate(f"() => {VIDEO}.ended"):
        raise AssertionError(f"the live video ended at {await page.evaluate(f'() => {VIDEO}.currentTime'):.2f} s, "
                             "before Stop")


async def speaker(browser, soak: Soak, who: str, rng: random.Random, probe_folder: Path) -> None:
    """Speaks a few seconds, presses Stop and watches the video to its end; the video they got is decoded."""
    talk = rng.uniform(2.0, 5.0)
    context, page = await _open_live_tab(browser, soak, who)
    try:
        await _pick_portrait(page, rng.randrange(2))
        await _record_on_my_turn(page, soak)
        await _watch_until(page, talk)
        await page.get_by_role("button", name="Stop").click()
        stopped = time.monotonic()
        await page.wait_for_function(f"() => {VIDEO}.ended", timeout=120_000)
        soak.after_stop.append(time.monotonic() - stopped)
        marks = await page.evaluate("() => window.__soak")
        played = await page.evaluate(f"() => {VIDEO}.currentTime")
        soak.first_video.append((marks["play"] - marks["mic"]) / 1000)
        stream = base64.b64decode(await page.evaluate(STREAM_AS_BASE64))
    except Exception as error:
        error.add_note(await _describe(page))
        raise
    finally:
        await context.close()
    with tempfile.NamedTemporaryFile(suffix=".mp4", dir=probe_folder) as file:
        file.write(stream)
        file.flush()
        info = probe_media(file.name)
    recorded = (marks["stop"] - marks["mic"]) / 1000
    video, voice = info["video_duration"] or 0.0, info["audio_duration"] or 0.0
    soak.live_lengths.append((recorded, video, voice, marks["sent"]))
    if (info["video_codec"], info["audio_codec"]) != ("h264", "aac") or not info["video_pts_increasing"]:
        soak.fail(who, f"the live video is not a playable H.264 + AAC stream: {info}")
    elif video < voice - 0.1:  # the video's sound is the speech the server heard (then silence to the last frame)
        soak.fail(who, f"the server heard {voice:.2f} s of speech and animated {video:.2f} s")
    elif abs(video - recorded) > LIVE_LENGTH_TOLERANCE:
        soak.fail(who, f"{recorded:.2f} s recorded, the page sent {marks['sent']} messages of speech (0.05 s "
                       f"each), the server heard {voice:.2f} s (the video's sound), the video lasts {video:.2f} s")
    elif abs(played - info["video_duration"]) > 0.1:
        soak.fail(who, f"the page played {played:.2f} s of a {info['video_duration']:.2f} s video")
    else:
        soak.visitors["speaks"] += 1


async def leaver(browser, soak: Soak, who: str, rng: random.Random) -> None:
    """Closes the tab while their video streams, without pressing Stop."""
    watch = rng.uniform(0.5, 3.0)
    context, page = await _open_live_tab(browser, soak, who)
    try:
        await _pick_portrait(page, rng.randrange(2))
        await _record_on_my_turn(page, soak)
        await _watch_until(page, watch)
    except Exception as error:
        error.add_note(await _describe(page))
        raise
    finally:
        await context.close()
    soak.visitors["leaves mid-stream"] += 1


async def idler(browser, soak: Soak, who: str, rng: random.Random) -> None:
    """Opens the Live tab (and maybe picks a portrait), stays a while, never presses Record. Past 20 s a turn of
    theirs that someone waits for passes on."""
    stay, pick = rng.uniform(3.0, 30.0), rng.random() < 0.5
    context, page = await _open_live_tab(browser, soak, who)
    try:
        if pick:
            await _pick_portrait(page, rng.randrange(2))
        await asyncio.sleep(stay)
    finally:
        await context.close()
    soak.visitors["never records"] += 1


async def visitor(kind: str, browser, soak: Soak, who: str, rng: random.Random, folder: Path) -> None:
    try:
        if kind == "speaks":
            await speaker(browser, soak, who, rng, folder)
        elif kind == "leaves mid-stream":
            await leaver(browser, soak, who, rng)
        else:
            await idler(browser, soak, who, rng)
    except Exception as error:  # a visitor who could not do what they came for: reported, the soak goes on
        notes = "".join(f"; {note}" for note in getattr(error, "__notes__", []))
        soak.fail(who, f"{kind}: {type(error).__name__}: {str(error).splitlines()[0]}{notes}")


# ------------------------------------------------------------------------------------------------ API visitors
def generate_request(client, soak: Soak, kind: str, inputs: dict[str, BadInput], rng: random.Random,
                     folder: Path) -> None:
    """One Generate request over the API, as `kind` says: a bad input, silence or speech. Blocking."""
    handle = gradio_client.handle_file
    started = time.monotonic()
    if kind in inputs:
        bad = inputs[kind]
        try:
            client.predict(handle(str(bad.photo)), handle(str(bad.speech)), 1.0, 1.0, 15, 0, 256,
                           api_name="/generate")
        except gradio_client.exceptions.AppError as error:
            message = str(error)
            soak.api_errors[kind].add(message)
            if not message.startswith(bad.error):
                soak.fail(f"API {kind}", f"told {message!r}")
        else:
            soak.fail(f"API {kind}", "no error")
        soak.bad_seconds.append(time.monotonic() - started)
        if soak.bad_seconds[-1] > BAD_INPUT_SECONDS:
            soak.fail(f"API {kind}", f"refused after {soak.bad_seconds[-1]:.1f} s")
    else:
        frames, size = rng.randrange(25, 76), rng.choice([256, 384])  # 1-3 s, a whole number of frames
        portrait = rng.choice([ASTRONAUT, GRACE_HOPPER])
        speech = load_audio(REAL_SPEECH)
        start = rng.randrange(len(speech) - frames * 640)
        samples = np.zeros(frames * 640, np.float32) if kind == "silence" else speech[start : start + frames * 640]
        with tempfile.NamedTemporaryFile(suffix=".wav", dir=folder) as file:
            sf.write(file.name, samples, 16000)
            try:
                result = client.predict(handle(str(portrait)), handle(file.name), 1.0, 1.0, 15,
                                        rng.randrange(1000), size, api_name="/generate")
            except gradio_client.exceptions.AppError as error:
                soak.fail(f"API {kind}", f"told {error}")
                return
        soak.good_seconds.append(time.monotonic() - started)
        info = probe_media(result["video"] if isinstance(result, dict) else result)
        if ((info["video_codec"], info["audio_codec"]) != ("h264", "aac") or info["frame_count"] != frames
                or abs(info["audio_duration"] - frames / 25) > 0.05 or max(info["width"], info["height"]) != size):
            soak.fail(f"API {kind}", f"{frames} frames at {size} px asked, got {info}")
    soak.api[kind] += 1


# ---------------------------------------------------------------------------------------------------- the soak
async def watch_the_server(soak: Soak, process, done: asyncio.Event) -> None:
    while not done.is_set():
        if process.poll() is not None:
            soak.fail("server", f"exited with {process.returncode}")
            return
        soak.rss.append((time.monotonic() - soak.started, rss_mb(process.pid)))
        await asyncio.sleep(2.0)


async def run_soak(soak: Soak, process, inputs: dict[str, BadInput], folder: Path) -> dict:
    rng = random.Random(SEED)
    visitor_rng, api_rng = random.Random(rng.random()), random.Random(rng.random())
    client = await asyncio.to_thread(gradio_client.Client, soak.url, verbose=False)
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_the_server(soak, process, done))
    memory = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(**chromium_options(fake_microphone(folder)))
        try:
            # A first live session and a first Generate request fill what the server keeps once.
            await asyncio.gather(visitor("speaks", browser, soak, "visitor 0", random.Random(SEED), folder),
                                 asyncio.to_thread(generate_request, client, soak, "speech", inputs,
                                                   random.Random(SEED), folder))
            memory["after the first"] = rss_mb(process.pid)
            soak.started = time.monotonic()

            async def api_visitors() -> None:
                kinds = [*inputs, "speech", "speech", "silence"]
                while time.monotonic() - soak.started < SOAK_SECONDS:
                    kind = api_rng.choice(kinds)
                    await asyncio.to_thread(generate_request, client, soak, kind, inputs, api_rng, folder)
                    await asyncio.sleep(api_rng.uniform(1.0, 5.0))

            api = asyncio.create_task(api_visitors())
            pages: set[asyncio.Task] = set()
            number = 0
            while time.monotonic() - soak.started < SOAK_SECONDS:
                while len(pages) >= PAGES_AT_ONCE:
                    await asyncio.wait(pages, return_when=asyncio.FIRST_COMPLETED)
                    pages = {task for task in pages if not task.done()}
                number += 1
                kind = visitor_rng.choices(list(VISITOR_KINDS), weights=list(VISITOR_KINDS.values()))[0]
                who_rng = random.Random(visitor_rng.random())
                pages.add(asyncio.create_task(visitor(kind, browser, soak, f"visitor {number}", who_rng, folder)))
                await asyncio.sleep(visitor_rng.expovariate(1 / ARRIVAL_SECONDS))
                pages = {task for task in pages if not task.done()}
            await asyncio.gather(api, *pages)
            memory["soak_end"] = rss_mb(process.pid)

            # Everyone has left: the next visitor gets the turn at once, and nobody is said to wait behind them.
            context, page = await _open_live_tab(browser, soak, "last visitor")
            try:
                line = page.locator("#live-line")
                deadline = time.monotonic() + 20  # a tab closed mid-session is heard of within 5 s (no sound)
                while (shown := (await line.inner_text()).strip()) != LINE_IS_FREE and time.monotonic() < deadline:
                    await asyncio.sleep(0.25)
                memory["line"] = shown
                await page.get_by_role("button", name="Record").wait_for(timeout=5_000)
            except Exception as error:
                soak.fail("last visitor", f"{type(error).__name__}: {str(error).splitlines()[0]}")
            finally:
                await context.close()
        finally:
            await browser.close()
            done.set()
            await watcher
    await asyncio.sleep(3)  # the server hears that the last tab closed
    memory["end"] = rss_mb(process.pid)
    return memory


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def test_a_soak_of_many_visitors_leaves_the_server_well_and_empty(served_app, inputs, tmp_path):
    url, process, log = served_app
    start_rss = rss_mb(process.pid)
    soak = Soak(url=url, pid=process.pid)
    memory = asyncio.run(run_soak(soak, process, inputs, tmp_path))
    alive = process.poll() is None and httpx.get(f"{url}config", timeout=10).status_code == 200
    server_log = log.read_text()
    unexpected = server_log.count("unexpected error")  # what visitors were told "Something went wrong" for
    tracebacks = re.findall(r"^\w*(?:Error|Exception)\b.*$", server_log, re.MULTILINE)
    growth = memory["end"] - memory["after the first"]
    length_errors = [video - recorded for recorded, video, *_ in soak.live_lengths]
    # Speech the server got with no session of theirs to take it (a recording that outlived its session), by visitor.
    dropped = defaultdict(float)
    for visitor, seconds in re.findall(r"live (\w+): ([\d.]+) s of speech came with no session to take it", server_log):
        dropped[visitor] += float(seconds)
    load = os.getloadavg()

    print(f"\n--- Soak report: {time.monotonic() - soak.started:.0f} s after the warm-up, seed {SEED}, "
          f"{SOAK_SECONDS:g} s of arrivals, at most {PAGES_AT_ONCE} pages at once; load {load[0]:.2f} {load[1]:.2f}"
          f" {load[2]:.2f}")
    print("Browser visitors done (warm-up included): " + ", ".join(f"{n} {k}" for k, n in soak.visitors.items()))
    print("API requests done: " + ", ".join(f"{n} {k}" for k, n in sorted(soak.api.items())))
    print(f"Bad inputs refused in {_spread(soak.bad_seconds)}; good requests answered in {_spread(soak.good_seconds)}")
    for kind, messages in sorted(soak.api_errors.items()):
        print(f"  {kind}: " + " | ".join(sorted(messages)))
    print(f"Live: turn came {_spread(soak.turn_waits)} after the portrait was ready; first video "
          f"{_spread(soak.first_video)} after the microphone opened; video ended {_spread(soak.after_stop)} after "
          "Stop")
    if length_errors:
        print(f"Live video length minus recorded speech: {min(length_errors):+.2f} to {max(length_errors):+.2f} s "
              f"over {len(length_errors)} sessions (recorded {min(r for r, *_ in soak.live_lengths):.1f}-"
              f"{max(r for r, *_ in soak.live_lengths):.1f} s): "
              + ", ".join(f"{r:.2f}/{v:.2f}/{a:.2f} s {n}" for r, v, a, n in soak.live_lengths)
              + " (recorded/video/its sound in seconds, the microphone's messages sent)")
    print(f"Speech the server dropped (no session running): {sum(dropped.values()):.1f} s from {len(dropped)} "
          f"visitors, at most {max(dropped.values(), default=0):.1f} s from one")
    print(f"Server RSS: {start_rss:.0f} MB at start, {memory['after the first']:.0f} MB after the warm-up, "
          f"{memory['soak_end']:.0f} MB when the last visitor left, {memory['end']:.0f} MB at the end "
          f"({growth:+.1f} MB; bound {RSS_GROWTH_LIMIT_MB:g}), highest {max(mb for _, mb in soak.rss):.0f} MB")
    print(f"Last visitor was told: {memory.get('line')!r}; server alive: {alive}")
    print(f"Server log: {unexpected} unexpected errors, {len(tracebacks)} exception lines"
          + "".join(f"\n  {line}" for line in sorted(set(tracebacks))[:10]))
    print(f"Player warnings and page errors: {len(soak.page_messages)}" +
          "".join(f"\n  {message}" for message in soak.page_messages[:10]))
    print(f"Failures: {len(soak.failures)}" + "".join(f"\n  {failure}" for failure in soak.failures))

    assert alive, "the server died"
    assert not soak.failures, "\n".join(soak.failures)
    assert memory.get("line") == LINE_IS_FREE, "a live session or a place in line was left held"
    assert unexpected == 0, "a visitor was told only that something went wrong"
    assert soak.visitors["speaks"] >= 5 and sum(soak.api[kind] for kind in inputs) >= 5, "too little happened"
    assert growth <= RSS_GROWTH_LIMIT_MB, f"the server kept {growth:.1f} MB"
