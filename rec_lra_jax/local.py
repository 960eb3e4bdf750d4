"""Local deltas: every weight layer's and every error synapse's update from signals and errors.

Each delta is the gradient of one layer's (or one synapse's) local loss with its input and
its error held fixed (docs/algorithm.md, "Local updates"):

  dense layer:   dW = z_in^T e / B, db = mean(e)
  conv layer:    dW = corr(z_in, e_pre) / B, with e_pre = `sweep.norm_error` of e
  BatchNorm:     d_scale = sum(e x_hat) / B, d_bias = sum(e) / B
  synapse "kp":  the delta a forward weight from the synapse's unit to its source would
                 get: gamma * corr(z_u, e_src) (Kolen-Pollack); "error_displacement":
                 -gamma * corr(d_u, e_src); "fixed": zeros.

With `dx` (an ablation) a hidden layer's error is first multiplied by phi'(h) of its unit.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from rec_lra_jax import conv
from rec_lra_jax.sweep import Errors, norm_error
from rec_lra_jax.wiring import Graph, Synapse, get

FEEDBACK_RULES = ("kp", "fixed", "error_displacement")
FEEDBACK_INITS = ("lra_e", "unit", "he", "lecun")


def _put(tree: dict, path: tuple, value: jax.Array) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def layer_deltas(graph: Graph, signals: dict, errors: Errors, *, dx: bool = False,
                 norm: str = "jacobian") -> dict[str, Any]:
    """{layer name: deltas shaped like that layer's params}."""
    out: dict[str, Any] = {}
    for name, layer in graph.layers.items():
        e = errors.units[layer.unit]
        unit = graph.units[layer.unit]
        if dx and unit.pre is not None:
            e = jax.jvp(unit.phi, (get(signals, unit.pre),), (e,))[1]
        x = get(signals, layer.input)
        batch = e.shape[0]
        deltas: dict[str, Any] = {}
        if layer.kind == "dense":
            _put(deltas, layer.kernel, x.T @ e / batch)
            if layer.bias is not None:
                _put(deltas, layer.bias, jnp.mean(e, axis=0))
        else:
            norm_signals = get(signals, layer.norm) if layer.norm else None
            e_pre = norm_error(norm_signals, e, norm)
            strides, padding = layer.geometry
            _put(deltas, layer.kernel, conv.kernel_delta(x, e_pre, layer.kernel_shape,
                                                         strides=strides, padding=padding))
            if layer.bias is not None:
                _put(deltas, layer.bias, jnp.mean(e_pre, axis=tuple(range(e.ndim - 1))))
            if layer.affine is not None:
                _put(deltas, layer.affine, conv.bn_affine_deltas(e, norm_signals["xhat"]))
        out[name] = deltas
    return out


def correlate(synapse: Synapse, a: jax.Array, e: jax.Array, coef: Any) -> jax.Array:
    """coef * the delta a forward map from activity `a` to error `e` of this synapse's
    shape would get (its transpose carries e back to a's space)."""
    batch = e.shape[0]
    if synapse.kind == "dense":
        return coef * e.reshape(batch, -1).T @ a.reshape(batch, -1) / batch
    if synapse.kind == "channel":
        return coef * e.T @ jnp.sum(a, axis=(1, 2)) / batch
    if synapse.kind == "pool":
        return coef * e.T @ jnp.mean(a, axis=(1, 2)) / batch
    strides, padding = synapse.geometry
    return coef * conv.kernel_delta(a, e, synapse.shape, strides=strides, padding=padding)


def synapse_deltas(graph: Graph, signals: dict, errors: Errors, *, rule: str = "kp",
                   gamma: Any = 1.0) -> dict[str, jax.Array]:
    """{synapse name: its delta} under `rule` ("kp", "error_displacement", "fixed")."""
    if rule not in FEEDBACK_RULES:
        raise ValueError(f"Unknown feedback rule {rule!r}; choose one of {FEEDBACK_RULES}.")
    out = {}
    for name, synapse in graph.synapses.items():
        if synapse.kind == "identity":
            continue  # no parameters
        if rule == "fixed":
            out[name] = jnp.zeros(synapse.shape)
        elif rule == "kp":
            out[name] = correlate(synapse, get(signals, synapse.reads), errors.sources[name],
                                  gamma)
        else:
            out[name] = correlate(synapse, errors.displacements[name], errors.sources[name],
                                  -gamma)
    return out


def init_synapses(key: jax.Array, graph: Graph, scheme: str | None = None,
                  scale: float = 1.0) -> dict[str, jax.Array]:
    """Random error synapses of the graph: std = scale * sqrt(v(fan_in)).

    Schemes (docs/algorithm.md, "Initialisation"): "lra_e" and "unit": v = 1; "he":
    2 / fan_in; "lecun": 1 / fan_in. fan_in is the first dimension of a matrix and
    H * W * C_in of a conv kernel. None takes the graph's family default.
    """
    scheme = scheme or graph.feedback_init
    variance = {"lra_e": lambda fan_in: 1.0, "unit": lambda fan_in: 1.0,
                "he": lambda fan_in: 2.0 / fan_in, "lecun": lambda fan_in: 1.0 / fan_in}
    if scheme not in variance:
        raise ValueError(f"Unknown feedback init {scheme!r}; choose one of {FEEDBACK_INITS}.")
    out = {}
    for name, synapse in graph.synapses.items():
        if synapse.kind == "identity":
            continue  # no parameters
        shape = synapse.shape
        fan_in = math.prod(shape[:-1]) if len(shape) == 4 else shape[0]
        std = scale * variance[scheme](fan_in) ** 0.5
        out[name] = std * jax.random.normal(jax.random.fold_in(key, synapse.init_index), shape)
    return out
