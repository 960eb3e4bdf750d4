"""Optax transforms applied to local deltas, composable with any optax chain."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ClipByTensorNormState(NamedTuple):
    """`clip_by_tensor_norm` is stateless."""


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
    """Re-projects every tensor onto the Frobenius ball of radius `max_norm`.

    docs/algorithm.md, "Update re-projection": delta <- delta * min(1, c / ||delta||_F), per tensor.
    Unlike `optax.clip_by_global_norm` nothing couples the layers, so each layer's update
    stays a function of that layer's own delta.

    Args:
      max_norm: the radius c > 0.

    Returns:
      A stateless `optax.GradientTransformation`.
    """
    if isinstance(max_norm, int | float) and max_norm <= 0:  # may be traced (inject_hyperparams)
        raise ValueError(f"max_norm must be positive, got {max_norm}.")

    def init_fn(params):
        del params
        return ClipByTensorNormState()

    def update_fn(updates, state, params=None):
        del params

        def clip(u):
            norm = jnp.sqrt(jnp.sum(jnp.square(u)))
            # where() keeps the result finite (and exactly u) for an all-zero tensor.
            scale = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
            return (u * scale).astype(u.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adam_shared(twins: dict[str, tuple[tuple, bool]], b1: float = 0.9,
                         b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """`optax.scale_by_adam` over {"params", "feedback"} that keeps no moments for the
    synapses in `twins` ({feedback key: (its twin's path, transposed)}, `local.twins`):
    each gets its twin's direction (transposed where it is), which is what its own moments
    would give when its deltas equal its twin's, as Kolen-Pollack's do with gamma 1. With
    `optax.add_decayed_weights` and `optax.scale_by_learning_rate` after it, the chain is
    `optax.adamw`'s, with the synapses' moments (twice their size) gone."""
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

    def strip(tree):
        return {**tree, "feedback": {k: v for k, v in tree["feedback"].items()
                                     if k not in twins}}

    def init_fn(params):
        return adam.init(strip(params))

    def update_fn(updates, state, params=None):
        del params
        out, state = adam.update(strip(updates), state)
        feedback = dict(out["feedback"])
        for name, (path, transposed) in twins.items():
            d = out
            for key in path:
                d = d[key]
            feedback[name] = d.T if transposed else d
        return {**out, "feedback": feedback}, state

    return optax.GradientTransformation(init_fn, update_fn)
