"""Feature extraction into a content-addressed on-disk store."""

from headstart.features.extract import Features, extract
from headstart.features.store import FeatureStore

__all__ = ["FeatureStore", "Features", "extract"]
