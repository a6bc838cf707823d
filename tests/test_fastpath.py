"""The tensor decode path (nvJPEG on a GPU) agrees with the PIL path and reports bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from headstart import FeatureStore, extract, load_data, load_backbone
from headstart.features.fastpath import decode_batch, resize_crop_normalize
from headstart.data.transforms import preprocess_pil


@pytest.fixture
def photo_folder(tmp_path):
    """Real photos (skimage) as JPEGs of several sizes, one PNG, one corrupt JPEG, in 2 classes."""
    skimage_data = pytest.importorskip("skimage.data")
    photos = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut(), skimage_data.rocket()]
    rng = np.random.default_rng(0)
    for index in range(12):
        photo = photos[index % len(photos)]
        top, left = rng.integers(0, 40, size=2)
        crop = photo[top : top + 250 + 10 * (index % 3), left : left + 300]
        folder = tmp_path / ("a" if index % 2 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(crop).save(folder / f"{index}.jpg", quality=92)
    Image.fromarray(photos[0][:200, :260]).save(tmp_path / "a" / "png-image.png")
    (tmp_path / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    return tmp_path


def test_batched_resize_matches_pil_preprocessing(photo_folder):
    spec = load_backbone("timm:test_efficientnet@random").spec.with_input_size(64)
    paths = sorted(str(p) for p in photo_folder.rglob("*.jpg") if "corrupt" not in p.name)
    blobs = [torch.frombuffer(bytearray(open(p, "rb").read()), dtype=torch.uint8) for p in paths]
    images, reasons = decode_batch(blobs, torch.device("cpu"))
    assert reasons == [""] * len(paths)
    tensor_path = resize_crop_normalize(images, spec)
    pil_path = torch.stack([preprocess_pil(Image.open(p), spec) for p in paths])
    assert tensor_path.shape == pil_path.shape == (len(paths), 3, 64, 64)
    # Both resize with antialiasing; they differ by rounding and filter details only.
    assert (tensor_path - pil_path).abs().mean() < 0.02


def test_tensor_decode_features_agree_and_bad_files_are_reported(photo_folder, tmp_path):
    data = load_data(photo_folder)
    common = dict(image_size=64, store=FeatureStore(tmp_path / "store"), quiet=True, num_workers=0)
    pil = extract("timm:test_efficientnet@random", data, decode="pil", **common)
    tensor = extract("timm:test_efficientnet@random", data, decode="tensor", **common)
    assert pil.key != tensor.key  # the two decoders get separate store entries
    assert np.array_equal(pil.valid, tensor.valid)
    assert sum(1 for item, _ in tensor.skipped if item.endswith("corrupt.jpg")) == 1
    assert not any(item.endswith("png-image.png") for item, _ in tensor.skipped)  # PNG fell back to the CPU decoder
    a, b = pil.X[pil.valid], tensor.X[tensor.valid]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    # Most rows agree to 1e-4; JPEGs that the PIL path decodes at reduced scale (draft mode) differ a bit more.
    assert np.median(cosine) > 0.999
    assert cosine.min() > 0.95


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: compares nvJPEG + bf16 features with the CPU path")
def test_gpu_path_matches_cpu_within_bf16_tolerance(photo_folder, tmp_path):
    data = load_data(photo_folder)
    cpu = extract("timm:test_efficientnet@random", data, image_size=64, device="cpu", decode="pil", store=FeatureStore(tmp_path / "c"), quiet=True)
    gpu = extract("timm:test_efficientnet@random", data, image_size=64, device="cuda", store=FeatureStore(tmp_path / "g"), quiet=True)
    a, b = cpu.X[cpu.valid], gpu.X[gpu.valid]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.97


def test_cpu_extraction_folds_batchnorm_without_changing_features(tiny_arrays):
    from headstart.features.extract import fused_for_cpu

    backbone = load_backbone("tv:mobilenet_v2@random")
    fused = fused_for_cpu(backbone)
    assert fused is not backbone
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.model.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(fused(x), backbone(x), atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules()), "the original stays unfused"
