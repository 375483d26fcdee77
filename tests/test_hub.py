"""Finding a checkpoint from a folder or a Hub repo id, offline (conftest sets HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from teller_pipeline.hub import HUB_MODEL_ID, CheckpointNotFoundError, checkpoint_folder

from .conftest import CHECKPOINT, ROOT


def _cached_snapshot(cache_dir: Path, repo_id: str) -> Path:
    """A Hugging Face cache holding `repo_id` at main, as `hf download` leaves it (files only, no weights needed)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text((CHECKPOINT / "model_index.json").read_text())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_folder_is_used_as_it_is():
    assert checkpoint_folder(CHECKPOINT) == CHECKPOINT


def test_the_published_id_resolves_from_the_cache_offline(tmp_path):
    snapshot = _cached_snapshot(tmp_path, HUB_MODEL_ID)
    assert checkpoint_folder(HUB_MODEL_ID, cache_dir=tmp_path) == snapshot


def test_the_published_id_is_the_one_the_readme_names():
    front_matter = (ROOT / "README.md").read_text().split("---")[1]
    assert re.search(r"^models:\n  - (\S+)$", front_matter, re.M).group(1) == HUB_MODEL_ID


def test_not_cached_offline_says_how_to_get_it_in_one_line(tmp_path):
    from teller_pipeline import TellerPipeline

    with pytest.raises(CheckpointNotFoundError) as raised:
        TellerPipeline.from_pretrained(HUB_MODEL_ID, cache_dir=tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        f"{HUB_MODEL_ID} is neither a folder here nor in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
        f"downloading it; run `hf download {HUB_MODEL_ID}` where the Hub is reachable, or use a local checkpoint "
        "folder"
    )
    with pytest.raises(CheckpointNotFoundError, match="local_files_only=True forbids downloading it"):
        checkpoint_folder(HUB_MODEL_ID, cache_dir=tmp_path, local_files_only=True)


def test_a_missing_folder_that_is_no_repo_id_says_so(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint folder, and not a Hub repo id"):
        checkpoint_folder(tmp_path / "missing" / "teller-base")
