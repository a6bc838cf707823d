"""Built-in text datasets: the VADER sentence-sentiment ground truth (Hutto and Gilbert, ICWSM 2014, MIT).

Each sentence was rated from -4 to 4 by 20 or more people; the files hold ``id <tab> mean rating
<tab> text``. Binarised as in DESIGN.md: sentences with ``abs(rating) < 0.5`` are dropped (too
neutral to call), and the label is ``positive`` when the rating is above 0, else ``negative``.

``make setup`` (scripts/install_assets.sh) installs the files from the vaderSentiment sdist into
``<sys.prefix>/share/headstart/vader``; ``HEADSTART_VADER_DIR`` points elsewhere. Each file is
checked against its recorded sha256 before use.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from headstart.data.dataset import Dataset
from headstart.errors import DataError

CLASSES = ["negative", "positive"]
NEUTRAL_BAND = 0.5
# builtin name -> (file, sha256)
FILES = {
    "vader-tweets": ("tweets_GroundTruth.txt", "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f"),
    "vader-movies": ("movieReviewSnippets_GroundTruth.txt", "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"),
}
BUILTINS: tuple[str, ...] = tuple(FILES)


def vader_dir() -> Path:
    """Where the VADER ground-truth files are installed."""
    override = os.environ.get("HEADSTART_VADER_DIR")
    return Path(override) if override else Path(sys.prefix) / "share" / "headstart" / "vader"


def load(name: str) -> Dataset:
    """Load ``vader-tweets`` (3,432 sentences kept of 4,200) or ``vader-movies`` (10,072 of 10,605).

    Raises:
        DataError: The file is missing (the message gives the install command) or altered.
    """
    filename, sha256 = FILES[name]
    path = vader_dir() / filename
    if not path.is_file():
        raise DataError(
            f"builtin:{name} is not installed ({path} is missing). Install it with: make setup, or "
            f"bash scripts/install_assets.sh {sys.executable} {Path(sys.prefix) / 'share' / 'headstart'} "
            "(it takes the files from the vaderSentiment==3.3.2 sdist)."
        )
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DataError(f"{path} has sha256 {actual}, not the recorded {sha256}; reinstall it from the vaderSentiment==3.3.2 sdist.")
    texts, labels = parse_ground_truth(data.decode("utf-8"), str(path))
    return Dataset(f"builtin:{name}", "text", list(CLASSES), texts, labels, np.full(len(labels), "train", dtype=object))


def parse_ground_truth(content: str, where: str) -> tuple[list[str], np.ndarray]:
    """Texts and binary labels from ``id <tab> rating <tab> text`` lines, neutral ones dropped."""
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{where}:{number}: expected 'id<TAB>rating<TAB>text', got {line[:60]!r}.")
        rating = float(parts[1])
        if abs(rating) < NEUTRAL_BAND:
            continue
        texts.append(parts[2].strip())
        labels.append(int(rating > 0))
    return texts, np.array(labels, dtype=np.int64)
