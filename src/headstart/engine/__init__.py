"""The training engine: the one loop that fine-tuning, detection and segmentation run on.

* :class:`TrainConfig`: the options every run shares (epochs, learning rate, batch, optimizer,
  warm-up, clipping, EMA, patience, validation share, precision, device, seed, run folder, ...).
* :func:`resolve_policy`: the one resolver of a run's :class:`FinetunePolicy` (strategy, policy
  file or object, ``trainable_stages``, LoRA settings).
* :func:`train`: a whole run, from :func:`start` (the Accelerator; the device resolved once) through
  :func:`fit` (parameter groups from the compiled policy, warm-up + cosine schedule, clipping, EMA,
  frozen-weights guard, validation and the kept epoch, logs, checkpoints and exact resume) to
  :func:`finish`.
* :class:`Adapter`: what a task supplies (setup: data, model, policy; batches, loss, validation, log
  lines; conclusion: test metrics, bundle, run files), and :class:`Setup`.

The engine imports only layers below it (models, data, backbones, core); the task packages
(:mod:`headstart.finetune`, :mod:`headstart.tasks`) are its adapters.
"""

from headstart.engine.adapter import Adapter, Setup
from headstart.engine.checkpoint import CheckpointError
from headstart.engine.config import OPTIMIZERS, PRECISIONS, TrainConfig
from headstart.engine.ema import WeightEMA
from headstart.engine.errors import OutOfMemoryError, TrainingDivergedError, suggest_batch_size
from headstart.engine.guard import FrozenGuard, FrozenWeightsChangedError
from headstart.engine.loop import Run, finish, fit, start, train
from headstart.engine.policy import DEFAULT_LR, STRATEGIES, CompiledPolicy, FinetunePolicy, PolicyError, resolve_policy, strategy_policy
from headstart.engine.schedule import train_batches

__all__ = [
    "DEFAULT_LR",
    "OPTIMIZERS",
    "PRECISIONS",
    "STRATEGIES",
    "Adapter",
    "CheckpointError",
    "CompiledPolicy",
    "FinetunePolicy",
    "FrozenGuard",
    "FrozenWeightsChangedError",
    "OutOfMemoryError",
    "PolicyError",
    "Run",
    "Setup",
    "TrainConfig",
    "TrainingDivergedError",
    "WeightEMA",
    "finish",
    "fit",
    "resolve_policy",
    "start",
    "strategy_policy",
    "suggest_batch_size",
    "train",
    "train_batches",
]
