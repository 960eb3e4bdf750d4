"""rec_lra_jax: backpropagation-free training with recursive local representation alignment.

Ororbia et al., "Backpropagation-free deep learning with recursive local representation
alignment", AAAI 2023. The equations, the options and their defaults: docs/algorithm.md.

  models      MLP, ResNet (both return the signals local rules read), FeedbackDense
  rules       rec_lra, lra_e, kolen_pollack, dfa, backprop, feedback_alignment, sign_symmetry: optax
              transforms; RULES is the registry by config name (autodiff, backward), wiring_of(name)
              the wiring whose `init` makes a rule's error synapses
  wiring      Wiring (which error drives each unit) and the Graph a rule builds from it
  certify     the weight-transport certificate of a traced train step
"""

from rec_lra_jax import builder, local, sweep, wiring
from rec_lra_jax.certify import Certificate, certify_step
from rec_lra_jax.models import MLP, FeedbackDense
from rec_lra_jax.resnet import ResNet
from rec_lra_jax.rules import (
    RULES,
    Rule,
    backprop,
    dfa,
    feedback_alignment,
    kolen_pollack,
    lra_e,
    rec_lra,
    sign_symmetry,
    wiring_of,
)
from rec_lra_jax.steps import TrainState, rule_deltas, train_step
from rec_lra_jax.train import train_and_evaluate
from rec_lra_jax.transforms import clip_by_tensor_norm
from rec_lra_jax.wiring import Wiring

direct_feedback_alignment = dfa

__all__ = [
    "MLP", "RULES", "Certificate", "FeedbackDense", "ResNet", "Rule", "TrainState", "Wiring",
    "backprop", "builder", "certify_step", "clip_by_tensor_norm", "dfa",
    "direct_feedback_alignment", "feedback_alignment", "kolen_pollack", "local", "lra_e",
    "rec_lra",
    "rule_deltas", "sign_symmetry", "sweep", "train_and_evaluate", "train_step", "wiring",
    "wiring_of",
]
__version__ = "0.2.0"
