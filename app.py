"""Teller web demo: make a portrait photo speak, from a speech file (Generate) or live from a microphone (Live).

`python app.py` serves it locally on a CPU; the same file runs on a ZeroGPU Hugging Face Space. The app is a thin
layout over one `TellerPipeline`: the Generate tab calls it once per request (also as an API endpoint and, where
Gradio's `mcp` extra is installed, an MCP tool); the Live tab runs one streaming session per visitor through
`app_live.LiveServer`, which streams the frames back, with the visitor's own voice, to a player in the page.

Settings (environment): TELLER_CHECKPOINT (folder or Hub id, default the bundled checkpoints/teller-base),
TELLER_LIVE_SECONDS (time limit of a live session), TELLER_LIVE_SESSIONS (live sessions run at once),
TELLER_MAX_SPEECH_SECONDS (longest speech the Generate tab accepts), TELLER_QUEUE_SIZE (requests that may wait);
the pipeline's own TELLER_TORCH_THREADS and TELLER_RENDER_THREADS (`teller_pipeline.streaming`) set its thread use.
"""

# ZeroGPU patches torch when `spaces` is imported, so it must come before anything that imports torch.
import spaces  # isort: skip

import atexit
import contextlib
import importlib.util
import logging
import os
import queue
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio import processing_utils, route_utils
from gradio.data_classes import ImageData
from starlette.routing import WebSocketRoute

from app_live import (
    MICROPHONE_ROUTE,
    VIDEO_ROUTE,
    FramesAndVoice,
    LiveServer,
    limit_malloc_arenas,
    live_frames,
    visitor_errors,
)
from teller_pipeline import HUB_MODEL_ID, TellerPipeline
from teller_pipeline.audio import SAMPLE_RATE, load_audio
from teller_pipeline.controls import GenerationControls
from teller_pipeline.pipeline_teller import PreparedSource

logger = logging.getLogger("teller.app")

ROOT = Path(__file__).resolve().parent
DEFAULTS = GenerationControls()  # the pipeline's own defaults, for the sliders and the API
EXAMPLES = ROOT / "examples"
CHECKPOINT = os.environ.get("TELLER_CHECKPOINT", str(ROOT / "checkpoints" / "teller-base"))
MODEL_ID = os.environ.get("TELLER_MODEL_ID", HUB_MODEL_ID)  # the model repo on the Hub
MAX_SPEECH_SECONDS = float(os.environ.get("TELLER_MAX_SPEECH_SECONDS", 60))
LIVE_SECONDS = float(os.environ.get("TELLER_LIVE_SECONDS", 60))
# Requests waiting for their turn, all events together; past that a visitor is told the queue is full instead of
# adding work nobody will wait for (a 60 s speech takes about a minute on a CPU).
QUEUE_SIZE = int(os.environ.get("TELLER_QUEUE_SIZE", 16))
LIVE_SIZES = [256, 384, 512]  # longest side of live frames: small enough for a CPU to keep up with speech
LIVE_DEFAULT_SIZE = 384
# The Generate tab's output size (longest side). A slider rather than a radio of sizes: Gradio 6.31 declares a
# radio's numeric choices as strings in the API schema, which MCP clients then cannot satisfy.
OUTPUT_MIN_SIZE, OUTPUT_MAX_SIZE, OUTPUT_SIZE_STEP = 256, 1024, 128
OUTPUT_DEFAULT_SIZE = 512
# Largest file a visitor may upload: a 40 MP JPEG (the pipeline's pixel limit; 10-20 MB) or a minute of stereo
# speech as uncompressed float (23 MB) fits.
MAX_UPLOAD_SIZE = "50mb"
# Serve the Generate tab as an MCP tool too, where Gradio's `mcp` extra is installed.
MCP_SERVER = importlib.util.find_spec("mcp") is not None

# Before any thread starts: live sessions otherwise leave memory behind in many malloc arenas (see app_live).
limit_malloc_arenas()

ZERO_GPU = spaces.config.Config.zero_gpu
DEVICE = "cuda" if ZERO_GPU or torch.cuda.is_available() else "cpu"
# On a CPU every session competes for the same cores: one live session at a time keeps it real time. The
# Generate tab has its own limit, so a long live session never blocks it.
LIVE_SESSIONS = int(os.environ.get("TELLER_LIVE_SESSIONS", 4 if DEVICE == "cuda" else 1))
GENERATE_AT_ONCE = 2 if DEVICE == "cuda" else 1

# ---------------------------------------------------------------------------------------------------- the model
# Only the neural parts go to the GPU: face analysis, the motion encoder and the renderer are numpy/MediaPipe
# code that runs on the CPU, so a portrait can be analysed outside a (ZeroGPU) GPU call.
GPU_COMPONENTS = ("audio_encoder", "motion_generator", "motion_tokenizer", "temporal_refiner")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pipe = TellerPipeline.from_pretrained(CHECKPOINT)
for _name in GPU_COMPONENTS:
    getattr(pipe, _name).to(DEVICE)
