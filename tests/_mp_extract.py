"""Helper for tests/test_store_scaling.py: extract a fixed random dataset into a given store."""

import sys

import numpy as np

from headstart import FeatureStore, extract, load_data


def main() -> None:
    store_root, output = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    images = (rng.random((120, 16, 16)) * 255).astype(np.uint8)
    data = load_data((images, labels))
    features = extract("timm:test_efficientnet@random", data, image_size=32, shard_size=16, store=FeatureStore(store_root), quiet=True)
    np.save(output, features.X)


if __name__ == "__main__":
    main()
