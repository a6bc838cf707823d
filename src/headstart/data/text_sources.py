"""Text data sources: CSV/TSV/JSONL tables of (text, label[, split]) and folders of ``.txt`` files.

Every source decodes UTF-8 itself, so that a bad byte costs one example, not the whole file: rows
that are not valid UTF-8, have an empty text or an empty label are dropped and listed in
``Dataset.skipped`` with the reason. A missing text or label column is an error that lists the
columns there are.

Labels may be multi-label: a JSON list in a JSONL file (``"label": ["sports", "politics"]``), or a
CSV cell split on ``label_separator`` (``sports|politics``). Multi-label datasets have a 0/1
indicator matrix as ``labels``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.dataset import IMAGE_EXTENSIONS, SPLITS, Dataset, encode_labels
from headstart.errors import DataError

TEXT_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
TEXT_FILE_SUFFIX = ".txt"


def _decode(data: bytes, where: str) -> tuple[str | None, str]:
    """UTF-8 text (a leading BOM dropped), or None and the reason it is not UTF-8."""
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as exc:
        return None, f"{where}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); re-save the file as UTF-8"


# Past this share of rows that are not UTF-8, the file is in another encoding: refuse it with the fix
# instead of skipping most of it (a few stray bytes in a UTF-8 file are skipped and listed).
NOT_UTF8_REFUSE_SHARE = 0.1


def _guess_encoding(raw: bytes) -> str:
    """The single-byte encoding to suggest for bytes that are not UTF-8: cp1252 where it decodes, else latin-1."""
    try:
        raw.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _not_utf8_reason(raw: bytes) -> str:
    guess = _guess_encoding(raw)
    return f"not valid UTF-8 (the file may be {guess}: rerun with --encoding {guess}, or re-save it as UTF-8)"


def _decode_table(raw: bytes, path: Path, encoding: str | None) -> str:
    """The table's text: strict in a given ``encoding`` (an error names the line), else UTF-8 with escapes."""
    if encoding is None:
        return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"--encoding {encoding!r} is not a text encoding Python knows; use utf-8, cp1252, latin-1, utf-16, ...") from None
    try:
        return raw.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}:{_line_of(raw, exc.start)}: byte 0x{raw[exc.start]:02x} is not valid {encoding}. "
            f"Give the file's real encoding with --encoding (for example --encoding {_guess_encoding(raw)}), or re-save it as UTF-8."
        ) from None


def _refuse_if_mostly_not_utf8(path: Path, raw: bytes, n_rows: int, bad: list[tuple[str, str]]) -> None:
    if bad and len(bad) > 1 and len(bad) >= NOT_UTF8_REFUSE_SHARE * n_rows:
        guess = _guess_encoding(raw)
        raise DataError(
            f"{path}: {len(bad)} of {n_rows} rows are not valid UTF-8 (first: {bad[0][0]}). The file looks like {guess}: "
            f"rerun with --encoding {guess} (Python: load_data(..., encoding={guess!r})), or re-save it as UTF-8."
        )


