"""The tensor path's batched resize (roi_align on a padded canvas) agrees with its per-image resize."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from headstart import load_backbone
from headstart.data.resize import canvas_chunks, interpolate_resize_crop, roi_resize_crop, supersample
from headstart.features.fastpath import decode_batch, default_resize, resize_crop_normalize

# (width, height): upscaled (64x64, 180x240), unchanged (256x256), shrunk 1.2x to 6x, both orientations.
SIZES = [(180, 240), (240, 180), (64, 64), (256, 256), (500, 375), (375, 500), (1024, 768), (768, 1024), (2048, 1536)]


def photos(sizes=SIZES) -> list[np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    sources = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]
    return [np.asarray(Image.fromarray(sources[i % len(sources)]).resize(size, Image.Resampling.BICUBIC))
            for i, size in enumerate(sizes)]


def as_tensors(arrays: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous() for array in arrays]


@pytest.fixture(scope="module")
def bilinear_spec():
    return dataclasses.replace(load_backbone("tv:mobilenet_v2@random").spec, interpolation="bilinear")


def test_batched_resize_matches_per_image_resize_pixel_by_pixel(bilinear_spec):
    images = as_tensors(photos())
    per_image = interpolate_resize_crop(images, bilinear_spec)
    batched = roi_resize_crop(images, bilinear_spec)
    assert batched.shape == per_image.shape == (len(SIZES), 3, 224, 224)
    difference = (batched - per_image).abs()
    for index, (width, height) in enumerate(SIZES):
        if min(width, height) <= 256:  # upscaled or not resized: bilinear sampling is the same arithmetic
            assert difference[index].max() < 0.01, (width, height)
        else:  # shrunk: box-averaged samples merged by a tent kernel stand in for the antialiasing filter
            assert difference[index].mean() < 0.5, (width, height, float(difference[index].mean()))
            # 1.46x (k = 1: 2 x 2 samples per pixel) is the worst case; 3x and 6x (supersampled) are close to exact.
            worst = 25 if supersample(bilinear_spec, height, width) == 1 else 5
            assert difference[index].max() < worst, (width, height, float(difference[index].max()))


def test_edges_are_repeated_not_zero_padded(bilinear_spec):
    # A flat white image upscaled: any zero from the canvas padding would darken its border.
    white = torch.full((3, 50, 70), 255, dtype=torch.uint8)
    other = torch.zeros(3, 300, 400, dtype=torch.uint8)  # a larger image makes the canvas pad the white one
    out = roi_resize_crop([white, other], bilinear_spec)
    assert torch.allclose(out[0], torch.full_like(out[0], 255.0), atol=1e-3)
    assert out[1].abs().max() < 1e-3


def test_supersampling_factor_follows_the_shrink(bilinear_spec):
    assert supersample(bilinear_spec, 64, 64) == 1  # upscaled
    assert supersample(bilinear_spec, 375, 500) == 1  # 1.46x
    assert supersample(bilinear_spec, 480, 640) == 2  # 1.9x
    assert supersample(bilinear_spec, 768, 1024) == 3  # 3x
    assert supersample(bilinear_spec, 3000, 4000) == 3  # capped


def test_small_canvas_budget_splits_the_batch_without_changing_pixels(bilinear_spec):
    images = as_tensors(photos(SIZES[:6]))
    whole = roi_resize_crop(images, bilinear_spec)
    pieces = roi_resize_crop(images, bilinear_spec, budget=3 * 400 * 400)
    assert torch.equal(whole, pieces)
    chunks = canvas_chunks([(int(i.shape[-2]), int(i.shape[-1])) for i in images], 2, 3 * 400 * 400)
    assert len(chunks) > 1 and sorted(i for chunk in chunks for i in chunk) == list(range(6))


def test_tiny_model_features_agree_through_both_resizes(tmp_path):
    backbone = load_backbone("timm:test_efficientnet@random").eval()
    spec = dataclasses.replace(backbone.spec, interpolation="bilinear")  # roi_align stands in for bilinear only
    blobs = []
    for index, array in enumerate(photos()):
        path = tmp_path / f"{index}.jpg"
        Image.fromarray(array).save(path, quality=90)
        blobs.append(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))
    images, reasons = decode_batch(blobs, torch.device("cpu"))
    assert reasons == [""] * len(blobs)
    with torch.inference_mode():
        a = backbone(resize_crop_normalize(images, spec, "interpolate")).numpy()
        b = backbone(resize_crop_normalize(images, spec, "roi_align")).numpy()
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99


def test_default_resize_is_batched_on_gpus_for_bilinear_specs(bilinear_spec):
    from headstart.features.extract import key_parts

    bicubic = dataclasses.replace(bilinear_spec, interpolation="bicubic")
    assert default_resize(bilinear_spec, "cuda") == "roi_align"
    assert default_resize(bicubic, "cuda") == "interpolate"
    assert default_resize(bilinear_spec, "cpu") == "interpolate"  # faster there
    parts = key_parts(bilinear_spec, "pooled", "avg", "data", decode="tensor", device="cuda")
    assert parts["resize"] == "roi_align"
    assert "resize" not in key_parts(bilinear_spec, "pooled", "avg", "data", decode="pil", device="cuda")
    with pytest.raises(ValueError, match="not one of"):
        resize_crop_normalize(as_tensors(photos(SIZES[:1])), bilinear_spec, "nearest")


@pytest.mark.slow
def test_real_weights_features_meet_the_agreement_goal(tmp_path):
    """MobileNetV2 ImageNet features through both resizes: median cosine >= 0.999, lowest >= 0.99."""
    backbone = load_backbone("tv:mobilenet_v2.IMAGENET1K_V1").eval()
    spec = backbone.spec
    assert spec.interpolation == "bilinear"
    sizes = SIZES + [(333, 500), (640, 480), (96, 128), (1600, 1200), (300, 225), (160, 90)]
    blobs = []
    for index, array in enumerate(photos(sizes)):
        path = tmp_path / f"{index}.jpg"
        Image.fromarray(array).save(path, quality=90)
        blobs.append(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))
    images, _ = decode_batch(blobs, torch.device("cpu"))
    with torch.inference_mode():
        a = backbone(resize_crop_normalize(images, spec, "interpolate")).numpy()
        b = backbone(resize_crop_normalize(images, spec, "roi_align")).numpy()
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert np.median(cosine) >= 0.999, np.median(cosine)
    assert cosine.min() >= 0.99, cosine.min()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: compares the batched resize on the GPU with the CPU")
def test_batched_resize_on_gpu_matches_cpu(bilinear_spec):
    images = as_tensors(photos())
    cpu = roi_resize_crop(images, bilinear_spec)
    gpu = roi_resize_crop([image.cuda() for image in images], bilinear_spec)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() < 0.05
    assert default_resize(bilinear_spec, gpu.device) == "roi_align"


def test_tensor_batches_take_the_resize_option_and_still_report_bad_files(tmp_path, bilinear_spec):
    from headstart.features.fastpath import tensor_batches

    paths = []
    for index, array in enumerate(photos(SIZES[:5])):
        paths.append(str(tmp_path / f"{index}.jpg"))
        Image.fromarray(array).save(paths[-1], quality=90)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 32)
    paths.append(str(tmp_path / "bad.jpg"))
    rows = np.arange(len(paths))
    out = {}
    for method in ("interpolate", "roi_align"):
        batches = list(tensor_batches(paths, rows, bilinear_spec, 4, 0, torch.device("cpu"), resize=method))
        out[method] = torch.cat([batch for batch, _, _ in batches])
        reasons = [reason for _, _, batch_reasons in batches for reason in batch_reasons]
        assert [bool(reason) for reason in reasons] == [False] * 5 + [True]
    assert torch.equal(out["roi_align"][5], out["interpolate"][5])  # the bad file's blank row
    assert (out["roi_align"][:5] - out["interpolate"][:5]).abs().mean() < 0.01  # normalised units
    assert not torch.equal(out["roi_align"], out["interpolate"])  # the option reached the resize


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: extraction with nvJPEG and the batched resize")
def test_gpu_extraction_with_the_batched_resize_matches_the_cpu(tmp_path):
    from headstart import FeatureStore, extract, load_data

    for index, array in enumerate(photos()):
        folder = tmp_path / "images" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"{index}.jpg", quality=90)
    data = load_data(tmp_path / "images")
    name = "tv:mobilenet_v2@random"  # bilinear: the batched resize is the GPU default
    common = dict(image_size=64, quiet=True, num_workers=0)
    cpu = extract(name, data, device="cpu", decode="pil", store=FeatureStore(tmp_path / "c"), **common)
    gpu = extract(name, data, device="cuda", store=FeatureStore(tmp_path / "g"), **common)
    assert gpu.valid.all() and cpu.valid.all()
    a, b = cpu.X, gpu.X
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.97  # bf16, nvJPEG and the batched resize against fp32, PIL and PIL's resize
