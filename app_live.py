"""The Live tab's serving, and the plain-language errors both tabs show.

A `LiveServer` runs one streaming session of the pipeline per visitor: the record button starts `session`, which
makes the talking portrait as one fragmented MP4 (H.264 + AAC) in chunks for the page's player
(`web/live_player.js`). The page has two WebSockets of its own: it sends the visitor's voice over one (`microphone`,
at `MICROPHONE_ROUTE`), and the video comes down the other (`video`, at `VIDEO_ROUTE`), or through the session's
Gradio event where that socket is not open. The end of the voice's stream, the visitor leaving or the time limit
ends the session. The frames themselves come from `live_frames`, the session's one GPU call, which `app.py` wraps
with `spaces.GPU`.
Sessions run a few at a time: `LiveLine` keeps the others waiting in arrival order, and `follow_line` tells each
visitor their place and switches their microphone on when their turn comes.
"""

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import platform
import queue
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import gradio as gr
import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from teller_pipeline import FaceNotFoundError, ImageError, TellerPipeline
from teller_pipeline.audio import SAMPLE_RATE, AudioError
from teller_pipeline.pipeline_teller import PreparedSource
from teller_pipeline.streaming import FPS, made_ahead
from teller_pipeline.video import LiveMP4Writer

logger = logging.getLogger("teller.app")

# Without a chunk for this long, the visitor is gone (closed tab, lost network) even if no event said so.
IDLE_SECONDS = 5.0
# A visitor whose turn came keeps it this long without pressing Record while someone else waits; then it passes on
# and they go to the back of the line.
RESERVE_SECONDS = 20.0
# After its time limit a session still renders and sends the video of the last words (seconds on a busy CPU).
FINISH_SECONDS = 5.0
# How often a visitor's place in line is looked at (their page is told only when what it shows changes).
LINE_POLL_SECONDS = 0.25
# A session that ended on its own (time limit) makes the page stop its microphone; the microphone is switched off
# only after that, or after this long (a microphone switched off while recording is stuck in "recording").
MIC_STOP_GRACE_SECONDS = 3.0

# glibc's malloc arenas for the whole server. By default each thread that allocates gets an arena of its own, up
# to 8 per core, and an arena keeps most of what is freed in it. Gradio steps a session's generator on whichever of
# its worker threads is free, so every session's frames, tensors and encoder buffers are spread over a dozen arenas,
# and the server grew by ~12 MB per live session through the page (+242 MB over 20 sessions); with 2 it stays flat.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h

# How much of the generator's audio lookahead a live session waits for. 0.1 s instead of the checkpoint's 0.2 s
# shows each word 100 ms sooner; the mouth opens a little less (gap p90 0.124 instead of 0.126 before rendering,
# see `MotionGenerator`'s `audio_lookahead_heard_seconds`), a trade the Live tab makes and offline videos do not.
LIVE_LOOKAHEAD_HEARD_SECONDS = 0.1
# A session further behind the speech it has heard than this renders (and encodes) every other frame until it has
# caught up (below CAUGHT_UP_SECONDS) and stayed so for REDUCED_MIN_SECONDS: on a machine short of CPU the video
# keeps close to the voice at 12.5 frames a second instead of falling seconds behind at 25. Normally a session is
# up to one slice (0.2 s) and one microphone chunk (0.1 s) behind.
BEHIND_SECONDS = 0.3
CAUGHT_UP_SECONDS = 0.2
REDUCED_MIN_SECONDS = 3.0
# A session further behind than this SKIP_AFTER_SECONDS after it reduced its frame rate (a machine with far less
# CPU than the session needs) skips: the oldest speech waiting is not animated (`TellerSession.skip`: the face holds
# still over it, the voice plays on) until the session is BEHIND_SECONDS behind, so the delay stays bounded instead
# of growing for the rest of the session. Beside a busy process on this machine (2026-12-02, 7 runs) it kept the
# video 1.2-1.8 s behind the speech (median; max 2.1-3.0 s) where it grew to 2.4-4.1 s (max 4-7 s), holding 2.2-4.8 s
# of ~13 s (`pytest -s tests/test_app_browser.py -k busy_process`).
SKIP_BEHIND_SECONDS = 0.8
SKIP_AFTER_SECONDS = 1.0
# Batches of frames the model may make ahead of the encoder and the page.
BATCHES_AHEAD = 2

# The page's own microphone capture sends the voice here, over a WebSocket, in order and as it is recorded, rather
# than through Gradio's streaming microphone: Gradio 6.31's /stream/{event_id} route keeps one pending chunk per
# stream, and one that arrives before the server took the last replaces it (2-9 of ~120 chunks were lost beside a
# busy process, tests/test_app_browser.py). `{token}` is the visitor's own (`microphone_address`).
MICROPHONE_ROUTE = "/teller/microphone/{token}"
# Speech heard before the session is listening (the Record event's round trip through Gradio's queue, the portrait
# analysed) is kept this long, and handed over when it starts.
EARLY_SPEECH_SECONDS = 3.0
# After Stop, the page's last chunks and the end of its stream are waited for this long before the session is told
# that the speech ended anyway (a page whose stream broke off).
MICROPHONE_END_GRACE_SECONDS = 2.0
# A sample rate the browser may record at (AudioContext rates range 3-768 kHz; microphones 8-192 kHz).
MICROPHONE_RATES = (8000, 192000)
# A microphone cannot send speech faster than it is spoken: a stream that runs more than this ahead of the time since
# it opened (the page's own buffering at most, EARLY_SPEECH_SECONDS) is not a microphone, and what runs ahead is
# dropped, so a hostile page cannot hand a session minutes of audio to render.
MICROPHONE_AHEAD_SECONDS = EARLY_SPEECH_SECONDS

