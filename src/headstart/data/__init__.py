"""Data: sources (folders, manifests, arrays, built-ins), splits, and spec-driven transforms."""

from headstart.data.dataset import Dataset
from headstart.data.sources import from_arrays, from_folder, from_manifest, load_data

__all__ = ["Dataset", "from_arrays", "from_folder", "from_manifest", "load_data"]
