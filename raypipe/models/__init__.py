"""Models and losses: timm backbones with the seed head, losses built by name from the config."""

from raypipe.models.backbones import (
    HEADS,
    Classifier,
    build_model,
    build_model_from_spec,
    gradcam_reshape_transform,
    gradcam_target_layer,
    model_spec,
)
from raypipe.models.losses import LOSSES, build_loss

__all__ = [
    "HEADS",
    "LOSSES",
    "Classifier",
    "build_loss",
    "build_model",
    "build_model_from_spec",
    "gradcam_reshape_transform",
    "gradcam_target_layer",
    "model_spec",
]
