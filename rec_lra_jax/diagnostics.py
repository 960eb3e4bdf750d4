"""Diagnostics: how well a rule's deltas align with the backprop gradient, per layer."""

import jax
import jax.numpy as jnp

from rec_lra_jax import steps


def tensor_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine of the angle between two same-shaped tensors, flattened."""
    a, b = a.ravel(), b.ravel()
    return jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)


def layer_cosines(deltas: dict, grads: dict, leaf: str = "kernel") -> dict[str, jax.Array]:
    """{layer: cos(delta_l, grad_l)} for the `leaf` tensor of every layer in `grads`.

    A cosine near 1 means the local delta points along the backprop gradient; near -1
    means a flipped sign somewhere (docs/algorithm.md, "Alignment").
    """
    return {name: tensor_cosine(_leaf(deltas[name], leaf), _leaf(grads[name], leaf))
            for name in sorted(grads)}


def _leaf(layer: dict, leaf: str) -> jax.Array:
    """layer[leaf], or layer["conv"][leaf] for a ResNet conv(+BN) layer."""
    return layer[leaf] if leaf in layer else layer["conv"][leaf]


def layer_norm_ratios(deltas: dict, grads: dict, leaf: str = "kernel") -> dict[str, jax.Array]:
    """{layer: ||delta_l|| / ||grad_l||} for the `leaf` tensor of every layer in `grads`.

    For LRA-E at small beta this is ~beta^(L-l). With aligned directions (cosine near 1)
    it says whether a layer's delta also has backprop's size: a ratio that drifts over
    training changes that layer's effective step, even under an adaptive optimizer.
    """
    return {name: jnp.linalg.norm(_leaf(deltas[name], leaf))
            / (jnp.linalg.norm(_leaf(grads[name], leaf)) + 1e-30)
            for name in sorted(grads)}


def make_cosine_fn(model, rule, bp_model, bp_rule, *, num_classes: int,
                   normalization: str = "unit", autodiff: bool = False,
                   probes: tuple[str, ...] = (), probe_sigma: float = 0.05):
    """jit(params, feedback, batch_stats, images, labels, rule_state=None) -> alignment.

    The rule's kernel deltas against backprop's gradient on the same batch, same model:
    {"cosine/<layer>": cos(delta, grad), "norm_ratio/<layer>": ||delta|| / ||grad||}.
    `rule_state` (the rule's part of the train state's opt_state) evaluates a scheduled
    beta at the training step; None: at its start. `autodiff`: `rule` is an autodiff
    baseline (`rules.RULES[name].autodiff`); `probes`, `probe_sigma`: the train step's
    (`steps.rule_inputs`).
    """
    @jax.jit
    def fn(params, feedback, batch_stats, images, labels, rule_state=None):
        images = steps.normalize(images, normalization)
        onehot = jax.nn.one_hot(labels, num_classes)
        deltas = steps.rule_deltas(model, rule, params, feedback, batch_stats, images, onehot,
                                   rule_state, autodiff=autodiff, probes=probes,
                                   probe_sigma=probe_sigma)
        grads = steps.rule_deltas(bp_model, bp_rule, params, {}, batch_stats, images, onehot,
                                  autodiff=True)
        cosines = layer_cosines(deltas["params"], grads["params"])
        ratios = layer_norm_ratios(deltas["params"], grads["params"])
        return {**{f"cosine/{k}": v for k, v in cosines.items()},
                **{f"norm_ratio/{k}": v for k, v in ratios.items()}}

    return fn