def _table_rows(path: Path, encoding: str | None = None) -> tuple[list[tuple[str, dict[str, Any]]], list[str], list[tuple[str, str]]]:
    """``(where, row)`` pairs, the column names, and the rows skipped while decoding.

    With ``encoding`` None the file is read as UTF-8: a row with bytes that are not UTF-8 is skipped
    and listed with the fix, and a file where many rows are not UTF-8 is refused with the fix.
    """
    raw = path.read_bytes()
    if encoding is not None and path.suffix.lower() == ".jsonl":
        raw = _decode_table(raw, path, encoding).encode("utf-8")
    skipped: list[tuple[str, str]] = []
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.suffix.lower() == ".jsonl":
        columns: dict[str, None] = {}
        for number, line in enumerate(raw.splitlines(), start=1):
            where = f"{path}:{number}"
            text, reason = _decode(line, where)
            if text is None:
                guess = _guess_encoding(raw)
                skipped.append((where, reason.replace("; re-save the file as UTF-8", f"; the file may be {guess}: rerun with --encoding {guess}, or re-save it as UTF-8")))
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg}). Fix the line, or remove it.") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: each JSONL line must be an object like {{\"text\": ..., \"label\": ...}}, got {type(row).__name__}.")
            columns.update(dict.fromkeys(row))
            rows.append((where, row))
        _refuse_if_mostly_not_utf8(path, raw, len(rows) + len(skipped), skipped)
        return rows, list(columns), skipped
    # CSV/TSV: decode with surrogate escapes so the parser sees every row, then drop the rows that held bad bytes.
    text = _decode_table(raw, path, encoding)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    for row in reader:
        where = f"{path}:{reader.line_num}"
        bad = next((v for v in row.values() if isinstance(v, str) and _has_surrogates(v)), None)
        if bad is not None:
            skipped.append((where, _not_utf8_reason(raw)))
            continue
        rows.append((where, row))
    _refuse_if_mostly_not_utf8(path, raw, len(rows) + len(skipped), skipped)
    return rows, columns, skipped


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def from_text_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
    label_separator: str | None = None,
    encoding: str | None = None,
) -> Dataset:
    """A text dataset from a CSV, TSV or JSONL file.

    Args:
        path: The file; ``.tsv`` is tab-separated.
        text_column: The column holding the text.
        label_column: The column holding the label (a JSON list, or a string split on
            ``label_separator``, for multi-label data).
        split_column: An optional column of ``train``/``val``/``test``; rows without one are ``train``.
        label_separator: Split label cells on this string to make multi-label data (e.g. ``|``).
        encoding: The file's text encoding (``cp1252``, ``latin-1``, ``utf-16``, ...). None reads
            UTF-8: rows holding other bytes are skipped and listed, and a file where at least a
            tenth of the rows are not UTF-8 is refused with the encoding to give instead.

    Raises:
        DataError: The file is empty, a column is missing, or a split name is unknown.
    """
    path = Path(path)
    rows, columns, skipped = _table_rows(path, encoding)
    if not rows and not skipped:
        raise DataError(f"{path} has no rows. Give a file with a header and one example per row.")
    for column, option in ((text_column, "--text-column"), (label_column, "--label-column")):
        if rows and column not in columns:
            raise DataError(
                f"{path} has no column {column!r}; its columns are {columns}. Name the right one with {option} "
                f"(Python: load_data(..., {option[2:].replace('-', '_')}=...))."
            )
    texts: list[str] = []
    raw_labels: list[Any] = []
    splits: list[str] = []
    for where, row in rows:
        text = row.get(text_column)
        label = row.get(label_column)
        if not isinstance(text, str) or not text.strip():
            skipped.append((where, "empty text" if text in (None, "") or isinstance(text, str) else f"text is a {type(text).__name__}, not a string"))
            continue
        if label is None or (isinstance(label, str) and not label.strip()):
            skipped.append((where, f"no label in column {label_column!r}"))
            continue
        split = str(row.get(split_column) or "train").strip() or "train"
        if split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}. Fix the {split_column!r} column.")
        texts.append(text)
        raw_labels.append(label)
        splits.append(split)
    if not texts:
        reasons = sorted({reason for _, reason in skipped})
        raise DataError(f"{path}: no usable rows (every row was skipped: {'; '.join(reasons[:3])}).")
    labels, classes = encode_text_labels(raw_labels, label_separator)
    return Dataset(str(path), "text", classes, texts, labels, np.array(splits, dtype=object), skipped)


