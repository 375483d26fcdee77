"""The speed benchmark runs and reports every field; the faster code paths give exactly the reference output.

Speed targets live in the benchmark's output (README "Speed"), not in timed assertions, which would be flaky on
shared machines. What is asserted here is what must never change: the frames. Tolerance for every faster path
below: none (bit-identical).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from teller_pipeline import streaming
from teller_pipeline.models.renderer.warp import rasterise
from teller_pipeline.video import _video_frame
from teller_recipe import ROOT
from teller_recipe.benchmark import benchmark

from .conftest import ASTRONAUT, REAL_SPEECH


def test_benchmark_reports_every_field(pipe, capsys, tmp_path):
    threads = streaming.TORCH_THREADS + 1  # not the package's default, which the plain call must use instead
    args = benchmark.build_parser().parse_args(
        ["--runs", f"{ASTRONAUT}:128", "--audio", str(REAL_SPEECH), "--seconds", "1.2", "--long-minutes", "0.03",
         "--long-run", f"{ASTRONAUT}:128", "--busy-run", f"{ASTRONAUT}:128", "--threads", str(threads),
         "--json", str(tmp_path / "report.json")]
    )
    report = benchmark.run(args, pipe=pipe)
    printed = capsys.readouterr().out
    (run,) = report["runs"]
    assert (run["width"], run["height"]) == (128, 128)
    assert run["frames"] == 30  # 1.2 s at 25 fps
    assert set(run["stage_ms_per_frame"]) == set(benchmark.STAGES)
    assert all(ms > 0 for ms in run["stage_ms_per_frame"].values())
    for key in ("fps", "real_time_factor", "cpu_seconds_per_video_second", "latency_ms_median", "latency_ms_max",
                "peak_rss_mb", "offline_seconds"):
        assert run[key] > 0, key
    assert run["real_time_factor"] == pytest.approx(25 / run["fps"])  # wall seconds per second of video
    assert run["torch_threads"] == threads and run["busy_processes"] == 0
    assert run["floor"]["remap_ms"] > 0 and run["floor"]["encode_ms"] > 0
    assert run["times_floor"] == pytest.approx(1000 / run["fps"] / sum(run["floor"].values()))
    # The plain call: a fresh process with the package's own thread use, whatever --threads says.
    (plain,) = report["plain_calls"]
    assert plain["model_threads"] == [plain["package_default_threads"]] != [threads]
    assert (plain["width"], plain["height"], plain["frames"]) == (128, 128, 30)
    assert plain["seconds"] > 0 and plain["peak_rss_mb"] > 0 and plain["times_floor"] > 0
    assert [busy["busy_processes"] for busy in report["busy_runs"]] == list(benchmark.DEFAULT_BUSY)
    assert all(busy["frames"] == 30 and busy["floor"]["remap_ms"] > 0 for busy in report["busy_runs"])
    assert not _busy_children(), "the busy processes outlived the run"
    assert "128×128 (astronaut.png), plain call" in printed and "128×128 (astronaut.png), 2 busy" in printed
    assert "× floor" in printed
    long = report["long_run"]
    assert long["frames"] == 45 and long["rss_start_mb"] > 0 and long["rss_end_mb"] > 0
    assert long["peak_rss_mb"] >= 0.98 * max(long["rss_samples_mb"])  # the kernel updates its high-water mark lazily
    assert "| output | audio enc | generator |" in printed and "128×128 (astronaut.png)" in printed
    assert "long run:" in printed and "0.92" in printed
    assert (tmp_path / "report.json").read_text().startswith("{")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process's own peak is read from /proc")
def test_peak_memory_is_the_process_own_and_resets():
    """A process started from a larger one reports its own peak: `getrusage`'s ru_maxrss, which the plain calls
    used to report, survives exec and gave them the benchmark's size at the fork. A reset starts a row afresh."""
    ballast = np.ones(400_000_000 // 8)  # 400 MB resident here
    code = "from teller_recipe.benchmark.benchmark import peak_rss_mb; print(peak_rss_mb())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert float(child.stdout) < 200
    peak = benchmark.peak_rss_mb()
    del ballast  # unmapped: resident memory drops by 400 MB, the peak stays
    assert benchmark.peak_rss_mb() == pytest.approx(peak, abs=1)
    assert benchmark.reset_peak_rss()
    assert benchmark.peak_rss_mb() < peak - 300


def _busy_children() -> list[int]:
    """Processes this one started that run the benchmark's busy loop."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if parent == os.getpid() and benchmark.BUSY_LOOP.strip() in command:
            found.append(int(stat.parent.name))
    return found


def test_busy_processes_work_and_are_gone_after_the_block():
    with pytest.raises(KeyboardInterrupt), benchmark.busy_processes(2) as processes:
        time.sleep(0.5)
        assert all(process.poll() is None for process in processes)
        assert sorted(_busy_children()) == sorted(process.pid for process in processes)
        cpu_before = [_cpu_ticks(process.pid) for process in processes]
        time.sleep(0.5)
        assert all(_cpu_ticks(p.pid) > before for p, before in zip(processes, cpu_before, strict=True))
        raise KeyboardInterrupt  # even an interrupted benchmark leaves none behind
    assert all(process.returncode is not None for process in processes)
    assert not _busy_children()


def test_busy_processes_end_by_themselves():
    """Bounded in time, and gone when the benchmark that started them dies without cleaning up."""
    with benchmark.busy_processes(1, max_seconds=0.5) as (process,):
        assert process.wait(timeout=30) == 0
    orphan = subprocess.run(
        [sys.executable, "-c", "import os\nfrom teller_recipe.benchmark.benchmark import busy_processes\n"
         "with busy_processes(1) as (busy,):\n    print(busy.pid, flush=True)\n    os._exit(0)"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120, check=True)
    pid = int(orphan.stdout)
    deadline = time.monotonic() + 30
    while _state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    outlived = _state(pid) not in ("gone", "Z")
    if outlived:
        os.kill(pid, 9)
    assert not outlived, "the busy loop outlived its benchmark"


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_benchmark_cli_documents_its_options():
    result = subprocess.run([sys.executable, "-m", "teller_recipe.benchmark.benchmark", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--runs", "--seconds", "--long-minutes", "--threads", "--repeats", "--json", "--busy",
                   "--no-plain-call"):
        assert option in result.stdout


def test_parse_run():
    assert benchmark.parse_run("a/b.png:256") == ("a/b.png", 256)
    assert benchmark.parse_run("a/b.png:native") == ("a/b.png", None)
    assert benchmark.parse_run("a/b.png") == ("a/b.png", None)


# ---------------------------------------------------------------------------------------------- faster paths
def _reference_rasterise(grid, q, nx, ny, step, off, g0):
    """The renderer's rasteriser before it was optimised, verbatim: the reference for the fast one."""
    p0, e1, e2 = grid[:, 0], grid[:, 1] - grid[:, 0], grid[:, 2] - grid[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-9
    p0, e1, e2, det, q, grid = p0[ok], e1[ok], e2[ok], det[ok], q[ok], grid[ok]
    i0 = np.clip(np.ceil(grid[..., 0].min(1) - 1e-4), 0, nx).astype(np.int64)
    i1 = np.clip(np.floor(grid[..., 0].max(1) + 1e-4), -1, nx - 1).astype(np.int64)
    j0 = np.clip(np.ceil(grid[..., 1].min(1) - 1e-4), 0, ny).astype(np.int64)
    j1 = np.clip(np.floor(grid[..., 1].max(1) + 1e-4), -1, ny - 1).astype(np.int64)
    w = np.maximum(i1 - i0 + 1, 0)
    counts = w * np.maximum(j1 - j0 + 1, 0)
    disp = np.zeros((ny, nx, 2), np.float32)
    total = int(counts.sum())
    if total == 0:
        return disp
    tri = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    wt = w[tri]
    gi = i0[tri] + local % wt
    gj = j0[tri] + local // wt
    vx, vy = gi - p0[tri, 0], gj - p0[tri, 1]
    inv = 1.0 / det[tri]
    l1 = (vx * e2[tri, 1] - vy * e2[tri, 0]) * inv
    l2 = (e1[tri, 0] * vy - e1[tri, 1] * vx) * inv
    inside = (l1 >= -1e-5) & (l2 >= -1e-5) & (l1 + l2 <= 1 + 1e-5)
    tri, gi, gj, l1, l2 = tri[inside], gi[inside], gj[inside], l1[inside], l2[inside]
    qt = q[tri]
    sx = qt[:, 0, 0] + l1 * (qt[:, 1, 0] - qt[:, 0, 0]) + l2 * (qt[:, 2, 0] - qt[:, 0, 0])
    sy = qt[:, 0, 1] + l1 * (qt[:, 1, 1] - qt[:, 0, 1]) + l2 * (qt[:, 2, 1] - qt[:, 0, 1])
    disp[gj, gi, 0] = sx - ((gi + g0[0]) * step + off)
    disp[gj, gi, 1] = sy - ((gj + g0[1]) * step + off)
    return disp


@pytest.mark.parametrize("seed", range(5))
def test_fast_rasteriser_is_bit_identical(seed):
    """Overlapping, tiny, huge, degenerate and off-grid triangles, as float32 → float64 like the renderer's."""
    rng = np.random.default_rng(seed)
    n = 400
    centres = rng.uniform(-10, 90, (n, 1, 2))
    sizes = rng.choice([0.3, 2.0, 8.0, 40.0], (n, 1, 1))
    p = (centres + sizes * rng.normal(size=(n, 3, 2))).astype(np.float32)
    p[:10, 2] = p[:10, 0]  # degenerate
    q = (p + rng.normal(scale=3.0, size=p.shape)).astype(np.float32)
    step, off, g0 = 3, 1.0, np.array([-2, -1])
    grid = (p - off) / step - g0
    fast = rasterise(grid, q, 37, 41, step, off, g0)
    reference = _reference_rasterise(grid, q, 37, 41, step, off, g0)
    assert np.array_equal(fast, reference)
    assert np.count_nonzero(fast) > 100  # the case is not trivially empty


def test_parallel_rendering_equals_serial(pipe, speech, monkeypatch):
    """A slice's frames rendered on several threads are exactly the frames rendered one by one."""
    source = pipe.prepare_source(ASTRONAUT, max_size=192)
    frames = {}
    for threads in (1, 3):
        monkeypatch.setattr(streaming, "RENDER_THREADS", threads)
        session = pipe.start_session(source, seed=4)
        frames[threads] = session.push_16k(speech[:16000]) + session.finish()
    assert len(frames[1]) == 25
    assert all(np.array_equal(a, b) for a, b in zip(frames[1], frames[3], strict=True))
    assert not all(np.array_equal(frames[1][0], f) for f in frames[1])  # the face moves


def test_shared_reformatter_gives_the_same_yuv():
    """Writers reuse one swscale context; the YUV planes equal a fresh `VideoFrame.reformat` per frame."""
    from av.video.reformatter import VideoReformatter

    rng = np.random.default_rng(0)
    reformatter = VideoReformatter()
    for _ in range(3):
        rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        fresh = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
        shared = _video_frame(rgb, 0, reformatter=reformatter)
        assert np.array_equal(fresh.to_ndarray(), shared.to_ndarray())
