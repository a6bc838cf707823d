"""File helpers shared by every layer: writes that readers see whole or not at all.

:func:`atomic_write_bytes` writes to a temporary file in the target's folder, flushes it to disk,
gives it the permissions a plain ``open()`` would (``0o666`` less the umask, so a shared store stays
readable by its group), renames it over the target, and flushes the folder so the rename itself
survives a power cut. A reader sees the old file or the whole new one, never a part.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def check_out_dir(out: str | os.PathLike[str] | None, option: str = "--out") -> Path | None:
    """Refuse an output folder that cannot be written, before any work starts; returns it as a Path.

    ``out`` may exist as a folder (its other files are kept) or not exist yet; it must not be a
    file, lie under a file, or sit in a folder this process cannot write. Nothing is created here.

    Raises:
        OptionError: with the folder, what is wrong and the fix (``option`` names the option).
    """
    from headstart.errors import OptionError

    if out is None:
        return None
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise OptionError(f"{option} {path} is an existing file, not a folder; give a folder path (the file is left alone).")
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OptionError(f"{option} {path}: {ancestor} is a file, so no folder can be made under it; give another {option} path.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OptionError(f"{option} {path}: {ancestor} is not writable by this user; give a writable {option} path.")
    return path


def atomic_write_json(path: Path, data: Any) -> None:
    """:func:`atomic_write_bytes` of ``data`` as indented, key-sorted JSON."""
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


__all__ = ["atomic_write_bytes", "atomic_write_json", "check_out_dir", "current_umask", "fsync_dir"]
