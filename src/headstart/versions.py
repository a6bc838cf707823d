"""The versions of the packages that shape a result, recorded in bundles and run manifests."""

from __future__ import annotations

import platform


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("headstart", "torch", "torchvision", "timm", "numpy", "scikit-learn", "transformers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def headstart_version() -> str:
    """This headstart's version, as installed (the same as ``headstart.__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("headstart")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


__all__ = ["headstart_version", "package_versions"]
