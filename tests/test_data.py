"""Data sources, splits, subsampling, bad input, and files that fail to decode at extraction."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from PIL import Image

from headstart.backbones import load_backbone
from headstart.data import Dataset, load_data
from headstart.data.transforms import (
    decode_file,
    preprocess_array_batch,
    preprocess_pil,
    resize_size,
)
from headstart.errors import DataError
from headstart.features import FeatureStore, extract


def _image(seed: int, size=(40, 30), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def make_folder(root: Path, counts: dict[str, int], suffix=".png", start_seed=0) -> Path:
    """``root/<class>/<i><suffix>`` with ``counts[class]`` small random images each."""
    seed = start_seed
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _image(seed).save(root / name / f"{i:03d}{suffix}")
            seed += 1
    return root


def _items_of(data: Dataset, split: str) -> list[str]:
    return sorted(str(data.items[i]) for i in data.indices(split))


# ----- folders --------------------------------------------------------------------------------


def test_flat_folder(tmp_path):
    root = make_folder(tmp_path / "flat", {"cat": 10, "dog": 15})
    data = load_data(root)
    assert data.classes == ["cat", "dog"]
    assert len(data) == 25
    assert data.modality == "image" and not data.in_memory
    assert set(data.split) == {"train", "test"}
    counts = data.counts()
    assert counts["test"] == {"cat": 2, "dog": 3}  # 20% of each class
    assert counts["train"] == {"cat": 8, "dog": 12}
    for i, item in enumerate(data.items):
        assert Path(item).parent.name == data.classes[data.labels[i]]


def test_folder_with_given_splits(tmp_path):
    root = tmp_path / "given"
    make_folder(root / "train", {"a": 6, "b": 6})
    make_folder(root / "val", {"a": 2, "b": 3}, start_seed=100)
    make_folder(root / "test", {"a": 4, "b": 1}, start_seed=200)
    data = load_data(root)
    assert data.classes == ["a", "b"]
    assert data.counts() == {
        "train": {"a": 6, "b": 6},
        "val": {"a": 2, "b": 3},
        "test": {"a": 4, "b": 1},
    }
    for i, item in enumerate(data.items):
        assert Path(item).parent.parent.name == data.split[i]
        assert Path(item).parent.name == data.classes[data.labels[i]]


def test_given_splits_with_per_class_keep_val_and_test(tmp_path):
    root = tmp_path / "given"
    make_folder(root / "train", {"a": 8, "b": 8})
    make_folder(root / "test", {"a": 3, "b": 3}, start_seed=100)
    data = load_data(root, per_class=2)
    assert data.counts() == {"train": {"a": 2, "b": 2}, "test": {"a": 3, "b": 3}}


def test_folder_lists_non_images_as_skipped(tmp_path):
    root = make_folder(tmp_path / "flat", {"a": 5, "b": 5})
    (root / "a" / "notes.txt").write_text("not a picture")
    (root / "b" / ".DS_Store").write_bytes(b"\0\0")
    data = load_data(root)
    assert len(data) == 10
    assert data.skipped == [(str(root / "a" / "notes.txt"), "not an image file extension")]
    assert data.summary()["skipped"] == [{"item": str(root / "a" / "notes.txt"), "reason": "not an image file extension"}]


# ----- manifests ------------------------------------------------------------------------------


def _manifest_rows(tmp_path):
    images = tmp_path / "imgs"
    make_folder(images, {"x": 6, "y": 6})
    return [(f"imgs/{p.parent.name}/{p.name}", p.parent.name) for p in sorted(images.rglob("*.png"))]


def test_csv_manifest_with_relative_paths(tmp_path):
    rows = _manifest_rows(tmp_path)
    manifest = tmp_path / "data.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    data = load_data(manifest)
    assert data.classes == ["x", "y"]
    assert len(data) == 12
    for item in data.items:
        assert Path(item).is_file(), f"{item} is resolved relative to the manifest"
        assert Path(item).is_relative_to(tmp_path)
    assert data.counts()["test"] == {"x": 1, "y": 1}


def test_jsonl_manifest_with_custom_columns_and_splits(tmp_path):
    rows = _manifest_rows(tmp_path)
    manifest = tmp_path / "data.jsonl"
    lines = []
    for i, (path, label) in enumerate(rows):
        split = "val" if i % 6 == 0 else "train"
        lines.append(json.dumps({"file": path, "animal": label, "split": split}))
    manifest.write_text("\n".join(lines) + "\n\n")
    data = load_data(manifest, path_column="file", label_column="animal")
    assert data.classes == ["x", "y"]
    assert data.counts()["val"] == {"x": 1, "y": 1}
    assert data.has_split("test")  # held out from train, since none was given
    assert all(Path(item).is_file() for item in data.items)


def test_manifest_missing_column_names_the_columns(tmp_path):
    manifest = tmp_path / "data.csv"
    manifest.write_text("filename,label\na.png,x\n")
    with pytest.raises(DataError) as info:
        load_data(manifest)
    message = str(info.value)
    assert "'path'" in message and "filename" in message and "label" in message


def test_manifest_bad_split_and_bad_json(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,label,split\na.png,x,training\n")
    with pytest.raises(DataError, match="'training'"):
        load_data(manifest)
    broken = tmp_path / "bad.jsonl"
    broken.write_text('{"path": "a.png", "label": "x"}\n{"path": \n')
    with pytest.raises(DataError, match="line 2"):
        load_data(broken)


# ----- arrays and npz -------------------------------------------------------------------------


def test_arrays(tiny_arrays):
    images, labels = tiny_arrays
    data = load_data((images, labels))
    assert data.in_memory
    assert data.classes == ["0", "1", "2"]
    assert len(data) == 60
    assert data.counts()["test"] == {"0": 4, "1": 4, "2": 4}
    assert np.array_equal(data.items, images)


def test_float_arrays_and_string_labels():
    rng = np.random.default_rng(1)
    images = rng.random((12, 8, 8, 3))
    labels = np.array(["zebra", "ant"] * 6)
    data = load_data((images, labels))
    assert data.items.dtype == np.uint8
    assert np.array_equal(data.items, np.round(images * 255).astype(np.uint8))
    assert data.classes == ["ant", "zebra"]
    assert [data.classes[i] for i in data.labels] == labels.tolist()


def test_arrays_with_mismatched_lengths():
    with pytest.raises(DataError, match="10 images but 9 labels"):
        load_data((np.zeros((10, 8, 8), np.uint8), np.zeros(9, int)))
    with pytest.raises(DataError, match="shape"):
        load_data((np.zeros((10, 8), np.uint8), np.zeros(10, int)))


def test_npz(tmp_path, tiny_arrays):
    images, labels = tiny_arrays
    path = tmp_path / "d.npz"
    np.savez(path, x=images, y=labels)
    data = load_data(path)
    assert np.array_equal(data.items, images)
    assert np.array_equal(data.labels, labels)
    assert data.source == str(path)
    np.savez(tmp_path / "bad.npz", images=images, labels=labels)
    with pytest.raises(DataError, match="x and y"):
        load_data(tmp_path / "bad.npz")


# ----- splits and subsampling -----------------------------------------------------------------


def _unbalanced():
    labels = np.array([0] * 20 + [1] * 40 + [2] * 8)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    return images, labels


def test_split_is_seeded_and_stratified():
    images, labels = _unbalanced()
    first = load_data((images, labels), seed=3, test_fraction=0.25)
    again = load_data((images, labels), seed=3, test_fraction=0.25)
    other = load_data((images, labels), seed=4, test_fraction=0.25)
    assert np.array_equal(first.split, again.split)
    assert not np.array_equal(first.split, other.split)
    for data in (first, other):
        assert data.counts()["test"] == {"0": 5, "1": 10, "2": 2}
        assert data.counts()["train"] == {"0": 15, "1": 30, "2": 6}


def test_per_class_subsamples_train_only():
    images, labels = _unbalanced()
    full = load_data((images, labels), seed=0)
    few = load_data((images, labels), seed=0, per_class=3)
    assert few.counts()["train"] == {"0": 3, "1": 3, "2": 3}
    assert few.counts()["test"] == full.counts()["test"]
    full_test = full.items[full.indices("test")]
    few_test = few.items[few.indices("test")]
    assert np.array_equal(full_test, few_test), "the test split does not depend on per_class"
    # The kept training items are a subset of the full training items, and seeded.
    full_train = {int(x[0, 0]) for x in full.items[full.indices("train")]}
    few_train = {int(x[0, 0]) for x in few.items[few.indices("train")]}
    assert few_train <= full_train
    again = load_data((images, labels), seed=0, per_class=3)
    assert np.array_equal(again.items, few.items)
    assert not np.array_equal(load_data((images, labels), seed=1, per_class=3).items, few.items)


def test_per_class_larger_than_class_keeps_all():
    images, labels = _unbalanced()
    data = load_data((images, labels), per_class=1000)
    assert data.counts()["train"] == {"0": 16, "1": 32, "2": 6}


def test_per_class_must_be_positive(tiny_arrays):
    with pytest.raises(DataError, match="at least 1"):
        load_data(tiny_arrays, per_class=0)


# ----- bad input ------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_data(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_unknown_builtin_suggests():
    with pytest.raises(DataError, match="animal-mnist"):
        load_data("builtin:animal-mnst")


def test_unknown_file_type(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"\.csv"):
        load_data(path)


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "flat", {"a": 5, "b": 5})
    (root / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_data(root)
    assert str(root / "empty") in str(info.value)
    assert "no images" in str(info.value)


def test_folder_without_class_folders(tmp_path):
    root = tmp_path / "loose"
    root.mkdir()
    _image(0).save(root / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        load_data(root)


def test_one_class_dataset(tmp_path):
    root = make_folder(tmp_path / "one", {"only": 6})
    with pytest.raises(DataError) as info:
        load_data(root)
    assert "only" in str(info.value)
    assert "at least 2" in str(info.value)
    with pytest.raises(DataError, match="at least 2"):
        load_data((np.zeros((6, 4, 4), np.uint8), np.zeros(6, int)))


def test_class_with_one_example_is_named(tmp_path):
    root = make_folder(tmp_path / "few", {"many": 6, "lonely": 1})
    with pytest.raises(DataError) as info:
        load_data(root)
    assert "'lonely'" in str(info.value)
    assert "1 example" in str(info.value)


# ----- transforms -----------------------------------------------------------------------------


def test_preprocessing_comes_from_the_spec():
    spec = load_backbone("tv:resnet18@random").spec.with_input_size(32)
    assert resize_size(spec) == round(32 / 0.875)
    image = _image(0, size=(80, 50))
    tensor = preprocess_pil(image, spec)
    assert tensor.shape == (3, 32, 32)
    grey = _image(1, size=(50, 50), mode="L")
    assert preprocess_pil(grey, spec).shape == (3, 32, 32)
    # A constant image at the mean becomes zeros: the spec's mean and std are used.
    mean_rgb = tuple(round(m * 255) for m in spec.mean)
    flat = preprocess_pil(Image.new("RGB", (40, 40), mean_rgb), spec)
    assert flat.abs().max() < 0.02


def test_array_batches_match_shape_and_channels():
    spec = load_backbone("tv:resnet18@random").spec.with_input_size(32)
    grey = np.random.default_rng(0).integers(0, 255, (4, 28, 28), dtype=np.uint8)
    out = preprocess_array_batch(grey, spec)
    assert out.shape == (4, 3, 32, 32)
    channels = [out[:, c] * spec.std[c] + spec.mean[c] for c in range(3)]
    assert torch.allclose(channels[0], channels[1], atol=1e-5), "grey images repeat across the 3 channels"
    assert torch.allclose(channels[0], channels[2], atol=1e-5)
    rgba = np.random.default_rng(1).integers(0, 255, (2, 40, 40, 4), dtype=np.uint8)
    assert preprocess_array_batch(rgba, spec).shape == (2, 3, 32, 32)


def test_jpeg_draft_decoding_keeps_enough_pixels(tmp_path):
    spec = load_backbone("tv:resnet18@random").spec  # 224 px, resize 256
    path = tmp_path / "big.jpg"
    _image(0, size=(1600, 1200)).save(path, quality=90)
    image = decode_file(str(path), spec)
    assert image.mode == "RGB"
    assert min(image.size) >= resize_size(spec), "draft mode must not decode below the resize size"
    assert max(image.size) < 1600, "draft mode decodes large JPEGs at reduced size"


# ----- files that fail to decode --------------------------------------------------------------


def _folder_with_bad_files(tmp_path) -> tuple[Path, list[Path]]:
    root = tmp_path / "mixed"
    make_folder(root, {"a": 4, "b": 4})
    _image(50, size=(60, 40), mode="L").save(root / "a" / "grey.png")
    _image(51, size=(60, 40), mode="RGBA").save(root / "b" / "alpha.png")
    _image(52, size=(64, 48)).save(root / "b" / "photo.jpg", quality=90)
    good_jpeg = (root / "b" / "photo.jpg").read_bytes()
    truncated = root / "a" / "truncated.jpg"
    truncated.write_bytes(good_jpeg[: len(good_jpeg) // 2])
    fake = root / "b" / "fake.png"
    fake.write_text("this is not a PNG, just text with an image extension")
    return root, [truncated, fake]


@pytest.mark.parametrize("workers", [0, 2])
def test_undecodable_files_are_skipped_and_listed(tmp_path, workers):
    root, bad = _folder_with_bad_files(tmp_path)
    data = load_data(root, test_fraction=0.3)
    assert len(data) == 13  # both bad files look like images until decoded
    backbone = load_backbone(TINY_BACKBONE)
    features = extract(backbone, data, image_size=32, num_workers=workers, batch_size=4, store=FeatureStore(tmp_path / "s"), quiet=True)
    assert features.shape == (13, backbone.spec.feature_dim)
    skipped = dict(features.skipped)
    assert set(skipped) == {str(p) for p in bad}
    assert all(reason for reason in skipped.values())
    assert "truncated" in skipped[str(bad[0])].lower() or "OSError" in skipped[str(bad[0])]
    assert "UnidentifiedImageError" in skipped[str(bad[1])] or "cannot identify" in skipped[str(bad[1])]
    items = [str(p) for p in data.items]
    bad_rows = [items.index(str(p)) for p in bad]
    assert not features.valid[bad_rows].any()
    assert np.count_nonzero(features.X[bad_rows]) == 0
    good_rows = [i for i in range(len(items)) if i not in bad_rows]
    assert features.valid[good_rows].all()
    assert np.isfinite(features.X[good_rows]).all()
    # Every good row equals the features of that file alone, through the same spec.
    spec = backbone.spec.with_input_size(32)
    batch = torch.stack([preprocess_pil(decode_file(items[i], spec), spec) for i in good_rows])
    with torch.no_grad():
        expected = backbone(batch).numpy()
    np.testing.assert_allclose(features.X[good_rows], expected, rtol=1e-4, atol=1e-5)
    # get() drops the invalid rows.
    x_train, y_train = features.get("train")
    x_test, y_test = features.get("test")
    assert len(x_train) + len(x_test) == 11
    assert len(y_train) == len(x_train) and len(y_test) == len(x_test)
    assert summary_skipped(features) == 2


def summary_skipped(features) -> int:
    return features.summary()["skipped"]


def test_skipped_files_survive_a_store_hit(tmp_path):
    root, bad = _folder_with_bad_files(tmp_path)
    (root / "a" / "readme.txt").write_text("listing skip")
    data = load_data(root)
    store = FeatureStore(tmp_path / "s")
    first = extract(TINY_BACKBONE, data, image_size=32, num_workers=0, store=store, quiet=True)
    second = extract(TINY_BACKBONE, data, image_size=32, num_workers=0, store=store, quiet=True)
    assert second.hit and not first.hit
    assert sorted(first.skipped) == sorted(second.skipped)
    assert {item for item, _ in second.skipped} == {str(p) for p in bad} | {str(root / "a" / "readme.txt")}
    assert np.array_equal(first.valid, second.valid)


def test_manifest_entry_for_a_missing_file_is_skipped(tmp_path):
    rows = _manifest_rows(tmp_path)
    rows.append(("imgs/x/gone.png", "x"))
    manifest = tmp_path / "data.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    data = load_data(manifest)
    features = extract(TINY_BACKBONE, data, image_size=32, num_workers=0, store=FeatureStore(tmp_path / "s"), quiet=True)
    skipped = dict(features.skipped)
    gone = str(tmp_path / "imgs" / "x" / "gone.png")
    assert list(skipped) == [gone]
    assert "No such file" in skipped[gone] or "FileNotFoundError" in skipped[gone]
    assert features.valid.sum() == len(rows) - 1


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_tensor_decode_skips_the_same_files(tmp_path):
    """decode='tensor' (batched tensor resize; nvJPEG on a GPU) lists the same failures as the PIL path."""
    root, bad = _folder_with_bad_files(tmp_path)
    data = load_data(root)
    store = FeatureStore(tmp_path / "s")
    pil = extract(TINY_BACKBONE, data, image_size=32, num_workers=0, decode="pil", store=store, quiet=True)
    tensor = extract(TINY_BACKBONE, data, image_size=32, num_workers=0, decode="tensor", store=store, quiet=True)
    assert tensor.key != pil.key, "the decode path is part of the key"
    assert {item for item, _ in tensor.skipped} == {str(p) for p in bad}
    assert all(reason for _, reason in tensor.skipped)
    assert np.array_equal(tensor.valid, pil.valid)
    assert np.isfinite(tensor.X[tensor.valid]).all()


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
@pytest.mark.parametrize(("method", "worst"), [("interpolate", 4.0), ("roi_align", 8.0)])
def test_tensor_decode_resize_matches_the_pil_path(tmp_path, method, worst):
    from skimage import data as skdata

    from headstart.features.fastpath import decode_batch, resize_crop_normalize

    path = tmp_path / "chelsea.jpg"
    Image.fromarray(skdata.chelsea()).save(path, quality=90)  # 451x300: 256 * 451 / 300 = 384.85
    spec = load_backbone("tv:mobilenet_v2@random").spec  # 224 px, shorter side resized to 256
    pil = preprocess_pil(decode_file(str(path), spec), spec)
    blob = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    images, reasons = decode_batch([blob], torch.device("cpu"))
    assert reasons == [""]
    tensor = resize_crop_normalize(images, spec, method)[0]
    pixels = ((tensor - pil) * torch.tensor(spec.std).view(3, 1, 1) * 255).abs()
    # interpolate: the same decoder output and the same antialiased filter, so only rounding to uint8
    # differs. roi_align (1.17x shrink: 2 x 2 bilinear samples per pixel) approximates that filter.
    assert pixels.mean() < 1.0, f"mean difference {pixels.mean():.2f}/255"
    assert pixels.max() < worst, f"max difference {pixels.max():.1f}/255"
