"""Built-in datasets that install from the package registries (see DESIGN.md, "Offline by design")."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np

from headstart.data.dataset import Dataset
from headstart.errors import DataError, did_you_mean

ANIMAL_CLASSES = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_ANIMAL_SHA256 = {
    "animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    "animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BUILTINS = ("animal-mnist", "fashion-mnist")


def load_builtin(name: str) -> Dataset:
    """Load ``builtin:<name>``."""
    key = name.removeprefix("builtin:")
    if key == "animal-mnist":
        return animal_mnist()
    if key == "fashion-mnist":
        return fashion_mnist()
    from headstart.data import text_builtin

    if key in text_builtin.BUILTINS:
        return text_builtin.load(key)
    known = list(BUILTINS) + list(text_builtin.BUILTINS)
    raise DataError(f"Unknown built-in dataset {name!r}.{did_you_mean(key, known)} Known: {', '.join('builtin:' + k for k in known)}.")


def _animal_dir() -> Path:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("builtin:animal-mnist needs its data package. Install it with: pip install --no-deps animal-mnist==0.4 (make setup does this).")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"


def _load_verified_pickle(path: Path) -> np.ndarray:
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != _ANIMAL_SHA256[path.name]:
        raise DataError(f"{path} has sha256 {actual}, not the recorded {_ANIMAL_SHA256[path.name]}; reinstall animal-mnist==0.4.")
    # The package ships gzip+pickle files; only the exact bytes verified above are unpickled.
    return np.asarray(pickle.loads(gzip.decompress(data)))  # noqa: S301


def animal_mnist() -> Dataset:
    """Animal-MNIST: 10,000 silhouettes, 28x28, 10 animal classes x 1,000 (MIT)."""
    folder = _animal_dir()
    images = _load_verified_pickle(folder / "animal_data_version_3.gz").astype(np.uint8)
    labels = _load_verified_pickle(folder / "animal_label_version_3.gz").astype(np.int64)
    return Dataset("builtin:animal-mnist", "image", list(ANIMAL_CLASSES), images, labels, np.full(len(labels), "train", dtype=object))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    _, _, dtype_code, ndim = struct.unpack(">BBBB", data[:4])
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist() -> Dataset:
    """Fashion-MNIST: 60,000 training and 10,000 test images, 28x28, 10 classes (Debian package)."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise DataError(f"builtin:fashion-mnist is not installed ({FASHION_DIR} is missing). Install it with: apt-get install dataset-fashion-mnist.")
    train_x = _read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    train_y = _read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    test_x = _read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    test_y = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    images = np.concatenate([train_x, test_x])
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    split = np.array(["train"] * len(train_y) + ["test"] * len(test_y), dtype=object)
    return Dataset("builtin:fashion-mnist", "image", list(FASHION_CLASSES), images, labels, split)