# The live video goes down to the page over a WebSocket of its own, opened when the page gets its address and kept
# for the page's life, rather than as the values of the session's Gradio event: beside a busy process a chunk
# reached the player 0.01-0.06 s after it was handed over (median of each run; at most 0.09-0.29 s) this way, and
# 0.04-0.09 s (at most 0.10-0.64 s) base64-encoded through Gradio's queue and event stream (10 runs each, 2026-12-02,
# `pytest -s tests/test_app_browser.py -k "busy_process and starts_soon"`). The session's event still runs the
# session (Stop, limits, errors, the line) and tells the page each chunk's number, and carries the chunk itself
# while no video socket is open (`LiveServer.video`). `{token}` is the page's own, the microphone's (`page_token`).
VIDEO_ROUTE = "/teller/video/{token}"
# A page acknowledges the video it has received; one that lets this much go unacknowledged (it stopped reading, or
# its network is far slower than the video) has its socket closed, and the video goes through Gradio again: the
# server never holds more than this per page. A 384 px session makes about 50 kB of video a second (the astronaut,
# 2026-12-02), so this is some 40 s of it.
VIDEO_UNREAD_BYTES = 2_000_000
# Close codes of the video socket: a newer socket of the same page took over (the page does not reconnect then), and
# the page did not read its video (it reconnects, a while later).
VIDEO_REPLACED = 4001
VIDEO_UNREAD = 1013  # "try again later"


class FramesAndVoice(NamedTuple):
    """What `live_frames` yields: frames (a repeated frame is the same array, see `TellerSession.frame_step`), the
    voice that goes with them and its sample rate, and whether the frame rate is reduced to keep up."""

    frames: list[np.ndarray]
    voice: np.ndarray
    rate: int
    reduced: bool = False


