"""SAM-Med3D compatible promptable model, its configurations and checkpoints."""

from __future__ import annotations

from .checkpoint import available_models, load_model, model_info, save_checkpoint
from .config import CONFIGS, DEFAULT_CONFIG, SamConfig, get_config
from .sam3d import Sam3D, build_model
from .variants import guess_modality, model_for_image

__all__ = [
    "CONFIGS",
    "DEFAULT_CONFIG",
    "SamConfig",
    "Sam3D",
    "available_models",
    "build_model",
    "get_config",
    "guess_modality",
    "load_model",
    "model_for_image",
    "model_info",
    "save_checkpoint",
]
