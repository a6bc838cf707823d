"""Backbones: pretrained networks addressed by prefixed names, with a frozen spec each."""

from headstart.backbones.file_adapter import save_backbone
from headstart.backbones.module import POOLS, Backbone
from headstart.backbones.registry import BackboneInfo, NotTrainableError, check_trainable, list_backbones, load_backbone
from headstart.backbones.spec import BackboneSpec

__all__ = [
    "POOLS", "Backbone", "BackboneInfo", "BackboneSpec", "NotTrainableError", "check_trainable", "list_backbones", "load_backbone",
    "save_backbone",
]
