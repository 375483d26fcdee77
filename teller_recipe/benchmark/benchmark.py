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
* peak resident memory of the process (model loading included);
* offline generation of the clip (`pipe(image, audio, output_path=...)`: photo analysis, generation, MP4) in
  wall seconds.

`--long-minutes 10` adds a long run: one session over 10 minutes of speech (the example recordings looped),
reporting resident memory at its start and end.

Stage times are wall-clock times measured inside the session (`TellerSession.timings_ms`); the video encoding
runs on its own thread, overlapping the next chunk's work, so the stages add up to more than the wall time per
frame. The machine's load is printed with every run because a shared machine's other work shows up in them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
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
    """Peak resident memory of this process so far, in MB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # macOS: bytes, Linux: KiB


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

    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), render threads {_render_threads()}")


def _render_threads() -> int:
    from teller_pipeline.streaming import RENDER_THREADS

    return RENDER_THREADS


def load_speech(paths: list[str | os.PathLike], seconds: float) -> np.ndarray:
    """Real recordings, concatenated and looped to `seconds` of 16 kHz mono speech."""
    from teller_pipeline.audio import SAMPLE_RATE, load_audio

    clips = np.concatenate([load_audio(path) for path in paths])
    needed = int(round(seconds * SAMPLE_RATE))
    return np.resize(clips, needed).astype(np.float32)  # np.resize repeats the clips


def stream(pipe, source, speech: np.ndarray, encode: bool = True, seed: int = 0,
           on_chunk=None) -> tuple[dict[str, float], int, float, float, list[float]]:
    """Push `speech` in 200 ms chunks through a fresh session, encoding each chunk's frames into the live stream.

    Segments are encoded on a second thread while the session works on the next chunk, as a streaming server
    does (the encoder's own time is still measured and reported); the run ends when the last chunk is encoded.
    Returns (stage wall-times in ms summed over the run, frames, wall seconds, CPU seconds of the process,
    per-chunk latencies in ms).
    `on_chunk(chunk_index)` is called after every chunk (the long run samples memory there).
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

    session = pipe.start_session(source, seed=seed)
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
                  offline: bool = True, encode: bool = True) -> StreamResult:
    """Best of `repeats` streaming runs (by wall time) of `image` at longest side `size` (None = its own)."""
    from PIL import Image

    from teller_pipeline.audio import SAMPLE_RATE

    with Image.open(image) as opened:
        native = max(opened.size)
    source = pipe.prepare_source(image, max_size=size or native)
    stream(pipe, source, speech[: SAMPLE_RATE], encode=encode)  # warm-up: first-call allocations, thread pools
    best = None
    load_before = load_average()
    for _ in range(repeats):
        run = stream(pipe, source, speech, encode=encode)
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
    )
    if offline:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                pipe(image, (SAMPLE_RATE, speech), max_size=size or native, output_path=Path(tmp) / "clip.mp4")
                times.append(time.perf_counter() - t)
        result.offline_seconds = min(times)
        result.peak_rss_mb = peak_rss_mb()
    result.load_after = load_average()
    return result


def long_run(pipe, image: str, size: int | None, speech: np.ndarray, encode: bool = True) -> LongRunResult:
    """One session over all of `speech`; resident memory sampled every 10 s of speech.

    The start value is taken after the first 10 s, once the generator's bounded context and the encoders'
    buffers have filled; the end value after the last chunk.
    """
    source = pipe.prepare_source(image, max_size=size)
    samples: list[float] = []
    every = int(round(10 / CHUNK_SECONDS))
    load_before = load_average()
    _, frames, wall, _, _ = stream(pipe, source, speech, encode=encode,
                                on_chunk=lambda k: samples.append(rss_mb()) if k % every == every - 1 else None)
    samples.append(rss_mb())
    height, width = source.image.shape[:2]
    return LongRunResult(
        minutes=len(speech) / 16000 / 60, width=width, height=height, frames=frames, fps=frames / wall,
        real_time_factor=wall / (frames / 25), rss_start_mb=samples[0], rss_end_mb=samples[-1],
        rss_growth_mb=samples[-1] - samples[0], rss_samples_mb=[round(s, 1) for s in samples],
        load_before=load_before, load_after=load_average(),
    )


