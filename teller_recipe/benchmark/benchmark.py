"""Speed benchmark: `python -m teller_recipe.benchmark.benchmark [options]`.

Streams real speech through a `TellerSession` in 200 ms chunks, the way a microphone feeds the Live tab, and
encodes every chunk's frames into the live video stream (`LiveMP4Writer`, as the app does). For each portrait
and output size it reports:

* milliseconds per video frame in each stage: audio encoder, motion generator, temporal refiner (with the
  token decoding), landmarks (motion latent → face landmarks), renderer, video encoding;
* frames per second and the real-time factor (wall seconds per second of video; ≤ 1 is real time), and the
  process's CPU seconds (all threads) per second of video, which other work on the machine affects far less;
* latency: from a 200 ms chunk arriving (`session.push`) to its frames being rendered, median and worst. On top
  of this compute, a slice waits for its own 200 ms and the generator's 200 ms audio lookahead;
* peak resident memory of the process during the row (the loaded pipeline included; on Linux the peak is reset
  at the start of each row, so a row does not inherit an earlier row's peak);
* offline generation of the clip (`pipe(image, audio, output_path=...)`: photo analysis, generation, MP4) in
  wall seconds.

Beside these rows, in the same run:

* a **plain call** per portrait and size: `pipe(image=..., audio=..., output_path=...)` in a fresh Python process
  with no thread setting and the pipeline's defaults, as a user's script or the CLI runs it (best of `--repeats`
  fresh processes; model loading is not timed);
* the streaming runs of `--busy-run` (512² by default) again **beside 1 and 2 busy processes** the benchmark starts
  itself (`--busy`): Python busy loops that end with the row, or after `BUSY_MAX_SECONDS`, or when the benchmark
  dies;
* the **floor** at each row's size, timed under the row's own conditions: what any renderer of this kind needs per
  frame, a `cv2.remap` of the whole frame (bicubic, as the renderer's warp) on one thread, plus the live video
  encoder alone (`LiveMP4Writer` on those frames and the speech, 200 ms chunks). Each row prints Teller's wall time
  per frame as a multiple of it, which a shared machine's noise moves far less than the times themselves.

`--long-minutes 10` adds a long run: one session over 10 minutes of speech (the example recordings looped),
reporting resident memory after its first 10 s and at its end, and its peak.

Stage times are wall-clock times measured inside the session (`TellerSession.timings_ms`); the video encoding
runs on its own thread, overlapping the next chunk's work, so the stages add up to more than the wall time per
frame. The machine's load is printed with every run because a shared machine's other work shows up in them.
The models run at the pipeline's own torch thread count unless `--threads` says otherwise (its `num_threads`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from teller_recipe import ROOT

DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "teller-base"
DEFAULT_RUNS = ("examples/astronaut.png:256", "examples/astronaut.png:512", "examples/grace_hopper.jpg:native")
DEFAULT_AUDIO = ("examples/arctic_a0007.wav", "examples/arctic_a0009.wav", "examples/speech_flite_slt.wav")
STAGES = ("audio_encoder", "motion_generator", "temporal_refiner", "landmarks", "renderer", "video_encoding")
CHUNK_SECONDS = 0.2
PAPER_GPU_SECONDS_PER_VIDEO_SECOND = 0.92  # Teller (CVPR 2025), datacenter GPU
DEFAULT_BUSY_RUN = "examples/astronaut.png:512"
DEFAULT_BUSY = (1, 2)
BUSY_MAX_SECONDS = 900.0  # a busy process ends by itself after this, whatever happens to the benchmark
# Thread settings a user's environment does not have: a plain call runs without them.
THREAD_ENVIRONMENT = ("TELLER_TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# A busy neighbour: one core's worth of pure Python until its time is up or the benchmark that started it is gone.
BUSY_LOOP = """
import os, sys, time
end, parent = time.monotonic() + float(sys.argv[1]), int(sys.argv[2])
while time.monotonic() < end and os.getppid() == parent:
    sum(range(10000))
