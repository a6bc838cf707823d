"""The fine-tuning policy: what trains when, at which learning rate, and how BatchNorm behaves.

:class:`FinetunePolicy` is a plain dataclass with visible defaults. ``policy.compile(model, lr)``
turns it into optimizer parameter groups, the trainable set of each unfreeze phase, and a BatchNorm
mode per layer; ``policy.explain(model)`` prints that plan as a table. A YAML file with the same
field names loads into the same dataclass (:meth:`FinetunePolicy.load`).

Patterns select parameters by fnmatch over parameter names (``layer4.*``) or module names
(``layer4``, ``*.bn1``), by a group of ``backbone.spec.param_groups`` (``stem``, ``features.18``,
``neck``), or by a shortcut:

* ``*`` or ``all``: every parameter; ``backbone``: every backbone parameter; ``head``: the new head;
* ``last-stage``: the last stage of ``spec.param_groups`` and everything after it (the neck);
* ``last-n:K``: the last K stages and everything after them.

A pattern that selects nothing is an error that lists similar names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.engine.policy.compiled import CompiledPolicy
from headstart.engine.policy.names import HEAD_INITS, PolicyError, did_you_mean
from headstart.models.classifier import BN_MODES, FinetuneModel


@dataclass
class FinetunePolicy:
    """Which parameters train in which epoch, their learning rates, and the BatchNorm handling.

    Args:
        trainable: Patterns trainable from epoch 0 (see the module docstring for the syntax).
        frozen: Patterns kept frozen whatever ``trainable`` and ``unfreeze`` say.
        unfreeze: Gradual unfreezing: ``{epoch: patterns}`` made trainable from that epoch (0-based) on.
        lr_mult: Learning-rate multipliers by pattern, group name or shortcut; where several
            match a parameter, the last one listed wins. The base learning rate is the head's.
        layer_decay: Layer-wise learning-rate decay: the layer group ``k`` steps below the head
            trains at ``lr * layer_decay ** k``. Groups come from the backbone's timm
            ``group_matcher`` where it has one, else from ``spec.param_groups``, else from module order.
            None turns it off.
        weight_decay: AdamW (or SGD) weight decay; biases and 1-D parameters (norm scales) get none.
        bn: BatchNorm mode of layers whose parameters train: ``train`` (batch statistics, running
            statistics updated), ``stats-frozen`` (affine parameters train, running statistics fixed,
            eval mode) or ``frozen`` (eval mode, statistics and affine parameters fixed).
        frozen_bn: BatchNorm mode of layers in frozen parts: ``frozen`` (the default), or ``train`` to
            let their running statistics follow the new data. ``stats-frozen`` means ``frozen`` there.
        head_init: ``probe`` (LP-FT: a LinearProbe fitted on the store's features, standardisation
            folded in), ``random`` (PyTorch's default initialisation, seeded) or ``zeros``.
        strategy: The strategy this policy came from (for the record), or ``custom``.
        lora_rank: Rank of LoRA adapters added beside the ``lora_targets`` linear layers before
            training (``peft``); 0 adds none. Their parameters match ``*.lora_*``.
        lora_alpha: LoRA scaling numerator: adapter updates are scaled by ``lora_alpha / lora_rank``.
        lora_targets: Module name suffixes of the linear layers that get adapters.
        lora_dropout: Dropout on the adapters' input.
    """

    trainable: tuple[str, ...] = ("*",)
    frozen: tuple[str, ...] = ()
    unfreeze: dict[int, tuple[str, ...]] = field(default_factory=dict)
    lr_mult: dict[str, float] = field(default_factory=dict)
    layer_decay: float | None = None
    weight_decay: float = 0.05
    bn: str = "train"
    frozen_bn: str = "frozen"
    head_init: str = "random"
    strategy: str = "custom"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("query", "value")
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.trainable = _pattern_tuple(self.trainable, "trainable")
        self.frozen = _pattern_tuple(self.frozen, "frozen")
        if not isinstance(self.unfreeze, dict):
            raise PolicyError(f"policy.unfreeze must map epochs to patterns, like {{2: ['layer4.*']}}; got {self.unfreeze!r}.")
        schedule = {}
        for epoch, patterns in self.unfreeze.items():
            try:
                key = int(epoch)
            except (TypeError, ValueError):
                raise PolicyError(f"policy.unfreeze keys must be epoch numbers (0-based), got {epoch!r}.") from None
            if key < 0:
                raise PolicyError(f"policy.unfreeze epoch {key} is negative; epochs count from 0.")
            schedule[key] = _pattern_tuple(patterns, f"unfreeze[{key}]")
        self.unfreeze = dict(sorted(schedule.items()))
        if not isinstance(self.lr_mult, dict):
            raise PolicyError(f"policy.lr_mult must map patterns to multipliers, like {{'stem': 0.1}}; got {self.lr_mult!r}.")
        for pattern, mult in self.lr_mult.items():
            if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult < 0:
                raise PolicyError(f"policy.lr_mult[{pattern!r}] must be a number >= 0, got {mult!r}.")
        self.lr_mult = {str(k): float(v) for k, v in self.lr_mult.items()}
        if self.layer_decay is not None and not (isinstance(self.layer_decay, (int, float)) and 0 < self.layer_decay <= 1):
            raise PolicyError(f"policy.layer_decay must be in (0, 1] or None, got {self.layer_decay!r}; 0.75 is a common choice.")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise PolicyError(f"policy.weight_decay must be a number >= 0, got {self.weight_decay!r}.")
        for name, value in (("bn", self.bn), ("frozen_bn", self.frozen_bn)):
            if value not in BN_MODES:
                raise PolicyError(f"policy.{name} must be one of {', '.join(BN_MODES)}, got {value!r}.")
        if self.head_init not in HEAD_INITS:
            raise PolicyError(f"policy.head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}.")
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            raise PolicyError(f"policy.lora_rank must be a whole number >= 0 (0: no LoRA), got {self.lora_rank!r}; 8 is a common choice.")
        if not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise PolicyError(f"policy.lora_alpha must be a number > 0, got {self.lora_alpha!r}; 16 is a common choice.")
        self.lora_targets = _pattern_tuple(self.lora_targets, "lora_targets")
        if self.lora_rank and not self.lora_targets:
            raise PolicyError("policy.lora_targets is empty; name the linear layers to adapt, like ['query', 'value'].")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise PolicyError(f"policy.lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")

    # ----- schedule ---------------------------------------------------------------------------

    def phase_at(self, epoch: int) -> int:
        """The unfreeze phase in ``epoch``: how many schedule entries have taken effect."""
        return sum(1 for key in self.unfreeze if key <= epoch)

    def patterns_at(self, epoch: int) -> tuple[str, ...]:
        """The trainable patterns in ``epoch``: ``trainable`` plus the schedule entries so far."""
        patterns = list(self.trainable)
        for key, extra in self.unfreeze.items():
            if key <= epoch:
                patterns += extra
        return tuple(patterns)

    # ----- saving and loading -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, not tuples) that :meth:`from_dict` turns back into an equal policy."""
        return {
            "trainable": list(self.trainable),
            "frozen": list(self.frozen),
            "unfreeze": {int(k): list(v) for k, v in self.unfreeze.items()},
            "lr_mult": dict(self.lr_mult),
            "layer_decay": self.layer_decay,
            "weight_decay": self.weight_decay,
            "bn": self.bn,
            "frozen_bn": self.frozen_bn,
            "head_init": self.head_init,
            "strategy": self.strategy,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_targets": list(self.lora_targets),
            "lora_dropout": self.lora_dropout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> FinetunePolicy:
        """Build a policy from a dict with the dataclass's field names; unknown keys are an error."""
        if not isinstance(data, dict):
            raise PolicyError(f"{source} must be a mapping of policy fields, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            hints = "".join(did_you_mean(str(u), known) for u in unknown)
            raise PolicyError(f"{source} has unknown fields {unknown}.{hints} The fields are: {', '.join(known)}.")
        return cls(**data)

    def to_yaml(self) -> str:
        """The policy as YAML, loadable with :meth:`load`."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> FinetunePolicy:
        """Load a policy from a YAML (or JSON) file whose keys are this dataclass's fields.

        Raises:
            PolicyError: The file is missing, is not a mapping, or has unknown or invalid fields.
        """
        import yaml

        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"Policy file {path} does not exist. Write one with FinetunePolicy(...).to_yaml().")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise PolicyError(f"Policy file {where} is not valid YAML ({problem}). Fix it, or write one with FinetunePolicy(...).to_yaml().") from None
        return cls.from_dict(data, source=f"Policy file {path}")

    # ----- compiling --------------------------------------------------------------------------

    def compile(self, model: FinetuneModel, lr: float) -> CompiledPolicy:
        """Resolve every pattern against ``model`` and plan groups, learning rates and BN modes.

        A policy with ``lora_rank > 0`` first adds its LoRA adapters to the backbone (once).

        Raises:
            PolicyError: A pattern matches nothing (the message lists similar names), or an epoch
                would train nothing.
        """
        return CompiledPolicy(self, model, lr)

    def explain(self, model: FinetuneModel, lr: float = 1e-3, epoch: int = 0, print_table: bool = True) -> list[dict[str, Any]]:
        """Print (and return) one row per layer group: patterns, trainable parameters, lr, weight decay, BN mode.

        Args:
            model: The model to fine-tune.
            lr: The base (head) learning rate.
            epoch: Show the trainable set of this epoch's unfreeze phase.
            print_table: Print a rich table to stdout.

        Returns:
            The rows as dicts: ``group``, ``patterns``, ``params``, ``trainable``, ``from_epoch``,
            ``lr``, ``weight_decay``, ``bn``.
        """
        compiled = self.compile(model, lr)
        rows = compiled.rows(epoch)
        if print_table:
            from rich.table import Table

            from headstart.console import console

            table = Table(
                title=f"fine-tuning policy ({self.strategy}), epoch {epoch}: phase {self.phase_at(epoch)}",
                caption="wd: weights / biases and 1-D parameters; lr: at the peak of the schedule",
            )
            for column in ("group", "patterns", "params", "trainable", "from epoch", "lr", "wd", "BN"):
                right = column in ("params", "trainable", "lr", "from epoch")
                table.add_column(column, justify="right" if right else "left", overflow="fold")
            for row in rows:
                table.add_row(
                    row["group"],
                    ", ".join(row["patterns"]),
                    f"{row['params']:,}",
                    f"{row['trainable']:,}",
                    "-" if row["from_epoch"] is None else str(row["from_epoch"]),
                    "-" if row["lr"] is None else f"{row['lr']:.3g}",
                    row["weight_decay"],
                    row["bn"],
                )
            console.print(table)
        return rows



def _pattern_tuple(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"policy.{name} must be a pattern or a list of patterns, got {value!r}.")
    return tuple(value)

