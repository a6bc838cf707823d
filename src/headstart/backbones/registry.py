"""Resolve prefixed backbone names, and list the known ones.

Prefixes: ``tv:`` (torchvision), ``timm:`` (timm), ``hf:`` (Hugging Face transformers models:
vision models, and text encoders with their tokenizer), ``st:`` (sentence-transformers text
encoders, with their own pooling and normalisation), ``file:`` (a local state dict, safetensors or
TorchScript file with a sidecar JSON spec), ``onnx:`` (an ONNX model run by onnxruntime) and
``keras:`` (a Keras 3 model run with the torch backend), both with a sidecar JSON spec.
A ``@random`` suffix gives the same architecture with a seeded random initialisation, the control
that shows what pretraining is worth.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import asdict, dataclass

from headstart.backbones.module import Backbone
from headstart.errors import HeadstartError, UnknownBackboneError, WeightsMismatchError

_ADAPTERS = {
    "tv": "headstart.backbones.torchvision_adapter",
    "timm": "headstart.backbones.timm_adapter",
    "hf": "headstart.backbones.hf_adapter",
    "file": "headstart.backbones.file_adapter",
    "st": "headstart.backbones.text_adapter",
    "onnx": "headstart.backbones.onnx_adapter",
    "keras": "headstart.backbones.keras_adapter",
}
RANDOM_SUFFIX = "@random"


def _adapter(name: str):
    prefix, sep, rest = name.partition(":")
    if prefix == "sk" and rest:
        # sk:tfidf is a baseline fitted on raw texts (headstart.heads.tfidf), not a network.
        raise UnknownBackboneError(
            f"{name} is a baseline fitted on raw texts, not a network: headstart probe DATA -b {name} trains it and "
            f"headstart rank DATA -c {name} scores it. This needs a network backbone (tv:, timm:, hf:, st: or file:)."
        )
    if not sep or prefix not in _ADAPTERS or not rest:
        raise UnknownBackboneError(
            f"Backbone name {name!r} has no known source prefix. Use one of "
            f"{', '.join(p + ':' for p in _ADAPTERS)}, for example tv:mobilenet_v2.IMAGENET1K_V1, "
            "timm:tf_efficientnet_lite0, hf:google/vit-base-patch16-224, st:sentence-transformers/all-MiniLM-L6-v2, "
            "file:./model.safetensors, onnx:./model.onnx or keras:./model.keras."
        )
    return importlib.import_module(_ADAPTERS[prefix])


def allows_remote_code(name: str) -> bool:
    """Whether the source of ``name`` (``hf:``, ``st:``) can run code shipped with its weights.

    Commands that take ``--trust-remote-code`` for several backbones pass it on only to these:
    ``load_backbone(name, trust_remote_code=trust and allows_remote_code(name))``.

    Raises:
        UnknownBackboneError: The name has no known source prefix.
    """
    name = name.strip()
    base = name[: -len(RANDOM_SUFFIX)] if name.endswith(RANDOM_SUFFIX) else name
    return bool(getattr(_adapter(base), "SUPPORTS_REMOTE_CODE", False))


class NotTrainableError(HeadstartError):
    """A backbone that headstart can extract features from but cannot fine-tune (``onnx:``)."""


def check_trainable(backbone: str | Backbone) -> None:
    """Refuse, before any work, a backbone whose source cannot be fine-tuned.

    Args:
        backbone: A prefixed name or a loaded :class:`Backbone`.

    Raises:
        NotTrainableError: The source cannot be trained (its adapter's ``FINETUNE_REFUSAL`` says why).
        UnknownBackboneError: The name has no known source prefix.
    """
    if isinstance(backbone, Backbone):
        name, source = backbone.spec.name, backbone.spec.source
        adapter = importlib.import_module(_ADAPTERS[source]) if source in _ADAPTERS else None
    else:
        name = backbone.strip()
        adapter = _adapter(name[: -len(RANDOM_SUFFIX)] if name.endswith(RANDOM_SUFFIX) else name)
    refusal = getattr(adapter, "FINETUNE_REFUSAL", None)
    if refusal:
        raise NotTrainableError(refusal.format(name=name))


def load_backbone(
    name: str,
    pretrained: bool | None = None,
    *,
    trust_remote_code: bool = False,
    allow_torchscript: bool = False,
    expected_sha256: str | None = None,
) -> Backbone:
    """Load a backbone by its prefixed name.

    Args:
        name: For example ``tv:mobilenet_v2.IMAGENET1K_V1``, ``timm:tf_efficientnet_lite0``,
            ``tv:mobilenet_v2@random``, ``st:sentence-transformers/all-MiniLM-L6-v2`` or
            ``file:./backbone.safetensors``.
        pretrained: Override the ``@random`` suffix: False forces a random initialisation.
        trust_remote_code: Let an ``hf:`` or ``st:`` folder run the model code it ships
            (``auto_map`` in its config). Off by default; read that code first.
        allow_torchscript: Let a ``file:`` TorchScript file load (``torch.jit.load`` runs the code
            it holds). Off by default; other sources never load TorchScript and ignore it.
        expected_sha256: The sha256 the weights must have (a bundle passes the one it recorded).
            Each source checks it against the weight file *before* deserializing it, and the
            loaded spec's sha256 is checked too. With ``pretrained=False`` no weights are read,
            and only a TorchScript file (which is its own architecture) is checked.

    Returns:
        A :class:`Backbone` in eval mode. ``backbone.spec`` is its frozen :class:`BackboneSpec`;
        ``backbone(x)`` returns pooled penultimate features.

    Raises:
        UnknownBackboneError: The name does not resolve; the message lists close matches.
        WeightsUnavailableError: The weights are neither cached, packaged nor downloadable, or the
            file is TorchScript and ``allow_torchscript`` is off.
        WeightsMismatchError: A weight file's sha256 is not the pinned or the expected one.
    """
    name = name.strip()
    is_random = name.endswith(RANDOM_SUFFIX)
    base = name[: -len(RANDOM_SUFFIX)] if is_random else name
    if pretrained is None:
        pretrained = not is_random
    adapter = _adapter(base)
    options: dict = {}
    if trust_remote_code:
        if not getattr(adapter, "SUPPORTS_REMOTE_CODE", False):
            raise ValueError(f"trust_remote_code applies to hf: and st: backbones only; {name} runs no code from its weights.")
        options["trust_remote_code"] = True
    if allow_torchscript and getattr(adapter, "SUPPORTS_TORCHSCRIPT", False):
        options["allow_torchscript"] = True
    if expected_sha256 is not None:
        options["expected_sha256"] = expected_sha256
    backbone = adapter.load(base, pretrained=pretrained, **options).eval()
    if expected_sha256 is not None and (pretrained or backbone.spec.pretrained) and backbone.spec.sha256 != expected_sha256:
        raise WeightsMismatchError(
            f"{name}: the weights loaded now have sha256 {backbone.spec.sha256}, but {expected_sha256} was recorded. "
            "Install the original weights, or retrain on these."
        )
    return backbone


@dataclass(frozen=True)
class BackboneInfo:
    """One row of :func:`list_backbones`."""

    name: str
    source: str
    offline: bool
    params: int | None
    feature_dim: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def catalog() -> list[str]:
    """All names the ``tv:`` and ``timm:`` sources know, and the packaged ``st:``/``hf:`` text encoders.

    (``hf:``, ``st:`` and ``file:`` are otherwise open-ended.)
    """
    from headstart.backbones import text_adapter, timm_adapter, torchvision_adapter

    return torchvision_adapter.list_names() + timm_adapter.list_names() + text_adapter.list_names()


def list_backbones(pattern: str | None = None, offline_only: bool | None = None) -> list[BackboneInfo]:
    """List backbones whose names match an fnmatch pattern.

    Args:
        pattern: For example ``"tv:*"`` or ``"*efficientnet_lite*"``. None lists the backbones
            whose weights are available offline right now.
        offline_only: Keep only rows whose weights are available offline; defaults to True when
            no pattern is given.

    Returns:
        Rows with name, source, offline availability, parameter count and feature dimension.
        Parameter count and feature dimension come from building the model on the meta device.
    """
    from headstart.backbones.availability import describe, is_offline

    if offline_only is None:
        offline_only = pattern is None
    names = catalog()
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    rows = []
    for name in names:
        offline = is_offline(name)
        if offline_only and not offline:
            continue
        params, dim = describe(name)
        rows.append(BackboneInfo(name=name, source=name.split(":", 1)[0], offline=offline, params=params, feature_dim=dim))
    return rows


def close_matches(name: str) -> str:
    """A 'Did you mean' suffix over the catalog, for error messages."""
    from headstart.errors import did_you_mean

    try:
        return did_you_mean(name, catalog())
    except HeadstartError:
        return ""