"""

# The plain call: a user's script, run in a fresh process. The hook only records the thread count the models ran at.
PLAIN_CALL = """
import json, sys, time, warnings
import torch
from teller_pipeline import TellerPipeline, streaming
from teller_pipeline.video import probe_media
from teller_recipe.benchmark.benchmark import peak_rss_mb

checkpoint, image, audio, output, max_size = sys.argv[1:6]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pipe = TellerPipeline.from_pretrained(checkpoint)
model_threads = []
pipe.temporal_refiner.register_forward_hook(lambda *_: model_threads.append(torch.get_num_threads()))
start, cpu_start = time.perf_counter(), time.process_time()
out = pipe(image=image, audio=audio, output_path=output, **({"max_size": int(max_size)} if max_size else {}))
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
video = probe_media(output)
print(json.dumps(dict(
    seconds=seconds, cpu_seconds=cpu, frames=video["frame_count"], width=video["width"], height=video["height"],
    model_threads=sorted(set(model_threads)), process_threads=torch.get_num_threads(),
    package_default_threads=streaming.TORCH_THREADS, peak_rss_mb=peak_rss_mb(),
)))
"""


@dataclass
class Floor:
    """Per frame, at one size and under one row's conditions: a remap of the frame and the live encoder alone."""

    remap_ms: float
    encode_ms: float

    @property
    def ms_per_frame(self) -> float:
        return self.remap_ms + self.encode_ms


@dataclass
class StreamResult:
    """One streaming run: a photo at one output size over `video_seconds` of speech."""

    image: str
    width: int
    height: int
    video_seconds: float
    frames: int
    stage_ms_per_frame: dict[str, float]
    wall_seconds: float
    fps: float
    real_time_factor: float
    cpu_seconds_per_video_second: float  # all threads of the process: the compute, whatever else the machine does
    latency_ms_median: float
    latency_ms_max: float
    peak_rss_mb: float
    offline_seconds: float | None = None
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    torch_threads: int = 0  # torch intra-op threads the models ran at
    busy_processes: int = 0  # busy loops the benchmark ran beside this row
    floor: Floor | None = None
    times_floor: float | None = None  # wall time per frame over the floor's


@dataclass
class PlainCallResult:
    """`pipe(image=..., audio=..., output_path=...)` in a fresh process with no thread setting (best of repeats)."""

    image: str
    width: int
    height: int
    video_seconds: float
    frames: int
    seconds: float
    fps: float
    real_time_factor: float
    cpu_seconds_per_video_second: float
    peak_rss_mb: float
    model_threads: list[int]  # torch threads seen inside the models during the call
    process_threads: int  # torch's own setting in that process, which the call leaves alone
    package_default_threads: int
    floor: Floor | None = None
    times_floor: float | None = None  # wall time per frame (the whole call) over the floor's
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class LongRunResult:
    minutes: float
    width: int
    height: int
    frames: int
    fps: float
    real_time_factor: float
    rss_start_mb: float
    rss_end_mb: float
    rss_growth_mb: float
    rss_samples_mb: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0  # the run's own peak (the loaded pipeline included)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------- measurements
def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux /proc; elsewhere the peak, the best available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: since its start or the last `reset_peak_rss`.

    On Linux this is the process's own high-water mark (VmHWM). `getrusage`'s ru_maxrss is not: it survives
    `exec`, so a process started from a larger one reports the parent's size at the fork (the plain calls, started
    from the benchmark with its pipeline loaded, read 1.17-1.23 GB there, their own peak being 0.89-0.99 GB).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # macOS: bytes, Linux: KiB


