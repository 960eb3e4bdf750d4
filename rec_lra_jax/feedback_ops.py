"""Layers whose backward pass uses a feedback kernel instead of the forward one.

These are the baselines' building blocks (feedback alignment, sign symmetry): a conv or
dense layer whose forward is the usual one, while its vjp sends the output cotangent back
to the input through B (a fixed random kernel for FA, sign(W) for sign symmetry) and gives
the kernel the usual local cotangent. Backprop itself is the same layer with B = W.
"""

import functools
import math

import jax
import jax.numpy as jnp

from rec_lra_jax import conv

BACKWARDS = ("exact", "fa", "sign")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def feedback_conv(x, kernel, feedback, strides: int, padding: int):
    """conv(x, kernel); the vjp carries the cotangent to x through `feedback`."""
    del feedback
    return conv.conv(x, kernel, strides=strides, padding=padding)


def _conv_fwd(x, kernel, feedback, strides, padding):
    return conv.conv(x, kernel, strides=strides, padding=padding), (x, kernel, feedback)


def _conv_bwd(strides, padding, res, g):
    x, kernel, feedback = res
    dx = conv.transpose_displacement(g, feedback, x.shape, strides=strides, padding=padding)
    dk = conv.kernel_delta(x, g, kernel.shape, strides=strides, padding=padding) * x.shape[0]
    return dx, dk, jnp.zeros_like(feedback)


feedback_conv.defvjp(_conv_fwd, _conv_bwd)


@jax.custom_vjp
def feedback_dense(x, kernel, feedback):
    """x @ kernel; the vjp carries the cotangent to x through `feedback` (kernel-shaped)."""
    del feedback
    return x @ kernel


def _dense_fwd(x, kernel, feedback):
    return x @ kernel, (x, feedback)


def _dense_bwd(res, g):
    x, feedback = res
    return g @ feedback.T, x.T @ g, jnp.zeros_like(feedback)


feedback_dense.defvjp(_dense_fwd, _dense_bwd)


def backward_kernel(kernel: jax.Array, feedback: jax.Array | None, backward: str) -> jax.Array:
    """The kernel the backward pass uses: B for "fa", sign(W) for "sign" (uSF).

    sign(W) is scaled by sqrt(1 / fan_in), a constant of the shape (not of W), so the
    backward signal keeps the scale of a LeCun-initialised kernel instead of growing by
    about sqrt(fan_in) per layer.
    """
    if backward == "fa":
        return feedback
    if backward == "sign":
        fan_in = math.prod(kernel.shape[:-1])
        return jax.lax.stop_gradient(jnp.sign(kernel)) * (1.0 / fan_in) ** 0.5
    raise ValueError(f"Unknown backward {backward!r}; choose one of {BACKWARDS}.")