# diffusers' progress bar, which gr.Progress(track_tqdm=True) turns into the Generate tab's progress bar.
pipe.set_progress_bar_config(desc="Animating", leave=False)

if DEVICE == "cpu":
    # Pay MediaPipe's start-up and the first torch calls now rather than in the first visitor's session.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.start_session(pipe.prepare_source(EXAMPLES / "astronaut.png", 256)).push(np.zeros(8000, np.float32))


# ------------------------------------------------------------------------------------------------ Generate tab
def _generate_budget(portrait: str, speech: np.ndarray, controls: dict, max_size: int, output: str) -> int:
    """ZeroGPU time to reserve: start-up plus a generous real-time factor for this speech."""
    return int(20 + 1.5 * len(speech) / SAMPLE_RATE)


@spaces.GPU(duration=_generate_budget)
def _animate(portrait: str, speech: np.ndarray, controls: dict, max_size: int, output: str) -> str:
    pipe(portrait, speech, max_size=max_size, output_path=output, **controls)
    return output


OUTPUTS = Path(tempfile.mkdtemp(prefix="teller-outputs-"))


@atexit.register
def _remove_temporary_files(owner: int = os.getpid()) -> None:
    """When the app exits (not a forked ZeroGPU worker: the files are the app's), remove the results folder and
    the visitors' files in Gradio's cache. Gradio deletes the latter itself when its server shuts down, but a
    server with open connections (any open page) is still shutting down when Gradio gives up waiting for it (5 s)
    and the process ends."""
    if os.getpid() != owner:
        return
    shutil.rmtree(OUTPUTS, ignore_errors=True)
    with contextlib.suppress(Exception):  # nothing at exit may stop the exit
        route_utils.delete_files_created_by_app(demo, age=None)


def generate(
    portrait: str | None,
    speech: str | None,
    head_motion: float = DEFAULTS.head_motion_scale,
    expression: float = DEFAULTS.expression_scale,
    blinks_per_minute: float = DEFAULTS.blinks_per_minute,
    seed: float = DEFAULTS.seed,
    output_size: int = OUTPUT_DEFAULT_SIZE,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way to ask for a progress bar)
) -> str:
    """Make a portrait photo speak: animate it with a speech recording and return the talking-head video.

    Lips, jaw, eyes, brows and head move with the voice over the whole photo. The video is an MP4 (H.264 at 25 fps,
    with the speech as AAC audio) that lasts as long as the speech.

    Args:
        portrait: the portrait photo (PNG, JPEG, WebP...); of several faces, the largest is animated.
        speech: the speech recording (WAV, MP3, FLAC, OGG, WebM, M4A...); speech past the demo's limit is refused.
        head_motion: how much the head moves; 0 keeps it still.
        expression: how much the lips, jaw and brows move.
        blinks_per_minute: how often the eyes blink.
        seed: the same seed gives the same video; other seeds give other head motion and blinks.
        output_size: longest side of the video in pixels, 256 to 1024; larger photos are downscaled.

    Returns:
        The MP4 video.
    """
    if not portrait:
        raise gr.Error("Please add a portrait photo first.", print_exception=False)
    if not speech:
        raise gr.Error("Please add some speech: upload a file or record with the microphone.", print_exception=False)
    _remove_old_files(OUTPUTS, max_age=3600)
    # The seed box holds whole numbers, but API callers may send 7.0; the pipeline refuses anything else by name.
    seed = int(seed) if isinstance(seed, float) and seed.is_integer() else seed
    controls = dict(seed=seed, head_motion_scale=head_motion, expression_scale=expression,
                    blinks_per_minute=blinks_per_minute)
    with visitor_errors(max_speech_seconds=MAX_SPEECH_SECONDS):
        GenerationControls(**controls).validate()  # before the speech is decoded
        samples = load_audio(speech, max_seconds=MAX_SPEECH_SECONDS)
        handle, output = tempfile.mkstemp(suffix=".mp4", prefix="teller-", dir=OUTPUTS)
        os.close(handle)  # the video is written by name
        return _animate(portrait, samples, controls, int(output_size), output)


