"""Fine-tuning: continue training part of a pretrained backbone with a new head (step 4 of transfer learning).

Classification is an adapter over :mod:`headstart.engine` (the one training loop):

* :class:`FinetunePolicy` says what trains when, at which learning rate, and how BatchNorm behaves;
  ``policy.explain(model)`` prints the plan; YAML files load into it.
* :func:`strategy_policy` gives the policy of a named strategy (``lp-ft``, ``linear-then-full``,
  ``last-stage``, ``gradual``, ``full``, ``lora``); :func:`resolve_policy` decides a run's policy.
* :func:`finetune` runs the loop (Accelerate; one or many processes) and returns a
  :class:`FinetuneResult` whose bundle ``headstart predict`` uses unchanged.
"""

from headstart.engine import (
    DEFAULT_LR,
    STRATEGIES,
    CheckpointError,
    FinetunePolicy,
    FrozenGuard,
    FrozenWeightsChangedError,
    OutOfMemoryError,
    PolicyError,
    TrainingDivergedError,
    resolve_policy,
    strategy_policy,
    suggest_batch_size,
)
from headstart.finetune.train import FinetuneResult, finetune
from headstart.models.classifier import FinetuneModel

__all__ = [
    "DEFAULT_LR",
    "STRATEGIES",
    "CheckpointError",
    "FinetuneModel",
    "FinetunePolicy",
    "FinetuneResult",
    "FrozenGuard",
    "FrozenWeightsChangedError",
    "OutOfMemoryError",
    "PolicyError",
    "TrainingDivergedError",
    "finetune",
    "resolve_policy",
    "strategy_policy",
    "suggest_batch_size",
]
