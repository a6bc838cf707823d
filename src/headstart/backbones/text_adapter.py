"""Text encoders: ``st:`` (sentence-transformers) backbones, and ``hf:`` models that hold a tokenizer.

``st:<repo or folder>`` reproduces the sentence-transformers pipeline from the folder's own files:
``modules.json``, ``1_Pooling/config.json`` (mean, CLS, max or mean-sqrt-len pooling over the
attention mask) and ``sentence_bert_config.json`` (max length, lower-casing), then L2 normalisation
when ``modules.json`` lists a ``Normalize`` module. ``hf:<repo or folder>`` is the bare encoder
(``AutoModel`` + ``AutoTokenizer``): the mean of the last hidden state over the attention mask, not
normalised. :mod:`headstart.backbones.hf_adapter` sends a folder here when it holds a tokenizer and
no image processor; both find their folders with :mod:`headstart.backbones.folders`.

Both record in ``spec.extra`` the pooling, the normalisation, the max length and the tokenizer's
sha256; the layers are the hidden states by index (``hidden.0`` is the embedding output,
``hidden.<L>`` the last encoder layer), pooled over the attention mask at extraction.

Extraction tokenises every text once, sorts by token count and pads each batch to its own longest
text (see :meth:`TextEncoder.make_batches`). Texts longer than the max length are truncated, and a
:class:`TextTruncatedWarning` says how many. Code shipped inside a model folder never runs unless
``trust_remote_code=True`` is passed (``--trust-remote-code`` on the command line).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.backbones.module import Backbone, stage_param_groups
from headstart.backbones.folders import TOKENIZER_FILES, has_tokenizer, resolve_folder
from headstart.backbones.packaged import PACKAGED, check_expected_sha256, sha256_file
from headstart.backbones.spec import BackboneSpec
from headstart.errors import UnknownBackboneError, WeightsMismatchError, WeightsUnavailableError, require

SUPPORTS_REMOTE_CODE = True
POOLINGS = ("cls", "max", "mean", "mean_sqrt_len")  # sentence-transformers' concatenation order
TEXT_POOLS = ("avg", "max", "avgmax", "token")
_ST_MODULES = {
    "sentence_transformers.models.Transformer": "transformer",
    "sentence_transformers.models.Pooling": "pooling",
    "sentence_transformers.models.Normalize": "normalize",
}
_IGNORED_MISSING = ("pooler.",)  # checkpoints saved by sentence-transformers may lack the unused pooler


class TextTruncatedWarning(UserWarning):
    """Some texts were longer than the encoder's max length and were cut."""