def reset_peak_rss() -> bool:
    """Start this process's peak resident memory afresh at its current size (Linux 4.0+); False where it cannot
    be reset (the peak then stays the process's highest so far)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak RSS; the other values touch page flags, not wanted here
        return True
    except OSError:
        return False


def load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return (0.0, 0.0, 0.0)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    from teller_pipeline.streaming import RENDER_THREADS

    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, torch {torch.__version__} "
            f"(its default {torch.get_num_threads()} threads), render threads {RENDER_THREADS}")


def model_threads(num_threads: int | None) -> int:
    """The torch thread count the pipeline's models run at for `num_threads` (as `streaming.torch_threads`)."""
    import torch

    from teller_pipeline.streaming import TORCH_THREADS

    return TORCH_THREADS if num_threads is None else num_threads or torch.get_num_threads()


def load_speech(paths: list[str | os.PathLike], seconds: float) -> np.ndarray:
    """Real recordings, concatenated and looped to `seconds` of 16 kHz mono speech."""
    from teller_pipeline.audio import SAMPLE_RATE, load_audio

    clips = np.concatenate([load_audio(path) for path in paths])
    needed = int(round(seconds * SAMPLE_RATE))
    return np.resize(clips, needed).astype(np.float32)  # np.resize repeats the clips


def stream(pipe, source, speech: np.ndarray, encode: bool = True, seed: int = 0, on_chunk=None,
           num_threads: int | None = None) -> tuple[dict[str, float], int, float, float, list[float]]:
    """Push `speech` in 200 ms chunks through a fresh session, encoding each chunk's frames into the live stream.

    Segments are encoded on a second thread while the session works on the next chunk, as a streaming server
    does (the encoder's own time is still measured and reported); the run ends when the last chunk is encoded.
    Returns (stage wall-times in ms summed over the run, frames, wall seconds, CPU seconds of the process,
    per-chunk latencies in ms).
    `on_chunk(chunk_index)` is called after every chunk (the long run samples memory there). `num_threads`: the
    session's (None: the pipeline's default).
    """
    from teller_pipeline.audio import SAMPLE_RATE
    from teller_pipeline.video import LiveMP4Writer

    chunk = int(round(CHUNK_SECONDS * SAMPLE_RATE))
    height, width = source.image.shape[:2]
    writer = LiveMP4Writer(25, SAMPLE_RATE, width, height) if encode else None
    encoder = ThreadPoolExecutor(1, thread_name_prefix="benchmark-encode")  # one worker: chunks stay in order
    encoding_ms = [0.0]

    def write(frames: list[np.ndarray], audio: np.ndarray | None, last: bool = False) -> None:
        t = time.perf_counter()
        if frames:
            writer.write(frames, audio)
        if last:
            writer.close()
        encoding_ms[0] += (time.perf_counter() - t) * 1000

    session = pipe.start_session(source, seed=seed, num_threads=num_threads)
    frames, latencies, pending = 0, [], []
    start, cpu_start = time.perf_counter(), time.process_time()
    for k, i in enumerate(range(0, len(speech), chunk)):
        audio = speech[i : i + chunk]
        arrived = time.perf_counter()
        batch = session.push(audio, SAMPLE_RATE)
        if batch:
            latencies.append((time.perf_counter() - arrived) * 1000)
            frames += len(batch)
            if writer is not None:
                pending.append(encoder.submit(write, batch, audio))
                while len(pending) > 2:  # back-pressure: never more than two chunks waiting
                    pending.pop(0).result()
        if on_chunk is not None:
            on_chunk(k)
    batch = session.finish()
    frames += len(batch)
    if writer is not None:
        pending.append(encoder.submit(write, batch, None, True))
    for future in pending:
        future.result()  # re-raises an encoding error
    encoder.shutdown()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    timings = dict(session.timings_ms)
    if writer is not None:
        timings["video_encoding"] = encoding_ms[0]
    return timings, frames, wall, cpu, latencies


def parse_run(spec: str) -> tuple[str, int | None]:
    """'PATH:SIZE' → (path, longest side); SIZE 'native' (or nothing) keeps the photo's own size."""
    path, _, size = spec.rpartition(":") if ":" in spec else (spec, "", "native")
    return path, None if size in ("", "native") else int(size)