def _glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc (whose malloc the settings below are for)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas` (see `MALLOC_ARENAS`); whether the cap was set. Nothing is done on other
    C libraries, or where MALLOC_ARENA_MAX is set (the operator's choice stands). Call it before the server's threads
    start: glibc fixes its limit once a process has more than 8 arenas."""
    libc = _glibc()
    if libc is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return libc.mallopt(_M_ARENA_MAX, arenas) == 1


def release_freed_memory() -> None:
    """Give the pages malloc holds free back to the system (glibc only). Once a session has ended, what its frames and
    encoder used is free but stays in the process, so its memory shows the busiest session so far rather than what it
    holds; this costs a few milliseconds."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# ---------------------------------------------------------------------------------------------- visitor errors
# An absolute path anywhere in a message (also quoted or in brackets, as library errors put them): the server's folders
# are nobody's business, and a visitor's own file name is its last part.
_ABSOLUTE_PATH = re.compile(r"(?<![\w/.])/(?:[^\s/'\"()\[\]]+/)*([^\s/'\"()\[\]]+)")


def _short(message: str) -> str:
    """`message` with every absolute path cut to its file name."""
    return _ABSOLUTE_PATH.sub(r"\1", message)


@contextlib.contextmanager
def visitor_errors(max_speech_seconds: float | None = None) -> Iterator[None]:
    """Turn the pipeline's exceptions into plain-language messages; anything unexpected is logged, not shown.
    `max_speech_seconds` is the speech limit to name when a recording is too long."""
    try:
        yield
    except gr.Error:
        raise
    except FaceNotFoundError as error:
        raise gr.Error("No face was found in this photo. Try a clear, well-lit portrait with the face "
                       "looking toward the camera.", print_exception=False) from error
    except ImageError as error:
        raise gr.Error(f"This photo cannot be used: {_short(str(error))}", print_exception=False) from error
    except AudioError as error:
        if "the limit is" in str(error):  # the pipeline's "too long" message names a developer setting
            raise gr.Error(f"The speech is too long: this demo animates up to {max_speech_seconds:g} s. "
                           "Please trim it.", print_exception=False) from error
        raise gr.Error(f"This speech cannot be used: {_short(str(error))}", print_exception=False) from error
    except ValueError as error:  # the pipeline's other input checks, e.g. a session past its length limit
        raise gr.Error(_short(str(error)), print_exception=False) from error
    except Exception as error:
        logger.exception("unexpected error")
        raise gr.Error("Something went wrong on our side. Please try again.") from error


# ------------------------------------------------------------------------------------------ per-visitor state
class LiveSessions:
    """Per-visitor state keyed by Gradio's session hash; every method is safe to call from any thread."""

    def __init__(self, pipe: TellerPipeline, make_queue: Callable[[], queue.Queue]) -> None:
        self._pipe = pipe
        self._make_queue = make_queue
        self._lock = threading.Lock()
        self._live: dict[str, queue.Queue] = {}  # session hash → the chunk queue of its running session
        self._portraits: dict[str, tuple[tuple[str, int], PreparedSource]] = {}

    def open(self, key: str) -> queue.Queue:
        """A fresh chunk queue for a new session; a session still running for this visitor is told to end."""
        chunks = self._make_queue()
        with self._lock:
            old, self._live[key] = self._live.get(key), chunks
        if old is not None:
            old.put(None)
        return chunks

    def close(self, key: str, chunks: queue.Queue) -> None:
        with self._lock:
            if self._live.get(key) is chunks:
                del self._live[key]

    def push(self, key: str, chunk: tuple[int, np.ndarray]) -> bool:
        """Hand a chunk to the visitor's running session; without one (still queued, or ended) it is dropped."""
        with self._lock:
            chunks = self._live.get(key)
        if chunks is not None:
            chunks.put(chunk)
        return chunks is not None

    def stop(self, key: str, forget: bool = False, only: queue.Queue | None = None) -> None:
        """End the visitor's running session (the sentinel lets it finish its last frames), if `only` is given only
        if that is its chunk queue; `forget` also drops the analysed portrait (the visitor left)."""
        with self._lock:
            chunks = self._live.get(key)
            if only is None or chunks is only:
                self._live.pop(key, None)
            else:
                chunks = None
            if forget:
                self._portraits.pop(key, None)
        if chunks is not None:
            chunks.put(None)

    def running(self, key: str) -> queue.Queue | None:
        """The chunk queue of the visitor's running session, if one runs."""
        with self._lock:
            return self._live.get(key)

    def is_running(self, key: str, chunks: queue.Queue) -> bool:
        """Whether the session with this chunk queue is still taking speech (not stopped, not replaced)."""
        with self._lock:
            return self._live.get(key) is chunks

    def is_live(self, key: str) -> bool:
        with self._lock:
            return key in self._live

    def count(self) -> int:
        """Sessions running now (for monitoring and tests)."""
        with self._lock:
            return len(self._live)

    def visitors(self) -> int:
        """Visitors anything is kept for (a running session, an analysed portrait), for monitoring and tests."""
        with self._lock:
            return len(self._live.keys() | self._portraits.keys())

    def portrait(self, key: str, path: str, max_size: int) -> PreparedSource:
        """The visitor's portrait analysed once: reused by every session until they pick another."""
        with self._lock:
            cached = self._portraits.get(key)
        if cached is not None and cached[0] == (path, max_size):
            return cached[1]
        prepared = self._pipe.prepare_source(path, max_size)
        with self._lock:
            self._portraits[key] = ((path, max_size), prepared)
        return prepared


# ------------------------------------------------------------------------------------------------- the line
@dataclass
class _Holder:
    """A visitor holding a slot."""

    since: float  # when the slot became theirs (or their last session ended)
    session: int | None = None  # the token of their running session


@dataclass(frozen=True)
class Turn:
    """Where a visitor stands. `place` 0: they hold a slot; 1, 2, ...: their place in line; None: not in line.
    `seconds`: in line, the longest the wait can last (every session before theirs running to its limit); holding
    an unused slot while others wait, how long it stays theirs; otherwise None."""

    place: int | None
    seconds: float | None = None
    live: bool = False  # a session of theirs is running (maybe finishing the video of the last words)
    recording: bool = False


class LiveLine:
    """The Live tab's fair line: `slots` visitors at a time may run a session; the others wait in arrival order.

    A visitor joins when they open the Live tab and holds a slot from their turn on: across sessions while nobody
    waits, and until their session ends when someone does, after which they go to the back of the line. A turn
    nobody uses passes on after `reserve_seconds` if someone waits. `session_seconds` (a session's wall-clock
    limit) and `finish_seconds` (rendering after it) bound the wait each visitor is told. Safe from any thread.
    """

    def __init__(
        self,
        slots: int,
        session_seconds: float,
        reserve_seconds: float = RESERVE_SECONDS,
        finish_seconds: float = FINISH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError(f"a live line needs at least one slot, got {slots}")
        self.slots = slots
        self.session_seconds = session_seconds
        self.reserve_seconds = reserve_seconds
        self.finish_seconds = finish_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._holders: dict[str, _Holder] = {}
        self._waiting: OrderedDict[str, float] = OrderedDict()  # key → when they joined, in arrival order
        self._started: dict[int, float] = {}  # session token → when it started
        self._gone: set[int] = set()  # tokens of sessions whose visitor left while they finished
        self._recording: set[str] = set()  # visitors whose microphone is on (Record pressed, Stop not yet)
        self._tokens = 0

    def join(self, key: str) -> None:
        with self._lock:
            if key not in self._holders and key not in self._waiting:
                self._waiting[key] = self._clock()
            self._assign()

    def leave(self, key: str) -> None:
        """The visitor left. A session of theirs still finishing keeps the slot until it ends (`end`), so it
        never runs beside the next visitor's."""
        with self._lock:
            self._waiting.pop(key, None)
            self._recording.discard(key)
            holder = self._holders.pop(key, None)
            if holder is not None and holder.session is not None:
                self._gone.add(holder.session)
            self._assign()

    def start(self, key: str) -> int | None:
        """A session may start if the visitor holds a slot: its token (for `end`), else None."""
        with self._lock:
            self._assign()
            holder = self._holders.get(key)
            if holder is None:
                return None
            self._tokens += 1
            if holder.session is not None:  # Record again while the last session finishes: it is replaced
                self._started.pop(holder.session, None)
            holder.session = self._tokens
            self._recording.add(key)
            self._started[self._tokens] = self._clock()
            return self._tokens

    def stop(self, key: str) -> None:
        """The visitor's microphone stopped; their session finishes the video of the last words."""
        with self._lock:
            self._recording.discard(key)

    def end(self, key: str, token: int) -> None:
        """The session `token` ended: its slot goes to the first in line, and the visitor, if still here, to the
        back of it (straight back to the slot if nobody waits)."""
        with self._lock:
            self._started.pop(token, None)
            if token in self._gone:
                self._gone.discard(token)
            else:
                holder = self._holders.get(key)
                if holder is None or holder.session != token:
                    return  # replaced by a newer session of the same visitor
                del self._holders[key]
                self._waiting[key] = self._clock()
            self._assign()

    def turn(self, key: str) -> Turn:
        with self._lock:
            self._assign()
            now = self._clock()
            recording = key in self._recording
            holder = self._holders.get(key)
            if holder is not None:
                live = holder.session is not None
                seconds = self._reserve_ends(holder) - now if self._waiting and not live else None
                return Turn(0, seconds, live=live, recording=recording)
            if key not in self._waiting:
                return Turn(None)
            place = list(self._waiting).index(key) + 1
            return Turn(place, self._longest_wait(place, now), recording=recording)

    def count(self) -> tuple[int, int]:
        """(slots held, visitors waiting), for monitoring and tests."""
        with self._lock:
            return len(self._holders) + len(self._gone), len(self._waiting)

    def _reserve_ends(self, holder: _Holder) -> float:
        # The reservation runs from when the slot became theirs or someone started waiting, whichever is later.
        return max(holder.since, next(iter(self._waiting.values()))) + self.reserve_seconds

    def _assign(self) -> None:
        """Pass on turns nobody used while others wait, then fill free slots from the front of the line."""
        now = self._clock()
        if self._waiting:
            for key, holder in list(self._holders.items()):
                if holder.session is None and self._reserve_ends(holder) <= now:
                    del self._holders[key]
                    self._waiting[key] = now
        while len(self._holders) + len(self._gone) < self.slots and self._waiting:
            key, _ = self._waiting.popitem(last=False)
            self._holders[key] = _Holder(since=now)

    def _longest_wait(self, place: int, now: float) -> float:
        """The wait at `place` if every session before it runs to its time limit and every turn is taken at the
        last moment."""
        longest_hold = self.reserve_seconds + self.session_seconds + self.finish_seconds
        free_at = [max(self._started[token] + self.session_seconds - now, 0) + self.finish_seconds
                   for token in self._gone]
        for holder in self._holders.values():
            if holder.session is not None:
                started = self._started[holder.session]
                free_at.append(max(started + self.session_seconds - now, 0) + self.finish_seconds)
            else:
                free_at.append(max(self._reserve_ends(holder) - now, 0) + self.session_seconds + self.finish_seconds)
        free_at.sort()
        for _ in range(place - 1):  # each visitor ahead takes the first slot to free up
            free_at[0] += longest_hold
            free_at.sort()
        return free_at[0]


class VoiceTrack:
    """The visitor's own voice for the live video, where frame i covers [i/25, (i+1)/25) s of it. Each chunk of
    video carries the voice up to its last frame and all heard after that so far: with the voice ahead of the
    video, a browser starts playing on the first chunk (Chrome waits for about 0.2 s of buffered audio, more
    than one chunk's frames span). The stream's timestamps keep lips and voice together either way."""

    def __init__(self) -> None:
        self.rate: int | None = None
        self.pending = np.zeros(0, np.float32)  # heard, not sent yet
        self.sent = 0  # samples sent so far
        self.frames = 0  # frames whose voice has been sent

    def add(self, samples: np.ndarray, rate: int) -> None:
        mono = np.asarray(samples)
        mono = mono / 32768.0 if mono.dtype == np.int16 else mono.astype(np.float32)
        mono = mono.mean(axis=1) if mono.ndim == 2 else mono
        if self.rate is None:
            self.rate = int(rate)
        elif rate != self.rate:  # browsers keep one rate per recording; this only guards the arithmetic
            mono = np.interp(np.arange(0, len(mono), rate / self.rate), np.arange(len(mono)), mono)
        self.pending = np.concatenate([self.pending, mono.astype(np.float32)])

    def take(self, num_frames: int) -> np.ndarray:
        """The voice to send with the next `num_frames` frames: all heard so far, and silence past the end of
        the speech if the frames go further (the session's final frames)."""
        self.frames += num_frames
        short = round(self.frames * (self.rate or SAMPLE_RATE) / FPS) - self.sent - len(self.pending)
        out = np.concatenate([self.pending, np.zeros(max(short, 0), np.float32)])
        self.pending = np.zeros(0, np.float32)
        self.sent += len(out)
        return out


# ------------------------------------------------------------------------------------------------ the session
def live_frames(
    pipe: TellerPipeline,
    prepared: PreparedSource,
    controls: dict,
    chunks: queue.Queue,
    seconds: float,
    idle_seconds: float,
) -> Iterator[FramesAndVoice]:
    """A live session's model loop: audio chunks from `chunks` in, (frames, their audio, rate) out, until the
    sentinel None, `seconds` of session time, or `idle_seconds` without a chunk. Speech that arrived before the
    time limit is all animated, also what a machine behind the speech has not reached by then."""
    session = pipe.start_session(prepared, audio_lookahead_heard_seconds=LIVE_LOOKAHEAD_HEARD_SECONDS, **controls)
    heard = session.heard_samples / SAMPLE_RATE
    voice = VoiceTrack()
    deadline = time.monotonic() + seconds
    reduced_since = None  # when the session was last behind with its frame rate reduced
    reduced_from = None  # when it reduced its frame rate
    ended = False
    while not ended:
        left = deadline - time.monotonic()
        try:
            batch = [chunks.get(timeout=min(idle_seconds, left)) if left > 0 else chunks.get_nowait()]
        except queue.Empty:
            break
        ended = left <= 0  # past the limit: this last batch is what was waiting
        # A slow machine falls behind: take everything waiting at once, so it catches up in one larger chunk
        # instead of many small ones.
        with contextlib.suppress(queue.Empty):
            while batch[-1] is not None:
                batch.append(chunks.get_nowait())
        # How far behind the speech the video is (what was heard, less the lookahead a slice waits for).
        waiting = sum(len(chunk[1]) / chunk[0] for chunk in batch if chunk is not None)
        behind = session.samples_received / SAMPLE_RATE + waiting - heard - session.frames_emitted / FPS
        now = time.monotonic()
        if behind > BEHIND_SECONDS:
            reduced_from = reduced_from or now
            reduced_since = now
        elif reduced_since is not None and behind < CAUGHT_UP_SECONDS and now - reduced_since > REDUCED_MIN_SECONDS:
            reduced_since = reduced_from = None
        session.frame_step = 1 if reduced_since is None else 2
        # Seconds of the speech waiting not to animate: only once the reduced frame rate has had a second to catch
        # up (the speech heard while the session started is all animated).
        too_far = behind > SKIP_BEHIND_SECONDS and reduced_from is not None and now - reduced_from >= SKIP_AFTER_SECONDS
        skip = behind - BEHIND_SECONDS if too_far else 0.0
        frames: list[np.ndarray] = []
        for chunk in batch:
            if chunk is None:
                ended = True
                break
            rate, samples = chunk
            try:
                if skip > 0:
                    frames += session.skip(samples, rate)
                    skip -= len(samples) / rate
                else:
                    frames += session.push(samples, rate)
            except AudioError as error:  # a broken chunk (NaN samples, a bad rate): dropped, the session goes on
                logger.warning("live: a microphone chunk was dropped: %s", error)
                continue
            voice.add(samples, rate)
        if frames:
            yield FramesAndVoice(frames, voice.take(len(frames)), voice.rate, session.frame_step > 1)
    frames = session.finish()
    if frames:
        yield FramesAndVoice(frames, voice.take(len(frames)), voice.rate or SAMPLE_RATE, session.frame_step > 1)
    logger.info("live session: %d frames; ms per frame: %s", session.frames_emitted, ", ".join(
        f"{stage} {ms / max(session.frames_emitted, 1):.1f}" for stage, ms in session.timings_ms.items()))


# ------------------------------------------------------------------------------------------- the video socket
class VideoStream:
    """One open video socket of a page: the session hands chunks over from its own thread (`offer`), the event loop
    the socket lives on sends them, in order. What the page has not acknowledged, and what is not sent yet (a page
    may acknowledge what it never read), are each bounded (`VIDEO_UNREAD_BYTES`). `number` is the page's own for
    this socket: the session's Gradio event names it with each chunk sent here, so the page knows a chunk it has not
    received went over a socket it has since lost."""

    def __init__(self, loop: asyncio.AbstractEventLoop, number: int) -> None:
        self.number = number
        self._loop = loop
        self._outbox: asyncio.Queue[bytes | int | None] = asyncio.Queue()  # messages; then a close code or None
        self._lock = threading.Lock()
        self._unread: deque[int] = deque()  # sizes of the messages offered and not acknowledged, oldest first
        self._unread_bytes = 0
        self._unsent_bytes = 0
        self._acknowledged = 0  # messages the page said it received
        self._open = True

    def offer(self, message: bytes) -> bool | None:
        """Queue a message (from any thread): True if it will be sent; False if the socket is closed; None if the
        page left too much unread, and the socket is being closed for it."""
        with self._lock:
            if not self._open:
                return False
            if max(self._unread_bytes, self._unsent_bytes) + len(message) > VIDEO_UNREAD_BYTES:
                self._shut(VIDEO_UNREAD)
                return None
            self._unread.append(len(message))
            self._unread_bytes += len(message)
            self._unsent_bytes += len(message)
            self._put(message)
            return self._open

    def acknowledge(self, received: int) -> None:
        """The page has received `received` messages on this socket so far."""
        with self._lock:
            while self._acknowledged < received and self._unread:
                self._unread_bytes -= self._unread.popleft()
                self._acknowledged += 1

    def close(self, code: int | None) -> None:
        """Stop taking chunks (from any thread); what is queued is sent, then the socket is closed with `code`
        (None: it is closed already)."""
        with self._lock:
            self._shut(code)

    def _shut(self, code: int | None) -> None:
        if self._open:
            self._open = False
            self._put(code)

    def _put(self, item: bytes | int | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, item)
        except RuntimeError:  # the event loop is closed (the server is shutting down)
            self._open = False

    async def send(self, websocket: WebSocket) -> None:
        """Send what is offered, in order, until the socket is closed (on the socket's event loop)."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # the page went meanwhile
            while isinstance(item := await self._outbox.get(), bytes):
                await websocket.send_bytes(item)
                with self._lock:
                    self._unsent_bytes -= len(item)
            if item is not None:
                await websocket.close(code=item)
        self.close(None)


def video_message(chunk: dict, data: bytes) -> bytes:
    """One chunk of the live video as the page's video socket carries it, in one binary message (so a header can
    never be paired with another chunk's bytes): the length of the JSON header as 4 bytes (big-endian), the header
    (the player's value without `data`), then the MP4 bytes themselves."""
    header = json.dumps(chunk, separators=(",", ":")).encode()
    return len(header).to_bytes(4, "big") + header + data


class LiveServer:
    """The Live tab's event handlers over one pipeline.

    `frames` is `live_frames` with the pipeline bound and, on ZeroGPU, wrapped with `spaces.GPU`: it takes
    (prepared portrait, controls, chunk queue, seconds, idle seconds). With `across_processes` (ZeroGPU runs a
    GPU function in a forked worker) the chunks travel through a `multiprocessing.Manager` queue proxy; otherwise
    a plain queue does the same without a helper process. `seconds` and `idle_seconds` are read at the start of
    each session. `slots` sessions run at once; `line` keeps the other visitors waiting their turn.
    """

    def __init__(
        self,
        pipe: TellerPipeline,
        frames: Callable[[PreparedSource, dict, queue.Queue, float, float], Iterator[FramesAndVoice]],
        seconds: float,
        idle_seconds: float = IDLE_SECONDS,
        across_processes: bool = False,
        slots: int = 1,
    ) -> None:
        self.frames = frames
        self.across_processes = across_processes
        self.seconds = seconds
        self.idle_seconds = idle_seconds
        self.sessions = LiveSessions(pipe, multiprocessing.Manager().Queue if across_processes else queue.Queue)
        self.line = LiveLine(slots, seconds)
        self._lock = threading.Lock()
        self._page_keys: dict[str, str] = {}  # a page's token (its microphone's and video's) → its session hash
        self._microphones_open: dict[str, int] = {}  # session hash → the page's microphone streams now open
        self._videos: dict[str, VideoStream] = {}  # session hash → the page's open video socket
        self._unread_logged: set[str] = set()  # visitors whose page was logged for not reading its video

    def analyse_portrait(self, portrait: str | None, size: int, request: gr.Request) -> str:
        """Analyse the Live tab's portrait as soon as it is chosen, so recording starts without that delay."""
        if not portrait:
            return "Choose a portrait: upload one or pick an example."
        with visitor_errors():
            self.sessions.portrait(request.session_hash, portrait, int(size))
        return "Portrait ready."

    async def follow_line(self, request: gr.Request) -> AsyncIterator[tuple[str, dict, dict]]:
        """Started when the visitor opens the Live tab (once per page): gives the player the addresses its microphone
        stream goes to and its video comes from, puts the visitor in line, then keeps their page told where they
        stand, as a message and the microphone, which is on only while the turn is theirs. Ends when they leave
        (`visitor_left`)."""
        key = request.session_hash
        yield gr.update(), gr.update(), dict(microphone=self.microphone_address(key), video=self.video_address(key))
        self.line.join(key)
        shown = None
        mic_off_wanted = None  # when the turn passed on while the microphone was still recording
        while (turn := self.line.turn(key)).place is not None:
            message = _line_message(turn, self.seconds)
            mic = (turn.place == 0 and not (turn.live and not turn.recording), _mic_label(turn))  # (on, label)
            if shown is not None and shown[1][0] and not mic[0] and turn.recording:
                # The session ended on its own and the page is stopping the microphone (web/live_player.js). A
                # microphone switched off or cleared while it records is stuck in "recording": wait, a little.
                mic_off_wanted = mic_off_wanted or time.monotonic()
                if time.monotonic() - mic_off_wanted < MIC_STOP_GRACE_SECONDS:
                    mic = shown[1]
            else:
                mic_off_wanted = None
            if (message, mic) != shown:
                # The microphone is updated only when it changes; a cleared value shows the Record button again
                # rather than the last recording.
                changed = shown is None or mic != shown[1]
                yield (message, gr.update(interactive=mic[0], label=mic[1], value=None) if changed else gr.update(),
                       gr.update())
                shown = message, mic
            await asyncio.sleep(LINE_POLL_SECONDS)

    def session(
        self,
        portrait: str | None,
        head_motion: float,
        expression: float,
        blinks_per_minute: float,
        size: int,
        request: gr.Request,
    ) -> Iterator[dict]:
        """Started by the microphone's record button: makes the live video, one fragmented MP4 (H.264 + AAC) in
        chunks, which the Live tab's player appends to a MediaSource. Each chunk goes down the page's video socket
        if one is open, and the value yielded for the player only numbers it; otherwise the value carries it."""
        key = request.session_hash
        if not portrait:
            raise gr.Error("Please choose a portrait first.", print_exception=False)
        token = self.line.start(key)
        if token is None:  # the page switches the microphone on only on the visitor's turn: this is a stale page
            raise gr.Error("Please wait for your turn: the microphone switches on when it comes.",
                           print_exception=False)
        player = dict(session=uuid.uuid4().hex, seq=0)  # a new session id tells the player to start afresh
        chunks = frames = writer = None
        started = time.monotonic()
        deadline = started + self.seconds  # live_frames' own deadline comes a little later: it starts after this
        try:  # from here on the slot is freed whatever happens
            chunks = self.sessions.open(key)  # first: no chunk of the speech is dropped while the portrait is analysed
            with visitor_errors():
                prepared = self.sessions.portrait(key, portrait, int(size))
                controls = dict(head_motion_scale=head_motion, expression_scale=expression,
                                blinks_per_minute=blinks_per_minute)
                frames = self.frames(prepared, controls, chunks, self.seconds, self.idle_seconds)
                if not self.across_processes:  # on a CPU: the model makes the next frames while these are sent
                    frames = made_ahead(frames, BATCHES_AHEAD)
                for batch, audio, rate, reduced in frames:
                    if writer is None:
                        height, width = batch[0].shape[:2]
                        writer = LiveMP4Writer(FPS, rate, width, height)
                        player["mime"] = writer.mime_type
                        logger.info("live %s: first video %.2f s after recording started", key[:8],
                                    time.monotonic() - started)
                    logger.debug("live %s: %d frames at %.2f s", key[:8], len(batch), time.monotonic() - started)
                    # After Stop or the time limit, what is still coming is the video of the last words: the player
                    # plays it all (and, at the limit, stops the microphone).
                    reason = self._limit_reason() if time.monotonic() >= deadline else None
                    final = reason is not None or not self.sessions.is_running(key, chunks)
                    data = writer.write(batch, audio)
                    yield self._deliver(key, _player_chunk(player, final=final, reason=reason, reduced=reduced),
                                        data)
                if writer is not None:
                    reason = None  # Stop: the visitor knows why
                    if self.sessions.is_running(key, chunks):
                        reason = (self._limit_reason() if time.monotonic() >= deadline else
                                  f"no sound reached the server for {self.idle_seconds:g} s")
                    data = writer.close()
                    yield self._deliver(key, _player_chunk(player, final=True, end=True, reason=reason), data)
        finally:
            if chunks is not None:
                chunks.put(None)  # the visitor left mid-session: end the model's loop (it may be waiting for speech)
            if frames is not None:
                frames.close()
            if writer is not None:
                writer.close()
            if chunks is not None:
                self.sessions.close(key, chunks)
            self.line.end(key, token)
            del frames, writer, chunks
            release_freed_memory()

    # ------------------------------------------------------------------------------------------ the video
    def video_address(self, key: str) -> str:
        """Where the visitor's page takes its live video from, relative to the page: `VIDEO_ROUTE` with the page's
        token."""
        return VIDEO_ROUTE.format(token=self.page_token(key)).lstrip("/")

    async def video(self, websocket: WebSocket) -> None:
        """The page's video socket (`VIDEO_ROUTE`), open for the page's life: every chunk of its visitor's live
        video while it is open, each a binary `video_message`. The page answers with {"received": messages so far},
        text; past `VIDEO_UNREAD_BYTES` unacknowledged, the socket is closed. A newer socket of the same page
        replaces this one. `?n=` is the page's number for the socket, named with each chunk sent on it."""
        with self._lock:
            key = self._page_keys.get(websocket.path_params.get("token", ""))
        if key is None:
            await websocket.close(code=1008)  # policy violation: not a page's video
            return
        number = websocket.query_params.get("n", "")
        stream = VideoStream(asyncio.get_running_loop(), int(number) if number.isdigit() and len(number) < 10 else 0)
        with self._lock:  # before the page hears it is open: a chunk made from then on comes down it
            replaced, self._videos[key] = self._videos.get(key), stream
        if replaced is not None:
            replaced.close(VIDEO_REPLACED)
        sending = None
        try:
            await websocket.accept()
            sending = asyncio.create_task(stream.send(websocket))
            while (message := await websocket.receive())["type"] != "websocket.disconnect":
                text = message.get("text") or ""
                try:  # {"received": n} is short: anything longer is not parsed
                    received = json.loads(text).get("received") if len(text) <= 40 else None
                except (ValueError, AttributeError):
                    received = None
                if isinstance(received, int):  # anything else is ignored: the page sends nothing else
                    stream.acknowledge(received)
        except WebSocketDisconnect:
            pass
        finally:
            with self._lock:
                if self._videos.get(key) is stream:
                    del self._videos[key]
            stream.close(None)
            if sending is not None:
                await sending

    def _deliver(self, key: str, chunk: dict, data: bytes) -> dict:
        """The player's value for one chunk of video: the chunk goes down the page's video socket if one is open and
        the value names that socket (`via`); otherwise the value carries the chunk (base64), through Gradio."""
        with self._lock:
            stream = self._videos.get(key)
        sent = stream.offer(video_message(chunk, data)) if stream is not None else False
        if sent:
            return chunk | dict(via=stream.number)
        if sent is None and key not in self._unread_logged:  # once per visitor: a page may reconnect, and again
            self._unread_logged.add(key)
            logger.warning("live %s: the page left %.1f MB of its video unread: its video socket was closed, the "
                           "video goes through Gradio", key[:8], VIDEO_UNREAD_BYTES / 1e6)
        return chunk | dict(data=base64.b64encode(data).decode("ascii"))

    # -------------------------------------------------------------------------------------- the microphone
    def page_token(self, key: str) -> str:
        """The visitor's page's own token, in the addresses of its microphone and video sockets: unguessable, and
        the session hash itself stays out of URLs and logs."""
        with self._lock:
            token = next((t for t, k in self._page_keys.items() if k == key), None)
            if token is None:
                token = secrets.token_urlsafe(16)
                self._page_keys[token] = key
        return token

    def microphone_address(self, key: str) -> str:
        """Where the visitor's page sends its microphone stream, relative to the page: `MICROPHONE_ROUTE` with the
        page's token."""
        return MICROPHONE_ROUTE.format(token=self.page_token(key)).lstrip("/")

    async def microphone(self, websocket: WebSocket) -> None:
        """The page's microphone stream, one per recording (`MICROPHONE_ROUTE`): a text message {"rate": samples
        per second}, the voice as binary messages of 16-bit little-endian mono samples as it is recorded, and
        {"end": true} after Stop. Each chunk goes to the visitor's running session, in order; speech heard before
        the session listens waits for it (`EARLY_SPEECH_SECONDS`). The stream's end ends the speech of the session
        it fed, which then finishes the video of the last words."""
        with self._lock:
            key = self._page_keys.get(websocket.path_params.get("token", ""))
        if key is None:
            await websocket.close(code=1008)  # policy violation: not a page's microphone
            return
        await websocket.accept()
        with self._lock:
            self._microphones_open[key] = self._microphones_open.get(key, 0) + 1
        rate, waiting, fed = None, [], None
        opened, received = time.monotonic(), 0.0  # seconds of speech taken from the stream
        warned = set()

        def drop(problem: str) -> None:  # logged once per stream: a hostile page cannot flood the log
            if problem not in warned:
                warned.add(problem)
                logger.warning("live %s: %s (dropped; further ones are not logged)", key[:8], problem)

        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    data = message["bytes"]
                    if rate is None or not data or len(data) % 2:
                        drop("a microphone message was not 16-bit samples at a known rate")
                        continue
                    seconds = len(data) / 2 / rate
                    if received + seconds > time.monotonic() - opened + MICROPHONE_AHEAD_SECONDS:
                        drop("the microphone stream ran ahead of time")
                        continue
                    received += seconds
                    waiting.append((rate, np.frombuffer(data, "<i2")))
                    # A queue proxy's put is a round trip to another process (ZeroGPU): off the event loop.
                    fed = await asyncio.to_thread(self._hand_over, key, waiting) or fed
                    continue
                try:
                    header = json.loads(message.get("text") or "")
                except ValueError:
                    header = None
                if not isinstance(header, dict):
                    drop("a microphone message was not understood")
                elif header.get("end"):
                    await websocket.close()  # all of it was taken: the page may go
                    break
                elif isinstance(header.get("rate"), int | float) and \
                        MICROPHONE_RATES[0] <= header["rate"] <= MICROPHONE_RATES[1]:
                    rate = int(header["rate"])
                else:
                    drop(f"a microphone rate of {header.get('rate')!r:.20} was refused")
        except WebSocketDisconnect:
            pass
        finally:
            with self._lock:
                self._microphones_open[key] -= 1
                if not self._microphones_open[key]:
                    del self._microphones_open[key]
            if fed is not None:
                self.sessions.stop(key, only=fed)
            if waiting:
                logger.info("live %s: %.1f s of speech came with no session to take it", key[:8],
                            sum(len(samples) / rate for rate, samples in waiting))

    def _hand_over(self, key: str, waiting: list[tuple[int, np.ndarray]]) -> queue.Queue | None:
        """Hand the waiting chunks to the visitor's running session, oldest first; what no session takes yet is
        kept, up to `EARLY_SPEECH_SECONDS`. The queue that took them, if any."""
        fed = None
        while waiting and (chunks := self.sessions.running(key)) is not None and self.sessions.push(key, waiting[0]):
            fed = chunks
            waiting.pop(0)
        while sum(len(samples) / rate for rate, samples in waiting) > EARLY_SPEECH_SECONDS:
            waiting.pop(0)
        return fed

    def stop(self, request: gr.Request) -> None:
        """The visitor pressed Stop. Their page's microphone stream ends the speech itself, after its last chunks;
        if none is open (or its end does not come), this does."""
        key = request.session_hash
        self.line.stop(key)
        chunks = self.sessions.running(key)
        if chunks is None:
            return
        with self._lock:
            streaming = key in self._microphones_open
        if streaming:
            timer = threading.Timer(MICROPHONE_END_GRACE_SECONDS, self.sessions.stop, (key,), {"only": chunks})
            timer.daemon = True
            timer.start()
        else:
            self.sessions.stop(key, only=chunks)

    def visitor_left(self, request: gr.Request) -> None:
        key = request.session_hash
        self.sessions.stop(key, forget=True)
        self.line.leave(key)  # also ends their `follow_line`
        with self._lock:
            self._page_keys = {t: k for t, k in self._page_keys.items() if k != key}
            video = self._videos.pop(key, None)
            self._unread_logged.discard(key)
        if video is not None:
            video.close(1000)

    def _limit_reason(self) -> str:
        return f"the {self.seconds:g} s limit was reached"


def _player_chunk(player: dict, final: bool = False, end: bool = False, reason: str | None = None,
                  reduced: bool = False) -> dict:
    """What the player is told about the next chunk (its header; `LiveServer._deliver` adds the chunk or says where
    it went); numbered, so the page appends each once, in order, whichever way it came. `final`: the speech has
    ended, so the player plays every frame from here on instead of skipping ahead to keep up, and stops the
    microphone if it still records; `end`: the stream's last chunk; `reason`: why the session ended, when the
    visitor did not press Stop; `reduced`: the frame rate is reduced to keep up (the page says so)."""
    chunk = player | dict(final=final, end=end, reason=reason, reduced=reduced)
    player["seq"] += 1
    return chunk


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _duration(seconds: float) -> str:
    """A wait for people to read: rounded up to 5 s, in minutes and seconds."""
    seconds = 5 * -(-int(seconds) // 5)
    minutes, seconds = divmod(seconds, 60)
    return " ".join(part for part in (f"{minutes} min" if minutes else "", f"{seconds} s" if seconds else "")
                    if part) or "a moment"


def _mic_label(turn: Turn) -> str:
    if turn.place:
        return f"Your voice: {_ordinal(turn.place)} in line, at most {_duration(turn.seconds)}"
    return "Your voice"


def _line_message(turn: Turn, session_seconds: float) -> str:
    """What the Live tab says about the visitor's turn."""
    if turn.place:
        return (f"**Please wait: the live demo is busy.** You are **{_ordinal(turn.place)}** in line; your turn "
                f"comes within **{_duration(turn.seconds)}** (sooner if the speakers before you stop early). "
                "The microphone switches on then: keep this tab open.")
    if turn.live:
        if turn.recording:
            return f"**Live**: speak, then press **Stop** (at most {session_seconds:g} s)."
        return "Finishing the video of your last words…"
    if turn.recording:  # the session ended (an error, or its limit and the page is stopping the microphone)
        return "The session ended: press **Stop**, then **Record** to speak again."
    if turn.seconds is not None:
        return (f"**Your turn**: press **Record** and speak. Someone is waiting: the turn passes to them in "
                f"{_duration(turn.seconds)}.")
    return "**Your turn**: press **Record** and speak."
