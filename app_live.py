"""The Live tab's serving, and the plain-language errors both tabs show.

A `LiveServer` runs one streaming session of the pipeline per visitor: the record button starts `session`, which
yields the talking portrait as one fragmented MP4 (H.264 + AAC) in chunks for the page's player
(`web/live_player.js`); every microphone chunk goes to `chunk`; `stop` and `visitor_left` end the session. The
frames themselves come from `live_frames`, the session's one GPU call, which `app.py` wraps with `spaces.GPU`.
"""

import base64
import contextlib
import logging
import multiprocessing
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import gradio as gr
import numpy as np

from teller_pipeline import FaceNotFoundError, ImageError, TellerPipeline
from teller_pipeline.audio import SAMPLE_RATE, AudioError
from teller_pipeline.pipeline_teller import PreparedSource
from teller_pipeline.streaming import FPS
from teller_pipeline.video import LiveMP4Writer

logger = logging.getLogger("teller.app")

# Without a chunk for this long, the visitor is gone (closed tab, lost network) even if no event said so.
IDLE_SECONDS = 5.0

# (frames, the voice that goes with them, its sample rate), as `live_frames` yields them.
FramesAndVoice = tuple[np.ndarray, np.ndarray, int]


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

    def stop(self, key: str, forget: bool = False) -> None:
        """End the visitor's running session (the sentinel lets it finish its last frames); `forget` also
        drops the analysed portrait (the visitor left)."""
        with self._lock:
            chunks = self._live.pop(key, None)
            if forget:
                self._portraits.pop(key, None)
        if chunks is not None:
            chunks.put(None)

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
    sentinel None, `seconds` of session time, or `idle_seconds` without a chunk."""
    session = pipe.start_session(prepared, **controls)
    voice = VoiceTrack()
    deadline = time.monotonic() + seconds
    ended = False
    while not ended and time.monotonic() < deadline:
        try:
            batch = [chunks.get(timeout=min(idle_seconds, max(deadline - time.monotonic(), 0.01)))]
        except queue.Empty:
            break
        # A slow machine falls behind: take everything waiting at once, so it catches up in one larger chunk
        # instead of many small ones.
        with contextlib.suppress(queue.Empty):
            while batch[-1] is not None:
                batch.append(chunks.get_nowait())
        frames: list[np.ndarray] = []
        for chunk in batch:
            if chunk is None:
                ended = True
                break
            rate, samples = chunk
            try:
                frames += session.push(samples, rate)
            except AudioError as error:  # a broken chunk (NaN samples, a bad rate): dropped, the session goes on
                logger.warning("live: a microphone chunk was dropped: %s", error)
                continue
            voice.add(samples, rate)
        if frames:
            yield np.stack(frames), voice.take(len(frames)), voice.rate
    frames = session.finish()
    if frames:
        yield np.stack(frames), voice.take(len(frames)), voice.rate or SAMPLE_RATE


class LiveServer:
    """The Live tab's event handlers over one pipeline.

    `frames` is `live_frames` with the pipeline bound and, on ZeroGPU, wrapped with `spaces.GPU`: it takes
    (prepared portrait, controls, chunk queue, seconds, idle seconds). With `across_processes` (ZeroGPU runs a
    GPU function in a forked worker) the chunks travel through a `multiprocessing.Manager` queue proxy; otherwise
    a plain queue does the same without a helper process. `seconds` and `idle_seconds` are read at the start of
    each session.
    """

    def __init__(
        self,
        pipe: TellerPipeline,
        frames: Callable[[PreparedSource, dict, queue.Queue, float, float], Iterator[FramesAndVoice]],
        seconds: float,
        idle_seconds: float = IDLE_SECONDS,
        across_processes: bool = False,
    ) -> None:
        self.frames = frames
        self.seconds = seconds
        self.idle_seconds = idle_seconds
        self.sessions = LiveSessions(pipe, multiprocessing.Manager().Queue if across_processes else queue.Queue)

    def analyse_portrait(self, portrait: str | None, size: int, request: gr.Request) -> str:
        """Analyse the Live tab's portrait as soon as it is chosen, so recording starts without that delay."""
        if not portrait:
            return "Choose a portrait, then press **Record** and speak."
        with visitor_errors():
            self.sessions.portrait(request.session_hash, portrait, int(size))
        return "Portrait ready: press **Record** and speak."

    def session(
        self,
        portrait: str | None,
        head_motion: float,
        expression: float,
        blinks_per_minute: float,
        size: int,
        request: gr.Request,
    ) -> Iterator[dict]:
        """Started by the microphone's record button: yields the live video, one fragmented MP4 (H.264 + AAC) in
        chunks, each a value for the Live tab's player, which appends them to a MediaSource."""
        key = request.session_hash
        if not portrait:
            raise gr.Error("Please choose a portrait first.", print_exception=False)
        chunks = self.sessions.open(key)  # first, so no chunk of the speech is dropped while the portrait is analysed
        player = dict(session=uuid.uuid4().hex, seq=0)  # a new session id tells the player to start afresh
        frames = None
        writer = None
        started = time.monotonic()
        try:
            with visitor_errors():
                prepared = self.sessions.portrait(key, portrait, int(size))
                controls = dict(head_motion_scale=head_motion, expression_scale=expression,
                                blinks_per_minute=blinks_per_minute)
                frames = self.frames(prepared, controls, chunks, self.seconds, self.idle_seconds)
                for batch, audio, rate in frames:
                    if writer is None:
                        height, width = batch.shape[1:3]
                        writer = LiveMP4Writer(FPS, rate, width, height)
                        player["mime"] = writer.mime_type
                        logger.info("live %s: first video %.2f s after recording started", key[:8],
                                    time.monotonic() - started)
                    logger.debug("live %s: %d frames at %.2f s", key[:8], len(batch), time.monotonic() - started)
                    # After Stop, what is still coming is the video of the last words: the player plays it all.
                    final = not self.sessions.is_running(key, chunks)
                    yield _player_chunk(player, writer.write(list(batch), audio), final=final)
                if writer is not None:
                    yield _player_chunk(player, writer.close(), final=True, end=True)
        finally:
            if frames is not None:
                frames.close()  # the visitor left mid-session: end the model's loop too
            if writer is not None:
                writer.close()
            self.sessions.close(key, chunks)

    def chunk(self, chunk: tuple[int, np.ndarray] | None, request: gr.Request) -> None:
        """Each microphone chunk, (rate, int16 samples), goes to the visitor's running session."""
        if chunk is not None and not self.sessions.push(request.session_hash, chunk):
            logger.debug("live %s: a chunk came with no session running (dropped)", request.session_hash[:8])

    def stop(self, request: gr.Request) -> None:
        self.sessions.stop(request.session_hash)

    def visitor_left(self, request: gr.Request) -> None:
        self.sessions.stop(request.session_hash, forget=True)


def _player_chunk(player: dict, data: bytes, final: bool = False, end: bool = False) -> dict:
    """The player's value for one chunk; numbered, so the page can tell if one went missing. `final`: the speech
    has ended, so the player plays every frame from here on instead of skipping ahead to keep up; `end`: the
    stream's last chunk."""
    chunk = player | dict(data=base64.b64encode(data).decode("ascii"), final=final, end=end)
    player["seq"] += 1
    return chunk
