"""Writing a run directory's shared files: ``manifest.json``, ``test_predictions.csv`` and thumbnails.

``probe``, ``rank``, ``finetune``, ``detect train`` and ``segment train`` each write their own
files (metrics, CSV logs, bundles) and then call :func:`write_manifest` and
``headstart.report.write_report_or_warn``, so every run directory records how it was made the same
way and gets a report.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.runs.schema import (
    MANIFEST_FILE,
    PREDICTION_COLUMNS,
    PREDICTIONS_FILE,
    SCHEMA_FIELD,
    SCHEMA_VERSION,
    THUMBNAIL_DIR,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

WRONG_SHOWN = 24  # the most confidently wrong test examples that get a thumbnail (and a card in the report)


def write_manifest(out: str | Path, **fields: Any) -> Path:
    """Write ``out/manifest.json`` atomically and return its path.

    The manifest holds the run-directory schema version (``schema``), the command line
    (``sys.argv``), the versions of the packages that shape a result, the time it was written, and
    ``fields``: what the caller knows of the run (seed, device, weights sha256, data fingerprint,
    store keys, wall seconds). Values that JSON cannot hold (paths, for example) are written as
    strings.
    """
    from headstart.io import atomic_write_json
    from headstart.versions import package_versions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        SCHEMA_FIELD: SCHEMA_VERSION,
        "command": list(sys.argv),
        "versions": package_versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{key: value for key, value in fields.items() if key != SCHEMA_FIELD},
    }
    path = out / MANIFEST_FILE
    atomic_write_json(path, json.loads(json.dumps(document, default=str)))
    return path


def write_test_predictions(
    out: str | Path,
    index: Sequence[int],
    true: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    items: Sequence[str] | np.ndarray | None = None,
    modality: str = "image",
    thumbnails: int = WRONG_SHOWN,
) -> Path:
    """Write ``test_predictions.csv`` and thumbnails of the most confidently wrong examples.

    Args:
        out: The run directory.
        index: Dataset index of each test example.
        true: True class name of each example.
        predicted: Predicted class name of each example.
        confidence: Top-1 probability of each example.
        items: The dataset's items (all of them, indexed by ``index``): file paths, texts, or an
            in-memory uint8 image array. Paths and texts go into the CSV's ``item`` column.
        modality: ``image`` or ``text``; only images get thumbnails.
        thumbnails: How many of the most confidently wrong examples get a thumbnail.

    Returns:
        The CSV's path.
    """
    import numpy as np

    from headstart.io import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    in_memory = isinstance(items, np.ndarray)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(PREDICTION_COLUMNS)
    for i, t, p, c in zip(index, true, predicted, confidence):
        item = "" if items is None or in_memory else str(items[int(i)])[:500]
        writer.writerow([int(i), item, t, p, f"{float(c):.6f}"])
    path = out / PREDICTIONS_FILE
    atomic_write_bytes(path, buffer.getvalue().encode())

    folder = out / THUMBNAIL_DIR
    if folder.is_dir():
        for old in folder.glob("*.png"):
            old.unlink()
    if items is None or modality != "image" or thumbnails <= 0:
        return path
    wrong = [k for k in range(len(index)) if str(true[k]) != str(predicted[k])]
    wrong.sort(key=lambda k: -float(confidence[k]))
    for k in wrong[:thumbnails]:
        row = int(index[k])
        picture = thumbnail_png(items[row] if in_memory else str(items[row]))
        if picture is not None:
            folder.mkdir(exist_ok=True)
            atomic_write_bytes(folder / f"{row}.png", picture)
    return path


def thumbnail_png(item: Any, size: int = 128) -> bytes | None:
    """A PNG of at most ``size`` pixels a side from an image array or file, or None if unreadable."""
    import numpy as np
    from PIL import Image

    try:
        if isinstance(item, np.ndarray):
            array = item if item.dtype == np.uint8 else np.clip(item, 0, 255).astype(np.uint8)
            if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
                array = np.moveaxis(array, 0, -1)
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            image = Image.fromarray(array)
        else:
            image = Image.open(item)
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    except Exception:  # any unreadable picture just goes without a thumbnail
        return None
