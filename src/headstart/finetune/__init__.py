"""Fine-tuning: continue training part of a pretrained backbone with a new head (step 4 of transfer learning).

* :class:`FinetunePolicy` says what trains when, at which learning rate, and how BatchNorm behaves;
  ``policy.explain(model)`` prints the plan; YAML files load into it.
* :func:`strategy_policy` gives the policy of a named strategy (``lp-ft``, ``linear-then-full``,
  ``last-stage``, ``gradual``, ``full``).
* :func:`finetune` runs the loop (Accelerate; one or many processes) and returns a
  :class:`FinetuneResult` whose bundle ``headstart predict`` uses unchanged.
"""

from headstart.finetune.checkpoint import CheckpointError
from headstart.finetune.guard import FrozenGuard, FrozenWeightsChangedError
from headstart.finetune.loop import FinetuneResult, OutOfMemoryError, TrainingDivergedError, finetune, suggest_batch_size
from headstart.models.classifier import FinetuneModel
from headstart.finetune.policy import STRATEGIES, FinetunePolicy, PolicyError, strategy_policy

__all__ = [
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
    "strategy_policy",
    "suggest_batch_size",
]
