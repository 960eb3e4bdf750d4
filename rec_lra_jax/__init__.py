"""rec_lra_jax: backpropagation-free training with recursive local representation alignment."""

from rec_lra_jax import builder
from rec_lra_jax.models import MLP
from rec_lra_jax.resnet import ResNet
from rec_lra_jax.rules import (
    UpdateRule,
    backprop,
    direct_feedback_alignment,
    feedback_alignment,
    lra_e,
    rec_lra,
)
from rec_lra_jax.steps import TrainState, train_step
from rec_lra_jax.targets import compute_errors, recursive_sources
from rec_lra_jax.train import train_and_evaluate
from rec_lra_jax.transforms import clip_by_tensor_norm

__all__ = [
    "MLP", "ResNet", "TrainState", "UpdateRule", "backprop", "builder", "clip_by_tensor_norm",
    "compute_errors", "direct_feedback_alignment", "feedback_alignment", "lra_e", "rec_lra",
    "recursive_sources", "train_and_evaluate", "train_step",
]
__version__ = "0.1.0"
