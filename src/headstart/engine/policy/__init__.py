"""The fine-tuning policy: what trains when, at which learning rate, and how BatchNorm behaves.

* :mod:`.names`: :class:`PolicyError`, the strategy names and pattern shortcuts;
* :mod:`.policy`: :class:`FinetunePolicy` (the dataclass, YAML, ``explain``);
* :mod:`.compiled`: :class:`CompiledPolicy` (a policy resolved against one model);
* :mod:`.strategies`: :func:`strategy_policy`, :data:`DEFAULT_LR` and :func:`resolve_policy`.
"""

from headstart.engine.policy.compiled import CompiledPolicy, LayerGroup
from headstart.engine.policy.names import HEAD_INITS, SHORTCUTS, STRATEGIES, PolicyError
from headstart.engine.policy.policy import FinetunePolicy
from headstart.engine.policy.strategies import DEFAULT_LR, resolve_policy, strategy_policy

__all__ = [
    "DEFAULT_LR",
    "HEAD_INITS",
    "SHORTCUTS",
    "STRATEGIES",
    "CompiledPolicy",
    "FinetunePolicy",
    "LayerGroup",
    "PolicyError",
    "resolve_policy",
    "strategy_policy",
]
