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

The root may be a local folder (also on a shared filesystem) or an fsspec URL such as
``s3://bucket/headstart`` or ``memory://store``; object stores write each object whole, so the
same rules hold there.
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
from headstart.io import atomic_write_bytes

FORMAT_VERSION = 1


def default_root() -> Path:
    """``$HEADSTART_CACHE``, else ``~/.cache/headstart``."""
    return Path(os.environ.get("HEADSTART_CACHE") or Path.home() / ".cache" / "headstart").expanduser()


def make_key(parts: dict[str, Any]) -> str:
    """The sha256 of the canonical JSON of ``parts`` (plus the store format version)."""
    canonical = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _LocalFiles:
    """File operations on a local (or network-mounted) folder."""

    remote = False

    def join(self, *parts: str | Path) -> Path:
        return Path(*parts)

    def write_atomic(self, path: Path, data: bytes) -> None:
        atomic_write_bytes(Path(path), data)

    def read(self, path: Path) -> bytes:
        return Path(path).read_bytes()

    def exists(self, path: Path) -> bool:
        return Path(path).exists()

    def subdirs(self, path: Path) -> list[str]:
        path = Path(path)
        return [p.name for p in path.iterdir() if p.is_dir()] if path.is_dir() else []

    def files(self, path: Path) -> list[tuple[str, int]]:
        path = Path(path)
        return [(p.name, p.stat().st_size) for p in path.iterdir() if p.is_file()] if path.is_dir() else []

    def tree_size(self, path: Path) -> int:
        path = Path(path)
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0

    def unlink(self, path: Path) -> None:
        Path(path).unlink(missing_ok=True)

    def rmtree(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def check_writable(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()


class _FsspecFiles:
    """File operations on an fsspec filesystem (``s3://``, ``gs://``, ``memory://``, ...)."""

    remote = True

    def __init__(self, url: str) -> None:
        from headstart.errors import require

        fsspec = require("fsspec", "remote")
        self.fs, self.base = fsspec.core.url_to_fs(url)
        self.protocol = url.split("://", 1)[0]

    def join(self, *parts: str) -> str:
        return "/".join(str(p).rstrip("/") for p in parts)

    def write_atomic(self, path: str, data: bytes) -> None:
        # Object stores make a PUT visible whole or not at all; write to a temporary name first on
        # filesystems that are not object stores, then move.
        tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        with self.fs.open(tmp, "wb") as handle:
            handle.write(data)
        self.fs.mv(tmp, path)

    def read(self, path: str) -> bytes:
        try:
            with self.fs.open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise FileNotFoundError(path) from exc

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def subdirs(self, path: str) -> list[str]:
        if not self.fs.exists(path):
            return []
        return [info["name"].rstrip("/").rsplit("/", 1)[-1] for info in self.fs.ls(path, detail=True) if info["type"] == "directory"]

    def files(self, path: str) -> list[tuple[str, int]]:
        if not self.fs.exists(path):
            return []
        return [(info["name"].rsplit("/", 1)[-1], int(info.get("size") or 0)) for info in self.fs.ls(path, detail=True) if info["type"] == "file"]

    def tree_size(self, path: str) -> int:
        return int(self.fs.du(path)) if self.fs.exists(path) else 0

    def unlink(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path)

    def rmtree(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def check_writable(self, path: str) -> None:
        probe = self.join(path, f".probe-{os.getpid()}")
        self.fs.makedirs(path, exist_ok=True)
        with self.fs.open(probe, "wb") as handle:
            handle.write(b"ok")
        self.fs.rm(probe)


@dataclass
class Entry:
    """One committed store entry, as listed by :meth:`FeatureStore.ls`."""

    key: str
    path: Path | str
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
        root: Store folder or fsspec URL; defaults to ``$HEADSTART_CACHE`` or ``~/.cache/headstart``.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        text = str(root) if root is not None else str(default_root())
        if "://" in text and not text.startswith("file://"):
            self._files: _LocalFiles | _FsspecFiles = _FsspecFiles(text)
            self.root: Path | str = text.rstrip("/")
        else:
            self._files = _LocalFiles()
            self.root = Path(text.removeprefix("file://")).expanduser()

    @property
    def features_dir(self) -> Path | str:
        return self._files.join(self.root, "features")

    def entry_dir(self, key: str) -> Path | str:
        return self._files.join(self.features_dir, key)

    def _path(self, key: str, name: str) -> Path | str:
        return self._files.join(self.entry_dir(key), name)

    def check_writable(self) -> None:
        """Raise a CacheError with the fix if the store folder cannot be written."""
        try:
            self._files.check_writable(self.features_dir)
        except OSError as exc:
            raise CacheError(
                f"The feature store {self.root} is not writable ({getattr(exc, 'strerror', None) or exc}). "
                "Set HEADSTART_CACHE to a writable folder, or pass --cache-dir."
            ) from None

    # ----- shards -----------------------------------------------------------------------------

    @staticmethod
    def shard_name(index: int) -> str:
        return f"shard-{index:05d}"

    def write_shard(self, key: str, index: int, start: int, features: np.ndarray, valid: np.ndarray, errors: list[tuple[int, str]]) -> None:
        """Commit one shard: the array file first, then its JSON record with the file's sha256."""
        from safetensors.numpy import save

        payload = save({"features": np.ascontiguousarray(features, dtype=np.float32), "valid": valid.astype(np.uint8)})
        self._files.write_atomic(self._path(key, f"{self.shard_name(index)}.safetensors"), payload)
        record = {
            "index": index,
            "start": int(start),
            "rows": int(len(features)),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "errors": [[int(i), reason] for i, reason in errors],
        }
        self._files.write_atomic(self._path(key, f"{self.shard_name(index)}.json"), _json_bytes(record))

    def read_shard(self, key: str, index: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
        """A shard's record, features and validity mask, or None if missing, torn or corrupt."""
        from safetensors.numpy import load

        try:
            record = json.loads(self._files.read(self._path(key, f"{self.shard_name(index)}.json")))
            payload = self._files.read(self._path(key, f"{self.shard_name(index)}.safetensors"))
        except (FileNotFoundError, IsADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # not written yet, or a record that was torn
        except OSError as exc:
            # Permissions, a flaky network mount or a remote store's hiccup: the shard may be fine,
            # so say so and keep the entry rather than treating it as damaged.
            raise CacheError(
                f"Cannot read shard {index} of store entry {key[:12]} in {self.root} "
                f"({getattr(exc, 'strerror', None) or exc}). Check the store's permissions or connection and rerun."
            ) from None
        if not isinstance(record, dict):
            return None
        if hashlib.sha256(payload).hexdigest() != record.get("sha256") or record.get("index") != index:
            return None  # torn, corrupt, or another shard's file in this one's place
        try:
            arrays = load(payload)
        except Exception:  # a payload that hashes right but does not parse was written by someone else
            return None
        return record, arrays["features"], arrays["valid"].astype(bool)

    def done_shards(self, key: str, n_rows: int, shard_size: int) -> set[int]:
        """Indices of the shards that are complete, intact, and cover the rows this layout expects."""
        done = set()
        for index in range(max(1, -(-n_rows // shard_size))):
            shard = self.read_shard(key, index)
            if shard is None:
                continue
            start = index * shard_size
            if shard[0]["start"] == start and shard[0]["rows"] == min(n_rows, start + shard_size) - start:
                done.add(index)
        return done

    # ----- entries ----------------------------------------------------------------------------

    def commit(self, key: str, meta: dict[str, Any]) -> None:
        """Write the entry's commit record; after this the entry is served."""
        self._files.write_atomic(self._path(key, "meta.json"), _json_bytes({**meta, "key": key, "created": time.time()}))

    def meta(self, key: str) -> dict[str, Any] | None:
        """The entry's commit record, or None when absent, unreadable or missing a field it must have."""
        try:
            meta = json.loads(self._files.read(self._path(key, "meta.json")))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(meta, dict) or not _valid_meta(meta):
            return None  # written by something else, or by hand: never served, recomputed on the next run
        return meta

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
                self._uncommit(key)
                return None
            record, features, valid = shard
            parts_x.append(features)
            parts_valid.append(valid)
            errors += [(int(i), str(reason)) for i, reason in record["errors"]]
        dim = meta["shape"][1]
        features = np.concatenate(parts_x) if parts_x else np.zeros((0, dim), np.float32)
        valid = np.concatenate(parts_valid) if parts_valid else np.zeros(0, bool)
        return meta, features, valid, errors

    def _uncommit(self, key: str) -> None:
        """Remove a damaged entry's commit record; on a read-only store, leave it (it is still not served)."""
        try:
            self._files.unlink(self._path(key, "meta.json"))
        except OSError:
            pass

    def ls(self) -> list[Entry]:
        """Committed entries, newest first."""
        entries = []
        for name in self._files.subdirs(self.features_dir):
            meta = self.meta(name)
            if meta is None:
                continue
            size = sum(bytes_ for _, bytes_ in self._files.files(self.entry_dir(name)))
            entries.append(Entry(name, self.entry_dir(name), meta, size))
        return sorted(entries, key=lambda e: e.meta.get("created", 0), reverse=True)

    def du(self) -> int:
        """Bytes used by the store, committed or not."""
        return self._files.tree_size(self.features_dir)

    def rm(self, key_prefix: str | None = None, everything: bool = False) -> list[str]:
        """Remove the entries whose key starts with ``key_prefix`` (or all with ``everything``)."""
        removed = []
        for name in self._files.subdirs(self.features_dir):
            if everything or (key_prefix and name.startswith(key_prefix)):
                self._files.rmtree(self.entry_dir(name))
                removed.append(name)
        return removed


def _valid_meta(meta: dict[str, Any]) -> bool:
    """Whether a commit record has the fields :meth:`FeatureStore.load` reads, with usable types."""
    shards, shape = meta.get("n_shards"), meta.get("shape")
    return (
        isinstance(shards, int) and shards >= 0
        and isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n >= 0 for n in shape)
    )


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()
