"""The app on a ZeroGPU Space, simulated as far as this CPU-only machine allows, with the real `spaces` package.

With SPACES_ZERO_GPU set, `spaces` patches torch at import into its CUDA emulation (as on a Space's main process):
`.to("cuda")` keeps the weights in memory under a "cuda" device, and an operation that mixes such tensors with CPU
tensors raises "Expected all tensors to be on the same device". `spaces` only checks that torch is a CUDA build; the
probe below gives the CPU build the three attributes it looks at. Each `@spaces.GPU` function would run in a forked
worker on a real GPU, scheduled by the Space's device API; here the functions run the way that worker runs them
(`spaces.zero.wrappers.forked`), with their arguments and results pickled as ZeroGPU sends them, under the emulation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ASTRONAUT, REAL_SPEECH, ROOT

pytest.importorskip("spaces")

SPEECH_SECONDS = 1.0  # the shortest video the pipeline makes

PROBE = f"""
import base64, inspect, json, pickle, tempfile, threading, time, traceback
import numpy as np, soundfile as sf, torch

torch.version.cuda = "12.8"  # what `spaces` reads to pick its CUDA constants
def _cuda_init():
    raise RuntimeError("there is no GPU here: ZeroGPU's emulation should have intercepted this")
def _is_in_bad_fork():
    return False
torch._C._cuda_init = _cuda_init  # patched (and kept) by spaces' emulation; the CPU build has none
torch.cuda._is_in_bad_fork = _is_in_bad_fork  # the CPU build's is a lambda, which spaces cannot send to a process
# The CPU build makes no CUDA generator, and the emulation computes "cuda" tensors on the CPU: sampling draws from a
# CPU generator that reports the device it was made for (isinstance still holds for torch's own generators).
_Generator = torch.Generator
class _GeneratorType(type(_Generator)):
    def __instancecheck__(cls, instance):
        return isinstance(instance, _Generator)
class _ReportedGenerator(_Generator, metaclass=_GeneratorType):
    def __new__(cls, device="cpu"):
        generator = super().__new__(cls)
        generator.reported_device = torch.device(device)
        return generator
    def __init__(self, device="cpu"):
        super().__init__()
    @property
    def device(self):
        return self.reported_device
torch.Generator = _ReportedGenerator

import app  # imports spaces first, as on the Space
import gradio as gr
import spaces.zero.wrappers
from spaces.zero.decorator import decorated_cache
from teller_pipeline.audio import load_audio
from teller_pipeline.video import probe_media

report = dict(zero_gpu=app.ZERO_GPU, device=app.DEVICE,
              components={{name: next(getattr(app.pipe, name).parameters()).device.type
                          for name in app.GPU_COMPONENTS}},
              live_queue=type(app.live.sessions._make_queue()).__module__)
gpu_functions = dict(generate=app._animate, live=app._live_frames)
report["wrapped"] = {{name: fn in decorated_cache and hasattr(fn, "zerogpu") for name, fn in gpu_functions.items()}}
budget = inspect.getclosurevars(app._animate).nonlocals["duration"]
report["durations"] = dict(generate_10s=budget("", np.zeros(160000), {{}}, 256, ""),
                           live=inspect.getclosurevars(app._live_frames).nonlocals["duration"],
                           live_seconds=app.LIVE_SECONDS)

# Inside the GPU functions: the devices the neural components' layers see their inputs on.
seen = set()
def record(module, args):
    seen.update(arg.device.type for arg in args if isinstance(arg, torch.Tensor))
for name in app.GPU_COMPONENTS:
    for module in getattr(app.pipe, name).modules():
        module.register_forward_pre_hook(record)

spaces.zero.wrappers.forked = True  # run the decorated functions as ZeroGPU's worker runs them
calls = []
def across_processes(fn):
    def call(*args):
        calls.append(fn.__name__)
        return pickle.loads(pickle.dumps(fn(*pickle.loads(pickle.dumps(args)))))
    return call
def across_processes_yielding(fn):
    def call(*args):
        calls.append(fn.__name__)
        for item in fn(*pickle.loads(pickle.dumps(args))):
            yield pickle.loads(pickle.dumps(item))
    return call
app._animate = across_processes(app._animate)
app.live.frames = across_processes_yielding(app.live.frames)

def outcome(run):
    try:
        return dict(frames=run())
    except Exception as error:
        cause = error.__cause__ or error
        ours = [f for f in traceback.extract_tb(cause.__traceback__) if "teller_pipeline" in f.filename]
        where = f" at {{ours[-1].filename.split('teller_pipeline')[-1]}}:{{ours[-1].lineno}}" if ours else ""
        return dict(error=f"{{type(cause).__name__}}: {{cause}}{{where}}")

speech = load_audio({str(REAL_SPEECH)!r})[: int({SPEECH_SECONDS} * 16000)]
def generate():
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        sf.write(wav.name, speech, 16000)
        return probe_media(app.generate({str(ASTRONAUT)!r}, wav.name, output_size=256))["frame_count"]
report["generate"] = outcome(generate)

def live():
    request = gr.Request(session_hash="zero-gpu")
    def speak():
        while not app.live.sessions.is_live("zero-gpu"):
            time.sleep(0.01)
        for start in range(0, len(speech), 1600):
            app.live.sessions.push("zero-gpu", (16000, (speech[start : start + 1600] * 32767).astype(np.int16)))
        app.live.stop(request)
    talker = threading.Thread(target=speak, daemon=True)
    talker.start()
    app.live.line.join("zero-gpu")  # the visitor opened the Live tab: nobody else waits, the turn is theirs
    chunks = list(app.live.session({str(ASTRONAUT)!r}, 1.0, 1.0, 15, 256, request))
    with tempfile.NamedTemporaryFile(suffix=".mp4") as stream:
        stream.write(b"".join(base64.b64decode(chunk["data"]) for chunk in chunks))
        stream.flush()
        return round(probe_media(stream.name)["video_duration"] * 25)  # (a session behind repeats frames)
report["live"] = outcome(live)
report["calls"] = calls
report["input_devices"] = sorted(seen)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def zero_gpu() -> dict:
    # The device API is never reached: nothing is scheduled on a GPU here.
    env = dict(os.environ, SPACES_ZERO_GPU="true", SPACES_ZERO_DEVICE_API_URL="http://127.0.0.1:9/")
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_zero_gpu_wraps_the_generate_and_live_functions(zero_gpu):
    assert zero_gpu["zero_gpu"] and zero_gpu["device"] == "cuda"
    assert set(zero_gpu["components"].values()) == {"cuda"}  # moved at import, as ZeroGPU wants
    assert zero_gpu["wrapped"] == dict(generate=True, live=True)
    durations = zero_gpu["durations"]
    assert durations["generate_10s"] >= 10  # the reservation covers the speech in real time, and more
    assert durations["live"] > durations["live_seconds"]  # a live session fits in its one GPU call
    # The live chunks reach the forked GPU worker through a multiprocessing.Manager queue proxy.
    assert zero_gpu["live_queue"] == "multiprocessing.managers"


def test_zero_gpu_generate_and_live_run_on_the_gpu(zero_gpu):
    frames = round(SPEECH_SECONDS * 25)
    assert zero_gpu["generate"] == dict(frames=frames), zero_gpu["generate"]
    assert zero_gpu["live"] == dict(frames=frames), zero_gpu["live"]
    assert zero_gpu["calls"] == ["_animate", "_live_frames"]
    assert zero_gpu["input_devices"] == ["cuda"]  # every layer of the neural parts saw its inputs on the GPU