def benchmark_run(pipe, image: str, size: int | None, speech: np.ndarray, repeats: int = 1,
                  offline: bool = True, encode: bool = True, num_threads: int | None = None,
                  busy: int = 0) -> StreamResult:
    """Best of `repeats` streaming runs (by wall time) of `image` at longest side `size` (None = its own), then the
    floor at that size; all of it beside `busy` busy processes (started here, gone when this returns)."""
    from teller_pipeline.audio import SAMPLE_RATE

    native = native_size(image)
    reset_peak_rss()  # this row's own peak, from the loaded pipeline on
    source = pipe.prepare_source(image, max_size=size or native)
    with busy_processes(busy):
        # warm-up: first-call allocations, thread pools (and the busy processes get going)
        stream(pipe, source, speech[: SAMPLE_RATE], encode=encode, num_threads=num_threads)
        best = None
        load_before = load_average()
        for _ in range(repeats):
            run = stream(pipe, source, speech, encode=encode, num_threads=num_threads)
            if best is None or run[2] < best[2]:
                best = run
        timings, frames, wall, cpu, latencies = best
        video_seconds = frames / 25
        height, width = source.image.shape[:2]
        result = StreamResult(
            image=Path(image).name,
            width=width,
            height=height,
            video_seconds=video_seconds,
            frames=frames,
            stage_ms_per_frame={stage: timings.get(stage, 0.0) / frames for stage in STAGES if stage in timings},
            wall_seconds=wall,
            fps=frames / wall,
            real_time_factor=wall / video_seconds,
            cpu_seconds_per_video_second=cpu / video_seconds,
            latency_ms_median=float(np.median(latencies)),
            latency_ms_max=float(np.max(latencies)),
            peak_rss_mb=peak_rss_mb(),
            load_before=load_before,
            torch_threads=model_threads(num_threads),
            busy_processes=busy,
        )
        if offline:
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    pipe(image, (SAMPLE_RATE, speech), max_size=size or native, output_path=Path(tmp) / "clip.mp4",
                         num_threads=num_threads)
                    times.append(time.perf_counter() - t)
            result.offline_seconds = min(times)
            result.peak_rss_mb = peak_rss_mb()
        result.floor = time_floor(source.image, speech, repeats)
        result.times_floor = 1000 / result.fps / result.floor.ms_per_frame
        result.load_after = load_average()
    return result


def native_size(image: str | os.PathLike) -> int:
    """The photo's longest side in pixels."""
    from PIL import Image

    with Image.open(image) as opened:
        return max(opened.size)


# ---------------------------------------------------------------------------------------------- side by side
def time_floor(image: np.ndarray, speech: np.ndarray, repeats: int = 1) -> Floor:
    """The floor per frame at `image`'s size: a `cv2.remap` of the whole frame on one thread (bicubic, float map,
    as the renderer's warp; a map that moves every frame) and `LiveMP4Writer` encoding those frames with `speech` in
    200 ms chunks, as the streaming runs do. Best of `repeats` over as many frames as the speech lasts."""
    import cv2

    from teller_pipeline.audio import SAMPLE_RATE
    from teller_pipeline.streaming import FPS, FRAMES_PER_SLICE
    from teller_pipeline.video import LiveMP4Writer

    height, width = image.shape[:2]
    num_frames = max(FRAMES_PER_SLICE, int(len(speech) / SAMPLE_RATE * FPS))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    sway = np.stack([np.sin(ys / 37.0), np.cos(xs / 41.0)], -1).astype(np.float32)  # a smooth displacement field
    grid = np.stack([xs, ys], -1)
    samples_per_frame = SAMPLE_RATE // FPS
    best_remap = best_encode = float("inf")
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for _ in range(repeats):
            # Slice by slice, as a session renders and the live stream encodes: only one slice's frames are held.
            remap_s = 0.0
            t = time.perf_counter()
            writer = LiveMP4Writer(FPS, SAMPLE_RATE, width, height)
            encode_s = time.perf_counter() - t
            for k in range(0, num_frames, FRAMES_PER_SLICE):
                frames = []
                for i in range(k, min(k + FRAMES_PER_SLICE, num_frames)):
                    warp = grid + float(3.0 * np.sin(i / 4.0)) * sway
                    t = time.perf_counter()
                    frames.append(cv2.remap(image, warp, None, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE))
                    remap_s += time.perf_counter() - t
                t = time.perf_counter()
                writer.write(frames, speech[k * samples_per_frame : (k + FRAMES_PER_SLICE) * samples_per_frame])
                encode_s += time.perf_counter() - t
            t = time.perf_counter()
            writer.close()
            encode_s += time.perf_counter() - t
            best_remap, best_encode = min(best_remap, remap_s), min(best_encode, encode_s)
    finally:
        cv2.setNumThreads(threads)
    return Floor(remap_ms=best_remap * 1000 / num_frames, encode_ms=best_encode * 1000 / num_frames)


