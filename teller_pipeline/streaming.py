"""The streaming core: one `TellerSession` per source photo and listener.

Audio chunks of any length and sample rate go in; frames come out as soon as each 200 ms slice (plus the part
of the model's audio lookahead it hears) has arrived. Per slice, top to bottom as in the paper's figure:

    audio window ──whisper encoder──▶ 10 frames of 50 Hz embeddings
                 ──motion generator (AR, KV cache)──▶ RVQ tokens
                 ──motion tokenizer decode──▶ coarse motion (5 frames)
                 ──temporal refiner (ETM)──▶ refined motion ──controls, blinks, breathing──▶ motion latents
                 ──motion encoder decode──▶ landmarks ──renderer──▶ 5 RGB frames

Memory is bounded: the session keeps only the audio window it still needs, the generator's bounded context
and a few refined frames. Offline generation (`TellerPipeline.__call__`) is this same session run to the end.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .audio import SAMPLE_RATE, StreamingResampler
from .controls import GenerationControls
from .idle import IdleMotion, add_idle_motion
from .models.audio_encoder import log_mel
from .motion import ROTATION, TRANSLATION, apply_controls, features_to_motion

FPS = 25
SLICE_SECONDS = 0.2
SLICE_SAMPLES = int(SAMPLE_RATE * SLICE_SECONDS)  # 3200
FRAMES_PER_SLICE = int(FPS * SLICE_SECONDS)  # 5
AUDIO_FRAME_RATE = 50  # whisper encoder output rate
# Slices whose audio has all arrived (a file, or a live session catching up) go through the audio encoder together,
# up to this many: one batch costs far less per window than one call each (`embed_slice_windows` gives each window
# exactly what it gives alone). 10 slices = 2 s of speech.
AUDIO_BATCH_SLICES = 10

# A slice's frames are independent given their landmarks, and the renderer spends most of its time in numpy and
# OpenCV calls that release the GIL, so they render side by side on the machine's cores. Each frame is computed
# exactly as it would be alone: the output does not depend on the number of threads.
RENDER_THREADS = max(1, min(FRAMES_PER_SLICE, int(os.environ.get("TELLER_RENDER_THREADS", os.cpu_count() or 1))))
_render_pool: ThreadPoolExecutor | None = None
_render_pool_lock = threading.Lock()


def _forget_render_pool() -> None:
    """In a forked child the pool's threads are gone (they stay in the parent) and work handed to it never ran: the
    child makes its own (a ZeroGPU Space runs each GPU call in a forked worker)."""
    global _render_pool, _render_pool_lock
    _render_pool, _render_pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_render_pool)

# torch's intra-op threads for the package's own model calls (`num_threads=None` in the pipeline's calls). The
# models are small (short sequences, 512-wide layers) while the renderer, the video encoder and whatever else runs
# on the machine use the other cores: on 2 cores with neighbours, torch's second thread waits on the busy core and
# every model call gets many times slower (a 512² session beside other work on this project's 2-core machine: over
# 10x slower per frame with two threads than with one).
TORCH_THREADS = int(os.environ.get("TELLER_TORCH_THREADS", 1))


def check_num_threads(num_threads: int) -> int:
    """`num_threads` if it is a whole number ≥ 0, else a `ValueError` naming it."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral) or num_threads < 0:
        raise ValueError(f"num_threads must be an integer ≥ 0 (0 = torch's own setting), got {num_threads!r}")
    return int(num_threads)


@contextlib.contextmanager
def torch_threads(num_threads: int | None = None) -> Iterator[None]:
    """Run the block at `num_threads` torch intra-op threads (None: `TORCH_THREADS`; 0: the caller's own setting),
    then give the calling thread its previous count back.

    torch's count (OpenMP backend, the default of its wheels) belongs to each thread once that thread has used
    torch, so calls running in several threads at once (the app's sessions) each set and restore their own without
    a lock. A thread that first uses torch starts from the count set last anywhere, so one started while a Teller
    call runs elsewhere starts at Teller's count.
    """
    wanted = TORCH_THREADS if num_threads is None else check_num_threads(num_threads)
    previous = torch.get_num_threads()
    if wanted == 0 or wanted == previous:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _render_all(renderer, state, landmarks) -> list[np.ndarray]:
    """`renderer.render(state, points)` for each frame's landmarks, in order, on `RENDER_THREADS` threads."""
    global _render_pool
    if RENDER_THREADS <= 1 or len(landmarks) <= 1:
        return [renderer.render(state, points) for points in landmarks]
    with _render_pool_lock:  # created on first use: importing the package starts no threads
        if _render_pool is None:
            _render_pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="teller-render")
    return list(_render_pool.map(lambda points: renderer.render(state, points), landmarks))


