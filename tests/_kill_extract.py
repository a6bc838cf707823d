"""Helper for the kill-and-resume test: extract features from a .npz file in a separate process.

Usage: python tests/_kill_extract.py DATA.npz --cache DIR --report FILE [--shard-size N] [--batch-size N] [--delay S]

``--delay`` sleeps after each batch, so the test can kill the process between shards. The report
(written only when extraction finishes) holds the key, the feature width, whether the store was hit
and the indices of the shards this process wrote.
"""

from __future__ import annotations

import argparse
import json
import time

from headstart.backbones import Backbone
from headstart.data import load_data
from headstart.features import FeatureStore, extract

BACKBONE = "timm:test_efficientnet@random"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--shard-size", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()

    written: list[int] = []
    original_write = FeatureStore.write_shard

    def counting_write(store, key, index, *rest, **kwargs):
        original_write(store, key, index, *rest, **kwargs)
        written.append(index)

    FeatureStore.write_shard = counting_write
    if args.delay:
        original_features = Backbone.features

        def slow_features(self, *inner, **kwargs):
            out = original_features(self, *inner, **kwargs)
            time.sleep(args.delay)
            return out

        Backbone.features = slow_features

    features = extract(
        BACKBONE,
        load_data(args.data),
        image_size=32,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        store=FeatureStore(args.cache),
        quiet=True,
    )
    report = {"key": features.key, "dim": features.shape[1], "hit": features.hit, "written": written}
    with open(args.report, "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