@contextlib.contextmanager
def busy_processes(count: int, max_seconds: float = BUSY_MAX_SECONDS) -> Iterator[list[subprocess.Popen]]:
    """`count` busy neighbours for the block (each a Python busy loop, a core's worth of work); killed and reaped
    when it ends. Each also ends by itself after `max_seconds`, or as soon as this process is gone."""
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(max_seconds), str(os.getpid())],
                                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        yield processes
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def plain_call(checkpoint: str, image: str, size: int | None, speech: np.ndarray, repeats: int = 1,
               floor: Floor | None = None) -> PlainCallResult:
    """Best of `repeats` fresh processes, each loading the pipeline and calling it once as a user would (no thread
    setting, no thread variables in its environment, default controls); the speech is passed as a WAV file."""
    import soundfile

    import teller_pipeline
    from teller_pipeline.audio import SAMPLE_RATE

    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENVIRONMENT}
    package_parent = str(Path(teller_pipeline.__file__).resolve().parent.parent)  # the same code as this process
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    runs = []
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "speech.wav"
        soundfile.write(audio, speech, SAMPLE_RATE, subtype="FLOAT")
        for _ in range(repeats):
            done = subprocess.run(
                [sys.executable, "-c", PLAIN_CALL, checkpoint, image, str(audio), str(Path(tmp) / "clip.mp4"),
                 str(size or "")], env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"the plain call failed:\n{done.stderr[-2000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda run: run["seconds"])
    video_seconds = best["frames"] / 25
    result = PlainCallResult(
        image=Path(image).name, width=best["width"], height=best["height"], video_seconds=video_seconds,
        frames=best["frames"],
        seconds=best["seconds"], fps=best["frames"] / best["seconds"],
        real_time_factor=best["seconds"] / video_seconds,
        cpu_seconds_per_video_second=best["cpu_seconds"] / video_seconds, peak_rss_mb=best["peak_rss_mb"],
        model_threads=best["model_threads"], process_threads=best["process_threads"],
        package_default_threads=best["package_default_threads"], load_before=load_before, load_after=load_average(),
    )
    if floor is not None:
        result.floor, result.times_floor = floor, 1000 / result.fps / floor.ms_per_frame
    return result


def long_run(pipe, image: str, size: int | None, speech: np.ndarray, encode: bool = True,
             num_threads: int | None = None) -> LongRunResult:
    """One session over all of `speech`; resident memory sampled every 10 s of speech.

    The start value is taken after the first 10 s, once the generator's bounded context and the encoders'
    buffers have filled; the end value after the last chunk. The peak is the run's own, photo analysis included.
    """
    reset_peak_rss()
    source = pipe.prepare_source(image, max_size=size)
    samples: list[float] = []
    every = int(round(10 / CHUNK_SECONDS))
    load_before = load_average()
    _, frames, wall, _, _ = stream(pipe, source, speech, encode=encode, num_threads=num_threads,
                                   on_chunk=lambda k: samples.append(rss_mb()) if k % every == every - 1 else None)
    samples.append(rss_mb())
    height, width = source.image.shape[:2]
    return LongRunResult(
        minutes=len(speech) / 16000 / 60, width=width, height=height, frames=frames, fps=frames / wall,
        real_time_factor=wall / (frames / 25), rss_start_mb=samples[0], rss_end_mb=samples[-1],
        rss_growth_mb=samples[-1] - samples[0], rss_samples_mb=[round(s, 1) for s in samples],
        peak_rss_mb=peak_rss_mb(), load_before=load_before, load_after=load_average(),
    )


# ---------------------------------------------------------------------------------------------- report
def format_table(results: list[StreamResult | PlainCallResult]) -> str:
    """A Markdown table, one row per run: streaming runs (and those beside busy processes) and plain calls."""
    heads = ["output", "audio enc", "generator", "refiner", "landmarks", "renderer", "video enc", "total ms/frame",
             "FPS", "RTF", "CPU s / video s", "latency ms (median / max)", "offline s (clip)", "peak RSS MB",
             "floor ms/frame (remap + enc)", "× floor", "torch threads", "load (1-min avg)"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in results:
        output = f"{r.width}×{r.height} ({r.image})"
        if isinstance(r, PlainCallResult):
            cells = [f"{output}, plain call"] + ["–"] * (len(STAGES) + 1)
            cells += [f"{r.fps:.1f}", f"{r.real_time_factor:.2f}", f"{r.cpu_seconds_per_video_second:.2f}", "–",
                      f"{r.seconds:.1f} ({r.video_seconds:.0f} s)"]
            threads = ", ".join(map(str, r.model_threads))
        else:
            stages = [r.stage_ms_per_frame.get(s) for s in STAGES]
            cells = [output + (f", {r.busy_processes} busy" if r.busy_processes else "")]
            cells += ["–" if v is None else f"{v:.1f}" for v in stages]
            cells += [f"{sum(v for v in stages if v):.1f}", f"{r.fps:.1f}", f"{r.real_time_factor:.2f}",
                      f"{r.cpu_seconds_per_video_second:.2f}",
                      f"{r.latency_ms_median:.0f} / {r.latency_ms_max:.0f}",
                      "–" if r.offline_seconds is None else f"{r.offline_seconds:.1f} ({r.video_seconds:.0f} s)"]
            threads = str(r.torch_threads)
        cells.append(f"{r.peak_rss_mb:.0f}")
        if r.floor is None:
            cells += ["–", "–"]
        else:
            cells += [f"{r.floor.ms_per_frame:.1f} ({r.floor.remap_ms:.1f} + {r.floor.encode_ms:.1f})",
                      f"{r.times_floor:.1f}"]
        cells += [threads, f"{r.load_before[0]:.1f} → {r.load_after[0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_long_run(r: LongRunResult) -> str:
    return (f"long run: {r.minutes:.1f} min of speech at {r.width}×{r.height}, {r.frames} frames, "
            f"{r.fps:.1f} FPS (RTF {r.real_time_factor:.2f}); RSS {r.rss_start_mb:.0f} MB after 10 s → "
            f"{r.rss_end_mb:.0f} MB at the end (growth {r.rss_growth_mb:+.1f} MB, highest sample "
            f"{max(r.rss_samples_mb):.0f} MB), peak {r.peak_rss_mb:.0f} MB; "
            f"load {r.load_before[0]:.1f} → {r.load_after[0]:.1f}")


def run(args: argparse.Namespace, pipe=None) -> dict:
    """Run the benchmark described by `args` (see `build_parser`), print the report, return it as a dict.

    `pipe`: an already loaded `TellerPipeline` (default: load `args.checkpoint`; the plain calls always load it).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if pipe is None:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from teller_pipeline.pipeline_teller import TellerPipeline

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = TellerPipeline.from_pretrained(args.checkpoint)
    audio = [_in_checkout(a) for a in args.audio]
    speech = load_speech(audio, args.seconds)
    report: dict = {
        "machine": machine_description(),
        "command": " ".join(["python -m teller_recipe.benchmark.benchmark", *sys.argv[1:]]),
        "runs": [],
        "plain_calls": [],
        "busy_runs": [],
        "long_run": None,
        "paper_gpu_seconds_per_video_second": PAPER_GPU_SECONDS_PER_VIDEO_SECOND,
    }
    print(report["machine"], flush=True)
    rows: list[StreamResult | PlainCallResult] = []

    def add(row: StreamResult | PlainCallResult, key: str) -> None:
        rows.append(row)
        report[key].append(asdict(row))
        print(format_table([row]).splitlines()[-1], flush=True)

    for spec in args.runs:
        image, size = parse_run(spec)
        image = _in_checkout(image)
        streamed = benchmark_run(pipe, image, size, speech, args.repeats, offline=not args.no_offline,
                                 encode=not args.no_video, num_threads=args.threads)
        add(streamed, "runs")
        if not args.no_plain_call:  # the same size, so the streaming row's floor is its floor too
            add(plain_call(args.checkpoint, image, size, speech, args.repeats, streamed.floor), "plain_calls")
    if args.runs:
        image, size = parse_run(args.busy_run)
        for busy in args.busy:
            add(benchmark_run(pipe, _in_checkout(image), size, speech, args.repeats, offline=False,
                              encode=not args.no_video, num_threads=args.threads, busy=busy), "busy_runs")
    if rows:
        print(f"\n{args.seconds:g} s of speech per run, best of {args.repeats}; RTF = wall seconds per second of video "
              f"(paper: {PAPER_GPU_SECONDS_PER_VIDEO_SECOND} s on a GPU). Plain call: pipe(image=..., audio=..., "
              "output_path=...) in a fresh process with the package's defaults (its RTF and offline s compare with "
              "the row above it). N busy: the streaming run beside N busy processes started by the benchmark. "
              "× floor: wall time per frame over the floor's, the floor timed at the row's size and load.\n")
        print(format_table(rows))
    if args.long_minutes:
        image, size = parse_run(args.long_run)
        long = long_run(pipe, _in_checkout(image), size, load_speech(audio, args.long_minutes * 60),
                        encode=not args.no_video, num_threads=args.threads)
        report["long_run"] = asdict(long)
        print("\n" + format_long_run(long))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def _in_checkout(path: str) -> str:
    """A path as given, or relative to the checkout when it exists only there (the defaults are)."""
    return str(ROOT / path) if not Path(path).exists() and (ROOT / path).exists() else path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m teller_recipe.benchmark.benchmark",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="pipeline folder or Hub repo id")
    parser.add_argument("--runs", nargs="*", default=list(DEFAULT_RUNS),
                        help="portraits and sizes: PATH:SIZE (longest side, px) or PATH:native; none = long run only")
    parser.add_argument("--audio", nargs="+", default=list(DEFAULT_AUDIO),
                        help="speech files, concatenated and looped to --seconds")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of speech per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size; the fastest is reported")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the model calls, the pipeline's num_threads (default: the package's; "
                        "0 = torch's own default); the plain calls always use the package's")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline (pipe(...) → MP4) timing")
    parser.add_argument("--no-video", action="store_true", help="stream without encoding the live video")
    parser.add_argument("--no-plain-call", action="store_true",
                        help="skip the plain calls (pipe(...) in a fresh process with the package's defaults)")
    parser.add_argument("--busy", nargs="*", type=int, default=list(DEFAULT_BUSY),
                        help="also stream --busy-run beside this many busy processes, one row per number; none = skip")
    parser.add_argument("--busy-run", default=DEFAULT_BUSY_RUN, help="PATH:SIZE of the runs beside busy processes")
    parser.add_argument("--long-minutes", type=float, default=0.0,
                        help="also stream this many minutes of speech through one session, tracking memory")
    parser.add_argument("--long-run", default="examples/astronaut.png:512", help="PATH:SIZE of the long run")
    parser.add_argument("--json", help="also write the full report to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
