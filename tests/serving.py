"""The app as a server runs it, `python app.py` in a process of its own, and the browser that visits it: Debian's
chromium with a speech file as its microphone. Shared by the tests that drive the app from outside."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .conftest import EXAMPLES, ROOT

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def serve_app(log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python app.py` on a free port, with `env` added to its environment and its output in `log`: (its URL, with
    a trailing slash, and the process), once it answers. Stopped with SIGTERM at the end (app.py then exits as on
    Ctrl-C, removing its temporary files), unless already stopped."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT,
                               env=dict(os.environ, GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1", **env),
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None, f"app.py exited: {log.read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}config", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "app.py did not start"
            time.sleep(0.5)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def rss_mb(pid: int) -> float:
    """The resident memory of process `pid`, in MB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def fake_microphone(folder: Path) -> Path:
    """The speech the browser's fake microphone plays, in a loop from the moment recording starts (16-bit WAV, as
    chromium reads it)."""
    import soundfile as sf

    speech, rate = sf.read(EXAMPLES / "speech_flite_slt.wav", dtype="int16")
    path = folder / "speech.wav"
    sf.write(path, speech, rate, subtype="PCM_16")
    return path


def chromium_options(microphone: Path) -> dict:
    """Playwright's launch options for Debian's chromium (Playwright never downloads a browser here), headless,
    with `microphone` as the microphone, allowed without asking, and sound that plays without a click."""
    return dict(
        executable_path=str(CHROMIUM),
        headless=True,
        args=["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-audio-capture={microphone}", "--autoplay-policy=no-user-gesture-required"],
    )