def made_ahead(items: Iterator, ahead: int) -> Iterator:
    """`items`, made on a thread of their own up to `ahead` items before they are taken: the model and renderer work
    while the caller encodes or sends (x264 and most of the rendering release the GIL) instead of each waiting for
    the other. An error while making them is raised here; a caller that stops early stops the maker and closes
    `items`. (A thread and a bounded queue: the standard library has nothing smaller for this.)"""
    made: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    end = object()

    def hand_over(item) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                made.put(item, timeout=0.1)
                return True
        return False

    def make() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    return
            last = end
        except BaseException as error:  # noqa: BLE001 (handed to the caller, who raises it)
            last = error
        finally:
            if stop.is_set() and hasattr(items, "close"):
                items.close()
        hand_over(last)

    maker = threading.Thread(target=make, name="teller-made-ahead", daemon=True)
    maker.start()
    try:
        while (item := made.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        maker.join()


def num_video_frames(num_samples: int, min_video_seconds: float) -> int:
    """Frames of the video for `num_samples` of 16 kHz speech: 25 a second, at least `min_video_seconds`."""
    return int(round(max(num_samples / SAMPLE_RATE, min_video_seconds) * FPS))


def slice_windows(audio: np.ndarray, window_samples: int, lookahead_samples: int,
                  heard_samples: int | None = None) -> np.ndarray:
    """The audio window of every slice of an utterance, (S, window + lookahead), zero-padded at the ends.

    Slice k covers [0.2·k, 0.2·(k+1)) s; its window ends `lookahead` after the slice, of which the first
    `heard_samples` (default: all) are audio and the rest silence. Exactly what a `TellerSession` cuts while
    streaming, so training sees the features inference computes.
    """
    num_slices = -(-len(audio) // SLICE_SAMPLES)
    width = window_samples + lookahead_samples
    padded = np.zeros(window_samples + num_slices * SLICE_SAMPLES + lookahead_samples, np.float32)
    padded[window_samples : window_samples + len(audio)] = audio
    starts = (np.arange(num_slices) + 1) * SLICE_SAMPLES  # = slice end - window, in padded coordinates
    if not num_slices:
        return np.zeros((0, width), np.float32)
    windows = np.stack([padded[s : s + width] for s in starts])
    if heard_samples is not None and heard_samples < lookahead_samples:
        windows[:, width - (lookahead_samples - heard_samples) :] = 0.0
    return windows


def embed_slice_windows(
    encoder, feature_extractor, windows: np.ndarray, lookahead_samples: int, frames_per_slice: int = 10
) -> torch.Tensor:
    """Whisper embeddings of each slice, (S, 10, 512), from its window (S, samples): a batch of windows
    through the encoder, keeping the 10 frames (200 ms) that end where the lookahead begins."""
    if len(windows) == 0:
        return torch.zeros(0, frames_per_slice, encoder.config.d_model, device=encoder.device)
    mel = torch.cat([log_mel(feature_extractor, w) for w in windows])
    mel = mel[..., : mel.shape[-1] // 2 * 2]
    end = mel.shape[-1] // 2 - int(round(lookahead_samples / SAMPLE_RATE * AUDIO_FRAME_RATE))
    with torch.inference_mode():
        return encoder.encode_window(mel.to(encoder.device), slice(end - frames_per_slice, end))


class TellerSession:
    """Streaming state for one source face. Not thread-safe: one session per listener.

    `num_threads`: torch threads for the session's model calls, set for each `push`/`finish` and restored after
    (see `torch_threads`; None = `TORCH_THREADS`, 0 = the caller's own setting).
    `audio_lookahead_heard_seconds`: how much of the generator's audio lookahead the session waits for (None: the
    checkpoint's `MotionGenerator` setting); less gives frames sooner, at a small cost in mouth size (see there).
    `frame_step` (changeable between pushes): render every `frame_step`-th frame and repeat it, the same array,
    in between; a live server short of CPU sets 2 to halve its rendering and encoding (`LiveMP4Writer` encodes a
    repeated frame once). The motion itself is computed for every frame either way.
    """

    def __init__(self, pipeline, source, controls: GenerationControls | None = None, num_threads: int | None = None,
                 audio_lookahead_heard_seconds: float | None = None):
        self.pipe = pipeline
        self.source = source  # PreparedSource
        self.controls = controls or GenerationControls()
        self.controls.validate()
        self.num_threads = num_threads
        gen_config = pipeline.motion_generator.config
        self.window_samples = int(round(gen_config.audio_window_seconds * SAMPLE_RATE))
        self.lookahead_samples = int(round(gen_config.audio_lookahead_seconds * SAMPLE_RATE))
        heard = audio_lookahead_heard_seconds
        if heard is None:
            heard = gen_config.audio_lookahead_heard_seconds
        elif not (isinstance(heard, numbers.Real) and 0 <= heard <= gen_config.audio_lookahead_seconds):
            raise ValueError(f"audio_lookahead_heard_seconds must be between 0 and the generator's lookahead, "
                             f"{gen_config.audio_lookahead_seconds:g} s, got {heard!r}")
        self.heard_samples = int(round(heard * SAMPLE_RATE))
        self.frame_step = 1
        self.last_frame: np.ndarray | None = None  # the newest frame made (what `skip` repeats)
        self.resampler = StreamingResampler()
        generator_model = pipeline.motion_generator
        # Tokens are drawn where the generator's probabilities are: torch samples only with a generator on that
        # device. Seeded sampling is reproducible per device (a GPU draws other numbers than the CPU).
        self.torch_generator = torch.Generator(device=generator_model.device).manual_seed(self.controls.seed)
        self.idle = IdleMotion(self.controls.seed, FPS, self.controls.blinks_per_minute)
        with torch.inference_mode():
            prior = torch.from_numpy(source.identity_prior)[None].to(generator_model.device, generator_model.dtype)
            self.generator_state = pipeline.motion_generator.start(prior)
        refiner_config = pipeline.temporal_refiner.config
        tokenizer = pipeline.motion_tokenizer
        neutral = tokenizer.normalize(tokenizer.feature_mean.new_zeros(refiner_config.motion_dim))
        self.refined_context = neutral.expand(refiner_config.context_frames, -1).clone()
        # Audio kept: the newest samples still needed by future windows; `buffer_start` is the absolute
        # sample index of buffer[0].
        self.buffer = np.zeros(0, np.float32)
        self.buffer_start = 0
        self.samples_received = 0
        self.next_slice = 0
        self.frames_emitted = 0
        self.finished = False
        self.silence_gate = 0.0  # 0 = speech, 1 = silence (head settled)
        self.smoothed_head: tuple[np.ndarray, np.ndarray] | None = None  # the low-pass stages after the last frame
        # Wall time per stage, summed over the session (see `teller_recipe.benchmark.benchmark`).
        self.timings_ms: dict[str, float] = defaultdict(float)

    # ------------------------------------------------------------------ audio in
    def push(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[np.ndarray]:
        """Add an audio chunk (any length, rate, channels, int or float); return the frames now ready."""
        self._hear(samples, sample_rate)
        return self._render_ready_slices(final=False)

    def skip(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[np.ndarray]:
        """Like `push`, but the slices this chunk completes are not animated: their frames are the last frame
        again (the same array), at no cost. A live server that fell far behind the speech catches up at once this
        way; the face holds still over that audio and the video keeps its length. The next slices pushed are
        generated as usual, from the model's state before the skipped ones. Before any frame exists it is `push`."""
        if self.last_frame is None:
            return self.push(samples, sample_rate)
        self._hear(samples, sample_rate)
        frames: list[np.ndarray] = []
        for _ in range(self._slices_ready(final=False)):
            self._window((self.next_slice + 1) * SLICE_SAMPLES)  # forgets the audio no window needs any more
            self.next_slice += 1
            frames += [self.last_frame] * FRAMES_PER_SLICE
        self.frames_emitted += len(frames)
        return frames

    def push_16k(self, audio: np.ndarray) -> list[np.ndarray]:
        """Like `push` for audio already 16 kHz mono float32 (skips the resampler)."""
        if self.finished:
            raise RuntimeError("this session has finished; start a new one")
        self._append(np.asarray(audio, np.float32))
        return self._render_ready_slices(final=False)

    def finish(self) -> list[np.ndarray]:
        """End of speech: pad with silence and return the remaining frames.

        The video ends at round(25 · seconds received) frames; an empty stream still gives a short idle clip.
        """
        if self.finished:
            return []
        self._append(self.resampler.flush())
        self.finished = True
        return self._render_ready_slices(final=True)

    def _hear(self, samples: np.ndarray, sample_rate: int) -> None:
        """Resample a chunk and keep it, within the pipeline's speech limit."""
        if self.finished:
            raise RuntimeError("this session has finished; start a new one")
        audio = self.resampler.push(samples, sample_rate)
        max_samples = self.pipe.max_audio_seconds * SAMPLE_RATE
        if self.pipe.max_audio_seconds and self.samples_received + len(audio) > max_samples:
            raise ValueError(f"the speech is longer than the limit of {self.pipe.max_audio_seconds:g} s")
        self._append(audio)

    def _append(self, audio: np.ndarray) -> None:
        if len(audio):
            self.buffer = np.concatenate([self.buffer, audio.astype(np.float32)])
            self.samples_received += len(audio)

    @property
    def total_frames(self) -> int:
        """Frames the finished video will have."""
        return num_video_frames(self.samples_received, self.pipe.min_video_seconds)

    # ------------------------------------------------------------------ per slice
    def _render_ready_slices(self, final: bool) -> list[np.ndarray]:
        """The frames of every slice whose audio (and lookahead) has arrived; `final`: all that remain."""
        with torch_threads(self.num_threads):
            return self._ready_slices(final)

    def _ready_slices(self, final: bool) -> list[np.ndarray]:
        frames: list[np.ndarray] = []
        while count := min(self._slices_ready(final), AUDIO_BATCH_SLICES):
            t = time.perf_counter()
            windows = np.stack([self._window((self.next_slice + k + 1) * SLICE_SAMPLES) for k in range(count)])
            embeddings = embed_slice_windows(
                self.pipe.audio_encoder, self.pipe.feature_extractor, windows, self.lookahead_samples,
                self.pipe.motion_generator.config.audio_frames_per_slice,
            ).to(self.pipe.motion_generator.device, self.pipe.motion_generator.dtype)
            self._tick("audio_encoder", t)
            for window, audio in zip(windows, embeddings, strict=True):
                frames.extend(self._slice_frames(window, audio))
                self.next_slice += 1
        if final:
            frames = frames[: max(0, self.total_frames - (self.frames_emitted - len(frames)))]
            self.frames_emitted = min(self.frames_emitted, self.total_frames)
        return frames

    def _slices_ready(self, final: bool) -> int:
        """Slices whose audio and heard lookahead have arrived; `final`: the slices the video still needs."""
        if final:
            return max(0, -(-(self.total_frames - self.frames_emitted) // FRAMES_PER_SLICE))
        return max(0, (self.samples_received - self.heard_samples) // SLICE_SAMPLES - self.next_slice)

    def _window(self, slice_end: int) -> np.ndarray:
        """Audio [slice_end - window, slice_end + lookahead], silent beyond what is heard or exists."""
        start = slice_end - self.window_samples
        window = np.zeros(self.window_samples + self.lookahead_samples, np.float32)
        stop = slice_end + self.heard_samples
        lo, hi = max(start, self.buffer_start), min(stop, self.buffer_start + len(self.buffer))
        if hi > lo:
            window[lo - start : hi - start] = self.buffer[lo - self.buffer_start : hi - self.buffer_start]
        # Forget audio no future window needs.
        keep_from = slice_end + SLICE_SAMPLES - self.window_samples
        if keep_from > self.buffer_start:
            drop = min(keep_from - self.buffer_start, len(self.buffer))
            self.buffer = self.buffer[drop:]
            self.buffer_start += drop
        return window

    def _tick(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.timings_ms[stage] += (now - start) * 1000
        return now

    @torch.inference_mode()
    def _slice_frames(self, window: np.ndarray, audio: torch.Tensor) -> list[np.ndarray]:
        """The frames of one slice from its audio `window` and its 10 whisper embeddings `audio` (1. in the
        paper's figure: the window's frames just before the lookahead, embedded in `_ready_slices`)."""
        pipe, controls = self.pipe, self.controls
        t = time.perf_counter()
        # 2. tokens for this slice (autoregressive, two per step, top-k)
        codes = pipe.motion_generator.generate_slice(
            self.generator_state, audio, self.torch_generator, controls.top_k, controls.temperature
        )
        t = self._tick("motion_generator", t)
        # 3. tokens → coarse motion → refined motion (ETM)
        coarse = pipe.motion_tokenizer.decode(codes[None, None])
        refined = pipe.temporal_refiner(self.refined_context[None], coarse, audio[None])[0]
        self.refined_context = torch.cat([self.refined_context, refined])[-len(self.refined_context) :]
        features = pipe.motion_tokenizer.denormalize(refined).float().cpu().numpy()
        t = self._tick("temporal_refiner", t)
        # 4. controls, a settled head in silence, blinks, breathing → motion latents → landmarks → pixels
        expression_scale = controls.expression_scale * pipe.temporal_refiner.config.expression_gain
        features = apply_controls(features, expression_scale, controls.head_motion_scale)
        features = self._settle_head_in_silence(features, window)
        features = self._smooth_head(features)
        closure, breath = self.idle.next(len(features))
        features = add_idle_motion(features, closure, breath, self.source.eyelid_gaps, controls.breathing)
        motion = features_to_motion(torch.from_numpy(features))
        landmarks = pipe.motion_encoder.decode(self.source.face, motion)
        t = self._tick("landmarks", t)
        step = max(1, int(self.frame_step))
        rendered = _render_all(pipe.renderer, self.source.render_state, landmarks[::step])
        frames = [rendered[i // step] for i in range(len(landmarks))]
        self.last_frame = frames[-1]
        self._tick("renderer", t)
        self.frames_emitted += len(frames)
        return frames

    def _smooth_head(self, features: np.ndarray) -> np.ndarray:
        """Critically damped low-pass (two one-pole stages) of each frame's head rotation (axis-angle; head angles
        are a few degrees, where averaging axis-angle vectors is as good as averaging rotations) and translation,
        its state carried across slices."""
        if self.controls.head_smoothing <= 0:
            return features
        keep = 1.0 - np.exp(-2.0 / (FPS * self.controls.head_smoothing))  # weight of each new frame, per stage
        out = features.copy()
        head = np.concatenate([features[:, ROTATION], features[:, TRANSLATION]], 1)
        first, second = (head[0], head[0]) if self.smoothed_head is None else self.smoothed_head
        for i, pose in enumerate(head):
            first = first + keep * (pose - first)
            second = second + keep * (first - second)
            out[i, ROTATION], out[i, TRANSLATION] = second[:3], second[3:]
        self.smoothed_head = (first, second)
        return out

    def _settle_head_in_silence(self, features: np.ndarray, window: np.ndarray) -> np.ndarray:
        """Blend the head toward the photo's pose while the slice and its lookahead are silent."""
        threshold = self.controls.silence_threshold_db
        if threshold is None:
            return features
        recent = window[-(SLICE_SAMPLES + self.lookahead_samples) :]
        level_db = 10 * np.log10(np.mean(recent.astype(np.float64) ** 2) + 1e-12)
        target = 1.0 if level_db < threshold else 0.0
        # Ramp over the slice's frames so settling and moving again is never a jump.
        ramp = np.linspace(self.silence_gate, target, len(features) + 1)[1:, None]
        self.silence_gate = target
        out = features.copy()
        out[:, ROTATION] *= 1.0 - 0.7 * ramp
        out[:, TRANSLATION] *= 1.0 - 0.7 * ramp
        return out

