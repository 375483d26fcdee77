"""What the Hugging Face Space installs: `requirements.txt` (Python) and `packages.txt` (Debian), checked against
pyproject.toml and against what the runtime's compiled libraries load."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ASTRONAUT, CHECKPOINT, REAL_SPEECH, ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(line) for line in lines]
    return {canonicalize_name(requirement.name): requirement for requirement in parsed}


def test_requirements_txt_pins_the_runtime_and_app_dependencies_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _requirements(project["dependencies"] + project["optional-dependencies"]["app"])
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    pinned = _requirements([line for line in lines if line])
    assert pinned.keys() == wanted.keys(), (f"only in requirements.txt: {sorted(pinned.keys() - wanted.keys())}; "
                                            f"only in pyproject.toml: {sorted(wanted.keys() - pinned.keys())}")
    for name, requirement in pinned.items():
        (spec,) = requirement.specifier  # one exact pin per package: the Space installs exactly this
        assert spec.operator == "==", f"requirements.txt: pin {name} with =="
        assert wanted[name].specifier.contains(spec.version), f"{name}=={spec.version} is outside {wanted[name]}"
        assert requirement.extras == wanted[name].extras, f"{name}: extras differ from pyproject.toml"
    # The Space runs the Gradio of README.md's front matter; the pin must be that one.
    sdk_version = re.search(r"^sdk_version: *(\S+)$", (ROOT / "README.md").read_text(), re.M).group(1)
    assert str(pinned["gradio"].specifier) == f"=={sdk_version}"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_the_runtime_package_declares_its_data_files():
    # A wheel carries a package's Python files; any other file the runtime reads must be declared package data.
    # (The live player, web/live_player.js, belongs to the app and stays beside it.)
    tracked = subprocess.run(["git", "ls-files", "teller_pipeline"], capture_output=True, text=True, cwd=ROOT,
                             check=True).stdout.split()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    patterns = [f"{package.replace('.', '/')}/{pattern}" for package, package_patterns
                in declared.get("package-data", {}).items() for pattern in package_patterns]
    undeclared = [path for path in tracked if not path.endswith(".py")
                  and not any(fnmatch.fnmatch(path, pattern) for pattern in patterns)]
    assert not undeclared, f"declare these in [tool.setuptools.package-data] of pyproject.toml: {undeclared}"


# What a Python image of Debian has in any case (the C and C++ runtimes, zlib).
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}

# Loads every compiled library the app and the runtime use: the web stack, torch, MediaPipe's face landmarker,
# OpenCV, PyAV's encoders and decoders, soundfile; then prints the shared objects mapped into the process.
LOAD_THE_RUNTIME = f"""
import gradio, spaces, numpy as np
from teller_pipeline import TellerPipeline
from teller_pipeline.audio import load_audio
from teller_pipeline.face_analysis import FaceAnalyzer
from teller_pipeline.pipeline_teller import load_image
from teller_pipeline.video import LiveMP4Writer
analyzer = FaceAnalyzer({str(CHECKPOINT / "face_landmarker" / "face_landmarker.task")!r})
analyzer.largest_face(load_image({str(ASTRONAUT)!r}))
analyzer.close()
writer = LiveMP4Writer(25, 16000, 64, 64)
writer.write([np.zeros((64, 64, 3), np.uint8)] * 5, load_audio({str(REAL_SPEECH)!r})[:3200])
writer.close()
print("\\n".join(sorted({{line.split()[-1] for line in open("/proc/self/maps") if ".so" in line}})))
"""


def _linked_libraries(path: str) -> list[str]:
    """The shared libraries this file loads, as the dynamic linker finds them."""
    listed = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    return re.findall(r"=> (/\S+)", listed)


def _debian_package(library: str) -> str | None:
    """The installed Debian package that holds this file (dpkg records some under /lib, some under /usr/lib)."""
    candidates = {library, os.path.realpath(library)}
    candidates |= {path.removeprefix("/usr") if path.startswith("/usr/") else "/usr" + path for path in set(candidates)}
    for path in candidates:
        found = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.split(":")[0]
    return None


def _with_dependencies(packages: set[str]) -> set[str]:
    """The packages and everything they depend on, as installed here."""
    todo, seen = list(packages), set()
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        query = subprocess.run(["dpkg-query", "-W", "-f", "${Depends},${Pre-Depends}", package],
                               capture_output=True, text=True)
        assert query.returncode == 0, f"{package} is not installed here: {query.stderr.strip()}"
        for alternatives in query.stdout.split(","):
            names = [re.sub(r"[\s(].*$|:any$", "", option.strip()) for option in alternatives.split("|")]
            todo += [name for name in names if name and not name.startswith("$")][:1]  # the first alternative
    return seen


@pytest.mark.skipif(not (shutil.which("dpkg") and shutil.which("ldd")), reason="needs Debian's dpkg and ldd")
def test_packages_txt_declares_the_system_libraries_the_runtime_loads():
    loaded = subprocess.run([sys.executable, "-c", LOAD_THE_RUNTIME], capture_output=True, text=True, cwd=ROOT,
                            check=True).stdout.split()
    prefixes = (sys.prefix, sys.base_prefix, str(ROOT))
    # The wheels bring their own libraries; Python's own modules (ssl, sqlite3, lzma...) and glibc's name service
    # plug-ins come with the Space's Python image.
    pythons_own = {os.path.realpath(path) for module in loaded if module.startswith(sys.base_prefix)
                   and "-packages" not in module for path in _linked_libraries(module)}
    system = [path for path in loaded if not path.startswith(prefixes) and os.path.realpath(path) not in pythons_own
              and not Path(path).name.startswith("libnss_")]
    assert any("libGL" in path for path in system) and any("libEGL" in path for path in system)  # it did load them
    owners = {path: _debian_package(path) for path in system}
    declared = {line.strip() for line in (ROOT / "packages.txt").read_text().splitlines() if line.strip()}
    covered = _with_dependencies(declared | BASE_PACKAGES)
    missing = {path: owner for path, owner in owners.items() if owner is not None and owner not in covered}
    assert not missing, f"packages.txt lacks the Debian packages of {missing}"
