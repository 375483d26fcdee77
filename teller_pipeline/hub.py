"""The published checkpoint's Hub id, and turning a folder or a Hub repo id into a local checkpoint folder.

Kept free of heavy imports so that the CLI's `--help` stays instant.
"""

from __future__ import annotations

import os
from pathlib import Path

# The starter checkpoint as published on the Hugging Face Hub (the README's front matter and the model card name it).
HUB_MODEL_ID = "teller/teller-base"


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint is neither a local folder nor a Hub repo that is cached or can be downloaded."""


def checkpoint_folder(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder as it is; a Hub repo id through `snapshot_download` (the Hugging Face cache, else the Hub).

    Raises `CheckpointNotFoundError` with one line saying how to get the checkpoint when neither works.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import constants, errors, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # huggingface_hub 2: a partial download

    name = str(name_or_path)
    missing = f"{name} is neither a folder here nor in the local Hugging Face cache"
    get_it = f"run `hf download {name}` where the Hub is reachable, or use a local checkpoint folder"
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=local_files_only))
    except HFValidationError as error:
        raise CheckpointNotFoundError(
            f"{name}: no such checkpoint folder, and not a Hub repo id like {HUB_MODEL_ID}"
        ) from error
    except RepositoryNotFoundError as error:
        raise CheckpointNotFoundError(
            f"{name} is neither a local folder nor a model repo on the Hugging Face Hub (if it is private or gated, "
            "log in with `hf auth login`)"
        ) from error
    except incomplete as error:
        raise CheckpointNotFoundError(f"the cached copy of {name} is incomplete; {get_it}") from error
    except LocalEntryNotFoundError as error:
        if local_files_only or constants.HF_HUB_OFFLINE:
            forbidden = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
            raise CheckpointNotFoundError(f"{missing}, and {forbidden} forbids downloading it; {get_it}") from error
        cause = type(error.__cause__ or error).__name__
        raise CheckpointNotFoundError(f"{missing}, and the Hub could not be reached ({cause}); {get_it}") from error