def _example(portrait: str, speech: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> str:  # noqa: B008
    """The examples run with the default settings."""
    return generate(portrait, speech)


def _remove_old_files(directory: Path, max_age: float) -> None:
    """Gradio keeps its own copy of every result, so ours are only needed briefly."""
    now = time.time()
    for path in directory.iterdir():
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > max_age:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---------------------------------------------------------------------------------------------------- Live tab
@spaces.GPU(duration=int(LIVE_SECONDS) + 30)
def _live_frames(
    prepared: PreparedSource, controls: dict, chunks: queue.Queue, seconds: float, idle_seconds: float
) -> Iterator[FramesAndVoice]:
    """The one GPU call of a live session (see `app_live.live_frames`)."""
    yield from live_frames(pipe, prepared, controls, chunks, seconds, idle_seconds)


live = LiveServer(pipe, _live_frames, seconds=LIVE_SECONDS, across_processes=ZERO_GPU, slots=LIVE_SESSIONS)


# ------------------------------------------------------------------------------------------------------ layout
def _portrait_input(**options) -> gr.Image:
    """Gradio's image input, except that the uploaded file reaches the pipeline undecoded. `gr.Image` opens (and may
    convert) every upload first: a file that is not a photo then fails with a bare "Error", and a huge one is decoded
    whole. The pipeline checks the pixel count from the header and says what is wrong with the file. (Replaced on the
    instance: a subclass of a Gradio component makes Gradio write a type stub next to this file.)"""
    image = gr.Image(type="filepath", **options)

    def preprocess(payload: ImageData | None) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # API callers may send the photo inline
            return processing_utils.save_base64_to_cache(payload.url, image.GRADIO_CACHE)
        return payload.path

    image.preprocess = preprocess
    return image


def _model_card_url() -> str:
    """The model card on the Hub: a link to the checkpoint's own README would show the server's checkout path."""
    return f"https://huggingface.co/{MODEL_ID}"


def _controls() -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    return (
        gr.Slider(0, 2, value=DEFAULTS.head_motion_scale, step=0.05, label="Head motion",
                  info="0 keeps the head still"),
        gr.Slider(0, 2, value=DEFAULTS.expression_scale, step=0.05, label="Expression", info="lips, jaw and brows"),
        gr.Slider(0, 60, value=DEFAULTS.blinks_per_minute, step=1, label="Blinks per minute"),
    )


HEADER = f"""
# Teller
Make a portrait photo speak: from a speech file, or live from your microphone, in real time on a CPU.
[Model card]({_model_card_url()}) · method: *Teller: Real-Time Streaming Audio-Driven Portrait Animation with
Autoregressive Motion Generation* (CVPR 2025)
"""

FOOTER = """
**Limitations.** One face per photo (the largest is animated), facing roughly toward the camera. The motion
comes from a small model trained on synthetic speech; lip sync is approximate and the face is moved by geometry,
so large head turns, hands, glasses and hair over the face look wrong.

**Use it responsibly.** Only animate photos of people who agreed to it, or of yourself. Do not use Teller to
impersonate anyone, to deceive, or to make someone appear to say what they did not say; say that a video is
generated when you share it.
"""

PORTRAITS = [str(EXAMPLES / "astronaut.png"), str(EXAMPLES / "grace_hopper.jpg")]

# The Live tab's player: a <video> fed through Media Source Extensions (see web/live_player.js).
LIVE_PLAYER_JS = (ROOT / "web" / "live_player.js").read_text()
LIVE_PLAYER_HTML = """
<div class="teller-live-label">Live</div>
<video playsinline></video>
<div class="teller-live-hint">Your portrait answers here when you speak.</div>
"""
LIVE_PLAYER_CSS = """
border: 1px solid var(--block-border-color); border-radius: var(--block-radius); overflow: hidden;
position: relative; background: var(--block-background-fill);
.teller-live-label { position: absolute; top: 0; left: 0; z-index: 1; padding: 2px 8px; font-size: var(--text-sm);
  color: var(--block-label-text-color); background: var(--block-label-background-fill);
  border-bottom-right-radius: var(--block-radius); }
video { display: block; width: 100%; height: 480px; object-fit: contain; background: #000; }
.teller-live-hint { position: absolute; inset: auto 0 45% 0; text-align: center; color: #ddd; pointer-events: none; }
.teller-live-hint b { color: #fff; }
.teller-live-hint.teller-live-ended { inset: auto 0 0 0; padding: 6px; color: #fff; background: rgb(0 0 0 / 60%); }
"""

with gr.Blocks(title="Teller: make a portrait speak", delete_cache=(3600, 3600)) as demo:
    gr.Markdown(HEADER)
    with gr.Tabs():
        with gr.Tab("Generate", id="generate"):
            with gr.Row(equal_height=False):
                with gr.Column():
                    portrait = _portrait_input(label="Portrait", sources=["upload", "webcam", "clipboard"],
                                               height=320)
                    speech = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"])
                    with gr.Accordion("Settings", open=False):
                        head_motion, expression, blinks = _controls()
                        seed = gr.Number(value=DEFAULTS.seed, precision=0, label="Seed", info="same seed, same video")
                        output_size = gr.Slider(OUTPUT_MIN_SIZE, OUTPUT_MAX_SIZE, value=OUTPUT_DEFAULT_SIZE,
                                                step=OUTPUT_SIZE_STEP, precision=0, label="Output size",
                                                info="longest side in pixels; larger photos are downscaled")
                    animate = gr.Button("Animate", variant="primary")
                with gr.Column():
                    result = gr.Video(label="Talking portrait", autoplay=True, height=480)
            gr.Examples(
                examples=[
                    [PORTRAITS[1], str(EXAMPLES / "arctic_a0009.wav")],
                    [PORTRAITS[0], str(EXAMPLES / "speech_flite_slt.wav")],
                    [PORTRAITS[0], str(EXAMPLES / "arctic_a0007.wav")],
                ],
                inputs=[portrait, speech],
                outputs=result,
                fn=_example,
                cache_examples=True,
                cache_mode="lazy",
                label="Examples (real recordings from CMU ARCTIC, and a synthesized voice)",
            )
            animate.click(
                generate,
                [portrait, speech, head_motion, expression, blinks, seed, output_size],
                result,
                api_name="generate",
                concurrency_limit=GENERATE_AT_ONCE,
                concurrency_id="generate",
            )

        with gr.Tab("Live", id="live") as live_tab:
            with gr.Row(equal_height=False):
                with gr.Column():
                    live_portrait = _portrait_input(label="Portrait", sources=["upload", "webcam", "clipboard"],
                                                    height=320)
                    gr.Examples(PORTRAITS, inputs=live_portrait, label="Portraits")
                    with gr.Accordion("Settings", open=False):
                        live_head, live_expression, live_blinks = _controls()
                        live_size = gr.Radio(LIVE_SIZES, value=LIVE_DEFAULT_SIZE, label="Video size",
                                             info="larger needs a faster machine to keep up with your voice")
                with gr.Column():
                    live_status = gr.Markdown("Choose a portrait: upload one or pick an example.")
                    live_line = gr.Markdown("", elem_id="live-line")
                    # Off until the visitor's turn comes (`live.follow_line` switches it on).
                    mic = gr.Audio(label="Your voice", sources=["microphone"], streaming=True, type="numpy",
                                   interactive=False, elem_id="live-mic")
                    live_video = gr.HTML(None, html_template=LIVE_PLAYER_HTML, css_template=LIVE_PLAYER_CSS,
                                         js_on_load=LIVE_PLAYER_JS, elem_id="live-video")
                    gr.Markdown(f"A live session lasts up to {LIVE_SECONDS:g} s. Headphones avoid echo.")
            gr.on([live_portrait.change, live_size.change], live.analyse_portrait, [live_portrait, live_size],
                  live_status, api_name=False)
            # Opening the tab puts the visitor in line; their place, and the microphone when their turn comes, are
            # pushed to the page until they leave. Once per page ("once": opening the tab again starts nothing).
            live_tab.select(live.follow_line, None, [live_line, mic, live_video], trigger_mode="once",
                            concurrency_limit=None, api_name=False, show_progress="hidden")
            # The session runs as a step after the record button's event rather than on it: when recording stops,
            # Gradio's page closes every event the microphone triggered and drops their further output, which
            # would lose the video still being made for the last words. Its video goes down the page's own video
            # socket (see app_live.VIDEO_ROUTE); the event's values number the chunks, or carry them without one.
            mic.start_recording(None, None, None, api_name=False, show_progress="hidden").then(
                live.session,
                [live_portrait, live_head, live_expression, live_blinks, live_size],
                live_video,
                api_name=False,
                concurrency_limit=LIVE_SESSIONS,
                concurrency_id="live",
            )
            # The voice itself goes to `live.microphone` over the page's own WebSocket (see app_live), not through
            # the microphone's stream event; Gradio's microphone is the Record and Stop buttons.
            mic.stop_recording(live.stop, None, None, api_name=False, show_progress="hidden")
    gr.Markdown(FOOTER)
    demo.unload(live.visitor_left)
demo.queue(max_size=QUEUE_SIZE)


def launch_options() -> dict:
    """`demo.launch`'s options, fresh for each launch: Gradio keeps what it adds to `app_kwargs` (its MCP server's
    lifespan, which runs once per instance), so a second launch in one process would fail with the first's."""
    return dict(theme=gr.themes.Soft(), allowed_paths=[str(EXAMPLES)], mcp_server=MCP_SERVER,
                max_file_size=MAX_UPLOAD_SIZE,
                app_kwargs=dict(routes=[WebSocketRoute(MICROPHONE_ROUTE, live.microphone),
                                        WebSocketRoute(VIDEO_ROUTE, live.video)]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    logger.setLevel(os.environ.get("TELLER_LOG_LEVEL", "INFO"))
    # A stop request (SIGTERM, as from a process manager) ends the app as Ctrl-C does, so the clean-up at exit
    # (`_remove_temporary_files`) runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo.launch(**launch_options())
