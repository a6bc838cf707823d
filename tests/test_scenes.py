"""Scenes: the animal-scenes generator (occlusion, seeding), COCO / VOC / mask-folder loaders and their bad-item reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from headstart.errors import DataError
from headstart.tasks import animal_scenes, load_scenes, write_coco
from headstart.data.scenes.coco import load_coco, save_palette_png
from headstart.data.scenes.masks import load_mask_folder, read_index_mask
from headstart.data.scenes.scene import IGNORE_INDEX
from headstart.data.scenes.synthetic import visible_objects
from headstart.data.scenes.voc import load_voc


@pytest.fixture(scope="module")
def small_scenes():
    return animal_scenes(n_train=6, n_test=3, size=64, seed=3)


# ----- occlusion ---------------------------------------------------------------------------------

def test_occlusion_recomputes_visible_box_and_drops_mostly_hidden_objects():
    owner = np.full((20, 20), -1, dtype=np.int16)
    owner[2:12, 2:12] = 0  # object 0: 10x10 = 100 pixels pasted
    owner[2:12, 6:12] = 1  # object 1 covers its right part: 40 of 100 pixels of object 0 stay visible
    owner[14:18, 14:18] = 2  # object 2: 16 pixels pasted ...
    owner[14:18, 14:17] = 3  # ... object 3 hides 12 of them: 25% visible
    boxes, labels, crowd, mask = visible_objects(owner, [100, 60, 16, 12], [4, 7, 1, 2], min_visible=0.4)
    assert labels.tolist() == [4, 7, 1, 2]
    # object 0: visible columns 2..5 only, so its box shrank from x1=12 to x1=6
    assert boxes[0].tolist() == [2, 2, 6, 12]
    assert crowd.tolist() == [False, False, True, False]
    assert boxes[2].tolist() == [17, 14, 18, 18]  # the visible sliver of the hidden object, kept as an ignore region
    assert (mask[2:12, 2:6] == 5).all() and (mask[2:12, 6:12] == 8).all()
    assert (mask[14:18, 17] == IGNORE_INDEX).all()
    assert (mask[14:18, 14:17] == 3).all()
    assert mask[0, 0] == 0


def test_fully_hidden_object_disappears():
    owner = np.full((10, 10), 1, dtype=np.int16)  # object 1 covers everything, object 0 is gone
    boxes, labels, crowd, mask = visible_objects(owner, [30, 100], [0, 5], min_visible=0.4)
    assert labels.tolist() == [5]
    assert boxes.tolist() == [[0, 0, 10, 10]]


# ----- the generator -----------------------------------------------------------------------------

def test_animal_scenes_are_seeded_and_consistent(small_scenes):
    again = animal_scenes(n_train=6, n_test=3, size=64, seed=3)
    other = animal_scenes(n_train=6, n_test=3, size=64, seed=4)
    assert small_scenes.synthetic
    assert len(small_scenes.indices("train")) == 6 and len(small_scenes.indices("test")) == 3
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes) for a, b in zip(small_scenes.scenes, again.scenes))
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(small_scenes.scenes, other.scenes))
    for scene in small_scenes.scenes:
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        assert scene.mask.shape == (64, 64)
        for box, label, crowd in zip(scene.boxes, scene.labels, scene.iscrowd):
            x0, y0, x1, y1 = box.astype(int)
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            region = scene.mask[y0:y1, x0:x1]
            # every kept object's box touches its own class's pixels on all four sides
            value = IGNORE_INDEX if crowd else label + 1
            own = region == value
            assert own[0].any() or crowd or own.any()
            assert own.any()


def test_builtin_name_routes(small_scenes):
    scenes = load_scenes("builtin:animal-scenes?train=2&test=1&size=64&seed=3")
    assert len(scenes) == 3 and np.array_equal(scenes.scenes[0].image, small_scenes.scenes[0].image)
    with pytest.raises(DataError, match="unknown option"):
        load_scenes("builtin:animal-scenes?trian=2")
    from headstart.data.builtin import load_builtin

    with pytest.raises(DataError, match="detection and segmentation dataset"):
        load_builtin("builtin:animal-scenes")


def test_write_coco_round_trip(small_scenes, tmp_path):
    write_coco(small_scenes, tmp_path / "scenes")
    assert json.loads((tmp_path / "scenes" / "train" / "annotations.json").read_text())["info"]["synthetic"] is True
    loaded = load_scenes(tmp_path / "scenes")
    assert loaded.problems == []
    assert loaded.classes == small_scenes.classes and loaded.mask_classes == small_scenes.mask_classes
    assert loaded.synthetic
    assert sorted(loaded.split.tolist()) == sorted(small_scenes.split.tolist())
    by_name = {s.name.removesuffix(".png"): s for s in loaded.scenes}
    for original in small_scenes.scenes:
        copy = by_name[original.name]
        assert np.array_equal(copy.load_image(), original.image)
        assert np.allclose(copy.boxes, original.boxes)
        assert np.array_equal(copy.labels, original.labels)
        assert np.array_equal(copy.iscrowd, original.iscrowd)
        assert np.array_equal(copy.mask, original.mask)


# ----- COCO and its bad items ------------------------------------------------------------------

def _png(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def test_coco_bad_items_are_reported_with_file_and_field(tmp_path):
    for name in ("ok.png", "outside.png", "zero.png", "unknown.png", "badmask.png"):
        _png(tmp_path / "images" / name)
    save_palette_png(np.zeros((10, 10), np.uint8), tmp_path / "masks" / "badmask.png", [[0, 0, 0]] * 256)
    save_palette_png(np.ones((30, 40), np.uint8), tmp_path / "masks" / "ok.png", [[0, 0, 0]] * 256)
    document = {
        "images": [
            {"id": 1, "file_name": "ok.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "outside.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "zero.png", "width": 40, "height": 30},
            {"id": 4, "file_name": "unknown.png", "width": 40, "height": 30},
            {"id": 5, "file_name": "missing.png", "width": 40, "height": 30},
            {"id": 6, "file_name": "badmask.png", "width": 40, "height": 30},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [20, 5, 10, 10], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [35, 5, 20, 10], "iscrowd": 0},
            {"id": 4, "image_id": 3, "category_id": 7, "bbox": [5, 5, 0, 10], "iscrowd": 0},
            {"id": 5, "image_id": 4, "category_id": 3, "bbox": [5, 5, 5, 5], "iscrowd": 0},
            {"id": 6, "image_id": 99, "category_id": 7, "bbox": [5, 5, 5, 5], "iscrowd": 0},
            {"id": 7, "image_id": 6, "category_id": 7, "bbox": [5, 5, 5, 5], "iscrowd": 0},
            {"id": 8, "image_id": 1, "category_id": 7, "bbox": [-0.5, 0, 10, 30.4], "ignore": 1},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    scenes = load_coco(path)
    fields = {(p.file, p.field) for p in scenes.problems}
    assert (str(path), "annotations[2].bbox") in fields  # outside the image
    assert (str(path), "annotations[3].bbox") in fields  # zero area
    assert (str(path), "annotations[4].category_id") in fields  # unknown category
    assert (str(path), "annotations[5].image_id") in fields  # references a missing image
    assert (str(path), "images[4].file_name") in fields  # image file missing
    assert (str(tmp_path / "masks" / "badmask.png"), "size") in fields  # mask size mismatch
    messages = " ".join(p.message for p in scenes.problems)
    assert "outside the 40x30 image" in messages and "zero area" in messages and "not in categories" in messages
    # the run goes on: the good image loads, with category ids mapped to class indices and crowd / ignore flags kept
    assert [s.name for s in scenes.scenes] == ["ok.png"]
    ok = scenes.scenes[0]
    assert scenes.classes == ["cat", "dog"]
    assert ok.labels.tolist() == [0, 1, 0]
    assert ok.iscrowd.tolist() == [False, True, True]
    assert ok.boxes[0].tolist() == [1, 2, 11, 12]
    assert ok.boxes[2].tolist() == [0, 0, 9.5, 30]  # a sub-pixel overshoot is clipped, not reported
    assert (ok.mask == 1).all()


def test_coco_unreadable_file_is_one_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        load_coco(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="'annotations'"):
        load_coco(path)


# ----- VOC ---------------------------------------------------------------------------------------

def _voc_xml(filename, objects):
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, difficult, (x0, y0, x1, y1) in objects
    )
    return f"<annotation><filename>{filename}</filename><size><width>40</width><height>30</height></size>{body}</annotation>"


def test_voc_difficult_is_ignore_and_bad_items_are_reported(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        _png(root / "JPEGImages" / f"{name}.jpg")
    (root / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg", [("cat", 0, (1, 1, 10, 10)), ("dog", 1, (11, 11, 20, 20))]))
    (root / "Annotations" / "b.xml").write_text(_voc_xml("b.jpg", [("unicorn", 0, (1, 1, 10, 10))]))
    (root / "Annotations" / "c.xml").write_text(_voc_xml("c.jpg", [("cat", 0, (5, 5, 4, 10))]))
    (root / "Annotations" / "d.xml").write_text(_voc_xml("d.jpg", [("cat", 0, (5, 5, 60, 10))]))
    (root / "Annotations" / "e.xml").write_text(_voc_xml("e.jpg", [("cat", 0, (5, 5, 6, 10))]))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    scenes = load_scenes(root, test_fraction=0)
    assert scenes.classes == ["cat", "dog"]
    fields = {(p.file.rsplit("/", 1)[-1], p.field) for p in scenes.problems}
    assert fields == {("b.xml", "object[0].name"), ("c.xml", "object[0].bndbox"), ("d.xml", "object[0].bndbox"), ("e.xml", "filename")}
    (scene,) = scenes.scenes
    assert scenes.split.tolist() == ["test"]
    assert scene.boxes.tolist() == [[0, 0, 10, 10], [10, 10, 20, 20]]  # 1-based inclusive -> 0-based, exclusive ends
    assert [scenes.classes[i] for i in scene.labels] == ["cat", "dog"]
    assert scene.iscrowd.tolist() == [False, True]
    # without a class list, names that are all VOC's give the 20 VOC classes
    (root / "Annotations" / "b.xml").unlink()
    assert load_voc(root).classes[:3] == ["aeroplane", "bicycle", "bird"]


# ----- masks -------------------------------------------------------------------------------------

def test_mask_folder_palette_and_colour_masks(tmp_path):
    root = tmp_path / "seg"
    for name in ("a", "b", "c", "d"):
        _png(root / "images" / f"{name}.png")
    classes = [{"name": "background", "color": [0, 0, 0]}, {"name": "road", "color": [128, 64, 128]}, {"name": "car", "color": [0, 0, 142]}]
    (root / "classes.json").write_text(json.dumps(classes))
    palette_mask = np.zeros((30, 40), np.uint8)
    palette_mask[5:10, 5:10] = 2
    palette_mask[0, 0] = IGNORE_INDEX
    save_palette_png(palette_mask, root / "masks" / "a.png", [[0, 0, 0]] * 256)
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[:, 20:] = [128, 64, 128]
    Image.fromarray(colour).save(root / "masks" / "b.png")
    out_of_range = np.full((30, 40), 7, np.uint8)
    Image.fromarray(out_of_range).save(root / "masks" / "c.png")
    scenes = load_mask_folder(root, class_file=root / "classes.json")
    assert scenes.mask_classes == ["background", "road", "car"]
    by_name = {s.name: s for s in scenes.scenes}
    assert np.array_equal(by_name["a.png"].mask, palette_mask)
    assert (by_name["b.png"].mask[:, 20:] == 1).all() and (by_name["b.png"].mask[:, :20] == 0).all()
    fields = {(p.file.rsplit("/", 1)[-1], p.field) for p in scenes.problems}
    assert fields == {("c.png", "pixels"), ("d.png", "mask")}
    assert "[7]" in next(p.message for p in scenes.problems if p.field == "pixels")


def test_mask_size_mismatch_and_unknown_colour(tmp_path):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small.png")
    mask, problem = read_index_mask(tmp_path / "small.png", (30, 40), 3)
    assert mask is None and problem.field == "size" and "12x10" in problem.message and "40x30" in problem.message
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[0, 0] = [1, 2, 3]
    Image.fromarray(colour).save(tmp_path / "colour.png")
    mask, problem = read_index_mask(tmp_path / "colour.png", (30, 40), 2, colours=[(0, 0, 0), (9, 9, 9)])
    assert mask is None and problem.field == "pixels" and "(1, 2, 3)" in problem.message
