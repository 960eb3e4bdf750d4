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