# --------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """A transformer encoder with its tokenizer: ``forward(inputs)`` gives pooled sentence features.

    Args:
        model: A transformers encoder (``AutoModel``).
        tokenizer: Its tokenizer.
        pooling: Pooling modes over the attention mask, concatenated in this order.
        normalize: L2-normalise the pooled features.
        max_length: Longer texts are truncated to this many tokens (special tokens included).
        lowercase: Lower-case texts before tokenising (sentence-transformers' ``do_lower_case``).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: Sequence[str], normalize: bool, max_length: int, lowercase: bool = False) -> None:
        super().__init__()
        self.hf = model
        self.tokenizer = tokenizer
        self.pooling = tuple(pooling)
        self.normalize = bool(normalize)
        self.max_length = int(max_length)
        self.lowercase = bool(lowercase)
        self.input_names = tuple(n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids"))
        self.last_truncated = 0

    # ----- tokenising and batching ------------------------------------------------------------

    def tokenize(self, texts: Sequence[Any]) -> tuple[list[dict[str, list[int]]], list[str], int, int]:
        """Token ids of every text, truncated to ``max_length``.

        Returns:
            Per text a dict of id lists (``input_ids``, and ``token_type_ids`` where the model
            takes them); per text a failure reason ("" when fine: empty texts and non-strings
            fail); the number of texts that were truncated; the longest length before truncation.
        """
        reasons = []
        clean = []
        for text in texts:
            if not isinstance(text, str):
                reasons.append(f"not a text ({type(text).__name__})")
                clean.append("")
                continue
            text = text.strip()
            if not text:
                reasons.append("empty text")
            else:
                reasons.append("")
            clean.append(text.lower() if self.lowercase else text)
        keys = [n for n in self.input_names if n != "attention_mask"]
        full = _quiet_tokenize(self.tokenizer, clean, truncation=False, keys=keys)
        for ids in full:
            if not ids["input_ids"]:  # a tokenizer without special tokens gives nothing for ""
                for key in ids:
                    ids[key] = [self.tokenizer.pad_token_id if key == "input_ids" else 0]
        lengths = [len(ids["input_ids"]) for ids in full]
        long_rows = [i for i, n in enumerate(lengths) if n > self.max_length]
        if long_rows:
            cut = _quiet_tokenize(self.tokenizer, [clean[i] for i in long_rows], truncation=True, max_length=self.max_length, keys=keys)
            for i, ids in zip(long_rows, cut):
                full[i] = ids
        return full, reasons, len(long_rows), max(lengths, default=0)

    def make_batches(self, dataset: Any, rows: np.ndarray, batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor], np.ndarray, list[str]]]:
        """Yield ``(inputs, rows, reasons)`` for :func:`headstart.features.extract`.

        Texts are tokenised once, sorted longest first, and each batch is padded to its own longest
        text only. Rows whose text is empty carry a reason and get no features.
        """
        rows = np.asarray(rows, dtype=np.int64)
        items = dataset.items
        encoded, reasons, truncated, longest = self.tokenize([items[int(r)] for r in rows])
        self.last_truncated = truncated
        if truncated:
            warnings.warn(
                f"{truncated} of {len(rows)} texts are longer than max_length={self.max_length} tokens "
                f"(the longest has {longest}) and were truncated; their features see only the first {self.max_length} tokens.",
                TextTruncatedWarning,
                stacklevel=2,
            )
        order = sorted(range(len(rows)), key=lambda i: -len(encoded[i]["input_ids"]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield self.pad([encoded[i] for i in chunk]), rows[chunk], [reasons[i] for i in chunk]

    def pad(self, encoded: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pad token id lists to the longest one, on the tokenizer's padding side."""
        width = max(len(e["input_ids"]) for e in encoded)
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0)}
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        batch = {}
        for name in self.input_names:
            if name == "attention_mask":
                continue
            values = np.full((len(encoded), width), pad_values.get(name, 0), dtype=np.int64)
            for row, e in enumerate(encoded):
                ids = e[name]
                if left:
                    values[row, width - len(ids) :] = ids
                else:
                    values[row, : len(ids)] = ids
            batch[name] = torch.from_numpy(values)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            n = len(e["input_ids"])
            if left:
                mask[row, width - n :] = 1
            else:
                mask[row, :n] = 1
        batch["attention_mask"] = torch.from_numpy(mask)
        return batch

    # ----- forward ----------------------------------------------------------------------------

    def _inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(inputs, dict):
            raise TypeError(
                f"A text encoder takes a dict of token tensors (input_ids, attention_mask), not {type(inputs).__name__}. "
                "Tokenise with backbone.model.make_batches, or use headstart.backbones.text_adapter.encode_texts."
            )
        return {k: v for k, v in inputs.items() if k in self.input_names}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.hf(**self._inputs(inputs)).last_hidden_state
        return self.pool(hidden, inputs["attention_mask"])

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The spec's pooling of the last hidden state, concatenated, then normalised if asked."""
        parts = [pool_tokens(hidden, mask, mode) for mode in self.pooling]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=1)
        return out

    def hidden_state(self, inputs: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        """Hidden state ``index`` (0 = embeddings), shape (N, T, C)."""
        return self.hf(**self._inputs(inputs), output_hidden_states=True).hidden_states[index]


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states (N, T, C) over the attention mask (N, T), in float32.

    Args:
        hidden: Token states.
        mask: 1 for real tokens, 0 for padding.
        mode: ``mean`` (``avg``), ``max``, ``cls`` (``token``: the first position),
            ``mean_sqrt_len`` or ``avgmax``.
    """
    hidden = hidden.float()
    if mode in ("cls", "token"):
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode in ("mean", "avg", "mean_sqrt_len", "avgmax"):
        summed = (hidden * weights).sum(dim=1)
        counts = weights.sum(dim=1).clamp(min=1e-9)
        mean = summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)
        if mode != "avgmax":
            return mean
    masked_max = hidden.masked_fill(weights == 0, -1e9).amax(dim=1)
    if mode == "max":
        return masked_max
    if mode == "avgmax":
        return torch.cat([mean, masked_max], dim=1)
    raise ValueError(f"Unknown text pooling {mode!r}; use one of {', '.join(POOLINGS + TEXT_POOLS)}.")


class TextBackbone(Backbone):
    """A :class:`Backbone` over a :class:`TextEncoder`: layers pool over the attention mask, never over padding."""

    def features(self, x: dict[str, torch.Tensor], layer: str | None = None, pool: str = "avg") -> torch.Tensor:
        """Features at ``layer``: the spec's pooling for ``pooled``, else ``pool`` over real tokens.

        Args:
            x: Token tensors from ``model.make_batches``.
            layer: ``pooled`` (or None), or ``hidden.<i>``.
            pool: ``avg`` (mean over the attention mask), ``max``, ``avgmax`` or ``token`` (the
                first, CLS, position). ``none`` is refused: texts have different lengths.
        """
        layer = self.check_layer(layer)
        if layer == self.spec.default_layer:
            return self.forward(x)
        if pool not in TEXT_POOLS:
            raise ValueError(
                f"pool={pool!r} cannot pool text layers: texts have different lengths. Use one of {', '.join(TEXT_POOLS)} "
                "(avg and max skip padding; token takes the first, CLS, position)."
            )
        index = int(layer.rsplit(".", 1)[-1])
        return pool_tokens(self.model.hidden_state(x, index), x["attention_mask"], pool)


def encode_texts(
    backbone: Backbone, texts: Sequence[Any], layer: str | None = None, pool: str = "avg", batch_size: int = 64, device: str | torch.device | None = None,
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Features of texts without the store (for prediction): ``(X, ok positions, (position, reason) failures)``."""
    from types import SimpleNamespace

    model = backbone.model
    if not hasattr(model, "make_batches"):
        raise TypeError(f"{backbone.spec.name} is a {backbone.spec.modality} backbone; encode_texts needs a text encoder.")
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    width = backbone.spec.feature_dim
    X = None
    valid = np.zeros(len(texts), dtype=bool)
    failed: list[tuple[int, str]] = []
    rows = np.arange(len(texts))
    with torch.inference_mode():
        for inputs, batch_rows, reasons in model.make_batches(SimpleNamespace(items=list(texts)), rows, batch_size):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = backbone.features(inputs, layer, pool).float().cpu().numpy()
            if X is None:
                X = np.zeros((len(texts), out.shape[1]), np.float32)
            for position, row in enumerate(batch_rows):
                if reasons[position]:
                    failed.append((int(row), reasons[position]))
                else:
                    X[row] = out[position]
                    valid[row] = True
    if X is None:
        X = np.zeros((0, width), np.float32)
    ok = [int(i) for i in np.flatnonzero(valid)]
    return X[ok], ok, sorted(failed)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _tokenizer_sha(folder: Path) -> str:
    digest = hashlib.sha256()
    for filename in TOKENIZER_FILES:
        if (folder / filename).is_file():
            digest.update(f"{filename}\0{sha256_file(folder / filename)}\n".encode())
    return digest.hexdigest()


def _weights_sha(folder: Path, expected: str | None = None, name: str = "") -> str:
    """The sha256 of the folder's weight file (checked against ``expected`` when given), before anything reads it."""
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if (folder / filename).is_file():
            return check_expected_sha256(folder / filename, expected, name)
    raise WeightsUnavailableError(
        f"{folder} holds no model.safetensors or pytorch_model.bin. Download the weights into it, or pass another folder."
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsUnavailableError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}). Restore the file from the model's repo.") from None