# ---------------------------------------------------------------------------------------------- report
def format_table(results: list[StreamResult]) -> str:
    """A Markdown table, one row per run."""
    heads = ["output", "audio enc", "generator", "refiner", "landmarks", "renderer", "video enc", "total ms/frame",
             "FPS", "RTF", "CPU s / video s", "latency ms (median / max)", "offline s (clip)", "peak RSS MB",
             "load (1-min avg)"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in results:
        stages = [r.stage_ms_per_frame.get(s) for s in STAGES]
        cells = [f"{r.width}×{r.height} ({r.image})"] + ["–" if v is None else f"{v:.1f}" for v in stages]
        cells += [f"{sum(v for v in stages if v):.1f}", f"{r.fps:.1f}", f"{r.real_time_factor:.2f}",
                  f"{r.cpu_seconds_per_video_second:.2f}",
                  f"{r.latency_ms_median:.0f} / {r.latency_ms_max:.0f}",
                  "–" if r.offline_seconds is None else f"{r.offline_seconds:.1f} ({r.video_seconds:.0f} s)",
                  f"{r.peak_rss_mb:.0f}", f"{r.load_before[0]:.1f} → {r.load_after[0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_long_run(r: LongRunResult) -> str:
    return (f"long run: {r.minutes:.1f} min of speech at {r.width}×{r.height}, {r.frames} frames, "
            f"{r.fps:.1f} FPS (RTF {r.real_time_factor:.2f}); RSS {r.rss_start_mb:.0f} MB after 10 s → "
            f"{r.rss_end_mb:.0f} MB at the end (growth {r.rss_growth_mb:+.1f} MB); "
            f"load {r.load_before[0]:.1f} → {r.load_after[0]:.1f}")


def run(args: argparse.Namespace, pipe=None) -> dict:
    """Run the benchmark described by `args` (see `build_parser`), print the report, return it as a dict.

    `pipe`: an already loaded `TellerPipeline` (default: load `args.checkpoint`).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if pipe is None:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from teller_pipeline.pipeline_teller import TellerPipeline

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = TellerPipeline.from_pretrained(args.checkpoint)
    audio = [str(ROOT / a) if not Path(a).exists() and (ROOT / a).exists() else a for a in args.audio]
    speech = load_speech(audio, args.seconds)
    report: dict = {
        "machine": machine_description(),
        "command": " ".join(["python -m teller_recipe.benchmark.benchmark", *sys.argv[1:]]),
        "runs": [],
        "long_run": None,
        "paper_gpu_seconds_per_video_second": PAPER_GPU_SECONDS_PER_VIDEO_SECOND,
    }
    print(report["machine"], flush=True)
    results = []
    for spec in args.runs:
        image, size = parse_run(spec)
        if not Path(image).exists() and (ROOT / image).exists():
            image = str(ROOT / image)
        results.append(benchmark_run(pipe, image, size, speech, args.repeats, offline=not args.no_offline,
                                     encode=not args.no_video))
        print(format_table(results[-1:]).splitlines()[-1], flush=True)
    report["runs"] = [asdict(r) for r in results]
    if results:
        print(f"\n{args.seconds:g} s of speech per run, best of {args.repeats}; RTF = wall seconds per second of video "
              f"(paper: {PAPER_GPU_SECONDS_PER_VIDEO_SECOND} s on a GPU)\n")
        print(format_table(results))
    if args.long_minutes:
        image, size = parse_run(args.long_run)
        if not Path(image).exists() and (ROOT / image).exists():
            image = str(ROOT / image)
        long = long_run(pipe, image, size, load_speech(audio, args.long_minutes * 60), encode=not args.no_video)
        report["long_run"] = asdict(long)
        print("\n" + format_long_run(long))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


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
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline (pipe(...) → MP4) timing")
    parser.add_argument("--no-video", action="store_true", help="stream without encoding the live video")
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
