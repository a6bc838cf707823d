"""Pictures: the most confidently wrong test examples, and predictions drawn on test images."""

from __future__ import annotations

from pathlib import Path

from headstart.report.html import Section, esc, img
from headstart.runs import RunFiles, WRONG_SHOWN, as_number, read_captions, thumbnail_png
from headstart.runs.schema import IMAGE_EXTENSIONS, PREDICTION_IMAGE_DIR, THUMBNAIL_DIR

GRID_SHOWN = 24


def wrong_section(run: RunFiles, limit: int = WRONG_SHOWN) -> Section | None:
    if not run.predictions:
        return None
    wrong = [row for row in run.predictions if str(row.get("true")) != str(row.get("predicted")) and as_number(row.get("confidence")) is not None]
    if not wrong:
        return Section("wrong", "Most confidently wrong", '<p class="note">No test example was misclassified.</p>')
    wrong.sort(key=lambda row: -as_number(row["confidence"]))
    cards = []
    for row in wrong[:limit]:
        picture = None
        thumb = run.path / THUMBNAIL_DIR / f"{row.get('index')}.png"
        if thumb.is_file():
            picture = thumb.read_bytes()
        elif row.get("item") and Path(row["item"]).suffix.lower() in IMAGE_EXTENSIONS and Path(row["item"]).is_file():
            picture = thumbnail_png(row["item"])
        card = "card"
        if picture is not None:
            figure = img(picture, f"test example {row.get('index')}", css="thumb")
        elif row.get("item"):
            figure = f'<div class="text-item" title="{esc(row["item"])}">{esc(row["item"][:240])}</div>'
            card = "card text"
        else:
            figure = '<div class="text-item">(no picture)</div>'
        cards.append(
            f'<figure class="{card}">{figure}<figcaption><span class="true">true: {esc(row.get("true"))}</span>'
            f'<span class="pred">pred: {esc(row.get("predicted"))}</span>'
            f'<span class="conf">p={as_number(row["confidence"]):.2f} · #{esc(row.get("index"))}</span></figcaption></figure>'
        )
    body = f'<div class="cards">{"".join(cards)}</div>'
    body += f'<p class="note">{len(wrong)} of {len(run.predictions)} test examples are wrong; the {min(limit, len(wrong))} with the highest confidence are shown.</p>'
    return Section("wrong", "Most confidently wrong", body)


def grid_section(run: RunFiles, limit: int = GRID_SHOWN) -> Section | None:
    if not run.prediction_images:
        return None
    captions = read_captions(run)
    cards = []
    for path in run.prediction_images[:limit]:
        picture = thumbnail_png(str(path), size=360)
        if picture is None:
            continue
        caption = captions.get(path.name, path.stem)
        cards.append(f'<figure class="card wide">{img(picture, caption, css="grid-image")}<figcaption>{esc(caption)}</figcaption></figure>')
    body = f'<div class="cards">{"".join(cards)}</div>'
    if len(run.prediction_images) > limit:
        body += f'<p class="note">{limit} of {len(run.prediction_images)} pictures in {PREDICTION_IMAGE_DIR}/ are shown.</p>'
    return Section("predictions", "Predictions on test images", body)
