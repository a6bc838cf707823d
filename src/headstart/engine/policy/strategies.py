"""Named strategies, their default learning rates, and :func:`resolve_policy`: the one place a run's policy is decided.

``finetune``, ``detect train``, ``segment train`` and ``finetune --explain`` all call
:func:`resolve_policy`, so a strategy, a policy file, ``trainable_stages`` and the LoRA settings
mean the same everywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from headstart.engine.policy.names import NON_STAGE_GROUPS, STRATEGIES, PolicyError, did_you_mean
from headstart.engine.policy.policy import FinetunePolicy
from headstart.models.classifier import HEAD

# Base (head) learning rate of each strategy when --lr is not given (classification).
DEFAULT_LR = {"lp-ft": 1e-4, "linear-then-full": 1e-3, "last-stage": 1e-3, "gradual": 1e-3, "full": 1e-3, "lora": 3e-3, "custom": 1e-3}


def strategy_policy(strategy: str, spec, epochs: int) -> FinetunePolicy:
    """The policy a named strategy stands for, on a backbone with ``spec``, over ``epochs`` epochs.

    * ``lp-ft``: the head starts as a LinearProbe fitted on the store's features, then everything
      trains; BatchNorm statistics stay those of pretraining (``stats-frozen``), so the probe's
      features do not shift under it (Kumar et al. 2022).
    * ``linear-then-full``: the head alone for the first third of the epochs, then everything.
    * ``last-stage``: the head and the last stage (plus any neck after it).
    * ``gradual``: the head first, then one more stage group per epoch from the top (ULMFiT),
      everything by the middle of the run.
    * ``full``: everything from the start, BatchNorm in train mode.
    * ``lora``: a fresh head and rank-8 LoRA adapters on the ``query`` and ``value`` layers train,
      and every pretrained weight stays frozen (Hu et al. 2021). Set ``lora_rank``, ``lora_alpha``
      and ``lora_targets`` on the policy. The head does not start as the linear probe: with a few
      hundred examples the probe already fits the training set (MiniLM on 500 VADER tweets:
      training accuracy 1.0, log-loss 0.07), so the adapters get almost no gradient and the test
      accuracy stays at the probe's (0.895 vs 0.952 with a fresh head, ``benchmarks/text.py``).

    Raises:
        PolicyError: Unknown strategy.
    """
    if strategy not in STRATEGIES:
        raise PolicyError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.{did_you_mean(strategy, STRATEGIES)}")
    if strategy == "lp-ft":
        return FinetunePolicy(trainable=("*",), head_init="probe", bn="stats-frozen", strategy=strategy)
    if strategy == "full":
        return FinetunePolicy(trainable=("*",), bn="train", strategy=strategy)
    if strategy == "lora":
        return FinetunePolicy(trainable=(HEAD, "*.lora_*"), head_init="random", bn="stats-frozen", lora_rank=8, strategy=strategy)
    if strategy == "last-stage":
        return FinetunePolicy(trainable=(HEAD, "last-stage"), bn="train", strategy=strategy)
    if strategy == "linear-then-full":
        switch = max(1, round(epochs / 3))
        return FinetunePolicy(trainable=(HEAD,), unfreeze={switch: ("*",)}, bn="train", strategy=strategy)
    stages = [name for name, _ in spec.param_groups if name not in NON_STAGE_GROUPS]
    steps = max(1, epochs // 2)
    schedule: dict[int, tuple[str, ...]] = {}
    for epoch in range(1, steps + 1):
        count = -(-epoch * len(stages) // steps) if stages else 0
        schedule[epoch] = ("*",) if epoch == steps or not stages else (f"last-n:{count}",)
    return FinetunePolicy(trainable=(HEAD,), unfreeze=schedule, bn="train", strategy=strategy)




def resolve_policy(
    spec,
    epochs: int,
    *,
    task: str = "classification",
    strategy: str | None = None,
    policy: FinetunePolicy | str | Path | None = None,
    trainable_stages: int | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    lora_targets: tuple[str, ...] | None = None,
) -> FinetunePolicy:
    """The policy of a run: from a strategy, a policy (object or YAML file) or, for dense tasks, ``trainable_stages``.

    Args:
        spec: The backbone's spec (its ``param_groups`` name the stages).
        epochs: The run's length (``linear-then-full`` and ``gradual`` schedule over it).
        task: ``classification`` (fine-tuning: the default is ``lp-ft``), or ``detection`` /
            ``segmentation``: with none of strategy, policy and trainable_stages everything trains,
            with BatchNorm ``stats-frozen`` for pretrained backbones and ``train`` for random ones;
            ``trainable_stages=K`` is torchvision's ``trainable_backbone_layers`` (the head plus the
            last K stages, 0 for the head alone).
        strategy: A name from :data:`STRATEGIES`.
        policy: A :class:`FinetunePolicy` or a YAML file of one.
        trainable_stages: Detection and segmentation only (see ``task``).
        lora_rank, lora_alpha, lora_targets: With ``strategy="lora"``: the adapters' settings,
            laid over the strategy's (None keeps the strategy's value).

    Raises:
        PolicyError: More than one of strategy, policy and trainable_stages; an unknown strategy; for
            detection and segmentation also LoRA, a probe-initialised head (``lp-ft``) or K < 0.
        TypeError: ``policy`` is neither a FinetunePolicy nor a path.
    """
    if task == "classification":
        if trainable_stages is not None:
            raise PolicyError("trainable_stages applies to detection and segmentation; fine-tuning takes a strategy or a policy.")
        resolved = _classification_policy(strategy, policy, spec, epochs)
    else:
        resolved = _dense_policy(strategy, policy, trainable_stages, spec, epochs)
    if strategy == "lora":
        overlay = {"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_targets": None if lora_targets is None else tuple(lora_targets)}
        overlay = {key: value for key, value in overlay.items() if value is not None}
        if overlay:
            resolved = dataclasses.replace(resolved, **overlay)
    if task != "classification":
        _check_dense(resolved)
    return resolved


def _classification_policy(strategy: str | None, policy: FinetunePolicy | str | Path | None, spec, epochs: int) -> FinetunePolicy:
    if policy is not None and strategy is not None:
        raise PolicyError(f"Give a strategy ({strategy!r}) or a policy, not both: a policy file states the whole plan.")
    if policy is None:
        return strategy_policy(strategy or "lp-ft", spec, epochs)
    if isinstance(policy, (str, Path)):
        return FinetunePolicy.load(policy)
    if not isinstance(policy, FinetunePolicy):
        raise TypeError(f"policy must be a FinetunePolicy or a YAML path, got {type(policy).__name__}.")
    return policy


def _dense_policy(strategy: str | None, policy, trainable_stages: int | None, spec, epochs: int) -> FinetunePolicy:
    given = [name for name, value in (("strategy", strategy), ("policy", policy), ("trainable_stages", trainable_stages)) if value is not None]
    if len(given) > 1:
        raise PolicyError(f"Give one of strategy, policy or trainable_stages, not {' and '.join(given)}: each states the whole plan.")
    bn = "stats-frozen" if spec.pretrained else "train"
    if isinstance(policy, (str, Path)):
        return FinetunePolicy.load(policy)
    if policy is not None:
        return policy
    if strategy is not None:
        return strategy_policy(strategy, spec, epochs)
    if trainable_stages is not None:
        if trainable_stages < 0:
            raise PolicyError(f"trainable_stages must be >= 0, got {trainable_stages}.")
        trainable = ("head",) if trainable_stages == 0 else ("head", f"last-n:{trainable_stages}")
        return FinetunePolicy(trainable=trainable, bn=bn, strategy=f"trainable-stages-{trainable_stages}")
    return FinetunePolicy(trainable=("*",), bn=bn, strategy="full")


def _check_dense(resolved: FinetunePolicy) -> None:
    """Detection and segmentation train convolutional trunks with new, randomly initialised heads."""
    if getattr(resolved, "lora_rank", 0):
        raise PolicyError(
            f"The policy adds LoRA adapters (lora_rank={resolved.lora_rank}), which headstart applies to transformer "
            "linear layers in classification only; detection and segmentation train the convolutional trunk directly."
        )
    if resolved.head_init != "random":
        raise PolicyError(
            f"head_init={resolved.head_init!r} ({resolved.strategy}) starts the head from a linear probe of pooled features; "
            "detection and segmentation heads are new networks, so they start at random. Use full, last-stage, "
            "linear-then-full or gradual, trainable_stages=K, or a policy with head_init: random."
        )
