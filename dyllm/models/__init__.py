"""Models: config, the shared bidirectional transformer, key maps, loader and writer."""

from dyllm.models.checkpoint import save_pretrained
from dyllm.models.config import ConfigError, ModelConfig
from dyllm.models.loader import CheckpointError, load
from dyllm.models.presets import PRESETS, preset
from dyllm.models.transformer import DecoderLayer, DiffusionTransformer

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "DecoderLayer",
    "DiffusionTransformer",
    "ModelConfig",
    "load",
    "preset",
    "save_pretrained",
]