def encode_text_labels(raw: Sequence[Any], separator: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Integer labels (N,), or a 0/1 indicator matrix (N, L) when any label is a list or splits on ``separator``."""

    def as_list(value: Any) -> list[str] | None:
        if isinstance(value, list):
            return [str(v).strip() for v in value]
        if separator and isinstance(value, str) and separator in value:
            return [part.strip() for part in value.split(separator) if part.strip()]
        return None

    lists = [as_list(v) for v in raw]
    if not any(item is not None for item in lists):
        return encode_labels(np.array([str(v).strip() for v in raw]), None, "labels")
    sets = [item if item is not None else [str(value).strip()] for item, value in zip(lists, raw)]
    classes = sorted({name for names in sets for name in names})
    index = {name: i for i, name in enumerate(classes)}
    indicator = np.zeros((len(sets), len(classes)), dtype=np.int64)
    for row, names in enumerate(sets):
        for name in names:
            indicator[row, index[name]] = 1
    return indicator, classes


def looks_like_text_table(path: Path, path_column: str = "path") -> bool:
    """Whether a table's first row has a ``text`` column and no ``path_column`` (an image manifest has one)."""
    with open(path, "rb") as handle:
        first = b""
        for line in handle:
            if line.strip():
                first = line
                break
    header = first.decode("utf-8", errors="replace").removeprefix("\ufeff")
    if path.suffix.lower() == ".jsonl":
        try:
            columns = list(json.loads(header))
        except (json.JSONDecodeError, TypeError):
            return False
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        columns = next(csv.reader([header.strip()], delimiter=delimiter), [])
    return "text" in columns and path_column not in columns


def is_text_folder(root: Path) -> bool:
    """Whether a folder's class subfolders hold ``.txt`` files and no images."""

    n_text = 0
    for path in root.rglob("*"):
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return False
        if suffix == TEXT_FILE_SUFFIX and path.is_file():
            n_text += 1
    return n_text > 0


def from_text_folder(root: str | Path) -> Dataset:
    """One ``.txt`` file per example: ``root/<class>/*.txt`` or ``root/{train,val,test}/<class>/*.txt``.

    Files that are empty or not UTF-8 are skipped with the reason; other files are skipped as
    "not a .txt file".
    """
    root = Path(root)
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    layout = [(s.name, s) for s in split_dirs] if split_dirs else [("train", root)]
    class_names = sorted({d.name for _, base in layout for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")})
    if not class_names:
        raise DataError(f"{root} has no class subfolders. Expected {root}/<class>/<example>.txt (or train/, val/, test/ above that).")
    texts: list[str] = []
    labels: list[int] = []
    splits: list[str] = []
    skipped: list[tuple[str, str]] = []
    for split, base in layout:
        for label, name in enumerate(class_names):
            folder = base / name
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
            kept = 0
            for path in files:
                if path.suffix.lower() != TEXT_FILE_SUFFIX:
                    skipped.append((str(path), "not a .txt file"))
                    continue
                text, reason = _decode(path.read_bytes(), str(path))
                if text is None:
                    skipped.append((str(path), reason))
                    continue
                if not text.strip():
                    skipped.append((str(path), "empty text"))
                    continue
                texts.append(text)
                labels.append(label)
                splits.append(split)
                kept += 1
            if not kept and split == "train":
                raise DataError(f"Class folder {folder} holds no readable .txt files. Add examples to it or remove the folder.")
    return Dataset(str(root), "text", class_names, texts, np.array(labels, dtype=np.int64), np.array(splits, dtype=object), skipped)


def read_texts(path: str | Path, text_column: str = "text") -> tuple[list[str], list[tuple[str, str]]]:
    """Texts to predict on, from a file: one per line (``.txt`` or other), or a CSV/TSV/JSONL column.

    ``-`` reads lines from stdin. Returns the texts and the lines skipped (not UTF-8, or blank in a
    table).
    """
    import sys

    if str(path) == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "surrogateescape")
        return _lines(data, "stdin")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist. Give a text file (one text per line), a .csv/.tsv/.jsonl file with a {text_column!r} column, or - for stdin.")
    if path.suffix.lower() in TEXT_TABLE_SUFFIXES:
        rows, columns, skipped = _table_rows(path)
        if rows and text_column not in columns:
            raise DataError(f"{path} has no column {text_column!r}; its columns are {columns}. Name the right one with --text-column.")
        texts = []
        for where, row in rows:
            text = row.get(text_column)
            if isinstance(text, str) and text.strip():
                texts.append(text)
            else:
                skipped.append((where, "empty text"))
        return texts, skipped
    return _lines(path.read_bytes(), str(path))


def _lines(data: bytes, where: str) -> tuple[list[str], list[tuple[str, str]]]:
    texts, skipped = [], []
    for number, line in enumerate(data.splitlines(), start=1):
        text, reason = _decode(line, f"{where}:{number}")
        if text is None:
            skipped.append((f"{where}:{number}", reason))
        elif text.strip():
            texts.append(text)
    return texts, skipped
