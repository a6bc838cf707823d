"""A content-addressed, crash-safe, on-disk feature store.

An entry's key hashes everything that changes the features: the weights' sha256, the layer, the
pooling, the preprocessing and a fingerprint of the data. An entry is a folder of shards::

    <root>/features/<key>/shard-00000.safetensors   features (rows, D) and a validity mask
    <root>/features/<key>/shard-00000.json          the shard's sha256, row range and decode errors
    <root>/features/<key>/meta.json                 the commit record: written last, once all shards exist

Every file is written to a temporary name, flushed to disk and renamed, so a crash (even kill -9)
leaves either a whole file or none. A shard counts as done only when its ``.json`` exists and the
shard's bytes hash to the recorded sha256; anything else is recomputed. An entry without
``meta.json`` is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import CacheError

FORMAT_VERSION = 1


def default_root() -> Path:
    """``$HEADSTART_CACHE``, else ``~/.cache/headstart``."""
    return Path(os.environ.get("HEADSTART_CACHE") or Path.home() / ".cache" / "headstart").expanduser()


def make_key(parts: dict[str, Any]) -> str:
    """The sha256 of the canonical JSON of ``parts`` (plus the store format version)."""
    canonical = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


@dataclass
class Entry:
    """One committed store entry, as listed by :meth:`FeatureStore.ls`."""

    key: str
    path: Path
    meta: dict[str, Any]
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        parts = self.meta.get("parts", {})
        return {
            "key": self.key,
            "path": str(self.path),
            "backbone": parts.get("backbone"),
            "layer": parts.get("layer"),
            "pool": parts.get("pool"),
            "shape": self.meta.get("shape"),
            "bytes": self.bytes,
            "created": self.meta.get("created"),
        }


class FeatureStore:
    """Feature arrays on disk, addressed by the content key of what produced them.

    Args:
        root: Store folder; defaults to ``$HEADSTART_CACHE`` or ``~/.cache/headstart``.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def entry_dir(self, key: str) -> Path:
        return self.features_dir / key

    def check_writable(self) -> None:
        """Raise a CacheError with the fix if the store folder cannot be written."""
        try:
            self.features_dir.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.features_dir, prefix=".probe-", delete=True)
            probe.close()
        except OSError as exc:
            raise CacheError(
                f"The feature store {self.root} is not writable ({exc.strerror or exc}). "
                "Set HEADSTART_CACHE to a writable folder, or pass --cache-dir."
            ) from None

    # ----- shards -----------------------------------------------------------------------------

    @staticmethod
    def shard_name(index: int) -> str:
        return f"shard-{index:05d}"

    def write_shard(self, key: str, index: int, start: int, features: np.ndarray, valid: np.ndarray, errors: list[tuple[int, str]]) -> None:
        """Commit one shard: the array file first, then its JSON record with the file's sha256."""
        from safetensors.numpy import save

        folder = self.entry_dir(key)
        payload = save({"features": np.ascontiguousarray(features, dtype=np.float32), "valid": valid.astype(np.uint8)})
        atomic_write_bytes(folder / f"{self.shard_name(index)}.safetensors", payload)
        record = {
            "index": index,
            "start": int(start),
            "rows": int(len(features)),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "errors": [[int(i), reason] for i, reason in errors],
        }
        atomic_write_json(folder / f"{self.shard_name(index)}.json", record)

    def read_shard(self, key: str, index: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
        """A shard's record, features and validity mask, or None if missing, torn or corrupt."""
        from safetensors.numpy import load

        folder = self.entry_dir(key)
        record_path = folder / f"{self.shard_name(index)}.json"
        data_path = folder / f"{self.shard_name(index)}.safetensors"
        try:
            record = json.loads(record_path.read_text())
            payload = data_path.read_bytes()
        except (OSError, json.JSONDecodeError):
            return None
        if hashlib.sha256(payload).hexdigest() != record.get("sha256"):
            return None
        try:
            arrays = load(payload)
        except Exception:  # a payload that hashes right but does not parse was written by someone else
            return None
        return record, arrays["features"], arrays["valid"].astype(bool)

    def done_shards(self, key: str, n_shards: int) -> set[int]:
        """Indices of the shards that are complete and intact."""
        return {i for i in range(n_shards) if self.read_shard(key, i) is not None}

    # ----- entries ----------------------------------------------------------------------------

    def commit(self, key: str, meta: dict[str, Any]) -> None:
        """Write the entry's commit record; after this the entry is served."""
        atomic_write_json(self.entry_dir(key) / "meta.json", {**meta, "key": key, "created": time.time()})

    def meta(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.entry_dir(key) / "meta.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def load(self, key: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[tuple[int, str]]] | None:
        """A committed entry: (meta, features, valid mask, decode errors), or None when absent or damaged.

        A damaged shard un-commits the entry (its ``meta.json`` is removed) so that the next
        extraction recomputes the damaged shards and reuses the rest.
        """
        meta = self.meta(key)
        if meta is None:
            return None
        parts_x, parts_valid, errors = [], [], []
        for index in range(meta["n_shards"]):
            shard = self.read_shard(key, index)
            if shard is None:
                (self.entry_dir(key) / "meta.json").unlink(missing_ok=True)
                return None
            record, features, valid = shard
            parts_x.append(features)
            parts_valid.append(valid)
            errors += [(int(i), str(reason)) for i, reason in record["errors"]]
        dim = meta["shape"][1]
        features = np.concatenate(parts_x) if parts_x else np.zeros((0, dim), np.float32)
        valid = np.concatenate(parts_valid) if parts_valid else np.zeros(0, bool)
        return meta, features, valid, errors

    def ls(self) -> list[Entry]:
        """Committed entries, newest first."""
        entries = []
        if not self.features_dir.is_dir():
            return entries
        for folder in self.features_dir.iterdir():
            meta = self.meta(folder.name) if folder.is_dir() else None
            if meta is None:
                continue
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            entries.append(Entry(folder.name, folder, meta, size))
        return sorted(entries, key=lambda e: e.meta.get("created", 0), reverse=True)

    def du(self) -> int:
        """Bytes used by the store, committed or not."""
        if not self.features_dir.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.features_dir.rglob("*") if f.is_file())

    def rm(self, key_prefix: str | None = None, everything: bool = False) -> list[str]:
        """Remove the entries whose key starts with ``key_prefix`` (or all with ``everything``)."""
        if not self.features_dir.is_dir():
            return []
        removed = []
        for folder in self.features_dir.iterdir():
            if folder.is_dir() and (everything or (key_prefix and folder.name.startswith(key_prefix))):
                shutil.rmtree(folder)
                removed.append(folder.name)
        return removed