def _st_pipeline(folder: Path, name: str) -> tuple[Path, tuple[str, ...], bool, int | None, bool]:
    """Read a sentence-transformers folder: (encoder folder, pooling, normalize, max length, lowercase)."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        # sentence-transformers builds mean pooling over a bare transformers folder; so does headstart.
        return folder, ("mean",), False, None, False
    encoder = folder
    pooling: tuple[str, ...] = ("mean",)
    normalize = False
    for module in _read_json(modules_path):
        kind = _ST_MODULES.get(module.get("type", ""))
        path = folder / module.get("path", "")
        if kind is None:
            raise UnknownBackboneError(
                f"{name}: modules.json lists {module.get('type')!r}, a sentence-transformers module that headstart does not reproduce "
                "(it supports Transformer, Pooling and Normalize). Use the bare encoder with hf: instead of st:."
            )
        if kind == "transformer":
            encoder = path
        elif kind == "pooling":
            pooling = _pooling_modes(_read_json(path / "config.json") if (path / "config.json").is_file() else {}, name)
        else:
            normalize = True
    config_path = encoder / "sentence_bert_config.json"
    if not config_path.is_file():
        config_path = folder / "sentence_bert_config.json"
    st_config = _read_json(config_path) if config_path.is_file() else {}
    return encoder, pooling, normalize, st_config.get("max_seq_length"), bool(st_config.get("do_lower_case", False))


def _pooling_modes(config: dict, name: str) -> tuple[str, ...]:
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        wanted = {mode.replace("_tokens", "").replace("_token", "")}
    else:
        flags = {
            "cls": config.get("pooling_mode_cls_token", False),
            "max": config.get("pooling_mode_max_tokens", False),
            "mean": config.get("pooling_mode_mean_tokens", not config),
            "mean_sqrt_len": config.get("pooling_mode_mean_sqrt_len_tokens", False),
        }
        wanted = {k for k, v in flags.items() if v}
        for other in ("weightedmean", "lasttoken"):
            if config.get(f"pooling_mode_{other}_tokens") or config.get(f"pooling_mode_{other}"):
                wanted.add(other)
    unknown = sorted(wanted - set(POOLINGS))
    if unknown or not wanted:
        raise UnknownBackboneError(
            f"{name}: its pooling config asks for {sorted(wanted) or 'no pooling'}; headstart reproduces {', '.join(POOLINGS)}. "
            "Use hf: for the bare encoder and pick a layer and pool."
        )
    return tuple(mode for mode in POOLINGS if mode in wanted)


def _check_remote_code(folder: Path, name: str, trust: bool) -> None:
    config = _read_json(folder / "config.json")
    if "auto_map" in config and not trust:
        raise WeightsUnavailableError(
            f"{name} needs code shipped inside its folder (config.json has auto_map: {sorted(config['auto_map'])}), and headstart "
            "runs no code from model folders by default. Read that code, then pass --trust-remote-code "
            "(Python: load_backbone(name, trust_remote_code=True))."
        )


def _load_tokenizer(transformers: Any, folder: Path, name: str, trust: bool) -> Any:
    if not has_tokenizer(folder):
        raise WeightsUnavailableError(
            f"{name}: {folder} holds no tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ...). A text encoder needs the tokenizer it was "
            "trained with; copy the tokenizer files from the model's repo into the folder."
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
    except Exception as exc:  # tokenizers raise many types for broken files
        raise WeightsUnavailableError(f"{name}: the tokenizer in {folder} does not load ({type(exc).__name__}: {exc}). Restore its files from the model's repo.") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise WeightsUnavailableError(f"{name}: its tokenizer has no padding token and no end token to pad with; set pad_token in {folder}/tokenizer_config.json.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_match(tokenizer: Any, config: Any, folder: Path, name: str) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding table."""
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    n_tokens = len(tokenizer)
    if vocab and n_tokens > vocab:
        raise WeightsMismatchError(
            f"{name}: the tokenizer in {folder} has {n_tokens} tokens, but the model's embedding table (config vocab_size) has {vocab} rows, "
            "so it would read ids the model does not have: this tokenizer does not belong to this model. "
            "Put the model's own tokenizer files in the folder."
        )


