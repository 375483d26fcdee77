"""The package as users get it: a wheel installed in a fresh virtual environment, used from outside the checkout.

The environment holds the wheel, installed by pip, and the wheel's declared dependencies (runtime requirements,
followed recursively, no extras), symlinked from this interpreter's site-packages instead of downloaded. It does
not hold the editable install of the checkout (its `.pth` and import finder are not linked), the recipe's or the
app's extras, or anything else; every command runs from a temporary folder outside the checkout.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import soundfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from teller_pipeline.audio import SAMPLE_RATE, load_audio
from teller_pipeline.hub import HUB_MODEL_ID
from teller_pipeline.video import probe_media

from .conftest import CHECKPOINT, GRACE_HOPPER, REAL_SPEECH, ROOT

CLIP_SECONDS = 2.0


def _build_wheel(out_dir: Path) -> Path:
    """`pip wheel` on a copy of the files git tracks or would (a fresh clone's tree once they are committed; no
    stale build/ folder), without build isolation so that no build requirement is downloaded."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("building the wheel from the tracked files needs a git checkout")
    source = out_dir / "source"
    for name in listed.stdout.decode().split("\0"):
        if name and not name.startswith(("checkpoints/", "examples/")) and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out_dir / "dist"), "--quiet"],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (out_dir / "dist").glob("teller_pipeline-*.whl")
    return wheel


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def _runtime_closure(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions the requirements (without extras) need, recursively."""
    found: dict[str, importlib.metadata.Distribution] = {}
    followed: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements were visited; "" = none

    def visit(requirement: Requirement) -> None:
        key = canonicalize_name(requirement.name)
        if key not in found:
            found[key] = importlib.metadata.distribution(requirement.name)
        for extra in {"", *requirement.extras}:
            if (key, extra) in followed:
                continue
            followed.add((key, extra))
            for line in found[key].requires or []:
                child = Requirement(line)
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    visit(child)

    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            visit(requirement)
    return list(found.values())


def _link(dists: list[importlib.metadata.Distribution], site_packages: Path) -> None:
    """Symlink each distribution's top-level files and folders (packages, modules, .dist-info) into the venv."""
    for dist in dists:
        assert dist.files is not None, f"{dist.name} lists no files (no RECORD): cannot link it"
        origin = Path(dist.locate_file(""))
        for name in {file.parts[0] for file in dist.files}:
            if name in ("..", "__pycache__") or name.endswith(".pth") or (site_packages / name).exists():
                continue
            if (origin / name).exists():
                (site_packages / name).symlink_to(origin / name)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed; paths and a clean environment for running in it."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(root)
    prefix = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120)
    python = prefix / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # pip first, alone: it sees no other distribution, so it installs the wheel itself and writes `teller`.
    (purelib / "pip").symlink_to(importlib.util.find_spec("pip").submodule_search_locations[0])
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    metadata = _wheel_metadata(wheel)
    runtime = [line for line in metadata.get_all("Requires-Dist") if "extra ==" not in line]
    _link(_runtime_closure(runtime), purelib)
    work = root / "elsewhere"  # the current folder of every command: not the checkout
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and not k.startswith("HF_")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf-home"))  # an empty Hub cache
    extras = {line.split(";")[0] for line in metadata.get_all("Requires-Dist") if "extra ==" in line}
    return dict(prefix=prefix, python=python, teller=prefix / "bin" / "teller", work=work, env=env,
                metadata=metadata, extras=sorted(Requirement(line).name for line in extras))


def _run(venv: dict, *command: str | os.PathLike, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=venv["work"], env=venv["env"], capture_output=True,
                          text=True, timeout=timeout)


def test_every_runtime_module_imports_from_the_wheel_without_extras(venv):
    script = """
import importlib, importlib.metadata, json, pkgutil, sys
import teller_pipeline
modules = {"teller_pipeline": teller_pipeline.__file__}
for info in pkgutil.walk_packages(teller_pipeline.__path__, "teller_pipeline."):
    modules[info.name] = importlib.import_module(info.name).__file__
installed = []
for name in sys.argv[1:]:
    try:
        installed.append(importlib.metadata.distribution(name).name)
    except importlib.metadata.PackageNotFoundError:
        pass
print(json.dumps({"modules": modules, "extras_installed": installed, "public": teller_pipeline.__all__,
                  "pipeline": str(teller_pipeline.TellerPipeline)}))
"""
    result = _run(venv, venv["python"], "-c", script, *venv["extras"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["extras_installed"] == [], "the venv must not hold the extras, or this test proves nothing"
    modules = report["modules"]
    assert {"teller_pipeline.pipeline_teller", "teller_pipeline.__main__", "teller_pipeline.models.renderer"} <= set(
        modules
    )
    for name, file in modules.items():
        assert Path(file).is_relative_to(venv["prefix"]), f"{name} came from {file}, not from the installed wheel"
    assert "TellerPipeline" in report["public"] and "pipeline_teller.TellerPipeline" in report["pipeline"]


def test_wheel_metadata_carries_the_licence(venv):
    assert venv["metadata"]["License-Expression"] == "Apache-2.0"
    assert venv["metadata"]["License-File"] == "LICENSE"
    licence = next(venv["prefix"].glob("lib/python*/site-packages/teller_pipeline-*.dist-info/licenses/LICENSE"))
    assert licence.read_text() == (ROOT / "LICENSE").read_text()


def test_cli_help_names_teller(venv):
    result = _run(venv, venv["teller"], "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: teller ")
    assert "python -m teller_pipeline" not in result.stdout.splitlines()[0]
    generate = _run(venv, venv["teller"], "generate", "--help")
    assert generate.returncode == 0 and f"default: {HUB_MODEL_ID}" in " ".join(generate.stdout.split())


def test_cli_generates_an_mp4_from_a_checkpoint_folder(venv):
    clip = venv["work"] / "speech.wav"
    soundfile.write(clip, load_audio(REAL_SPEECH)[: int(CLIP_SECONDS * SAMPLE_RATE)], SAMPLE_RATE)
    output = venv["work"] / "talk.mp4"
    result = _run(venv, venv["teller"], "generate", "--checkpoint", CHECKPOINT, "--image", GRACE_HOPPER,
                  "--audio", clip, "--output", output, "--max-size", "256")
    assert result.returncode == 0, result.stderr
    assert "accelerate" not in result.stderr  # diffusers warns and loads weights another way without it
    assert result.stdout.startswith(f"wrote {output}: {CLIP_SECONDS:.2f} s of video")
    info = probe_media(output)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["frame_count"] == round(CLIP_SECONDS * 25)
    assert info["audio_duration"] == pytest.approx(CLIP_SECONDS, abs=0.05)
    assert max(info["width"], info["height"]) == 256


def test_cli_without_checkpoint_offline_says_how_to_get_it(venv):
    """No --checkpoint: the published Hub id; not cached and HF_HUB_OFFLINE=1 → one line, no traceback."""
    result = _run(venv, venv["teller"], "generate", "--image", GRACE_HOPPER, "--audio", REAL_SPEECH,
                  "--output", venv["work"] / "never.mp4")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {HUB_MODEL_ID} is neither a folder here nor in the local Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in line and f"`hf download {HUB_MODEL_ID}`" in line and "--checkpoint" in line
    assert not (venv["work"] / "never.mp4").exists()