def load_folder(
    folder: Path, name: str, source: str, pretrained: bool = True, trust_remote_code: bool = False, expected_sha256: str | None = None,
) -> Backbone:
    """Load a text encoder from a local folder.

    Args:
        folder: The folder (for ``st:``, the sentence-transformers folder; the encoder may sit in a sub-folder).
        name: The prefixed name to record (without ``@random``).
        source: ``st`` (sentence-transformers pooling and normalisation) or ``hf`` (bare encoder, mean pooling).
        pretrained: False gives the same architecture with a seeded random initialisation.
        trust_remote_code: Allow code shipped in the folder to run.
        expected_sha256: The sha256 the weight file must have (a bundle's record); checked before it is read.

    Raises:
        WeightsUnavailableError: Config, weights or tokenizer are missing, or the folder needs its own code.
        WeightsMismatchError: The tokenizer does not fit the model, or the weights do not fit the config.
    """
    transformers = require("transformers", "text")
    trust = bool(trust_remote_code)
    if source == "st":
        encoder, pooling, normalize, max_length, lowercase = _st_pipeline(folder, name)
    else:
        encoder, pooling, normalize, max_length, lowercase = folder, ("mean",), False, None, False
    if not (encoder / "config.json").is_file():
        raise WeightsUnavailableError(f"{name}: {encoder} holds no config.json, so it is not a Hugging Face model folder. Pass the folder that holds config.json.")
    _check_remote_code(encoder, name, trust)
    try:
        config = transformers.AutoConfig.from_pretrained(encoder, trust_remote_code=trust)
    except ValueError as exc:
        raise UnknownBackboneError(f"{name}: transformers cannot read {encoder}/config.json ({exc}). Upgrade transformers, or check the model type.") from None
    tokenizer = _load_tokenizer(transformers, encoder, name, trust)
    _check_match(tokenizer, config, encoder, name)
    if pretrained:
        sha256 = _weights_sha(encoder, expected_sha256, name)
        model, info = transformers.AutoModel.from_pretrained(encoder, trust_remote_code=trust, output_loading_info=True)
        missing = [k for k in info.get("missing_keys", []) if not any(k.startswith(p) or f".{p}" in k for p in _IGNORED_MISSING)]
        mismatched = info.get("mismatched_keys", [])
        if missing or mismatched:
            example = (list(missing) + [str(m) for m in mismatched])[:3]
            raise WeightsMismatchError(
                f"{name}: the weights in {encoder} do not fit its config.json: {len(missing)} missing and {len(mismatched)} mis-shaped "
                f"tensors (e.g. {', '.join(example)}). Put the config that belongs to these weights in the folder."
            )
    else:
        sha256 = "random-init:seed0"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.AutoModel.from_config(config, trust_remote_code=trust)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # pooling is ours: the model's own pooler is never used, and must not train
    model.eval()
    positions = int(getattr(config, "max_position_embeddings", 512) or 512)
    tokenizer_max = int(getattr(tokenizer, "model_max_length", positions) or positions)
    limit = min(positions, tokenizer_max) if tokenizer_max < 1_000_000 else positions
    max_length = int(min(max_length or limit, limit))
    encoder_module = TextEncoder(model, tokenizer, pooling, normalize, max_length, lowercase)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0))
    num_layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layers", 0))
    blocks = _block_names(encoder_module, num_layers)
    spec = BackboneSpec(
        name=name + ("" if pretrained else "@random"),
        source=source,
        arch=type(model).__name__,
        weights_id=(folder.name if pretrained else "random"),
        sha256=sha256,
        modality="text",
        input_size=0,
        mean=(),
        std=(),
        interpolation="none",
        crop_pct=1.0,
        feature_dim=hidden * len(pooling),
        layers=tuple(f"hidden.{i}" for i in range(num_layers + 1)),
        param_groups=stage_param_groups(encoder_module, blocks, None),
        extra={
            "pooling": list(pooling),
            "normalize": normalize,
            "max_length": max_length,
            "lowercase": lowercase,
            "tokenizer_sha256": _tokenizer_sha(encoder),
            "hidden_size": hidden,
            "num_layers": num_layers,
            "trust_remote_code": trust,
        },
    )
    return TextBackbone(encoder_module, spec, None)


def _block_names(module: nn.Module, num_layers: int) -> list[str]:
    """Names of the transformer blocks: the first ModuleList with one entry per hidden layer."""
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and len(child) == num_layers and num_layers > 0:
            return [f"{name}.{i}" for i in range(num_layers)]
    return []


def load(name: str, pretrained: bool = True, trust_remote_code: bool = False, *, expected_sha256: str | None = None) -> Backbone:
    """Load an ``st:`` backbone: packaged, a local folder, or the Hugging Face cache."""
    return load_folder(resolve_folder(name), name, "st", pretrained=pretrained, trust_remote_code=trust_remote_code, expected_sha256=expected_sha256)


def list_names() -> list[str]:
    """The packaged text encoders (``st:`` and ``hf:``)."""
    return sorted(key for key in PACKAGED if key.startswith(("st:", "hf:")))


def _quiet_tokenize(tokenizer: Any, texts: list[str], truncation: bool, keys: Sequence[str], max_length: int | None = None) -> list[dict[str, list[int]]]:
    """Tokenise without transformers' "sequence is longer than" log line (headstart counts truncation itself)."""
    from transformers.utils import logging as hf_logging

    if not texts:
        return []
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        enc = tokenizer(texts, truncation=truncation, max_length=max_length, return_attention_mask=False)
    finally:
        hf_logging.set_verbosity(level)
    return [{key: list(enc[key][i]) for key in keys if key in enc} for i in range(len(texts))]
